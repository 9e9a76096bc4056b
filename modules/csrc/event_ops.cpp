// CPU kernels of the event-driven simulation engine (modules/event_ops.py builds and loads them).
//
// spike_linear: currents = spikes @ W^T + b for binary spikes (rows, K), computed from the inputs
//   that fired only: for every row the indices of its nonzero inputs are extracted once, then each
//   output tile of NB columns is the sum of the weight rows of those inputs, accumulated in vector
//   registers (in input order, bias added once at the end) over a packed, tile-major copy of W^T
//   that stays in cache while a block of rows is processed.
// if_scan: the integrate-and-fire update of a chunk of steps in one pass per neuron
//   (charge, fire, reset by subtraction, leak), the same float32 arithmetic as the eager loop.
// train_convergence: the spike report's ASR convergence from bit-packed spike trains, in one pass.
//
// The vector kernels are compiled for AVX-512 and AVX2 through target attributes; which one runs is
// an argument (event_isa() says what the CPU supports), so one build serves any x86-64 CPU.
#include "event_common.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

using namespace event_kernels;

constexpr int64_t kTile = 64;        // output columns per packed weight tile (4 zmm / 8 ymm per row)
constexpr int64_t kRowBlock = 32;    // rows that share one pass over a weight tile
// Outputs of at least this many bytes are written with streaming stores, which bypass the caches (no read of
// each output line before it is written; bench/README.md: 1-9 % off an eval forward); a smaller output is left in
// the cache for its reader.
constexpr int64_t kStreamBytes = int64_t{4} << 20;

// W (N, K) -> tiles (ceil(N / kTile), K, kTile): tile j holds W^T[:, j*kTile:(j+1)*kTile], zero-padded.
at::Tensor pack_weight(const at::Tensor& weight) {
  check_float_cpu(weight, "weight");
  TORCH_CHECK(weight.dim() == 2, "weight must be (out_features, in_features)");
  const at::Tensor w = weight.contiguous();
  const int64_t n = w.size(0), k = w.size(1), tiles = (n + kTile - 1) / kTile;
  at::Tensor packed = at::zeros({tiles, k, kTile}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t cols = std::min(kTile, n - t * kTile);
      float* tile = dst + t * k * kTile;
      for (int64_t j = 0; j < cols; ++j) {
        const float* row = src + (t * kTile + j) * k;
        for (int64_t i = 0; i < k; ++i) tile[i * kTile + j] = row[i];
      }
    }
  });
  return packed;
}

#ifdef EVENT_X86
// Offsets (k * kTile) of the nonzero entries of x[0:K] into out (room for K + 16); returns the count. With `bits`
// (room for ceil(K / 64) words, zeroed), bit i of the row's little-endian bit string is set where x[i] != 0.
EVENT_AVX512 int64_t active_avx512(const float* x, int64_t k, int32_t* out, uint8_t* bits) {
  int64_t c = 0, i = 0;
  __m512i offs = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                    _mm512_set1_epi32(kTile));
  const __m512i step = _mm512_set1_epi32(16 * kTile);
  for (; i + 16 <= k; i += 16) {
    const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    // compress in a register, then a plain store (the memory form of vpcompressd is slow on some CPUs)
    _mm512_storeu_si512(out + c, _mm512_maskz_compress_epi32(m, offs));
    c += __builtin_popcount(m);
    offs = _mm512_add_epi32(offs, step);
    if (bits != nullptr) std::memcpy(bits + i / 8, &m, sizeof(m));
  }
  for (; i < k; ++i)
    if (x[i] != 0.0f) {
      out[c++] = static_cast<int32_t>(i * kTile);
      if (bits != nullptr) bits[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    }
  return c;
}

EVENT_AVX2 int64_t active_avx2(const float* x, int64_t k, int32_t* out, uint8_t* bits) {
  int64_t c = 0, i = 0;
  for (; i + 8 <= k; i += 8) {
    unsigned m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), _mm256_setzero_ps(), _CMP_NEQ_UQ));
    if (bits != nullptr) bits[i / 8] = static_cast<uint8_t>(m);
    while (m) {
      out[c++] = static_cast<int32_t>((i + __builtin_ctz(m)) * kTile);
      m &= m - 1;
    }
  }
  for (; i < k; ++i)
    if (x[i] != 0.0f) {
      out[c++] = static_cast<int32_t>(i * kTile);
      if (bits != nullptr) bits[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    }
  return c;
}

