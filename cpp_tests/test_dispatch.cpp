// The bpkernels operators called through the c10 dispatcher on CPU tensors, without Python:
// every schema registered in the bpkernels namespace has a CPU kernel (the list comes from the
// dispatcher, so it cannot drift from csrc/ops.cpp), a few operators reproduce spec
// docs/algorithms.md §11 values, and bad inputs throw c10::Error naming the argument.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Pair = std::tuple<Tensor, Tensor>;
using Triple = std::tuple<Tensor, Tensor, Tensor>;

constexpr double kInf = std::numeric_limits<double>::infinity();

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow((std::string("bpkernels::") + name).c_str(), "")
      .typed<Sig>();
}

// A float64 tensor from rows (the layout of docs/algorithms.md); .t() gives the batch-first layout.
Tensor mat(std::vector<std::vector<double>> rows) {
  const int64_t r = static_cast<int64_t>(rows.size()), c = static_cast<int64_t>(rows[0].size());
  Tensor t = at::empty({r, c}, at::kDouble);
  auto a = t.accessor<double, 2>();
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) a[i][j] = rows[i][j];
  return t;
}

// docs/algorithms.md §11 tolerance: 1e-9 relative; the printed values carry 10 decimals.
void expect_spec(const Tensor& got, const Tensor& want, const char* what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(at::allclose(got, want, 1e-9, 1e-10)) << what << "\n got " << got << "\n want " << want;
}

// Runs fn, which must throw c10::Error whose message contains `needle`.
template <typename Fn>
void expect_error(Fn fn, const std::string& needle) {
  try {
    fn();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message lacks \"" << needle << "\": " << e.what();
    return;
  }
  ADD_FAILURE() << "no c10::Error (expected one mentioning \"" << needle << "\")";
}

// Every operator schema registered in the bpkernels namespace.
std::vector<c10::OperatorName> registered_ops() {
  std::vector<c10::OperatorName> names;
  for (const c10::OperatorName& name : c10::Dispatcher::singleton().getAllOpNames()) {
    const auto ns = name.getNamespace();
    if (ns && *ns == "bpkernels") names.push_back(name);
  }
  return names;
}

TEST(Dispatch, EveryOperatorHasACpuKernel) {
  const std::vector<c10::OperatorName> names = registered_ops();
  EXPECT_GE(names.size(), 15u) << "the bpkernels schemas were not registered";
  for (const c10::OperatorName& name : names) {
    const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(name.name.c_str(), "");
    // A CPU kernel of its own, or the composite (every device) one of csrc/linear_composite.cpp.
    EXPECT_TRUE(handle.hasComputedKernelForDispatchKey(c10::DispatchKey::CPU)) << name.name;
  }
}

// ---- §11 values ----------------------------------------------------------------------------

// §11.2: x̂ (N×B), H (K×N), b_top (K×B).
struct Layer112 {
  Tensor x_hat = mat({{0.5, -0.2}, {-0.8, 0.1}, {0.3, 0.9}}).t().contiguous();  // [B, N]
  Tensor delta = 1.0 - x_hat.square();
  Tensor field = mat({{0.4, -1.0, 0.7}, {-0.3, 0.2, 1.5}});                      // [K, N]
  Tensor mag = field.tanh();
  Tensor b_top = mat({{1.0, -0.5}, {2.0, 0.3}}).t().contiguous();                // [B, K]
};

TEST(Dispatch, UpfieldAndOutputKnownValues) {
  const auto upfield = op<Tensor(const Tensor&, const Tensor&)>("bp_upfield");
  const Tensor u = upfield.call(mat({{0.0, 1.0, -2.0, 10.0, -40.0}}), mat({{1.0, 1.0, 0.25, 1.0, 1.0}}));
  expect_spec(u, mat({{0.0, 0.834133932993, -5.18003490739, 26.6156425753, -402.304221007}}), "U");

  const auto output = op<Pair(const Tensor&, const Tensor&, const Tensor&, bool)>("bp_output");
  const Tensor omega = mat({{1.0, 0.5, 0.3, -1.0, -1.0, -30.0}});
  const Tensor var = mat({{1.0, 1.0, 4.0, 1.0, 1.0, 1.0}});
  auto [g, gamma] = output.call(mat({{0.0, 1.0, -0.7, kInf, -kInf, kInf}}), omega, var, false);
  expect_spec(g, mat({{0.0, 0.415181116979, -0.256925142214, 1.52513527616, -0.287599970939, 30.0332596674}}), "g");
  expect_spec(gamma, mat({{0.0, 0.379965918385, 0.0467411430357, 0.80090233443, 0.370313714223, 0.998896228488}}), "Γ");
  // Hard labels ±1 are the ±inf fields.
  auto [g_hard, gamma_hard] = output.call(mat({{1.0, -1.0, 1.0}}), mat({{-1.0, -1.0, -30.0}}), mat({{1.0, 1.0, 1.0}}), true);
  expect_spec(g_hard, mat({{1.52513527616, -0.287599970939, 30.0332596674}}), "g hard");
  expect_spec(gamma_hard, mat({{0.80090233443, 0.370313714223, 0.998896228488}}), "Γ hard");
}

