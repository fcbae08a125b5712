// Packed GEMM (BLIS structure): for each task's block of C, for each K block (KC),
// pack A into MR-row strips and B into NR-column panels, dequantising B from its shipped
// format inside the packing step, then run a register-tiled microkernel over the panels.
// Work is split over (M block, N block) tasks only, never over K, so every C element is
// summed by one task in a fixed order: the result does not depend on the thread count.
// Skinny products of f32 operands (N ≤ 16 or M ≤ 16: the LoRA factors') skip the packing on
// AVX-512 (skinny below).
#include "gemm.h"
#include "common.h"
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace v4 {

static const long KC = 256;

// A 64-byte aligned scratch buffer that only grows (thread_local in the pool's workers, borrowed
// from a Shelf on the calling thread).
struct Scratch {
  float* p = nullptr;
  long cap = 0;
  Scratch() = default;
  Scratch(Scratch&& o) noexcept : p(o.p), cap(o.cap) { o.p = nullptr, o.cap = 0; }
  Scratch& operator=(Scratch&& o) noexcept {
    std::swap(p, o.p), std::swap(cap, o.cap);
    return *this;
  }
  float* get(long n) {
    if (n > cap) {
      std::free(p);
      cap = n;
      p = (float*)std::aligned_alloc(64, ((n * 4 + 63) / 64) * 64);
    }
    return p;
  }
  ~Scratch() { std::free(p); }
};
inline size_t shelf_bytes(const Scratch& s) { return size_t(s.cap) * sizeof(float); }

// C rows [0, mr) = (add ? C : 0) + alpha * (c0 | c1), columns masked by m0 | m1
V4_AVX512 static inline void store_tile_512(float* C, long ldc, int mr, __mmask16 m0, __mmask16 m1, float alpha, bool add,
                                            const __m512* c0, const __m512* c1) {
  __m512 va = _mm512_set1_ps(alpha);
  for (int i = 0; i < mr; i++) {
    float* p = C + i * ldc;
    __m512 o0 = add ? _mm512_maskz_loadu_ps(m0, p) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(p, m0, _mm512_fmadd_ps(va, c0[i], o0));
    if (m1) {
      __m512 o1 = add ? _mm512_maskz_loadu_ps(m1, p + 16) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(p + 16, m1, _mm512_fmadd_ps(va, c1[i], o1));
    }
  }
}

// ---- microkernels: C[mr, nr] = (add ? C : 0) + alpha * Ap[kc, MR] · Bp[kc, NR] ----
// (add is false only for the first K block when beta is 0, so C is never cleared beforehand)
// MR × 32 with MR = 12 (24 accumulators) or 8 (16: still enough FMA chains in flight, for M
// that 12-row strips would pad, e.g. 64 or 128)
template <int MR>
V4_AVX512 static void micro_512(long kc, const float* A, const float* B, float* C, long ldc, int mr, int nr, float alpha, bool add) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
  for (long k = 0; k < kc; k++) {
    __m512 b0 = _mm512_load_ps(B + k * 32), b1 = _mm512_load_ps(B + k * 32 + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
      __m512 a = _mm512_set1_ps(A[k * MR + i]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
  }
  __mmask16 m0 = nr >= 16 ? 0xffff : __mmask16((1u << nr) - 1);
  __mmask16 m1 = nr >= 32 ? 0xffff : nr > 16 ? __mmask16((1u << (nr - 16)) - 1) : 0;
  store_tile_512(C, ldc, mr, m0, m1, alpha, add, c0, c1);
}

V4_AVX2 static void micro_256(long kc, const float* A, const float* B, float* C, long ldc, int mr, int nr, float alpha, bool add) {
  constexpr int MR = 6;
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm256_setzero_ps();
  for (long k = 0; k < kc; k++) {
    __m256 b0 = _mm256_load_ps(B + k * 16), b1 = _mm256_load_ps(B + k * 16 + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
      __m256 a = _mm256_broadcast_ss(A + k * MR + i);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
    }
  }
  alignas(32) float t[16];
  for (int i = 0; i < mr; i++) {
    _mm256_store_ps(t, c0[i]);
    _mm256_store_ps(t + 8, c1[i]);
    float* p = C + i * ldc;
    for (int j = 0; j < nr; j++) p[j] = std::fma(alpha, t[j], add ? p[j] : 0.f);
  }
}

static void micro_scalar(long kc, const float* A, const float* B, float* C, long ldc, int mr, int nr, float alpha, bool add) {
  constexpr int MR = 4, NR = 8;
  float acc[MR][NR] = {};
  for (long k = 0; k < kc; k++)
    for (int i = 0; i < MR; i++)
      for (int j = 0; j < NR; j++) acc[i][j] = std::fma(A[k * MR + i], B[k * NR + j], acc[i][j]);
  for (int i = 0; i < mr; i++)
    for (int j = 0; j < nr; j++) C[i * ldc + j] = std::fma(alpha, acc[i][j], add ? C[i * ldc + j] : 0.f);
}

// ---- bf16 dot-product mode (opt-in): A and B rounded to bf16 (nearest even), fp32 accumulate ----
// Pair layout: word [kp][i] holds (X(2kp, i), X(2kp+1, i)) as two bf16, low half first, which is
// what vdpbf16ps multiplies and adds into one fp32 lane.
// fp32 bits rounded to nearest even at bit 16 (the bf16 value in the high half); a NaN gives its
// sign and the quiet NaN 0x7fc0 (formats.ts f32ToBf16), not what the carry makes of its payload
// (0x7fffffff would round to −0, 0x7f800001 to infinity)
V4_AVX512 static inline __m512i round_bf16(__m512 v) {
  __m512i u = _mm512_castps_si512(v);
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_and_si512(u, _mm512_set1_epi32(int(0x80000000u))), _mm512_set1_epi32(0x7fc00000)));
}
// 16 pairs from their low and high values: bf16(lo) in each word's low half, bf16(hi) in its high one
V4_AVX512 static inline __m512i pair_words(__m512 lo, __m512 hi) {
  return _mm512_or_si512(_mm512_srli_epi32(round_bf16(lo), 16), _mm512_and_si512(round_bf16(hi), _mm512_set1_epi32(int(0xffff0000u))));
}
V4_AVX512 static void round_to_bf16_512(const float* x, long n, uint16_t* out) {
  long i = 0;
  for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i*)(out + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_bf16(_mm512_loadu_ps(x + i)), 16)));
  const __mmask16 m = __mmask16((1u << (n - i)) - 1);
  if (m) _mm256_mask_storeu_epi16(out + i, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_bf16(_mm512_maskz_loadu_ps(m, x + i)), 16)));
}
void round_to_bf16(const float* x, long n, uint16_t* out) {
  if (isa() == Isa::avx512) return round_to_bf16_512(x, n, out);
  for (long i = 0; i < n; i++) {  // round_bf16's arithmetic, one value at a time
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    out[i] = (u & 0x7fffffffu) > 0x7f800000u ? uint16_t(((u >> 16) & 0x8000u) | 0x7fc0u) : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}
// src is a packed strip or panel [kc][W] (W ≤ 32 floats per k), dst its pairs [cdiv(kc, 2)][W]
V4_AVX512 static void to_bf16_pairs(const float* src, long kc, int W, uint32_t* dst) {
  for (long kp = 0; 2 * kp < kc; kp++) {
    for (int j = 0; j < W; j += 16) {
      const __mmask16 m = W - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (W - j)) - 1);
      __m512 lo = _mm512_maskz_loadu_ps(m, src + 2 * kp * W + j);
      __m512 hi = 2 * kp + 1 < kc ? _mm512_maskz_loadu_ps(m, src + (2 * kp + 1) * W + j) : _mm512_setzero_ps();
      _mm512_mask_storeu_epi32(dst + kp * W + j, m, pair_words(lo, hi));
    }
  }
}