// Inputs active in both rows a and b of a bit-string table (words per row), summed over the pairs (r, r + gap).
int64_t shared_inputs(const uint64_t* bits, int64_t words, int64_t rows, int64_t gap) {
  int64_t shared = 0;
  for (int64_t r = 0; r + gap < rows; ++r) {
    const uint64_t* a = bits + r * words;
    const uint64_t* b = a + gap * words;
    for (int64_t w = 0; w < words; ++w) shared += __builtin_popcountll(a[w] & b[w]);
  }
  return shared;
}

// One row: out[0:cols] = sum over its active offsets of tile[offset : offset + kTile] (+ bias); `stream`: whole,
// 64-byte aligned vectors of out written by streaming stores.
EVENT_AVX512 void row_avx512(const float* tile, const int32_t* act, int64_t n_act, const float* bias,
                             float* out, int64_t cols, bool stream) {
  constexpr int V = kTile / 16;
  __m512 a[V];
  for (int v = 0; v < V; ++v) a[v] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n_act; ++j) {
    const float* w = tile + act[j];
    for (int v = 0; v < V; ++v) a[v] = _mm512_add_ps(a[v], _mm512_load_ps(w + 16 * v));
  }
  for (int v = 0; v < V; ++v) {
    const int64_t left = cols - 16 * v;
    const __mmask16 m = left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
    if (bias != nullptr) a[v] = _mm512_add_ps(a[v], _mm512_maskz_loadu_ps(m, bias + 16 * v));
    if (stream && m == 0xFFFF && (reinterpret_cast<uintptr_t>(out + 16 * v) & 63) == 0)
      _mm512_stream_ps(out + 16 * v, a[v]);
    else
      _mm512_mask_storeu_ps(out + 16 * v, m, a[v]);
  }
}

EVENT_AVX2 void row_avx2(const float* tile, const int32_t* act, int64_t n_act, const float* bias,
                         float* out, int64_t cols, bool stream) {
  constexpr int V = kTile / 8;
  __m256 a[V];
  for (int v = 0; v < V; ++v) a[v] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n_act; ++j) {
    const float* w = tile + act[j];
    for (int v = 0; v < V; ++v) a[v] = _mm256_add_ps(a[v], _mm256_load_ps(w + 8 * v));
  }
  if (stream && cols == kTile && (reinterpret_cast<uintptr_t>(out) & 31) == 0) {
    for (int v = 0; v < V; ++v)
      _mm256_stream_ps(out + 8 * v, bias != nullptr ? _mm256_add_ps(a[v], _mm256_loadu_ps(bias + 8 * v)) : a[v]);
    return;
  }
  alignas(32) float acc[kTile];
  for (int v = 0; v < V; ++v) _mm256_store_ps(acc + 8 * v, a[v]);
  if (bias != nullptr) {
    for (int64_t j = 0; j < cols; ++j) out[j] = acc[j] + bias[j];
  } else {
    for (int64_t j = 0; j < cols; ++j) out[j] = acc[j];
  }
}
#endif

