// The MoE sublayer: every layer.
//   s = sqrt(softplus(gate·x)); experts = tid2eid[token] (hash layers) or top-k(s + bias);
//   w = s[idx] / Σ s[idx] · routed_scaling_factor
//   y = Σ_j w_j · expert_{idx_j}(x) + shared(x), experts clamped SwiGLU (limit swiglu_limit).
import type { F32 } from '../../backend/ops.js';
import type { V4Config } from '../config.js';
import type { Graph } from './graph.js';
import type { Seq } from './seq.js';
import type { FfnWeights } from './weights.js';

export async function moe(g: Graph, F: FfnWeights, prefix: string, x: F32, seq: Seq, c: V4Config): Promise<F32> {
  const T = seq.T;
  const d = c.hidden_size;
  const E = c.n_routed_experts;
  const k = c.num_experts_per_tok;
  const I = c.moe_intermediate_size;
  let hashIdx: Int32Array | null = null;
  if (F.tid2eid) {
    const tid = F.tid2eid;
    hashIdx = new Int32Array(T * k);
    for (let t = 0; t < T; t++) hashIdx.set(tid.subarray(seq.ids[t] * k, (seq.ids[t] + 1) * k), t * k);
  }
  const { weights, idx } = await g.router(x, F.gate, F.bias, hashIdx, T, d, E, k, c.routed_scaling_factor);
  g.routing?.(prefix, idx, weights, T, k);
  const routed = await g.moe(x, idx, weights, F.experts, `${prefix}.ffn.experts`, T, d, I, k, c.swiglu_limit);
  const shared = await g.swiglu(x, F.shared, `${prefix}.ffn.shared_experts`, T, d, I, c.swiglu_limit);
  return g.add(routed, shared);
}
