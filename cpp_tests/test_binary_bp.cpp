// Host tests of the torch-free scalar maths in bpkernels/binary_bp.h: the known values of
// docs/algorithms.md §11.1–§11.4, symmetries, far tails, hard labels as ±inf fields, b = 0, the argmax
// identity and the field / damping updates. Reference values come from docs/algorithms.md §11 or from mpmath
// at 40 digits (the formulas of docs/algorithms.md §2.2).
#include "bpkernels/binary_bp.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// docs/algorithms.md §11 tolerances: 1e-9 relative in float64, 1e-5 in float32.
template <typename T>
double rel_tol() {
  return sizeof(T) == 8 ? 1e-9 : 1e-5;
}

::testing::AssertionResult near_rel(double got, double want, double rtol) {
  const double err = std::fabs(got - want);
  if (err <= rtol * std::fabs(want)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << ", want " << want << ": relative error "
                                       << err / std::fabs(want) << " > " << rtol;
}

#define EXPECT_REL(got, want, rtol) \
  EXPECT_TRUE(near_rel(static_cast<double>(got), static_cast<double>(want), (rtol)))

// g(b, ω, s) through the soft-field path (any b, ±inf included).
template <typename T>
T g_soft(T b, T omega, T s) {
  return bpk::output_g(bpk::output_coef(b, s), omega);
}

// g for a hard label y = ±1.
template <typename T>
T g_hard(T y, T omega, T s) {
  return bpk::output_g_hard(bpk::output_coef_hard(y, s), omega);
}

// Γ = −∂g/∂ω through the soft-field path (any b, ±inf included).
template <typename T>
T gamma_soft(T b, T omega, T s) {
  const bpk::OutputCoef<T> k = bpk::output_coef(b, s);
  T g, gamma;
  bpk::output_g_gamma(k.alpha, k.c, k.num, omega, s * s, g, gamma);
  return gamma;
}

// Γ for a hard label y = ±1 (c = −∞).
template <typename T>
T gamma_hard(T y, T omega, T s) {
  const bpk::OutputCoef<T> k = bpk::output_coef_hard(y, s);
  T g, gamma;
  bpk::output_g_gamma(k.alpha, k.c, k.num, omega, s * s, g, gamma);
  return gamma;
}

template <typename T>
class BinaryBpTyped : public ::testing::Test {};
using FloatTypes = ::testing::Types<double, float>;
TYPED_TEST_SUITE(BinaryBpTyped, FloatTypes);

// ---- §11.1 -------------------------------------------------------------------------------

TYPED_TEST(BinaryBpTyped, UpfieldKnownValues) {
  using T = TypeParam;
  struct Case {
    double omega, s, u;
  };
  const std::vector<Case> cases = {
      {0.0, 1.0, 0.0},
      {1.0, 1.0, 0.834133932993},
      {-2.0, 0.5, -5.18003490739},
      {10.0, 1.0, 26.6156425753},
      {-40.0, 1.0, -402.304221007},
      // mpmath: ½ ln((2 − erfc y)/erfc y), y = |ω|/(√2 s)
      {0.3, 1.0, 0.24034632829018472574},
      {1e-5, 1.0, 7.9788456080649898139e-6},
      {8.5, 1.0, 19.59869821410883464},  // beyond where erf rounds to 1 in float64
      {-6.0, 1.0, -10.368384474494059005},
      {1000.0, 1.0, 250003.91334740609215},
      {-300.0, 2.0, -5627.9648091334040919},
  };
  for (const Case& c : cases) {
    const T u = bpk::upfield<T>(T(c.omega), T(c.s));
    ASSERT_TRUE(std::isfinite(u)) << "U(" << c.omega << ", " << c.s << ")";
    if (c.u == 0.0) {
      EXPECT_EQ(u, T(0));
    } else {
      EXPECT_REL(u, c.u, rel_tol<T>()) << "U(" << c.omega << ", " << c.s << ")";
    }
  }
}

TYPED_TEST(BinaryBpTyped, OutputKnownValues) {
  using T = TypeParam;
  struct Case {
    double b, omega, s, g, gamma;
  };
  const std::vector<Case> cases = {
      {1.0, 0.5, 1.0, 0.415181116979, 0.379965918385},
      {-0.7, 0.3, 2.0, -0.256925142214, 0.0467411430357},
      {kInf, -1.0, 1.0, 1.52513527616, 0.80090233443},
      {-kInf, -1.0, 1.0, -0.287599970939, 0.370313714223},
      {kInf, -30.0, 1.0, 30.0332596674, 0.998896228488},
      // mpmath, direct formula g = 2 sinh b G(ω/s) / (s [e^b H(−ω/s) + e^−b H(ω/s)]):
      {10.0, -6.0, 1.0, 1.9935691084385111873, -7.9870968605107467466},  // docs/algorithms.md §10.1 pitfall
      {30.0, -6.0, 1.0, 6.1584826045445988626, 0.97601236321083288377},  // tanh b rounds to 1
      {-20.0, 3.0, 0.5, -12.316965156050999357, 3.9040487827624266586},
      {5.0, -10.0, 2.0, 0.016270121311659554851, -0.040410586431652768693},
      {kInf, -1000.0, 1.0, 1000.00099999800001, 0.99999900000599995},
      {-kInf, 7.0, 0.25, -112.14249501387633408, 15.979746383129033232},
  };
  for (const Case& c : cases) {
    const T s = T(c.s), omega = T(c.omega);
    const T g = g_soft<T>(T(c.b), omega, s);
    EXPECT_REL(g, c.g, rel_tol<T>()) << "g(" << c.b << ", " << c.omega << ", " << c.s << ")";
    // No (ω/s)² loss in the far disagreeing tail (docs/algorithms.md §10.15).
    EXPECT_REL(gamma_soft<T>(T(c.b), omega, s), c.gamma, rel_tol<T>())
        << "Γ(" << c.b << ", " << c.omega << ", " << c.s << ")";
    if (std::isinf(c.b)) {  // the hard-label path gives the same numbers
      const T gh = g_hard<T>(T(c.b > 0 ? 1 : -1), omega, s);
      EXPECT_REL(gh, c.g, rel_tol<T>());
    }
  }
}

TYPED_TEST(BinaryBpTyped, OutputUnderflowAndZeroField) {
  using T = TypeParam;
  // g(3, 40, 1) underflows to exactly 0 (docs/algorithms.md §11.1), and so does Γ.
  const T g = g_soft<T>(T(3), T(40), T(1));
  EXPECT_EQ(g, T(0));
  EXPECT_EQ(gamma_soft<T>(T(3), T(40), T(1)), T(0));
  // b = 0 (and −0): no information from above, g = 0 exactly for every ω, tails included.
  for (T b : {T(0), T(-0.0)}) {
    for (T omega : {T(-1e6), T(-40), T(-1), T(0), T(0.5), T(40), T(1e6)}) {
      for (T s : {T(1e-4), T(1), T(30)}) {
        EXPECT_EQ(g_soft<T>(b, omega, s), T(0)) << omega << " " << s;
      }
    }
  }
  // A hard label agreeing strongly with ω: g → 0+ (no NaN from 0/0).
  const T agree = g_hard<T>(T(1), T(40), T(1));
  EXPECT_TRUE(agree >= T(0) && agree < T(1e-30)) << agree;
}

// Γ of a hard label against ω (margin −z, z = −yω/s > 0) equals GH(z)(GH(z) − z)/s² → 1/s²:
// the product form g (ω/V + g) lost ~z² ulps here (22 % at z = 1000 and a wrong sign at 1e4 in
// float32). GH(z)(GH(z) − z) from mpmath at 60 digits; s powers of two (ω, V exact).
TYPED_TEST(BinaryBpTyped, GammaFarMisclassifiedTail) {
  using T = TypeParam;
  struct Case {
    double z, f;
  };
  const Case cases[] = {
      {3.0, 0.92944081321473188314},    {5.5, 0.97213822214555377023},
      {30.0, 0.998896228488109909},     {1e2, 0.99990005995005173655},
      {1e3, 0.99999900000599995},       {1e4, 0.9999999900000006},
      {1e6, 0.999999999999},
  };
  for (const Case& c : cases) {
    for (double s : {0.25, 1.0, 64.0}) {
      for (double y : {-1.0, 1.0}) {
        const T omega = T(-y * c.z * s);
        EXPECT_REL(gamma_hard<T>(T(y), omega, T(s)), c.f / (s * s), 2 * rel_tol<T>()) << c.z << " " << s;
        EXPECT_REL(gamma_soft<T>(T(y * kInf), omega, T(s)), c.f / (s * s), 2 * rel_tol<T>()) << c.z << " " << s;
      }
    }
  }
}

// ---- labels ------------------------------------------------------------------------------

TYPED_TEST(BinaryBpTyped, InfiniteFieldIsHardLabel) {
  using T = TypeParam;
  EXPECT_EQ(bpk::soft_label_log_ratio(T(kInf)), -T(kInf));
  EXPECT_EQ(bpk::soft_label_log_ratio(-T(kInf)), -T(kInf));
  EXPECT_EQ(bpk::soft_label_log_ratio(T(0)), T(kInf));
  for (T s : {T(1e-4), T(0.3), T(1), T(17)}) {
    for (T omega : {T(-1e4), T(-35), T(-2), T(0), T(0.7), T(9), T(1e4)}) {
      for (T y : {T(-1), T(1)}) {
        const T hard = g_hard<T>(y, omega, s);
        ASSERT_TRUE(std::isfinite(hard)) << y << " " << omega << " " << s;
        EXPECT_EQ(g_soft<T>(y * T(kInf), omega, s), hard) << y << " " << omega << " " << s;
      }
    }
  }
}

TYPED_TEST(BinaryBpTyped, SoftLabelLogRatio) {
  using T = TypeParam;
  // c = ln((1 − |tanh b|)/|tanh b|), also where tanh b rounds to ±1.
  for (double b : {0.01, 0.5, 1.0, 3.0, -7.0}) {
    const double t = std::tanh(std::fabs(b));
    EXPECT_REL(bpk::soft_label_log_ratio(T(b)), std::log((1 - t) / t), 10 * rel_tol<T>()) << b;
  }
  EXPECT_REL(bpk::soft_label_log_ratio(T(30)), std::log(2.0) - 60.0, rel_tol<T>());
  // Small |b|: c = −|b| − ln sinh|b| (mpmath, 40 digits). 1 − e^{−2|b|} has no accuracy left
  // there (in float32 it is 0 for |b| ≤ 3e-8: c = +∞, g = 0).
  struct Case {
    double b, c;
  };
  const Case small[] = {{1e-30, 69.077552789821370521}, {3e-8, 17.322068425284255631},
                        {1e-4, 9.21024037030951607}, {0.1, 2.2009189815304652235},
                        {-0.124, 1.9609123588817364662}};
  for (const Case& c : small) {
    EXPECT_REL(bpk::soft_label_log_ratio(T(c.b)), c.c, 2 * rel_tol<T>()) << c.b;
  }
  EXPECT_REL(bpk::soft_label_log_ratio(T(-200)), std::log(2.0) - 400.0, rel_tol<T>());
}

// ---- symmetries --------------------------------------------------------------------------

TYPED_TEST(BinaryBpTyped, OddSymmetries) {
  using T = TypeParam;
  const std::vector<T> fields = {T(-kInf), T(-25), T(-3), T(-0.4), T(0.01), T(2), T(12), T(kInf)};
  const std::vector<T> omegas = {T(-300), T(-20), T(-1.5), T(-0.1), T(0), T(0.3), T(4), T(38)};
  for (T s : {T(1e-4), T(0.5), T(2), T(40)}) {
    for (T omega : omegas) {
      // U(−ω, s) = −U(ω, s), exactly
      EXPECT_EQ(bpk::upfield(-omega, s), -bpk::upfield(omega, s)) << omega << " " << s;
      for (T b : fields) {
        // g(−b, −ω, s) = −g(b, ω, s), exactly; Γ is even
        const T g = g_soft(b, omega, s), g_neg = g_soft(-b, -omega, s);
        ASSERT_TRUE(std::isfinite(g)) << b << " " << omega << " " << s;
        EXPECT_EQ(g_neg, -g) << b << " " << omega << " " << s;
        EXPECT_EQ(gamma_soft(-b, -omega, s), gamma_soft(b, omega, s));
      }
    }
  }
}

TEST(BinaryBp, GammaIsMinusDerivativeOfG) {
  for (double b : {-kInf, -2.0, 0.3, 1.0, 6.0, kInf}) {
    for (double omega : {-4.0, -1.0, 0.0, 0.5, 3.0}) {
      for (double s : {0.5, 1.0, 2.5}) {
        const double h = 1e-5 * s;
        const double fd = -(g_soft(b, omega + h, s) - g_soft(b, omega - h, s)) / (2 * h);
        EXPECT_NEAR(gamma_soft(b, omega, s), fd, 1e-7 * (1 + std::fabs(fd)))
            << b << " " << omega << " " << s;
      }
    }
  }
}

// ---- tails -------------------------------------------------------------------------------

TYPED_TEST(BinaryBpTyped, FarTailsStayFinite) {
  using T = TypeParam;
  for (T ratio : {T(-1e6), T(-1e3), T(-60), T(-38), T(-9), T(9), T(38), T(60), T(1e3), T(1e6)}) {
    for (T s : {T(1e-4), T(1), T(100)}) {
      const T omega = ratio * s;
      const T u = bpk::upfield(omega, s);
      ASSERT_TRUE(std::isfinite(u)) << omega << " " << s;
      // U ~ sgn(ω) [y²/2 + ½ ln(√π y) + ½ ln 2], y = |ω|/(√2 s), for large |ω|/s
      // (so U grows like ω²/(4s²))
      const double y = std::fabs(double(ratio)) / std::sqrt(2.0);
      const double asym = y * y / 2 + 0.5 * std::log(std::sqrt(std::numbers::pi) * y) + 0.5 * std::log(2.0);
      if (y > 20) EXPECT_REL(u, ratio > 0 ? asym : -asym, 1e-5);
      EXPECT_EQ(u > 0, ratio > 0);
      for (T b : {-T(kInf), T(-30), T(-1), T(0.5), T(8), T(kInf)}) {
        const T g = g_soft(b, omega, s);
        ASSERT_TRUE(std::isfinite(g)) << b << " " << omega << " " << s;
        EXPECT_TRUE(g == T(0) || (g > 0) == (b > 0)) << "g has the sign of b";
        ASSERT_TRUE(std::isfinite(gamma_soft(b, omega, s))) << b << " " << omega;
      }
      // A hard label against ω: the perceptron's g = GH(z)/s ≈ |ω|/s² (linear growth).
      const T against = g_hard(ratio > 0 ? T(-1) : T(1), omega, s);
      if (std::fabs(double(ratio)) >= 38) {
        EXPECT_REL(std::fabs(against), std::fabs(double(omega)) / (double(s) * double(s)), 1e-3);
      }
    }
  }
}

// ---- argmax output -----------------------------------------------------------------------

TYPED_TEST(BinaryBpTyped, ArgmaxKnownValuesAndIdentity) {
  using T = TypeParam;
  // docs/algorithms.md §11.4: classes (columns) of two samples, true classes 2 and 1 (1-based).
  const double omega[2][3] = {{0.3, 1.2, -0.5}, {-1.0, 0.4, 0.2}};
  const double var[2][3] = {{1.0, 0.5, 2.0}, {2.0, 1.5, 0.7}};
  const int label[2] = {1, 0};
  const double want[2][3] = {{-0.3234452631, 0.4882613825, -0.1648161195},
                             {1.5090389172, -0.7095758987, -0.7994630185}};
  for (int a = 0; a < 2; ++a) {
    const int c = label[a];
    T sum = 0;
    for (int k = 0; k < 3; ++k) {
      if (k == c) continue;
      const T g = bpk::argmax_g_wrong_class(T(omega[a][c]), T(omega[a][k]), T(var[a][c]), T(var[a][k]));
      EXPECT_NEAR(double(g), want[a][k], 1e-10 + rel_tol<T>() * std::fabs(want[a][k]));
      sum += g;
    }
    EXPECT_NEAR(double(-sum), want[a][c], 1e-10 + rel_tol<T>() * std::fabs(want[a][c]));
  }
  // It is the hard-label perceptron g with margin ω_c − ω_k and s = √(V_k + V_c), times −1.
  for (double margin : {-30.0, -2.0, 0.0, 1.5, 25.0}) {
    const T g = bpk::argmax_g_wrong_class(T(margin), T(0), T(0.7), T(1.8));
    const T s = std::sqrt(T(2.5));
    EXPECT_REL(g, -double(g_hard(T(1), T(margin), s)), rel_tol<T>()) << margin;
  }
}

// ---- activations and field updates -------------------------------------------------------

TYPED_TEST(BinaryBpTyped, InputMoments) {
  using T = TypeParam;
  T x, d;
  bpk::input_moments(T(0.3), T(-0.1), x, d);
  EXPECT_REL(x, std::tanh(0.2), rel_tol<T>());
  EXPECT_REL(d, 1 - std::tanh(0.2) * std::tanh(0.2), rel_tol<T>());
  bpk::input_moments(T(50), T(0), x, d);  // saturated: x̂ = 1, Δ = 0 exactly
  EXPECT_EQ(x, T(1));
  EXPECT_EQ(d, T(0));
  bpk::input_moments(T(-30), T(-kInf), x, d);
  EXPECT_EQ(x, T(-1));
  EXPECT_EQ(d, T(0));
}

TYPED_TEST(BinaryBpTyped, FieldUpdate) {
  using T = TypeParam;
  // docs/algorithms.md §11.2 BPI, weight (1, 1): H = 0.4, H_in = 0.1785896255, θ = ρH, ρ = 1, r = 0, ψ = 0.8.
  T field = T(0.4);
  const T m = bpk::field_update(field, T(0.1785896255), T(0.4), std::tanh(T(0.4)), T(1), T(1),
                                T(0), T(0.8));
  EXPECT_REL(field, 0.5785896255, rel_tol<T>());
  EXPECT_REL(m, 0.4082870867, rel_tol<T>());
  // General form H ← H_in + r H + ρ H_prior, m ← [ψ m + (1 − ψ) tanh H]·mask.
  field = T(-1.5);
  const T m2 = bpk::field_update(field, T(0.25), T(2.0), T(-0.3), T(1), T(0.9), T(0.1), T(0.6));
  const double h2 = 0.25 + 0.1 * -1.5 + 0.9 * 2.0;
  EXPECT_REL(field, h2, rel_tol<T>());
  EXPECT_REL(m2, 0.6 * -0.3 + 0.4 * std::tanh(h2), rel_tol<T>());
  // A masked weight keeps m = 0 (its field still moves).
  field = T(3);
  EXPECT_EQ(bpk::field_update(field, T(1), T(3), T(0.5), T(0), T(1), T(0), T(0.8)), T(0));
  // Saturation: m reaches ±1 without overflow.
  field = T(0);
  EXPECT_EQ(bpk::field_update(field, T(1e30), T(0), T(1), T(1), T(1), T(0), T(0)), T(1));
}

TYPED_TEST(BinaryBpTyped, FieldUpdateDampedField) {
  using T = TypeParam;
  // Argmax layer: H ← ψ H + (1 − ψ)(H_in + r H + ρ H_prior), m ← tanh(H)·mask.
  T field = T(0.7);
  const T m = bpk::field_update_damped_field(field, T(-0.2), T(0.7), T(1), T(0.9), T(0.05), T(0.8));
  const double h = 0.8 * 0.7 + 0.2 * (-0.2 + 0.05 * 0.7 + 0.9 * 0.7);
  EXPECT_REL(field, h, rel_tol<T>());
  EXPECT_REL(m, std::tanh(h), rel_tol<T>());
  // With θ = ρH: H ← (ψ + (1 − ψ)ρ) H + (1 − ψ) H_in (docs/algorithms.md §4.5).
  field = T(2);
  bpk::field_update_damped_field(field, T(1), T(2), T(1), T(0.9), T(0), T(0.8));
  EXPECT_REL(field, (0.8 + 0.2 * 0.9) * 2 + 0.2 * 1, rel_tol<T>());
  field = T(2);
  EXPECT_EQ(bpk::field_update_damped_field(field, T(1), T(2), T(0), T(0.9), T(0), T(0.8)), T(0));
}

TYPED_TEST(BinaryBpTyped, WeightVariance) {
  using T = TypeParam;
  // σ = (1 − m²)·mask: 0 for a masked or a saturated weight, 1 at m = 0.
  EXPECT_EQ(bpk::weight_variance(T(0.5), T(1)), T(0.75));
  EXPECT_EQ(bpk::weight_variance(T(-0.5), T(0)), T(0));
  EXPECT_EQ(bpk::weight_variance(T(1), T(1)), T(0));
  EXPECT_EQ(bpk::weight_variance(T(0), T(1)), T(1));
  EXPECT_REL(bpk::weight_variance(std::tanh(T(0.4)), T(1)), 1.0 - std::pow(std::tanh(0.4), 2), rel_tol<T>());
}

TYPED_TEST(BinaryBpTyped, CavityHelpers) {
  using T = TypeParam;
  // x̃ = tanh(x_in + b̃) for a hidden layer, x_in itself for the first layer (no b̃).
  const T b_cav[2] = {T(0.3), T(-0.1)};
  EXPECT_REL(bpk::cavity_input(T(0.2), b_cav, 1), std::tanh(0.1), rel_tol<T>());
  EXPECT_EQ(bpk::cavity_input(T(0.2), static_cast<const T*>(nullptr), 1), T(0.2));
  // ω̃ = ω − m x.
  EXPECT_EQ(bpk::cavity_omega(T(1.5), T(0.5), T(-2)), T(2.5));
  // m̃ ← ψ m̃ + (1 − ψ) tanh(H − ĝ x̃)·mask.
  EXPECT_REL(bpk::cavity_mag_update(T(0.3), T(0.9), T(0.4), T(0.5), T(1), T(0.8)),
             0.8 * 0.3 + 0.2 * std::tanh(0.9 - 0.4 * 0.5), rel_tol<T>());
  EXPECT_REL(bpk::cavity_mag_update(T(0.3), T(0.9), T(0.4), T(0.5), T(0), T(0.8)), 0.8 * 0.3, rel_tol<T>());
}

}  // namespace
