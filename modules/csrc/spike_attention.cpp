// spike_attention: the input current of neuron layer A from the spikes of layers K and V, accumulate-only.
//
// For one sequence and one head (dh <= 64 dimensions, S positions), with binary keys k and values v:
//   scores[i, j] = (sum of q[i, d] over the dimensions d in which key j fired) / sqrt(dh) + mask[j]
//   context[i, d] = sum of softmax_j(scores[i, :])[j] over the positions j whose value fired in dimension d
// i.e. q k^T / sqrt(dh) + mask, softmax, probs v: the attention of the dense path with every product by a 0/1
// operand an addition. The vectors run over the query positions i: each key j adds the (transposed) q columns of
// its active dimensions (a column of scores), the softmax over j is elementwise across those columns, and each
// value dimension d adds the probability columns of the positions where it fired. Sums run in ascending order of d
// (scores) and of j (context); the dense GEMMs add the same terms in their own order. A sequence's q, k and v rows
// are read once, in order (q transposed, the spikes as bits), its heads computed from the cache, its context rows
// written once; nothing of size S x S leaves the core's caches.
#include "event_common.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using namespace event_kernels;

#ifdef EVENT_X86
// exp(x) per lane, Cephes' expf (range reduction by ln 2 in two parts, degree-5 polynomial): within 2 ulp of
// the exact value; 0 below -87.34 (as a masked score's exp underflows), x clamped above at 88.38.
EVENT_AVX512 inline __m512 exp_avx512(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3365447504f), _CMP_LT_OQ);
  x = _mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~under), _mm512_scalef_ps(y, n));
}

// Bit j of word w: x[64 w + j] != 0, for x[0:width] (words = ceil(width / 64)).
EVENT_AVX512 inline void nonzero_bits(const float* x, int64_t width, uint64_t* words) {
  for (int64_t w = 0; w * 64 < width; ++w) {
    uint64_t bits = 0;
    for (int64_t c = 0; c < 4 && w * 64 + c * 16 < width; ++c) {
      const int64_t i = w * 64 + c * 16, left = width - i;
      const __m512 v = left >= 16 ? _mm512_loadu_ps(x + i)
                                  : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << left) - 1), x + i);
      bits |= uint64_t{_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ)} << (16 * c);
    }
    words[w] = bits;
  }
}

// Bits first .. first + count - 1 (count <= 64) of a row of words, as the low bits of one word.
inline uint64_t bit_range(const uint64_t* words, int64_t first, int64_t count) {
  const int64_t w = first / 64, shift = first % 64;
  uint64_t bits = words[w] >> shift;
  if (shift != 0 && shift + count > 64) bits |= words[w + 1] << (64 - shift);
  return count == 64 ? bits : bits & ((uint64_t{1} << count) - 1);
}

// Offsets d * lanes of the set bits d of m (d < dh <= 64) into out (room for dh + 16), in order; returns the count.
EVENT_AVX512 inline int64_t bit_offsets(uint64_t m, int64_t dh, int64_t lanes, int32_t* out) {
  int64_t c = 0;
  const __m512i step = _mm512_set1_epi32(static_cast<int32_t>(16 * lanes));
  __m512i offs = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                    _mm512_set1_epi32(static_cast<int32_t>(lanes)));
  for (int64_t d = 0; d < dh; d += 16, m >>= 16, offs = _mm512_add_epi32(offs, step)) {
    const __mmask16 k = static_cast<__mmask16>(m & 0xFFFF);
    _mm512_storeu_si512(out + c, _mm512_maskz_compress_epi32(k, offs));
    c += __builtin_popcount(k);
  }
  return c;
}

// The block src[0:rows, 0:cols] (rows, cols <= 16; row stride src_row) transposed into dst[0:cols, 0:16] (row
// stride dst_row); of each dst row the first `keep` floats are written (the rows >= `rows` as zeros).
EVENT_AVX512 void transpose_block(const float* src, int64_t src_row, int64_t rows, int64_t cols, float* dst,
                                  int64_t dst_row, int64_t keep) {
  const __mmask16 load = cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << cols) - 1);
  const __mmask16 store = keep >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << keep) - 1);
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_maskz_loadu_ps(load, src + i * src_row) : _mm512_setzero_ps();
  for (int i = 0; i < 8; ++i) {                    // per 128-bit lane L: rows 2i, 2i+1 interleaved
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {                    // r[4i + c], lane L: column 4L + c of rows 4i..4i+3
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int c = 0; c < 4; ++c) {                    // gather lane L of r[c], r[4 + c], r[8 + c], r[12 + c]
    const __m512 lo01 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), hi01 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
    const __m512 lo23 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    const __m512 hi23 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
    t[c] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
    t[8 + c] = _mm512_shuffle_f32x4(lo01, lo23, 0xDD);
    t[4 + c] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(hi01, hi23, 0xDD);
  }
  for (int i = 0; i < cols; ++i) _mm512_mask_storeu_ps(dst + i * dst_row, store, t[i]);
}

