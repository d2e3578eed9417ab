// vlmkit's int8 linear kernels: W8A8, y = (float(a . q^T) * sx) * scale cast to x's dtype, with
// the plain [N, K] int8 weight, so one copy serves them, torch._int_mm and an embedding lookup.
// Exact: the sums are int32 and the epilogue does torch's float32 ops in torch's order
// (vlmkit.generation.quantize_dynamic), so the result has the bits of always-dynamic W8A8
// (quantize_rows, _int_mm, .mul_(sx).mul_(scale)).
//
// int8_linear_small (AVX-512 VNNI, 1-16 rows: decoding). Decoding is bound by streaming the
// weight from memory. oneDNN's int8 matmul needs its blocked layout (a copy per call, or a second
// prepacked copy) and, measured on a 2-core AMX Xeon with the weights beyond L3, streams 13-19
// GB/s at 1-8 rows; this loop with a software prefetch streams 19-25 GB/s at one row and 16-21
// GB/s at 8 (the runs were noisy). Without the prefetch it reached 11 GB/s at 8 rows: the
// hardware prefetcher did not run far enough ahead of the 8 dot products per 64 weight bytes.
//
// int8_linear_amx (AMX: prefill, and decoding from 6 rows on large weights, where it streams the
// weight faster than this loop, whose 8 vpdpbusd per 64 bytes at 8 rows no longer hide behind
// memory) is in amx_linear.cpp; `quantized` below serves both files.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

constexpr int64_t kPrefetchBytes = 16384;  // how far ahead of the loads the prefetch runs

// vpdpbusd multiplies unsigned by signed bytes, so the codes go in shifted by 128 (a + 128 in
// [1, 255]) and each output takes back 128 * sum_k q[n, k] (wsum) in int32: exact.
inline __m512i load_k(const void* p, int64_t left) {
  if (left >= 64) return _mm512_loadu_si512(p);
  return _mm512_maskz_loadu_epi8((~0ULL) >> (64 - left), p);
}

// r[i] = the sum of v[i]'s 16 lanes, for 16 vectors at once: a transpose tree of 15 adds
// instead of 16 separate reductions (which cost ~20% of the instructions at 8 rows, K = 2048).
inline __m512i hsum16(const __m512i* v) {
  __m512i t[8], u[4];
  for (int p = 0; p < 8; ++p)  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    t[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]),
                            _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]));
  for (int p = 0; p < 4; ++p)  // per 128-bit lane L: element e = v[4p + e] summed over lane L
    u[p] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * p], t[2 * p + 1]),
                            _mm512_unpackhi_epi64(t[2 * p], t[2 * p + 1]));
  // 128-bit lanes: 0x88 picks lanes (0, 2) of each operand, 0xDD lanes (1, 3)
  const __m512i s01 = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], 0x88), _mm512_shuffle_i32x4(u[0], u[1], 0xDD));
  const __m512i s23 = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2], u[3], 0x88), _mm512_shuffle_i32x4(u[2], u[3], 0xDD));
  return _mm512_add_epi32(_mm512_shuffle_i32x4(s01, s23, 0x88), _mm512_shuffle_i32x4(s01, s23, 0xDD));
}

// The C sums of v, 16 at a time (the last group padded with zeros).
template <int C>
inline void hsum(const __m512i* v, int32_t* out) {
  for (int g = 0; g < C; g += 16) {
    __m512i x[16];
    for (int i = 0; i < 16; ++i) x[i] = g + i < C ? v[g + i] : _mm512_setzero_si512();
    alignas(64) int32_t r[16];
    _mm512_store_si512(r, hsum16(x));
    for (int i = 0; i < 16 && g + i < C; ++i) out[g + i] = r[i];
  }
}

// NB output columns (weight rows n0..n0+NB) for all M rows, over the whole K.
template <int M, int NB, typename Out>
inline void block(const uint8_t* a, const int8_t* w, int64_t K, int64_t N, const int32_t* wsum,
                  const float* sx, const float* scale, Out* y) {
  __m512i acc[M][NB];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NB; ++j) acc[m][j] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 64) {
    __m512i wv[NB];
    for (int j = 0; j < NB; ++j) {
      wv[j] = load_k(w + j * K + k, K - k);
      _mm_prefetch(reinterpret_cast<const char*>(w + j * K + k + kPrefetchBytes), _MM_HINT_T1);
    }
    for (int m = 0; m < M; ++m) {
      __m512i av = load_k(a + m * K + k, K - k);
      for (int j = 0; j < NB; ++j) acc[m][j] = _mm512_dpbusd_epi32(acc[m][j], av, wv[j]);
    }
  }
  int32_t sums[M * NB];
  hsum<M * NB>(&acc[0][0], sums);
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NB; ++j) {
      int32_t s = sums[m * NB + j] - 128 * wsum[j];
      // torch's order (no FMA here), then its round-to-nearest-even cast to the output dtype
      y[m * N + j] = static_cast<Out>((static_cast<float>(s) * sx[m]) * scale[j]);
    }
}

// Output columns per block: M * NB accumulators + NB weight registers + 1 activation <= 32 zmm;
// at 8 rows 2 measured faster than 3 on the LM head (28 ms against 32 ms).
constexpr int columns_for(int m) { return m <= 1 ? 8 : m <= 2 ? 6 : m <= 4 ? 4 : m <= 6 ? 3 : m <= 12 ? 2 : 1; }