V4_AVX512BF16 static void micro_bf16(long kc2, const uint32_t* A, const uint32_t* B, float* C, long ldc, int mr, int nr, float alpha, bool add) {
  constexpr int MR = 12;
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
  for (long k = 0; k < kc2; k++) {
    __m512bh b0 = (__m512bh)_mm512_load_si512(B + k * 32), b1 = (__m512bh)_mm512_load_si512(B + k * 32 + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
      __m512bh a = (__m512bh)_mm512_set1_epi32(int(A[k * MR + i]));
      c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
      c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
    }
  }
  __mmask16 m0 = nr >= 16 ? 0xffff : __mmask16((1u << nr) - 1);
  __mmask16 m1 = nr >= 32 ? 0xffff : nr > 16 ? __mmask16((1u << (nr - 16)) - 1) : 0;
  store_tile_512(C, ldc, mr, m0, m1, alpha, add, c0, c1);
}

struct Kernel {
  int MR, NR;
  void (*micro)(long, const float*, const float*, float*, long, int, int, float, bool);
};
// The AVX-512 strip height is chosen from M: 8 rows when that pads less than 12 (fp32 only;
// the bf16 kernel is 12 × 32). The strip height never changes a C element's summation order.
static Kernel kernel_for(Isa i, long M, bool bf16) {
  if (i == Isa::avx512) {
    if (!bf16 && cdiv(M, 8) * 8 < cdiv(M, 12) * 12) return {8, 32, micro_512<8>};
    return {12, 32, micro_512<12>};
  }
  if (i == Isa::avx2) return {6, 16, micro_256};
  return {4, 8, micro_scalar};
}

// Ap[s][k][i] = A(m0 + s*MR + i, k0 + k), zero past M.
static void pack_A_scalar(const float* a, long sam, long sak, long M, long m0, long mb, long k0, long kc, int MR, float* Ap) {
  if (sam == 1 && sak != 1) {  // a transposed operand: rows are contiguous along m
    for (long s = 0; s * MR < mb; s++) {
      float* dst = Ap + s * kc * MR;
      long rows = std::min<long>(MR, std::min(mb - s * MR, M - m0 - s * MR));
      for (long k = 0; k < kc; k++) {
        const float* src = a + (m0 + s * MR) + (k0 + k) * sak;
        for (int i = 0; i < MR; i++) dst[k * MR + i] = i < rows ? src[i] : 0.f;
      }
    }
    return;
  }
  for (long s = 0; s * MR < mb; s++) {
    float* dst = Ap + s * kc * MR;
    for (int i = 0; i < MR; i++) {
      long m = m0 + s * MR + i;
      if (m < M && s * MR + i < mb) {
        const float* src = a + m * sam + k0 * sak;
        if (sak == 1)
          for (long k = 0; k < kc; k++) dst[k * MR + i] = src[k];
        else
          for (long k = 0; k < kc; k++) dst[k * MR + i] = src[k * sak];
      } else {
        for (long k = 0; k < kc; k++) dst[k * MR + i] = 0.f;
      }
    }
  }
}

static inline __mmask16 lanes(long n) { return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1); }