// dst[0:16*NV] = sum, in order, of the 16*NV floats at base + offsets[0..n) (zero when n is 0).
template <int NV>
EVENT_AVX512 inline void sum_columns(const float* base, const int32_t* offsets, int64_t n, __m512* acc) {
  for (int v = 0; v < NV; ++v) acc[v] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const float* w = base + offsets[j];
    for (int v = 0; v < NV; ++v) acc[v] = _mm512_add_ps(acc[v], _mm512_load_ps(w + 16 * v));
  }
}

// dst[0:16*vectors] = sum, in order, of the 16*vectors floats at base + offsets[0..n), in blocks of up to 4 vectors.
EVENT_AVX512 inline void sum_blocks(const float* base, const int32_t* offsets, int64_t n, int64_t vectors,
                                    float* dst) {
  __m512 acc[4];
  for (int64_t v0 = 0; v0 < vectors; v0 += 4) {
    const int64_t nv = std::min<int64_t>(4, vectors - v0);
    const float* b = base + 16 * v0;
    if (nv == 4) sum_columns<4>(b, offsets, n, acc);
    else if (nv == 3) sum_columns<3>(b, offsets, n, acc);
    else if (nv == 2) sum_columns<2>(b, offsets, n, acc);
    else sum_columns<1>(b, offsets, n, acc);
    for (int64_t v = 0; v < nv; ++v) _mm512_store_ps(dst + 16 * (v0 + v), acc[v]);
  }
}

// One sequence: q (S, H) row stride q_row, k and v spikes (S, H) row stride kv_row, mask (S,), out (S, H).
struct Sequence {
  const float* q;
  const float* k;
  const float* v;
  const float* mask;
  float* out;
};

struct Shape {
  int64_t s, hid, dh, lanes, words, q_row, kv_row;
  float sqrt_dh;
};

// A thread's working memory for one sequence (all heads): q and the context transposed, one head's scores, the
// spikes of k and v as bits.
struct Buffers {
  std::vector<float> qt_buf, probs_buf, ctx_buf;    // (H, lanes), (S, lanes), (H, lanes), 64-byte aligned
  std::vector<uint64_t> kbits, vbits;               // (S, words)
  std::vector<int32_t> act, cols, ncols;            // (dh + 16,), (dh, S), (dh,)
  float *qt, *probs, *ctx;
  explicit Buffers(const Shape& sh)
      : qt_buf(sh.hid * sh.lanes + 16), probs_buf(sh.s * sh.lanes + 16), ctx_buf(sh.hid * sh.lanes + 16),
        kbits(sh.s * sh.words), vbits(sh.s * sh.words), act(sh.dh + 16), cols(sh.dh * sh.s), ncols(sh.dh),
        qt(aligned(qt_buf)), probs(aligned(probs_buf)), ctx(aligned(ctx_buf)) {}
  static float* aligned(std::vector<float>& b) {
    return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(b.data()) + 63) & ~uintptr_t{63});
  }
};

// The sequence's rows read once, in order: q transposed (lanes >= S zero), k and v as bits.
EVENT_AVX512 void load_sequence(const Sequence& x, const Shape& sh, Buffers& buf) {
  for (int64_t i = 0; i < sh.lanes; i += 16)
    for (int64_t d = 0; d < sh.hid; d += 16)
      transpose_block(x.q + i * sh.q_row + d, sh.q_row, std::min<int64_t>(16, sh.s - i),
                      std::min<int64_t>(16, sh.hid - d), buf.qt + d * sh.lanes + i, sh.lanes, 16);
  for (int64_t j = 0; j < sh.s; ++j) {
    nonzero_bits(x.k + j * sh.kv_row, sh.hid, buf.kbits.data() + j * sh.words);
    nonzero_bits(x.v + j * sh.kv_row, sh.hid, buf.vbits.data() + j * sh.words);
  }
}

// Scores of head dimensions d0..d0+dh, transposed: probs[j, i] = scores[i, j] (lanes i >= S finite, never read).
EVENT_AVX512 void head_scores(const Sequence& x, const Shape& sh, int64_t d0, Buffers& buf) {
  const __m512 div = _mm512_set1_ps(sh.sqrt_dh);
  const float* qt = buf.qt + d0 * sh.lanes;
  for (int64_t j = 0; j < sh.s; ++j) {
    const uint64_t m = bit_range(buf.kbits.data() + j * sh.words, d0, sh.dh);
    const int64_t n = bit_offsets(m, sh.dh, sh.lanes, buf.act.data());
    const __m512 mask = _mm512_set1_ps(x.mask[j]);
    float* row = buf.probs + j * sh.lanes;
    sum_blocks(qt, buf.act.data(), n, sh.lanes / 16, row);
    for (int64_t l = 0; l < sh.lanes; l += 16)
      _mm512_store_ps(row + l, _mm512_add_ps(_mm512_div_ps(_mm512_load_ps(row + l), div), mask));
  }
}

