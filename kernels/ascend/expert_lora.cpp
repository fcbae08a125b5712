// The grouped routed-expert SwiGLU with LoRA on an Ascend AI core: the math and the fusion of
// kernels/cpu/lora.cpp routed_experts_forward / routed_experts_backward (that file is the reference).
//
// x is (T, d); the P (token, expert) pairs are sorted by expert: pairs off[e] .. off[e+1]-1
// belong to expert e, idx[p] is the token, w[p] its routing weight. Block b takes the experts
// e ≡ b (mod blockNum) whole (empty experts cost nothing), so the per-expert LoRA gradients have
// one writer; rows of out / dx that several experts share are added atomically.
// Per expert (n pairs), in this core's workspace (nothing P × I-sized across experts):
//   xe (n, d) gathered rows; h1, h3, act (n, I); u1s, u3s, u2s (n, r) = s·(LoRA input · Aᵀ)
//   h1 = xe W1ᵀ + u1s B1ᵀ,  h3 = xe W3ᵀ + u3s B3ᵀ
//   act = silu(min(h1, L)) · clamp(h3, −L, L)
//   y = act W2ᵀ + u2s B2ᵀ,  out[idx[p]] += w[p] · y[p]
// LoRA dropout is not taken by these kernels (the host refuses it).
#include "common.h"

