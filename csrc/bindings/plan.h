// A cached step plan: the table of one native call plus what must still hold for it to be valid.
//
// The Python layer validates a param group once (the general path) and hands the result here.
// On later steps `collect()` re-checks, per parameter, that nothing the table depends on has
// changed (the group's parameter list, each parameter's storage address, the identity of its
// state dict and state tensors, a gradient with the parameter's layout), and writes the fresh
// gradient addresses into the table. Any mismatch returns false and the Python layer re-validates.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

namespace pyfastopt {

class Plan {
 public:
  struct Entry {
    pybind11::object param;
    int64_t param_ptr;
    pybind11::object state;    // the parameter's state dict, or None (stateless SGD)
    pybind11::object checks;   // tuple of (key, tensor): state objects the row points into
    pybind11::object strides;  // None: the gradient must be contiguous; else a stride tuple
    Py_hash_t hash;            // hash(param), for the state-dict lookup
    int64_t param_numel;       // param.numel() when the plan was built
  };

  Plan(pybind11::list group_params, pybind11::list entries, std::vector<int64_t> table,
       int64_t width);

  // GIL held. True when the table is valid for this step (gradient addresses filled in).
  bool collect(pybind11::handle current_params, pybind11::handle state);

  const std::vector<int64_t>& table() const { return table_; }
  int64_t width() const { return width_; }
  std::size_t rows() const { return entries_.size(); }

 private:
  std::vector<PyObject*> group_params_;  // borrowed; kept alive by group_params_list_
  pybind11::list group_params_list_;
  std::vector<Entry> entries_;
  std::vector<int64_t> table_;
  int64_t width_;
};

}  // namespace pyfastopt
