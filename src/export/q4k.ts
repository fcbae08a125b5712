// llama.cpp's Q4_K (ggml type 12): super-blocks of 256 weights, each 8 sub-blocks of 32 with
// their own 6-bit scale and 6-bit min, the two scaled by the super-block's f16 d and dmin.
//
// Block layout (144 bytes):
//   d f16 | dmin f16 | scales[12] | qs[128]
//   scales: sub-block j < 4: sc = scales[j] & 63, m = scales[j+4] & 63;
//           j ≥ 4: sc = (scales[j+4] & 0xF) | (scales[j−4] >> 6) << 4,
//                  m = (scales[j+4] >> 4) | (scales[j] >> 6) << 4
//   qs: per chunk of 64 weights, 32 bytes: low nibbles sub-block 2i, high nibbles sub-block 2i+1
// Dequantised: w = d·sc·q − dmin·m, q in 0..15.
//
// Quantisation (quantize_row_q4_K_ref, in float32 arithmetic like the C code): per sub-block a
// weighted least-squares search of (scale, min) over a sweep of trial grids (make_qkx2_quants,
// weights av_x + |x| with av_x the sub-block's RMS); then the 8 scales and 8 mins are quantised to
// 6 bits against d = max scale / 63 and dmin = max min / 63; then every code is re-rounded on
// the final grid.
import { f16Decode, f16Encode } from '../model/formats.js';

export const Q4_K_BLOCK = 256;
export const Q4_K_BYTES = 144;
export const Q4_K_SUB = 32;

const f = Math.fround;

/** llama.cpp's nearest_int: round to nearest, ties to even, in float32 */
export function nearestInt(x: number): number {
  return f(f(x) + 12582912) - 12582912;
}

/**
 * make_qkx2_quants for one sub-block with nmax 15: the codes in L and {scale, min} (min ≥ 0,
 * the value subtracted) minimising Σ w (scale·L + (−min) − x)² over trial inverse scales
 * (rmin + rdelta·is + nmax)/(max − min), is = 0..nstep, each refit by weighted least squares.
 */
export function makeQkx2Quants(x: ArrayLike<number>, weights: Float32Array, L: Uint8Array, rmin = -1, rdelta = 0.1, nstep = 20): { scale: number; min: number } {
  const n = L.length;
  const nmax = 15;
  let min = f(x[0]!);
  let max = min;
  let sumW = weights[0]!;
  let sumX = f(sumW * min);
  for (let i = 1; i < n; i++) {
    const xi = f(x[i]!);
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    const w = weights[i]!;
    sumW = f(sumW + w);
    sumX = f(sumX + f(w * xi));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0);
    return { scale: 0, min: -min };
  }
  const range = f(max - min);
  let iscale = f(nmax / range);
  let scale = f(1 / iscale);
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const xi = f(x[i]!);
    L[i] = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(xi - min)))));
    const diff = f(f(f(scale * L[i]!) + min) - xi);
    bestError = f(bestError + f(weights[i]! * f(diff * diff)));
  }
  const Laux = new Uint8Array(n);
  for (let is = 0; is <= nstep; is++) {
    iscale = f(f(f(rmin + f(f(rdelta) * is)) + nmax) / range);
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const xi = f(x[i]!);
      const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(xi - min)))));
      Laux[i] = l;
      const w = weights[i]!;
      sumL = f(sumL + f(w * l));
      sumL2 = f(sumL2 + f(f(w * l) * l));
      sumXL = f(sumXL + f(f(w * l) * xi));
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL));
    if (!(D > 0)) continue;
    let thisScale = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D);
    let thisMin = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D);
    if (thisMin > 0) {
      thisMin = 0;
      thisScale = f(sumXL / sumL2);
    }
    let err = 0;
    for (let i = 0; i < n; i++) {
      const diff = f(f(f(thisScale * Laux[i]!) + thisMin) - f(x[i]!));
      err = f(err + f(weights[i]! * f(diff * diff)));
    }
    if (err < bestError) {
      L.set(Laux);
      bestError = err;
      scale = thisScale;
      min = thisMin;
    }
  }
  return { scale, min: -min };
}

/** the 6-bit (sc, m) of sub-block j from a block's 12 scale bytes (get_scale_min_k4) */
export function scaleMinK4(j: number, q: Uint8Array, o = 0): [number, number] {
  if (j < 4) return [q[o + j]! & 63, q[o + j + 4]! & 63];
  return [(q[o + j + 4]! & 0xf) | ((q[o + j - 4]! >> 6) << 4), (q[o + j + 4]! >> 4) | ((q[o + j]! >> 6) << 4)];
}

/** write sub-block j's 6-bit (sc, m) into the 12 scale bytes at q[o..] (zeroed beforehand) */
function packScaleMin(j: number, sc: number, m: number, q: Uint8Array, o: number): void {
  if (j < 4) {
    q[o + j] |= sc;
    q[o + j + 4] |= m;
  } else {
    q[o + j + 4] = (sc & 0xf) | ((m & 0xf) << 4);
    q[o + j - 4] |= (sc >> 4) << 6;
    q[o + j] |= (m >> 4) << 6;
  }
}

