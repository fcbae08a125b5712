// What every Ascend kernel of v4tune shares: the AscendC include (CANN's, or the CPU shim under
// V4_ASCEND_SHIM), one core's vector pipeline (double-buffered CopyIn / Compute / CopyOut over
// rows of GM float arrays), the base-weight dequantisation into a per-core GM slab, and the Cube
// matmul over GM operands.
//
// The Cube unit reads its operands from GM through the Matmul API (A1/B1 in L1, A2/B2 in L0A/L0B,
// CO1 in L0C as the TCubeTiling sizes them). A shipped FP8/FP4 weight reaches it as float32 rows
// of one slab (slabRows × cols) that the vector unit dequantised into this core's workspace just
// before: the whole base is never expanded, one slab per core at a time.
#pragma once
#ifdef V4_ASCEND_SHIM
#include "shim/ascendc_shim.h"
#define V4_INIT_BUFFER(pipe, q, num, len) (pipe).InitBufferNamed(#q, (q), (num), (len))
#else
#include "kernel_operator.h"
#include "lib/matmul_intf.h"
#define V4_INIT_BUFFER(pipe, q, num, len) (pipe).InitBuffer((q), (num), (len))
#endif
#include "kernel_args.h"

namespace v4ascend {
using namespace AscendC;

using F32Type = MatmulType<TPosition::GM, CubeFormat::ND, float>;
using Mm = Matmul<F32Type, F32Type, F32Type>;

constexpr int32_t kBufferNum = 2;  // double buffering: CopyIn of chunk i+1 overlaps Compute of chunk i

__aicore__ inline GlobalTensor<float> gmf(uint64_t addr) {
  GlobalTensor<float> g;
  g.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(addr));
  return g;
}
__aicore__ inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// CANN's TCubeTiling from the host's CubeTiling (single-core tiling: each block runs its own
// matmuls; the shapes are set per call with SetOrgShape / SetSingleShape).
__aicore__ inline TCubeTiling cube_tiling(const CubeTiling& c) {
  TCubeTiling t;
  t.usedCoreNum = 1;
  t.baseM = c.baseM, t.baseN = c.baseN, t.baseK = c.baseK;
  t.depthA1 = c.depthA1, t.depthB1 = c.depthB1;
  t.stepM = 1, t.stepN = 1, t.stepKa = 1, t.stepKb = 1;
  t.dbL0A = c.dbL0A, t.dbL0B = c.dbL0B, t.dbL0C = c.dbL0C;
  return t;
}
__aicore__ inline Tiling read_tiling(GM_ADDR tiling) { return *reinterpret_cast<__gm__ Tiling*>(tiling); }

// E8M0 byte b → 2^(b−127) (255: NaN), by building the float's bits on the scalar unit.
__aicore__ inline float e8m0(uint8_t b) {
  union { uint32_t u; float f; } v;
  v.u = b == 255 ? 0x7fc00000u : b == 0 ? 0x00400000u : uint32_t(b) << 23;
  return v.f;
}
// e4m3: s eeee mmm, bias 7, 0x7f / 0xff NaN (kernels/cpu/weights.cpp fp8_e4m3)
__aicore__ inline float e4m3(uint8_t b) {
  int32_t s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return e8m0(255);
  float v = e == 0 ? float(m) * e8m0(127 - 9) : (1.0f + float(m) / 8.0f) * e8m0(uint8_t(e - 7 + 127));
  return s ? -v : v;
}
__aicore__ inline float e2m1(uint8_t nib) {
  const float mag[8] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  return (nib & 8) ? -mag[nib & 7] : mag[nib & 7];
}

// One AI core: its pipe, the vector queues and scratch, and the Cube matmul object.
//   inQ   VECIN  kBufferNum × (3 · cols) floats: up to three input rows of one chunk
//   outQ  VECOUT kBufferNum × (2 · cols) floats: up to two output rows of one chunk
//   tmp   VECCALC 4 · cols floats of scratch; mask: cols bits; lut: 512 floats (FP8 / FP4 values)
//   pat, par: the FP4 nibble-expansion patterns (cols uint32 each)
class Core {
 public:
  __aicore__ inline void Init(const TCubeTiling* cube, const VecTiling& vt) {
    cols_ = vt.cols;
    V4_INIT_BUFFER(pipe_, inQ, kBufferNum, uint32_t(3 * cols_ * sizeof(float)));
    V4_INIT_BUFFER(pipe_, outQ, kBufferNum, uint32_t(2 * cols_ * sizeof(float)));
    V4_INIT_BUFFER(pipe_, tmp, 1, uint32_t(4 * cols_ * sizeof(float)));
    V4_INIT_BUFFER(pipe_, mask, 1, uint32_t(cols_ / 8 > 32 ? cols_ / 8 : 32));
    V4_INIT_BUFFER(pipe_, lut, 1, uint32_t(512 * sizeof(float)));
    V4_INIT_BUFFER(pipe_, pat, 1, uint32_t(2 * cols_ * sizeof(uint32_t)));
    REGIST_MATMUL_OBJ(&pipe_, GetSysWorkSpacePtr(), mm, cube);
    lutFmt_ = -1;
  }

