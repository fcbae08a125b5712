// train.json: the summary the train stage writes at the end of a run (and prints with --json),
// which `run` reuses and the report reads.
import { join } from 'node:path';
import type { LoadedRecipe } from '../recipe/load.js';
import { TRAIN_LOG, type Sample, type TrainResult } from './run.js';
import type { EvalResult } from './evaluate.js';

export interface TrainSummary {
  ok: boolean;
  /** true when `run` found a finished run with unchanged settings and did not train */
  reused: boolean;
  /** (absent in train.json of v4tune before early stopping) */
  stopped_early?: boolean;
  recipe: string;
  output: string;
  backend: string;
  interrupted: boolean;
  step: number;
  steps: number;
  resumed_from: number | null;
  /** (absent before resumes were recorded) */
  resumes?: number[];
  extended_from?: number | null;
  epochs: number;
  trainable_parameters: number;
  train_rows: number;
  eval_rows: number;
  last_loss: number | null;
  eval_before: EvalResult | null;
  eval_after: EvalResult | null;
  best?: { step: number; eval_loss: number; checkpoint: string | null } | null;
  samples: Sample[];
  tokens: number;
  train_seconds: number;
  wall_seconds: number;
  tokens_per_s: number;
  checkpoint: string | null;
  adapter: string | null;
  log: string;
}

export function trainSummary(recipe: LoadedRecipe, r: TrainResult, backend: string, trainRows: number, evalRows: number): TrainSummary {
  return {
    ok: !r.interrupted,
    reused: false,
    stopped_early: r.stoppedEarly,
    recipe: recipe.file,
    output: recipe.output,
    backend,
    interrupted: r.interrupted,
    step: r.step,
    steps: r.steps,
    resumed_from: r.resumedFrom,
    resumes: r.resumes,
    extended_from: r.extendedFrom,
    epochs: (r.step * recipe.train.batch_rows * recipe.train.grad_accum) / trainRows,
    trainable_parameters: r.trainableParameters,
    train_rows: trainRows,
    eval_rows: evalRows,
    last_loss: r.lastLoss,
    eval_before: r.evalBefore,
    eval_after: r.evalAfter,
    best: r.best ? { step: r.best.step, eval_loss: r.best.evalLoss, checkpoint: r.best.checkpoint } : null,
    samples: r.samples,
    tokens: r.tokens,
    train_seconds: r.trainSeconds,
    wall_seconds: r.wallSeconds,
    tokens_per_s: r.tokensPerSecond,
    checkpoint: r.lastCheckpoint,
    adapter: r.adapterDir,
    log: join(recipe.output, TRAIN_LOG),
  };
}
