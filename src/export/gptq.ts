// GPTQ (Frantar et al. 2022) of a linear weight W [out, in] from the Hessian of its layer-wise
// loss ‖(W − Q) Xᵀ‖²: H = (2/n) Σ_t x_tᵀ x_t [in, in] over the n calibration inputs x_t. As AutoGPTQ
// implements it without act-order (desc_act = false):
//   dead inputs (H_ii = 0): W[:, i] = 0, H_ii = 1;  H += damp · mean(diag H) · I
//   U = upper Cholesky factor of H⁻¹ (H⁻¹ = Uᵀ U)
//   for each column i, in blocks of B columns:
//     at a group start: the group's grid from the current (error-updated) weights of its columns
//     q_i = quant(w_i);  e = (w_i − q_i) / U_ii;  w_j −= e · U_ij  for j > i in the block
//   after a block [i1, i2): W[:, i2:] −= E · U[i1:i2, i2:]   (the lazy batch update)
// With a diagonal H every U_ij (i ≠ j) is 0: nothing propagates and GPTQ is round to nearest.
//
// The grid rule is the caller's (a `ColumnQuantizer`): the INT4 group grid of int4.ts
// (int4Quantizer), llama.cpp's Q4_0 blocks of 32 (q4_0Quantizer) or its Q4_K super-blocks of 256
// (q4kQuantizer: the 8 sub-block scales and mins are fitted when the super-block starts). Blocks are B = 128 columns
// when the group size divides 128, else one group, so a group never straddles a block and its
// "current" weights are the block's working copy. (AutoGPTQ with static_groups = false reads a
// group's grid from the block-start weights; for groups smaller than the block this takes the
// weights after the block's earlier columns propagated their errors, which is what the loss wants.)
import { f16Decode, f16Encode } from '../model/formats.js';
import { groupGrid, quantCode, type Int4Weight } from './int4.js';
import { nearestInt, q4kGrid, q4kNibble, quantizeQ4KBlock, Q4_K_BLOCK, Q4_K_BYTES } from './q4k.js';

/** Quantises the columns of a group of rows on grids it fits as it goes. */
export interface ColumnQuantizer {
  /** columns per group (a grid per (row, group)) */
  readonly groupSize: number;
  /** fit the grid of (row r, group g) to its current weights vals [groupSize] */
  fit(r: number, g: number, vals: Float64Array): void;
  /** quantise w at (row r, column c) on its group's grid: the code is kept, the value returned */
  quant(r: number, c: number, w: number): number;
}

/** the upper Cholesky factor U of a symmetric positive definite A [n, n] (A = Uᵀ U), or null */
export function choleskyUpper(A: Float64Array, n: number): Float64Array | null {
  const U = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    let s = A[i * n + i]!;
    for (let k = 0; k < i; k++) s -= U[k * n + i]! * U[k * n + i]!;
    if (!(s > 0)) return null;
    const dii = Math.sqrt(s);
    U[i * n + i] = dii;
    for (let j = i + 1; j < n; j++) {
      let t = A[i * n + j]!;
      for (let k = 0; k < i; k++) t -= U[k * n + i]! * U[k * n + j]!;
      U[i * n + j] = t / dii;
    }
  }
  return U;
}

/**
 * V = U⁻¹ of an upper triangular U [n, n] with a non-zero diagonal (V is upper triangular), by back
 * substitution column by column, each sum over k descending (the addon shares its passes that way)
 */
export function upperInverse(U: Float64Array, n: number): Float64Array {
  const V = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    V[j * n + j] = 1 / U[j * n + j]!;
    for (let i = j - 1; i >= 0; i--) {
      let s = 0;
      for (let k = j; k > i; k--) s += U[i * n + k]! * V[k * n + j]!;
      V[i * n + j] = -s / U[i * n + i]!;
    }
  }
  return V;
}

export interface GptqOptions {
  /** dampening as a fraction of the mean diagonal of H (AutoGPTQ damp_percent; default 0.01) */
  damp?: number;
  /** where a failure is reported (a tensor name) */
  name?: string;
}

/**
 * GPTQ's factor of one Hessian H [n, n]: which inputs are dead (H_ii = 0: their weights are
 * zeroed) and U, the upper Cholesky factor of (H + damp)⁻¹ with the dead diagonal set to 1. It
 * depends on H and the dampening only, so linears that read the same input (w1 and w3, wq_a and
 * wkv) share it.
 */
export interface GptqFactor {
  n: number;
  U: Float64Array;
  /** 1 where H_ii = 0 */
  dead: Uint8Array;
}

