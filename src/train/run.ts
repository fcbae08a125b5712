// A whole resumable training run on disk, under `<output>/`:
//   checkpoints/step-N/   every checkpointEvery steps, at the end and when stopped (checkpoint.ts)
//   train-log.jsonl       one JSON line per step: step, loss, lr, grad_norm, tokens, loss_tokens,
//                         tokens_per_s, seconds, epoch (+ eval_loss, eval_perplexity, eval_tokens
//                         on eval steps); step 0 holds the eval of the untrained adapter
//   adapter/              the trained adapter (PEFT format), at the end
//   train.json            the summary
// A resumed run continues from a checkpoint to the same factors, bit for bit, as a run that was
// never stopped (the data order, the moments and the factors are restored exactly).
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DatasetRow } from '../data/dataset.js';
import { NonFiniteError } from '../errors.js';
import { writeFileAtomic } from '../fsutil.js';
import type { Adapter } from '../lora/adapter.js';
import { saveAdapter } from '../lora/peft.js';
import type { V4Model } from '../model/v4/model.js';
import { checkpointsDir, removeLeftovers, saveCheckpoint, type RunIdentity, type TrainCheckpoint } from './checkpoint.js';
import { Trainer, type EvalResult, type StepRecord, type TrainSettings } from './trainer.js';

export const TRAIN_LOG = 'train-log.jsonl';
export const TRAIN_SUMMARY = 'train.json';

/** How a run talks to its caller (the CLI context satisfies it). */
export interface TrainSink {
  log(line: string): void;
  progress(label: string, total: number, unit?: string): { update(done: number, note?: string): void; stop(): void };
}

export interface RunTrainingOptions {
  model: V4Model;
  /** a fresh adapter, or the checkpoint to resume from */
  start: { adapter: Adapter } | { checkpoint: TrainCheckpoint };
  train: readonly DatasetRow[];
  eval: readonly DatasetRow[];
  settings: TrainSettings;
  /** evaluate every N steps (0: only at the end) */
  evalEvery: number;
  /** checkpoint every N steps (0: only at the end) */
  checkpointEvery: number;
  output: string;
  /** what a resume must find unchanged (recorded in every checkpoint) */
  identity: RunIdentity;
  /** asked after every step; true stops the run there, with a checkpoint */
  shouldStop?: () => boolean;
}

export interface TrainResult {
  /** true when stopped by shouldStop before the last step */
  interrupted: boolean;
  step: number;
  steps: number;
  resumedFrom: number | null;
  /** mean step loss of the last step run in this session */
  lastLoss: number | null;
  /** eval of the untrained adapter (null on a resume) and at the last step */
  evalBefore: EvalResult | null;
  evalAfter: EvalResult | null;
  trainableParameters: number;
  /** this session: tokens fed forward, seconds in steps (eval and checkpoints excluded) */
  tokens: number;
  trainSeconds: number;
  tokensPerSecond: number;
  lastCheckpoint: string | null;
  adapterDir: string | null;
}

function logLine(rec: StepRecord, ev: EvalResult | null): Record<string, unknown> {
  return {
    step: rec.step,
    loss: rec.loss,
    lr: rec.lr,
    grad_norm: rec.gradNorm,
    tokens: rec.tokens,
    loss_tokens: rec.lossTokens,
    tokens_per_s: rec.seconds > 0 ? rec.tokens / rec.seconds : null,
    seconds: rec.seconds,
    epoch: rec.epoch,
    ...(ev ? { eval_loss: ev.loss, eval_perplexity: ev.perplexity, eval_tokens: ev.tokens } : {}),
  };
}

/** Keep the log lines of steps ≤ step (a resume drops what came after its checkpoint). */
function truncateLog(path: string, step: number): void {
  if (!existsSync(path)) return;
  const keep: string[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (line.trim() === '') continue;
    let rec: { step?: unknown };
    try {
      rec = JSON.parse(line) as { step?: unknown };
    } catch {
      continue; // a line cut short by a hard kill
    }
    if (typeof rec.step === 'number' && rec.step <= step) keep.push(line);
  }
  writeFileAtomic(path, keep.length ? `${keep.join('\n')}\n` : '');
}

