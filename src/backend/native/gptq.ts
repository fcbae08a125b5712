// GPTQ on the native addon (kernels/cpu/gptq.cpp): the Hessian accumulation, the column loop on
// the INT4, Q4_K and Q4_0 grids and the output error of src/export/gptq.ts and calibrate.ts, in float64 with the
// same operations in the same order per element, so the codes are the TypeScript reference's
// (test/backend/native/gptq.test.ts). Each function returns null when the addon is not built (the caller
// then runs the TypeScript reference).
import { tryLoadAddon } from './addon.js';

/** The INT4 grid GPTQ fills (model/formats.ts Int4Weight has this shape): codes [out, in], per-group scales and zeros. */
export interface Int4Grid {
  groupSize: number;
  q: Uint8Array;
  scales: Float32Array;
  scaleBits: Uint16Array;
  zeros: Uint8Array;
}

/**
 * H [n, n] (upper triangle) += Σ_t x_tᵀ x_t over the rows of x [rows, ldx] (its first n columns
 * from `offset`); false when the addon is not built.
 */
export function hessianAccumulateNative(H: Float64Array, x: Float32Array, offset: number, rows: number, n: number, ldx: number): boolean {
  const addon = tryLoadAddon();
  if (!addon || rows === 0) return addon !== null;
  addon.gptqHessianAccumulate(H, x.subarray(offset), rows, n, ldx);
  return true;
}

/** GPTQ's factor of a Hessian (export/gptq.ts GptqFactor has this shape): U [n, n], dead [n]. */
export interface GptqFactor {
  n: number;
  U: Float64Array;
  dead: Uint8Array;
}

/**
 * GPTQ's factor of H [n, n] (gptq.ts gptqFactor, the same bits), or null without the addon.
 * Throws a RangeError when H + damp is not positive definite.
 */
export async function gptqFactorNative(H: Float64Array, n: number, damp: number, name = 'gptq'): Promise<GptqFactor | null> {
  const addon = tryLoadAddon();
  if (!addon) return null;
  const f: GptqFactor = { n, U: new Float64Array(n * n), dead: new Uint8Array(n) };
  try {
    await addon.gptqFactor(f.U, f.dead, H, n, damp);
  } catch (e) {
    if (e instanceof Error && e.message.includes('not positive definite')) {
      throw new RangeError(`${name}: the calibration Hessian is not positive definite after dampening (raise export.gptq_damp)`);
    }
    throw e;
  }
  return f;
}

/**
 * GPTQ of rows r0 … r1−1 of W [out, inF] on the INT4 grid of `result` (int4.ts: its groupSize,
 * codes, scales, zeros filled for those rows) from the factor of its Hessian (gptqFactor); returns
 * Q [(r1 − r0), inF], or null without the addon.
 */
export async function gptqInt4Native(w: Float32Array, inF: number, r0: number, r1: number, f: GptqFactor, result: Int4Grid): Promise<Float64Array | null> {
  const addon = tryLoadAddon();
  if (!addon) return null;
  if (f.n !== inF) throw new Error(`gptq: a factor of ${f.n} inputs for a weight of ${inF}`);
  const Q = new Float64Array((r1 - r0) * inF);
  await addon.gptqInt4(result.q, result.scales, result.scaleBits, result.zeros, Q, w, r0, r1, f.U, f.dead, inF, result.groupSize);
  return Q;
}

/**
 * GPTQ of rows r0 … r1−1 of W [out, inF] on llama.cpp's Q4_K (`q4_k`, inF a multiple of 256) or
 * Q4_0 (`q4_0`, a multiple of 32) grid as gptq.ts q4kQuantizer / q4_0Quantizer round it (the same
 * bytes and Q): `dst` holds the GGUF bytes of every row, those of rows r0 … r1−1 are written; returns
 * Q [(r1 − r0), inF], or null without the addon.
 */
export async function gptqGgufNative(kind: 'q4_k' | 'q4_0', w: Float32Array, inF: number, r0: number, r1: number, f: GptqFactor, dst: Uint8Array): Promise<Float64Array | null> {
  const addon = tryLoadAddon();
  if (!addon) return null;
  if (f.n !== inF) throw new Error(`gptq: a factor of ${f.n} inputs for a weight of ${inF}`);
  const Q = new Float64Array((r1 - r0) * inF);
  if (kind === 'q4_k') await addon.gptqQ4K(dst, Q, w, r0, r1, f.U, f.dead, inF);
  else await addon.gptqQ40(dst, Q, w, r0, r1, f.U, f.dead, inF);
  return Q;
}

/** tr(E H Eᵀ) for E [rows, n] (gptq.ts outputErrorSq, summed in another order), or null without the addon */
export async function outputErrorSqNative(E: Float64Array, rows: number, n: number, H: Float64Array): Promise<number | null> {
  const addon = tryLoadAddon();
  if (!addon) return null;
  const out = new Float64Array(1);
  await addon.gptqOutputError(out, E, H, rows, n);
  return out[0]!;
}

