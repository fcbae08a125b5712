// The compressor: whole windows of m tokens pooled into one KV entry each.
//   a = wkv·x, z = wgate·x (width hd, or 2·hd when m = 4: overlapping windows)
//   entry i = Σ_window softmax(z + ape) ⊙ a   (backend op `compressor`)
//   entry ← RoPE(RMSNorm(entry)) at position i·m; entry i is visible from token (i+1)·m − 1.
import type { F32, RopeTable } from '../../backend/ops.js';
import type { V4Config } from '../config.js';
import type { Graph } from './graph.js';
import type { Seq } from './seq.js';
import type { CompressorWeights } from './weights.js';

export interface Compressed {
  /** entries [M, hd], each segment's in order */
  ent: F32;
  M: number;
  /** index of each segment's first entry */
  segEntryStart: Int32Array;
}

/** `module`: the LoRA module prefix (`layers.N.attn.compressor`), or null for no adapter. */
export async function compress(
  g: Graph, C: CompressorWeights, module: string | null, x: F32, seq: Seq, c: V4Config,
  m: number, hd: number, table: RopeTable,
): Promise<Compressed> {
  const overlap = m === 4;
  const cw = overlap ? 2 * hd : hd;
  const d = c.hidden_size;
  const segEntryStart = new Int32Array(seq.segs.length);
  let M = 0;
  seq.segs.forEach((len, s) => {
    segEntryStart[s] = M;
    M += Math.floor(len / m);
  });
  if (M === 0) return { ent: new Float32Array(0), M, segEntryStart };
  const a = await g.linear(x, C.wkv, module && `${module}.wkv`, seq.T, d, cw);
  const z = await g.linear(x, C.wgate, module && `${module}.wgate`, seq.T, d, cw);
  const pooled = await g.compressor(a, z, C.ape, seq.segs, seq.T, m, hd, overlap);
  const normed = await g.rmsnorm(pooled, C.norm, M, hd, c.rms_norm_eps);
  const pos = new Int32Array(M);
  seq.segs.forEach((len, s) => {
    for (let i = 0; i < Math.floor(len / m); i++) pos[segEntryStart[s] + i] = i * m;
  });
  const ent = await g.rope(normed, pos, table, M, 1, hd, false, true); // normed: read by the RoPE alone
  return { ent, M, segEntryStart };
}