TEST(Dispatch, HiddenLayerBpiStep) {
  const Layer112 L;
  const auto fwd = op<Triple(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&)>("bp_linear_fwd");
  auto [omega, var, u] = fwd.call(L.x_hat, L.delta, L.mag, std::nullopt);
  expect_spec(omega, mat({{0.980560139, 0.3917817914}, {-0.0320120863, 0.8926334828}}).t(), "ω");
  expect_spec(var, mat({{2.5598198483, 2.6925643727}, {2.8801153571, 2.3325882958}}).t(), "V");
  expect_spec(u, mat({{0.497360491, 0.190997281}, {-0.0150506805, 0.4735814677}}).t(), "u");

  const auto bwd = op<Pair(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, bool)>(
      "bp_linear_bwd_bpi");
  auto [b, h_in] = bwd.call(L.b_top, omega, var, L.x_hat, L.mag, false, true);
  expect_spec(b, mat({{-0.0261637176, -0.1255292487}, {-0.1626439736, 0.2059904727}, {0.6246446154, 0.0052030803}}).t(), "b");
  expect_spec(h_in, mat({{0.1785896255, -0.2835748149, -0.1168364097}, {0.1916530543, -0.3306122345, 0.2902157929}}), "H_in");

  const auto update = op<Tensor(Tensor&, Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                                double, double, double, bool)>("bp_field_update_");
  Tensor field = L.field.clone(), mag = L.mag.clone();
  const void* ptr = field.data_ptr();
  const Tensor delta = update.call(field, mag, h_in, std::nullopt, std::nullopt, 1.0, 0.0, 0.8, false);
  EXPECT_EQ(field.data_ptr(), ptr);
  const Tensor m_new = mat({{0.4082870867, -0.7807622157, 0.5884864196}, {-0.2546350826, 0.1319253484, 0.9132752699}});
  expect_spec(field, mat({{0.5785896255, -1.2835748149, 0.5831635903}, {-0.1083469457, -0.1306122345, 1.7902157929}}), "H_new");
  expect_spec(mag, m_new, "m_new");
  const auto weight_var = op<Tensor(const Tensor&, const OptTensor&)>("bp_weight_var");
  expect_spec(weight_var.call(mag, std::nullopt), 1.0 - m_new.square(), "σ_new");
  EXPECT_EQ(delta.dim(), 0);
  expect_spec(delta, (m_new - L.mag).abs().mean(), "δ");
}

TEST(Dispatch, HiddenLayerMfStep) {
  const Layer112 L;
  const auto fwd = op<Triple(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&)>("bp_linear_fwd");
  const auto output = op<Pair(const Tensor&, const Tensor&, const Tensor&, bool)>("bp_output");
  const auto bwd = op<Pair(const Tensor&, const Tensor&, const Tensor&, bool)>("bp_linear_bwd_mf");
  auto [omega, var, u] = fwd.call(L.x_hat, L.delta, L.mag, std::nullopt);
  auto [g, gamma] = output.call(L.b_top, omega, var, false);
  expect_spec(g, mat({{0.2331017018, -0.239252915}, {0.4598268111, 0.1136854648}}).t(), "g");
  auto [b, h_in] = bwd.call(g, L.x_hat, L.mag, true);
  expect_spec(b, mat({{-0.0453865999, -0.1240219065}, {-0.0867704298, 0.2046523269}, {0.5570905924, -0.0416945525}}).t(), "b");
  expect_spec(h_in, mat({{0.1644014339, -0.210406653, -0.1453971129}, {0.2071763126, -0.3564929024, 0.2402649617}}), "H_in");
  auto [b_first, h_first] = bwd.call(g, L.x_hat, L.mag, false);  // first layer: no b
  EXPECT_EQ(b_first.sizes(), (at::IntArrayRef{2, 0}));
  EXPECT_TRUE(at::equal(h_first, h_in));
}

TEST(Dispatch, ArgmaxOutput) {
  const auto argmax = op<Tensor(const Tensor&, const Tensor&, const Tensor&)>("bp_argmax_output");
  const Tensor omega = mat({{0.3, -1.0}, {1.2, 0.4}, {-0.5, 0.2}}).t().contiguous();
  const Tensor var = mat({{1.0, 2.0}, {0.5, 1.5}, {2.0, 0.7}}).t().contiguous();
  const Tensor labels = at::tensor({int64_t{1}, int64_t{0}}, at::kLong);
  const Tensor g = argmax.call(omega, var, labels);
  expect_spec(g, mat({{-0.3234452631, 1.5090389172}, {0.4882613825, -0.7095758987}, {-0.1648161195, -0.7994630185}}).t(), "g");
  EXPECT_LT(g.sum(1).abs().max().item<double>(), 1e-15);
}

