// The tensors an export writes without quantising them (embedding, head, norms, router, mHC):
// each is checked for NaN and ±Infinity before it is written, as the quantised linears are, so a
// checkpoint that holds one is refused naming the tensor rather than exported with it.
import { tryLoadAddon } from '../backend/native/addon.js';
import { decodeWeightNative, firstNonFiniteNative } from '../backend/native/formats.js';
import { InputError, firstNonFinite } from '../errors.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { bf16BytesToF32, bf16Decode, f16Decode, f32ToF16Bytes } from '../model/formats.js';

function refuse(ckpt: Checkpoint, name: string, value: number, at: number): InputError {
  return new InputError(`${ckpt.meta(name).file}: tensor ${name} holds ${value} at element ${at}; nothing written`);
}

/** the tensor as float32 (Checkpoint.f32, `into` as there), refused if any element is NaN or ±Infinity */
export async function keptF32(ckpt: Checkpoint, name: string, into?: Float32Array): Promise<Float32Array> {
  const x = await ckpt.f32(name, undefined, into);
  const bad = firstNonFiniteNative(x) ?? firstNonFinite(x);
  if (bad >= 0) throw refuse(ckpt, name, x[bad]!, bad);
  return x;
}

/**
 * Check a float tensor's stored bytes (BF16, F16 or F32, little-endian) without decoding them:
 * an element is not finite when its exponent bits are all ones. Integer tensors pass.
 */
export function checkKeptBytes(ckpt: Checkpoint, name: string, bytes: Uint8Array): void {
  const { dtype } = ckpt.meta(name);
  if (dtype === 'BF16' || dtype === 'F16') {
    const [mask, decode] = dtype === 'BF16' ? [0x7f80, bf16Decode] : [0x7c00, f16Decode];
    // the platform is little-endian (as the addon and formats.ts assume); an odd offset is copied
    const h = bytes.byteOffset % 2 === 0 ? new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length >> 1) : new Uint16Array(bytes.slice().buffer, 0, bytes.length >> 1);
    for (let i = 0; i < h.length; i++) if ((h[i]! & mask) === mask) throw refuse(ckpt, name, decode(h[i]!), i);
  } else if (dtype === 'F32') {
    const x = bytes.byteOffset % 4 === 0 ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length >> 2) : new Float32Array(bytes.slice().buffer, 0, bytes.length >> 2);
    const bad = firstNonFiniteNative(x) ?? firstNonFinite(x);
    if (bad >= 0) throw refuse(ckpt, name, x[bad]!, bad);
  }
}

/**
 * A BF16-stored kept tensor [rows, cols] as F16 bytes, what keptF32 and the F16 conversion give,
 * made in row chunks of at most `chunk.length` floats: the tensor's float32 never exists whole
 * (V4's embedding and head: 2 GB each), and each chunk is checked as keptF32 checks the whole.
 */
export async function keptBf16AsF16(ckpt: Checkpoint, name: string, chunk: Float32Array): Promise<Uint8Array> {
  const shape = ckpt.meta(name).logicalShape;
  const cols = shape[shape.length - 1]!;
  const rows = shape.reduce((a, b) => a * b, 1) / cols;
  const { data } = await ckpt.raw(name);
  const out = new Uint16Array(rows * cols);
  const addon = tryLoadAddon();
  const step = Math.max(1, Math.floor(chunk.length / cols));
  for (let r0 = 0; r0 < rows; r0 += step) {
    const n = Math.min(step, rows - r0);
    const bytes = data.subarray(2 * r0 * cols, 2 * (r0 + n) * cols);
    const x = decodeWeightNative('bf16', bytes, null, n, cols, chunk.length >= n * cols ? chunk : undefined) ?? bf16BytesToF32(bytes);
    const bad = firstNonFiniteNative(x) ?? firstNonFinite(x);
    if (bad >= 0) throw refuse(ckpt, name, x[bad]!, r0 * cols + bad);
    const to = out.subarray(r0 * cols, (r0 + n) * cols);
    if (addon) addon.f32ToF16(to, x);
    else to.set(new Uint16Array(f32ToF16Bytes(x).buffer));
  }
  return new Uint8Array(out.buffer);
}