// Binary spikes (M, K) @ W^T + bias -> (M, N) from the active inputs, or an empty tensor when more
// than max_density of the inputs are active (the caller then runs the dense GEMM). With steps > 1 the rows are
// (steps, M / steps): the same positions at consecutive steps of the simulation.
//
// Rows share a pass over each weight tile in blocks, and the tile rows of the inputs a row shares with the one
// before it in its block are still in L1. Consecutive rows of a time step (neighbouring positions) or one
// position at consecutive steps (a neuron that fires often fires again): the kernel counts the inputs each
// order's neighbours share and takes the larger (bench/README.md). Only the grouping changes, not a row's sum.
at::Tensor spike_linear(const at::Tensor& spikes, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                        int64_t out_features, double max_density, int64_t isa, int64_t steps) {
  check_float_cpu(spikes, "spikes");
  check_float_cpu(packed, "packed weight");
  TORCH_CHECK(spikes.dim() == 2 && packed.dim() == 3 && packed.size(2) == kTile && packed.size(1) == spikes.size(1),
              "spike_linear: spikes (M, K) and a weight packed by pack_weight with K inputs expected");
  const int64_t m = spikes.size(0), k = spikes.size(1), n = out_features, tiles = packed.size(0);
  TORCH_CHECK(n > (tiles - 1) * kTile && n <= tiles * kTile, "out_features does not match the packed weight");
  TORCH_CHECK(steps >= 1 && m % steps == 0, "spike_linear: rows must be a whole number of steps");
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor b;
  if (has_bias) {
    b = bias->contiguous();
    check_float_cpu(b, "bias");
    TORCH_CHECK(b.numel() == n, "bias must have out_features elements");
  }
  TORCH_CHECK(isa == kAvx2 || isa == kAvx512, "spike_linear needs AVX2 or AVX-512 (isa ", isa, ")");
  TORCH_CHECK(isa <= event_isa(), "this CPU does not support the requested instruction set");
#ifdef EVENT_X86
  TORCH_CHECK(k * kTile < (int64_t{1} << 31), "too many input features");
  const at::Tensor x = spikes.contiguous();
  const float* xp = x.const_data_ptr<float>();
  const int64_t stride = k + 16;
  // offsets of the active inputs of every row (uninitialised: only the first count[r] are read)
  const at::Tensor active_buf = at::empty({m * stride + m}, spikes.options().dtype(at::kInt));
  int32_t* active = active_buf.data_ptr<int32_t>();
  int32_t* count = active + m * stride;
  // which inputs fired, as bits, where there are two orders to choose from
  const int64_t words = (k + 63) / 64;
  const at::Tensor bit_buf = steps > 1 ? at::zeros({m * words}, spikes.options().dtype(at::kLong)) : at::Tensor();
  uint64_t* bits = steps > 1 ? reinterpret_cast<uint64_t*>(bit_buf.data_ptr<int64_t>()) : nullptr;
  at::parallel_for(0, m, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      uint8_t* row_bits = bits != nullptr ? reinterpret_cast<uint8_t*>(bits + r * words) : nullptr;
      count[r] = static_cast<int32_t>(isa == kAvx512 ? active_avx512(xp + r * k, k, active + r * stride, row_bits)
                                                     : active_avx2(xp + r * k, k, active + r * stride, row_bits));
    }
  });
  int64_t total = 0;
  for (int64_t r = 0; r < m; ++r) total += count[r];
  if (static_cast<double>(total) > max_density * static_cast<double>(m * k)) return at::empty({0}, spikes.options());

  // the block's rows: kRowBlock consecutive rows, or `per` positions at all steps, position by position
  const int64_t positions = m / steps;
  const bool fold = bits != nullptr &&
                    shared_inputs(bits, words, m, positions) > shared_inputs(bits, words, m, 1);
  const int64_t per = std::max<int64_t>(1, kRowBlock / steps);
  const int64_t blocks = fold ? (positions + per - 1) / per : (m + kRowBlock - 1) / kRowBlock;

  at::Tensor out = at::empty({m, n}, spikes.options());
  const float* wp = packed.const_data_ptr<float>();
  const float* bp = has_bias ? b.const_data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const bool stream = m * n * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
  parallel_items(blocks, [&](WorkQueue& queue) {
    std::vector<int64_t> rows(static_cast<size_t>(std::max(kRowBlock, per * steps)));
    for (int64_t blk; queue.take(blk);) {
      int64_t nr = 0;
      if (fold) {
        for (int64_t p = blk * per; p < std::min(positions, (blk + 1) * per); ++p)
          for (int64_t step = 0; step < steps; ++step) rows[nr++] = step * positions + p;
      } else {
        for (int64_t r = blk * kRowBlock; r < std::min(m, (blk + 1) * kRowBlock); ++r) rows[nr++] = r;
      }
      for (int64_t t = 0; t < tiles; ++t) {
        const float* tile = wp + t * k * kTile;
        const int64_t c0 = t * kTile, cols = std::min(kTile, n - c0);
        const float* bt = bp != nullptr ? bp + c0 : nullptr;
        for (int64_t i = 0; i < nr; ++i) {
          const int64_t r = rows[i];
          if (isa == kAvx512)
            row_avx512(tile, active + r * stride, count[r], bt, op + r * n + c0, cols, stream);
          else
            row_avx2(tile, active + r * stride, count[r], bt, op + r * n + c0, cols, stream);
        }
      }
    }
    if (stream) _mm_sfence();      // the streamed stores visible to every thread before the join
  });
  return out;
