// Merging on the native addon (kernels/cpu/requant.cpp): a shipped weight dequantised, the LoRA
// delta added and the result encoded again — the bytes src/export/merge.ts's TypeScript path
// writes (test/backend/native/requant.test.ts), at memory speed. null where the addon is not built or
// the format is one it does not take (F16/F32 stored, FP8 without block scales): the caller then
// runs the TypeScript path.
import { rawWeight, tryLoadAddon, type NativeFormat } from './addon.js';

/** A stored weight as the model layer reads it (model/checkpoint.ts RawTensor has this shape). */
export interface StoredWeight {
  readonly meta: { readonly format: string; readonly logicalShape: readonly number[] };
  readonly data: Uint8Array;
  /** FP8 block / FP4 group scales, or null */
  readonly scale: Uint8Array | null;
}

/** A weight's bytes as written: data, and scales where the format has them (model/checkpoint.ts TensorBytes). */
export interface EncodedBytes {
  data: Uint8Array;
  scale: Uint8Array | null;
}

/** A LoRA pair: A [r, in], B [out, r], scaling. */
export interface DeltaFactors {
  readonly A: Float32Array;
  readonly B: Float32Array;
  readonly r: number;
  readonly scaling: number;
}

export interface Requantised {
  bytes: EncodedBytes;
  /** the first non-finite merged value (nothing is to be written then), or null */
  bad: { index: number; value: number } | null;
}

/** where the output bytes go: a buffer of exactly n bytes each (e.g. from a pool; default fresh) */
export interface OutputBuffers {
  data?: (n: number) => Uint8Array;
  scale?: (n: number) => Uint8Array;
}

const IN: Partial<Record<string, NativeFormat>> = { fp8: 'fp8', fp4: 'fp4', bf16: 'bf16' };

/**
 * `t` dequantised (+ scaling·B·A when `delta` is given), written as BF16 (`dtype` bf16) or in its
 * own stored format with fresh scales (`original`); null when the native path does not apply.
 */
export async function mergeRequantNative(t: StoredWeight, delta: DeltaFactors | null, dtype: 'original' | 'bf16', into?: OutputBuffers): Promise<Requantised | null> {
  const addon = tryLoadAddon();
  const m = t.meta;
  const fmt = IN[m.format];
  if (!addon || !fmt || m.logicalShape.length !== 2 || (fmt === 'fp8' && !t.scale)) return null;
  const [rows, cols] = m.logicalShape as [number, number];
  const out = dtype === 'bf16' || fmt === 'bf16' ? 1 : fmt === 'fp8' ? 2 : 3;
  const data = (into?.data ?? ((n) => new Uint8Array(n)))(out === 1 ? 2 * rows * cols : out === 2 ? rows * cols : (rows * cols) / 2);
  const scale = out === 1 ? null : (into?.scale ?? ((n) => new Uint8Array(n)))(out === 2 ? Math.ceil(rows / 128) * Math.ceil(cols / 128) : (rows * cols) / 32);
  const status = new Float64Array(2);
  await addon.mergeRequant(data, scale, status, rawWeight(fmt, t.data, t.scale, rows, cols), delta?.A ?? null, delta?.B ?? null, delta?.r ?? 0, delta?.scaling ?? 0, out);
  return { bytes: { data, scale }, bad: status[0]! >= 0 ? { index: status[0]!, value: status[1]! } : null };
}

const OUT_FMT = { bf16: 1, fp8: 2, fp4: 3 } as const;

/**
 * float32 [rows, cols] encoded with fresh scales, as formats.ts's f32ToBf16Bytes / quantFp8Block
 * (128×128 blocks) / quantFp4 (per-32 groups) encode it, the same bytes; null where the addon is
 * not built, fp4 columns are not a multiple of 32, or x holds a non-finite value (the caller
 * then runs the TypeScript encoder, which has its own rule for those).
 */
export async function encodeNative(x: Float32Array, rows: number, cols: number, fmt: keyof typeof OUT_FMT): Promise<EncodedBytes | null> {
  const addon = tryLoadAddon();
  if (!addon || rows * cols !== x.length || (fmt === 'fp4' && cols % 32 !== 0)) return null;
  const data = new Uint8Array(fmt === 'bf16' ? 2 * x.length : fmt === 'fp8' ? x.length : x.length / 2);
  const scale = fmt === 'bf16' ? null : new Uint8Array(fmt === 'fp8' ? Math.ceil(rows / 128) * Math.ceil(cols / 128) : x.length / 32);
  const status = new Float64Array(2);
  await addon.mergeRequant(data, scale, status, rawWeight('f32', x, null, rows, cols), null, null, 0, 0, OUT_FMT[fmt]);
  return status[0]! >= 0 ? null : { data, scale };
}