// In-register 16 × 16 transpose: on return r[i] holds what was column i.
V4_AVX512 static inline void transpose16_regs(__m512* r) {
  __m512 t[16], u[16], v[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 4; i++) {
    v[i] = _mm512_shuffle_f32x4(u[i], u[4 + i], 0x88);
    v[4 + i] = _mm512_shuffle_f32x4(u[i], u[4 + i], 0xdd);
    v[8 + i] = _mm512_shuffle_f32x4(u[8 + i], u[12 + i], 0x88);
    v[12 + i] = _mm512_shuffle_f32x4(u[8 + i], u[12 + i], 0xdd);
  }
  for (int i = 0; i < 8; i++) {
    r[i] = _mm512_shuffle_f32x4(v[i], v[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(v[i], v[8 + i], 0xdd);
  }
}

// The same packing with AVX-512 (MR ≤ 16): row-major A is transposed 16 k at a time in
// registers, a transposed A copies MR contiguous values per k.
V4_AVX512 static void pack_A_512(const float* a, long sam, long sak, long M, long m0, long mb, long k0, long kc, int MR, float* Ap) {
  const __mmask16 strip = lanes(MR);
  for (long s = 0; s * MR < mb; s++) {
    float* dst = Ap + s * kc * MR;
    const long r0 = m0 + s * MR, rows = std::max<long>(0, std::min<long>(MR, std::min(mb - s * MR, M - r0)));
    if (sak == 1) {
      for (long k = 0; k < kc; k += 16) {
        const long w = std::min<long>(16, kc - k);
        __m512 r[16];
        for (int i = 0; i < 16; i++) r[i] = i < rows ? _mm512_maskz_loadu_ps(lanes(w), a + (r0 + i) * sam + k0 + k) : _mm512_setzero_ps();
        transpose16_regs(r);
        for (long j = 0; j < w; j++) _mm512_mask_storeu_ps(dst + (k + j) * MR, strip, r[j]);
      }
    } else {  // sam == 1
      for (long k = 0; k < kc; k++) _mm512_mask_storeu_ps(dst + k * MR, strip, _mm512_maskz_loadu_ps(lanes(rows), a + r0 + (k0 + k) * sak));
    }
  }
}

// The 16 pair words of 32 consecutive values src[0 … w) (zero past w): each value rounded to
// bf16 and the halves gathered in order, so word j holds values 2j (low half) and 2j + 1
V4_AVX512 static inline __m512i row_pairs32(const float* src, long w) {
  alignas(64) static const uint16_t kHighHalves[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31,
                                                       33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
  const __m512i lo = round_bf16(_mm512_maskz_loadu_ps(lanes(w), src));
  const __m512i hi = round_bf16(_mm512_maskz_loadu_ps(lanes(w - 16), src + 16));
  return _mm512_permutex2var_epi16(lo, _mm512_load_si512(kHighHalves), hi);
}

// bf16 mode: A's block straight into pairs (strip s at A16 + s·cdiv(kc, 2)·MR, word [kp][i]),
// the bits pack_A followed by to_bf16_pairs gives, without the fp32 strip in between. A
// row-major row's 32 values from k0 + 2kp are rounded and their bf16 halves gathered in k order,
// which as 16 words are its pairs; 16 rows of those are transposed in registers.
V4_AVX512 static void pack_A_pairs_512(const float* a, long sam, long sak, long M, long m0, long mb, long k0, long kc, int MR, uint32_t* A16) {
  const __mmask16 strip = lanes(MR);
  const long kc2 = cdiv(kc, 2);
  for (long s = 0; s * MR < mb; s++) {
    uint32_t* dst = A16 + s * kc2 * MR;
    const long r0 = m0 + s * MR, rows = std::max<long>(0, std::min<long>(MR, std::min(mb - s * MR, M - r0)));
    if (sak == 1) {
      for (long kp = 0; kp < kc2; kp += 16) {
        const long w = kc - 2 * kp;  // values left in the row from k0 + 2kp
        __m512 r[16];
        for (int i = 0; i < 16; i++) {
          if (i >= rows) {
            r[i] = _mm512_setzero_ps();
            continue;
          }
          r[i] = _mm512_castsi512_ps(row_pairs32(a + (r0 + i) * sam + k0 + 2 * kp, w));
        }
        transpose16_regs(r);
        for (long j = 0; j < std::min<long>(16, kc2 - kp); j++) _mm512_mask_storeu_ps((float*)dst + (kp + j) * MR, strip, r[j]);
      }
    } else {  // sam == 1: a k's MR values are contiguous
      for (long kp = 0; kp < kc2; kp++) {
        const __m512 lo = _mm512_maskz_loadu_ps(lanes(rows), a + r0 + (k0 + 2 * kp) * sak);
        const __m512 hi = 2 * kp + 1 < kc ? _mm512_maskz_loadu_ps(lanes(rows), a + r0 + (k0 + 2 * kp + 1) * sak) : _mm512_setzero_ps();
        _mm512_mask_storeu_epi32(dst + kp * MR, strip, pair_words(lo, hi));
      }
    }
  }
}

static void pack_A(const float* a, long sam, long sak, long M, long m0, long mb, long k0, long kc, int MR, float* Ap) {
  if (isa() == Isa::avx512 && MR <= 16 && (sak == 1 || sam == 1)) pack_A_512(a, sam, sak, M, m0, mb, k0, kc, MR, Ap);
  else pack_A_scalar(a, sam, sak, M, m0, mb, k0, kc, MR, Ap);
}

// 16 values of row r of an f32 or bf16 weight from column c (lanes past n read as 0)
template <bool BF16>
V4_AVX512 static inline __m512 load_w16(const WeightRef& W, long r, long c, __mmask16 m) {
  if (BF16) {
    const uint16_t* p = (const uint16_t*)W.data + (r + W.row0) * W.cols + c;
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
  }
  return _mm512_maskz_loadu_ps(m, (const float*)W.data + (r + W.row0) * W.ld + c);
}

// Address of W(r, c) for f32 / bf16 weights, for software prefetch (never dereferenced).
template <bool BF16>
static inline const char* w_addr(const WeightRef& W, long r, long c) {
  if (BF16) return (const char*)((const uint16_t*)W.data + (r + W.row0) * W.cols + c);
  return (const char*)((const float*)W.data + (r + W.row0) * W.ld + c);
}

// f32 / bf16 weights need no decode: transB panels are loaded 16 rows × 16 k and transposed in
// registers; plain panels are loaded NR values at a time.
template <bool BF16>
V4_AVX512 static void pack_B_T_direct(const WeightRef& W, long n0, long nb, long k0, long kc, int NR, float* Bp) {
  for (long p = 0; p < cdiv(nb, NR); p++) {
    float* dst = Bp + p * kc * NR;
    for (int jb = 0; jb < NR; jb += 16) {
      const long nbase = n0 + p * NR + jb, rows = std::max<long>(0, std::min<long>(16, n0 + nb - nbase));
      for (long k = 0; k < kc; k += 16) {
        const long w = std::min<long>(16, kc - k);
        __m512 r[16];
        for (int j = 0; j < 16; j++) r[j] = j < rows ? load_w16<BF16>(W, nbase + j, k0 + k, lanes(w)) : _mm512_setzero_ps();
        // the weight streams from memory once: fetch the rows two groups ahead
        for (int j = 0; j < 16; j++) _mm_prefetch(w_addr<BF16>(W, nbase + 32 + j, k0 + k), _MM_HINT_T0);
        transpose16_regs(r);
        for (long i = 0; i < w; i++) _mm512_store_ps(dst + (k + i) * NR + jb, r[i]);
      }
    }
  }
}
template <bool BF16>
V4_AVX512 static void pack_B_N_direct(const WeightRef& W, long n0, long nb, long k0, long kc, int NR, float* Bp) {
  for (long k = 0; k < kc; k++)
    for (long p = 0; p < cdiv(nb, NR); p++)
      for (int jb = 0; jb < NR; jb += 16) {
        const long w = nb - p * NR - jb;
        _mm_prefetch(w_addr<BF16>(W, k0 + k + 16, n0 + p * NR + jb), _MM_HINT_T0);  // 16 rows ahead
        _mm512_store_ps(Bp + p * kc * NR + k * NR + jb, w > 0 ? load_w16<BF16>(W, k0 + k, n0 + p * NR + jb, lanes(w)) : _mm512_setzero_ps());
      }
}

// transB panels of decoded formats with AVX-512: decode 16 rows of W, transpose them 16 × 16 at a time
V4_AVX512 static void pack_B_T_512(const WeightRef& W, long N, long n0, long nb, long k0, long kc, int NR, float* Bp, float* rows16) {
  for (long p = 0; p < cdiv(nb, NR); p++) {
    float* dst = Bp + p * kc * NR;
    for (int jb = 0; jb < NR; jb += 16) {
      for (int j = 0; j < 16; j++) {
        long n = n0 + p * NR + jb + j;
        if (n < N && p * NR + jb + j < nb) decode_row(W, n, k0, kc, rows16 + j * kc);
        else std::memset(rows16 + j * kc, 0, kc * 4);
      }
      long k = 0;
      for (; k + 16 <= kc; k += 16) {
        __m512 r[16];
        for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(rows16 + i * kc + k);
        transpose16_regs(r);
        for (int i = 0; i < 16; i++) _mm512_store_ps(dst + (k + i) * NR + jb, r[i]);
      }
      for (; k < kc; k++)
        for (int j = 0; j < 16; j++) dst[k * NR + jb + j] = rows16[j * kc + k];
    }
  }
}

// Bp[p][k][j] = B(k0 + k, n0 + p*NR + j), dequantised from W, zero past N.
static void pack_B_scalar(const WeightRef& W, bool transB, long N, long n0, long nb, long k0, long kc, int NR, float* Bp, float* row) {
  long npan = cdiv(nb, NR);
  if (transB) {
    for (long p = 0; p < npan; p++) {
      float* dst = Bp + p * kc * NR;
      for (int j = 0; j < NR; j++) {
        long n = n0 + p * NR + j;
        if (n < N && p * NR + j < nb) {
          decode_row(W, n, k0, kc, row);
          for (long k = 0; k < kc; k++) dst[k * NR + j] = row[k];
        } else {
          for (long k = 0; k < kc; k++) dst[k * NR + j] = 0.f;
        }
      }
    }
  } else {
    // one decode per row of the block, then copied into its panels
    long w = std::min(nb, N - n0);
    for (long k = 0; k < kc; k++) {
      decode_row(W, k0 + k, n0, w, row);
      for (long p = 0; p < npan; p++) {
        long c0 = p * NR, cw = std::max<long>(0, std::min<long>(NR, w - c0));
        float* dst = Bp + p * kc * NR + k * NR;
        std::memcpy(dst, row + c0, cw * 4);
        for (long j = cw; j < NR; j++) dst[j] = 0.f;
      }
    }
  }
}

// BF16 weights in bf16 mode: the pairs are the weight's own bits, no fp32 panel in between.
// transB: pair (W[n][k0+2kp], W[n][k0+2kp+1]) is one 32-bit word of row n, so 16 rows × 16
// words are loaded and transposed; else the pair interleaves rows k0+2kp and k0+2kp+1. Past
// N, past kc (odd kc: the last pair's high half) the pairs hold zeros, as to_bf16_pairs gives.
V4_AVX512 static void pack_B_pairs_bf16(const WeightRef& W, bool transB, long n0, long nb, long k0, long kc, int NR, uint32_t* Bp) {
  const uint16_t* w = (const uint16_t*)W.data;
  const long kc2 = cdiv(kc, 2), full = kc / 2;
  for (long p = 0; p < cdiv(nb, NR); p++) {
    uint32_t* dst = Bp + p * kc2 * NR;
    for (int jb = 0; jb < NR; jb += 16) {
      const long nbase = n0 + p * NR + jb, live = std::max<long>(0, std::min<long>(16, n0 + nb - nbase));
      if (transB) {
        for (long kp = 0; kp < kc2; kp += 16) {
          const long wds = std::min<long>(16, full - kp);  // whole words in this group (may be ≤ 0)
          __m512 r[16];
          for (int j = 0; j < 16; j++) {
            const uint16_t* row = w + (nbase + j + W.row0) * W.cols + k0;
            r[j] = j < live && wds > 0 ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(lanes(wds), row + 2 * kp)) : _mm512_setzero_ps();
            if (j < live && kc % 2 && kp + 16 >= kc2)  // the odd tail: low half only
              r[j] = _mm512_castsi512_ps(_mm512_mask_set1_epi32(_mm512_castps_si512(r[j]), __mmask16(1u << (full - kp)), int(row[kc - 1])));
          }
          transpose16_regs(r);
          for (long i = 0; i < std::min<long>(16, kc2 - kp); i++) _mm512_store_ps((float*)dst + (kp + i) * NR + jb, r[i]);
        }
      } else {
        const __mmask16 m = lanes(live);
        for (long kp = 0; kp < kc2; kp++) {
          const uint16_t* a = w + (k0 + 2 * kp + W.row0) * W.cols + nbase;
          __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, a));
          __m512i hi = 2 * kp + 1 < kc ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, a + W.cols)) : _mm512_setzero_si512();
          _mm512_store_si512(dst + kp * NR + jb, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
      }
    }
  }
}

