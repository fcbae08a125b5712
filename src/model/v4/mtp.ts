// The MTP block (num_nextn_predict_layers = 1): the hidden state at t with the embedding of
// token t+1 predicts token t+2.
//   x = e_proj(enorm(embed(ids[t+1]))) added to every stream + h_proj(hnorm(X_t)) per stream
//   X' = block(x) (layer id num_hidden_layers: never hash-routed); logits = head(norm(hc_head(X')))
import type { F32, RopeTable, WeightHandle } from '../../backend/ops.js';
import type { V4Config } from '../config.js';
import { block } from './block.js';
import type { Graph } from './graph.js';
import { hcHead } from './mhc.js';
import type { Seq } from './seq.js';
import type { MtpWeights } from './weights.js';

/** X [T, hc, d] of the pairs' rows (seqNext: their layout, ids = the next tokens) → normed [T, d]. */
export async function mtpHidden(g: Graph, W: MtpWeights, embed: WeightHandle, X: F32, seqNext: Seq, c: V4Config, table: RopeTable): Promise<F32> {
  const T = seqNext.T;
  const d = c.hidden_size;
  const hc = c.hc_mult;
  const eps = c.rms_norm_eps;
  const e = await g.rmsnorm(await g.embedding(embed, seqNext.ids, T, d), W.enorm, T, d, eps);
  const eP = await g.linear(e, W.e_proj, null, T, d, d);
  const h = await g.rmsnorm(X, W.hnorm, T * hc, d, eps);
  const hP = await g.linear(h, W.h_proj, null, T * hc, d, d);
  const x = g.add(hP, g.repeatStreams(eP, T, hc, d));
  const Xo = await block(g, W.block, x, seqNext, c, table);
  const y = await hcHead(g, W.hcHead, Xo, T, c);
  return g.rmsnorm(y, W.norm, T, d, eps);
}