/** An INT4 grid of W [out, inF] rounded to nearest, with its per-row error sums. */
export interface Int4Rtn extends Int4Grid {
  out: number;
  inF: number;
  /** [out, 4]: per row Σ|e|, Σe², max|e|, Σw² over its columns in order (int4.ts rowErrorSums of W against the dequantised grid) */
  rowSums: Float64Array;
}

/**
 * int4.ts quantizeRtn of W [out, inF] on the addon (the same codes, scales and zeros) with the
 * error sums the export reports, or null without the addon. Throws quantizeRtn's RangeError on
 * a non-finite weight.
 */
export async function int4RtnNative(w: Float32Array, out: number, inF: number, groupSize: number): Promise<Int4Rtn | null> {
  const addon = tryLoadAddon();
  if (!addon) return null;
  if (w.length !== out * inF) throw new Error(`int4Rtn: ${w.length} weights, expected ${out}×${inF}`);
  if (inF % groupSize !== 0) throw new Error(`int4Rtn: input size ${inF} is not a multiple of the group size ${groupSize}`);
  const G = inF / groupSize;
  const x: Int4Rtn = {
    out, inF, groupSize, q: new Uint8Array(out * inF), scales: new Float32Array(out * G), scaleBits: new Uint16Array(out * G),
    zeros: new Uint8Array(out * G), rowSums: new Float64Array(out * 4),
  };
  const bad = new Float64Array(1);
  await addon.int4Rtn(x.q, x.scales, x.scaleBits, x.zeros, x.rowSums, bad, w, out, inF, groupSize);
  if (bad[0]! >= 0) {
    const i = bad[0]!;
    throw new RangeError(`non-finite weight ${w[i]} at row ${Math.floor(i / inF)}, column ${i % inF}`);
  }
  return x;
}

/** AutoGPTQ's packing (gptq-export.ts packGptq, the same bytes) on the addon, or null without it */
export async function packGptqNative(x: Int4Grid & { out: number; inF: number }): Promise<{ qweight: Int32Array; qzeros: Int32Array; scales: Uint16Array; gIdx: Int32Array } | null> {
  const addon = tryLoadAddon();
  if (!addon) return null;
  const { out, inF, groupSize } = x;
  const G = inF / groupSize;
  const qweight = new Int32Array((inF / 8) * out);
  const qzeros = new Int32Array(G * (out / 8));
  const scales = new Uint16Array(G * out);
  await addon.int4PackGptq(qweight, qzeros, scales, x.q, x.zeros, x.scaleBits, out, inF, groupSize);
  const gIdx = new Int32Array(inF);
  for (let i = 0; i < inF; i++) gIdx[i] = Math.floor(i / groupSize);
  return { qweight, qzeros, scales, gIdx };
}

type BlockRtn = 'q4kRtn' | 'q40Rtn' | 'q80Rtn';
/** weights a block holds and its bytes, per block type */
const BLOCKS: Record<BlockRtn, [number, number]> = { q4kRtn: [256, 144], q40Rtn: [32, 18], q80Rtn: [32, 34] };

/**
 * A GGUF block type of W [out, inF] (inF a multiple of the block) rounded to nearest on the addon,
 * the same bytes as the TypeScript reference (q4kRtn: q4k.ts quantizeQ4_K; q40Rtn: gguf.ts
 * quantizeQ4_0; q80Rtn: ggml-quants.ts quantizeQ8_0), with the per-row error sums against its
 * dequantised values (int4.ts rowErrorSums), or null without the addon. Throws a RangeError on a
 * non-finite weight.
 */
async function blockRtnNative(fn: BlockRtn, w: Float32Array, out: number, inF: number): Promise<{ bytes: Uint8Array; rowSums: Float64Array } | null> {
  const addon = tryLoadAddon();
  if (!addon) return null;
  const [block, size] = BLOCKS[fn];
  if (w.length !== out * inF || inF % block !== 0) throw new Error(`${fn}: ${w.length} weights as ${out}×${inF} (a multiple of ${block} columns)`);
  const bytes = new Uint8Array(out * (inF / block) * size);
  const rowSums = new Float64Array(out * 4);
  const bad = new Float64Array(1);
  await addon[fn](bytes, rowSums, bad, w, out, inF);
  if (bad[0]! >= 0) throw new RangeError(`non-finite weight ${w[bad[0]!]} at row ${Math.floor(bad[0]! / inF)}, column ${bad[0]! % inF}`);
  return { bytes, rowSums };
}

/** llama.cpp's Q4_K of W [out, inF] (inF a multiple of 256): blockRtnNative */
export const q4kRtnNative = (w: Float32Array, out: number, inF: number) => blockRtnNative('q4kRtn', w, out, inF);
/** llama.cpp's Q4_0 of W [out, inF] (inF a multiple of 32): blockRtnNative */
export const q40RtnNative = (w: Float32Array, out: number, inF: number) => blockRtnNative('q40Rtn', w, out, inF);
/** ggml's Q8_0 of W [out, inF] (inF a multiple of 32): blockRtnNative */
export const q80RtnNative = (w: Float32Array, out: number, inF: number) => blockRtnNative('q80Rtn', w, out, inF);