export async function runTraining(o: RunTrainingOptions, sink: TrainSink): Promise<TrainResult> {
  const s = o.settings;
  const ckRoot = checkpointsDir(o.output);
  const logPath = join(o.output, TRAIN_LOG);
  removeLeftovers(ckRoot);
  removeLeftovers(o.output, ['adapter', TRAIN_LOG, TRAIN_SUMMARY]);
  const resumed = 'checkpoint' in o.start ? o.start.checkpoint : null;
  const adapter = resumed ? resumed.adapter : (o.start as { adapter: Adapter }).adapter;
  const trainer = new Trainer(o.model, adapter, o.train, s, resumed ? {
    state: {
      step: resumed.state.step,
      order: { epoch: resumed.state.data.epoch, cursor: resumed.state.data.cursor },
      tokensSeen: resumed.state.tokens_seen,
      lossTokensSeen: resumed.state.loss_tokens_seen,
    },
    moments: resumed.moments,
  } : undefined);
  const checkpoint = () => saveCheckpoint(ckRoot, adapter, trainer.moments, trainer.state(), s.seed, o.identity);

  let evalBefore: EvalResult | null = null;
  if (resumed) {
    truncateLog(logPath, resumed.state.step);
    sink.log(`resuming from ${resumed.dir} (step ${resumed.state.step} of ${s.steps})`);
  } else {
    writeFileAtomic(logPath, '');
    if (o.eval.length > 0) {
      evalBefore = await trainer.evaluate(o.eval);
      appendFileSync(logPath, `${JSON.stringify({ step: 0, eval_loss: evalBefore.loss, eval_perplexity: evalBefore.perplexity, eval_tokens: evalBefore.tokens })}\n`);
      sink.log(`eval before training: loss ${evalBefore.loss.toFixed(4)}, perplexity ${evalBefore.perplexity.toFixed(2)} over ${evalBefore.tokens} tokens`);
    }
  }

  let lastCheckpoint: string | null = resumed?.dir ?? null;
  let lastCheckpointStep = resumed?.state.step ?? -1;
  let lastLoss: number | null = null;
  let evalAfter: EvalResult | null = null;
  let tokens = 0;
  let trainSeconds = 0;
  let interrupted = false;
  const bar = sink.progress('train', s.steps, 'steps');
  bar.update(trainer.state().step);
  while (trainer.state().step < s.steps) {
    const rec = await trainer.step().catch((e: unknown) => {
      bar.stop();
      if (!(e instanceof NonFiniteError)) throw e;
      const kept = lastCheckpointStep >= 0 ? `the last good checkpoint, step ${lastCheckpointStep}, is kept in ${ckRoot}` : 'no checkpoint was written';
      throw new NonFiniteError(`train: ${e.message}; training stopped, ${kept}`);
    });
    tokens += rec.tokens;
    trainSeconds += rec.seconds;
    lastLoss = rec.loss;
    const last = rec.step === s.steps;
    const ev = o.eval.length > 0 && (last || (o.evalEvery > 0 && rec.step % o.evalEvery === 0)) ? await trainer.evaluate(o.eval) : null;
    if (ev) evalAfter = ev;
    appendFileSync(logPath, `${JSON.stringify(logLine(rec, ev))}\n`);
    const tps = rec.seconds > 0 ? Math.round(rec.tokens / rec.seconds) : 0;
    bar.update(rec.step, `loss ${rec.loss === null ? '—' : rec.loss.toFixed(4)} · ${tps} tok/s${ev ? ` · eval ${ev.loss.toFixed(4)}` : ''}`);
    interrupted = !last && (o.shouldStop?.() ?? false);
    if (last || interrupted || (o.checkpointEvery > 0 && rec.step % o.checkpointEvery === 0)) {
      lastCheckpoint = await checkpoint();
      lastCheckpointStep = rec.step;
    }
    if (interrupted) break;
  }
  bar.stop();
  const step = trainer.state().step;
  if (step === s.steps && lastCheckpointStep !== step) {
    lastCheckpoint = await checkpoint();
  }
  if (!interrupted && evalAfter === null && o.eval.length > 0) evalAfter = await trainer.evaluate(o.eval);
  let adapterDir: string | null = null;
  if (!interrupted) {
    adapterDir = join(o.output, 'adapter');
    await saveAdapter(adapter, adapterDir);
  }
  return {
    interrupted,
    step,
    steps: s.steps,
    resumedFrom: resumed?.state.step ?? null,
    lastLoss,
    evalBefore,
    evalAfter,
    trainableParameters: trainer.parameterCount(),
    tokens,
    trainSeconds,
    tokensPerSecond: trainSeconds > 0 ? tokens / trainSeconds : 0,
    lastCheckpoint,
    adapterDir,
  };
}
