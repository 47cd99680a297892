// Input validation shared by every operator entry point (CPU and CUDA). Each failure names
// the operator, the argument and what was expected.
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>
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
  void operator()(const at::Tensor& t, const char* name, std::initializer_list<int64_t> sizes,
                  const char* dims) const {
    TORCH_CHECK(t.defined(), op_, ": ", name, " must be a defined tensor");
    check_sizes(t, name, sizes, dims);
    TORCH_CHECK(t.scalar_type() == ref_.scalar_type(), op_, ": ", name, " must have dtype ",
                ref_.scalar_type(), " (like the other inputs), got ", t.scalar_type());
    TORCH_CHECK(t.device() == ref_.device(), op_, ": ", name, " must be on device ",
                ref_.device(), " (like the other inputs), got ", t.device());
  }

  // As above, and t is updated in place, so it must also be contiguous.
  void inplace(const at::Tensor& t, const char* name, std::initializer_list<int64_t> sizes,
               const char* dims) const {
    (*this)(t, name, sizes, dims);
    TORCH_CHECK(t.is_contiguous(), op_, ": ", name,
                " is updated in place and must be contiguous");
  }

  void check_sizes(const at::Tensor& t, const char* name, std::initializer_list<int64_t> sizes,
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

}  // namespace bpk
