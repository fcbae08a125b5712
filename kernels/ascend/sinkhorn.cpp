// The backward of mHC's Sinkhorn projection on an Ascend AI core: the math of kernels/cpu/mhc.cpp
// sinkhorn_forward / sinkhorn_backward (the reference), for T independent n × n matrices.
//
// L, dC are (T, n, n); dL (T, n, n) accumulates. Forward (replayed here):
//   C = softmax over each row of L, + eps; then 2·iters − 1 normalisations, columns first:
//   each line (column, then row, …) divided by (its sum + eps).
// A matrix has n·n = 16 entries in V4 (hc = 4), far below a vector's width, so a chunk of Tc
// tokens is turned around on the way in (Gather with a pattern: entry k of token t goes to
// k·Tc + t) and every step runs on Tc-wide vectors across tokens. The input of every
// normalisation is kept in UB (trace: (2·iters − 1)·n·n·Tc floats) for the backward.
// Block b takes the chunks i ≡ b (mod blockNum).
#include "common.h"

namespace v4ascend {

class SinkhornCore {
 public:
  __aicore__ inline void Init(int32_t Tc, int32_t n, int32_t iters) {
    Tc_ = Tc, n_ = n, nn_ = n * n, stages_ = 2 * iters - 1;
    const uint32_t chunk = uint32_t(Tc_ * nn_ * sizeof(float));
    V4_INIT_BUFFER(pipe_, inQ, kBufferNum, 2 * chunk);  // L and dC of one chunk, token-major
    V4_INIT_BUFFER(pipe_, outQ, kBufferNum, chunk);     // dL of one chunk, token-major
    V4_INIT_BUFFER(pipe_, soa, 1, 4 * chunk);           // L, C, g, p entry-major (k·Tc + t)
    V4_INIT_BUFFER(pipe_, trace, 1, uint32_t(stages_) * chunk);
    V4_INIT_BUFFER(pipe_, lines, 1, uint32_t(4 * Tc_ * sizeof(float)));
    V4_INIT_BUFFER(pipe_, pat, 1, 2 * chunk);
    LocalTensor<uint32_t> p = pat.Get<uint32_t>();
    for (int32_t t = 0; t < Tc_; t++)
      for (int32_t k = 0; k < nn_; k++) {
        p.SetValue(uint32_t(k * Tc_ + t), uint32_t((t * nn_ + k) * 4));          // to entry-major
        p.SetValue(uint32_t(Tc_ * nn_ + t * nn_ + k), uint32_t((k * Tc_ + t) * 4));  // back
      }
    PipeBarrier<PIPE_ALL>();  // the scalar-written patterns, before the vector unit gathers with them
  }

  // tokens [t0, t0 + cnt) of L, dC → dL +=
  __aicore__ inline void Chunk(const SinkhornArgs& a, int64_t t0, int32_t cnt) {
    const uint32_t len = uint32_t(Tc_ * nn_);
    DataCopyExtParams cp;
    cp.blockCount = 1, cp.blockLen = uint32_t(cnt * nn_ * sizeof(float));
    DataCopyPadExtParams<float> pad;
    LocalTensor<float> in = inQ.AllocTensor<float>();  // CopyIn
    DataCopyPad(in, gmf(a.L + uint64_t(t0 * nn_) * 4), cp, pad);
    DataCopyPad(in[len], gmf(a.dC + uint64_t(t0 * nn_) * 4), cp, pad);
    inQ.EnQue(in);
    in = inQ.DeQue<float>();  // Compute
    LocalTensor<float> s = soa.Get<float>(), out = outQ.AllocTensor<float>();
    LocalTensor<uint32_t> p = pat.Get<uint32_t>();
    LocalTensor<float> L = s, C = s[len], g = s[2 * len], P = s[3 * len];
    Gather(L, in, p, 0, len);
    Gather(g, in[len], p, 0, len);
    inQ.FreeTensor(in);
    Backward(L, C, g, P, a.eps);  // P now holds dL, entry-major
    Gather(out, P, p[len], 0, len);
    outQ.EnQue(out);
    out = outQ.DeQue<float>();  // CopyOut, accumulating
    SetAtomicAdd<float>();
    DataCopyPad(gmf(a.dL + uint64_t(t0 * nn_) * 4), out, cp);
    SetAtomicNone();
    outQ.FreeTensor(out);
  }

  TQue<TPosition::VECIN, kBufferNum> inQ;
  TQue<TPosition::VECOUT, kBufferNum> outQ;
  TBuf<TPosition::VECCALC> soa, trace, lines, pat;

 private:
  // entry k (of n·n) of an entry-major buffer: Tc tokens
  __aicore__ inline LocalTensor<float> E(const LocalTensor<float>& b, int32_t k) const { return b[uint32_t(k * Tc_)]; }
  __aicore__ inline int32_t ix(bool cols, int32_t a, int32_t b) const { return cols ? b * n_ + a : a * n_ + b; }

