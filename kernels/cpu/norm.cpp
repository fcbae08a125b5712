// RMSNorm, RoPE and embedding. Rows are independent, so every loop splits over rows.
#include "norm.h"
#include "common.h"
#include <cmath>
#include <cstring>
#include <vector>

namespace v4 {

static void for_rows(long n, long grain, const std::function<void(long, long)>& f) {
  parallel_run(int(cdiv(n, grain)), [&](int t) { f(t * grain, std::min(n, (t + 1) * grain)); });
}

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, long T, long C, float eps) {
  for_rows(T, 64, [&](long t0, long t1) {
    for (long t = t0; t < t1; t++) {
      const float* x = inp + t * C;
      float* o = out + t * C;
      float r = 1.f / std::sqrt(dot(x, x, C) / float(C) + eps);
      if (rstd) rstd[t] = r;
      for (long c = 0; c < C; c++) o[c] = x[c] * r * (weight ? weight[c] : 1.f);
    }
  });
}

// in the forward pass this was: n = inp·rstd, out = n·w, rstd = (mean(inp²)+eps)^-½; so
//   dn = dout·w,  dinp += rstd·(dn − n·mean(dn·n)),  dweight += Σ_t dout·n
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, long T, long C) {
  for_rows(T, 64, [&](long t0, long t1) {
    std::vector<float> dn(C);
    for (long t = t0; t < t1; t++) {
      const float* x = inp + t * C;
      const float* g = dout + t * C;
      float r = rstd[t];
      for (long c = 0; c < C; c++) dn[c] = g[c] * (weight ? weight[c] : 1.f);
      float m = dot(dn.data(), x, C) * r / float(C);  // mean(dn·n)
      float* di = dinp + t * C;
      for (long c = 0; c < C; c++) di[c] += r * (dn[c] - x[c] * r * m);
    }
  });
  if (dweight)
    for (long t = 0; t < T; t++)
      for (long c = 0; c < C; c++) dweight[c] += dout[t * C + c] * inp[t * C + c] * rstd[t];
}

void rope_forward(float* x, const int* pos, const float* cos, const float* sin, long T, long H, long D, long rd,
                  bool inverse, const float* src) {
  const float sg = inverse ? -1.f : 1.f;
  long half = rd / 2;
  if (src == x) src = nullptr;
  for_rows(T, 16, [&](long t0, long t1) {
    for (long t = t0; t < t1; t++)
      for (long h = 0; h < H; h++) {
        float* row = x + (t * H + h) * D;
        const float* in = src ? src + (t * H + h) * D : row;
        if (src) std::memcpy(row, in, (D - rd) * 4);
        float* v = row + (D - rd);
        const float* u = in + (D - rd);
        for (long k = 0; k < half; k++) {
          float c = cos[pos[t] * half + k], s = sg * sin[pos[t] * half + k];
          float x0 = u[2 * k], x1 = u[2 * k + 1];
          v[2 * k] = x0 * c - x1 * s;
          v[2 * k + 1] = x0 * s + x1 * c;
        }
      }
  });
}

void embedding_forward(float* out, const int* ids, const WeightRef& E, long T) {
  for_rows(T, 16, [&](long t0, long t1) {
    for (long t = t0; t < t1; t++) decode_row(E, ids[t], 0, E.cols, out + t * E.cols);
  });
}

}  // namespace v4
