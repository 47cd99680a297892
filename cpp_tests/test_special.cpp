// Accuracy tests for bpkernels/special.h (bpk::erfcx, bpk::vexp) against 50-digit mpmath values
// (cpp_tests/special_values.bin, written by gen_special_values.py, read at run time from the
// path in BPK_SPECIAL_VALUES) and dense cross-checks; bpk::vlog, vlog1p and vtanh for float
// against the libm functions in double, in float ulps.
//
// Build standalone (from the repository root):
//   g++ -std=c++20 -O2 -Icsrc/include -DBPK_SPECIAL_VALUES='"cpp_tests/special_values.bin"' \
//       cpp_tests/test_special.cpp -lgtest -lgtest_main -pthread
// Every accuracy test prints its measured maximum relative error ("[ stats ]" lines).
#include "bpkernels/special.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef BPK_SPECIAL_VALUES
#error "BPK_SPECIAL_VALUES must name cpp_tests/special_values.bin (CMakeLists.txt defines it)"
#endif

namespace {

// ---- the reference values (special_values.bin, format in gen_special_values.py) -------------

// value = mantissa * 2^exponent, mantissa in [0.5, 1); exponents above kExpCap are capped at it
// (the value overflows every floating-point type).
struct RefPoint {
  double x;
  double mantissa;
  int exponent;
};

constexpr int kExpCap = 100000;

using Tables = std::map<std::string, std::vector<RefPoint>>;

Tables read_tables(const char* path) {
  static_assert(std::endian::native == std::endian::little, "special_values.bin is little-endian");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot open ") + path);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::size_t pos = 0;
  auto take = [&](void* dst, std::size_t n) {
    if (pos + n > bytes.size()) throw std::runtime_error(std::string(path) + " is truncated");
    std::memcpy(dst, bytes.data() + pos, n);
    pos += n;
  };
  char magic[8];
  take(magic, 8);
  if (std::memcmp(magic, "BPKSV1\0\0", 8) != 0) throw std::runtime_error(std::string(path) + ": bad magic");
  std::uint32_t n_tables = 0, exp_cap = 0;
  take(&n_tables, 4);
  take(&exp_cap, 4);
  if (exp_cap != kExpCap) throw std::runtime_error(std::string(path) + ": unexpected exponent cap");
  Tables tables;
  for (std::uint32_t t = 0; t < n_tables; ++t) {
    char name[17] = {};
    std::uint64_t n = 0;
    take(name, 16);
    take(&n, 8);
    std::vector<RefPoint>& rows = tables[name];
    rows.resize(n);
    for (RefPoint& r : rows) {
      std::int32_t e = 0;
      take(&r.x, 8);
      take(&r.mantissa, 8);
      take(&e, 4);
      r.exponent = e;
    }
  }
  if (pos != bytes.size()) throw std::runtime_error(std::string(path) + ": trailing bytes");
  return tables;
}

// The table `name` of special_values.bin (read once); throws if the file or the table is missing,
// so that every test using it fails.
const std::vector<RefPoint>& ref_table(const char* name) {
  static const Tables tables = read_tables(BPK_SPECIAL_VALUES);
  const auto it = tables.find(name);
  if (it == tables.end() || it->second.empty()) {
    throw std::runtime_error(std::string("special_values.bin has no table ") + name);
  }
  return it->second;
}

// The file holds every table, each with all the points of the generator's grids.
TEST(ReferenceValues, EveryTableIsComplete) {
  const std::pair<const char*, std::size_t> expected[] = {
      {"kErfcxF64", 9571}, {"kErfcxF32", 5736}, {"kTwoExpSqF64", 1959},
      {"kTwoExpSqF32", 1085}, {"kExpF32", 3018}};
  for (const auto& [name, n] : expected) EXPECT_EQ(ref_table(name).size(), n) << name;
}

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kTolErfcxF64 = 1e-13;
constexpr double kTolErfcxF32 = 1e-6;
constexpr double kTolVexpF32 = 3e-7;

// Relative error of `got` against the exact value V = mantissa * 2^exponent, in double.
// - Results below T's smallest normal number are measured against that number instead of V
//   (|got - V| / max(V, min_normal)): subnormals carry absolute, not relative, precision.
// - got = +inf is an error of max(0, (max - V)/V): exact where V >= T's largest finite number,
//   small where V is just below it, and +inf where V < max/2.
// - NaN, -inf or a negative result are +inf.
template <typename T>
double rel_error(T got, double mantissa, int exponent) {
  using L = std::numeric_limits<T>;
  if (std::isnan(got) || got < T(0)) return kInf;
  if (std::isinf(got)) {
    if (exponent > L::max_exponent) return 0.0;
    if (exponent < L::max_exponent) return kInf;
    const double max_scaled = std::ldexp(double(L::max()), -exponent);
    return std::max(0.0, (max_scaled - mantissa) / mantissa);
  }
  const double scaled = std::ldexp(double(got), -exponent);
  const double floor = std::ldexp(double(L::min()), -exponent);
  return std::fabs(scaled - mantissa) / std::max(mantissa, floor);
}

// The same for a reference given as a double (finite and >= 0, or +inf meaning "overflows T").
template <typename T>
double rel_error(T got, double ref) {
  if (std::isinf(ref)) return rel_error(got, 0.75, kExpCap);
  if (ref == 0.0) {
    return std::isnan(got) ? kInf : std::fabs(double(got)) / double(std::numeric_limits<T>::min());
  }
  int e = 0;
  const double m = std::frexp(ref, &e);
  return rel_error(got, m, e);
}

// Maximum error with its argument, optionally per region of x.
struct ErrorStats {
  std::string name;
  double max_err = 0.0;
  double at = 0.0;
  std::size_t count = 0;
  const char* unit = "rel err";

