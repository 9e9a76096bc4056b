// spike_attention: the input current of neuron layer A from the spikes of layers K and V, accumulate-only.
//
// For one sequence and one head (dh dimensions, S positions), with binary keys k and values v:
//   scores[i, j] = (sum of q[i, d] over the dimensions d in which key j fired) / sqrt(dh) + mask[j]
//   context[i, d] = sum of softmax_j(scores[i, :])[j] over the positions j whose value fired in dimension d
// i.e. q k^T / sqrt(dh) + mask, softmax, probs v: the attention of the dense path with every product by a 0/1
// operand an addition. The vectors run over the query positions i: q is transposed once per head, each key j
// adds the q columns of its active dimensions (a column of scores), the softmax over j is elementwise across those
// columns, and each value dimension d adds the probability columns of the positions where it fired. Sums run in
// ascending order of d (scores) and of j (context); the dense GEMMs add the same terms in their own order.
// Everything of a head stays in the core's L1/L2 cache; nothing of size S x S is written to memory.
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

// Offsets d * lanes of the nonzero entries of row[0:dh] into out (room for dh + 16); returns their count.
EVENT_AVX512 inline int64_t active_dims(const float* row, int64_t dh, int64_t lanes, int32_t* out) {
  int64_t c = 0;
  __m512i offs = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                    _mm512_set1_epi32(static_cast<int32_t>(lanes)));
  const __m512i step = _mm512_set1_epi32(static_cast<int32_t>(16 * lanes));
  for (int64_t d = 0; d < dh; d += 16) {
    const __m512 x = dh - d >= 16 ? _mm512_loadu_ps(row + d)
                                  : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (dh - d)) - 1), row + d);
    const __mmask16 m = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    _mm512_storeu_si512(out + c, _mm512_maskz_compress_epi32(m, offs));
    c += __builtin_popcount(m);
    offs = _mm512_add_epi32(offs, step);
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

// Prefetch rows r0..r1 (row stride `row`, `width` floats each) into L2, for reading or (Write) for writing.
template <int Write>
inline void prefetch_rows(const float* base, int64_t row, int64_t r0, int64_t r1, int64_t width) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < width; c += 16) __builtin_prefetch(base + r * row + c, Write, 2);
}

struct Head {
  const float* q;      // (S, dh), row stride q_row
  const float* k;      // (S, dh) spikes, row stride kv_row
  const float* v;
  const float* mask;   // (S,) additive
  float* out;          // (S, dh), row stride out_row
};

struct Buffers {
  std::vector<float> qt, probs, ctx;       // (dh, lanes), (S, lanes), (dh, lanes)
  std::vector<int32_t> act, cols, ncols;   // (dh + 16,), (dh, S), (dh,)
  Buffers(int64_t s, int64_t dh, int64_t lanes)
      : qt(dh * lanes + 16), probs(s * lanes + 16), ctx(dh * lanes + 16), act(dh + 16), cols(dh * s), ncols(dh) {}
  static float* aligned(std::vector<float>& b) {
    return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(b.data()) + 63) & ~uintptr_t{63});
  }
};

