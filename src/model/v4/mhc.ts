// mHC (manifold-constrained hyper-connections): hc residual streams X [T, hc, d].
//   before a sublayer: y = Σ_i pre_i X_i, with pre / post / the Sinkhorn-normalised comb from
//   m = fn·flat(X) / rms(flat(X));   after it: X'_j = post_j·F + Σ_i comb[i][j]·X_i.
//   at the end (hc_head): Σ_i pre_i X_i with pre = σ(m·scale + base) + hc_eps.
import type { F32 } from '../../backend/ops.js';
import type { V4Config } from '../config.js';
import type { Graph } from './graph.js';
import type { HcWeights } from './weights.js';

export async function hcPre(g: Graph, W: HcWeights, X: F32, T: number, c: V4Config): Promise<{ y: F32; post: F32; comb: F32 }> {
  return g.mhcPre(X, W.fn, W.scale, W.base, T, c.hc_mult, c.hidden_size, c.hc_sinkhorn_iters, c.hc_eps, c.rms_norm_eps);
}

export async function hcPost(g: Graph, f: F32, X: F32, post: F32, comb: F32, T: number, c: V4Config): Promise<F32> {
  return g.mhcPost(f, X, post, comb, T, c.hc_mult, c.hidden_size);
}

export async function hcHead(g: Graph, W: HcWeights, X: F32, T: number, c: V4Config): Promise<F32> {
  return g.hcHead(X, W.fn, W.scale, W.base, T, c.hc_mult, c.hidden_size, c.hc_eps, c.rms_norm_eps);
}
