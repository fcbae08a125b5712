// Data parallel: the step's micro-batches split across ranks, gradients summed once per step.
//
// The global batch is the recipe's: batch_rows × grad_accum rows per step, whatever the world
// size. Every rank draws the same row order (DataOrder: seed, epoch, cursor) and runs its own
// contiguous share of the step's grad_accum micro-batches: rank r of P runs micro-batches
// r·m … (r+1)·m − 1, m = grad_accum / P. Each micro-batch b is packed and weighted exactly as in
// one process (trainer.ts stepGradients): the step's gradient is Σ_b (c_b / C)·∇L_b with c_b
// its counted tokens and C the step's, so a P-rank run computes the 1-rank run's gradient with
// only the summation order changed, and a checkpoint resumes at any world size to the result
// the recipe's global batch defines. The counts are summed first (one scalar allreduce), the
// weighted gradients in buckets after the last micro-batch (allreduce of ≤ BUCKET floats each,
// in place over one flat buffer), with the step's loss and token sums. Every rank then clips and
// applies AdamW to identical gradients: optimizer state stays identical without being sent.
// With expert parallel and the adapter split (shard.ts), a rank holds only its routed experts'
// factors: their gradients are complete on the owner (every rank's pairs reached it), so they
// are not allreduced; with several expert-parallel groups, the ranks holding the same experts
// sum them among themselves (one alltoallv, in rank order, so they stay equal). The global
// gradient norm is then the replicated gradients' own plus the first group's expert Σ g²
// (summed by the step's scalar allreduce), the same number on every rank.
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DatasetRow } from '../data/dataset.js';
import { writeFileAtomic } from '../fsutil.js';
import type { Adapter } from '../lora/adapter.js';
import { peftKey } from '../lora/peft.js';
import type { V4Model } from '../model/v4/model.js';
import { NonFiniteError } from '../errors.js';
import { countedPositions, packRows, type EvaluateFn, type StepGradientsFn } from '../train/trainer.js';
import type { Collective } from './collective.js';
import type { ExpertParallel } from './expert-parallel.js';
import { routedExpertOf, type AdapterShards } from './shard.js';

/** Floats per allreduce bucket (16 MiB). */
export const BUCKET = 4 << 20;

/** The file rank 0 writes one line per step to: bytes moved and tokens dispatched. */
export const DISTRIBUTED_LOG = 'distributed-log.jsonl';

/** The micro-batches rank `rank` of `size` runs of a step of `gradAccum`. */
export function microBatchesOf(rank: number, size: number, gradAccum: number): number[] {
  const m = gradAccum / size;
  if (!Number.isInteger(m)) throw new RangeError(`train.grad_accum (${gradAccum}) must be a multiple of the ${size} data-parallel ranks`);
  return Array.from({ length: m }, (_, i) => rank * m + i);
}

/** One step's traffic, summed over ranks (rank 0 logs it). */
export interface StepTraffic {
  step: number;
  /** gradient synchronisation payload per rank: the allreduce (and, with several expert-parallel groups, the expert sums) */
  allreduce_bytes: number;
  /** expert-parallel alltoallv bytes sent, all ranks together */
  alltoallv_bytes: number;
  /** (token, expert) pairs sent to another rank / computed where they were, all ranks together */
  pairs_sent: number;
  pairs_kept: number;
  /** tokens fed forward, all ranks together */
  tokens: number;
  /** expert parallel: which rank holds which routed experts */
  placement?: string;
  /** LoRA values each rank holds (and as many AdamW moment pairs), by rank */
  lora_values_held?: number[];
  /** train rows each rank read from the shards for this step, and their bytes (a row reader was given) */
  rows_read?: number[];
  bytes_read?: number[];
}

export interface DataParallelOptions {
  collective: Collective;
  expert: ExpertParallel | null;
  /** rank 0 appends one StepTraffic line per step here (null: nowhere) */
  logDir: string | null;
  /** the step the run starts at (a resume's), to number the log lines */
  startStep: number;
  /** set when each rank holds only its routed experts' factors (expert parallel, shard.ts) */
  shards?: AdapterShards | null;
  /** the train split's row reader (data/dataset.ts RowReader): what it read per step is logged */
  reads?: { readonly stats: { readonly rows: number; readonly bytes: number } } | null;
}

/** Σ x² in float64. */
function sumSq(x: Float32Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]! * x[i]!;
  return s;
}

/**
 * held ← Σ over the ranks holding the same routed experts (one per expert-parallel group) of
 * their `held`, summed in rank order on each of them.
 */
async function sumOverGroups(c: Collective, ep: number, held: Float32Array): Promise<void> {
  const peers = Array.from({ length: c.size }, (_, q) => (q % ep === c.rank % ep ? held.length : 0));
  const G = c.size / ep;
  const send = new Float32Array(G * held.length);
  for (let g = 0; g < G; g++) send.set(held, g * held.length);
  const { recv } = await c.alltoallv(send, peers);
  held.fill(0);
  for (let g = 0; g < G; g++) for (let i = 0; i < held.length; i++) held[i] += recv[g * held.length + i]!;
}