// Scores of one head, transposed: probs[j, i] = scores[i, j] (lanes i >= S hold finite values that are never read).
EVENT_AVX512 void head_scores(const Head& h, int64_t s, int64_t dh, int64_t q_row, int64_t kv_row, float sqrt_dh,
                              int64_t lanes, float* qt, float* sc, int32_t* act) {
  for (int64_t i = 0; i < lanes; i += 16)           // lanes >= S: zeros
    for (int64_t d = 0; d < dh; d += 16)
      transpose_block(h.q + i * q_row + d, q_row, std::min<int64_t>(16, s - i), std::min<int64_t>(16, dh - d),
                      qt + d * lanes + i, lanes, 16);
  const __m512 div = _mm512_set1_ps(sqrt_dh);
  for (int64_t j = 0; j < s; ++j) {
    const int64_t n = active_dims(h.k + j * kv_row, dh, lanes, act);
    const __m512 m = _mm512_set1_ps(h.mask[j]);
    float* row = sc + j * lanes;
    sum_blocks(qt, act, n, lanes / 16, row);
    for (int64_t l = 0; l < lanes; l += 16)
      _mm512_store_ps(row + l, _mm512_add_ps(_mm512_div_ps(_mm512_load_ps(row + l), div), m));
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

// context[i, d] = sum over the positions j at which value dimension d fired of probs[j, i], written to h.out.
EVENT_AVX512 void head_context(const Head& h, int64_t s, int64_t dh, int64_t kv_row, int64_t out_row, int64_t lanes,
                               const float* probs, float* ctx, Buffers& buf) {
  int32_t* cols = buf.cols.data();
  int32_t* ncols = buf.ncols.data();
  std::fill(ncols, ncols + dh, 0);
  int32_t* act = buf.act.data();
  for (int64_t j = 0; j < s; ++j) {
    const int64_t n = active_dims(h.v + j * kv_row, dh, 1, act);
    for (int64_t a = 0; a < n; ++a) {
      const int32_t d = act[a];
      cols[d * s + ncols[d]++] = static_cast<int32_t>(j * lanes);
    }
  }
  for (int64_t d = 0; d < dh; ++d) {
    sum_blocks(probs, cols + d * s, ncols[d], lanes / 16, ctx + d * lanes);
  }
  for (int64_t d = 0; d < dh; d += 16)
    for (int64_t i = 0; i < s; i += 16)
      transpose_block(ctx + d * lanes + i, lanes, std::min<int64_t>(16, dh - d), std::min<int64_t>(16, s - i),
                      h.out + i * out_row + d, out_row, std::min<int64_t>(16, dh - d));
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
  TORCH_CHECK(heads > 0 && hid % heads == 0, "spike_attention: H must be a multiple of the heads");
  TORCH_CHECK(mask.dim() == 2 && mask.size(1) == s && mask.size(0) > 0 && n % mask.size(0) == 0 &&
                  mask.is_contiguous(), "spike_attention: mask (B, S) contiguous, N a multiple of B");
  TORCH_CHECK(event_isa() == kAvx512, "spike_attention needs AVX-512");
  at::Tensor out = at::empty({n, s, hid}, q.options());
#ifdef EVENT_X86
  const int64_t dh = hid / heads, lanes = (s + 15) / 16 * 16, batch = mask.size(0);
  const float sqrt_dh = static_cast<float>(std::sqrt(static_cast<double>(dh)));
  const float* qp = q.const_data_ptr<float>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  const float* mp = mask.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  // One sequence at a time, its heads in turn; while a head is computed, a share of the next sequence's q, k and v
  // rows (and of its output rows) is prefetched into L2 (the heads' column slices of rows H floats apart defeat the hardware prefetchers).
  at::parallel_for(0, n, 1, [&](int64_t n0, int64_t n1) {
    Buffers buf(s, dh, lanes);
    float* qt = Buffers::aligned(buf.qt);
    float* probs = Buffers::aligned(buf.probs);
    float* ctx = Buffers::aligned(buf.ctx);
    for (int64_t seq = n0; seq < n1; ++seq) {
      for (int64_t col = 0, head = 0; col < hid; col += dh, ++head) {
        if (seq + 1 < n1) {
          const int64_t r0 = head * s / heads, r1 = (head + 1) * s / heads;
          prefetch_rows<0>(qp + (seq + 1) * q.stride(0), q.stride(1), r0, r1, hid);
          prefetch_rows<0>(kp + (seq + 1) * k.stride(0), k.stride(1), r0, r1, hid);
          prefetch_rows<0>(vp + (seq + 1) * v.stride(0), v.stride(1), r0, r1, hid);
          prefetch_rows<1>(op + (seq + 1) * s * hid, hid, r0, r1, hid);
        }
        const Head h{qp + seq * q.stride(0) + col, kp + seq * k.stride(0) + col, vp + seq * v.stride(0) + col,
                     mp + (seq % batch) * s, op + seq * s * hid + col};
        head_scores(h, s, dh, q.stride(1), k.stride(1), sqrt_dh, lanes, qt, probs, buf.act.data());
        head_softmax(probs, s, lanes);
        head_context(h, s, dh, k.stride(1), hid, lanes, probs, ctx, buf);
      }
    }
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