  // ---- vector stage over rows ----
  // For each row p < nrows and each chunk of its C floats: CopyIn NIN input rows (src(p, k)),
  // Compute f(out, in, cols, len, p) into NOUT output rows, CopyOut to dst(p, k) (atomic: +=).
  // C must be a multiple of 8 (whole 32 B blocks).
  template <int NIN, int NOUT, class Src, class Dst, class F>
  __aicore__ inline void MapRows(int64_t nrows, int64_t C, Src src, Dst dst, bool atomic, F f) {
    for (int64_t p = 0; p < nrows; p++)
      for (int64_t c0 = 0; c0 < C; c0 += cols_) {
        const uint32_t len = uint32_t(imin(cols_, C - c0));
        LocalTensor<float> in = inQ.AllocTensor<float>();  // CopyIn
        for (int k = 0; k < NIN; k++) DataCopy(in[k * cols_], src(p, k)[c0], len);
        inQ.EnQue(in);
        in = inQ.DeQue<float>();  // Compute
        LocalTensor<float> out = outQ.AllocTensor<float>();
        f(out, in, uint32_t(cols_), len, p);
        outQ.EnQue(out);
        inQ.FreeTensor(in);
        out = outQ.DeQue<float>();  // CopyOut
        if (atomic) SetAtomicAdd<float>();
        for (int k = 0; k < NOUT; k++) DataCopy(dst(p, k)[c0], out[k * cols_], len);
        if (atomic) SetAtomicNone();
        outQ.FreeTensor(out);
      }
  }
  // v[0:n] *= s (contiguous GM)
  __aicore__ inline void Scale(uint64_t v, int64_t n, float s) {
    MapRows<1, 1>(1, n, [&](int64_t, int) { return gmf(v); }, [&](int64_t, int) { return gmf(v); }, false,
                  [&](LocalTensor<float>& o, LocalTensor<float>& i, uint32_t, uint32_t len, int64_t) { Muls(o, i, s, len); });
  }
  // rows p of v (n, C) scaled by w[p]
  __aicore__ inline void ScaleRows(uint64_t v, int64_t n, int64_t C, __gm__ const float* w) {
    auto row = [&](int64_t p, int) { return gmf(v + uint64_t(p * C) * 4); };
    MapRows<1, 1>(n, C, row, row, false,
                  [&](LocalTensor<float>& o, LocalTensor<float>& i, uint32_t, uint32_t len, int64_t p) { Muls(o, i, w[p], len); });
  }
  // dst (n, C) = rows idx[p] of src (·, C)
  __aicore__ inline void GatherRows(uint64_t dst, uint64_t src, __gm__ const int32_t* idx, int64_t n, int64_t C) {
    MapRows<1, 1>(n, C, [&](int64_t p, int) { return gmf(src + uint64_t(int64_t(idx[p]) * C) * 4); },
                  [&](int64_t p, int) { return gmf(dst + uint64_t(p * C) * 4); }, false,
                  [&](LocalTensor<float>& o, LocalTensor<float>& i, uint32_t, uint32_t len, int64_t) { DataCopy(o, i, len); });
  }
  // dst rows idx[p] += w[p] · src row p (w null: 1); atomic, so blocks may share dst rows
  __aicore__ inline void ScatterAddRows(uint64_t dst, uint64_t src, __gm__ const int32_t* idx, __gm__ const float* w, int64_t n, int64_t C) {
    MapRows<1, 1>(n, C, [&](int64_t p, int) { return gmf(src + uint64_t(p * C) * 4); },
                  [&](int64_t p, int) { return gmf(dst + uint64_t(int64_t(idx[p]) * C) * 4); }, true,
                  [&](LocalTensor<float>& o, LocalTensor<float>& i, uint32_t, uint32_t len, int64_t p) { Muls(o, i, w ? w[p] : 1.f, len); });
  }
  // dot[p] += Σ_c a[p, c]·b[p, c] for p < n (dot accumulates in GM, one float per row)
  __aicore__ inline void RowDotAdd(uint64_t dot, uint64_t a, uint64_t b, int64_t n, int64_t C) {
    LocalTensor<float> t = tmp.Get<float>();
    for (int64_t p = 0; p < n; p++) {
      float acc = 0.f;
      for (int64_t c0 = 0; c0 < C; c0 += cols_) {
        const uint32_t len = uint32_t(imin(cols_, C - c0));
        LocalTensor<float> in = inQ.AllocTensor<float>();
        DataCopy(in, gmf(a + uint64_t(p * C + c0) * 4), len);
        DataCopy(in[cols_], gmf(b + uint64_t(p * C + c0) * 4), len);
        inQ.EnQue(in);
        in = inQ.DeQue<float>();
        Mul(t, in, in[cols_], len);
        ReduceSum(t[2 * cols_], t, t[cols_], len);
        PipeBarrier<PIPE_ALL>();  // the vector result, before the scalar unit reads it
        acc += t.GetValue(2 * cols_);
        inQ.FreeTensor(in);
      }
      LocalTensor<float> out = outQ.AllocTensor<float>();
      out.SetValue(0, acc);
      PipeBarrier<PIPE_ALL>();  // the scalar write, before the copy out reads it
      outQ.EnQue(out);
      out = outQ.DeQue<float>();
      SetAtomicAdd<float>();
      DataCopyExtParams one;
      one.blockCount = 1, one.blockLen = 4;
      DataCopyPad(gmf(dot + uint64_t(p) * 4), out, one);
      SetAtomicNone();
      outQ.FreeTensor(out);
    }
  }

