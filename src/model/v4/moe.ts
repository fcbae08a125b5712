// The MoE sublayer: every layer.
//   s = sqrt(softplus(gate·x)); experts = tid2eid[token] (hash layers) or top-k(s + bias);
//   w = s[idx] / Σ s[idx] · routed_scaling_factor
//   y = Σ_j w_j · expert_{idx_j}(x) + shared(x), experts clamped SwiGLU (limit swiglu_limit).
import type { ExpertWeights, F32 } from '../../backend/ops.js';
import type { V4Config } from '../config.js';
import type { Graph } from './graph.js';
import type { Seq } from './seq.js';
import type { FfnWeights } from './weights.js';

export async function moe(g: Graph, F: FfnWeights, prefix: string, x: F32, seq: Seq, c: V4Config): Promise<F32> {
  const T = seq.T;
  const d = c.hidden_size;
  const k = c.num_experts_per_tok;
  const I = c.moe_intermediate_size;
  const { weights, idx } = await moeRoute(g, F, prefix, x, seq, c);
  const routed = await g.routedExperts(x, idx, weights, F.experts, `${prefix}.ffn.experts`, T, d, I, k, c.swiglu_limit);
  const shared = await g.swiglu(x, F.shared, `${prefix}.ffn.shared_experts`, T, d, I, c.swiglu_limit);
  return g.add(routed, shared);
}

/**
 * The MoE sublayer's routing of x [T, d] (told to `g.routing`), and its expert linears' inputs
 * told to `g.linearInput`: all of `moe` but the experts' outputs.
 */
export async function moeRoute(g: Graph, F: FfnWeights, prefix: string, x: F32, seq: Seq, c: V4Config): Promise<{ weights: F32; idx: Int32Array }> {
  const T = seq.T;
  const d = c.hidden_size;
  const E = c.n_routed_experts;
  const k = c.num_experts_per_tok;
  let hashIdx: Int32Array | null = null;
  if (F.tid2eid) {
    const tid = F.tid2eid;
    hashIdx = new Int32Array(T * k);
    for (let t = 0; t < T; t++) hashIdx.set(tid.subarray(seq.ids[t] * k, (seq.ids[t] + 1) * k), t * k);
  }
  const { weights, idx } = await g.router(x, F.gate, F.bias, hashIdx, T, d, E, k, c.routed_scaling_factor);
  g.routing?.(prefix, idx, weights, T, k);
  if (g.linearInput) await observeExpertInputs(g, F, prefix, x, idx, T, c);
  return { weights, idx };
}

/**
 * The clamped SwiGLU activation of expert `mod` on x [N, d] (what its w2 reads):
 *   h = silu(min(x W1ᵀ, L)) ⊙ clamp(x W3ᵀ, −L, L)   [N, I]; no clamp when L ≤ 0; with the
 * adapter's LoRA on w1 and w3 when it has one. Recomputed with the backend's linear (the fused
 * expert ops do not hand it out).
 */
async function swigluHidden(g: Graph, w: ExpertWeights, mod: string, x: F32, N: number, d: number, I: number, L: number): Promise<F32> {
  const a = (await g.be.linearForward(x, w.w1, g.lora(`${mod}.w1`), N, d, I)).y;
  const b = (await g.be.linearForward(x, w.w3, g.lora(`${mod}.w3`), N, d, I)).y;
  const h = new Float32Array(N * I);
  for (let i = 0; i < h.length; i++) {
    let u = a[i];
    let v = b[i];
    if (L > 0) {
      u = Math.min(u, L);
      v = Math.min(Math.max(v, -L), L);
    }
    h[i] = (u / (1 + Math.exp(-u))) * v;
  }
  return h;
}

/**
 * Tell `g.linearInput` the inputs of the expert linears, which run inside fused ops: each routed
 * expert's w1/w3 get the rows routed to it (tokenIdx: their rows), its w2 their activation;
 * the shared expert's w1/w3 get x, its w2 the activation on every row.
 */
export async function observeExpertInputs(g: Graph, F: FfnWeights, prefix: string, x: F32, idx: Int32Array, T: number, c: V4Config): Promise<void> {
  const sink = g.linearInput!;
  const wants = sink.wants ?? ((): boolean => true);
  const d = c.hidden_size;
  const I = c.moe_intermediate_size;
  const k = c.num_experts_per_tok;
  const L = c.swiglu_limit;
  const rowsOf: number[][] = F.experts.map(() => []);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < k; j++) {
      const e = idx[t * k + j];
      if (e >= 0 && e < rowsOf.length && rowsOf[e]!.at(-1) !== t) rowsOf[e]!.push(t);
    }
  }
  for (let e = 0; e < F.experts.length; e++) {
    const rows = rowsOf[e]!;
    const mod = `${prefix}.ffn.experts.${e}`;
    const [w1, w3, w2] = ['w1', 'w3', 'w2'].map((w) => wants(`${mod}.${w}`));
    if (rows.length === 0 || !(w1 || w3 || w2)) continue;
    const n = rows.length;
    const tokenIdx = Int32Array.from(rows);
    const xe = new Float32Array(n * d);
    rows.forEach((t, i) => xe.set(x.subarray(t * d, (t + 1) * d), i * d));
    if (w1) sink(`${mod}.w1`, xe, n, d, tokenIdx);
    if (w3) sink(`${mod}.w3`, xe, n, d, tokenIdx);
    if (w2) sink(`${mod}.w2`, await swigluHidden(g, F.experts[e]!, mod, xe, n, d, I, L), n, I, tokenIdx);
  }
  const mod = `${prefix}.ffn.shared_experts`;
  if (wants(`${mod}.w1`)) sink(`${mod}.w1`, x, T, d, null);
  if (wants(`${mod}.w3`)) sink(`${mod}.w3`, x, T, d, null);
  if (wants(`${mod}.w2`)) sink(`${mod}.w2`, await swigluHidden(g, F.shared, mod, x, T, d, I, L), T, I, null);
}
