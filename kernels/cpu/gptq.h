// GPTQ (Frantar et al. 2022) on the INT4 group grid and the Q4_0 / Q4_K grids, float64, as
// src/export/gptq.ts computes it: the same operations in the same order per element (no FMA
// contraction), vectorised across the independent index and blocked for cache, so the codes equal
// the TypeScript reference's.
#pragma once
#include <cstdint>

namespace v4 {

// H is (n, n) float64, X is (rows, n) float32 with row stride ldx.
// H[i][j] += Σ_t X[t][i]·X[t][j] for j ≥ i (the upper triangle), t ascending.
void gptq_hessian_accumulate(double* H, const float* X, long rows, long n, long ldx);

// U is (n, n): the upper Cholesky factor of A (A = Uᵀ U, only A's upper triangle read).
// Returns false when A is not positive definite.
bool gptq_cholesky_upper(double* U, const double* A, long n);

// V (n, n) = U⁻¹ of an upper triangular U with a non-zero diagonal (V upper triangular).
void gptq_upper_inverse(double* V, const double* U, long n);

// GPTQ's factor of H (n, n) (full symmetric, not changed): dead[i] = (H_ii == 0); U (n, n) = the
// upper Cholesky factor of (H + damp)⁻¹, where the dead diagonal is set to 1 and damp·mean(diag H)
// is added to the diagonal (computed as gptq.ts does: the inverse of the Cholesky factor of H + damp
// with the index order reversed). Returns false when H + damp is not positive definite.
bool gptq_factor(double* U, uint8_t* dead, const double* H, long n, double damp);

// GPTQ of rows r0 … r1−1 of W (out, n) on the factor of gptq_factor, group columns per grid
// (n % group == 0). Fills rows r0 … r1−1 of codes (out, n), scales / scale_bits / zeros
// (out, n/group) (the int4.ts grid: fp16 scale rounded up, zero in 1..15) and Q ((r1−r0), n) = the
// quantised weights.
void gptq_int4(uint8_t* codes, float* scales, uint16_t* scale_bits, uint8_t* zeros, double* Q,
               const float* W, long r0, long r1, const double* U, const uint8_t* dead, long n, long group);

// The same column loop on llama.cpp's grids, as gptq.ts q4kQuantizer (Q4_K: super-blocks of 256,
// their sub-block scales and mins fitted to the current weights when the super-block starts, as
// q4k.ts quantizeQ4KBlock) and q4_0Quantizer (Q4_0: blocks of 32) fill them: dst holds the GGUF
// bytes of every row (r1 · n/256 · 144, or r1 · n/32 · 18, bytes); rows r0 … r1−1 are written.
// n must be a multiple of 256 (Q4_K) or 32 (Q4_0).
void gptq_q4k(uint8_t* dst, double* Q, const float* W, long r0, long r1, const double* U, const uint8_t* dead, long n);
void gptq_q40(uint8_t* dst, double* Q, const float* W, long r0, long r1, const double* U, const uint8_t* dead, long n);

// tr(E H Eᵀ) for E (rows, n), H (n, n) symmetric: the layer output error ‖E Xᵀ‖²·(2/n_tokens).
double gptq_output_error(const double* E, const double* H, long rows, long n);

// Round to nearest on the int4.ts grid (quantizeRtn) of W (out, n), group columns per grid
// (n % group == 0): codes (out, n), scales / scale_bits / zeros (out, n/group), and per row the
// export's error sums against the dequantised codes (int4.ts rowErrorSums): sums (out, 4) =
// Σ|e|, Σe², max|e|, Σw², each over the row's columns in order. Returns the row-major index of the
// first non-finite weight (then the outputs are unspecified), or -1.
long int4_rtn(uint8_t* codes, float* scales, uint16_t* scale_bits, uint8_t* zeros, double* sums, const float* W, long out, long n, long group);

// AutoGPTQ's packing of an INT4 grid (gptq-export.ts packGptq): qweight (n/8, out) with code k of
// a word in bits 4k..4k+3, qzeros (n/group, out/8) holding zero − 1, scales16 (n/group, out) the
// fp16 scale bits. out and n are multiples of 8.
void int4_pack_gptq(int32_t* qweight, int32_t* qzeros, uint16_t* scales16, const uint8_t* codes, const uint8_t* zeros, const uint16_t* scale_bits, long out, long n, long group);

// formats.ts f16Encode (through float32, then nearest-even half bits, overflow → inf) and f16Decode
int f16_encode(double x);
double f16_decode(int h);

// int4.ts rowErrorSums of one row of n weights w with errors e[c] = |w − recon|: sums[0..3] =
// Σ|e|, Σe², max|e|, Σw², column c in lane c mod 8, lanes summed ((0+1)+(2+3))+((4+5)+(6+7))
void row_error_sums(double* sums, const double* e, const float* w, long n);

// the index of the first NaN or ±Infinity in x[0:n], or -1 (AVX-512: 16 at a time)
long find_nonfinite(const float* x, long n);

}  // namespace v4