// FP4 / FP8 weights in bf16 mode: decoded straight into pairs, with the products decode_row
// forms (table value × E8M0 scale in fp32) rounded as to_bf16_pairs rounds them, so the pairs
// are the bits the fp32 panel + to_bf16_pairs path gives — without the fp32 panel, its
// transpose and its second pass. Taken where every 16-pair group lies inside one scale group:
// transB needs kc % 32 == 0 (K blocks start at multiples of KC); otherwise the caller falls back.
// The tables are weights.cpp's, which decode_row uses.

// e4m3 codes (16 bits each, code in the low byte) as fp16 bits: exact, 2^8 off in scale (decode_row_512's trick)
V4_AVX512 static inline __m256i fp8_as_f16(__m256i b) {
  return _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8),
                         _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7f)), 7));
}
// 16 values of W's absolute row r from column c (c % 16 == 0; live of them, the rest 0) as fp32
V4_AVX512 static inline __m512 load_q16(const WeightRef& W, long r, long c, long live) {
  if (live <= 0) return _mm512_setzero_ps();
  if (W.fmt == Fmt::fp4) {
    const uint8_t* p = (const uint8_t*)W.data + r * (W.cols / 2) + c / 2;
    const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512i shift = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
    const __m512i b = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(__mmask16((1u << cdiv(std::min<long>(live, 16), 2)) - 1), p));
    const __m512i nib = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(dup, b), shift), _mm512_set1_epi32(15));
    const __m512 f = _mm512_mul_ps(_mm512_permutexvar_ps(nib, _mm512_loadu_ps(fp4_e2m1_table())), _mm512_set1_ps(e8m0_table()[W.scale[r * (W.cols / 32) + c / 32]]));
    return _mm512_maskz_mov_ps(lanes(live), f);
  }
  const uint8_t* p = (const uint8_t*)W.data + r * W.cols + c;
  const __m256i b = _mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(lanes(live), p));
  const float s = 256.0f * e8m0_table()[W.scale[(r / 128) * cdiv(W.cols, 128) + c / 128]];
  return _mm512_mul_ps(_mm512_cvtph_ps(fp8_as_f16(b)), _mm512_set1_ps(s));
}
// bf16 bits of the 16 e2m1 codes, twice (so vpermw's 5-bit index reads code & 15 from either half)
static const uint16_t kFp4Bf16x2[32] = {
    0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0, 0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0,
    0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0, 0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0};

// bf16 bits of 32 e2m1 codes (one a 16-bit lane, code & 15 read) times 2^(sb − 127), with
// exp_add = (sb − 127)·128 in each lane: e2m1 · 2^(sb−127) is a normal bf16 for every code when
// sb lies in 2 … 252 (|v| in 0.5 … 6), so adding sb − 127 to the exponent of the code's bf16
// bits (the non-zero ones) gives the bits the rounded fp32 product has
V4_AVX512 static inline __m512i fp4_bf16_scaled(__m512i codes, __m512i exp_add) {
  const __m512i bits = _mm512_permutexvar_epi16(codes, _mm512_loadu_si512(kFp4Bf16x2));
  const __mmask32 nz = _mm512_test_epi16_mask(bits, _mm512_set1_epi16(0x7fff));
  return _mm512_mask_add_epi16(bits, nz, bits, exp_add);
}

// 16 pairs (W[r][c+2i], W[r][c+2i+1]), i < 16, of absolute row r from column c (c % 32 == 0, c + 32 ≤ cols)
V4_AVX512 static inline __m512i row_pairs16(const WeightRef& W, long r, long c) {
  if (W.fmt == Fmt::fp4) {
    const uint8_t* p = (const uint8_t*)W.data + r * (W.cols / 2) + c / 2;
    const uint8_t sb = W.scale[r * (W.cols / 32) + c / 32];
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
    if (sb >= 2 && sb <= 252) {
      // each 32-bit lane's two codes: the low nibble in its low half, the high one in its high half
      const __m512i idx = _mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi32(15)), _mm512_slli_epi32(_mm512_srli_epi32(b, 4), 16));
      return fp4_bf16_scaled(idx, _mm512_set1_epi16(short((int(sb) - 127) * 128)));
    }
    const __m512 t = _mm512_loadu_ps(fp4_e2m1_table()), s = _mm512_set1_ps(e8m0_table()[sb]);
    const __m512 lo = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)), t), s);
    const __m512 hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), t), s);
    return pair_words(lo, hi);
  }
  const uint8_t* p = (const uint8_t*)W.data + r * W.cols + c;
  // 32 codes: the even columns' and the odd columns' as fp16 bits
  const __m512i codes = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)p));
  const __m512 s = _mm512_set1_ps(256.0f * e8m0_table()[W.scale[(r / 128) * cdiv(W.cols, 128) + c / 128]]);
  const __m256i lo16 = fp8_as_f16(_mm512_cvtepi32_epi16(codes));
  const __m256i hi16 = fp8_as_f16(_mm512_cvtepi32_epi16(_mm512_srli_epi32(codes, 16)));
  const __m512 lo = _mm512_mul_ps(_mm512_cvtph_ps(lo16), s);
  const __m512 hi = _mm512_mul_ps(_mm512_cvtph_ps(hi16), s);
  return pair_words(lo, hi);
}

// 16 pairs (W[ra][c+i], W[ra+1][c+i]), i < 16, of two FP4 rows from column c (c % 16 == 0,
// c + 16 ≤ cols) — what pair_words(load_q16(ra), load_q16(ra + 1)) gives — through
// fp4_bf16_scaled, where both rows' scales for these columns lie in 2 … 252; false otherwise.
// The 16 bytes (8 a row) become 32 nibble words, put in pair order by one word permutation:
// low nibbles are the even columns, high nibbles the odd ones.
static const uint16_t kRowPairOrder[32] = {0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27,
                                           4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31};
V4_AVX512 static inline bool fp4_row_pairs16(const WeightRef& W, long ra, long c, __m512i& out) {
  const long groups = W.cols / 32;
  const int sa = W.scale[ra * groups + c / 32], sb = W.scale[(ra + 1) * groups + c / 32];
  if (sa < 2 || sa > 252 || sb < 2 || sb > 252) return false;
  const uint8_t* p = (const uint8_t*)W.data + ra * (W.cols / 2) + c / 2;
  const __m128i bytes = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i*)p), _mm_loadl_epi64((const __m128i*)(p + W.cols / 2)));
  const __m256i w = _mm256_cvtepu8_epi16(bytes);  // words 0-7: row ra's bytes, 8-15: row ra+1's
  const __m512i nib = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(w, _mm256_set1_epi16(15))), _mm256_srli_epi16(w, 4), 1);
  const __m512i codes = _mm512_permutexvar_epi16(_mm512_loadu_si512(kRowPairOrder), nib);
  out = fp4_bf16_scaled(codes, _mm512_mask_blend_epi16(__mmask32(0xAAAAAAAAu), _mm512_set1_epi16(short((sa - 127) * 128)), _mm512_set1_epi16(short((sb - 127) * 128))));
  return true;
}

// bytes of row r (absolute) of an FP4 / FP8 weight from column c, and of its scale byte for column c
static inline const char* q_row_addr(const WeightRef& W, long r, long c) {
  return W.fmt == Fmt::fp4 ? (const char*)W.data + r * (W.cols / 2) + c / 2 : (const char*)W.data + r * W.cols + c;
}
static inline const char* q_scale_addr(const WeightRef& W, long r, long c) {
  return W.fmt == Fmt::fp4 ? (const char*)W.scale + r * (W.cols / 32) + c / 32 : (const char*)W.scale + (r / 128) * cdiv(W.cols, 128) + c / 128;
}