  void add(double x, double err) {
    ++count;
    if (!(err <= max_err)) {  // also catches NaN errors
      max_err = std::isnan(err) ? kInf : err;
      at = x;
    }
  }
  void print() const {
    std::printf("[ stats    ] %-44s max %s %9.3e at x = %-24.17g (%zu points)\n", name.c_str(),
                unit, max_err, at, count);
  }
};

struct Region {
  const char* name;
  double lo, hi;  // lo <= x < hi
};

// Evaluates f over the table (through an array loop, as the kernels do), checks max error <= tol
// (reporting the first few offending points) and prints per-region maxima.
template <typename T, typename F>
void check_table(const char* what, const std::vector<RefPoint>& table, F f, double tol,
                 const std::vector<Region>& regions) {
  const std::size_t N = table.size();
  std::vector<T> xs(N), ys(N);
  for (std::size_t i = 0; i < N; ++i) xs[i] = T(table[i].x);
  for (std::size_t i = 0; i < N; ++i) ys[i] = f(xs[i]);
  ErrorStats all{std::string(what) + " (all)"};
  std::vector<ErrorStats> per(regions.size());
  for (std::size_t r = 0; r < regions.size(); ++r) {
    per[r].name = std::string(what) + " " + regions[r].name;
  }
  int reported = 0;
  for (std::size_t i = 0; i < N; ++i) {
    ASSERT_EQ(double(xs[i]), table[i].x) << "reference point not representable";
    const double err = rel_error(ys[i], table[i].mantissa, table[i].exponent);
    all.add(table[i].x, err);
    for (std::size_t r = 0; r < regions.size(); ++r) {
      if (table[i].x >= regions[r].lo && table[i].x < regions[r].hi) per[r].add(table[i].x, err);
    }
    if (!(err <= tol) && reported++ < 10) {
      ADD_FAILURE() << what << ": x = " << table[i].x << " got " << ys[i] << ", rel err " << err;
    }
  }
  for (const auto& p : per) {
    if (p.count > 0) p.print();
  }
  all.print();
  EXPECT_LE(all.max_err, tol) << what << " at x = " << all.at;
}

// Every `stride`-th float bit pattern in [lo, hi] (both finite, same sign or straddling 0).
std::vector<float> float_sweep(float lo, float hi, std::uint32_t stride) {
  std::vector<float> out;
  auto push_range = [&](float a, float b) {  // 0 <= a <= b
    std::uint32_t ua, ub;
    std::memcpy(&ua, &a, 4);
    std::memcpy(&ub, &b, 4);
    for (std::uint64_t u = ua; u <= ub; u += stride) {
      float f;
      const std::uint32_t v = static_cast<std::uint32_t>(u);
      std::memcpy(&f, &v, 4);
      out.push_back(f);
    }
  };
  if (hi > 0.0f) push_range(std::max(lo, 0.0f), hi);
  if (lo < 0.0f) {
    const std::size_t first = out.size();
    push_range(std::max(-hi, 0.0f), -lo);
    for (std::size_t i = first; i < out.size(); ++i) out[i] = -out[i];
  }
  return out;
}

const std::vector<Region> kRegionsF64 = {
    {"x < -10", -kInf, -10.0},     {"-10 <= x < -1", -10.0, -1.0}, {"-1 <= x < 0", -1.0, 0.0},
    {"0 <= x < 1", 0.0, 1.0},      {"1 <= x < 10", 1.0, 10.0},     {"10 <= x < 1e6", 10.0, 1e6},
    {"x >= 1e6", 1e6, kInf},
};

const std::vector<Region> kRegionsF32 = {
    {"x < -1", -kInf, -1.0}, {"-1 <= x < 0", -1.0, 0.0}, {"0 <= x < 1", 0.0, 1.0},
    {"1 <= x < 10", 1.0, 10.0}, {"10 <= x < 1e6", 10.0, 1e6}, {"x >= 1e6", 1e6, kInf},
};

// ------------------------------------------------------------------------------------------------
// erfcx<double>
// ------------------------------------------------------------------------------------------------

TEST(ErfcxDouble, MatchesMpmath) {
  check_table<double>("erfcx<double> vs mpmath", ref_table("kErfcxF64"),
                      [](double x) { return bpk::erfcx(x); }, kTolErfcxF64, kRegionsF64);
}

TEST(ErfcxDouble, AroundAsymptoticSwitch) {
  std::vector<RefPoint> near;
  for (const auto& p : ref_table("kErfcxF64")) {
    if (p.x >= 9.9 && p.x <= 10.1) near.push_back(p);
  }
  ASSERT_GT(near.size(), 200u);
  ErrorStats s{"erfcx<double> 9.9 <= x <= 10.1"};
  for (const auto& p : near) s.add(p.x, rel_error(bpk::erfcx(p.x), p.mantissa, p.exponent));
  s.print();
  EXPECT_LE(s.max_err, kTolErfcxF64);
}

TEST(ErfcxDouble, OverflowBoundary) {
  // erfcx(x) = 2 exp(x^2) - erfcx(-x) crosses DBL_MAX at x = -26.62873571...: finite and
  // accurate above, +inf below (within the tolerance band at the crossing).
  ErrorStats s{"erfcx<double> -26.66 <= x <= -26.60"};
  int finite = 0, inf = 0;
  for (const auto& p : ref_table("kErfcxF64")) {
    if (p.x < -26.66 || p.x > -26.60) continue;
    const double y = bpk::erfcx(p.x);
    (std::isinf(y) ? inf : finite) += 1;
    s.add(p.x, rel_error(y, p.mantissa, p.exponent));
  }
  s.print();
  EXPECT_GT(finite, 50);
  EXPECT_GT(inf, 50);
  EXPECT_LE(s.max_err, kTolErfcxF64);
  EXPECT_TRUE(std::isfinite(bpk::erfcx(-26.6287357)));
  EXPECT_EQ(bpk::erfcx(-26.6287358), kInf);
  EXPECT_EQ(bpk::erfcx(-27.0), kInf);
  EXPECT_EQ(bpk::erfcx(-1e10), kInf);
  EXPECT_EQ(bpk::erfcx(-1e300), kInf);
  EXPECT_EQ(bpk::erfcx(-std::numeric_limits<double>::max()), kInf);
}

TEST(ErfcxDouble, SpecialValues) {
  using L = std::numeric_limits<double>;
  EXPECT_EQ(bpk::erfcx(0.0), 1.0);
  EXPECT_EQ(bpk::erfcx(-0.0), 1.0);
  EXPECT_EQ(bpk::erfcx(L::denorm_min()), 1.0);
  EXPECT_EQ(bpk::erfcx(-L::denorm_min()), 1.0);
  EXPECT_EQ(bpk::erfcx(L::infinity()), 0.0);
  EXPECT_FALSE(std::signbit(bpk::erfcx(L::infinity())));
  EXPECT_EQ(bpk::erfcx(-L::infinity()), L::infinity());
  EXPECT_TRUE(std::isnan(bpk::erfcx(L::quiet_NaN())));
  EXPECT_TRUE(std::isnan(bpk::erfcx(-L::quiet_NaN())));
  // Largest finite argument: 1/(x sqrt(pi)) = 3.14e-309 is subnormal; correctly rounded there.
  const double big = L::max();
  const double tiny = bpk::erfcx(big);
  EXPECT_GT(tiny, 0.0);
  EXPECT_LE(std::fabs(tiny - 0.56418958354775628695 / big), L::denorm_min());
  EXPECT_NEAR(bpk::erfcx(1e300) * 1e300, 0.56418958354775628695, 1e-16);
}

TEST(ErfcxDouble, SymmetryIdentity) {
  // erfcx(x) + erfcx(-x) = 2 exp(x^2) for 0 <= x <= 26.6 (where it is below DBL_MAX).
  ErrorStats s{"erfcx<double>(x) + erfcx(-x) vs 2exp(x^2)"};
  for (const auto& p : ref_table("kTwoExpSqF64")) {
    const double sum = bpk::erfcx(p.x) + bpk::erfcx(-p.x);
    s.add(p.x, rel_error(sum, p.mantissa, p.exponent));
  }
  s.print();
  EXPECT_LE(s.max_err, kTolErfcxF64);
}

TEST(ErfcxDouble, DenseVsLongDouble) {
  // exp(x^2) erfc(x) in x87 long double (64-bit mantissa, ~1e-17 relative here) on a dense
  // uniform grid over [-26.6, 100] (long double erfc underflows near 106).
  if (std::numeric_limits<long double>::digits < 64) GTEST_SKIP() << "long double too short";
  ErrorStats s{"erfcx<double> vs long double, [-26.6, 100]"};
  const int n = 1 << 20;
  std::vector<double> xs(n), ys(n);
  for (int i = 0; i < n; ++i) xs[i] = -26.6 + 126.6 * (i + 0.5) / n;
  for (int i = 0; i < n; ++i) ys[i] = bpk::erfcx(xs[i]);
  for (int i = 0; i < n; ++i) {
    const long double x = xs[i];
    const long double ref = std::exp(x * x) * std::erfc(x);
    int e = 0;
    const double m = static_cast<double>(std::frexp(ref, &e));
    s.add(xs[i], rel_error(ys[i], m, e));
  }
  s.print();
  EXPECT_LE(s.max_err, kTolErfcxF64);
}

TEST(ErfcxDouble, MonotoneAndNeverNaN) {
  // erfcx is strictly decreasing on the real line; check non-increase (up to rounding) along a
  // dense log grid over +-[1e-300, 1e300], and that no finite argument yields NaN.
  std::vector<double> xs;
  for (int i = -30000; i <= 30000; ++i) xs.push_back(-std::pow(10.0, i / 100.0));
  std::reverse(xs.begin(), xs.end());
  xs.push_back(0.0);
  for (int i = -30000; i <= 30000; ++i) xs.push_back(std::pow(10.0, i / 100.0));
  std::sort(xs.begin(), xs.end());
  double prev = kInf;
  for (double x : xs) {
    const double y = bpk::erfcx(x);
    ASSERT_FALSE(std::isnan(y)) << "x = " << x;
    ASSERT_GE(y, 0.0) << "x = " << x;
    EXPECT_LE(y, prev * (1 + 4e-16)) << "not decreasing at x = " << x;
    prev = y;
  }
}

// ------------------------------------------------------------------------------------------------
// erfcx<float>
// ------------------------------------------------------------------------------------------------

TEST(ErfcxFloat, MatchesMpmath) {
  check_table<float>("erfcx<float> vs mpmath", ref_table("kErfcxF32"),
                     [](float x) { return bpk::erfcx(x); }, kTolErfcxF32, kRegionsF32);
}

TEST(ErfcxFloat, OverflowBoundary) {
  // Crosses FLT_MAX at x = -9.382414...
  ErrorStats s{"erfcx<float> -9.45 <= x <= -9.30"};
  int finite = 0, inf = 0;
  for (const auto& p : ref_table("kErfcxF32")) {
    if (p.x < -9.45 || p.x > -9.30) continue;
    const float y = bpk::erfcx(static_cast<float>(p.x));
    (std::isinf(y) ? inf : finite) += 1;
    s.add(p.x, rel_error(y, p.mantissa, p.exponent));
  }
  s.print();
  EXPECT_GT(finite, 20);
  EXPECT_GT(inf, 20);
  EXPECT_LE(s.max_err, kTolErfcxF32);
  EXPECT_TRUE(std::isfinite(bpk::erfcx(-9.3824f)));
  EXPECT_EQ(bpk::erfcx(-9.3825f), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bpk::erfcx(-10.0f), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bpk::erfcx(-1e30f), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bpk::erfcx(-std::numeric_limits<float>::max()), std::numeric_limits<float>::infinity());
}

TEST(ErfcxFloat, SpecialValues) {
  using L = std::numeric_limits<float>;
  EXPECT_EQ(bpk::erfcx(0.0f), 1.0f);
  EXPECT_EQ(bpk::erfcx(-0.0f), 1.0f);
  EXPECT_EQ(bpk::erfcx(L::denorm_min()), 1.0f);
  EXPECT_EQ(bpk::erfcx(-L::denorm_min()), 1.0f);
  EXPECT_EQ(bpk::erfcx(L::infinity()), 0.0f);
  EXPECT_FALSE(std::signbit(bpk::erfcx(L::infinity())));
  EXPECT_EQ(bpk::erfcx(-L::infinity()), L::infinity());
  EXPECT_TRUE(std::isnan(bpk::erfcx(L::quiet_NaN())));
  EXPECT_TRUE(std::isnan(bpk::erfcx(-L::quiet_NaN())));
  // Largest finite argument: 1/(x sqrt(pi)) = 1.66e-39 is subnormal; within one subnormal ulp.
  const float big = L::max();
  const float tiny = bpk::erfcx(big);
  EXPECT_GT(tiny, 0.0f);
  EXPECT_LE(std::fabs(double(tiny) - 0.56418958354775628695 / double(big)),
            double(L::denorm_min()));
  EXPECT_NEAR(double(bpk::erfcx(1e30f)) * double(1e30f), 0.56418958354775628695, 1e-6);
}

TEST(ErfcxFloat, SymmetryIdentity) {
  // erfcx(x) + erfcx(-x) = 2 exp(x^2) for 0 <= x <= 9.3 (where it is below FLT_MAX).
  ErrorStats s{"erfcx<float>(x) + erfcx(-x) vs 2exp(x^2)"};
  for (const auto& p : ref_table("kTwoExpSqF32")) {
    const float x = static_cast<float>(p.x);
    const float sum = bpk::erfcx(x) + bpk::erfcx(-x);
    s.add(p.x, rel_error(sum, p.mantissa, p.exponent));
  }
  s.print();
  EXPECT_LE(s.max_err, kTolErfcxF32);
}

TEST(ErfcxFloat, DenseVsDouble) {
  // Every 1021st float over the whole finite range (about 4.2 million arguments), against
  // erfcx<double> (itself checked to 1e-13 above), evaluated through an array loop.
  const std::vector<float> xs = float_sweep(-std::numeric_limits<float>::max(),
                                            std::numeric_limits<float>::max(), 1021);
  std::vector<float> ys(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) ys[i] = bpk::erfcx(xs[i]);
  std::vector<ErrorStats> per(kRegionsF32.size());
  for (std::size_t r = 0; r < per.size(); ++r) {
    per[r].name = std::string("erfcx<float> vs double ") + kRegionsF32[r].name;
  }
  ErrorStats all{"erfcx<float> vs double (all)"};
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double x = xs[i];
    const double err = rel_error(ys[i], bpk::erfcx(x));
    all.add(x, err);
    for (std::size_t r = 0; r < per.size(); ++r) {
      if (x >= kRegionsF32[r].lo && x < kRegionsF32[r].hi) per[r].add(x, err);
    }
  }
  for (const auto& p : per) p.print();
  all.print();
  EXPECT_LE(all.max_err, kTolErfcxF32) << "at x = " << all.at;
}

