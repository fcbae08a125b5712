// ggml's Q8_0 and Q5_0 blocks (ggml-quants.c quantize_row_q8_0_ref / quantize_row_q5_0_ref), in
// float32 arithmetic like the C code. Q8_0 is the `gguf-q8_0` format's type; Q5_0 is the type
// llama.cpp's own quantizer (llama-quant.cpp tensor_type_fallback) gives a Q4_K tensor whose rows
// are not a multiple of 256.
import { f16Decode, f16Encode } from '../model/formats.js';

export const Q8_0_BLOCK = 32;
/** f16 d + 32 int8 */
export const Q8_0_BYTES = 34;
export const Q5_0_BLOCK = 32;
/** f16 d + u32 high bits + 16 bytes of low nibbles */
export const Q5_0_BYTES = 22;

const f = Math.fround;

function checkBlocks(x: Float32Array, block: number, what: string): number {
  if (x.length % block !== 0) throw new RangeError(`${what}: ${x.length} values is not a multiple of ${block}`);
  return x.length / block;
}

/** Per block of 32: d = amax / 127, q_j = round(x_j / d) (roundf: half away from zero); bytes f16(d), q as int8. */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  const nb = checkBlocks(x, Q8_0_BLOCK, 'quantizeQ8_0');
  const out = new Uint8Array(nb * Q8_0_BYTES);
  for (let b = 0; b < nb; b++) {
    const o = b * Q8_0_BLOCK;
    let amax = 0;
    for (let j = 0; j < Q8_0_BLOCK; j++) amax = Math.max(amax, Math.abs(x[o + j]!));
    const d = f(amax / 127);
    const id = d !== 0 ? f(1 / d) : 0;
    const h = f16Encode(d);
    const p = b * Q8_0_BYTES;
    out[p] = h & 0xff;
    out[p + 1] = h >> 8;
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const v = f(x[o + j]! * id);
      const q = Math.sign(v) * Math.round(Math.abs(v));
      out[p + 2 + j] = q & 0xff;
    }
  }
  return out;
}

/** x_j = q_j · f16(d) */
export function dequantizeQ8_0(bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let b = 0; b < n / Q8_0_BLOCK; b++) {
    const p = b * Q8_0_BYTES;
    const d = f16Decode(bytes[p]! | (bytes[p + 1]! << 8));
    for (let j = 0; j < Q8_0_BLOCK; j++) out[b * Q8_0_BLOCK + j] = ((bytes[p + 2 + j]! << 24) >> 24) * d;
  }
  return out;
}

/**
 * Per block of 32: m = the value of largest magnitude (signed), d = m / −16, q_j = min(31,
 * int8(x_j/d + 16.5)); low nibbles of q_j | q_{j+16} in 16 bytes, the fifth bits in a u32 (bit j
 * for q_j). Dequantised: x_j ≈ (q_j − 16)·f16(d).
 */
export function quantizeQ5_0(x: Float32Array): Uint8Array {
  const nb = checkBlocks(x, Q5_0_BLOCK, 'quantizeQ5_0');
  const out = new Uint8Array(nb * Q5_0_BYTES);
  for (let b = 0; b < nb; b++) {
    const o = b * Q5_0_BLOCK;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < Q5_0_BLOCK; j++) {
      const v = x[o + j]!;
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = f(max / -16);
    const id = d !== 0 ? f(1 / d) : 0;
    const h = f16Encode(d);
    const p = b * Q5_0_BYTES;
    out[p] = h & 0xff;
    out[p + 1] = h >> 8;
    let qh = 0;
    for (let j = 0; j < Q5_0_BLOCK / 2; j++) {
      const q0 = Math.min(31, Math.trunc(f(f(x[o + j]! * id) + 16.5)));
      const q1 = Math.min(31, Math.trunc(f(f(x[o + 16 + j]! * id) + 16.5)));
      out[p + 6 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
      qh |= ((q0 & 0x10) >> 4) << j;
      qh |= ((q1 & 0x10) >> 4) << (j + 16);
    }
    out[p + 2] = qh & 0xff;
    out[p + 3] = (qh >>> 8) & 0xff;
    out[p + 4] = (qh >>> 16) & 0xff;
    out[p + 5] = (qh >>> 24) & 0xff;
  }
  return out;
}

/** x_j = (q_j − 16)·f16(d) per Q5_0 block */
export function dequantizeQ5_0(bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let b = 0; b < n / Q5_0_BLOCK; b++) {
    const p = b * Q5_0_BYTES;
    const d = f16Decode(bytes[p]! | (bytes[p + 1]! << 8));
    const qh = (bytes[p + 2]! | (bytes[p + 3]! << 8) | (bytes[p + 4]! << 16) | (bytes[p + 5]! << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const byte = bytes[p + 6 + j]!;
      const q0 = (byte & 0x0f) | (((qh >>> j) & 1) << 4);
      const q1 = (byte >> 4) | (((qh >>> (j + 16)) & 1) << 4);
      out[b * Q5_0_BLOCK + j] = (q0 - 16) * d;
      out[b * Q5_0_BLOCK + 16 + j] = (q1 - 16) * d;
    }
  }
  return out;
}