V4_AVX512 static bool pack_B_pairs_q(const WeightRef& W, bool transB, long n0, long nb, long k0, long kc, int NR, uint32_t* Bp) {
  if ((W.fmt != Fmt::fp4 && W.fmt != Fmt::fp8) || NR % 16 != 0 || k0 % 32 != 0) return false;
  if (transB && kc % 32 != 0) return false;
  const long kc2 = cdiv(kc, 2), npan = cdiv(nb, NR);
  if (transB) {
    // each row n is read kc values at a time (64 or 128 bytes): fetch the next 16 rows' bytes
    // and scales while this group of 16 is decoded, so the weight streams without stalls
    const long rowBytes = W.fmt == Fmt::fp4 ? kc / 2 : kc;
    for (long p = 0; p < npan; p++) {
      uint32_t* dst = Bp + p * kc2 * NR;
      for (int jb = 0; jb < NR; jb += 16) {
        const long nbase = n0 + p * NR + jb, live = std::max<long>(0, std::min<long>(16, n0 + nb - nbase));
        const long ahead = std::min<long>(16, std::max<long>(0, n0 + nb - nbase - 16));
        for (long j = 0; j < ahead; j++) {
          const char* a = q_row_addr(W, nbase + 16 + j + W.row0, k0);
          for (long off = 0; off < rowBytes; off += 64) _mm_prefetch(a + off, _MM_HINT_T0);
          _mm_prefetch(q_scale_addr(W, nbase + 16 + j + W.row0, k0), _MM_HINT_T0);
        }
        for (long kp = 0; kp < kc2; kp += 16) {
          __m512 r[16];
          for (int j = 0; j < 16; j++)
            r[j] = j < live ? _mm512_castsi512_ps(row_pairs16(W, nbase + j + W.row0, k0 + 2 * kp)) : _mm512_setzero_ps();
          transpose16_regs(r);
          for (int i = 0; i < 16; i++) _mm512_store_ps((float*)dst + (kp + i) * NR + jb, r[i]);
        }
      }
    }
    return true;
  }
  // a pair interleaves rows k0+2kp and k0+2kp+1: walk the rows in order, each read along its
  // columns n0 … n0+nb (a short run of bytes per row: the rows four pairs ahead are fetched)
  const long runBytes = W.fmt == Fmt::fp4 ? (nb + 1) / 2 : nb;
  for (long kp = 0; kp < kc2; kp++) {
    const long ra = k0 + 2 * kp + W.row0;
    const bool two = 2 * kp + 1 < kc;
    for (long q = 0; q < 2; q++) {
      if (2 * (kp + 4) + q >= kc) break;
      const char* a = q_row_addr(W, ra + 8 + q, n0);
      for (long off = 0; off < runBytes; off += 64) _mm_prefetch(a + off, _MM_HINT_T0);
      _mm_prefetch(q_scale_addr(W, ra + 8 + q, n0), _MM_HINT_T0);
    }
    for (long p = 0; p < npan; p++)
      for (int jb = 0; jb < NR; jb += 16) {
        const long nbase = n0 + p * NR + jb, live = std::max<long>(0, std::min<long>(16, n0 + nb - nbase));
        __m512i words;
        if (W.fmt == Fmt::fp4 && two && live == 16 && fp4_row_pairs16(W, ra, nbase, words)) {
          _mm512_store_si512(Bp + p * kc2 * NR + kp * NR + jb, words);
          continue;
        }
        const __m512 lo = load_q16(W, ra, nbase, live);
        const __m512 hi = two ? load_q16(W, ra + 1, nbase, live) : _mm512_setzero_ps();
        _mm512_store_si512(Bp + p * kc2 * NR + kp * NR + jb, pair_words(lo, hi));
      }
  }
  return true;
}

static void pack_B(const WeightRef& W, bool transB, long N, long n0, long nb, long k0, long kc, int NR, float* Bp, Scratch& row) {
  if (isa() == Isa::avx512 && NR % 16 == 0) {
    if (W.fmt == Fmt::bf16) return transB ? pack_B_T_direct<true>(W, n0, nb, k0, kc, NR, Bp) : pack_B_N_direct<true>(W, n0, nb, k0, kc, NR, Bp);
    if (W.fmt == Fmt::f32) return transB ? pack_B_T_direct<false>(W, n0, nb, k0, kc, NR, Bp) : pack_B_N_direct<false>(W, n0, nb, k0, kc, NR, Bp);
    if (transB) return pack_B_T_512(W, N, n0, nb, k0, kc, NR, Bp, row.get(16 * kc));
  }
  pack_B_scalar(W, transB, N, n0, nb, k0, kc, NR, Bp, row.get(std::max(kc, nb)));
}

// bf16 mode's B panels for columns [n0, n0 + nb) and K block (k0, kc) as pairs (panel p at
// B16 + p·cdiv(kc, 2)·NR): BF16, FP8 and FP4 weights straight into pairs where the format allows,
// else through the fp32 panels (Bp's scratch) and to_bf16_pairs; the same bits either way
static void pack_B_pairs(const WeightRef& W, bool transB, long N, long n0, long nb, long k0, long kc, int NR, uint32_t* B16, Scratch& fp32, Scratch& row) {
  if (W.fmt == Fmt::bf16 && NR % 16 == 0) return pack_B_pairs_bf16(W, transB, n0, nb, k0, kc, NR, B16);
  if (pack_B_pairs_q(W, transB, n0, nb, k0, kc, NR, B16)) return;
  const long kc2 = cdiv(kc, 2);
  float* Bp = fp32.get(cdiv(nb, NR) * NR * kc);
  pack_B(W, transB, N, n0, nb, k0, kc, NR, Bp, row);
  for (long jp = 0; jp * NR < nb; jp++) to_bf16_pairs(Bp + jp * kc * NR, kc, NR, B16 + jp * kc2 * NR);
}

// A is packed once per call, shared by every task, when it takes at most this many floats (in
// bf16 mode, where only its pairs are kept: this many pair words).
static const long kSharedA = 8L << 20;

// ---- skinny products: C [M, N] with N ≤ 16 (or M ≤ 16, run as Cᵀ = Bᵀ Aᵀ), f32 operands ----
// The LoRA factors' GEMMs (x Aᵀ, dy B, dyᵀ u: N = r; gᵀ x: M = r) are of this kind. The packed
// path packs the long operand (M·K values) to use each value r times, so packing cost what the
// products did (a [512, 1024] · [1024, 16] at 47 GFLOP/s). Here the short operand is copied once
// into rows of 16 (Bp[k] = B(k, 0..N), zero past N) and the long one is read where it lies: eight
// rows of C at a time, C(m, ·) = Σ_k A(m, k)·Bp[k] in one 16-lane accumulator per row, k in order.
// Every element is summed by one task in a fixed order: independent of the thread count.
template <class T>
struct Strided {
  T* p;
  long s0, s1;  // element (i, j) at p[i·s0 + j·s1]
  T& at(long i, long j) const { return p[i * s0 + j * s1]; }
};
using In = Strided<const float>;
using Out = Strided<float>;

V4_AVX512 static void skinny_rows_512(long m0, long m1, long N, long K, float alpha, const In& A, const float* Bp, float beta, const Out& C) {
  const __mmask16 live = lanes(N);
  const __m512 va = _mm512_set1_ps(alpha);
  for (long m = m0; m < m1; m += 8) {
    const int rows = int(std::min<long>(8, m1 - m));
    __m512 acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm512_setzero_ps();
    const float* ap[8];
    for (int i = 0; i < 8; i++) ap[i] = A.p + (m + std::min(i, rows - 1)) * A.s0;
    for (long k = 0; k < K; k++) {
      const __m512 b = _mm512_load_ps(Bp + k * 16);
#pragma GCC unroll 8
      for (int i = 0; i < 8; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(ap[i][k * A.s1]), b, acc[i]);
    }
    for (int i = 0; i < rows; i++) {
      if (C.s1 == 1) {
        float* o = C.p + (m + i) * C.s0;
        const __m512 old = beta == 0.f ? _mm512_setzero_ps() : _mm512_mul_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(live, o));
        _mm512_mask_storeu_ps(o, live, _mm512_fmadd_ps(va, acc[i], old));
        continue;
      }
      alignas(64) float t[16];
      _mm512_store_ps(t, acc[i]);
      for (long n = 0; n < N; n++) {
        float& o = C.p[(m + i) * C.s0 + n * C.s1];
        o = std::fma(alpha, t[n], beta == 0.f ? 0.f : beta * o);
      }
    }
  }
}