/** Keep the log lines of steps ≤ step (a resume drops what came after its checkpoint). */
function truncateLog(path: string, step: number): void {
  if (!existsSync(path)) {
    writeFileAtomic(path, '');
    return;
  }
  const keep = readFileSync(path, 'utf8').split('\n').filter((l) => {
    try {
      return (JSON.parse(l) as { step?: number }).step! <= step;
    } catch {
      return false;
    }
  });
  writeFileAtomic(path, keep.length ? `${keep.join('\n')}\n` : '');
}

/** The trainer's step-gradient function for this rank (see the file comment). */
export function dataParallelGradients(o: DataParallelOptions): StepGradientsFn {
  const c = o.collective;
  const ep = o.expert;
  let step = o.startStep;
  const shards = o.shards ?? null;
  const logPath = o.logDir !== null && c.rank === 0 ? join(o.logDir, DISTRIBUTED_LOG) : null;
  if (logPath) truncateLog(logPath, step);
  const reads = o.reads ?? null;
  let readBefore = { rows: reads?.stats.rows ?? 0, bytes: reads?.stats.bytes ?? 0 };
  return async (model: V4Model, adapter: Adapter, micro: readonly (readonly DatasetRow[])[], checkpointing = false, dropoutSeed = () => 0, mtpWeight = 0, queryChunk = 0) => {
    step++;
    const mine = microBatchesOf(c.rank, c.size, micro.length);
    const packed = mine.map((b) => {
      const p = packRows(micro[b]!);
      return { b, ...p, count: countedPositions(p.ids, p.mask, p.segments) };
    });
    const counts = Float64Array.of(packed.reduce((n, mb) => n + mb.count, 0));
    await c.allreduceSum(counts);
    const count = counts[0]!;
    // every factor's gradient, a view into one of two flat buffers, in the adapter's module
    // order: `flat` allreduced over every rank; `held` (split adapter) this rank's routed experts
    const split = (m: string) => shards !== null && routedExpertOf(m) !== null;
    if (shards) {
      const other = adapter.modules().find((m) => !shards.holds(m));
      if (other) throw new RangeError(`expert parallel: rank ${c.rank} holds LoRA factors of ${other}, another rank's expert (create the adapter with the run's holds())`);
    }
    let n = 0;
    let nHeld = 0;
    for (const m of adapter.modules()) {
      const len = adapter.factors(m)!.A.length + adapter.factors(m)!.B.length;
      if (split(m)) nHeld += len;
      else n += len;
    }
    const flat = new Float32Array(n);
    const held = new Float32Array(nHeld);
    const grads = new Map<string, Float32Array>();
    const expertKey = new Set<string>();
    let off = 0;
    let offHeld = 0;
    for (const m of adapter.modules()) {
      const f = adapter.factors(m)!;
      for (const [which, len] of [['A', f.A.length], ['B', f.B.length]] as const) {
        const k = peftKey(m, which);
        if (split(m)) {
          grads.set(k, held.subarray(offHeld, offHeld + len));
          offHeld += len;
        } else {
          grads.set(k, flat.subarray(off, off + len));
          off += len;
        }
        if (ep && routedExpertOf(m) !== null) expertKey.add(k);
      }
    }
    const sums = new Float64Array(4); // lossSum, tokens, mtpLossSum, mtpCount
    const before = c.traffic.bytes;
    if (ep) Object.assign(ep.stats, { pairsSent: 0, pairsKept: 0, pairsComputed: 0 });
    for (const mb of packed) {
      if (count === 0) break;
      // with expert parallel every rank must take part in every forward (its experts serve the
      // others): a micro-batch without a counted token runs with weight 0 on a stand-in mask
      if (mb.count === 0 && !ep) continue;
      const w = mb.count / count;
      const mask = mb.count === 0 ? new Uint8Array(mb.mask.length).fill(1) : mb.mask;
      if (ep) ep.gradScale = w;
      const r = await model.lossAndGrads(mb.ids, mask, { segments: mb.segments, adapter, checkpointing, dropoutSeed: dropoutSeed(mb.b), mtpWeight, queryChunk });
      if (mb.count > 0) {
        sums[0] += r.lossSum;
        sums[1] += mb.ids.length;
        sums[2] += r.mtp?.lossSum ?? 0;
        sums[3] += r.mtp?.count ?? 0;
      }
      for (const [k, g] of r.grads) {
        const a = grads.get(k)!;
        // routed experts' gradients arrive already weighted (expert-parallel.ts gradScale)
        const wk = expertKey.has(k) ? 1 : w;
        if (wk === 0) continue;
        for (let i = 0; i < g.length; i++) a[i] += wk * g[i]!;
      }
    }
    const dispatched = c.traffic.bytes - before;
    const beforeReduce = c.traffic.bytes;
    if (count > 0) for (let s = 0; s < flat.length; s += BUCKET) await c.allreduceSum(flat.subarray(s, Math.min(flat.length, s + BUCKET)));
    if (count > 0 && shards && c.size > shards.placement.ep) await sumOverGroups(c, shards.placement.ep, held);
    // the step's sums, this step's dispatch traffic, the first group's expert Σ g², and by rank
    // what it holds and (a row reader given) the train rows and bytes it read for this step, in
    // one allreduce after the gradients'
    const P = c.size;
    const reduced = new Float64Array(8 + (reads ? 3 : 1) * P);
    reduced.set([sums[0]!, sums[1]!, sums[2]!, sums[3]!, dispatched, ep?.stats.pairsSent ?? 0, ep?.stats.pairsKept ?? 0]);
    if (shards && c.rank < shards.placement.ep) reduced[7] = sumSq(held);
    reduced[8 + c.rank] = flat.length + held.length;
    if (reads) {
      reduced[8 + P + c.rank] = reads.stats.rows - readBefore.rows;
      reduced[8 + 2 * P + c.rank] = reads.stats.bytes - readBefore.bytes;
      readBefore = { rows: reads.stats.rows, bytes: reads.stats.bytes };
    }
    await c.allreduceSum(reduced);
    if (logPath) {
      const byRank = (k: number) => Array.from(reduced.subarray(8 + k * P, 8 + (k + 1) * P));
      const line: StepTraffic = {
        step, allreduce_bytes: c.traffic.bytes - beforeReduce, alltoallv_bytes: reduced[4]!, pairs_sent: reduced[5]!, pairs_kept: reduced[6]!, tokens: reduced[1]!,
        ...(ep ? { placement: ep.placement.describe(), lora_values_held: byRank(0) } : {}),
        ...(reads ? { rows_read: byRank(1), bytes_read: byRank(2) } : {}),
      };
      appendFileSync(logPath, `${JSON.stringify(line)}\n`);
    }
    return {
      grads, lossSum: reduced[0]!, count, tokens: reduced[1]!, mtpLossSum: reduced[2]!, mtpCount: reduced[3]!,
      ...(shards ? { normSq: sumSq(flat) + reduced[7]! } : {}),
    };
  };
}

