// bert_adam_update: BertAdam's moment and parameter update (transformer/optimization.py) in one pass over a
// float32 parameter, where the optimizer's tensor operations take thirteen: the same float32 operations in the
// same order, each rounded as torch's kernels round it, so the parameters come out bit-identical.
//   m = fma(g, 1 - b1, m * b1)                  m.mul_(b1).add_(g, alpha=1 - b1) (torch fuses add's alpha)
//   v = fma((1 - b2) * g, g, v * b2)            v.mul_(b2).addcmul_(g, g, value=1 - b2) (the same)
//   u = sqrt(max(v, floor))                     clamp, then torch's own sqrt_ (in the x86 builds not the
//                                               correctly rounded square root), called here on each block
//   u = fma(p, wd, m / (u + e))   (wd > 0)      add_(e), div, add_(p, alpha=wd)
//   p = p - u * lr                              mul_(lr), sub_
// The parameter goes in blocks small enough that m, v, p and u stay in the core's L2 cache between the steps.
// Elementwise, so the result does not depend on how the blocks are split over threads.
#include "event_common.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/sqrt.h>

#include <cmath>
#include <initializer_list>

namespace {

using namespace event_kernels;

constexpr int64_t kBlock = 16384;   // elements per block (64 KB per array)

struct AdamArgs {
  float b1, one_minus_b1, b2, one_minus_b2, floor, e, wd, lr;
};

// m, v of a block; u = max(v, floor), the square root's input (NaN stays NaN, as under clamp).
__attribute__((always_inline)) inline void moments(const float* __restrict__ g, float* __restrict__ m,
                                                   float* __restrict__ v, float* __restrict__ u, int64_t n,
                                                   const AdamArgs& a) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    m[i] = std::fma(gi, a.one_minus_b1, m[i] * a.b1);
    const float vi = std::fma(a.one_minus_b2 * gi, gi, v[i] * a.b2);
    v[i] = vi;
    u[i] = vi < a.floor ? a.floor : vi;
  }
}

// p of a block from m and u = sqrt(max(v, floor)).
template <bool Decay>
__attribute__((always_inline)) inline void apply(float* __restrict__ p, const float* __restrict__ m,
                                                 const float* __restrict__ u, int64_t n, const AdamArgs& a) {
  for (int64_t i = 0; i < n; ++i) {
    float step = m[i] / (u[i] + a.e);
    if (Decay) step = std::fma(p[i], a.wd, step);
    p[i] = p[i] - step * a.lr;
  }
}

struct Kernels {
  void (*moments)(const float*, float*, float*, float*, int64_t, const AdamArgs&);
  void (*apply)(float*, const float*, const float*, int64_t, const AdamArgs&);
};

void moments_generic(const float* g, float* m, float* v, float* u, int64_t n, const AdamArgs& a) { moments(g, m, v, u, n, a); }
template <bool Decay>
void apply_generic(float* p, const float* m, const float* u, int64_t n, const AdamArgs& a) { apply<Decay>(p, m, u, n, a); }

#ifdef EVENT_X86
EVENT_AVX512 __attribute__((target("fma"))) void moments_avx512(const float* g, float* m, float* v, float* u, int64_t n,
                                                                const AdamArgs& a) {
  moments(g, m, v, u, n, a);
}
template <bool Decay>
EVENT_AVX512 __attribute__((target("fma"))) void apply_avx512(float* p, const float* m, const float* u, int64_t n,
                                                              const AdamArgs& a) {
  apply<Decay>(p, m, u, n, a);
}
EVENT_AVX2 void moments_avx2(const float* g, float* m, float* v, float* u, int64_t n, const AdamArgs& a) {
  moments(g, m, v, u, n, a);
}
template <bool Decay>
EVENT_AVX2 void apply_avx2(float* p, const float* m, const float* u, int64_t n, const AdamArgs& a) {
  apply<Decay>(p, m, u, n, a);
}
#endif

template <bool Decay>
Kernels kernels_for(int64_t isa) {
#ifdef EVENT_X86
  if (isa == kAvx512) return {&moments_avx512, &apply_avx512<Decay>};
  if (isa == kAvx2) return {&moments_avx2, &apply_avx2<Decay>};
#endif
  return {&moments_generic, &apply_generic<Decay>};
}

void bert_adam_update(at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg, at::Tensor exp_avg_sq, double b1,
                      double b2, double e, double weight_decay, double lr, double floor, int64_t isa) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&param, &grad, &exp_avg, &exp_avg_sq}) {
    check_float_cpu(*t, "bert_adam_update: every tensor");
    TORCH_CHECK(t->is_contiguous() && t->numel() == param.numel(), "bert_adam_update: contiguous tensors of one size");
  }
  const AdamArgs a{static_cast<float>(b1), static_cast<float>(1.0 - b1), static_cast<float>(b2),
                   static_cast<float>(1.0 - b2), static_cast<float>(floor), static_cast<float>(e),
                   static_cast<float>(weight_decay), static_cast<float>(lr)};
  TORCH_CHECK(isa >= kNone && isa <= event_isa(), "bert_adam_update: this CPU cannot run isa ", isa);
  const Kernels k = weight_decay > 0.0 ? kernels_for<true>(isa) : kernels_for<false>(isa);
  float* p = param.data_ptr<float>();
  const float* g = grad.const_data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  const int64_t n = param.numel(), blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    at::Tensor scratch = at::empty({std::min(kBlock, n)}, param.options());
    float* u = scratch.data_ptr<float>();
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kBlock, len = std::min(kBlock, n - i0);
      k.moments(g + i0, m + i0, v + i0, u, len, a);
      at::Tensor block = scratch.narrow(0, 0, len);
      at::sqrt_(block);
      k.apply(p + i0, m + i0, u, len, a);
    }
  });
  // Writes through data pointers leave the version counters alone: bump them as in-place tensor operations do,
  // so a cache keyed on a weight's version (the engine's packed weights) sees the new values.
  for (at::Tensor* t : {&param, &exp_avg, &exp_avg_sq}) t->unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(spikingbert, m) {
  m.def("bert_adam_update(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, float b1, "
        "float b2, float e, float weight_decay, float lr, float floor, int isa) -> ()");
}

TORCH_LIBRARY_IMPL(spikingbert, CPU, m) {
  m.impl("bert_adam_update", &bert_adam_update);
}