TEST(ErfcxFloat, MonotoneAndNeverNaN) {
  // Along every 4099th float of the whole finite range, ascending: never NaN, never negative,
  // and non-increasing up to the 1e-6 accuracy (erfcx is strictly decreasing).
  const float big = std::numeric_limits<float>::max();
  std::vector<float> xs = float_sweep(-big, big, 4099);
  std::sort(xs.begin(), xs.end());
  double prev = kInf;
  for (float x : xs) {
    const float y = bpk::erfcx(x);
    ASSERT_FALSE(std::isnan(y)) << "x = " << x;
    ASSERT_GE(y, 0.0f) << "x = " << x;
    EXPECT_LE(double(y), prev * (1 + 1e-6)) << "not decreasing at x = " << x;
    prev = y;
  }
}

// ------------------------------------------------------------------------------------------------
// vexp
// ------------------------------------------------------------------------------------------------

TEST(VexpFloat, MatchesMpmath) {
  const double ln_flt_min = std::log(double(std::numeric_limits<float>::min()));
  check_table<float>("vexp<float> vs mpmath", ref_table("kExpF32"),
                     [](float x) { return bpk::vexp(x); }, kTolVexpF32,
                     {{"x < ln(FLT_MIN) (subnormal)", -kInf, ln_flt_min},
                      {"x >= ln(FLT_MIN)", ln_flt_min, kInf}});
}