// C = alpha·A·B + beta·C for N ≤ 16 (B: K × N)
static void skinny(long M, long N, long K, float alpha, const In& A, const In& B, float beta, const Out& C, bool parallel) {
  static Shelf<Scratch> shelf;
  Borrowed<Scratch> sb(shelf);
  float* Bp = sb->get(K * 16);
  for (long k = 0; k < K; k++)
    for (long n = 0; n < 16; n++) Bp[k * 16 + n] = n < N ? B.at(k, n) : 0.f;
  const long per = 32, tasks = cdiv(M, per);
  auto run = [&](int t) {
    check_cancel();
    skinny_rows_512(t * per, std::min(M, (t + 1) * per), N, K, alpha, A, Bp, beta, C);
  };
  if (parallel) parallel_run(int(tasks), run);
  else
    for (int t = 0; t < int(tasks); t++) run(t);
}

// How gemm_impl and gemm_amx split C into mchunks × nchunks tasks (MB rows × NB columns each).
// B (with its dequantisation) is packed once per M chunk and A, unless shared, once per N chunk,
// so the split minimises packing plus compute over the threads (flopsPerUnit: the products a
// unit of packing costs as much as), with blocks small enough for the caches: at most maxMB rows
// and, to start from, 8 panels. A is not shared when N is not split.
struct Split {
  long MB, NB, mchunks, nchunks;
};
static Split split_tasks(long M, long N, long K, long MR, long NR, bool parallel, long maxMB, double flopsPerUnit, bool& shareA) {
  const int threads = parallel ? num_threads() : 1;
  const long strips = cdiv(M, MR), npanels = cdiv(N, NR);
  long mchunks = cdiv(M, maxMB), nchunks = cdiv(npanels, 8);
  if (parallel) {
    double best = 1e300;
    const long m_lo = mchunks, n_lo = nchunks;
    for (long mc = m_lo; mc <= std::min(strips, m_lo * 8); mc++)
      for (long nc = n_lo; nc <= std::min(npanels, n_lo * 16); nc++) {
        long tasks = mc * nc, waves = cdiv(tasks, threads);
        double work = 2.0 * M * N * K / flopsPerUnit + (shareA ? 0.0 : double(M) * K * nc) + 1.5 * double(N) * K * mc;
        double t = work / double(tasks) * double(waves);
        if (t < best * 0.999) best = t, mchunks = mc, nchunks = nc;
      }
  }
  if (nchunks == 1) shareA = false;
  const long MB = cdiv(cdiv(M, mchunks), MR) * MR, NB = cdiv(npanels, nchunks) * NR;
  return {MB, NB, cdiv(M, MB), cdiv(N, NB)};
}
// C's block [m0, m0 + mb) × [n0, n0 + nb) times beta, where beta is neither 0 (the first K block
// overwrites C) nor 1 (it adds to C)
static void scale_block(float* c, long ldc, long m0, long mb, long n0, long nb, float beta) {
  if (beta == 0.f || beta == 1.f) return;
  for (long i = 0; i < mb; i++)
    for (long j = 0; j < nb; j++) c[(m0 + i) * ldc + n0 + j] *= beta;
}
// f(0) … f(n−1) on the pool, or in order on this thread
static void run_tasks(bool parallel, long n, const std::function<void(int)>& f) {
  if (parallel) parallel_run(int(n), f);
  else
    for (int t = 0; t < int(n); t++) f(t);
}

// ---- bf16 mode on AMX tiles (CPUs with AMX-BF16: amx_mode()) ----
// The same operands as the dot-product kernel — A and B rounded to bf16 (nearest even), pairs
// (X(2kp), X(2kp+1)) multiplied and summed in fp32 — on the tile unit: tdpbf16ps multiplies a
// 16 × 32 bf16 tile of A by a 16-pair × 16 tile of B into a 16 × 16 fp32 tile, 16 384 products
// an instruction. B is packed as for micro_bf16 ([kp][32] words a panel, K padded with zero
// pairs to whole tiles); A as tiles: a 32-row strip holds, for each 16-pair step t, its 32 rows'
// 16 words each (row i's word j = bf16 of A(i, 32t + 2j) and A(i, 32t + 2j + 1)), so a tile is
// 1 KB of contiguous rows. A micro step is 2 × 2 tiles (32 × 32 of C). Each C element is still
// summed by one task in a fixed order: the bits do not depend on the thread count. They differ
// from micro_bf16's in the last places (the tile unit sums a pair and the products of a step in
// its own order); both are bf16 mode's products summed in fp32.
#define V4_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
static const int kAmxMR = 32, kAmxNR = 32;
// K block of the tile path: a micro step sums 1024 values (32 tile steps) before its C tile goes
// back to memory (256: the store and reload of C cost a quarter of the head's time; the head's
// loss pass 713 → 889 GFLOP/s at 512 tokens, 1024 against 256 and 512)
static const long KCA = 1024;

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
// every tile 16 rows of 64 bytes (C: 16 fp32, A: 16 pairs, B: 16 words), loaded once per thread
V4_AMX static void amx_configure() {
  thread_local bool done = false;
  if (done) return;
  TileConfig c;
  std::memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 8; t++) c.colsb[t] = 64, c.rows[t] = 16;
  // (GCC 12's _tile_loadconfig tells the compiler it reads 8 bytes, which drops the stores above)
  __asm__ volatile("ldtilecfg %0" : : "m"(c));
  done = true;
}

// A's rows [m0, m0 + mb) for K block (k0, kc) as 32-row tile strips (layout above): strip s at
// dst + s·32·kc2p; rows past M and pairs past kc are zero. Row-major A: 32 values of a row are
// rounded and their halves gathered in k order (a row of the tile); transposed A: 16 pairs of
// 16 rows (a k's rows are contiguous) transposed in registers; other strides through a row copy.
V4_AMX static void pack_A_amx(const float* a, long sam, long sak, long M, long m0, long mb, long k0, long kc, uint32_t* dst) {
  const long kc2p = cdiv(cdiv(kc, 2), 16) * 16, steps = kc2p / 16;
  alignas(64) float row[32];
  for (long s = 0; s * kAmxMR < mb; s++) {
    uint32_t* strip = dst + s * kAmxMR * kc2p;
    const long r0 = m0 + s * kAmxMR, rows = std::max<long>(0, std::min<long>(kAmxMR, std::min(mb - s * kAmxMR, M - r0)));
    if (sam == 1 && sak != 1) {
      for (long t = 0; t < steps; t++)
        for (long g = 0; g < 2; g++) {
          const long live = std::max<long>(0, std::min<long>(16, rows - 16 * g));
          __m512 r[16];
          for (long kp = 0; kp < 16; kp++) {
            const long k = 32 * t + 2 * kp;
            const __m512 lo = k < kc && live ? _mm512_maskz_loadu_ps(lanes(live), a + r0 + 16 * g + (k0 + k) * sak) : _mm512_setzero_ps();
            const __m512 hi = k + 1 < kc && live ? _mm512_maskz_loadu_ps(lanes(live), a + r0 + 16 * g + (k0 + k + 1) * sak) : _mm512_setzero_ps();
            r[kp] = _mm512_castsi512_ps(pair_words(lo, hi));
          }
          transpose16_regs(r);
          for (int i = 0; i < 16; i++) _mm512_store_ps((float*)strip + t * 16 * kAmxMR + (16 * g + i) * 16, r[i]);
        }
      continue;
    }
    for (long i = 0; i < kAmxMR; i++)
      for (long t = 0; t < steps; t++) {
        uint32_t* out = strip + t * 16 * kAmxMR + i * 16;
        const long w = std::max<long>(0, std::min<long>(32, kc - 32 * t));  // values of this step inside the block
        if (i >= rows || w == 0) {
          _mm512_store_si512(out, _mm512_setzero_si512());
          continue;
        }
        const float* src = a + (r0 + i) * sam + (k0 + 32 * t) * sak;
        if (sak != 1) {
          for (long k = 0; k < w; k++) row[k] = src[k * sak];
          src = row;
        }
        _mm512_store_si512(out, row_pairs32(src, w));
      }
  }
}

