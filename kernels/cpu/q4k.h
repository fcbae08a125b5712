// llama.cpp's Q4_K (super-blocks of 256 weights: f16 d and dmin, eight 6-bit sub-block scales and
// mins, 4-bit codes; 144 bytes), rounded to nearest exactly as src/export/q4k.ts quantizeQ4_K does
// (its make_qkx2 sub-block fits in float32), with the export's error sums.
#pragma once
#include <cstdint>

namespace v4 {

// W (rows, n), n a multiple of 256: dst (rows · n/256 · 144 bytes) = the Q4_K blocks of each row in
// order; sums (rows, 4) = per row Σ|e|, Σe², max|e|, Σw² against q4k.ts dequantizeQ4_K's values
// (gptq.h row_error_sums). Returns the row-major index of the first non-finite weight (then the
// outputs are unspecified), or -1.
long q4k_rtn(uint8_t* dst, double* sums, const float* W, long rows, long n);

// One super-block x [256] (finite) into dst [144]: the bytes q4k.ts quantizeQ4KBlock writes, and
// its grid (q4k.ts q4kGrid): value of code q in sub-block j = step[j]·q − offset[j].
void q4k_block(const float* x, uint8_t* dst, float* step, float* offset);

// Q4_0's scale of one block xb [32] (gguf.ts quantizeQ4_0): d = the first weight of largest
// magnitude / −8, its f16 bits written to p[0..1]; id = 1/d (0 when d is 0) and dq = f16(d).
struct Q40Scale {
  float id;
  double dq;
};
Q40Scale q40_block_scale(const float* xb, uint8_t* p, bool wide);

// The same for llama.cpp's Q4_0 (gguf.ts quantizeQ4_0; blocks of 32: f16 d, 16 bytes of codes; 18
// bytes), n a multiple of 32, the sums against gguf.ts dequantizeQ4_0's values.
long q40_rtn(uint8_t* dst, double* sums, const float* W, long rows, long n);

// The same for ggml's Q8_0 (ggml-quants.ts quantizeQ8_0; blocks of 32: f16 d, 32 int8; 34 bytes).
long q80_rtn(uint8_t* dst, double* sums, const float* W, long rows, long n);

}  // namespace v4