/** the GptqFactor of H [n, n] (not changed); throws a RangeError when H + damp is not positive definite */
export function gptqFactor(H: Float64Array, n: number, o: GptqOptions = {}): GptqFactor {
  const Hd = H.slice();
  const dead = new Uint8Array(n);
  let meanDiag = 0;
  for (let i = 0; i < n; i++) {
    if (Hd[i * n + i] === 0) {
      Hd[i * n + i] = 1;
      dead[i] = 1;
    }
    meanDiag += Hd[i * n + i]!;
  }
  const damp = (o.damp ?? 0.01) * (meanDiag / n);
  for (let i = 0; i < n; i++) Hd[i * n + i] += damp;
  // AutoGPTQ factors H, inverts it and factors the inverse (three n³ steps, a fourth for the
  // inverse's product). The same U in two: with J the reversal of the index order, the upper
  // Cholesky factor L of J·H·J (J H J = Lᵀ L) gives H = R Rᵀ with R = J Lᵀ J upper triangular, so
  // H⁻¹ = (R⁻¹)ᵀ R⁻¹ and U = R⁻¹ = J (L⁻¹)ᵀ J: U[i][j] = L⁻¹[n−1−j][n−1−i].
  const A = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) A[i * n + j] = Hd[(n - 1 - i) * n + (n - 1 - j)]!;
  const L = choleskyUpper(A, n);
  if (!L) throw new RangeError(`${o.name ?? 'gptq'}: the calibration Hessian is not positive definite after dampening (raise export.gptq_damp)`);
  const V = upperInverse(L, n);
  const U = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) U[i * n + j] = V[(n - 1 - j) * n + (n - 1 - i)]!;
  return { n, U, dead };
}

/**
 * GPTQ of rows r0 … r1−1 of W [out, inF] (row-major) against H [inF, inF] (float64, not changed):
 * the quantizer keeps the codes and grids; the return value is the quantised weights Q of those
 * rows [(r1 − r0), inF]. Throws when H + damp is not positive definite.
 */
export function gptqRows(w: Float32Array, inF: number, r0: number, r1: number, H: Float64Array, qz: ColumnQuantizer, o: GptqOptions = {}): Float64Array {
  return gptqRowsFactored(w, inF, r0, r1, gptqFactor(H, inF, o), qz);
}

/** gptqRows on H's factor (gptqFactor): the column loop */
export function gptqRowsFactored(w: Float32Array, inF: number, r0: number, r1: number, f: GptqFactor, qz: ColumnQuantizer): Float64Array {
  const n = inF;
  const rows = r1 - r0;
  const gs = qz.groupSize;
  if (f.n !== n) throw new Error(`gptq: a factor of ${f.n} inputs for a weight of ${n}`);
  if (n % gs !== 0) throw new Error(`gptq: input size ${n} is not a multiple of the group size ${gs}`);
  const B = gs <= 128 && 128 % gs === 0 ? 128 : gs;
  const W = new Float64Array(rows * n);
  for (let i = 0; i < W.length; i++) W[i] = w[r0 * n + i]!;
  for (let i = 0; i < n; i++) {
    if (f.dead[i]) for (let r = 0; r < rows; r++) W[r * n + i] = 0;
  }
  const U = f.U;

  const Q = new Float64Array(rows * n);
  const err = new Float64Array(rows * B);
  const vals = new Float64Array(gs);
  for (let i1 = 0; i1 < n; i1 += B) {
    const i2 = Math.min(i1 + B, n);
    for (let i = i1; i < i2; i++) {
      if (i % gs === 0) {
        for (let r = 0; r < rows; r++) {
          for (let c = 0; c < gs; c++) vals[c] = W[r * n + i + c]!;
          qz.fit(r0 + r, i / gs, vals);
        }
      }
      const d = U[i * n + i]!;
      for (let r = 0; r < rows; r++) {
        const wi = W[r * n + i]!;
        const q = qz.quant(r0 + r, i, wi);
        Q[r * n + i] = q;
        const e = (wi - q) / d;
        err[r * B + (i - i1)] = e;
        if (e === 0) continue;
        for (let j = i + 1; j < i2; j++) W[r * n + j] -= e * U[i * n + j]!;
      }
    }
    // W[:, i2:] −= E · U[i1:i2, i2:]
    for (let r = 0; r < rows; r++) {
      for (let i = i1; i < i2; i++) {
        const e = err[r * B + (i - i1)]!;
        if (e === 0) continue;
        for (let j = i2; j < n; j++) W[r * n + j] -= e * U[i * n + j]!;
      }
    }
  }
  return Q;
}

/** the INT4 group grid of int4.ts as a ColumnQuantizer filling an Int4Weight [out, inF] */
export function int4Quantizer(out: number, inF: number, groupSize: number): ColumnQuantizer & { result: Int4Weight } {
  const G = inF / groupSize;
  const result: Int4Weight = {
    out, inF, groupSize,
    q: new Uint8Array(out * inF),
    scales: new Float32Array(out * G),
    scaleBits: new Uint16Array(out * G),
    zeros: new Uint8Array(out * G),
  };
  return {
    groupSize,
    result,
    fit(r, g, vals) {
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of vals) {
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const grid = groupGrid(lo, hi);
      result.scales[r * G + g] = grid.scale;
      result.scaleBits[r * G + g] = grid.scaleBits;
      result.zeros[r * G + g] = grid.zero;
    },
    quant(r, c, w) {
      const k = r * G + Math.floor(c / groupSize);
      const s = result.scales[k]!;
      const z = result.zeros[k]!;
      const q = quantCode(w, s, z);
      result.q[r * inF + c] = q;
      return (q - z) * s;
    },
  };
}

