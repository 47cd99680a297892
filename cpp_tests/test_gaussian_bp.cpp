// Host tests of the torch-free scalar maths of the Gaussian weight family in
// bpkernels/gaussian_bp.h (docs/algorithms.md §4.7): the weight variance, the curvature of the
// precision message (non-finite -> 0), one sample's precision-message term and the field /
// precision / damping update with its lower bound on Ω.
#include "bpkernels/gaussian_bp.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

TEST(GaussianBp, VarianceIsTheInversePrecision) {
  EXPECT_DOUBLE_EQ(bpk::gaussian_weight_variance(4.0), 0.25);
  EXPECT_FLOAT_EQ(bpk::gaussian_weight_variance(0.5f), 2.0f);
}

TEST(GaussianBp, CurvatureIsTheOutputCurvatureAndZeroWhereNotFinite) {
  const double omega = 0.3, var = 2.0;
  for (const auto& k : {bpk::output_coef_hard(1.0, std::sqrt(var)),
                        bpk::output_coef(0.7, std::sqrt(var))}) {
    double g = 0, g_ref = 0, gamma_ref = 0;
    const double gamma = bpk::precision_curvature(k.alpha, k.c, k.num, omega, var, g);
    bpk::output_g_gamma(k.alpha, k.c, k.num, omega, var, g_ref, gamma_ref);
    EXPECT_DOUBLE_EQ(gamma, gamma_ref);
    EXPECT_DOUBLE_EQ(g, g_ref);
    EXPECT_GT(gamma, 0.0);
  }
  // V = 0: Γ is not finite and becomes 0.
  const auto k0 = bpk::output_coef_hard(1.0, 0.0);
  double g = 0;
  EXPECT_EQ(bpk::precision_curvature(k0.alpha, k0.c, k0.num, 1.0, 0.0, g), 0.0);
  EXPECT_EQ(bpk::precision_curvature(kNaN, kNaN, kNaN, omega, var, g), 0.0);
}

TEST(GaussianBp, PrecisionMessageTerm) {
  // (x̂² + Δ)Γ − Δ g² with x̂ = 0.6, Δ = 0.64 (a hidden unit: x̂² + Δ = 1), Γ = 0.5, g = 0.7
  EXPECT_DOUBLE_EQ(bpk::precision_message_term(1.0, 0.64, 0.5, 0.49), 0.5 - 0.64 * 0.49);
  // first layer: Δ = 0, x̂ = 2
  EXPECT_DOUBLE_EQ(bpk::precision_message_term(4.0, 0.0, 0.5, 0.49), 2.0);
}

TEST(GaussianBp, FieldUpdate) {
  double H = 1.0, P = 2.0;
  // Ω = 3 + 0.1·2 + 0.9·5 = 7.7,  H = 0.4 + 0.1·1 + 0.9·(−2) = −1.3,  m = 0.8·0.2 + 0.2·H/Ω
  const double m = bpk::gaussian_field_update(H, P, 0.4, 3.0, -2.0, 5.0, 0.2, 0.9, 0.1, 0.8);
  EXPECT_DOUBLE_EQ(P, 7.7);
  EXPECT_DOUBLE_EQ(H, -1.3);
  EXPECT_DOUBLE_EQ(m, 0.8 * 0.2 + 0.2 * (-1.3 / 7.7));
}

TEST(GaussianBp, PrecisionIsClampedBelowAndNaNPropagates) {
  double H = 1.0, P = 2.0;
  const double m = bpk::gaussian_field_update(H, P, 0.5, -10.0, 1.0, 2.0, 0.0, 1.0, 0.0, 0.0);
  EXPECT_EQ(P, bpk::kMinPrecision);
  EXPECT_DOUBLE_EQ(m, 1.5 / bpk::kMinPrecision);
  double H2 = 1.0, P2 = 2.0;
  bpk::gaussian_field_update(H2, P2, 0.0, kNaN, 1.0, 2.0, 0.0, 1.0, 0.0, 0.5);
  EXPECT_TRUE(std::isnan(P2));
}

}  // namespace
