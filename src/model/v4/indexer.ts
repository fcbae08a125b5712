// The lightning indexer (ratio-4 layers): which compressed entries each query attends to.
//   q' = RoPE(wq_b·qr) [index_n_heads, index_head_dim] (no per-head norm)
//   k' = the indexer's own compressor entries (ratio 4, width index_head_dim)
//   w = weights_proj·x · index_head_dim^−½ · index_n_heads^−½
//   score[t][s] = Σ_h w[t][h]·ReLU(q'[t][h]·k'[s]) over visible s; keep the top index_topk.
// The choice is discrete: it runs untaped and no gradient flows through it; a recomputed forward
// (activation checkpointing) reuses the first forward's choice instead of making it again.
import type { F32, I32, RopeTable } from '../../backend/ops.js';
import type { V4Config } from '../config.js';
import { compress } from './compressor.js';
import type { Graph } from './graph.js';
import type { Seq } from './seq.js';
import type { IndexerWeights } from './weights.js';

/** idx [T, K]: global entry indices (into this layer's compressed entries), −1 padded. */
export async function indexerSelect(
  g: Graph, W: IndexerWeights, x: F32, qr: F32, seq: Seq, c: V4Config, m: number, table: RopeTable,
): Promise<{ idx: I32; K: number }> {
  return g.select(() => topk(g, W, x, qr, seq, c, m, table));
}

async function topk(
  g: Graph, W: IndexerWeights, x: F32, qr: F32, seq: Seq, c: V4Config, m: number, table: RopeTable,
): Promise<{ idx: I32; K: number }> {
  const u = g.untaped();
  const nh = c.index_n_heads;
  const hd = c.index_head_dim;
  const T = seq.T;
  const q = await u.rope(await u.linear(qr, W.wq_b, null, T, c.q_lora_rank, nh * hd), seq.pos, table, T, nh, hd, false, true);
  const k = await compress(u, W.compressor, null, x, seq, c, m, hd, table);
  const w = await u.linear(x, W.weights_proj, null, T, c.hidden_size, nh);
  const ws = Math.fround(Math.pow(hd, -0.5) * Math.pow(nh, -0.5));
  for (let i = 0; i < w.length; i++) w[i] *= ws;
  const kStart = new Int32Array(T);
  const kCount = new Int32Array(T);
  for (let t = 0; t < T; t++) {
    kStart[t] = k.segEntryStart[seq.segOf[t]];
    kCount[t] = Math.floor((seq.pos[t] + 1) / m);
  }
  if (k.M === 0) return { idx: new Int32Array(0), K: 0 };
  return g.be.indexerTopk(q, k.ent, w, kStart, kCount, T, k.M, nh, hd, c.index_topk);
}
