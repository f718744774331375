// Adafactor (torch.optim.Adafactor, the arithmetic of its for-loop): the host side and the passes
// of one step. Compiled once per ISA (CMakeLists.txt), like kernels.cpp.
//
// Table rows (Table, dispatch.h) `[numel, step, p, g, s0, s1, (out), rows, cols]`:
//   numel: the tensor's elements (at least one: torch divides by sqrt(numel));
//   step: the address of its step counter;
//   p, g: the parameter (its float32 master copy with master weights) and its gradient, dense
//     and contiguous: row-major, the logical order the row and column means follow;
//   s0, s1: `row_var` and `col_var` of a factored tensor (rows > 0): the tensor is
//     numel / (rows * cols) matrices of rows x cols (its last two dims; the others are batch
//     dims), row_var holds one value per row and col_var one per column of each matrix;
//     or `variance` (like p) and 0 (rows == 0: a vector or a scalar);
//   out: with master weights (Rounding::kMaster), the low-precision parameter, written as the
//     rounded master (an element written since the last step re-seeds its master: WithCopy);
//   rows, cols: the geometry above.
//
// Tiles (the units of reduce.h), cut by shape alone: a vector into runs of kFlatTile elements;
// small matrices (at most kTileCols columns and kTileElems elements) whole, as many as make about
// kTileElems elements per tile ("whole" tiles: a 3x3 conv kernel's matrices, ...); larger ones
// into bands of rows by ranges of at most kTileCols columns ("part" tiles). A step is three
// passes over the tiles with serial steps between them:
//   1. per tile: the sum of p*p; the sums of g*g of each row and each column: a whole tile then
//      updates its matrices' row and column factors itself; a part tile leaves partial sums;
//   S1. per tensor: ||p|| and alpha; for matrices cut into parts, the new factors from the
//      partials and the clamped mean of each matrix's row factors;
//   2. per tile: the sum of u*u, u the update (the rule's, recomputed in pass 3, never stored);
//   S2. per tensor: torch's clipping denominator and the coefficient of the final add;
//   3. per tile: the rule (rules.h) through the element loop (multi_tensor.h).
// A new factor is torch's `var.lerp_(norm(grad, dim).square_().div_(size), 1 - beta2_t)`, the
// norm rounded to the compute type; it is stored through the state's policy and used unrounded
// in this step, as the float32 for-loop does. A factored tensor's passes 2 and 3 run over chunks
// of whole rows (or one row segment), each first filling a buffer with the rule's variance
// estimate of its elements. Every partial is combined in tile order, so the results do not
// depend on the thread count. Sums are taken in double (terms in the compute type, as in
// norms.cpp) and rounded to the compute type where torch returns a tensor of the parameter's
// dtype: float32 matches torch's for-loop within rounding (its float accumulation order
// differs), float64 within a few units in the last place.
#include "adafactor.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <vector>

