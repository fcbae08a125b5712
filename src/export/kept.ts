// The tensors an export writes without quantising them (embedding, head, norms, router, mHC):
// each is checked for NaN and ±Infinity before it is written, as the quantised linears are, so a
// checkpoint that holds one is refused naming the tensor rather than exported with it.
import { firstNonFiniteNative } from '../backend/native/formats.js';
import { InputError, firstNonFinite } from '../errors.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { bf16Decode, f16Decode } from '../model/formats.js';

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