// C[mr, nr] = (add ? C : 0) + alpha · A-strip · B-panel over `steps` 16-pair steps
V4_AMX static void micro_amx(long steps, const uint32_t* A, const uint32_t* B, float* C, long ldc, int mr, int nr, float alpha, bool add) {
  const bool lower = mr > 16, right = nr > 16;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (long t = 0; t < steps; t++) {
    const uint32_t* At = A + t * 16 * kAmxMR;
    const uint32_t* Bt = B + t * 16 * kAmxNR;
    _tile_loadd(4, At, 64);
    _tile_loadd(6, Bt, kAmxNR * 4);
    _tile_dpbf16ps(0, 4, 6);
    if (right) {
      _tile_loadd(7, Bt + 16, kAmxNR * 4);
      _tile_dpbf16ps(1, 4, 7);
    }
    if (lower) {
      _tile_loadd(5, At + 16 * 16, 64);
      _tile_dpbf16ps(2, 5, 6);
      if (right) _tile_dpbf16ps(3, 5, 7);
    }
  }
  // columns 0–15 of the 32 rows into c0, 16–31 into c1 (a tile row is one register's 64 bytes)
  __m512 c0[kAmxMR], c1[kAmxMR];
  _tile_stored(0, c0, 64);
  if (right) _tile_stored(1, c1, 64);
  if (lower) {
    _tile_stored(2, c0 + 16, 64);
    if (right) _tile_stored(3, c1 + 16, 64);
  }
  store_tile_512(C, ldc, mr, lanes(nr), lanes(nr - 16), alpha, add, c0, c1);
}

// B's panels for K block (k0, kc) as micro_amx reads them: panel p at B16 + p·kc2p·32, the pairs
// the dot-product kernel's packing gives, zero pairs from cdiv(kc, 2) to kc2p
V4_AMX static void pack_B_amx(const WeightRef& W, bool transB, long N, long n0, long nb, long k0, long kc, uint32_t* B16, Scratch& fp32, Scratch& row) {
  const long kc2 = cdiv(kc, 2), kc2p = cdiv(kc2, 16) * 16, npan = cdiv(nb, kAmxNR);
  auto one = [&](long p0, long p1) {  // panels [p0, p1) at B16 + p0·kc2p·32, packed with stride kc2 (== kc2p or one panel)
    const long c0 = p0 * kAmxNR;
    pack_B_pairs(W, transB, N, n0 + c0, std::min(nb, p1 * kAmxNR) - c0, k0, kc, kAmxNR, B16 + p0 * kc2p * kAmxNR, fp32, row);
  };
  if (kc2 == kc2p) return one(0, npan);
  for (long p = 0; p < npan; p++) {
    one(p, p + 1);
    std::memset(B16 + (p * kc2p + kc2) * kAmxNR, 0, (kc2p - kc2) * kAmxNR * 4);
  }
}

static void gemm_amx(long M, long N, long K, float alpha, const float* a, long sam, long sak,
                     const WeightRef& W, bool transB, float beta, float* c, long ldc, bool parallel) {
  const long MR = kAmxMR, NR = kAmxNR;
  const long strips = cdiv(M, MR), Mp = strips * MR;
  const long Kp2 = cdiv(K, KCA) * (KCA / 2);  // pair words a row of A takes over every K block (KCA % 32 == 0)
  bool shareA = Mp * Kp2 <= kSharedA;
  // gemm_impl's split, with the tile unit's products (1024 flops a unit of packing)
  const int threads = parallel ? num_threads() : 1;
  const Split sp = split_tasks(M, N, K, MR, NR, parallel, 1024, 1024.0, shareA);
  const long MB = sp.MB, NB = sp.NB, mchunks = sp.mchunks, nchunks = sp.nchunks;
  static Shelf<Scratch> shared_shelf;
  Borrowed<Scratch> sshared(shared_shelf);
  // the shared A: K block k0 at A16 + (k0 / 2)·Mp, its strip s at + s·32·kc2p
  uint32_t* A16 = shareA ? (uint32_t*)sshared->get(Mp * Kp2) : nullptr;
  if (shareA) {
    const long kblocks = cdiv(K, KCA), groups = std::min(strips, cdiv(4L * threads, kblocks)), per = cdiv(strips, groups);
    auto pack_block = [&](int task) {
      long k0 = (task / groups) * KCA, s0 = (task % groups) * per, s1 = std::min(strips, s0 + per), kc = std::min(KCA, K - k0);
      if (s0 >= s1) return;
      const long kc2p = cdiv(cdiv(kc, 2), 16) * 16;
      pack_A_amx(a, sam, sak, M, s0 * MR, (s1 - s0) * MR, k0, kc, A16 + (k0 / 2) * Mp + s0 * MR * kc2p);
    };
    run_tasks(parallel, kblocks * groups, pack_block);
  }
  auto task_body = [&](int task) {
    check_cancel();
    amx_configure();
    long m0 = (task / nchunks) * MB, n0 = (task % nchunks) * NB;
    long mb = std::min(MB, M - m0), nb = std::min(NB, N - n0);
    scale_block(c, ldc, m0, mb, n0, nb, beta);
    thread_local Scratch sa, sb, sfp32, srow;
    for (long k0 = 0; k0 < K; k0 += KCA) {
      const long kc = std::min(KCA, K - k0), kc2p = cdiv(cdiv(kc, 2), 16) * 16, steps = kc2p / 16;
      const bool add = beta != 0.f || k0 > 0;  // beta 0: the first K block overwrites C
      const uint32_t* Ap;
      if (shareA) {
        Ap = A16 + (k0 / 2) * Mp + (m0 / MR) * MR * kc2p;
      } else {
        uint32_t* p = (uint32_t*)sa.get(cdiv(mb, MR) * MR * kc2p);
        pack_A_amx(a, sam, sak, M, m0, mb, k0, kc, p);
        Ap = p;
      }
      uint32_t* B16 = (uint32_t*)sb.get(cdiv(nb, NR) * NR * kc2p);
      pack_B_amx(W, transB, N, n0, nb, k0, kc, B16, sfp32, srow);
      for (long jp = 0; jp * NR < nb; jp++)
        for (long is = 0; is * MR < mb; is++)
          micro_amx(steps, Ap + is * MR * kc2p, B16 + jp * kc2p * NR, c + (m0 + is * MR) * ldc + n0 + jp * NR, ldc,
                    int(std::min<long>(MR, mb - is * MR)), int(std::min<long>(NR, nb - jp * NR)), alpha, add);
    }
  };
  run_tasks(parallel, mchunks * nchunks, task_body);
}

