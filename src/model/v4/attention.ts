// Attention: one shared KV head over a sliding window plus compressed memory, with a sink.
//   qr = q_norm(wq_a·x); q = RoPE(rms(wq_b·qr) per head)        [T, H, hd]
//   kv = RoPE(kv_norm(wkv·x))                                     [T, hd] (key = value)
//   keys of query t: raw kv at t−window+1 … t, and compressed entries i < (t+1) div m
//     (ratio 4: only the indexer's top-k of those); all inside t's segment
//   o = Σ softmax(q·k·hd^−½ ∪ sink)·kv; o ← RoPE⁻¹(o) at t
//   out = wo_b·(wo_a per group of heads)(o)
import type { F32, I32, RopeTable } from '../../backend/ops.js';
import type { V4Config } from '../config.js';
import { compress } from './compressor.js';
import type { Graph } from './graph.js';
import { indexerSelect } from './indexer.js';
import type { Seq } from './seq.js';
import type { AttentionWeights } from './weights.js';

/**
 * The key rows of every query: [T, K] indices into [kv rows (T) ; compressed entries], −1 padded.
 * Window keys first, then compressed ones (`sel`: the indexer's choice [T, Ks] of entry indices,
 * or null for every visible entry).
 */
export function attentionIndex(
  seq: Seq, window: number, m: number, segEntryStart: Int32Array, sel: { idx: I32; K: number } | null,
): { idx: I32; K: number } {
  const T = seq.T;
  const Kw = Math.min(window, seq.maxLen);
  let Kc = 0;
  if (m > 0) Kc = sel ? sel.K : Math.floor(seq.maxLen / m);
  const K = Kw + Kc;
  const idx = new Int32Array(T * K).fill(-1);
  for (let t = 0; t < T; t++) {
    const p = seq.pos[t];
    const row = idx.subarray(t * K, (t + 1) * K);
    const first = Math.max(0, p - window + 1);
    for (let j = 0; j <= p - first; j++) row[j] = t - p + first + j;
    if (m === 0) continue;
    if (sel) {
      for (let j = 0; j < Kc; j++) {
        const e = sel.idx[t * Kc + j];
        row[Kw + j] = e < 0 ? -1 : T + e;
      }
    } else {
      const visible = Math.floor((p + 1) / m);
      const e0 = segEntryStart[seq.segOf[t]];
      for (let j = 0; j < visible; j++) row[Kw + j] = T + e0 + j;
    }
  }
  return { idx, K };
}

/** The attention sublayer of block `prefix` on its normed input x [T, d] → [T, d]. */
export async function attention(
  g: Graph, A: AttentionWeights, prefix: string, x: F32, seq: Seq, c: V4Config, ratio: number, table: RopeTable,
): Promise<F32> {
  const T = seq.T;
  const d = c.hidden_size;
  const hd = c.head_dim;
  const eps = c.rms_norm_eps;
  const mod = `${prefix}.attn`;
  const qr = await g.rmsnorm(await g.linear(x, A.wq_a, `${mod}.wq_a`, T, d, c.q_lora_rank), A.q_norm, T, c.q_lora_rank, eps);
  const kvRaw = await g.rmsnorm(await g.linear(x, A.wkv, `${mod}.wkv`, T, d, hd), A.kv_norm, T, hd, eps);
  const kv = await g.rope(kvRaw, seq.pos, table, T, 1, hd, false, true);

  let keys = kv;
  let rows = T;
  let segEntryStart: Int32Array = new Int32Array(seq.segs.length);
  let sel: { idx: I32; K: number } | null = null;
  if (ratio > 0 && A.compressor) {
    const comp = await compress(g, A.compressor, `${mod}.compressor`, x, seq, c, ratio, hd, table);
    segEntryStart = comp.segEntryStart;
    if (comp.M > 0) {
      keys = g.concat([kv, comp.ent]);
      rows = T + comp.M;
    }
    if (A.indexer) sel = await indexerSelect(g, A.indexer, x, qr, seq, c, ratio, table);
  }
  const { idx, K } = attentionIndex(seq, c.sliding_window, ratio, segEntryStart, sel);
  const chunk = g.queryChunk;
  if (chunk > 0 && T > chunk) return chunkedQueryPath(g, A, mod, qr, keys, idx, K, rows, seq, c, table, chunk);
  return queryPath(g, A, mod, qr, keys, idx, seq.pos, T, rows, K, c, table);
}

