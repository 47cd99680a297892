// The packed-inference bit maths (bpkernels/xnor.h) on the host, and the xnor_* operators
// through the dispatcher against a direct ±1 sum.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "bpkernels/xnor.h"

namespace {

using namespace bpk::xnor;

TEST(XnorHeader, PopcountAndMismatches) {
  EXPECT_EQ(popcount64(0), 0);
  EXPECT_EQ(popcount64(~uint64_t(0)), 64);
  EXPECT_EQ(popcount64(0x8000000000000001ull), 2);
  // x = +1 +1 −1 −1 (bits 0..3 = 1 1 0 0), w = +1 −1 +1 −1: products +1 −1 −1 +1, z = 0.
  const uint64_t x = 0b0011, w = 0b0101, four = low_bits(4);
  EXPECT_EQ(popcount64(four) - 2 * mismatches(x, w, four), 0);
  // Without position 1 (a masked weight): z = +1 −1 +1 = 1.
  const uint64_t care = four & ~uint64_t(0b0010);
  EXPECT_EQ(popcount64(care) - 2 * mismatches(x, w, care), 1);
}

TEST(XnorHeader, SignRuleTiesToPlusOne) {
  EXPECT_TRUE(sign_bit(0.0f));
  EXPECT_TRUE(sign_bit(-0.0));
  EXPECT_TRUE(sign_bit(-1e-11f));  // −1e-11 + 1e-10 > 0, as sign(z + 1e-10) in the model
  EXPECT_FALSE(sign_bit(-1e-9));
  EXPECT_FALSE(sign_bit(-1e-10f));  // z + 1e-10 = 0 exactly: sign 0, not +1
  EXPECT_TRUE(sign_bit<int32_t>(0));
  EXPECT_FALSE(sign_bit<int32_t>(-1));
}

TEST(XnorHeader, BitsAcrossWordsAndSizes) {
  uint64_t row[2] = {0, 0};
  or_bits(row, 60, low_bits(10), 10);  // bits 60..69
  EXPECT_EQ(row[0], 0xF000000000000000ull);
  EXPECT_EQ(row[1], 0x3Full);
  or_bits(row, 64, 0b1, 1);
  EXPECT_EQ(row[1], 0x3Full);
  EXPECT_EQ(low_bits(64), ~uint64_t(0));
  EXPECT_EQ(conv_out_size(28, 5, 2, 2), 14);
  EXPECT_EQ(conv_out_size(14, 3, 2, 1), 7);
  EXPECT_EQ(conv_out_size(6, 3, 2, 0), 2);
}

TEST(XnorOps, GemmMatchesDirectSum) {
  const auto gemm = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("bpkernels::xnor_gemm", "")
                        .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                          const std::optional<at::Tensor>&,
                                          const std::optional<at::Tensor>&, int64_t)>();
  const auto im2col = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("bpkernels::xnor_im2col", "")
                          .typed<std::tuple<at::Tensor, at::Tensor>(
                              const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  at::manual_seed(0);
  const int64_t R = 19, K = 11, N = 150;
  const at::Tensor xs = at::randint(0, 2, {R, N}, at::kLong) * 2 - 1;  // ±1
  const at::Tensor ws = at::randint(-1, 2, {K, N}, at::kLong);         // −1, 0, +1
  const std::vector<int64_t> ones = {1, 1}, zeros = {0, 0};
  auto pack = [&](const at::Tensor& v) {
    return std::get<0>(im2col.call(v.to(at::kInt).view({v.size(0), 1, 1, N}), at::IntArrayRef(ones),
                              at::IntArrayRef(ones), at::IntArrayRef(zeros)));
  };
  // Packed sign bits are v >= 0: signs plane 1 where w = +1, nonzero plane 1 where w != 0.
  const at::Tensor nonzero = pack(ws.abs() - 1), signs = pack(ws - (ws == 0).to(at::kLong));
  const at::Tensor z = gemm.call(pack(xs), signs, std::nullopt, nonzero, N);
  EXPECT_TRUE(at::equal(z, at::matmul(xs, ws.t()).to(at::kInt)));
  EXPECT_THROW(gemm.call(pack(xs), signs.narrow(1, 0, 2), std::nullopt, std::nullopt, N), c10::Error);
}

}  // namespace