TEST(VexpFloat, DenseVsStdExp) {
  // Every 61st float in [-110, 100] (about 36 million arguments) against std::exp in double,
  // evaluated through an array loop.
  const std::vector<float> xs = float_sweep(-110.0f, 100.0f, 61);
  std::vector<float> ys(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) ys[i] = bpk::vexp(xs[i]);
  ErrorStats normal{"vexp<float> vs std::exp, normal results"};
  ErrorStats sub{"vexp<float> vs std::exp, subnormal/zero results"};
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double ref = std::exp(double(xs[i]));
    const double err = rel_error(ys[i], ref);
    (ref >= double(std::numeric_limits<float>::min()) ? normal : sub).add(xs[i], err);
  }
  normal.print();
  sub.print();
  EXPECT_LE(normal.max_err, kTolVexpF32) << "at x = " << normal.at;
  EXPECT_LE(sub.max_err, kTolVexpF32) << "at x = " << sub.at;
}

TEST(VexpFloat, SpecialValues) {
  using L = std::numeric_limits<float>;
  EXPECT_EQ(bpk::vexp(0.0f), 1.0f);
  EXPECT_EQ(bpk::vexp(-0.0f), 1.0f);
  EXPECT_EQ(bpk::vexp(1.0f), std::exp(1.0f));
  EXPECT_EQ(bpk::vexp(L::infinity()), L::infinity());
  EXPECT_EQ(bpk::vexp(-L::infinity()), 0.0f);
  EXPECT_TRUE(std::isnan(bpk::vexp(L::quiet_NaN())));
  EXPECT_TRUE(std::isnan(bpk::vexp(-L::quiet_NaN())));
  EXPECT_EQ(bpk::vexp(L::max()), L::infinity());
  EXPECT_EQ(bpk::vexp(-L::max()), 0.0f);
  EXPECT_EQ(bpk::vexp(88.73f), L::infinity());
  EXPECT_TRUE(std::isfinite(bpk::vexp(88.72f)));
  EXPECT_EQ(bpk::vexp(-104.0f), 0.0f);
  EXPECT_GT(bpk::vexp(-103.9f), 0.0f);  // subnormal range kept (gradual underflow)
  EXPECT_GT(bpk::vexp(-100.0f), 0.0f);
  EXPECT_LT(bpk::vexp(-100.0f), L::min());
}

