// The argument blocks the host writes to device memory for each Ascend kernel, and the tiling.
// Plain structs of fixed-width fields, read by both the kernels (through a __gm__ pointer) and the
// host (native/ascend_host.cc); every address is a device (GM) address as a uint64.
#pragma once
#include <cstdint>

namespace v4ascend {

// Weight formats as kernels/cpu/weights.h numbers them: 0 f32, 2 fp8 (e4m3 + E8M0 128×128 block
// scales), 3 fp4 (e2m1, two a byte, low nibble first, + E8M0 per 32 columns). bf16 is not taken.
enum WeightFmt : int32_t { kF32 = 0, kFp8 = 2, kFp4 = 3 };

struct WeightDesc {
  uint64_t data, scale;  // GM; scale 0 for f32
  int32_t fmt, rows, cols, pad;
};

// The tiling every kernel takes (one GM block: CubeTiling then VecTiling). The Cube part is the
// subset of CANN's TCubeTiling the kernels set (the kernel copies it into a TCubeTiling, so the
// host needs no CANN header); the vector part sizes the vector chunks and the dequant slabs.
struct CubeTiling {
  int32_t baseM, baseN, baseK;  // one L0 tile: A baseM × baseK, B baseK × baseN, C baseM × baseN
  int32_t depthA1, depthB1;     // A / B tiles held in L1
  int32_t dbL0A, dbL0B, dbL0C;  // 2: double-buffered in L0A / L0B / L0C
};
struct VecTiling {
  int32_t cols;      // floats per vector chunk (a multiple of 128: FP8 blocks, FP4 groups fit whole)
  int32_t slabRows;  // weight rows dequantised per slab into the per-core workspace
  int32_t sinkTokens;  // tokens per Sinkhorn chunk (a multiple of 8)
  int32_t pad;
};
struct Tiling {
  CubeTiling cube;
  VecTiling vec;
};

// One routed expert. A null aN (0) means no adapter on projection N. Ranks are multiples of 8
// (the host pads A with zero rows and B with zero columns; the padding contributes nothing).
struct ExpertDesc {
  WeightDesc w1, w2, w3;            // w1, w3 (I, d); w2 (d, I)
  uint64_t a1, b1, a2, b2, a3, b3;  // A1 (r1, d), B1 (I, r1), A2 (r2, I), B2 (d, r2), A3, B3 like 1
  uint64_t da1, db1, da2, db2, da3, db3;  // gradients (backward; 0: not wanted), accumulated
  int32_t r1, r2, r3, pad;
  float s1, s2, s3, pad2;
};

// The grouped routed-expert op: x (T, d); pairs sorted by expert, off (E+1), idx (P), w (P).
struct ExpertArgs {
  uint64_t x, out, dout, dx, dw;  // forward: x, out; backward: x, dout, dx, dw (dx, dw accumulate)
  uint64_t idx, off, w;
  uint64_t experts;   // ExpertDesc[E]
  uint64_t workspace;  // blockNum × expert_workspace_floats(...) floats
  int32_t T, d, I, E, nmax;  // nmax: the largest expert's pair count (sizes the workspace)
  float limit;
};

// Linear with LoRA, grouped: x (T, G·inG), W (G·outG, inG), A (r, inG), B (G·outG, r), y (T, G·outG).
// baseDone 1: y (forward) or dx (backward) already holds the base product (CANN's grouped matmul
// computed it); the kernel adds the LoRA part only.
struct LinearArgs {
  uint64_t x, y, dy, dx, a, b, da, db;  // dx, da, db accumulate; a = 0: no adapter
  WeightDesc w;
  uint64_t workspace;  // blockNum × linear_workspace_floats(...) floats
  int32_t T, G, inG, outG, r, baseDone;
  float s, pad2;
};

// Sinkhorn backward over T independent n × n matrices: dL (T, n, n) accumulates.
struct SinkhornArgs {
  uint64_t dL, dC, L;
  int32_t T, n, iters, pad;
  float eps, pad2;
};

// Per-core workspace (floats) of the expert kernels: gathered rows, projections, the weight slab.
inline int64_t expert_workspace_floats(int64_t nmax, int64_t d, int64_t I, int64_t rmax, int64_t slabRows) {
  return 3 * nmax * d + 4 * nmax * I + 5 * nmax * rmax + slabRows * (d > I ? d : I) + 64;
}
inline int64_t linear_workspace_floats(int64_t T, int64_t inG, int64_t r, int64_t slabRows) {
  return 2 * T * r + slabRows * inG + 64;
}

}  // namespace v4ascend