  // p = softmax over each row of L (m, z: line scratch)
  __aicore__ inline void Softmax(const LocalTensor<float>& P, const LocalTensor<float>& L) {
    const uint32_t tc = uint32_t(Tc_);
    LocalTensor<float> m = lines.Get<float>(), z = m[tc];
    for (int32_t i = 0; i < n_; i++) {
      DataCopy(m, E(L, i * n_), tc);
      for (int32_t j = 1; j < n_; j++) Max(m, m, E(L, i * n_ + j), tc);
      Duplicate(z, 0.f, tc);
      for (int32_t j = 0; j < n_; j++) {
        Sub(E(P, i * n_ + j), E(L, i * n_ + j), m, tc);
        Exp(E(P, i * n_ + j), E(P, i * n_ + j), tc);
        Add(z, z, E(P, i * n_ + j), tc);
      }
      for (int32_t j = 0; j < n_; j++) Div(E(P, i * n_ + j), E(P, i * n_ + j), z, tc);
    }
  }

  // in the forward pass each normalisation was c_ab = a_ab / (S + eps), S the line sum; so
  //   da_ab = (dc_ab − Σ_line dc·c) / (S + eps); the softmax rows give dL = p (dS − Σ_row dS·p)
  __aicore__ inline void Backward(const LocalTensor<float>& L, const LocalTensor<float>& C, const LocalTensor<float>& g,
                                  const LocalTensor<float>& P, float eps) {
    const uint32_t tc = uint32_t(Tc_), len = uint32_t(Tc_ * nn_);
    LocalTensor<float> S = lines.Get<float>()[2 * tc], q = lines.Get<float>()[3 * tc], tr = trace.Get<float>();
    // forward replay, keeping each normalisation's input
    Softmax(C, L);
    Adds(C, C, eps, len);
    for (int32_t st = 0; st < stages_; st++) {
      const bool cols = st % 2 == 0;
      DataCopy(tr[uint32_t(st) * len], C, len);
      for (int32_t a = 0; a < n_; a++) {
        Duplicate(S, 0.f, tc);
        for (int32_t b = 0; b < n_; b++) Add(S, S, E(C, ix(cols, a, b)), tc);
        Adds(S, S, eps, tc);
        for (int32_t b = 0; b < n_; b++) Div(E(C, ix(cols, a, b)), E(C, ix(cols, a, b)), S, tc);
      }
    }
    for (int32_t st = stages_ - 1; st >= 0; st--) {
      const bool cols = st % 2 == 0;
      LocalTensor<float> A = tr[uint32_t(st) * len];
      LocalTensor<float> gc = lines.Get<float>()[0];
      for (int32_t a = 0; a < n_; a++) {
        Duplicate(S, 0.f, tc);
        for (int32_t b = 0; b < n_; b++) Add(S, S, E(A, ix(cols, a, b)), tc);
        Adds(S, S, eps, tc);  // S + eps
        Duplicate(gc, 0.f, tc);
        for (int32_t b = 0; b < n_; b++) {
          Mul(q, E(g, ix(cols, a, b)), E(A, ix(cols, a, b)), tc);
          Add(gc, gc, q, tc);
        }
        Div(gc, gc, S, tc);  // Σ_line dc·c
        for (int32_t b = 0; b < n_; b++) {
          Sub(E(g, ix(cols, a, b)), E(g, ix(cols, a, b)), gc, tc);
          Div(E(g, ix(cols, a, b)), E(g, ix(cols, a, b)), S, tc);
        }
      }
    }
    Softmax(C, L);  // C = p
    LocalTensor<float> gp = lines.Get<float>()[0];
    for (int32_t i = 0; i < n_; i++) {
      Duplicate(gp, 0.f, tc);
      for (int32_t j = 0; j < n_; j++) {
        Mul(q, E(g, i * n_ + j), E(C, i * n_ + j), tc);
        Add(gp, gp, q, tc);
      }
      for (int32_t j = 0; j < n_; j++) {
        Sub(q, E(g, i * n_ + j), gp, tc);
        Mul(E(P, i * n_ + j), E(C, i * n_ + j), q, tc);
      }
    }
  }

  TPipe pipe_;
  int32_t Tc_ = 8, n_ = 1, nn_ = 1, stages_ = 1;
};

__aicore__ inline void sinkhorn_backward_block(const SinkhornArgs& a, const VecTiling& vt) {
  SinkhornCore c;
  c.Init(vt.sinkTokens, a.n, a.iters);
  const int64_t chunks = (a.T + vt.sinkTokens - 1) / vt.sinkTokens;
  for (int64_t i = GetBlockIdx(); i < chunks; i += GetBlockNum())
    c.Chunk(a, i * vt.sinkTokens, int32_t(imin(vt.sinkTokens, a.T - i * vt.sinkTokens)));
}

}  // namespace v4ascend

extern "C" __global__ __aicore__ void v4_sinkhorn_backward(GM_ADDR args, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  const v4ascend::SinkhornArgs a = *reinterpret_cast<__gm__ v4ascend::SinkhornArgs*>(args);
  v4ascend::sinkhorn_backward_block(a, v4ascend::read_tiling(tiling).vec);
}