#else
  return at::empty({0}, spikes.options());
#endif
}

// One neuron row over the chunk: currents c (stride st between steps), spikes s (stride ss), membrane u.
template <bool Leaky>
__attribute__((always_inline)) inline void scan_row(const float* __restrict__ c, int64_t st, float* __restrict__ s, int64_t ss, float* __restrict__ u,
              int64_t steps, int64_t cols, float th, float lk) {
  for (int64_t t = 0; t < steps; ++t, c += st, s += ss) {
    for (int64_t j = 0; j < cols; ++j) {
      const float v = u[j] + c[j];                          // charge
      const float fired = static_cast<float>(v >= th);      // fire
      const float after = v - th * fired;                   // reset by subtraction
      u[j] = Leaky ? after * lk : after;                    // leak
      s[j] = fired;
    }
  }
}

// Rows r0..r1 of the scan, compiled for each instruction set (same arithmetic, wider vectors).
using Scan = void (*)(const float*, int64_t, int64_t, float*, int64_t, float*, int64_t, int64_t, int64_t, int64_t, float, float);

template <bool Leaky>
void scan_rows_generic(const float* cp, int64_t st, int64_t sr, float* sp, int64_t rows, float* up, int64_t r0,
                       int64_t r1, int64_t steps, int64_t cols, float th, float lk) {
  for (int64_t r = r0; r < r1; ++r)
    scan_row<Leaky>(cp + r * sr, st, sp + r * cols, rows * cols, up + r * cols, steps, cols, th, lk);
}

#ifdef EVENT_X86
template <bool Leaky>
EVENT_AVX512 void scan_rows_avx512(const float* cp, int64_t st, int64_t sr, float* sp, int64_t rows, float* up,
                                   int64_t r0, int64_t r1, int64_t steps, int64_t cols, float th, float lk) {
  for (int64_t r = r0; r < r1; ++r)
    scan_row<Leaky>(cp + r * sr, st, sp + r * cols, rows * cols, up + r * cols, steps, cols, th, lk);
}

template <bool Leaky>
EVENT_AVX2 void scan_rows_avx2(const float* cp, int64_t st, int64_t sr, float* sp, int64_t rows, float* up,
                               int64_t r0, int64_t r1, int64_t steps, int64_t cols, float th, float lk) {
  for (int64_t r = r0; r < r1; ++r)
    scan_row<Leaky>(cp + r * sr, st, sp + r * cols, rows * cols, up + r * cols, steps, cols, th, lk);
}
#endif

template <bool Leaky>
Scan scan_rows(int64_t isa) {
#ifdef EVENT_X86
  if (isa == kAvx512) return &scan_rows_avx512<Leaky>;
  if (isa == kAvx2) return &scan_rows_avx2<Leaky>;
#endif
  return &scan_rows_generic<Leaky>;
}

// currents (T, R, C) with unit stride in C, membrane u (R, C) contiguous, both float32:
// spikes (T, R, C) of the integrate-and-fire neurons; u is updated in place.
at::Tensor if_scan(const at::Tensor& currents, at::Tensor u, double vth, double leak) {
  check_float_cpu(currents, "currents");
  check_float_cpu(u, "membrane");
  TORCH_CHECK(currents.dim() == 3 && currents.stride(2) == 1, "if_scan: currents (T, R, C) with unit stride in C");
  TORCH_CHECK(u.is_contiguous() && u.numel() == currents.size(1) * currents.size(2), "if_scan: membrane (R, C) contiguous");
  const int64_t steps = currents.size(0), rows = currents.size(1), cols = currents.size(2);
  const int64_t st = currents.stride(0), sr = currents.stride(1);
  at::Tensor spikes = at::empty({steps, rows, cols}, currents.options());
  const float* cp = currents.const_data_ptr<float>();
  float* up = u.data_ptr<float>();
  float* sp = spikes.data_ptr<float>();
  const float th = static_cast<float>(vth), lk = static_cast<float>(leak);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  const int64_t isa = event_isa();
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    const Scan scan = leak != 1.0 ? scan_rows<true>(isa) : scan_rows<false>(isa);
    scan(cp, st, sr, sp, rows, up, r0, r1, steps, cols, th, lk);
  });
  return spikes;
}