/**
 * The per-query part of attention on n query rows: q from qr [n, q_lora] (wq_b, a weightless
 * RMSNorm per head, RoPE at positions pos [n]), sparse attention over all of `keys` [M, hd] along
 * idx [n, K], RoPE⁻¹, and the output projections → [n, d]. Row-wise but for the keys.
 */
async function queryPath(
  g: Graph, A: AttentionWeights, mod: string, qr: F32, keys: F32, idx: I32, pos: I32, n: number, M: number, K: number,
  c: V4Config, table: RopeTable,
): Promise<F32> {
  const H = c.num_attention_heads;
  const hd = c.head_dim;
  const q0 = await g.linear(qr, A.wq_b, `${mod}.wq_b`, n, c.q_lora_rank, H * hd);
  // the rmsnorm output is read by the RoPE alone (rmsnorm keeps its input): rotated in place
  const q = await g.rope(await g.rmsnorm(q0, null, n * H, hd, c.rms_norm_eps), pos, table, n, H, hd, false, true);
  const o = await g.attention(q, keys, A.attn_sink, idx, n, H, hd, M, K, Math.pow(hd, -0.5));
  const oc = await g.rope(o, pos, table, n, H, hd, true, true); // o: read by the RoPE alone (attention's saved never holds it)
  const G = c.o_groups;
  const oa = await g.groupedLinear(oc, A.wo_a, `${mod}.wo_a`, n, G, (H * hd) / G, c.o_lora_rank);
  return g.linear(oa, A.wo_b, `${mod}.wo_b`, n, G * c.o_lora_rank, c.hidden_size);
}

/**
 * `queryPath` over chunks of `chunk` query rows, so that its [rows, H·hd] tensors (q before and
 * after the norm, o and their gradients: 4·H·hd floats a row each) exist for one chunk at a time.
 * Taped, it is one record over (qr, keys): its backward runs each chunk's forward again on a fresh
 * tape and replays it at once, the dropout masks drawn at the chunk's model rows, so the
 * gradients are the whole-sequence path's up to the order of the sums over rows (LoRA factors,
 * keys). The price is one more forward of the path in the backward; under activation
 * checkpointing the block's recompute takes y from its first forward (kept in the choice log,
 * d floats a row), so the path still runs twice in all, as it does unchunked.
 */
async function chunkedQueryPath(
  g: Graph, A: AttentionWeights, mod: string, qr: F32, keys: F32, idx: I32, K: number, M: number, seq: Seq,
  c: V4Config, table: RopeTable, chunk: number,
): Promise<F32> {
  const T = seq.T;
  const d = c.hidden_size;
  const qd = c.q_lora_rank;
  const run = (cg: Graph, t0: number, t1: number): Promise<F32> =>
    queryPath(cg, A, mod, qr.subarray(t0 * qd, t1 * qd), keys, idx.subarray(t0 * K, t1 * K), seq.pos.subarray(t0, t1), t1 - t0, M, K, c, table);
  // a checkpointed block's recompute takes y as its first forward computed it (the same bits):
  // the backward below reruns every chunk anyway
  let y: F32;
  if (g.choices?.replaying) {
    y = g.choices.nextOutput(T * d);
  } else {
    y = new Float32Array(T * d);
    for (let t0 = 0; t0 < T; t0 += chunk) y.set(await run(g.atRows(null, t0), t0, Math.min(T, t0 + chunk)), t0 * d);
    g.choices?.keepOutput(y);
  }
  const tape = g.tape;
  tape?.record([qr, keys], [y], async ([dy]) => {
    const dqr = new Float32Array(qr.length);
    const dkeys = new Float32Array(keys.length);
    for (let t0 = 0; t0 < T; t0 += chunk) {
      const t1 = Math.min(T, t0 + chunk);
      const sub = tape.child();
      const cg = g.atRows(sub, t0);
      const qrRows = qr.subarray(t0 * qd, t1 * qd);
      const yc = await queryPath(cg, A, mod, qrRows, keys, idx.subarray(t0 * K, t1 * K), seq.pos.subarray(t0, t1), t1 - t0, M, K, c, table);
      const grads = await sub.backward([[yc, dy.subarray(t0 * d, t1 * d)]]);
      const gq = grads.get(qrRows);
      if (gq) dqr.set(gq, t0 * qd);
      const gk = grads.get(keys);
      if (gk) for (let i = 0; i < gk.length; i++) dkeys[i] += gk[i];
    }
    return [dqr, dkeys];
  });
  return y;
}