// Softmax over j (the rows of sc) for every lane i, in place: exp(x - max) * (1 / sum), sums in order of j.
EVENT_AVX512 void head_softmax(float* sc, int64_t s, int64_t lanes) {
  for (int64_t l = 0; l < lanes; l += 16) {
    __m512 mx = _mm512_load_ps(sc + l);
    for (int64_t j = 1; j < s; ++j) mx = _mm512_max_ps(mx, _mm512_load_ps(sc + j * lanes + l));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < s; ++j) {
      const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_load_ps(sc + j * lanes + l), mx));
      _mm512_store_ps(sc + j * lanes + l, e);
      sum = _mm512_add_ps(sum, e);
    }
    const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), sum);
    for (int64_t j = 0; j < s; ++j)
      _mm512_store_ps(sc + j * lanes + l, _mm512_mul_ps(_mm512_load_ps(sc + j * lanes + l), inv));
  }
}

// ctx[d0 + d, i] = sum over the positions j at which value dimension d0 + d fired of probs[j, i].
EVENT_AVX512 void head_context(const Shape& sh, int64_t d0, Buffers& buf) {
  int32_t* cols = buf.cols.data();
  int32_t* ncols = buf.ncols.data();
  std::fill(ncols, ncols + sh.dh, 0);
  for (int64_t j = 0; j < sh.s; ++j) {
    for (uint64_t m = bit_range(buf.vbits.data() + j * sh.words, d0, sh.dh); m; m &= m - 1) {
      const int64_t d = __builtin_ctzll(m);
      cols[d * sh.s + ncols[d]++] = static_cast<int32_t>(j * sh.lanes);
    }
  }
  for (int64_t d = 0; d < sh.dh; ++d)
    sum_blocks(buf.probs, cols + d * sh.s, ncols[d], sh.lanes / 16, buf.ctx + (d0 + d) * sh.lanes);
}

// The sequence's context rows written once, in order.
EVENT_AVX512 void store_sequence(const Sequence& x, const Shape& sh, const Buffers& buf) {
  for (int64_t i = 0; i < sh.s; i += 16)
    for (int64_t d = 0; d < sh.hid; d += 16)
      transpose_block(buf.ctx + d * sh.lanes + i, sh.lanes, std::min<int64_t>(16, sh.hid - d),
                      std::min<int64_t>(16, sh.s - i), x.out + i * sh.hid + d, sh.hid,
                      std::min<int64_t>(16, sh.hid - d));
}

EVENT_AVX512 void attend_sequence(const Sequence& x, const Shape& sh, Buffers& buf) {
  load_sequence(x, sh, buf);
  for (int64_t d0 = 0; d0 < sh.hid; d0 += sh.dh) {
    head_scores(x, sh, d0, buf);
    head_softmax(buf.probs, sh.s, sh.lanes);
    head_context(sh, d0, buf);
  }
  store_sequence(x, sh, buf);
}
#endif

// q (N, S, H) with unit stride in H (a view of the fused K/V/Q product), k and v spikes (N, S, H), mask (B, S)
// additive with N a multiple of B (sequence n is batch row n % B): the attention context (N, S, H) of `heads` heads.
at::Tensor spike_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                           int64_t heads) {
  for (const auto* t : {&q, &k, &v, &mask}) check_float_cpu(*t, "spike_attention input");
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && k.sizes() == q.sizes() && v.sizes() == q.sizes() &&
                  k.stride(2) == 1 && v.stride(2) == 1 && k.strides() == v.strides(),
              "spike_attention: q, k, v (N, S, H) with unit stride in H, k and v alike");
  const int64_t n = q.size(0), s = q.size(1), hid = q.size(2);
  TORCH_CHECK(heads > 0 && hid % heads == 0 && hid / heads <= 64,
              "spike_attention: H must be a multiple of the heads, of at most 64 dimensions each");
  TORCH_CHECK(mask.dim() == 2 && mask.size(1) == s && mask.size(0) > 0 && n % mask.size(0) == 0 &&
                  mask.is_contiguous(), "spike_attention: mask (B, S) contiguous, N a multiple of B");
  TORCH_CHECK(event_isa() == kAvx512, "spike_attention needs AVX-512");
  at::Tensor out = at::empty({n, s, hid}, q.options());
#ifdef EVENT_X86
  const int64_t dh = hid / heads, batch = mask.size(0);
  const Shape sh{s, hid, dh, (s + 15) / 16 * 16, (hid + 63) / 64, q.stride(1), k.stride(1),
                 static_cast<float>(std::sqrt(static_cast<double>(dh)))};
  const float* qp = q.const_data_ptr<float>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  const float* mp = mask.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  parallel_items(n, [&](WorkQueue& queue) {
    Buffers buf(sh);
    for (int64_t seq; queue.take(seq);)
      attend_sequence({qp + seq * q.stride(0), kp + seq * k.stride(0), vp + seq * v.stride(0),
                       mp + (seq % batch) * s, op + seq * s * hid}, sh, buf);
  });
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(spikingbert, m) {
  m.def("spike_attention(Tensor q, Tensor k, Tensor v, Tensor mask, int heads) -> Tensor");
}

TORCH_LIBRARY_IMPL(spikingbert, CPU, m) {
  m.impl("spike_attention", &spike_attention);
}