  // ---- dequantisation: rows [r0, r0+nr) of W → slab (nr, W.cols) float32 in GM ----
  // f32 rows are copied. FP8 / FP4 bytes are widened (Cast u8 → half → int32), turned into byte
  // offsets of the value table lut, gathered, and multiplied by their E8M0 scale:
  //   FP8: value(r, c) = e4m3[byte] · 2^(scale[r/128, c/128] − 127)
  //   FP4: byte c/2 holds columns c (low nibble) and c+1 (high); the table has 512 entries,
  //        entry 2·byte + (c & 1) = e2m1 of that nibble; value · 2^(scale[r, c/32] − 127).
  __aicore__ inline void Dequant(uint64_t slab, const WeightDesc& W, int64_t r0, int64_t nr) {
    const int64_t K = W.cols;
    if (W.fmt == kF32) {
      auto row = [&](int64_t p, int) { return gmf(W.data + uint64_t((r0 + p) * K) * 4); };
      MapRows<1, 1>(nr, K, row, [&](int64_t p, int) { return gmf(slab + uint64_t(p * K) * 4); }, false,
                    [&](LocalTensor<float>& o, LocalTensor<float>& i, uint32_t, uint32_t len, int64_t) { DataCopy(o, i, len); });
      return;
    }
    LoadLut(W.fmt);
    __gm__ const uint8_t* sc = reinterpret_cast<__gm__ const uint8_t*>(W.scale);
    GlobalTensor<uint8_t> bytes;
    bytes.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(W.data));
    const bool fp8 = W.fmt == kFp8;
    const int64_t rowBytes = fp8 ? K : K / 2, blocks = (K + 127) / 128;
    LocalTensor<float> t = tmp.Get<float>();
    LocalTensor<half> h = t.ReinterpretCast<half>();       // tmp[0 : cols/2) as half
    LocalTensor<int32_t> b32 = t[cols_].ReinterpretCast<int32_t>();
    LocalTensor<uint32_t> off = t[2 * cols_].ReinterpretCast<uint32_t>();
    for (int64_t p = 0; p < nr; p++) {
      const int64_t r = r0 + p;
      for (int64_t c0 = 0; c0 < K; c0 += cols_) {
        const uint32_t len = uint32_t(imin(cols_, K - c0)), nb = fp8 ? len : len / 2;
        LocalTensor<float> in = inQ.AllocTensor<float>();  // CopyIn: the chunk's bytes
        LocalTensor<uint8_t> in8 = in.ReinterpretCast<uint8_t>();
        DataCopy(in8, bytes[uint64_t(r * rowBytes + (fp8 ? c0 : c0 / 2))], nb);
        inQ.EnQue(in);
        in = inQ.DeQue<float>();  // Compute
        in8 = in.ReinterpretCast<uint8_t>();
        LocalTensor<float> out = outQ.AllocTensor<float>();
        Cast(h, in8, RoundMode::CAST_NONE, nb);
        Cast(b32, h, RoundMode::CAST_ROUND, nb);
        if (fp8) {
          ShiftLeft(b32, b32, int32_t(2), nb);  // byte → offset of lut[byte]
          Gather(out, lut.Get<float>(), b32.ReinterpretCast<uint32_t>(), 0, len);
          for (uint32_t j = 0; j < len; j += 128)
            Muls(out[j], out[j], e8m0(sc[(r / 128) * blocks + (c0 + j) / 128]), uint32_t(imin(128, len - j)));
        } else {
          LocalTensor<uint32_t> pt = pat.Get<uint32_t>();
          Gather(off, b32.ReinterpretCast<uint32_t>(), pt, 0, len);  // off[c] = byte c/2
          LocalTensor<int32_t> oi = off.ReinterpretCast<int32_t>();
          ShiftLeft(oi, oi, int32_t(3), len);                            // 8·byte
          Add(oi, oi, pt[cols_].ReinterpretCast<int32_t>(), len);       // + 4·(c & 1)
          Gather(out, lut.Get<float>(), off, 0, len);
          for (uint32_t j = 0; j < len; j += 32) Muls(out[j], out[j], e8m0(sc[r * (K / 32) + (c0 + j) / 32]), uint32_t(32));
        }
        outQ.EnQue(out);
        inQ.FreeTensor(in);
        out = outQ.DeQue<float>();  // CopyOut
        DataCopy(gmf(slab + uint64_t(p * K + c0) * 4), out, len);
        outQ.FreeTensor(out);
      }
    }
  }

  // ---- Cube: C (M,N) (+)= op(A) op(B) on GM, row strides lda, ldb, ldc ----
  // ta: A is stored (K, M); tb: B is stored (N, K).
  __aicore__ inline void MatMul(uint64_t c, int64_t ldc, uint64_t a, int64_t lda, bool ta, uint64_t b, int64_t ldb, bool tb,
                                int64_t M, int64_t N, int64_t K, bool accumulate) {
    if (M == 0 || N == 0) return;
    PipeBarrier<PIPE_ALL>();  // the vector unit's GM writes (a slab, a scaled factor), before the Cube reads them
    mm.SetOrgShape(int32_t(ta ? lda : M), int32_t(tb ? N : ldb), int32_t(ta ? K : lda), int32_t(tb ? ldb : K), int32_t(ldc));
    mm.SetSingleShape(int32_t(M), int32_t(N), int32_t(K));
    mm.SetTensorA(gmf(a), ta);
    mm.SetTensorB(gmf(b), tb);
    mm.IterateAll(gmf(c), accumulate ? 1 : 0);
    mm.End();
  }
  // C (M, N) (+)= A (M, K) · Wᵀ (W (N, K) shipped: dequantised slab by slab), or with wT false
  // C (M, N) (+)= A (M, K) · W (W (K, N): the slabs run along K and accumulate).
  __aicore__ inline void MatMulW(uint64_t c, int64_t ldc, uint64_t a, int64_t lda, const WeightDesc& W, bool wT, uint64_t slab,
                                 int64_t slabRows, int64_t M, bool accumulate) {
    for (int64_t r0 = 0; r0 < W.rows; r0 += slabRows) {
      const int64_t nr = imin(slabRows, W.rows - r0);
      Dequant(slab, W, r0, nr);
      if (wT)  // C[:, r0:r0+nr] = A · slabᵀ
        MatMul(c + uint64_t(r0) * 4, ldc, a, lda, false, slab, W.cols, true, M, nr, W.cols, accumulate);
      else  // C += A[:, r0:r0+nr] · slab
        MatMul(c, ldc, a + uint64_t(r0) * 4, lda, false, slab, W.cols, false, M, W.cols, nr, accumulate || r0 > 0);
    }
  }

  TQue<TPosition::VECIN, kBufferNum> inQ;
  TQue<TPosition::VECOUT, kBufferNum> outQ;
  TBuf<TPosition::VECCALC> tmp, mask, lut, pat;
  Mm mm;

 private:
  // The value table of fmt in UB, and for FP4 the nibble patterns: pat[c] = 4·(c/2) (the byte's
  // int32 offset), par = pat[cols + c] = 4·(c & 1).
  __aicore__ inline void LoadLut(int32_t fmt) {
    if (lutFmt_ == fmt) return;
    LocalTensor<float> l = lut.Get<float>();
    for (int32_t i = 0; i < 256; i++) {
      if (fmt == kFp8) {
        l.SetValue(uint32_t(i), e4m3(uint8_t(i)));
      } else {
        l.SetValue(uint32_t(2 * i), e2m1(uint8_t(i & 15)));
        l.SetValue(uint32_t(2 * i + 1), e2m1(uint8_t(i >> 4)));
      }
    }
    if (fmt == kFp4) {
      LocalTensor<uint32_t> pt = pat.Get<uint32_t>();
      for (int32_t c = 0; c < cols_; c++) pt.SetValue(uint32_t(c), uint32_t(4 * (c / 2))), pt.SetValue(uint32_t(cols_ + c), uint32_t(4 * (c & 1)));
    }
    PipeBarrier<PIPE_ALL>();  // the scalar-written tables, before the vector unit gathers from them
    lutFmt_ = fmt;
  }
  TPipe pipe_;
  int32_t cols_ = 0, lutFmt_ = -1;
};

}  // namespace v4ascend