TEST(VexpDouble, IsStdExp) {
  for (double x :
       {-800.0, -745.2, -700.0, -1.0, -1e-300, 0.0, 1e-300, 0.5, 1.0, 300.0, 709.7, 710.0}) {
    EXPECT_EQ(bpk::vexp(x), std::exp(x)) << "x = " << x;
  }
  EXPECT_EQ(bpk::vexp(kInf), kInf);
  EXPECT_EQ(bpk::vexp(-kInf), 0.0);
  EXPECT_TRUE(std::isnan(bpk::vexp(std::numeric_limits<double>::quiet_NaN())));
}

// ------------------------------------------------------------------------------------------------
// vlog, vlog1p, vtanh (float): error in ulps of the float result, against libm in double
// ------------------------------------------------------------------------------------------------

// |got − ref| in units of the float spacing at ref (subnormal spacing below FLT_MIN).
double ulp_error(float got, double ref) {
  if (std::isnan(got) || std::isinf(got)) return double(got) == ref ? 0.0 : kInf;
  const double a = std::fabs(ref);
  int e = 0;
  std::frexp(std::max(a, double(std::numeric_limits<float>::min())), &e);
  return std::fabs(double(got) - ref) / std::ldexp(1.0, e - 24);
}

template <typename F, typename G>
ErrorStats ulp_sweep(const char* name, const std::vector<float>& xs, F fn, G ref) {
  std::vector<float> ys(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) ys[i] = fn(xs[i]);  // an array loop, as in kernels
  ErrorStats stats{name};
  stats.unit = "ulp";
  for (std::size_t i = 0; i < xs.size(); ++i) stats.add(xs[i], ulp_error(ys[i], ref(double(xs[i]))));
  stats.print();
  return stats;
}

