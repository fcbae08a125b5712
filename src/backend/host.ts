// Host-side pieces of the tfjs backend that are exact in plain TypeScript: the RoPE rotation
// and the top-k selection with ties toward the lower index.
import type { F32, I32, RopeTable } from '../ops.js';

/**
 * Interleaved RoPE on the last rd dims of each head. x [N, nh, hd]; pos [N].
 * (x₂ₖ, x₂ₖ₊₁) ← (x₂ₖ·c − x₂ₖ₊₁·s, x₂ₖ·s + x₂ₖ₊₁·c), c = cos θ(pos, k), s = ±sin θ(pos, k)
 * (− when inverse). Returns a new buffer.
 */
export function ropeRotate(x: F32, pos: I32, table: RopeTable, N: number, nh: number, hd: number, inverse: boolean): F32 {
  const y = x.slice();
  const rd = table.rd;
  const half = rd / 2;
  const sign = inverse ? -1 : 1;
  for (let n = 0; n < N; n++) {
    const p = pos[n];
    if (p < 0 || p >= table.maxPos) throw new RangeError(`rope: position ${p} outside the table (0 … ${table.maxPos - 1})`);
    for (let h = 0; h < nh; h++) {
      const o = (n * nh + h) * hd + hd - rd;
      for (let k = 0; k < half; k++) {
        const c = table.cos[p * half + k];
        const s = sign * table.sin[p * half + k];
        const a = x[o + 2 * k];
        const b = x[o + 2 * k + 1];
        y[o + 2 * k] = a * c - b * s;
        y[o + 2 * k + 1] = a * s + b * c;
      }
    }
  }
  return y;
}

/**
 * Top K of scores[start … start+count−1] by value, ties toward the lower index; writes the chosen
 * indices into out (length K), −1 where count < K. Order of the chosen: by score, then index.
 */
export function topkLowerIndex(scores: F32, start: number, count: number, K: number, out: I32): void {
  const take = Math.min(K, count);
  const cand = new Int32Array(count);
  for (let i = 0; i < count; i++) cand[i] = start + i;
  if (take < count) cand.sort((a, b) => scores[b] - scores[a] || a - b);
  for (let i = 0; i < K; i++) out[i] = i < take ? cand[i] : -1;
}
