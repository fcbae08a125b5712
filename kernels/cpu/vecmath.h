// Vectorised transcendental helpers shared by the kernels (AVX-512 bodies; callers dispatch).
#pragma once
#include <immintrin.h>
#include "common.h"

namespace v4 {

// e^v = 2^k · e^r with k = round(v·log2 e), r = v − k·ln 2 (two-part ln 2), e^r by a degree-6
// polynomial (Cephes expf coefficients): about 1 ulp over the range the softmaxes use.
V4_AVX512 inline __m512 exp_512(__m512 v) {
  v = _mm512_max_ps(v, _mm512_set1_ps(-103.f));
  __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), v);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, k);
}

// silu(a) = a·σ(a) = a / (1 + e^−a)
V4_AVX512 inline __m512 sigmoid_512(__m512 a) {
  return _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_add_ps(_mm512_set1_ps(1.f), exp_512(_mm512_sub_ps(_mm512_setzero_ps(), a))));
}

}  // namespace v4