constexpr float kFltMax = std::numeric_limits<float>::max();

TEST(VlogFloat, UlpErrorVsStdLog) {
  const auto f = [](float x) { return bpk::vlog(x); };
  const auto ref = [](double x) { return std::log(x); };
  const ErrorStats all = ulp_sweep("vlog<float> (0, FLT_MAX], every 61st", float_sweep(0.0f, kFltMax, 61), f, ref);
  const ErrorStats one = ulp_sweep("vlog<float> [0.5, 2], every 7th", float_sweep(0.5f, 2.0f, 7), f, ref);
  EXPECT_LE(all.max_err, 2.0) << "at x = " << all.at;
  EXPECT_LE(one.max_err, 2.0) << "at x = " << one.at;
}

TEST(Vlog1pFloat, UlpErrorVsStdLog1p) {
  const auto f = [](float x) { return bpk::vlog1p(x); };
  const auto ref = [](double x) { return std::log1p(x); };
  const ErrorStats near = ulp_sweep("vlog1p<float> [-1, 1], every 31st", float_sweep(-1.0f, 1.0f, 31), f, ref);
  const ErrorStats big = ulp_sweep("vlog1p<float> [1, FLT_MAX], every 61st", float_sweep(1.0f, kFltMax, 61), f, ref);
  EXPECT_LE(near.max_err, 4.0) << "at x = " << near.at;
  EXPECT_LE(big.max_err, 4.0) << "at x = " << big.at;
}

