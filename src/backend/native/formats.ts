// Whole-tensor format conversions on the native addon, for the export's large tensors: each gives
// src/model/formats.ts's values bit for bit (test/backend/native/int4.test.ts) across the thread
// pool, or null when the addon is not built (the caller then runs formats.ts).
import { rawWeight, tryLoadAddon } from './addon.js';

/**
 * FP8 (128×128 E8M0 blocks), FP4 (per-32 E8M0; both with their scales) or BF16 bytes of [rows,
 * cols] as float32 (into the start of `into` when given), or null
 */
export function decodeWeightNative(format: string, data: Uint8Array, scale: Uint8Array | null, rows: number, cols: number, into?: Float32Array): Float32Array | null {
  if (format !== 'fp8' && format !== 'fp4' && format !== 'bf16') return null;
  const addon = tryLoadAddon();
  if (!addon) return null;
  const out = into ? into.subarray(0, rows * cols) : new Float32Array(rows * cols);
  if (out.length !== rows * cols) throw new RangeError(`decodeWeightNative: into holds ${into!.length} floats, needs ${rows * cols}`);
  addon.decodeWeight(rawWeight(format, data, format === 'bf16' ? null : scale, rows, cols), out);
  return out;
}

/** little-endian F16 bytes of x (formats.ts f32ToF16Bytes: nearest even, NaN → 0x7e00), or null */
export function f32ToF16Native(x: Float32Array): Uint8Array | null {
  const addon = tryLoadAddon();
  if (!addon) return null;
  const out = new Uint16Array(x.length);
  addon.f32ToF16(out, x);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** the index of the first NaN or ±Infinity in x (AVX-512 on the addon), or null without the addon */
export function firstNonFiniteNative(x: Float32Array): number | null {
  const addon = tryLoadAddon();
  return addon ? addon.firstNonFinite(x) : null;
}