/**
 * The eval rows rank `rank` of `size` runs, as indices into the first `n` rows of the split: the
 * rank-th contiguous ⌈n/size⌉, the first `counted` of them counted. A rank short of rows is
 * padded with row n − 1, uncounted: with expert parallel every rank must run every forward, and
 * without it every rank must still take part in the eval's allreduce.
 */
export function evalShareOf(rank: number, size: number, n: number): { indices: number[]; counted: number } {
  const per = Math.ceil(n / size);
  const first = Math.min(n, rank * per);
  const counted = Math.min(n, first + per) - first;
  return { indices: Array.from({ length: per }, (_, i) => (i < counted ? first + i : n - 1)), counted };
}

/** A rank's share of the eval rows, read alone (launch.ts evalRows): the rows it runs, how many of them count, of how many. */
export interface EvalShare {
  rows: DatasetRow[];
  counted: number;
  total: number;
}

/**
 * The trainer's eval for this rank: its share of the rows (evalShareOf), the loss sums (and MTP
 * agreement counts) summed by one allreduce, so every rank gets the same result (the
 * early-stopping and best-checkpoint decisions agree). Given `share`, the rows the trainer passes
 * are the share's (each rank read only those); without it, the whole split's, cut here.
 */
export function dataParallelEvaluate(c: Collective, expert: ExpertParallel | null, share: Omit<EvalShare, 'rows'> | null = null): EvaluateFn {
  return async (model, adapter, rows, mtp) => {
    let run = rows;
    let counted = share?.counted ?? 0;
    if (!share) {
      const s = evalShareOf(c.rank, c.size, rows.length);
      run = s.indices.map((j) => rows[j]!);
      counted = s.counted;
    }
    const sums = new Float64Array(4); // lossSum, tokens, agree, pairs
    for (let i = 0; i < run.length; i++) {
      if (i >= counted && !expert) break;
      const row = run[i]!;
      const { loss: r, agreement: a } = await model.evalRow(row.input_ids, row.loss_mask, { segments: row.segments, adapter, mtp });
      if (i >= counted) continue;
      sums[0] += r.lossSum;
      sums[1] += r.count;
      sums[2] += a?.agree ?? 0;
      sums[3] += a?.pairs ?? 0;
    }
    await c.allreduceSum(sums);
    const [lossSum, tokens, agree, pairs] = sums as unknown as [number, number, number, number];
    const loss = tokens > 0 ? lossSum / tokens : NaN;
    if (tokens > 0 && !Number.isFinite(loss)) throw new NonFiniteError(`eval: the loss over ${tokens} tokens is ${loss}`);
    return { loss, perplexity: Math.exp(loss), tokens, rows: share?.total ?? rows.length, ...(mtp ? { mtpAgreement: pairs > 0 ? agree / pairs : 0, mtpPairs: pairs } : {}) };
  };
}