TEST(VtanhFloat, UlpErrorVsStdTanh) {
  const ErrorStats stats = ulp_sweep("vtanh<float> [-FLT_MAX, FLT_MAX], every 31st",
                                     float_sweep(-kFltMax, kFltMax, 31),
                                     [](float x) { return bpk::vtanh(x); },
                                     [](double x) { return std::tanh(x); });
  EXPECT_LE(stats.max_err, 2.5) << "at x = " << stats.at;
}

TEST(VlogVlog1pVtanhFloat, SpecialValues) {
  using L = std::numeric_limits<float>;
  const float inf = L::infinity(), nan = L::quiet_NaN();
  EXPECT_EQ(bpk::vlog(1.0f), 0.0f);
  EXPECT_EQ(bpk::vlog(0.0f), -inf);
  EXPECT_EQ(bpk::vlog(-0.0f), -inf);
  EXPECT_EQ(bpk::vlog(inf), inf);
  EXPECT_TRUE(std::isnan(bpk::vlog(-1.0f)));
  EXPECT_TRUE(std::isnan(bpk::vlog(-inf)));
  EXPECT_TRUE(std::isnan(bpk::vlog(nan)));
  EXPECT_NEAR(bpk::vlog(L::denorm_min()), std::log(double(L::denorm_min())), 1e-5);
  EXPECT_EQ(bpk::vlog1p(0.0f), 0.0f);
  EXPECT_TRUE(std::signbit(bpk::vlog1p(-0.0f)));
  EXPECT_EQ(bpk::vlog1p(-1.0f), -inf);
  EXPECT_EQ(bpk::vlog1p(inf), inf);
  EXPECT_EQ(bpk::vlog1p(1e-30f), 1e-30f);
  EXPECT_TRUE(std::isnan(bpk::vlog1p(-2.0f)));
  EXPECT_TRUE(std::isnan(bpk::vlog1p(nan)));
  EXPECT_EQ(bpk::vtanh(0.0f), 0.0f);
  EXPECT_TRUE(std::signbit(bpk::vtanh(-0.0f)));
  EXPECT_EQ(bpk::vtanh(inf), 1.0f);
  EXPECT_EQ(bpk::vtanh(-inf), -1.0f);
  EXPECT_EQ(bpk::vtanh(L::denorm_min()), L::denorm_min());
  EXPECT_TRUE(std::isnan(bpk::vtanh(nan)));
}

TEST(VlogVlog1pVtanhDouble, AreLibm) {
  for (double x : {1e-300, 0.3, 1.0, 2.5, 1e300}) {
    EXPECT_EQ(bpk::vlog(x), std::log(x));
    EXPECT_EQ(bpk::vlog1p(x), std::log1p(x));
    EXPECT_EQ(bpk::vtanh(x), std::tanh(x));
    EXPECT_EQ(bpk::vtanh(-x), std::tanh(-x));
  }
}

}  // namespace