/** byte of weight i (0..255) of a block, from the block start, and whether it is the high nibble */
export function q4kNibble(i: number): { byte: number; high: boolean } {
  const within = i & 63;
  return { byte: 16 + (i >> 6) * 32 + (within & 31), high: within >= 32 };
}

/**
 * Per sub-block step d·sc and offset dmin·m of the block at bytes[o..] (what dequantisation
 * uses): value of code q in sub-block j = step[j]·q − offset[j].
 */
export function q4kGrid(bytes: Uint8Array, o: number, step: Float32Array, offset: Float32Array): void {
  const d = f16Decode(bytes[o]! | (bytes[o + 1]! << 8));
  const dmin = f16Decode(bytes[o + 2]! | (bytes[o + 3]! << 8));
  for (let j = 0; j < 8; j++) {
    const [sc, m] = scaleMinK4(j, bytes, o + 4);
    step[j] = f(d * sc);
    offset[j] = f(dmin * m);
  }
}

/**
 * Quantise one super-block x [256] into dst[o .. o+144): d, dmin and the scales from the
 * sub-block fits, then the codes on the final grid.
 */
export function quantizeQ4KBlock(x: ArrayLike<number>, dst: Uint8Array, o: number): void {
  const L = new Uint8Array(Q4_K_BLOCK);
  const weights = new Float32Array(Q4_K_SUB);
  const scales = new Float32Array(8);
  const mins = new Float32Array(8);
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < 8; j++) {
    const sub = Array.from({ length: Q4_K_SUB }, (_, l) => f(x[Q4_K_SUB * j + l]!));
    let sumX2 = 0;
    for (const v of sub) sumX2 = f(sumX2 + f(v * v));
    const avX = f(Math.sqrt(f(sumX2 / Q4_K_SUB)));
    for (let l = 0; l < Q4_K_SUB; l++) weights[l] = f(avX + Math.abs(sub[l]!));
    const r = makeQkx2Quants(sub, weights, L.subarray(Q4_K_SUB * j, Q4_K_SUB * (j + 1)));
    scales[j] = r.scale;
    mins[j] = r.min;
    if (r.scale > maxScale) maxScale = r.scale;
    if (r.min > maxMin) maxMin = r.min;
  }
  dst.fill(0, o, o + Q4_K_BYTES);
  const invScale = maxScale > 0 ? f(63 / maxScale) : 0;
  const invMin = maxMin > 0 ? f(63 / maxMin) : 0;
  for (let j = 0; j < 8; j++) {
    const ls = Math.min(63, nearestInt(f(invScale * scales[j]!)));
    const lm = Math.min(63, nearestInt(f(invMin * mins[j]!)));
    packScaleMin(j, ls, lm, dst, o + 4);
  }
  const hd = f16Encode(f(maxScale / 63));
  const hm = f16Encode(f(maxMin / 63));
  dst[o] = hd & 0xff;
  dst[o + 1] = hd >> 8;
  dst[o + 2] = hm & 0xff;
  dst[o + 3] = hm >> 8;
  const step = new Float32Array(8);
  const offset = new Float32Array(8);
  q4kGrid(dst, o, step, offset);
  for (let j = 0; j < 8; j++) {
    if (step[j] === 0) continue; // codes stay as the sub-block fit left them (their value is −offset)
    for (let i = Q4_K_SUB * j; i < Q4_K_SUB * (j + 1); i++) {
      L[i] = Math.max(0, Math.min(15, nearestInt(f(f(f(x[i]!) + offset[j]!) / step[j]!))));
    }
  }
  for (let i = 0; i < Q4_K_BLOCK; i++) {
    const { byte, high } = q4kNibble(i);
    dst[o + byte] |= high ? L[i]! << 4 : L[i]!;
  }
}

/** llama.cpp's Q4_K bytes of x (length a multiple of 256) */
export function quantizeQ4_K(x: Float32Array): Uint8Array {
  if (x.length % Q4_K_BLOCK !== 0) throw new Error(`quantizeQ4_K: ${x.length} values is not a multiple of ${Q4_K_BLOCK}`);
  const nb = x.length / Q4_K_BLOCK;
  const out = new Uint8Array(nb * Q4_K_BYTES);
  for (let b = 0; b < nb; b++) quantizeQ4KBlock(x.subarray(b * Q4_K_BLOCK, (b + 1) * Q4_K_BLOCK), out, b * Q4_K_BYTES);
  return out;
}

/** w = d·sc·q − dmin·m per sub-block of each Q4_K block */
export function dequantizeQ4_K(bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  const step = new Float32Array(8);
  const offset = new Float32Array(8);
  for (let b = 0; b < n / Q4_K_BLOCK; b++) {
    const o = b * Q4_K_BYTES;
    q4kGrid(bytes, o, step, offset);
    for (let i = 0; i < Q4_K_BLOCK; i++) {
      const { byte, high } = q4kNibble(i);
      const q = high ? bytes[o + byte]! >> 4 : bytes[o + byte]! & 0xf;
      const j = i >> 5;
      out[b * Q4_K_BLOCK + i] = step[j]! * q - offset[j]!;
    }
  }
  return out;
}