// Spike trains packed as bits (ceil(T / 8), neurons) uint8, bit t % 8 of byte t / 8 = spike at step t:
// for t = 1..T the sum over neurons of |count_t * T - count_T * t| / (t * T), i.e. of |ASR_t - ASR_T|
// (exact: integer sums, one division per step).
at::Tensor train_convergence(const at::Tensor& bits, int64_t t_conv) {
  TORCH_CHECK(bits.device().is_cpu() && bits.scalar_type() == at::kByte && bits.dim() >= 2,
              "train_convergence: uint8 CPU bits (bytes, neurons...)");
  TORCH_CHECK(bits.size(0) * 8 >= t_conv && t_conv > 0, "train_convergence: bits too short for t_conv");
  const at::Tensor b = bits.contiguous();
  const int64_t nbytes = b.size(0), neurons = b.numel() / nbytes;
  const uint8_t* bp = b.const_data_ptr<uint8_t>();
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (neurons + kBlock - 1) / kBlock;
  const int threads = at::get_num_threads();
  std::vector<int64_t> partial(static_cast<size_t>(threads * t_conv), 0);
  at::parallel_for(0, blocks, 1, [&](int64_t blk0, int64_t blk1) {
    int64_t* acc = partial.data() + at::get_thread_num() * t_conv;
    int32_t final_count[kBlock], count[kBlock];
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t n0 = blk * kBlock, n = std::min(kBlock, neurons - n0);
      for (int64_t j = 0; j < n; ++j) final_count[j] = count[j] = 0;
      for (int64_t byte = 0; byte < nbytes; ++byte)
        for (int64_t j = 0; j < n; ++j) final_count[j] += __builtin_popcount(bp[byte * neurons + n0 + j]);
      for (int64_t t = 0; t < t_conv; ++t) {
        const uint8_t* row = bp + (t >> 3) * neurons + n0;
        const int shift = static_cast<int>(t & 7);
        int64_t gap = 0;
        for (int64_t j = 0; j < n; ++j) {
          count[j] += (row[j] >> shift) & 1;
          const int64_t d = int64_t{count[j]} * t_conv - int64_t{final_count[j]} * (t + 1);
          gap += d < 0 ? -d : d;
        }
        acc[t] += gap;
      }
    }
  });
  at::Tensor sums = at::empty({t_conv}, b.options().dtype(at::kDouble));
  double* sp = sums.data_ptr<double>();
  for (int64_t t = 0; t < t_conv; ++t) {
    int64_t total = 0;
    for (int i = 0; i < threads; ++i) total += partial[i * t_conv + t];
    sp[t] = static_cast<double>(total) / (static_cast<double>(t + 1) * static_cast<double>(t_conv));
  }
  return sums;
}

}  // namespace

TORCH_LIBRARY(spikingbert, m) {
  m.def("event_isa() -> int");
  m.def("pack_weight(Tensor weight) -> Tensor");
  m.def("spike_linear(Tensor spikes, Tensor packed, Tensor? bias, int out_features, float max_density, int isa, "
        "int steps=1) -> Tensor");
  m.def("if_scan(Tensor currents, Tensor(a!) u, float vth, float leak) -> Tensor");
  m.def("train_convergence(Tensor bits, int t_conv) -> Tensor");
}

TORCH_LIBRARY_IMPL(spikingbert, CompositeExplicitAutograd, m) {
  m.impl("event_isa", &event_isa);
}

TORCH_LIBRARY_IMPL(spikingbert, CPU, m) {
  m.impl("pack_weight", &pack_weight);
  m.impl("spike_linear", &spike_linear);
  m.impl("if_scan", &if_scan);
  m.impl("train_convergence", &train_convergence);
}
