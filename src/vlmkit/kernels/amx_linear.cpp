// vlmkit's AMX int8 linear kernel, on the plain [N, K] int8 weight (no layout copy: 16 weight
// rows x 64 bytes are an A tile as they lie, stride K). Axes: M rows, K input features, N output
// features (a multiple of 32). The activation codes are rearranged per call into B tiles (16 rows
// of 4 k x 16 m); a C tile is [16 n, 16 m] int32, transposed on the way
// out (a gather per m). 32 weight rows (two A tiles) make a step; up to 16 rows one 16-row B block
// per step, past that two.
//
// int8_linear_amx: W8A8 (K % 64 == 0), the bits of always-dynamic W8A8 as int8_linear.cpp's
// kernel: int32 sums, torch's float32 epilogue. K is walked in chunks whose codes fit 1 MB (L2);
// partial sums of earlier chunks wait in an int32 scratch. torch._int_mm at these row counts is
// oneDNN's VNNI GEMM plus a weight reorder per call.
//
// int8_weight_only_amx: weight-only int8 (`--quantize int8`) through the same loop, each
// activation row split into int8 parts (below). torch._weight_int8pack_mm walks the weight once per
// row (0.52x a bf16 matmul's speed at 8 rows); this streams it once for all rows.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace vlmkit_kernels {
std::pair<at::Tensor, at::Tensor> quantized(const at::Tensor& x, int64_t rows, int shift);  // int8_linear.cpp
}

namespace {

using vlmkit_kernels::quantized;

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tmm0-3: C [16 n, 16 m] int32; tmm4-5: A = weight rows [16, 64 bytes]; tmm6-7: B = codes [16, 64].
void configure_tiles() {
  alignas(64) TileConfig c;
  for (int t = 0; t < 8; ++t) { c.rows[t] = 16; c.colsb[t] = 64; }
  // GCC does not see ldtilecfg read c: compiled out of line it dropped the stores above as dead
  // (every tile left unconfigured; the first tile load faulted). The barrier keeps them.
  asm volatile("" : : "r"(&c) : "memory");
  _tile_loadconfig(&c);
}

bool request_amx() {  // Linux: ask the kernel for the AMX tile state (ARCH_REQ_XCOMP_PERM, XTILEDATA)
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

// codes [Mp, K] int8 -> b [KB][Mp/16][16 (k/4)][16 m][4]: each B tile 1 KB contiguous.
void to_b_tiles(const int8_t* codes, int64_t Mp, int64_t K, int8_t* b) {
  const int64_t KB = K / 64, MB = Mp / 16;
  at::parallel_for(0, Mp, 16, [&](int64_t r0, int64_t r1) {
  for (int64_t m = r0; m < r1; ++m)
    for (int64_t kb = 0; kb < KB; ++kb)
      for (int k4 = 0; k4 < 16; ++k4) {
        const int32_t v = *reinterpret_cast<const int32_t*>(codes + m * K + kb * 64 + k4 * 4);
        *reinterpret_cast<int32_t*>(b + (((kb * MB + m / 16) * 16 + k4) * 16 + m % 16) * 4) = v;
      }
  });
}

template <typename Out>
inline void store_row(Out* y, __m512 v) {
  if constexpr (std::is_same_v<Out, float>) {
    _mm512_storeu_ps(y, v);
  } else if constexpr (std::is_same_v<Out, c10::BFloat16>) {  // round to nearest even, as torch
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), (__m256i)_mm512_cvtneps_pbh(v));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// Column m of a C tile [16 n, 16 m] int32 as float32: the 16 n sums of one row m (a gather).
inline __m512 c_column(const int32_t* c, int64_t m) {
  const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(16));
  return _mm512_cvtepi32_ps(_mm512_i32gather_epi32(_mm512_add_epi32(rows, _mm512_set1_epi32(static_cast<int>(m))), c, 4));
}

// One C tile's [16 n, 16 m] int32 sums -> y[m, n0 .. n0 + 16) = (sum * sx[m]) * scale[n] for the
// rows below M, in torch's order.
template <typename Out>
void epilogue(const int32_t* c, int64_t m0, int64_t M, int64_t N, int64_t n0, const float* sx,
              const float* scale, Out* y) {
  const __m512 sc = _mm512_loadu_ps(scale + n0);
  for (int m = 0; m < 16 && m0 + m < M; ++m) {
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(c_column(c, m), _mm512_set1_ps(sx[m0 + m])), sc);
    store_row<Out>(y + (m0 + m) * N + n0, v);
  }
}