static void gemm_impl(long M, long N, long K, float alpha, const float* a, long sam, long sak,
                      const WeightRef& W, bool transB, float beta, float* c, long ldc, bool parallel) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (long i = 0; i < M; i++)
      for (long j = 0; j < N; j++) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  if (W.fmt == Fmt::f32 && isa() == Isa::avx512 && !bf16_mode() && (N <= 16 || M <= 16)) {
    const float* w = (const float*)W.data + W.row0 * W.ld;
    // B(k, n) = W(n, k) transposed, else W(k, n)
    const In Bs = transB ? In{w, 1, W.ld} : In{w, W.ld, 1};
    const In As{a, sam, sak};
    if (N <= 16) return skinny(M, N, K, alpha, As, Bs, beta, Out{c, ldc, 1}, parallel);
    // Cᵀ [N, M] = Bᵀ Aᵀ: rows of C's transpose are its columns
    return skinny(N, M, K, alpha, In{Bs.p, Bs.s1, Bs.s0}, In{a, sak, sam}, beta, Out{c, 1, ldc}, parallel);
  }
  if (amx_mode()) return gemm_amx(M, N, K, alpha, a, sam, sak, W, transB, beta, c, ldc, parallel);
  const bool bf16 = bf16_mode();
  const Kernel kern = kernel_for(isa(), M, bf16);
  const int MR = kern.MR, NR = kern.NR;
  const long strips = cdiv(M, MR), Mp = strips * MR;
  // A packed once for the whole call: block k0 at Ashared + k0*Mp, its strip s at + s*kc*MR
  // (unless N is not split, where each task packs its own rows of A right before using them).
  // In bf16 mode only its pairs are kept (half the bytes: twice the rows under the same bound).
  const bool pairsDirect = bf16 && isa() == Isa::avx512 && MR <= 16 && (sak == 1 || sam == 1);
  bool shareA = (pairsDirect ? Mp * cdiv(K, 2) : Mp * K) <= kSharedA;
  // Split C into tasks (split_tasks): M blocks of up to 512 rows (a packed A block of 512 KB per
  // K block, in L2, and a 512-token row's B packed (decoded) once, not twice as under the 480 it
  // was: FP8 linears at 512 tokens 5–10 % faster), in bf16 mode 960 (bf16 pairs take the bytes of
  // 480 fp32 rows, and the dot products retire twice the FLOPs an instruction).
  const int threads = parallel ? num_threads() : 1;
  const Split sp = split_tasks(M, N, K, MR, NR, parallel, bf16 ? 960 : 512, bf16 ? 128.0 : 64.0, shareA);
  const long MB = sp.MB, NB = sp.NB, mchunks = sp.mchunks, nchunks = sp.nchunks;
  // the whole packed A ([M, K], and its pairs): borrowed, so that it is kept once, not once per
  // libuv thread that ever ran a GEMM
  static Shelf<Scratch> shared_shelf, shared16_shelf;
  Borrowed<Scratch> sshared(shared_shelf), sshared16(shared16_shelf);
  // bf16: the shared A as pairs only, block k0 at A16shared + (k0/2)*Mp (pack_A_pairs_512 where
  // AVX-512 packs A; else through the fp32 strips, converted once per call)
  float* Ashared = shareA && !pairsDirect ? sshared->get(Mp * K) : nullptr;
  uint32_t* A16shared = shareA && bf16 ? (uint32_t*)sshared16->get(Mp * cdiv(K, 2)) : nullptr;
  if (shareA) {
    // one packing task per (K block, group of strips): enough tasks for the threads even when K is short
    const long kblocks = cdiv(K, KC), groups = std::min(strips, cdiv(4L * threads, kblocks)), per = cdiv(strips, groups);
    auto pack_block = [&](int task) {
      long k0 = (task / groups) * KC, s0 = (task % groups) * per, s1 = std::min(strips, s0 + per), kc = std::min(KC, K - k0);
      if (s0 >= s1) return;
      if (pairsDirect) {
        pack_A_pairs_512(a, sam, sak, M, s0 * MR, (s1 - s0) * MR, k0, kc, MR, A16shared + (k0 / 2) * Mp + s0 * cdiv(kc, 2) * MR);
        return;
      }
      float* Ak = Ashared + k0 * Mp;
      pack_A(a, sam, sak, M, s0 * MR, (s1 - s0) * MR, k0, kc, MR, Ak + s0 * kc * MR);
      if (A16shared) {
        const long kc2 = cdiv(kc, 2);
        for (long is = s0; is < s1; is++) to_bf16_pairs(Ak + is * kc * MR, kc, MR, A16shared + (k0 / 2) * Mp + is * kc2 * MR);
      }
    };
    run_tasks(parallel, kblocks * groups, pack_block);
  }
  auto task_body = [&](int task) {
    check_cancel();
    long m0 = (task / nchunks) * MB, n0 = (task % nchunks) * NB;
    long mb = std::min(MB, M - m0), nb = std::min(NB, N - n0);
    scale_block(c, ldc, m0, mb, n0, nb, beta);
    thread_local Scratch sa, sb, srow, sa16, sb16;
    for (long k0 = 0; k0 < K; k0 += KC) {
      long kc = std::min(KC, K - k0);
      const bool add = beta != 0.f || k0 > 0;  // beta 0: the first K block overwrites C
      const float* Ap = nullptr;
      if (pairsDirect) {
        // bf16 with its pairs packed straight from A (below)
      } else if (shareA) {
        Ap = Ashared + k0 * Mp + (m0 / MR) * kc * MR;
      } else {
        float* p = sa.get(cdiv(mb, MR) * MR * kc);
        pack_A(a, sam, sak, M, m0, mb, k0, kc, MR, p);
        Ap = p;
      }
      if (bf16) {
        const long kc2 = cdiv(kc, 2);
        const uint32_t* A16;
        if (A16shared) {
          A16 = A16shared + (k0 / 2) * Mp + (m0 / MR) * kc2 * MR;
        } else if (pairsDirect) {
          uint32_t* p = (uint32_t*)sa16.get(cdiv(mb, MR) * MR * kc2);
          pack_A_pairs_512(a, sam, sak, M, m0, mb, k0, kc, MR, p);
          A16 = p;
        } else {
          uint32_t* p = (uint32_t*)sa16.get(cdiv(mb, MR) * MR * kc2);
          for (long is = 0; is * MR < mb; is++) to_bf16_pairs(Ap + is * kc * MR, kc, MR, p + is * kc2 * MR);
          A16 = p;
        }
        uint32_t* B16 = (uint32_t*)sb16.get(cdiv(nb, NR) * NR * kc2);
        pack_B_pairs(W, transB, N, n0, nb, k0, kc, NR, B16, sb, srow);
        for (long jp = 0; jp * NR < nb; jp++)
          for (long is = 0; is * MR < mb; is++)
            micro_bf16(kc2, A16 + is * kc2 * MR, B16 + jp * kc2 * NR, c + (m0 + is * MR) * ldc + n0 + jp * NR, ldc,
                       int(std::min<long>(MR, mb - is * MR)), int(std::min<long>(NR, nb - jp * NR)), alpha, add);
        continue;
      }
      float* Bp = sb.get(cdiv(nb, NR) * NR * kc);
      pack_B(W, transB, N, n0, nb, k0, kc, NR, Bp, srow);
      for (long jp = 0; jp * NR < nb; jp++)
        for (long is = 0; is * MR < mb; is++)
          kern.micro(kc, Ap + is * kc * MR, Bp + jp * kc * NR, c + (m0 + is * MR) * ldc + n0 + jp * NR, ldc,
                     int(std::min<long>(MR, mb - is * MR)), int(std::min<long>(NR, nb - jp * NR)), alpha, add);
    }
  };
  run_tasks(parallel, mchunks * nchunks, task_body);
}

void gemm(long M, long N, long K, float alpha, const float* a, long sam, long sak,
          const WeightRef& W, bool transB, float beta, float* c, long ldc) {
  gemm_impl(M, N, K, alpha, a, sam, sak, W, transB, beta, c, ldc, true);
}
void gemm_serial(long M, long N, long K, float alpha, const float* a, long sam, long sak,
                 const WeightRef& W, bool transB, float beta, float* c, long ldc) {
  gemm_impl(M, N, K, alpha, a, sam, sak, W, transB, beta, c, ldc, false);
}

void gemm_reference(long M, long N, long K, float alpha, const float* a, long sam, long sak,
                    const WeightRef& W, bool transB, float beta, float* c, long ldc) {
  std::vector<float> wrow(transB ? K : N), acc(N);
  std::vector<float> Bfull;
  if (!transB) {
    Bfull.resize(K * N);
    for (long k = 0; k < K; k++) decode_row(W, k, 0, N, &Bfull[k * N]);
  }
  for (long m = 0; m < M; m++) {
    for (long n = 0; n < N; n++) {
      float s = 0.f;
      if (transB) {
        decode_row(W, n, 0, K, wrow.data());
        for (long k = 0; k < K; k++) s += a[m * sam + k * sak] * wrow[k];
      } else {
        for (long k = 0; k < K; k++) s += a[m * sam + k * sak] * Bfull[k * N + n];
      }
      float& o = c[m * ldc + n];
      o = (beta == 0.f ? 0.f : beta * o) + alpha * s;
    }
  }
}

}  // namespace v4
