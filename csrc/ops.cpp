// The one translation unit that owns every bpkernels operator schema. Backends (csrc/cpu,
// csrc/cuda, and csrc/linear_composite.cpp for every device) only add TORCH_LIBRARY_IMPL blocks.
// Shapes are batch-first: activations and per-sample messages are [B, N] (inputs) or [B, K]
// (units); weight fields, magnetisations and masks are [K, N]; BP's per-edge cavity state is
// [K, N, B]. The weight variance σ = (1 − m²)·mask is derived from mag and mask inside every
// operator that needs it (bp_weight_var evaluates it alone).
#ifdef BPK_WITH_PYTHON
#include <Python.h>

// Importing bpkernels._C loads this library; its static initialisers register the ops.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif

#include <torch/library.h>

TORCH_LIBRARY(bpkernels, m) {
  // x̂ = tanh(u + b), Δ = 1 − x̂²  (b = None: b = 0).
  m.def("bp_linear_input(Tensor u, Tensor? b) -> (Tensor x_hat, Tensor delta)");
  // ω = x̂ mᵀ,  V = x̂² σᵀ + Δ (m² + σ)ᵀ + ε,  u = U(ω, √V)  (delta = None: first layer, Δ = 0;
  // mask = None: σ = 1 − m²).
  m.def(
      "bp_linear_fwd(Tensor x_hat, Tensor? delta, Tensor mag, Tensor? mask) "
      "-> (Tensor omega, Tensor var, Tensor u)");
  // AMP forward with the Onsager corrections of the previous inner iteration (docs/algorithms.md §4.4).
  m.def(
      "bp_linear_fwd_amp(Tensor x_hat, Tensor? delta, Tensor mag, Tensor? mask, Tensor g_old, "
      "Tensor x_hat_old, Tensor mag_old) -> (Tensor omega, Tensor var, Tensor u)");
  // u = U(ω, √V).
  m.def("bp_upfield(Tensor omega, Tensor var) -> Tensor");
  // Sign-unit output function g and curvature Γ; hard = True reads b_top as labels ±1.
  m.def("bp_output(Tensor b_top, Tensor omega, Tensor var, bool hard) -> (Tensor g, Tensor gamma)");
  // ArgMax output layer g for integer class labels (docs/algorithms.md §2.3).
  m.def("bp_argmax_output(Tensor omega, Tensor var, Tensor labels) -> Tensor");
  // MF backward: b = g m,  H_in = gᵀ x̂  (compute_b = False: b is an empty [B, 0] tensor).
  m.def(
      "bp_linear_bwd_mf(Tensor g, Tensor x_hat, Tensor mag, bool compute_b) "
      "-> (Tensor b, Tensor h_in)");
  // AMP backward with self-reaction and (given the old state) Onsager terms (docs/algorithms.md §4.4).
  m.def(
      "bp_linear_bwd_amp(Tensor g, Tensor gamma, Tensor x_hat, Tensor? delta, Tensor mag, "
      "Tensor? mask, Tensor? g_old, Tensor? x_hat_old, Tensor? mag_old, bool compute_b) "
      "-> (Tensor b, Tensor h_in)");
  // BPI fused cavity backward: b[a,i] = Σ_k m[k,i] ĝ[k,i,a], H_in[k,i] = Σ_a ĝ[k,i,a] x̂[a,i].
  m.def(
      "bp_linear_bwd_bpi(Tensor b_top, Tensor omega, Tensor var, Tensor x_hat, Tensor mag, "
      "bool hard, bool compute_b) -> (Tensor b, Tensor h_in)");
  // BP (τ > 1) cavity forward: ω[a,k] = Σ_i m̃[k,i,a] x̃[k,i,a], x̃ = tanh(x_in + b̃) or x_in.
  m.def("bp_linear_omega_bp(Tensor x_in, Tensor? b_cav, Tensor mag_cav) -> Tensor");
  // BP (τ > 1) cavity backward: ĝ = g(b_top, ω − m̃x̃, s); b = Σ_k m̃ĝ; H_in = Σ_a ĝ x̃.
  m.def(
      "bp_linear_bwd_bp(Tensor b_top, Tensor omega, Tensor var, Tensor x_in, Tensor? b_cav, "
      "Tensor mag_cav, bool hard, bool compute_b) -> (Tensor b, Tensor h_in)");
  // BP (τ > 1) cavity-state update: b̃ ← b − m̃ĝ, m̃ ← ψ m̃ + (1 − ψ) tanh(H − ĝ x̃) · mask.
  m.def(
      "bp_cavity_update_(Tensor(a!) mag_cav, Tensor(b!)? b_cav, Tensor b_top, Tensor omega, "
      "Tensor var, Tensor x_in, Tensor? b, Tensor field, Tensor? mask, float psi, bool hard) -> ()");
  // In-place field / reinforcement / damping update; returns δ = mean |m_new − m_old|.
  m.def(
      "bp_field_update_(Tensor(a!) field, Tensor(b!) mag, Tensor h_in, Tensor? field_prior, "
      "Tensor? mask, float rho, float r, float psi, bool damp_field) -> Tensor");
  // Bayesian moment propagation: ω, V as bp_linear_fwd, then x̂ = erf(ω/√(2V)), Δ = 1 − x̂².
  m.def(
      "bp_bayes_fwd(Tensor x_hat, Tensor? delta, Tensor mag, Tensor? mask) "
      "-> (Tensor x_hat_out, Tensor delta_out)");
  // Weight variance σ = (1 − m²)·mask, element-wise (mag of any shape; mask = None: 1 − m²).
  m.def("bp_weight_var(Tensor mag, Tensor? mask) -> Tensor sigma");

  // ---- Gaussian (continuous) weights, continuous-weight BPI (docs/algorithms.md §4.7) ----
  // Each weight has mean mag and precision Ω (variance σ = 1/Ω); no mask.
  // ω = x̂ mᵀ,  V = x̂² σᵀ + Δ (m² + σ)ᵀ + ε,  u = U(ω, √V)  (delta = None: first layer).
  m.def(
      "gauss_linear_fwd(Tensor x_hat, Tensor? delta, Tensor mag, Tensor precision) "
      "-> (Tensor omega, Tensor var, Tensor u)");
  // Fused cavity backward: b and H_in as bp_linear_bwd_bpi, and the precision message
  // Ω_in[k,i] = Σ_a [(x̂² + Δ)[a,i] Γ[a,k] − Δ[a,i] g[a,k]²] (g, Γ non-cavity; Γ non-finite -> 0).
  m.def(
      "gauss_linear_bwd_cbpi(Tensor b_top, Tensor omega, Tensor var, Tensor x_hat, Tensor? delta, "
      "Tensor mag, bool hard, bool compute_b) -> (Tensor b, Tensor h_in, Tensor omega_in)");
  // In place: Ω ← max(1e-6, Ω_in + rΩ + ρΩ_prior), H ← H_in + rH + ρH_prior,
  // m ← ψm + (1 − ψ)H/Ω (priors None: the current (H, Ω), PasP); returns δ = mean |Δm|.
  m.def(
      "gauss_field_update_(Tensor(a!) field, Tensor(b!) precision, Tensor(c!) mag, Tensor h_in, "
      "Tensor omega_in, Tensor? field_prior, Tensor? precision_prior, float rho, float r, "
      "float psi) -> Tensor");

  // ---- packed (XNOR-popcount) inference; bit conventions in bpkernels/xnor.h ----
  // Sign bits (x = +1 <=> z + 1e-10 > 0, z >= 0 for int32 z) of z [B, H, W, C] gathered per
  // output position: bits [B·OH·OW, ⌈kh·kw·C/64⌉] int64, tap (i, j) channel c at bit
  // (i·kw + j)·C + c; valid [OH·OW, same] marks the taps inside the image (zero padding).
  m.def(
      "xnor_im2col(Tensor z, int[2] kernel_size, int[2] stride, int[2] padding) "
      "-> (Tensor bits, Tensor valid)");
  // z[r, k] = Σ_i x_ri w_ki over ±1 bits, i where x_valid[r mod P] and w_nonzero[k] are set:
  // count − 2·popcount((x XOR w) AND care); int32 [R, K]. n: bits per row (no planes given).
  m.def("xnor_gemm(Tensor x, Tensor w, Tensor? x_valid, Tensor? w_nonzero, int n) -> Tensor");
  // The instruction set the CPU xnor_gemm runs: "avx512", "avx2" or "portable".
  m.def("xnor_cpu_isa() -> str");
}
