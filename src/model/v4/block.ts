// One V4 block: mHC around attention, then mHC around the MoE.
//   (y, post, comb) = hc_pre(X); X ← hc_post(attn(attn_norm(y)), X, post, comb)
//   (y, post, comb) = hc_pre(X); X ← hc_post(moe(ffn_norm(y)), X, post, comb)
import type { F32, RopeTable } from '../../backend/ops.js';
import type { V4Config } from '../config.js';
import { attention } from './attention.js';
import type { Graph } from './graph.js';
import { hcPost, hcPre } from './mhc.js';
import { moe } from './moe.js';
import type { Seq } from './seq.js';
import type { BlockWeights } from './weights.js';

export async function block(g: Graph, B: BlockWeights, X: F32, seq: Seq, c: V4Config, table: RopeTable): Promise<F32> {
  const T = seq.T;
  const d = c.hidden_size;
  const eps = c.rms_norm_eps;
  const a = await hcPre(g, B.hcAttn, X, T, c);
  const ax = await g.rmsnorm(a.y, B.attnNorm, T, d, eps);
  const ao = await attention(g, B.attn, B.prefix, ax, seq, c, B.ratio, table);
  const X1 = await hcPost(g, ao, X, a.post, a.comb, T, c);
  const f = await hcPre(g, B.hcFfn, X1, T, c);
  const fx = await g.rmsnorm(f.y, B.ffnNorm, T, d, eps);
  const fo = await moe(g, B.ffn, B.prefix, fx, seq, c);
  return hcPost(g, fo, X1, f.post, f.comb, T, c);
}
