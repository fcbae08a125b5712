// Host-side pieces both backends share, exact in plain TypeScript: the RoPE rotation, the top-k
// selection with ties toward the lower index, the router's choice of experts and weights from its
// scores, and the element-wise sum the tape accumulates gradients with.
import type { F32, I32, RopeTable } from './ops.js';

/** dst[i] += src[i] (same length) */
export function addInto(dst: F32, src: F32): void {
  for (let i = 0; i < src.length; i++) dst[i] += src[i];
}

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

/**
 * The router's choice from its scores s [N, E] (s = sqrt(softplus(x Wᵀ)), computed by the
 * backend): idx [N, k] = hashIdx (hash layers) or top-k(s + bias) with ties to the lower index;
 * weights [N, k] = s[idx] / Σ s[idx] · routeScale (the bias steers the choice, not the weights).
 */
export function routeFromScores(sc: F32, bias: F32 | null, hashIdx: I32 | null, N: number, E: number, k: number, routeScale: number): { weights: F32; idx: I32 } {
  let idx: I32;
  if (hashIdx) {
    idx = hashIdx;
  } else {
    idx = new Int32Array(N * k);
    const biased = new Float32Array(E);
    for (let n = 0; n < N; n++) {
      for (let e = 0; e < E; e++) biased[e] = sc[n * E + e]! + (bias ? bias[e]! : 0);
      topkLowerIndex(biased, 0, E, k, idx.subarray(n * k, (n + 1) * k));
    }
  }
  const weights = new Float32Array(N * k);
  for (let n = 0; n < N; n++) {
    let sum = 0;
    for (let j = 0; j < k; j++) sum += sc[n * E + idx[n * k + j]!]!;
    for (let j = 0; j < k; j++) weights[n * k + j] = (sc[n * E + idx[n * k + j]!]! / sum) * routeScale;
  }
  return { weights, idx };
}
