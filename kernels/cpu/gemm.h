// General matrix multiply with the B operand read from a frozen weight in its shipped format.
#pragma once
#include "weights.h"

namespace v4 {

// C[M,N] = beta*C + alpha * A[M,K] · B[K,N]
// A(m,k) = a[m*sam + k*sak] (fp32; a transposed operand is just other strides)
// B(k,n) = W[n][k] when transB (W is [N,K], the usual `x Wᵀ`), else W[k][n] (W is [K,N])
// beta is 0 (overwrite) or 1 (accumulate: gradients use +=).
// In bf16 mode (set_bf16_mode, AVX512_BF16 CPUs) A and B are rounded to bf16 and multiplied
// with vdpbf16ps, accumulating in fp32: about 2^-8 relative error per product.
void gemm(long M, long N, long K, float alpha, const float* a, long sam, long sak,
          const WeightRef& W, bool transB, float beta, float* c, long ldc);

// The same on the calling thread only, for use inside a parallel task (pool runs do not nest).
void gemm_serial(long M, long N, long K, float alpha, const float* a, long sam, long sak,
                 const WeightRef& W, bool transB, float beta, float* c, long ldc);

// x[0:n] rounded to bf16 bits as bf16 mode rounds every GEMM operand (nearest even at bit 16):
// a BF16 weight made of them packs into the very pairs x itself would, without an fp32 panel.
void round_to_bf16(const float* x, long n, uint16_t* out);

// The clean reference: one dot product per output element, fp32, no packing.
void gemm_reference(long M, long N, long K, float alpha, const float* a, long sam, long sak,
                    const WeightRef& W, bool transB, float beta, float* c, long ldc);

}  // namespace v4
