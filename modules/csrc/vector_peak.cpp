// vector_peak: the core's peak rate of vector float additions and fused multiply-adds, for the benchmarks'
// limit case (bench/limit.py): `iterations` rounds of 12 independent chains of one instruction (enough chains to
// cover its latency), the widest the CPU has (zmm with AVX-512, ymm with AVX2), operands in registers. Returns
// the float operations done (lanes x instructions; an FMA counted once); the caller times the call.
#include "event_common.h"

namespace {

using namespace event_kernels;

#ifdef EVENT_X86
#define EVENT_CHAINS(OP, T, SET1)                                                                          \
  T a0 = SET1(0.0f), a1 = SET1(1.0f), a2 = SET1(2.0f), a3 = SET1(3.0f), a4 = SET1(4.0f), a5 = SET1(5.0f); \
  T a6 = SET1(6.0f), a7 = SET1(7.0f), a8 = SET1(8.0f), a9 = SET1(9.0f), a10 = SET1(10.0f);                \
  T a11 = SET1(11.0f);                                                                                    \
  const T x = SET1(1e-7f), y = SET1(0.999f);                                                              \
  for (int64_t i = 0; i < iterations; ++i) {                                                              \
    a0 = OP(a0); a1 = OP(a1); a2 = OP(a2); a3 = OP(a3); a4 = OP(a4); a5 = OP(a5);                         \
    a6 = OP(a6); a7 = OP(a7); a8 = OP(a8); a9 = OP(a9); a10 = OP(a10); a11 = OP(a11);                     \
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7), \
                     "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));                                           \
  }                                                                                                       \
  __asm__ volatile("" : : "v"(x), "v"(y));

EVENT_AVX512 void peak_avx512(int64_t kind, int64_t iterations) {
  if (kind == 0) {
#define OP(a) _mm512_add_ps(a, x)
    EVENT_CHAINS(OP, __m512, _mm512_set1_ps)
#undef OP
  } else {
#define OP(a) _mm512_fmadd_ps(a, y, x)
    EVENT_CHAINS(OP, __m512, _mm512_set1_ps)
#undef OP
  }
}

EVENT_AVX2 void peak_avx2(int64_t kind, int64_t iterations) {
  if (kind == 0) {
#define OP(a) _mm256_add_ps(a, x)
    EVENT_CHAINS(OP, __m256, _mm256_set1_ps)
#undef OP
  } else {
#define OP(a) _mm256_fmadd_ps(a, y, x)
    EVENT_CHAINS(OP, __m256, _mm256_set1_ps)
#undef OP
  }
}
#undef EVENT_CHAINS
#endif

int64_t vector_peak(int64_t kind, int64_t iterations) {
  TORCH_CHECK((kind == 0 || kind == 1) && iterations >= 0, "vector_peak: kind 0 (add) or 1 (fma), iterations >= 0");
  const int64_t isa = event_isa();
  TORCH_CHECK(isa != kNone, "vector_peak needs AVX2 or AVX-512");
#ifdef EVENT_X86
  if (isa == kAvx512)
    peak_avx512(kind, iterations);
  else
    peak_avx2(kind, iterations);
#endif
  return iterations * 12 * (isa == kAvx512 ? 16 : 8);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(spikingbert, m) {
  m.def("vector_peak(int kind, int iterations) -> int");
}

TORCH_LIBRARY_IMPL(spikingbert, CompositeExplicitAutograd, m) {
  m.impl("vector_peak", &vector_peak);
}
