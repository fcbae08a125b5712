// Eval over a prepared dataset: the mean next-token loss (design.md loss convention) and
// perplexity of a model, with an adapter if given, over the first rows of the eval split; with
// `mtp`, also the MTP block's top-1 agreement with the main head (model.mtpAgreement).
import { join } from 'node:path';
import { openDataset } from '../data/dataset.js';
import { InputError, NonFiniteError } from '../errors.js';
import type { ModelAdapter, V4Model } from '../model/v4/model.js';
import { silentSink, type Sink } from '../sink.js';
import type { EvalResult } from './trainer.js';

export type { EvalResult } from './trainer.js';

export interface EvaluateOptions {
  /** evaluate at most this many eval rows (default: the whole split) */
  maxRows?: number;
  adapter?: ModelAdapter;
  /** also measure the MTP block's agreement with the main head */
  mtp?: boolean;
  /** progress (`eval`, in rows) */
  sink?: Sink;
}

export async function evaluate(model: V4Model, datasetDir: string, o: EvaluateOptions = {}): Promise<EvalResult> {
  const ds = openDataset(datasetDir);
  const total = Math.min(ds.rowCount('eval'), o.maxRows ?? Infinity);
  if (total === 0) throw new InputError(`${join(datasetDir, 'manifest.json')}: the eval split is empty (raise data.eval_fraction)`);
  const bar = (o.sink ?? silentSink).progress('eval', total, 'rows');
  const opts = { adapter: o.adapter };
  let lossSum = 0;
  let tokens = 0;
  let rows = 0;
  let agree = 0;
  let pairs = 0;
  for (const row of ds.rows('eval')) {
    if (rows >= total) break;
    const r = await model.loss(row.input_ids, row.loss_mask, { ...opts, segments: row.segments });
    lossSum += r.lossSum;
    tokens += r.count;
    if (o.mtp) {
      const a = await model.mtpAgreement(row.input_ids, { ...opts, segments: row.segments });
      agree += a.agree;
      pairs += a.pairs;
    }
    rows++;
    bar.update(rows);
  }
  bar.stop();
  if (tokens === 0) throw new InputError(`${datasetDir}: no eval position counts (every loss_mask target is 0)`);
  const loss = lossSum / tokens;
  if (!Number.isFinite(loss)) throw new NonFiniteError(`eval: the loss over ${tokens} tokens of ${datasetDir} is ${loss} (the model${o.adapter ? ' or the adapter' : ''} holds or produces non-finite values)`);
  return { loss, perplexity: Math.exp(loss), tokens, rows, ...(o.mtp ? { mtpAgreement: pairs > 0 ? agree / pairs : 0, mtpPairs: pairs } : {}) };
}
