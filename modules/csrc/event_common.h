// Shared by the CPU kernels of the event-driven engine: instruction-set targets and argument checks.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EVENT_X86 1
#include <immintrin.h>
#define EVENT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,bmi,bmi2,popcnt")))
#define EVENT_AVX2 __attribute__((target("avx2,fma,bmi,bmi2,popcnt")))
#endif

namespace event_kernels {

constexpr int64_t kNone = 0, kAvx2 = 1, kAvx512 = 2;

// 2 with AVX-512 (F, BW, VL, DQ), 1 with AVX2 + FMA, else 0.
inline int64_t event_isa() {
#ifdef EVENT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kNone;
}

inline void check_float_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, " must be a float32 CPU tensor");
}

}  // namespace event_kernels