#include "multi_tensor.h"
#include "pyfastopt/call_storage.h"
#include "pyfastopt/dispatch.h"
#include "pyfastopt/rules.h"
#include "pyfastopt/storage.h"
#include "reduce.h"

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace {

using cpu::row_numel;
using cpu::row_ptrs;
using namespace host;  // NOLINT: the shared host side (pyfastopt/call_storage.h)

constexpr int64_t kFlatTile = 4096;
constexpr int64_t kTileCols = 1024;
constexpr int64_t kTileElems = 65536;
constexpr int64_t kChunk = 1024;  // elements per variance-estimate buffer (at least kTileCols)

// Python's max(a, b) and min(a, b) of two floats: the first unless the second compares greater
// (less), as torch's step computes its host scalars (a NaN second argument loses).
double py_max(double a, double b) { return b > a ? b : a; }
double py_min(double a, double b) { return b < a ? b : a; }

// torch's 2-norm of a C tensor from the double sum of its squares: a float sum past float's
// range is infinite (torch accumulates float in float), the root is rounded to C.
template <class C>
C norm_of(double sum_sq) {
  if constexpr (std::is_same_v<C, float>) {
    if (std::isinf(static_cast<float>(sum_sq))) return std::numeric_limits<float>::infinity();
  }
  return static_cast<C>(std::sqrt(sum_sq));
}

enum class Kind { kFlat, kWhole, kPart };

// One table row's shape, tiles and slots.
struct Geometry {
  int64_t numel, rows, cols, batches;  // a vector: rows == 0
  Kind kind;
  int64_t tile_rows, tile_cols, col_tiles, bands;  // kPart
  int64_t first_tile, end_tile;
  int64_t row_part, col_part;  // kPart: offsets of its partial sums (double)
  int64_t row_new, col_new;    // offsets of its new factors (compute type; see Step::kScratch)
  int64_t rmean;               // kPart: offset of its matrices' clamped row-factor means
};

struct Tile {
  int64_t row;             // table row
  int64_t b0, nb;          // matrices (a kPart tile: one)
  int64_t r0, nr;          // rows of each (a vector: 0, 1)
  int64_t c0, nc;          // columns (a vector: elements)
  int64_t band, col_tile;  // kPart
};

// The storage policies of pass 3: parameter, gradient, the third array, then the low-precision
// parameter copy after a master.
template <class St, class Third, bool Copy = St::kCopy>
struct Pols3 {
  using type = std::tuple<typename St::param, typename St::grad, Third>;
};
template <class St, class Third>
struct Pols3<St, Third, true> {
  using type = std::tuple<typename St::param, typename St::grad, Third, typename St::out>;
};

template <class St>
class Step {
 public:
  using C = typename St::compute;
  using P = typename St::param;
  using G = typename St::grad;
  using S = typename St::state;
  using Flat = AdafactorRule<C, false>;
  using Fact = AdafactorRule<C, true>;
  static constexpr int64_t K = St::kCopy ? 5 : 4;  // addresses per row
  // state stored in another type than the compute type: the new factors are kept unrounded
  static constexpr bool kScratch = !std::is_same_v<S, Plain<C>>;

  Step(const Table& t, const AdafactorParams& hp) : t_(t), hp_(hp) {}

  void run(int num_threads) {
    check();
    plan();
    cpu::run_passes(split_, num_threads, t_.parallel_min, cpu::pass([&](int64_t u0, int64_t u1) {
                      for (int64_t u = u0; u < u1; ++u) reduce_params_and_grads(u);
                    }),
                    cpu::serial([&] {
                      for (int64_t r = 0; r < t_.rows; ++r) combine_params_and_grads(r);
                    }),
                    cpu::pass([&](int64_t u0, int64_t u1) {
                      for (int64_t u = u0; u < u1; ++u) reduce_updates(u);
                    }),
                    cpu::serial([&] {
                      for (int64_t r = 0; r < t_.rows; ++r) clip(r);
                    }),
                    cpu::pass([&](int64_t u0, int64_t u1) {
                      for (int64_t u = u0; u < u1; ++u) apply(u);
                    }));
  }

 private:
  const Table& t_;
  const AdafactorParams& hp_;
  std::vector<Geometry> geo_;
  std::vector<Tile> tiles_;
  cpu::UnitSplit split_;
  std::vector<Flat> flat_;  // per row: the vector rule (hyper-parameters, lerp, coef after S2)
  std::vector<Fact> fact_;  // per row: the factored rule
  std::vector<double> rho_, alpha_;
  std::vector<double> p_sq_, u_sq_, part_;  // per tile, per tile, partial sums of part tiles
  std::vector<C> scratch_;                  // new factors (kScratch), row-factor means

  const int64_t* ptrs(int64_t r) const { return row_ptrs(t_, r); }
  typename S::storage* state(int64_t r, int k) const {
    return reinterpret_cast<typename S::storage*>(ptrs(r)[2 + k]);
  }

  template <class Pol>
  static void aligned(int64_t a) {
    if (a == 0 || a % static_cast<int64_t>(alignof(typename Pol::storage)) != 0) {
      throw std::invalid_argument("pyfastopt: null or misaligned tensor address");
    }
  }

  // Defence in depth, before anything is written: the Python layer checked every extent.
  void check() const {
    if (t_.width != 2 + K + 2) {
      throw std::invalid_argument("pyfastopt: table row width does not match Adafactor's");
    }
    check_steps(t_);
    if (hp_.d == 0.0) throw ZeroDivision("float division by zero");
    for (int64_t r = 0; r < t_.rows; ++r) {
      const int64_t n = row_numel(t_, r);
      const int64_t rows = ptrs(r)[K], cols = ptrs(r)[K + 1];
      if (n == 0) throw ZeroDivision("float division by zero");  // torch: 0 / sqrt(numel)
      if (n < 0 || rows < 0 || cols < 0) {
        throw std::invalid_argument("pyfastopt: negative extent in an Adafactor table");
      }
      if (rows > 0 && (cols < 1 || rows > n || cols > n / rows || n % (rows * cols) != 0)) {
        throw std::invalid_argument("pyfastopt: Adafactor rows x cols do not divide numel");
      }
      aligned<P>(ptrs(r)[0]);
      aligned<G>(ptrs(r)[1]);
      aligned<S>(ptrs(r)[2]);
      if (rows > 0) aligned<S>(ptrs(r)[3]);
      if constexpr (St::kCopy) aligned<typename St::out>(ptrs(r)[4]);
    }
  }

  void add_tile(const Tile& k) {
    tiles_.push_back(k);
    split_.add(k.nb * k.nr * k.nc);
  }

  // Advances the step counters, computes the step's host scalars, cuts the tensors into tiles.
  void plan() {
    const auto rows = static_cast<std::size_t>(t_.rows);
    geo_.resize(rows);
    rho_.resize(rows);
    alpha_.resize(rows);
    flat_.reserve(rows);
    fact_.reserve(rows);
    int64_t parts = 0, scratch = 0;
    cpu::check_step_values(t_);
    for (int64_t r = 0; r < t_.rows; ++r) {
      const double step = cpu::advance_step(t_, r);
      const double one_minus_beta2_t = std::pow(step, hp_.beta2_decay);
      flat_.emplace_back(hp_, one_minus_beta2_t);
      fact_.emplace_back(hp_, one_minus_beta2_t);
      rho_[r] = py_min(hp_.lr, 1.0 / std::pow(step, 0.5));
      Geometry& g = geo_[r];
      g = Geometry{};
      g.numel = row_numel(t_, r);
      g.rows = ptrs(r)[K];
      g.first_tile = static_cast<int64_t>(tiles_.size());
      if (g.rows == 0) {
        g.kind = Kind::kFlat;
        g.cols = g.numel;
        g.batches = 1;
        for (int64_t c0 = 0; c0 < g.numel; c0 += kFlatTile) {
          add_tile(Tile{r, 0, 1, 0, 1, c0, std::min(kFlatTile, g.numel - c0), 0, 0});
        }
        g.end_tile = static_cast<int64_t>(tiles_.size());
        continue;
      }
      g.cols = ptrs(r)[K + 1];
      g.batches = g.numel / (g.rows * g.cols);
      const int64_t size = g.rows * g.cols;
      if (g.cols <= kTileCols && size <= kTileElems) {
        g.kind = Kind::kWhole;
        const int64_t per = kTileElems / size;
        for (int64_t b = 0; b < g.batches; b += per) {
          add_tile(Tile{r, b, std::min(per, g.batches - b), 0, g.rows, 0, g.cols, 0, 0});
        }
      } else {
        g.kind = Kind::kPart;
        g.tile_cols = std::min(g.cols, kTileCols);
        g.tile_rows = std::min(g.rows, std::max<int64_t>(1, kTileElems / g.tile_cols));
        g.col_tiles = (g.cols + g.tile_cols - 1) / g.tile_cols;
        g.bands = (g.rows + g.tile_rows - 1) / g.tile_rows;
        for (int64_t b = 0; b < g.batches; ++b) {
          for (int64_t band = 0; band < g.bands; ++band) {
            const int64_t r0 = band * g.tile_rows, nr = std::min(g.tile_rows, g.rows - r0);
            for (int64_t ct = 0; ct < g.col_tiles; ++ct) {
              const int64_t c0 = ct * g.tile_cols, nc = std::min(g.tile_cols, g.cols - c0);
              add_tile(Tile{r, b, 1, r0, nr, c0, nc, band, ct});
            }
          }
        }
        g.row_part = parts;
        g.col_part = parts + g.batches * g.rows * g.col_tiles;
        parts = g.col_part + g.batches * g.bands * g.cols;
        g.rmean = scratch;
        scratch += g.batches;
      }
      g.end_tile = static_cast<int64_t>(tiles_.size());
      if (kScratch) {
        g.row_new = scratch;
        g.col_new = scratch + g.batches * g.rows;
        scratch = g.col_new + g.batches * g.cols;
      }
    }
    p_sq_.assign(tiles_.size(), 0.0);
    u_sq_.assign(tiles_.size(), 0.0);
    part_.assign(static_cast<std::size_t>(parts), 0.0);
    scratch_.assign(static_cast<std::size_t>(scratch), C(0));
  }

  // ---- the factors ------------------------------------------------------------------------

  // Stores factor `at` of state array k (0: row_var, 1: col_var) from its sum of squares.
  void new_factor(int64_t r, int k, int64_t at, double sum_sq, C count) {
    const Geometry& g = geo_[r];
    typename S::storage* var = state(r, k) + at;
    const C norm = norm_of<C>(sum_sq);
    const C v = flat_[r].lerp(S::load(var), (norm * norm) / count);
    S::store(var, v, 0u);
    if constexpr (kScratch) scratch_[(k == 0 ? g.row_new : g.col_new) + at] = v;
  }
  C row_factor(int64_t r, int64_t at) const {
    if constexpr (kScratch) return scratch_[geo_[r].row_new + at];
    return S::load(state(r, 0) + at);
  }
  C col_factor(int64_t r, int64_t at) const {
    if constexpr (kScratch) return scratch_[geo_[r].col_new + at];
    return S::load(state(r, 1) + at);
  }
  // torch: row_var.mean(dim=-2).clamp_(min=eps1), a sum divided by the count, of matrix b
  C row_mean(int64_t r, int64_t b) const {
    const Geometry& g = geo_[r];
    if (g.kind == Kind::kPart) return scratch_[g.rmean + b];
    double sum = 0.0;
    for (int64_t i = 0; i < g.rows; ++i) sum += static_cast<double>(row_factor(r, b * g.rows + i));
    return max_nan(static_cast<C>(sum) / static_cast<C>(g.rows), static_cast<C>(hp_.eps1));
  }

  // ---- pass 1 and S1 ----------------------------------------------------------------------

  template <class Pol>
  static double sum_sq(int64_t addr, int64_t at, int64_t n) {
    const auto* x = reinterpret_cast<const typename Pol::storage*>(addr) + at;
    return cpu::run_reduce(cpu::Sum{}, n, [&](int64_t i) {
      const C v = Pol::load(x + i);
      return static_cast<double>(v * v);
    });
  }

  // The parameter's sum of squares. Beside a master copy, an element of the parameter written
  // since the last step (not its master rounded) counts as written: pass 3 re-seeds its master
  // from it (WithCopy, rules.h).
  double param_sq(int64_t r, int64_t at, int64_t n) const {
    if constexpr (St::kCopy) {
      using O = typename St::out;
      const auto* m = reinterpret_cast<const typename P::storage*>(ptrs(r)[0]) + at;
      const auto* c = reinterpret_cast<const typename O::storage*>(ptrs(r)[4]) + at;
      return cpu::run_reduce(cpu::Sum{}, n, [&](int64_t i) {
        const C v = continued_master<O>(P::load(m + i), O::load(c + i));
        return static_cast<double>(v * v);
      });
    } else {
      return sum_sq<P>(ptrs(r)[0], at, n);
    }
  }

  void reduce_params_and_grads(int64_t u) {
    const Tile& k = tiles_[u];
    const Geometry& g = geo_[k.row];
    const int64_t ga = ptrs(k.row)[1];
    const auto* gr = reinterpret_cast<const typename G::storage*>(ga);
    switch (g.kind) {
      case Kind::kFlat:
        p_sq_[u] = param_sq(k.row, k.c0, k.nc);
        return;
      case Kind::kWhole: {
        const int64_t size = g.rows * g.cols;
        p_sq_[u] = param_sq(k.row, k.b0 * size, k.nb * size);
        double col[kTileCols];
        for (int64_t b = k.b0; b < k.b0 + k.nb; ++b) {
          std::fill(col, col + g.cols, 0.0);
          for (int64_t i = 0; i < g.rows; ++i) {
            const int64_t at = (b * g.rows + i) * g.cols;
            new_factor(k.row, 0, b * g.rows + i, sum_sq<G>(ga, at, g.cols), static_cast<C>(g.cols));
            for (int64_t c = 0; c < g.cols; ++c) {
              const C v = G::load(gr + at + c);
              col[c] += static_cast<double>(v * v);
            }
          }
          for (int64_t c = 0; c < g.cols; ++c) {
            new_factor(k.row, 1, b * g.cols + c, col[c], static_cast<C>(g.rows));
          }
        }
        return;
      }
      case Kind::kPart: {
        double* col = part_.data() + g.col_part + (k.b0 * g.bands + k.band) * g.cols + k.c0;
        double* row = part_.data() + g.row_part;
        double total = 0.0;
        for (int64_t i = k.r0; i < k.r0 + k.nr; ++i) {
          const int64_t at = (k.b0 * g.rows + i) * g.cols + k.c0;
          total += param_sq(k.row, at, k.nc);
          row[(k.b0 * g.rows + i) * g.col_tiles + k.col_tile] = sum_sq<G>(ga, at, k.nc);
          for (int64_t c = 0; c < k.nc; ++c) {
            const C v = G::load(gr + at + c);
            col[c] += static_cast<double>(v * v);
          }
        }
        p_sq_[u] = total;
        return;
      }
    }
  }

  void combine_params_and_grads(int64_t r) {
    const Geometry& g = geo_[r];
    double p_sq = 0.0;
    for (int64_t u = g.first_tile; u < g.end_tile; ++u) p_sq += p_sq_[u];
    const double norm = static_cast<double>(norm_of<C>(p_sq));
    alpha_[r] = py_max(hp_.eps2, norm / std::pow(static_cast<double>(g.numel), 0.5)) * rho_[r];
    if (g.kind != Kind::kPart) return;
    for (int64_t b = 0; b < g.batches; ++b) {
      for (int64_t i = 0; i < g.rows; ++i) {
        const int64_t at = b * g.rows + i;
        double s = 0.0;
        for (int64_t ct = 0; ct < g.col_tiles; ++ct) s += part_[g.row_part + at * g.col_tiles + ct];
        new_factor(r, 0, at, s, static_cast<C>(g.cols));
      }
      for (int64_t c = 0; c < g.cols; ++c) {
        double s = 0.0;
        for (int64_t band = 0; band < g.bands; ++band) {
          s += part_[g.col_part + (b * g.bands + band) * g.cols + c];
        }
        new_factor(r, 1, b * g.cols + c, s, static_cast<C>(g.rows));
      }
    }
    for (int64_t b = 0; b < g.batches; ++b) {
      double sum = 0.0;
      for (int64_t i = 0; i < g.rows; ++i)
        sum += static_cast<double>(row_factor(r, b * g.rows + i));
      scratch_[g.rmean + b] =
          max_nan(static_cast<C>(sum) / static_cast<C>(g.rows), static_cast<C>(hp_.eps1));
    }
  }

  // ---- passes 2 and 3 of a factored tile: chunks with their variance estimates ----------------

  // Calls f(at, n, estimate) for the tile's chunks in order: n elements from offset `at`, whole
  // rows where the tile spans whole rows (else one row segment), and their variance estimates.
  template <class F>
  void for_chunks(const Tile& k, F&& f) const {
    const Geometry& g = geo_[k.row];
    const int64_t per = k.nc == g.cols ? std::max<int64_t>(1, kChunk / g.cols) : 1;
    const int64_t total = k.nb * k.nr;  // the tile's rows, matrix by matrix
    C est[kChunk];
    int64_t b_mean = -1;
    C mean = C(1);
    for (int64_t q = 0; q < total; q += per) {
      const int64_t m = std::min(per, total - q);
      for (int64_t j = 0; j < m; ++j) {
        const int64_t b = k.b0 + (q + j) / k.nr, i = k.r0 + (q + j) % k.nr;
        if (b != b_mean) {
          mean = row_mean(k.row, b);
          b_mean = b;
        }
        const C row = row_factor(k.row, b * g.rows + i);
        C* e = est + j * k.nc;
        for (int64_t c = 0; c < k.nc; ++c) {
          e[c] = Fact::factored(row, col_factor(k.row, b * g.cols + k.c0 + c), mean);
        }
      }
      const int64_t b = k.b0 + q / k.nr, i = k.r0 + q % k.nr;
      f((b * g.rows + i) * g.cols + k.c0, m * k.nc, static_cast<const C*>(est));
    }
  }

  void reduce_updates(int64_t u) {
    const Tile& k = tiles_[u];
    const Geometry& g = geo_[k.row];
    const auto* gr = reinterpret_cast<const typename G::storage*>(ptrs(k.row)[1]);
    if (g.kind == Kind::kFlat) {
      const Flat& rule = flat_[k.row];
      const auto* var = reinterpret_cast<const typename S::storage*>(ptrs(k.row)[2]);
      u_sq_[u] = cpu::run_reduce(cpu::Sum{}, k.nc, [&](int64_t i) {
        const C gv = rule.grad(G::load(gr + k.c0 + i));
        const C x = rule.update(rule.estimate(S::load(var + k.c0 + i), gv), gv);
        return static_cast<double>(x * x);
      });
      return;
    }
    const Fact& rule = fact_[k.row];
    double total = 0.0;
    for_chunks(k, [&](int64_t at, int64_t n, const C* est) {
      total += cpu::run_reduce(cpu::Sum{}, n, [&](int64_t i) {
        const C gv = rule.grad(G::load(gr + at + i));
        const C x = rule.update(est[i], gv);
        return static_cast<double>(x * x);
      });
    });
    u_sq_[u] = total;
  }

  // S2: torch's `denom = max(1, ||u|| / (sqrt(numel) * d))`, `p.add_(u, alpha=-alpha / denom)`
  void clip(int64_t r) {
    const Geometry& g = geo_[r];
    double u_sq = 0.0;
    for (int64_t u = g.first_tile; u < g.end_tile; ++u) u_sq += u_sq_[u];
    const double norm = static_cast<double>(norm_of<C>(u_sq));
    const double denom = py_max(1.0, norm / (std::pow(static_cast<double>(g.numel), 0.5) * hp_.d));
    const C coef = static_cast<C>(-alpha_[r] / denom);
    flat_[r].coef = coef;
    fact_[r].coef = coef;
  }

  void apply(int64_t u) {
    const Tile& k = tiles_[u];
    const uint64_t salt = cpu::row_salt(t_, k.row);
    int64_t local[K - 1];  // p, g, the third array[, out]
    local[0] = ptrs(k.row)[0];
    local[1] = ptrs(k.row)[1];
    if constexpr (St::kCopy) local[3] = ptrs(k.row)[4];
    if (geo_[k.row].kind == Kind::kFlat) {
      using Full = decltype(compose<St>(t_, std::declval<Flat>()));
      using Pols = typename Pols3<St, S>::type;
      local[2] = ptrs(k.row)[2];
      cpu::apply_row_span<Pols>(compose<St>(t_, flat_[k.row]), local, k.c0, k.nc, salt,
                                cpu::LanesFor<Pols, Full>::usable(lanes_mode()));
      return;
    }
    using Full = decltype(compose<St>(t_, std::declval<Fact>()));
    using Pols = typename Pols3<St, ReadOnly<Plain<C>>>::type;
    const Full rule = compose<St>(t_, fact_[k.row]);
    const bool lanes = cpu::LanesFor<Pols, Full>::usable(lanes_mode());
    for_chunks(k, [&](int64_t at, int64_t n, const C* est) {
      // apply_span adds the elements' offset in the tensor to every address: the estimates'
      // then lands on the buffer
      local[2] = reinterpret_cast<int64_t>(est) - at * static_cast<int64_t>(sizeof(C));
      cpu::apply_row_span<Pols>(rule, local, at, n, salt, lanes);
    });
  }
};

}  // namespace

void adafactor(const Table& t, DType dtype, const AdafactorParams& hp, int num_threads) {
  with_storage<false, StateStores::kTorchLayout>(
      t, dtype, [&](auto st) { Step<decltype(st)>(t, hp).run(num_threads); });
}

}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