namespace v4ascend {

// The workspace of one block, carved from args.workspace.
struct ExpertWs {
  uint64_t xe, ge, dxe, h1, h3, act, G, u1, u3, u2, g2, g1, slab;
  __aicore__ inline ExpertWs(const ExpertArgs& a, int64_t rmax, int64_t slabRows) {
    const int64_t nd = int64_t(a.nmax) * a.d, ni = int64_t(a.nmax) * a.I, nr = int64_t(a.nmax) * rmax;
    uint64_t p = a.workspace + uint64_t(GetBlockIdx()) * uint64_t(expert_workspace_floats(a.nmax, a.d, a.I, rmax, slabRows)) * 4;
    auto take = [&](int64_t n) { uint64_t q = p; p += uint64_t(n) * 4; return q; };
    xe = take(nd), ge = take(nd), dxe = take(nd), h1 = take(ni), h3 = take(ni), act = take(ni), G = take(ni);
    u1 = take(nr), u3 = take(nr), u2 = take(nr), g2 = take(nr), g1 = take(nr), slab = take(slabRows * (a.d > a.I ? a.d : a.I));
  }
};

__aicore__ inline int64_t rank_max(__gm__ const ExpertDesc* ex, int32_t E) {
  int64_t r = 8;
  for (int32_t e = 0; e < E; e++) {
    if (ex[e].a1 && ex[e].r1 > r) r = ex[e].r1;
    if (ex[e].a2 && ex[e].r2 > r) r = ex[e].r2;
    if (ex[e].a3 && ex[e].r3 > r) r = ex[e].r3;
  }
  return r;
}

// h (n, out) = v Wᵀ + us Bᵀ with us (n, r) = s·(v Aᵀ); v (n, in), A (r, in), B (out, r)
__aicore__ inline void project(Core& c, uint64_t h, uint64_t us, uint64_t v, int64_t n, const WeightDesc& W, uint64_t A,
                               uint64_t B, int64_t r, float s, uint64_t slab, int64_t slabRows) {
  const int64_t in = W.cols, out = W.rows;
  c.MatMulW(h, out, v, in, W, true, slab, slabRows, n, false);
  if (!A || r == 0) return;
  c.MatMul(us, r, v, in, false, A, in, true, n, r, in, false);  // u = v Aᵀ
  c.Scale(us, n * r, s);
  c.MatMul(h, out, us, r, false, B, r, true, n, out, r, true);  // h += us Bᵀ
}

// act = silu(min(h1, L)) · clamp(h3, −L, L) over n·I contiguous floats
__aicore__ inline void swiglu(Core& c, uint64_t act, uint64_t h1, uint64_t h3, int64_t n, float L) {
  LocalTensor<float> t = c.tmp.Get<float>();
  c.MapRows<2, 1>(1, n, [&](int64_t, int k) { return gmf(k ? h3 : h1); }, [&](int64_t, int) { return gmf(act); }, false,
                  [&](LocalTensor<float>& o, LocalTensor<float>& in, uint32_t cols, uint32_t len, int64_t) {
                    LocalTensor<float> a = t, e = t[cols];
                    Mins(a, in, L, len);                // a = min(h1, L)
                    Mins(o, in[cols], L, len);
                    Maxs(o, o, -L, len);                // o = clamp(h3)
                    Muls(e, a, -1.f, len);
                    Exp(e, e, len);
                    Adds(e, e, 1.f, len);               // e = 1 + exp(−a)
                    Div(e, a, e, len);                  // silu(a) = a / (1 + exp(−a))
                    Mul(o, e, o, len);
                  });
}

// in the forward pass this was act = silu(am)·bc with am = min(h1, L), bc = clamp(h3, −L, L); so
//   dh1 = dact · bc · σ(am)(1 + am(1 − σ(am))) where h1 <= L (else 0)
//   dh3 = dact · silu(am) where −L <= h3 <= L (else 0)
// written over h1, h3 (n·I contiguous floats); G holds dact.
__aicore__ inline void swiglu_backward(Core& c, uint64_t h1, uint64_t h3, uint64_t G, int64_t n, float L) {
  LocalTensor<float> t = c.tmp.Get<float>();
  LocalTensor<uint8_t> m = c.mask.Get<uint8_t>();
  c.MapRows<3, 2>(1, n, [&](int64_t, int k) { return gmf(k == 0 ? h1 : k == 1 ? h3 : G); },
                  [&](int64_t, int k) { return gmf(k ? h3 : h1); }, false,
                  [&](LocalTensor<float>& o, LocalTensor<float>& in, uint32_t cols, uint32_t len, int64_t) {
                    LocalTensor<float> a = in, b = in[cols], da = in[2 * cols];
                    LocalTensor<float> am = t, bc = t[cols], sg = t[2 * cols], q = t[3 * cols];
                    Mins(am, a, L, len);
                    Mins(bc, b, L, len);
                    Maxs(bc, bc, -L, len);
                    Muls(sg, am, -1.f, len);
                    Exp(sg, sg, len);
                    Adds(sg, sg, 1.f, len);
                    Duplicate(q, 1.f, len);
                    Div(sg, q, sg, len);                // σ(am)
                    // dh3 = da · am · σ, masked by −L <= h3 <= L
                    Mul(o[cols], da, am, len);
                    Mul(o[cols], o[cols], sg, len);
                    CompareScalar(m, b, L, CMPMODE::LE, len);
                    Select(o[cols], m, o[cols], 0.f, SELMODE::VSEL_TENSOR_SCALAR_MODE, len);
                    CompareScalar(m, b, -L, CMPMODE::GE, len);
                    Select(o[cols], m, o[cols], 0.f, SELMODE::VSEL_TENSOR_SCALAR_MODE, len);
                    // dh1 = da · bc · σ (1 + am (1 − σ)), masked by h1 <= L
                    Muls(q, sg, -1.f, len);
                    Adds(q, q, 1.f, len);
                    Mul(q, q, am, len);
                    Adds(q, q, 1.f, len);
                    Mul(q, q, sg, len);
                    Mul(q, q, bc, len);
                    Mul(o, q, da, len);
                    CompareScalar(m, a, L, CMPMODE::LE, len);
                    Select(o, m, o, 0.f, SELMODE::VSEL_TENSOR_SCALAR_MODE, len);
                  });
}

__aicore__ inline void routed_experts_forward_block(const ExpertArgs& a, const TCubeTiling* cube, const VecTiling& vt) {
  Core c;
  c.Init(cube, vt);
  __gm__ const ExpertDesc* exs = reinterpret_cast<__gm__ const ExpertDesc*>(a.experts);
  __gm__ const int32_t* off = reinterpret_cast<__gm__ const int32_t*>(a.off);
  __gm__ const int32_t* idx = reinterpret_cast<__gm__ const int32_t*>(a.idx);
  __gm__ const float* w = reinterpret_cast<__gm__ const float*>(a.w);
  const ExpertWs ws(a, rank_max(exs, a.E), vt.slabRows);
  const int64_t d = a.d, I = a.I;
  for (int64_t e = GetBlockIdx(); e < a.E; e += GetBlockNum()) {
    const int64_t p0 = off[e], n = off[e + 1] - off[e];
    if (n == 0) continue;
    const ExpertDesc ex = exs[e];
    c.GatherRows(ws.xe, a.x, idx + p0, n, d);
    project(c, ws.h1, ws.u1, ws.xe, n, ex.w1, ex.a1, ex.b1, ex.r1, ex.s1, ws.slab, vt.slabRows);
    project(c, ws.h3, ws.u3, ws.xe, n, ex.w3, ex.a3, ex.b3, ex.r3, ex.s3, ws.slab, vt.slabRows);
    swiglu(c, ws.act, ws.h1, ws.h3, n * I, a.limit);
    project(c, ws.ge, ws.u2, ws.act, n, ex.w2, ex.a2, ex.b2, ex.r2, ex.s2, ws.slab, vt.slabRows);  // ge holds y
    c.ScatterAddRows(a.out, ws.ge, idx + p0, w + p0, n, d);
  }
}

// in the forward pass this was (per pair p, x = x[idx[p]], g = dout[idx[p]]):
//   out += w·y, y = act W2ᵀ + s2 (act A2ᵀ) B2ᵀ, act = silu(min(h1,L))·clamp(h3,−L,L)
// so with G = g W2 + s2 (g B2) A2 (the gradient of g·y with respect to act):
//   dw += G·act,  dact = w G,  dB2 += s2 (w g)ᵀ (act A2ᵀ),  dA2 += s2 (w g B2)ᵀ act
//   dh1, dh3 from dact (swiglu_backward)
//   dx += dh1 W1 + s1 (dh1 B1) A1 + (same for 3),  dA1 += s1 (dh1 B1)ᵀ x,  dB1 += s1 dh1ᵀ (x A1ᵀ)
__aicore__ inline void routed_experts_backward_block(const ExpertArgs& a, const TCubeTiling* cube, const VecTiling& vt) {
  Core c;
  c.Init(cube, vt);
  __gm__ const ExpertDesc* exs = reinterpret_cast<__gm__ const ExpertDesc*>(a.experts);
  __gm__ const int32_t* off = reinterpret_cast<__gm__ const int32_t*>(a.off);
  __gm__ const int32_t* idx = reinterpret_cast<__gm__ const int32_t*>(a.idx);
  __gm__ const float* w = reinterpret_cast<__gm__ const float*>(a.w);
  const ExpertWs ws(a, rank_max(exs, a.E), vt.slabRows);
  const int64_t d = a.d, I = a.I;
  for (int64_t e = GetBlockIdx(); e < a.E; e += GetBlockNum()) {
    const int64_t p0 = off[e], n = off[e + 1] - off[e];
    if (n == 0) continue;
    const ExpertDesc ex = exs[e];
    const int64_t r1 = ex.a1 ? ex.r1 : 0, r2 = ex.a2 ? ex.r2 : 0, r3 = ex.a3 ? ex.r3 : 0;
    c.GatherRows(ws.xe, a.x, idx + p0, n, d);
    c.GatherRows(ws.ge, a.dout, idx + p0, n, d);
    // recompute the forward up to act; u1s, u3s stay for dB1, dB3
    project(c, ws.h1, ws.u1, ws.xe, n, ex.w1, ex.a1, ex.b1, r1, ex.s1, ws.slab, vt.slabRows);
    project(c, ws.h3, ws.u3, ws.xe, n, ex.w3, ex.a3, ex.b3, r3, ex.s3, ws.slab, vt.slabRows);
    swiglu(c, ws.act, ws.h1, ws.h3, n * I, a.limit);
    // G = g W2 + (s2 g B2) A2
    c.MatMulW(ws.G, I, ws.ge, d, ex.w2, false, ws.slab, vt.slabRows, n, false);
    if (r2) {
      c.MatMul(ws.g2, r2, ws.ge, d, false, ex.b2, r2, false, n, r2, d, false);  // g B2
      c.Scale(ws.g2, n * r2, ex.s2);
      c.MatMul(ws.G, I, ws.g2, r2, false, ex.a2, I, false, n, I, r2, true);
    }
    if (a.dw) c.RowDotAdd(a.dw + uint64_t(p0) * 4, ws.G, ws.act, n, I);
    c.ScaleRows(ws.G, n, I, w + p0);   // G is now dact
    c.ScaleRows(ws.ge, n, d, w + p0);  // ge is now dy = w g
    if (r2) {
      c.ScaleRows(ws.g2, n, r2, w + p0);  // g2 is now s2 (dy B2)
      if (ex.db2) {
        c.MatMul(ws.u2, r2, ws.act, I, false, ex.a2, I, true, n, r2, I, false);  // act A2ᵀ
        c.Scale(ws.u2, n * r2, ex.s2);
        c.MatMul(ex.db2, r2, ws.ge, d, true, ws.u2, r2, false, d, r2, n, true);  // dB2 += dyᵀ u2s
      }
      if (ex.da2) c.MatMul(ex.da2, I, ws.g2, r2, true, ws.act, I, false, r2, I, n, true);  // dA2 += g2sᵀ act
    }
    swiglu_backward(c, ws.h1, ws.h3, ws.G, n * I, a.limit);  // h1, h3 now dh1, dh3
    c.MatMulW(ws.dxe, d, ws.h1, I, ex.w1, false, ws.slab, vt.slabRows, n, false);
    c.MatMulW(ws.dxe, d, ws.h3, I, ex.w3, false, ws.slab, vt.slabRows, n, true);
    struct Side { uint64_t A, B, dA, dB, h, u; int64_t r; float s; };
    const Side sides[2] = {{ex.a1, ex.b1, ex.da1, ex.db1, ws.h1, ws.u1, r1, ex.s1}, {ex.a3, ex.b3, ex.da3, ex.db3, ws.h3, ws.u3, r3, ex.s3}};
    for (int k = 0; k < 2; k++) {
      const Side& sd = sides[k];
      if (!sd.r) continue;
      c.MatMul(ws.g1, sd.r, sd.h, I, false, sd.B, sd.r, false, n, sd.r, I, false);  // dh B
      c.Scale(ws.g1, n * sd.r, sd.s);
      c.MatMul(ws.dxe, d, ws.g1, sd.r, false, sd.A, d, false, n, d, sd.r, true);  // dx += s (dh B) A
      if (sd.dA) c.MatMul(sd.dA, d, ws.g1, sd.r, true, ws.xe, d, false, sd.r, d, n, true);  // dA += s (dh B)ᵀ x
      if (sd.dB) c.MatMul(sd.dB, sd.r, sd.h, I, true, sd.u, sd.r, false, I, sd.r, n, true);  // dB += dhᵀ (s x Aᵀ)
    }
    if (a.dx) c.ScatterAddRows(a.dx, ws.dxe, idx + p0, nullptr, n, d);
  }
}

}  // namespace v4ascend

// Kernel entries: args (ExpertArgs) and tiling (Tiling), both in GM.
extern "C" __global__ __aicore__ void v4_routed_experts_forward(GM_ADDR args, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_1);
  const v4ascend::ExpertArgs a = *reinterpret_cast<__gm__ v4ascend::ExpertArgs*>(args);
  const v4ascend::Tiling t = v4ascend::read_tiling(tiling);
  const AscendC::TCubeTiling cube = v4ascend::cube_tiling(t.cube);
  v4ascend::routed_experts_forward_block(a, &cube, t.vec);
}
extern "C" __global__ __aicore__ void v4_routed_experts_backward(GM_ADDR args, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_1);
  const v4ascend::ExpertArgs a = *reinterpret_cast<__gm__ v4ascend::ExpertArgs*>(args);
  const v4ascend::Tiling t = v4ascend::read_tiling(tiling);
  const AscendC::TCubeTiling cube = v4ascend::cube_tiling(t.cube);
  v4ascend::routed_experts_backward_block(a, &cube, t.vec);
}
