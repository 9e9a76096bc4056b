// Shared by the CPU kernels of the event-driven engine: instruction-set targets and argument checks.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
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

// Items [0, n) handed out one at a time to whichever thread asks next.
class WorkQueue {
 public:
  explicit WorkQueue(int64_t n) : n_(n) {}
  // The next unclaimed item into i; false once every item is taken.
  bool take(int64_t& i) {
    i = next_.fetch_add(1, std::memory_order_relaxed);
    return i < n_;
  }

 private:
  std::atomic<int64_t> next_{0};
  const int64_t n_;
};

// worker(queue) on each of torch's threads (at most n), taking items from one queue of n until it is empty.
// A static split into equal ranges leaves a thread waiting at the join when the work per item is uneven
// (spikes are sparse in the first steps of the simulation and on padding) or when another process takes a
// core; here the thread that comes free takes the next item. Each item is computed whole by one thread, so
// the results do not depend on the number of threads.
template <typename F>
void parallel_items(int64_t n, const F& worker) {
  WorkQueue queue(n);
  at::parallel_for(0, std::min<int64_t>(n, at::get_num_threads()), 1, [&](int64_t, int64_t) { worker(queue); });
}

inline void check_float_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, " must be a float32 CPU tensor");
}

}  // namespace event_kernels
