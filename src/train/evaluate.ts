// Eval: the mean next-token loss (design.md loss convention) and perplexity of a model, with an
// adapter if given, over rows each run alone; with `mtp`, also the MTP block's top-1 agreement
// with the main head (model.mtpAgreement). The trainer evaluates its eval rows with it, and
// `evaluate` the first rows of a prepared dataset's eval split.
import { join } from 'node:path';
import { openDataset, type DatasetRow } from '../data/dataset.js';
import { InputError, NonFiniteError } from '../errors.js';
import type { ModelAdapter, V4Model } from '../model/v4/model.js';
import { silentSink, type Sink } from '../sink.js';

export interface EvalResult {
  loss: number;
  perplexity: number;
  /** counted (predicted) tokens */
  tokens: number;
  rows: number;
  /** with `mtp`: the MTP block's next-next-token top-1 agreement with the main head (model.mtpAgreement) */
  mtpAgreement?: number;
  mtpPairs?: number;
}

/** What an eval adds up over its rows (a distributed eval sums them across ranks). */
export interface EvalSums {
  lossSum: number;
  tokens: number;
  rows: number;
  /** MTP top-1 agreements and the pairs compared */
  agree: number;
  pairs: number;
}

/** The sums over `rows`, stopping after `maxRows`; `onRow(n)` after each. */
export async function evalSums(model: V4Model, rows: Iterable<DatasetRow>, o: { adapter?: ModelAdapter; mtp?: boolean; maxRows?: number; onRow?: (n: number) => void } = {}): Promise<EvalSums> {
  const s: EvalSums = { lossSum: 0, tokens: 0, rows: 0, agree: 0, pairs: 0 };
  const max = o.maxRows ?? Infinity;
  for (const row of rows) {
    if (s.rows >= max) break;
    // one trunk forward gives the loss and, with mtp, the agreement
    const { loss: r, agreement: a } = await model.evalRow(row.input_ids, row.loss_mask, { segments: row.segments, adapter: o.adapter, mtp: o.mtp });
    s.lossSum += r.lossSum;
    s.tokens += r.count;
    if (a) {
      s.agree += a.agree;
      s.pairs += a.pairs;
    }
    s.rows++;
    o.onRow?.(s.rows);
  }
  return s;
}

/** The mean loss (NaN when no position counts), perplexity and, with `mtp`, the agreement. */
export function evalResult(s: EvalSums, mtp: boolean): EvalResult {
  const loss = s.tokens > 0 ? s.lossSum / s.tokens : NaN;
  return { loss, perplexity: Math.exp(loss), tokens: s.tokens, rows: s.rows, ...(mtp ? { mtpAgreement: s.pairs > 0 ? s.agree / s.pairs : 0, mtpPairs: s.pairs } : {}) };
}

export interface EvaluateOptions {
  /** evaluate at most this many eval rows (default: the whole split) */
  maxRows?: number;
  adapter?: ModelAdapter;
  /** also measure the MTP block's agreement with the main head */
  mtp?: boolean;
  /** progress (`eval`, in rows) */
  sink?: Sink;
}

/** The eval over the first rows of a prepared dataset's eval split. */
export async function evaluate(model: V4Model, datasetDir: string, o: EvaluateOptions = {}): Promise<EvalResult> {
  const ds = openDataset(datasetDir);
  const total = Math.min(ds.rowCount('eval'), o.maxRows ?? Infinity);
  if (total === 0) throw new InputError(`${join(datasetDir, 'manifest.json')}: the eval split is empty (raise data.eval_fraction)`);
  const bar = (o.sink ?? silentSink).progress('eval', total, 'rows');
  const s = await evalSums(model, ds.rows('eval'), { adapter: o.adapter, mtp: o.mtp, maxRows: total, onRow: (n) => bar.update(n) });
  bar.stop();
  if (s.tokens === 0) throw new InputError(`${datasetDir}: no eval position counts (every loss_mask target is 0)`);
  const r = evalResult(s, o.mtp === true);
  if (!Number.isFinite(r.loss)) throw new NonFiniteError(`eval: the loss over ${s.tokens} tokens of ${datasetDir} is ${r.loss} (the model${o.adapter ? ' or the adapter' : ''} holds or produces non-finite values)`);
  return r;
}