// Weight-only parts (rows p * M + m of the codes are part p of output row m, all within one step's
// 16 * MS columns): y[m, n0 .. n0 + 16) = (sum_p float(C[p M + m]) * sx[p M + m]) * scale[n] for
// the 16-row weight half h of the step's tiles c.
template <typename Out>
void epilogue_parts(const int32_t (*c)[256], int ms, int h, int64_t M, int64_t parts, int64_t N, int64_t n0,
                    const float* sx, const float* scale, Out* y) {
  const __m512 sc = _mm512_loadu_ps(scale + n0);
  for (int64_t m = 0; m < M; ++m) {
    __m512 v = _mm512_setzero_ps();
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t col = p * M + m;
      v = _mm512_add_ps(v, _mm512_mul_ps(c_column(c[h * ms + col / 16], col % 16), _mm512_set1_ps(sx[col])));
    }
    store_row<Out>(y + m * N + n0, _mm512_mul_ps(v, sc));
  }
}

// C tiles h * MS + j (weight half h, m block mb + j) over k blocks [0, kbs): loaded from `part`
// (zero when null), += A (a + i * a_step, second half a_half bytes on, stride a_stride) x B (b's
// tile (kb0 + i) * MB + mb + j), stored to dst.
template <int MS>
inline void c_tiles(const int8_t* a, int64_t a_half, int64_t a_stride, int64_t a_step, const int8_t* b,
                    int64_t MB, int64_t mb, int64_t kb0, int64_t kbs, const int32_t* part, int32_t* dst) {
  if (part == nullptr) {
    _tile_zero(0); _tile_zero(1);
    if constexpr (MS == 2) { _tile_zero(2); _tile_zero(3); }
  } else {
    _tile_loadd(0, part, 64); _tile_loadd(1, part + 256, 64);
    if constexpr (MS == 2) { _tile_loadd(2, part + 512, 64); _tile_loadd(3, part + 768, 64); }
  }
  for (int64_t i = 0; i < kbs; ++i) {
    _tile_loadd(4, a + i * a_step, a_stride);
    _tile_loadd(5, a + a_half + i * a_step, a_stride);
    _tile_loadd(6, b + ((kb0 + i) * MB + mb) * 1024, 64);
    if constexpr (MS == 2) {
      _tile_loadd(7, b + ((kb0 + i) * MB + mb + 1) * 1024, 64);
      _tile_dpbssd(0, 4, 6); _tile_dpbssd(1, 4, 7); _tile_dpbssd(2, 5, 6); _tile_dpbssd(3, 5, 7);
    } else {
      _tile_dpbssd(0, 4, 6); _tile_dpbssd(1, 5, 6);
    }
  }
  _tile_stored(0, dst, 64); _tile_stored(1, dst + 256, 64);
  if constexpr (MS == 2) { _tile_stored(2, dst + 512, 64); _tile_stored(3, dst + 768, 64); }
}

// Rows n0 .. n0 + 32 of the W8A8 output for all M, K chunk [kb0, kb1) (k blocks of 64).
template <int MS, typename Out>
void n_pair(const int8_t* q, const int8_t* b, int64_t K, int64_t Mp, int64_t M, int64_t N, int64_t n0,
            int64_t kb0, int64_t kb1, bool first, bool last, int32_t* scratch, const float* sx,
            const float* scale, Out* y, int64_t parts) {
  const int64_t MB = Mp / 16;
  alignas(64) int32_t c[2 * MS][256];
  for (int64_t mb = 0; mb < MB; mb += MS) {
    int32_t* part = scratch + ((n0 / 32) * (MB / MS) + mb / MS) * (512 * MS);  // this step's C tiles
    c_tiles<MS>(q + n0 * K + kb0 * 64, 16 * K, K, 64, b, MB, mb, kb0, kb1 - kb0, first ? nullptr : part,
                       last ? &c[0][0] : part);
    if (!last) continue;
    if (parts > 0) {  // one step holds every part (MB == MS): M is parts x the output rows
      for (int h = 0; h < 2; ++h) epilogue_parts<Out>(c, MS, h, M / parts, parts, N, n0 + h * 16, sx, scale, y);
      continue;
    }
    for (int j = 0; j < 2 * MS; ++j)  // tile j: n half j / MS, m block mb + j % MS
      epilogue<Out>(c[j], (mb + j % MS) * 16, M, N, n0 + (j / MS) * 16, sx, scale, y);
  }
}

void check_operands(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, const char* op) {
  static const bool amx = request_amx();
  TORCH_CHECK(amx, op, ": the OS refused AMX tile state");
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && x.size(1) == q.size(1), op, ": x [M, K], q [N, K]");
  TORCH_CHECK(q.size(1) % 64 == 0 && q.size(0) % 32 == 0, op, ": K a multiple of 64, N of 32");
  TORCH_CHECK(q.scalar_type() == at::kChar && scale.scalar_type() == at::kFloat && q.is_contiguous() &&
              scale.is_contiguous(), op, ": q int8, scale float32, contiguous");
}

