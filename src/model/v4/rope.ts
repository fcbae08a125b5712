// RoPE tables for the V4 graph, in float32 like the reference `precompute_freqs_cis`.
//
// freq_k = 1 / base^(2k/rd), k < rd/2. With YaRN (compressed layers, original_seq_len > 0):
//   low/high = the correction range of (beta_fast, beta_slow) over rd dims at original_seq_len,
//   ramp_k = clamp((k − low)/(high − low), 0, 1), smooth = 1 − ramp,
//   freq_k ← freq_k/factor·(1 − smooth_k) + freq_k·smooth_k.
// θ(p, k) = p·freq_k; every step rounded to float32 as the reference computes it.
import type { RopeTable } from '../../backend/ops.js';
import type { V4Config } from '../config.js';

export interface RopeParams {
  rd: number;
  base: number;
  /** 0 disables YaRN */
  originalSeqLen: number;
  factor: number;
  betaFast: number;
  betaSlow: number;
}

/** The layer's RoPE settings: rope_theta without YaRN when ratio = 0, else compress_rope_theta + YaRN. */
export function ropeParamsFor(c: V4Config, ratio: number): RopeParams {
  const rs = c.rope_scaling;
  if (ratio === 0 || rs === null) {
    const base = ratio === 0 ? c.rope_theta : c.compress_rope_theta;
    return { rd: c.qk_rope_head_dim, base, originalSeqLen: 0, factor: 1, betaFast: 32, betaSlow: 1 };
  }
  return {
    rd: c.qk_rope_head_dim,
    base: c.compress_rope_theta,
    originalSeqLen: rs.original_max_position_embeddings,
    factor: rs.factor,
    betaFast: rs.beta_fast,
    betaSlow: rs.beta_slow,
  };
}

/** The float32 inverse frequencies, rd/2 of them. */
export function ropeFreqs(p: RopeParams): Float32Array {
  const f = Math.fround;
  const half = p.rd / 2;
  const freqs = new Float32Array(half);
  for (let k = 0; k < half; k++) freqs[k] = f(1 / f(Math.pow(p.base, f(f(2 * k) / p.rd))));
  if (p.originalSeqLen > 0) {
    const corrDim = (rot: number): number =>
      (p.rd * Math.log(p.originalSeqLen / (rot * 2 * Math.PI))) / (2 * Math.log(p.base));
    const low = Math.max(Math.floor(corrDim(p.betaFast)), 0);
    let high = Math.min(Math.ceil(corrDim(p.betaSlow)), p.rd - 1);
    if (low === high) high += 0.001;
    for (let k = 0; k < half; k++) {
      const ramp = Math.min(Math.max(f(f(k - low) / f(high - low)), 0), 1);
      const smooth = f(1 - ramp);
      freqs[k] = f(f(f(freqs[k] / p.factor) * f(1 - smooth)) + f(freqs[k] * smooth));
    }
  }
  return freqs;
}

/** cos/sin of θ(p, k) for positions 0 … maxPos−1, float32. */
export function ropeTable(p: RopeParams, maxPos: number): RopeTable {
  const freqs = ropeFreqs(p);
  const half = p.rd / 2;
  const cos = new Float32Array(maxPos * half);
  const sin = new Float32Array(maxPos * half);
  for (let pos = 0; pos < maxPos; pos++) {
    for (let k = 0; k < half; k++) {
      const theta = Math.fround(pos * freqs[k]);
      cos[pos * half + k] = Math.cos(theta);
      sin[pos * half + k] = Math.sin(theta);
    }
  }
  return { rd: p.rd, maxPos, cos, sin };
}
