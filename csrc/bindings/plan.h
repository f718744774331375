// A step plan: the table of one native call plus everything it was built from.
//
// The Python layer validates a param group (the general path) and builds a Plan for each native
// call. The Plan takes the signature (tensor_sig.h) of every tensor whose address is in the table
// apart from gradients, and holds an alias of each, so the memory stays valid while the Plan
// lives, also during a call that runs without the GIL. A Plan kept for the next steps is the
// fast path: `collect()` re-reads every signature, the identity of the group's parameter list, of
// each state dict and of each state entry, reads each gradient (which must fit its parameter's
// signature and share no memory with the tensors the plan holds, nor, where the step writes the
// gradients (GradScaler's unscaling), with another row's gradient), writes the gradient addresses
// into the table and holds the gradients until the call is over. Anything else returns false and
// the Python layer takes the general path again. After each call the Plan bumps the autograd
// version counter of every tensor it wrote.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "tensor_sig.h"

namespace pyfastopt {

class Plan {
 public:
  struct Row {
    pybind11::object param;       // the group's parameter (state key, gradient owner)
    Py_hash_t hash = -1;          // hash(param), for the state-dict lookup
    pybind11::object state;       // the parameter's state dict, or None (stateless SGD)
    pybind11::object checks;      // tuple of (key, tensor): what the state dict must still map
    std::vector<TensorSig> sigs;  // of the row's tensors other than the gradient
    std::vector<pybind11::object> held;   // those tensors; [0] is the parameter or its staging
    std::vector<pybind11::object> alias;  // a detached alias of each: keeps the memory alive
  };

  // rows: per table row, (param, state or None, checks, held): see Row. held[0] is the tensor
  // the gradient must fit (the parameter); its address must be one of the row's arrays. written:
  // tensors whose version counters `bump(written)` advances after each call. extents: the byte
  // ranges [lo, hi) of the tensors the table holds (any order); grad_bytes: per row, the bytes a
  // gradient laid out as held[0] spans from its address.
  Plan(pybind11::list group_params, pybind11::list rows, std::vector<int64_t> table, int64_t width,
       pybind11::list written, pybind11::object bump,
       std::vector<std::pair<int64_t, int64_t>> extents, std::vector<int64_t> grad_bytes);

  // GIL held. True when the table is valid for this step (gradient addresses filled in).
  // `grads_written`: the step writes the gradients, so no two rows may share gradient memory.
  bool collect(pybind11::handle current_params, pybind11::handle state, bool grads_written = false);
  // Adds byte ranges a gradient must not overlap either: what the group's other native calls
  // (other dtypes, later waves) write.
  void add_extents(std::vector<std::pair<int64_t, int64_t>> extents);
  // Replaces each row's aux word (SGD: the first-step flag is cleared for the next steps).
  void set_aux(const std::vector<int64_t>& aux);
  // GIL held, after the native call: bump version counters, release the gradients.
  void finish();

  const std::vector<int64_t>& table() const { return table_; }
  int64_t width() const { return width_; }
  std::size_t rows() const { return rows_.size(); }

 private:
  std::vector<PyObject*> group_params_;  // borrowed; kept alive by group_params_list_
  pybind11::list group_params_list_;
  std::vector<Row> rows_;
  std::vector<int64_t> table_;
  int64_t width_;
  pybind11::list written_;
  pybind11::object bump_;
  // the held tensors' byte ranges, sorted and merged: a gradient must not overlap any (the
  // general path hands a group whose gradient shares memory with what it writes to torch)
  std::vector<std::pair<int64_t, int64_t>> extents_;
  std::vector<int64_t> grad_bytes_;
  bool overlaps_held(int64_t lo, int64_t hi) const;
  std::vector<pybind11::object> grads_;  // held from collect() until finish()
};

}  // namespace pyfastopt
