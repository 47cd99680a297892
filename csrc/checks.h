// Input validation of every operator, written once and called by every backend (CPU, CUDA, the
// composite ops). Each failure names the operator, the argument and what was expected.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace bpk {

// Size placeholder: the dimension may take any value.
constexpr int64_t kAny = -1;

// Validates tensors of one operator against a reference tensor (dtype and device).
class ArgChecker {
 public:
  ArgChecker(const char* op, const at::Tensor& ref, const char* ref_name) : op_(op), ref_(ref) {
    TORCH_CHECK(ref.defined(), op_, ": ", ref_name, " must be a defined tensor");
    TORCH_CHECK(ref.scalar_type() == at::kFloat || ref.scalar_type() == at::kDouble, op_, ": ",
                ref_name, " must be float32 or float64, got ", ref.scalar_type());
  }

  // t must have the reference dtype and device and the given sizes; dims names them,
  // e.g. "[B, N]".
  void operator()(const at::Tensor& t, const char* name, at::IntArrayRef sizes,
                  const char* dims) const {
    TORCH_CHECK(t.defined(), op_, ": ", name, " must be a defined tensor");
    check_sizes(t, name, sizes, dims);
    TORCH_CHECK(t.scalar_type() == ref_.scalar_type(), op_, ": ", name, " must have dtype ",
                ref_.scalar_type(), " (like the other inputs), got ", t.scalar_type());
    TORCH_CHECK(t.device() == ref_.device(), op_, ": ", name, " must be on device ",
                ref_.device(), " (like the other inputs), got ", t.device());
  }

  // As above, and t is updated in place, so it must also be contiguous.
  void inplace(const at::Tensor& t, const char* name, at::IntArrayRef sizes,
               const char* dims) const {
    (*this)(t, name, sizes, dims);
    TORCH_CHECK(t.is_contiguous(), op_, ": ", name,
                " is updated in place and must be contiguous");
  }

  void check_sizes(const at::Tensor& t, const char* name, at::IntArrayRef sizes,
                   const char* dims) const {
    bool ok = t.dim() == static_cast<int64_t>(sizes.size());
    int64_t d = 0;
    for (int64_t s : sizes) {
      if (ok && s != kAny && t.size(d) != s) ok = false;
      ++d;
    }
    if (!ok) {
      std::string expected = "[";
      d = 0;
      for (int64_t s : sizes) {
        expected += (d++ ? ", " : "") + (s == kAny ? std::string("*") : std::to_string(s));
      }
      expected += "]";
      TORCH_CHECK(false, op_, ": ", name, " must have shape ", dims, " = ", expected, ", got ",
                  t.sizes());
    }
  }

  const char* op() const { return op_; }

 private:
  const char* op_;
  const at::Tensor& ref_;
};

// ---- the checks of each operator ------------------------------------------------------------
// Each validates every argument of one operator (as named in its schema, csrc/ops.cpp) and
// returns the layer sizes where the kernels need them. Shapes: activations [B, N], per-unit
// messages [B, K], weights [K, N], BP cavity state [K, N, B].

struct LayerDims {
  int64_t B, N, K;
};

void check_linear_input(const at::Tensor& u, const std::optional<at::Tensor>& b);
// bp_linear_fwd and bp_bayes_fwd (op names the operator).
LayerDims check_linear_fwd(const char* op, const at::Tensor& x_hat,
                           const std::optional<at::Tensor>& delta, const at::Tensor& mag,
                           const std::optional<at::Tensor>& mask);
LayerDims check_linear_fwd_amp(const at::Tensor& x_hat, const std::optional<at::Tensor>& delta,
                               const at::Tensor& mag, const std::optional<at::Tensor>& mask,
                               const at::Tensor& g_old, const at::Tensor& x_hat_old,
                               const at::Tensor& mag_old);
void check_upfield(const at::Tensor& omega, const at::Tensor& var);
void check_output(const at::Tensor& b_top, const at::Tensor& omega, const at::Tensor& var);
// Shapes, dtypes and devices only: the label range is checked by each backend (on the device
// for CUDA, without a host synchronisation).
void check_argmax_output(const at::Tensor& omega, const at::Tensor& var, const at::Tensor& labels);
LayerDims check_linear_bwd_mf(const at::Tensor& g, const at::Tensor& x_hat, const at::Tensor& mag);
LayerDims check_linear_bwd_amp(const at::Tensor& g, const at::Tensor& gamma,
                               const at::Tensor& x_hat, const std::optional<at::Tensor>& delta,
                               const at::Tensor& mag, const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& g_old,
                               const std::optional<at::Tensor>& x_hat_old,
                               const std::optional<at::Tensor>& mag_old);
LayerDims check_linear_bwd_bpi(const at::Tensor& b_top, const at::Tensor& omega,
                               const at::Tensor& var, const at::Tensor& x_hat,
                               const at::Tensor& mag);
LayerDims check_linear_omega_bp(const at::Tensor& x_in, const std::optional<at::Tensor>& b_cav,
                                const at::Tensor& mag_cav);
LayerDims check_linear_bwd_bp(const at::Tensor& b_top, const at::Tensor& omega,
                              const at::Tensor& var, const at::Tensor& x_in,
                              const std::optional<at::Tensor>& b_cav, const at::Tensor& mag_cav);
LayerDims check_cavity_update(const at::Tensor& mag_cav, const std::optional<at::Tensor>& b_cav,
                              const at::Tensor& b_top, const at::Tensor& omega,
                              const at::Tensor& var, const at::Tensor& x_in,
                              const std::optional<at::Tensor>& b, const at::Tensor& field,
                              const std::optional<at::Tensor>& mask);
void check_field_update(const at::Tensor& field, const at::Tensor& mag, const at::Tensor& h_in,
                        const std::optional<at::Tensor>& field_prior,
                        const std::optional<at::Tensor>& mask);
// mag of any shape; mask (if given) of the same shape.
void check_weight_var(const at::Tensor& mag, const std::optional<at::Tensor>& mask);

// Packed inference. xnor_gemm: x [R, W], w [K, W], x_valid [P, W] with P dividing R, w_nonzero
// [K, W], int64 words on x's device; n bits per row, 64·(W − 1) < n ≤ 64·W.
void check_xnor_gemm(const at::Tensor& x, const at::Tensor& w,
                     const std::optional<at::Tensor>& x_valid,
                     const std::optional<at::Tensor>& w_nonzero, int64_t n);
// xnor_im2col: z [B, H, W, C] float32, float64 or int32; (h, w) pairs; the kernel fits.
void check_xnor_im2col(const at::Tensor& z, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding);

// ---- Gaussian (continuous) weight family (docs/algorithms.md §4.7) ---------------------------
// Weights: mean mag and precision Ω [K, N] (σ = 1/Ω), no mask.

LayerDims check_gauss_linear_fwd(const at::Tensor& x_hat, const std::optional<at::Tensor>& delta,
                                 const at::Tensor& mag, const at::Tensor& precision);
LayerDims check_gauss_linear_bwd_cbpi(const at::Tensor& b_top, const at::Tensor& omega,
                                      const at::Tensor& var, const at::Tensor& x_hat,
                                      const std::optional<at::Tensor>& delta,
                                      const at::Tensor& mag);
void check_gauss_field_update(const at::Tensor& field, const at::Tensor& precision,
                              const at::Tensor& mag, const at::Tensor& h_in,
                              const at::Tensor& omega_in,
                              const std::optional<at::Tensor>& field_prior,
                              const std::optional<at::Tensor>& precision_prior);

}  // namespace bpk
