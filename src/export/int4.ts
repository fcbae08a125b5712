// Asymmetric group-wise INT4 of a linear weight W [out, in]: the input dimension is cut into
// groups of `groupSize` columns; each (row, group) gets an fp16 scale s and an integer zero z,
// and each weight becomes a code q in 0..15 with  w ≈ (q − z)·s  (the GPTQ / AutoGPTQ
// convention, sym = false).
//
// Grid choice (per group, xmin = min(0, min w), xmax = max(0, max w)):
//   s = f16 rounded UP from (xmax − xmin)/15, z = round(−xmin/s) ∈ [1, 15].
// Rounding s up keeps the whole range on the grid, so every weight is within s/2 of its code
// (no clamp ever costs more than half a step). z ≥ 1 because the AutoGPTQ "gptq" (v1)
// checkpoint format stores z − 1 in a nibble: z = 0 would wrap to 15 there. When the group has
// no negative weight (z would be 0) the grid is re-cut as z = 1, s ≥ xmax/14.5, which still keeps
// every weight within s/2. An all-zero group gets s = 1, z = 8 (exact zeros).
import { f16Decode, f16Encode, type Int4Weight } from '../model/formats.js';

export const INT4_MAX = 15;

/** One group's grid: the fp16 scale (its value and its bits) and the zero point. */
export interface GroupGrid {
  scale: number;
  scaleBits: number;
  zero: number;
}

export type { Int4Weight };

/** the smallest fp16 value ≥ x (x ≥ 0, finite): its bits */
export function f16RoundUp(x: number): number {
  let h = f16Encode(x);
  if (f16Decode(h) < x) h += 1;
  return h;
}

/** grid of a group whose weights span [lo, hi] (min and max of the group) */
export function groupGrid(lo: number, hi: number): GroupGrid {
  const xmin = Math.min(lo, 0);
  const xmax = Math.max(hi, 0);
  if (xmax === xmin) return { scale: 1, scaleBits: f16Encode(1), zero: 8 };
  let bits = f16RoundUp((xmax - xmin) / INT4_MAX);
  let scale = f16Decode(bits);
  let zero = Math.round(-xmin / scale);
  if (zero < 1) {
    zero = 1;
    if (xmax > 14.5 * scale) {
      bits = f16RoundUp(xmax / 14.5);
      scale = f16Decode(bits);
    }
  }
  if (zero > INT4_MAX) zero = INT4_MAX;
  return { scale, scaleBits: bits, zero };
}

/** code of one weight on a grid: clamp(round(w/s) + z, 0, 15) */
export function quantCode(w: number, scale: number, zero: number): number {
  const q = Math.round(w / scale) + zero;
  return q < 0 ? 0 : q > INT4_MAX ? INT4_MAX : q;
}

/** why W [out, in] cannot be cut into groups of `groupSize` columns, or null when it can */
export function checkGroupable(name: string, out: number, inF: number, groupSize: number): string | null {
  if (!Number.isInteger(groupSize) || groupSize < 1) return `group size ${groupSize} is not a positive integer`;
  if (inF % groupSize !== 0) return `${name}: input size ${inF} is not a multiple of the group size ${groupSize}`;
  if (out < 1) return `${name}: no output rows`;
  return null;
}

/**
 * Round-to-nearest INT4 of W [out, in] in groups of `groupSize` input columns.
 * For each row r and group g: grid from min/max of W[r, g·gs : (g+1)·gs], then
 * q[r, c] = clamp(round(W[r, c]/s) + z, 0, 15). Throws on a non-finite weight.
 */
export function quantizeRtn(w: Float32Array, out: number, inF: number, groupSize: number): Int4Weight {
  if (w.length !== out * inF) throw new Error(`quantizeRtn: ${w.length} weights, expected ${out}×${inF}`);
  if (inF % groupSize !== 0) throw new Error(`quantizeRtn: input size ${inF} is not a multiple of the group size ${groupSize}`);
  const G = inF / groupSize;
  const q = new Uint8Array(out * inF);
  const scales = new Float32Array(out * G);
  const scaleBits = new Uint16Array(out * G);
  const zeros = new Uint8Array(out * G);
  for (let r = 0; r < out; r++) {
    for (let g = 0; g < G; g++) {
      const base = r * inF + g * groupSize;
      let lo = Infinity;
      let hi = -Infinity;
      for (let c = 0; c < groupSize; c++) {
        const x = w[base + c]!;
        if (!Number.isFinite(x)) throw new RangeError(`non-finite weight ${x} at row ${r}, column ${g * groupSize + c}`);
        if (x < lo) lo = x;
        if (x > hi) hi = x;
      }
      const grid = groupGrid(lo, hi);
      scales[r * G + g] = grid.scale;
      scaleBits[r * G + g] = grid.scaleBits;
      zeros[r * G + g] = grid.zero;
      for (let c = 0; c < groupSize; c++) q[base + c] = quantCode(w[base + c]!, grid.scale, grid.zero);
    }
  }
  return { out, inF, groupSize, q, scales, scaleBits, zeros };
}

/** W'[r, c] = (q[r, c] − z[r, g]) · s[r, g] with g = c div groupSize */
export function dequantizeInt4(x: Int4Weight): Float32Array {
  const { out, inF, groupSize } = x;
  const G = inF / groupSize;
  const w = new Float32Array(out * inF);
  for (let r = 0; r < out; r++) {
    for (let c = 0; c < inF; c++) {
      const g = r * G + Math.floor(c / groupSize);
      w[r * inF + c] = (x.q[r * inF + c]! - x.zeros[g]!) * x.scales[g]!;
    }
  }
  return w;
}

/** Reconstruction error of a quantised weight against the original. */
export interface ErrorStats {
  maxAbs: number;
  sumAbs: number;
  sumSq: number;
  count: number;
}

/** lane sums of rowErrorSums: ((0+1)+(2+3))+((4+5)+(6+7)) */
const lanesTotal = (l: Float64Array): number => ((l[0]! + l[1]!) + (l[2]! + l[3]!)) + ((l[4]! + l[5]!) + (l[6]! + l[7]!));

/**
 * Per row of `cols` weights (e = orig − recon): [Σ|e|, Σe², max|e|, Σorig²] (rows × 4 values).
 * Each sum runs in 8 lanes, column c adding into lane c mod 8 in column order, the lanes then
 * summed pairwise (lanesTotal): the order the native round to nearest vectorises in
 * (kernels/cpu/gptq.cpp int4_rtn returns the same sums, bit for bit).
 */
export function rowErrorSums(orig: Float32Array, recon: Float32Array, cols: number): Float64Array {
  const rows = orig.length / cols;
  const sums = new Float64Array(rows * 4);
  const la = new Float64Array(8);
  const lq = new Float64Array(8);
  const lw = new Float64Array(8);
  for (let r = 0; r < rows; r++) {
    la.fill(0);
    lq.fill(0);
    lw.fill(0);
    let maxAbs = 0;
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      const e = Math.abs(orig[i]! - recon[i]!);
      if (e > maxAbs) maxAbs = e;
      la[c & 7] += e;
      lq[c & 7] += e * e;
      lw[c & 7] += orig[i]! * orig[i]!;
    }
    sums.set([lanesTotal(la), lanesTotal(lq), maxAbs, lanesTotal(lw)], 4 * r);
  }
  return sums;
}
