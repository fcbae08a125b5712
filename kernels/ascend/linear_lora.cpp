// Linear with LoRA (the attention projections; grouped for wo_a) on an Ascend AI core: the math
// of kernels/cpu/lora.cpp linear_lora_forward / linear_lora_backward (the reference).
//
// x is (T, G, inG), W is (G·outG, inG) in its shipped format, A is (r, inG), B is (G·outG, r);
// y is (T, G·outG):  y_g = x_g W_gᵀ + s·(x_g Aᵀ) B_gᵀ     (G = 1: a plain linear)
// The base work is cut into slabs of slabRows rows of W inside one group; block b takes the
// slabs i ≡ b (mod blockNum). The LoRA part of group g's gradient (dA, dB_g and dx_g's LoRA
// term) belongs to block g mod blockNum. dx and dA are added atomically (blocks share them).
// LoRA dropout is not taken by these kernels (the host refuses it).
#include "common.h"

namespace v4ascend {

struct LinearWs {
  uint64_t us, gs, slab;
  __aicore__ inline LinearWs(const LinearArgs& a, int64_t slabRows) {
    const int64_t rr = a.r > 0 ? a.r : 8;
    uint64_t p = a.workspace + uint64_t(GetBlockIdx()) * uint64_t(linear_workspace_floats(a.T, a.inG, rr, slabRows)) * 4;
    us = p, gs = p + uint64_t(a.T * rr) * 4, slab = p + uint64_t(a.T * rr) * 8;
  }
};

// The W rows [row0, row0 + nr) of group g's slab number i.
__aicore__ inline void slab_of(const LinearArgs& a, int64_t i, int64_t slabRows, int64_t& g, int64_t& o0, int64_t& nr) {
  const int64_t per = (a.outG + slabRows - 1) / slabRows;
  g = i / per, o0 = (i % per) * slabRows, nr = imin(slabRows, a.outG - o0);
}

__aicore__ inline void linear_forward_block(const LinearArgs& a, const TCubeTiling* cube, const VecTiling& vt) {
  Core c;
  c.Init(cube, vt);
  const LinearWs ws(a, vt.slabRows);
  const int64_t T = a.T, ldx = int64_t(a.G) * a.inG, ldy = int64_t(a.G) * a.outG, r = a.a ? a.r : 0;
  const int64_t items = a.G * ((a.outG + vt.slabRows - 1) / vt.slabRows);
  int64_t uGroup = -1;  // the group whose us = s·x_g Aᵀ is in the workspace
  for (int64_t i = GetBlockIdx(); i < items; i += GetBlockNum()) {
    int64_t g, o0, nr;
    slab_of(a, i, vt.slabRows, g, o0, nr);
    const uint64_t yg = a.y + uint64_t(g * a.outG + o0) * 4, xg = a.x + uint64_t(g * a.inG) * 4;
    if (!a.baseDone) {
      const WeightDesc Ws = a.w;
      c.Dequant(ws.slab, Ws, g * a.outG + o0, nr);
      c.MatMul(yg, ldy, xg, ldx, false, ws.slab, a.inG, true, T, nr, a.inG, false);  // y_g = x_g slabᵀ
    }
    if (!r) continue;
    if (uGroup != g) {
      c.MatMul(ws.us, r, xg, ldx, false, a.a, a.inG, true, T, r, a.inG, false);  // u = x_g Aᵀ
      c.Scale(ws.us, T * r, a.s);
      uGroup = g;
    }
    c.MatMul(yg, ldy, ws.us, r, false, a.b + uint64_t((g * a.outG + o0) * r) * 4, r, true, T, nr, r, true);  // y_g += us B_gᵀ
  }
}

// in the forward pass this was: y_g = x_g W_gᵀ + s·u B_gᵀ with u = x_g Aᵀ; so now we have
//   dx_g += dy_g W_g + (s·(dy_g B_g)) A,   dB_g += dy_gᵀ (s·u),   dA += (s·(dy_g B_g))ᵀ x_g
__aicore__ inline void linear_backward_block(const LinearArgs& a, const TCubeTiling* cube, const VecTiling& vt) {
  Core c;
  c.Init(cube, vt);
  const LinearWs ws(a, vt.slabRows);
  const int64_t T = a.T, ldx = int64_t(a.G) * a.inG, ldy = int64_t(a.G) * a.outG, r = a.a ? a.r : 0;
  const int64_t items = a.G * ((a.outG + vt.slabRows - 1) / vt.slabRows);
  if (a.dx && !a.baseDone)
    for (int64_t i = GetBlockIdx(); i < items; i += GetBlockNum()) {
      int64_t g, o0, nr;
      slab_of(a, i, vt.slabRows, g, o0, nr);
      const WeightDesc Ws = a.w;
      c.Dequant(ws.slab, Ws, g * a.outG + o0, nr);
      // dx_g += dy_g[:, o0:o0+nr] · slab
      c.MatMul(a.dx + uint64_t(g * a.inG) * 4, ldx, a.dy + uint64_t(g * a.outG + o0) * 4, ldy, false, ws.slab, a.inG, false,
               T, a.inG, nr, true);
    }
  if (!r) return;
  for (int64_t g = GetBlockIdx(); g < a.G; g += GetBlockNum()) {
    const uint64_t xg = a.x + uint64_t(g * a.inG) * 4, dyg = a.dy + uint64_t(g * a.outG) * 4;
    const uint64_t Bg = a.b + uint64_t(g * a.outG * r) * 4;
    c.MatMul(ws.gs, r, dyg, ldy, false, Bg, r, false, T, r, a.outG, false);  // dy_g B_g
    c.Scale(ws.gs, T * r, a.s);
    if (a.dx) c.MatMul(a.dx + uint64_t(g * a.inG) * 4, ldx, ws.gs, r, false, a.a, a.inG, false, T, a.inG, r, true);
    if (a.da) c.MatMul(a.da, a.inG, ws.gs, r, true, xg, ldx, false, r, a.inG, T, true);
    if (a.db) {
      c.MatMul(ws.us, r, xg, ldx, false, a.a, a.inG, true, T, r, a.inG, false);
      c.Scale(ws.us, T * r, a.s);
      c.MatMul(a.db + uint64_t(g * a.outG * r) * 4, r, dyg, ldy, true, ws.us, r, false, a.outG, r, T, true);
    }
  }
}

}  // namespace v4ascend

extern "C" __global__ __aicore__ void v4_linear_forward(GM_ADDR args, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_1);
  const v4ascend::LinearArgs a = *reinterpret_cast<__gm__ v4ascend::LinearArgs*>(args);
  const v4ascend::Tiling t = v4ascend::read_tiling(tiling);
  const AscendC::TCubeTiling cube = v4ascend::cube_tiling(t.cube);
  v4ascend::linear_forward_block(a, &cube, t.vec);
}
extern "C" __global__ __aicore__ void v4_linear_backward(GM_ADDR args, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_1);
  const v4ascend::LinearArgs a = *reinterpret_cast<__gm__ v4ascend::LinearArgs*>(args);
  const v4ascend::Tiling t = v4ascend::read_tiling(tiling);
  const AscendC::TCubeTiling cube = v4ascend::cube_tiling(t.cube);
  v4ascend::linear_backward_block(a, &cube, t.vec);
}