template <int M, typename Out>
void run(const uint8_t* a, const int8_t* q, int64_t N, int64_t K, const int32_t* wsum,
         const float* sx, const float* scale, Out* y) {
  constexpr int NB = columns_for(M);
  const int64_t blocks = N / NB, grain = std::max<int64_t>(1, 32768 / (NB * K));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b * NB;
      block<M, NB, Out>(a, q + n * K, K, N, wsum + n, sx, scale + n, y + n);
    }
  });
  for (int64_t n = blocks * NB; n < N; ++n) block<M, 1, Out>(a, q + n * K, K, N, wsum + n, sx, scale + n, y + n);
}

// quantize_rows, vectorised: sx = max(amax|x|, 1e-12) / 127, codes = round-half-even(x / sx),
// the same IEEE float32 division and rounding as torch's, stored as codes + shift (128 for
// vpdpbusd's unsigned operand, 0 for AMX's signed tdpbssd).
void quantize(const float* x, int64_t M, int64_t K, uint8_t* a, float* sx, int shift) {
  // at least 64K elements per task, so a decode-sized call over a narrow input stays on one thread
  at::parallel_for(0, M, std::max<int64_t>(1, 65536 / std::max<int64_t>(K, 1)), [&](int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* xr = x + m * K;
    __m512 mx = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xr + k)));
    float amax = _mm512_reduce_max_ps(mx);
    for (; k < K; ++k) amax = std::max(amax, std::fabs(xr[k]));
    const float s = std::max(amax, 1e-12f) / 127.0f;
    sx[m] = s;
    const __m512 sv = _mm512_set1_ps(s);
    const __m512i shift_v = _mm512_set1_epi32(shift);
    for (k = 0; k + 16 <= K; k += 16) {
      __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(xr + k), sv),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      __m512i c = _mm512_add_epi32(_mm512_cvtps_epi32(r), shift_v);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a + m * K + k), _mm512_cvtepi32_epi8(c));
    }
    for (; k < K; ++k) a[m * K + k] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(xr[k] / s)) + shift);
  }
  });
}

}  // namespace

namespace vlmkit_kernels {

// x [M, K] float -> (codes [rows, K] bytes, rows >= M, the padding rows zero; sx [M] float32).
std::pair<at::Tensor, at::Tensor> quantized(const at::Tensor& x, int64_t rows, int shift) {
  const int64_t M = x.size(0), K = x.size(1);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const auto bytes = x.options().dtype(at::kByte);
  at::Tensor codes = rows > M ? at::zeros({rows, K}, bytes) : at::empty({rows, K}, bytes);
  at::Tensor sx = at::empty({M}, x.options().dtype(at::kFloat));
  quantize(xf.data_ptr<float>(), M, K, codes.data_ptr<uint8_t>(), sx.data_ptr<float>(), shift);
  return {codes, sx};
}

}  // namespace vlmkit_kernels

namespace {

using vlmkit_kernels::quantized;

template <typename Out>
using Runner = void (*)(const uint8_t*, const int8_t*, int64_t, int64_t, const int32_t*, const float*,
                        const float*, Out*);
template <typename Out>
constexpr Runner<Out> kRunners[16] = {run<1, Out>,  run<2, Out>,  run<3, Out>,  run<4, Out>,
                                      run<5, Out>,  run<6, Out>,  run<7, Out>,  run<8, Out>,
                                      run<9, Out>,  run<10, Out>, run<11, Out>, run<12, Out>,
                                      run<13, Out>, run<14, Out>, run<15, Out>, run<16, Out>};

// x [M, K] float, q [N, K] int8, wsum [N] int32 (sum_k q), scale [N] float32 -> [M, N] in x's
// dtype (float32, bfloat16 or float16).
at::Tensor int8_linear_small(const at::Tensor& x, const at::Tensor& q, const at::Tensor& wsum,
                             const at::Tensor& scale) {
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && x.size(1) == q.size(1), "int8_linear_small: x [M, K], q [N, K]");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= 16, "int8_linear_small: 1 to 16 rows, got ", x.size(0));
  TORCH_CHECK(q.scalar_type() == at::kChar && wsum.scalar_type() == at::kInt && scale.scalar_type() == at::kFloat,
              "int8_linear_small: q int8, wsum int32, scale float32");
  TORCH_CHECK(q.is_contiguous() && wsum.is_contiguous() && scale.is_contiguous(), "int8_linear_small: contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  const auto [a, sx] = quantized(x, M, 128);  // codes + 128
  at::Tensor y = at::empty({M, N}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "int8_linear_small", [&] {
    kRunners<scalar_t>[M - 1](a.data_ptr<uint8_t>(), q.data_ptr<int8_t>(), N, K, wsum.data_ptr<int32_t>(),
                              sx.data_ptr<float>(), scale.data_ptr<float>(), y.data_ptr<scalar_t>());
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vlmkit, m) {
  m.def("int8_linear_small(Tensor x, Tensor q, Tensor wsum, Tensor scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(vlmkit, CPU, m) {
  m.impl("int8_linear_small", &int8_linear_small);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