const Q4_0_BLOCK = 32;
const Q4_0_BYTES = 18;

/**
 * llama.cpp's Q4_0 (gguf.ts quantizeQ4_0) as a ColumnQuantizer over W [out, inF] (inF a multiple
 * of 32): per block d = x_max/−8 with x_max the first weight of largest magnitude, codes
 * clamp(trunc(w/d + 8.5), 0, 15) (the lower clamp only matters for a weight the error updates
 * moved past the block's range), value (q − 8)·f16(d). `result`: the GGUF bytes.
 */
export function q4_0Quantizer(out: number, inF: number): ColumnQuantizer & { result: Uint8Array } {
  const nbRow = inF / Q4_0_BLOCK;
  const result = new Uint8Array(out * nbRow * Q4_0_BYTES);
  const inv = new Float32Array(out * nbRow);
  const dq = new Float32Array(out * nbRow);
  const f = Math.fround;
  return {
    groupSize: Q4_0_BLOCK,
    result,
    fit(r, g, vals) {
      let amax = 0;
      let max = 0;
      for (const v of vals) {
        const x = f(v);
        if (amax < Math.abs(x)) {
          amax = Math.abs(x);
          max = x;
        }
      }
      const d = f(max / -8);
      const h = f16Encode(d);
      const b = r * nbRow + g;
      inv[b] = d !== 0 ? f(1 / d) : 0;
      dq[b] = f16Decode(h);
      result[b * Q4_0_BYTES] = h & 0xff;
      result[b * Q4_0_BYTES + 1] = h >> 8;
    },
    quant(r, c, w) {
      const g = Math.floor(c / Q4_0_BLOCK);
      const b = r * nbRow + g;
      const q = Math.max(0, Math.min(15, Math.trunc(f(f(f(w) * inv[b]!) + 8.5))));
      const j = c % Q4_0_BLOCK;
      const p = b * Q4_0_BYTES + 2 + (j & 15);
      result[p] = j < 16 ? (result[p]! & 0xf0) | q : (result[p]! & 0x0f) | (q << 4);
      return (q - 8) * dq[b]!;
    },
  };
}

/**
 * llama.cpp's Q4_K (q4k.ts) as a ColumnQuantizer over W [out, inF] (inF a multiple of 256): at a
 * super-block's start its d, dmin and 6-bit sub-block scales and mins are fitted to the current
 * weights as quantize_row_q4_K_ref does; each weight then gets code
 * clamp(nearest((w + dmin·m)/(d·sc)), 0, 15) of its sub-block, value d·sc·q − dmin·m (a sub-block
 * with d·sc = 0 takes code 0, value −dmin·m). `result`: the GGUF bytes.
 */
export function q4kQuantizer(out: number, inF: number): ColumnQuantizer & { result: Uint8Array } {
  const nbRow = inF / Q4_K_BLOCK;
  const result = new Uint8Array(out * nbRow * Q4_K_BYTES);
  const step = new Float32Array(out * nbRow * 8);
  const offset = new Float32Array(out * nbRow * 8);
  const f = Math.fround;
  return {
    groupSize: Q4_K_BLOCK,
    result,
    fit(r, g, vals) {
      const b = r * nbRow + g;
      quantizeQ4KBlock(vals, result, b * Q4_K_BYTES);
      q4kGrid(result, b * Q4_K_BYTES, step.subarray(b * 8, b * 8 + 8), offset.subarray(b * 8, b * 8 + 8));
    },
    quant(r, c, w) {
      const b = r * nbRow + Math.floor(c / Q4_K_BLOCK);
      const i = c % Q4_K_BLOCK;
      const k = b * 8 + (i >> 5);
      const d = step[k]!;
      const q = d === 0 ? 0 : Math.max(0, Math.min(15, nearestInt(f(f(f(w) + offset[k]!) / d))));
      const { byte, high } = q4kNibble(i);
      const p = b * Q4_K_BYTES + byte;
      result[p] = high ? (result[p]! & 0x0f) | (q << 4) : (result[p]! & 0xf0) | q;
      return d * q - offset[k]!;
    },
  };
}

/**
 * ‖E Xᵀ‖² / (n/2) = tr(E H Eᵀ) for E [rows, n] (float64 H [n, n], symmetric): the layer output
 * error. Per row from H's upper triangle, half the products of e·H·eᵀ: t_j = Σ_{i<j} e_i·H_ij
 * (i ascending), then Σ_j e_j·(H_jj·e_j + 2·t_j) (j ascending); rows in order.
 */
export function outputErrorSq(E: ArrayLike<number>, rows: number, n: number, H: Float64Array): number {
  let s = 0;
  const tmp = new Float64Array(n);
  for (let r = 0; r < rows; r++) {
    tmp.fill(0);
    for (let i = 0; i < n; i++) {
      const e = E[r * n + i]!;
      if (e === 0) continue;
      for (let j = i + 1; j < n; j++) tmp[j] += e * H[i * n + j]!;
    }
    for (let j = 0; j < n; j++) {
      const e = E[r * n + j]!;
      s += e * (H[j * n + j]! * e + 2 * tmp[j]!);
    }
  }
  return s;
}