// codes [Mp, K] signed bytes (rows past M zero), sx [M] -> y [M, N] in y's dtype; with parts > 0
// (weight-only, Mp <= 32) y [M / parts, N], the parts summed in the epilogue.
void amx_matmul(const at::Tensor& codes, const at::Tensor& sx, const at::Tensor& q, const at::Tensor& scale,
                int64_t M, at::Tensor& y, int64_t parts = 0) {
  const int64_t Mp = codes.size(0), K = q.size(1), N = q.size(0), KB = K / 64;
  at::Tensor b = at::empty({Mp * K}, codes.options().dtype(at::kChar));
  to_b_tiles(reinterpret_cast<const int8_t*>(codes.data_ptr()), Mp, K, b.data_ptr<int8_t>());
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 20) / (Mp * 64));  // k blocks whose codes fit 1 MB
  const int64_t chunks = (KB + chunk - 1) / chunk;
  at::Tensor scratch = at::empty({chunks > 1 ? N * Mp : 0}, codes.options().dtype(at::kInt));
  const int8_t *qp = q.data_ptr<int8_t>(), *bp = b.data_ptr<int8_t>();
  const float *sxp = sx.data_ptr<float>(), *scp = scale.data_ptr<float>();
  int32_t* sp = scratch.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "int8_linear_amx", [&] {
    scalar_t* yp = y.data_ptr<scalar_t>();
    const auto pair = Mp == 16 ? n_pair<1, scalar_t> : n_pair<2, scalar_t>;
    at::parallel_for(0, N / 32, 1, [&](int64_t p0, int64_t p1) {
      configure_tiles();
      for (int64_t c = 0; c < chunks; ++c)  // chunk outermost: a chunk's codes stay in L2 over the n pairs
        for (int64_t p = p0; p < p1; ++p)
          pair(qp, bp, K, Mp, M, N, p * 32, c * chunk, std::min(KB, (c + 1) * chunk), c == 0, c == chunks - 1, sp,
               sxp, scp, yp, parts);
      _tile_release();
    });
  });
}

int64_t padded(int64_t rows) { return rows <= 16 ? 16 : (rows + 31) / 32 * 32; }

// x [M, K] float, q [N, K] int8 (K % 64 == 0, N % 32 == 0), scale [N] float32 -> [M, N] in x's dtype.
at::Tensor int8_linear_amx(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale) {
  check_operands(x, q, scale, "int8_linear_amx");
  const int64_t M = x.size(0);
  const auto [codes, sx] = quantized(x, padded(M), 0);  // signed codes (bytes), padding rows zero
  at::Tensor y = at::empty({M, q.size(0)}, x.options());
  amx_matmul(codes, sx, q, scale, M, y);
  return y;
}

// Weight-only int8: x [M, K] float (any float dtype), q, scale as above -> float32(x @ q.T) *
// scale [M, N] in x's dtype. Each row goes in as `parts` int8 rows (rows p * M + m): part 0 the
// codes of x, part p the codes of what parts 0 .. p - 1 leave, each with its own row scale, so
// three parts carry x to ~2^-24 of its row's maximum; the parts' float32 products are summed.
at::Tensor int8_weight_only_amx(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, int64_t parts) {
  check_operands(x, q, scale, "int8_weight_only_amx");
  TORCH_CHECK(parts >= 1 && parts <= 4, "int8_weight_only_amx: 1 to 4 parts");
  const int64_t M = x.size(0), K = x.size(1), rows = parts * M;
  at::Tensor r = x.to(at::kFloat).contiguous();
  std::vector<at::Tensor> codes, sxs;
  for (int64_t p = 0; p < parts; ++p) {
    auto [c, s] = quantized(r, M, 0);
    if (p + 1 < parts) r = r - c.view(at::kChar).to(at::kFloat) * s.unsqueeze(1);  // [M, K]: the rest
    codes.push_back(c);
    sxs.push_back(s);
  }
  if (padded(rows) > rows) codes.push_back(at::zeros({padded(rows) - rows, K}, codes[0].options()));
  if (padded(rows) <= 32) {  // every part in one tile step: summed in the epilogue
    at::Tensor y = at::empty({M, q.size(0)}, x.options());
    amx_matmul(at::cat(codes), at::cat(sxs), q, scale, rows, y, parts);
    return y;
  }
  at::Tensor y = at::empty({rows, q.size(0)}, x.options().dtype(at::kFloat));  // [parts * M, N]
  amx_matmul(at::cat(codes), at::cat(sxs), q, scale, rows, y);
  return y.view({parts, M, q.size(0)}).sum(0).to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vlmkit, m) {
  m.def("int8_linear_amx(Tensor x, Tensor q, Tensor scale) -> Tensor");
  m.def("int8_weight_only_amx(Tensor x, Tensor q, Tensor scale, int parts) -> Tensor");
}

TORCH_LIBRARY_IMPL(vlmkit, CPU, m) {
  m.impl("int8_linear_amx", &int8_linear_amx);
  m.impl("int8_weight_only_amx", &int8_weight_only_amx);
}