TEST(Dispatch, BayesianForward) {
  // docs/algorithms.md §11.5's net with its initial fields: x̂_out = erf(ω/(√2 s)) through both layers.
  const auto bayes = op<Pair(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&)>("bp_bayes_fwd");
  const Tensor x = mat({{0.5, -1.0}, {1.5, 0.2}, {-0.3, 0.8}}).t().contiguous();
  const Tensor m1 = mat({{0.4, -1.0, 0.7}, {-0.3, 0.2, 1.5}}).tanh(), m2 = mat({{0.9, -0.4}}).tanh();
  auto [x2, d2] = bayes.call(x, std::nullopt, m1, std::nullopt);
  auto [x_out, d_out] = bayes.call(x2, d2, m2, std::nullopt);
  expect_spec(x_out, mat({{-0.2803784759, -0.1640556698}}).t(), "x̂_out");
}

TEST(Dispatch, Float32MatchesFloat64) {
  const Layer112 L;
  const auto bwd = op<Pair(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, bool)>(
      "bp_linear_bwd_bpi");
  const auto fwd = op<Triple(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&)>("bp_linear_fwd");
  auto [omega, var, u] = fwd.call(L.x_hat, L.delta, L.mag, std::nullopt);
  auto [b64, h64] = bwd.call(L.b_top, omega, var, L.x_hat, L.mag, false, true);
  auto [b32, h32] = bwd.call(L.b_top.to(at::kFloat), omega.to(at::kFloat), var.to(at::kFloat),
                             L.x_hat.to(at::kFloat), L.mag.to(at::kFloat), false, true);
  EXPECT_EQ(b32.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::allclose(b32.to(at::kDouble), b64, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(h32.to(at::kDouble), h64, 1e-5, 1e-6));
}

// ---- bad inputs ------------------------------------------------------------------------------

TEST(Dispatch, BadInputsThrow) {
  const Layer112 L;
  const auto fwd = op<Triple(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&)>("bp_linear_fwd");
  // mag with the wrong fan-in N
  const Tensor mask = at::ones_like(L.mag);
  expect_error([&] { fwd.call(L.x_hat, L.delta, at::zeros({2, 4}, at::kDouble), mask); },
               "bp_linear_fwd: mag must have shape [K, N]");
  // mask of the wrong rank
  expect_error([&] { fwd.call(L.x_hat, L.delta, L.mag, mask[0]); }, "mask must have shape");
  // mixed dtypes, integer dtype, empty batch
  expect_error([&] { fwd.call(L.x_hat, L.delta, L.mag.to(at::kFloat), mask); }, "mag must have dtype");
  expect_error([&] { fwd.call(L.x_hat.to(at::kInt), L.delta, L.mag, mask); }, "x_hat must be float32 or float64");
  expect_error([&] { fwd.call(L.x_hat.narrow(0, 0, 0), std::nullopt, L.mag, mask); }, "the batch is empty");
  const auto weight_var = op<Tensor(const Tensor&, const OptTensor&)>("bp_weight_var");
  expect_error([&] { weight_var.call(L.mag, mask.t()); }, "bp_weight_var: mask must have shape of mag");

  const auto argmax = op<Tensor(const Tensor&, const Tensor&, const Tensor&)>("bp_argmax_output");
  const Tensor omega = at::zeros({2, 3}, at::kDouble);
  expect_error([&] { argmax.call(omega, omega, at::tensor({int64_t{0}, int64_t{3}}, at::kLong)); },
               "label 3 of sample 1 is outside [0, 3)");
  expect_error([&] { argmax.call(omega, omega, at::tensor({0, 1}, at::kInt)); }, "labels must be an int64 tensor");

  const auto bwd = op<Pair(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, bool)>(
      "bp_linear_bwd_bpi");
  const Tensor bk = at::zeros({2, 2}, at::kDouble);
  expect_error([&] { bwd.call(at::zeros({2, 3}, at::kDouble), bk, bk, L.x_hat, L.mag, false, true); },
               "b_top must have shape [B, K]");

  const auto update = op<Tensor(Tensor&, Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                                double, double, double, bool)>("bp_field_update_");
  Tensor field = L.field.clone(), mag = L.mag.t().contiguous().t();
  expect_error([&] { update.call(field, mag, L.field, std::nullopt, std::nullopt, 1.0, 0.0, 0.8, false); },
               "mag is updated in place and must be contiguous");
}

}  // namespace
