// A whole resumable training run on disk, under `<output>/`:
//   checkpoints/step-N/   every checkpointEvery steps, at the end, when stopped, and at each new
//                         best eval when keepCheckpoints or early stopping is on (checkpoint.ts);
//                         keepCheckpoints > 0 keeps the newest N and the best by eval loss
//   train-log.jsonl       one JSON line per step: step, loss, lr, grad_norm, tokens, loss_tokens,
//                         tokens_per_s, seconds, elapsed, epoch (+ eval_loss, eval_perplexity,
//                         eval_tokens and samples on eval steps); step 0 holds the eval of the
//                         untrained adapter
//   tensorboard/          TensorBoard event files (logTo includes `tensorboard`): train/loss,
//                         train/lr, train/grad_norm, train/tokens_per_s, eval/loss, samples
//   adapter/              the trained adapter (PEFT format), at the end
//   train.json            the summary
// A resumed run continues from a checkpoint to the same factors, bit for bit, as a run that was
// never stopped (the data order, the moments and the factors are restored exactly), and reports
// the whole run: each checkpoint carries the run's record (RunProgress: the step-0 eval, time,
// the best eval), so tokens and time add up over every session. A resume may lengthen the run
// (more steps): the schedule is then the new length's.
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateTokens } from '../model/generate.js';
import type { DatasetRow } from '../data/dataset.js';
import { NonFiniteError } from '../errors.js';
import { writeFileAtomic } from '../fsutil.js';
import { RUN_FILES, runPath } from '../recipe/layout.js';
import { silentSink, type Sink } from '../sink.js';
import type { Adapter } from '../lora/adapter.js';
import { saveAdapter, type AdapterLayout } from '../lora/peft.js';
import type { V4Model } from '../model/v4/model.js';
import { checkpointsDir, pruneCheckpoints, removeLeftovers, saveCheckpoint, type RunEval, type RunIdentity, type RunProgress, type TrainCheckpoint } from './checkpoint.js';
import { learningRate } from './schedule.js';
import { EventWriter } from './tensorboard.js';
import type { Moments } from './adamw.js';
import { Trainer, type EvalResult, type EvaluateFn, type StepGradientsFn, type StepRecord, type TrainRows, type TrainSettings } from './trainer.js';

export const TRAIN_LOG = RUN_FILES.trainLog;
export const TRAIN_SUMMARY = RUN_FILES.trainSummary;

/** A prompt whose greedy continuation is logged at every eval (`train.eval_prompts`). */
export interface SamplePrompt {
  /** how the prompt is shown (the text, or the user message of a chat prompt) */
  label: string;
  ids: number[];
}

export interface SampleSettings {
  prompts: SamplePrompt[];
  maxNewTokens: number;
  stopId: number;
  decode(ids: readonly number[]): string;
}

export interface Sample {
  prompt: string;
  completion: string;
}

/**
 * An adapter held in parts by the ranks of a run (src/distributed/shard.ts): every rank calls
 * gather at the same points (each checkpoint, the final adapter); the writing rank gets the
 * complete adapter and moments, the others null.
 */
export interface AdapterGather {
  gather(adapter: Adapter, moments: ReadonlyMap<string, Moments>): Promise<{ adapter: Adapter; moments: Map<string, Moments> } | null>;
}

export interface RunTrainingOptions {
  model: V4Model;
  /** a fresh adapter (or a warm start's), or the checkpoint to resume from */
  start: { adapter: Adapter } | { checkpoint: TrainCheckpoint };
  train: TrainRows;
  eval: readonly DatasetRow[];
  settings: TrainSettings;
  /** evaluate every N steps (0: only at the end) */
  evalEvery: number;
  /** checkpoint every N steps (0: only at the end) */
  checkpointEvery: number;
  /** keep the newest N checkpoints and the best by eval loss (0: keep every one) */
  keepCheckpoints?: number;
  /** stop when this many evals in a row do not lower the best eval loss by more than minDelta (0: never) */
  earlyStopping?: { patience: number; minDelta: number };
  /** where metrics go besides train-log.jsonl (always written: the report and resume read it) */
  logTo?: ReadonlyArray<'jsonl' | 'tensorboard'>;
  /** prompts continued greedily at every eval, logged and reported */
  samples?: SampleSettings;
  /** also measure the MTP block's top-1 agreement with the main head at every eval */
  evalMtp?: boolean;
  output: string;
  /** what a resume must find unchanged (recorded in every checkpoint) */
  identity: RunIdentity;
  /** asked after every step; true stops the run there, with a checkpoint */
  shouldStop?: () => boolean;
  /** how a step's gradient is computed (default: stepGradients; src/distributed: across ranks) */
  gradients?: StepGradientsFn;
  /** how an eval runs its rows (default: Trainer.evaluate's loop; src/distributed: split across ranks) */
  evaluate?: EvaluateFn;
  /** layout of the final adapter (default transformers; checkpoints keep the official layout) */
  adapterLayout?: AdapterLayout;
  /** false on every rank of a distributed run but rank 0: no checkpoint or adapter is written (rank 0 writes them) */
  writesCheckpoints?: boolean;
  /** the micro-batches of a step this process runs (src/distributed; default: all of them) */
  runs?: (gradAccum: number) => readonly number[];
  /** set when this process holds only part of the adapter (expert parallel): how the whole is put together to be written */
  shards?: AdapterGather;
}

export interface TrainResult {
  /** true when stopped by shouldStop before the last step */
  interrupted: boolean;
  /** true when early stopping ended the run before the last step */
  stoppedEarly: boolean;
  step: number;
  steps: number;
  resumedFrom: number | null;
  /** the step every session after the first resumed from, in order */
  resumes: number[];
  /** the schedule's length before this session lengthened it, or null */
  extendedFrom: number | null;
  /** mean step loss of the last step */
  lastLoss: number | null;
  /** eval of the untrained adapter and at the last step */
  evalBefore: EvalResult | null;
  evalAfter: EvalResult | null;
  /** lowest eval loss and its checkpoint (null: no eval, or its checkpoint was not kept) */
  best: { step: number; evalLoss: number; checkpoint: string | null } | null;
  /** the last eval's sample generations */
  samples: Sample[];
  trainableParameters: number;
  /** the whole run, every session: tokens fed forward, seconds in steps, wall-clock seconds */
  tokens: number;
  trainSeconds: number;
  wallSeconds: number;
  tokensPerSecond: number;
  lastCheckpoint: string | null;
  adapterDir: string | null;
}

/** `1h02m03s`, `4m05s`, `6.1s` */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '—';
  if (s < 60) return `${s.toFixed(1)}s`;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m${String(sec).padStart(2, '0')}s` : `${m}m${String(sec).padStart(2, '0')}s`;
}

function logLine(rec: StepRecord, ev: EvalResult | null, elapsed: number, samples: Sample[] | null): Record<string, unknown> {
  return {
    step: rec.step,
    loss: rec.loss,
    lr: rec.lr,
    grad_norm: rec.gradNorm,
    tokens: rec.tokens,
    loss_tokens: rec.lossTokens,
    tokens_per_s: rec.seconds > 0 ? rec.tokens / rec.seconds : null,
    seconds: rec.seconds,
    elapsed,
    epoch: rec.epoch,
    ...(rec.mtpLoss !== undefined ? { mtp_loss: rec.mtpLoss } : {}),
    ...(ev ? { eval_loss: ev.loss, eval_perplexity: ev.perplexity, eval_tokens: ev.tokens } : {}),
    ...(ev?.mtpAgreement !== undefined ? { eval_mtp_agreement: ev.mtpAgreement } : {}),
    ...(samples ? { samples } : {}),
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

const evalOf = (e: EvalResult): RunEval => ({
  loss: e.loss, perplexity: e.perplexity, tokens: e.tokens, rows: e.rows,
  ...(e.mtpAgreement !== undefined ? { mtpAgreement: e.mtpAgreement, mtpPairs: e.mtpPairs } : {}),
});

/** A checkpoint of v4tune before RunProgress: what can be said of the run from its state alone. */
function legacyProgress(ck: TrainCheckpoint): RunProgress {
  const steps = ck.state.identity['train.steps'];
  return {
    steps: typeof steps === 'number' ? steps : ck.state.step, eval_before: null, eval_last: null, last_loss: null,
    train_seconds: 0, wall_seconds: 0, best: null, evals_since_best: 0, resumes: [],
  };
}

async function generateSamples(model: V4Model, adapter: Adapter, s: SampleSettings): Promise<Sample[]> {
  const out: Sample[] = [];
  for (const p of s.prompts) {
    const ids = await generateTokens(model, p.ids, { maxNewTokens: s.maxNewTokens, temperature: 0, topP: 1, seed: 0, adapter, stopId: s.stopId });
    out.push({ prompt: p.label, completion: s.decode(ids.filter((t) => t !== s.stopId)) });
  }
  return out;
}

export async function runTraining(o: RunTrainingOptions, sink: Sink = silentSink): Promise<TrainResult> {
  const s = o.settings;
  const t0 = performance.now();
  const ckRoot = checkpointsDir(o.output);
  const logPath = join(o.output, TRAIN_LOG);
  removeLeftovers(ckRoot);
  removeLeftovers(o.output, [RUN_FILES.adapter, TRAIN_LOG, TRAIN_SUMMARY]);
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
  } : undefined, o.gradients, o.evaluate, o.runs);
  const prior: RunProgress = resumed ? (resumed.state.run ?? legacyProgress(resumed)) : {
    steps: s.steps, eval_before: null, eval_last: null, last_loss: null, train_seconds: 0, wall_seconds: 0, best: null, evals_since_best: 0, resumes: [],
  };
  const progress: RunProgress = { ...prior, steps: s.steps, resumes: resumed ? [...prior.resumes, resumed.state.step] : [] };
  const elapsed = () => prior.wall_seconds + (performance.now() - t0) / 1000;
  const keep = o.keepCheckpoints ?? 0;
  const patience = o.earlyStopping?.patience ?? 0;
  const minDelta = o.earlyStopping?.minDelta ?? 0;
  let lastCheckpoint: string | null = resumed?.dir ?? null;
  let lastCheckpointStep = resumed?.state.step ?? -1;
  // the adapter and moments to write: this process's, or (shards) the whole, put together on the writing rank
  const whole = async () => (o.shards ? o.shards.gather(adapter, trainer.moments) : { adapter, moments: trainer.moments });
  const checkpoint = async () => {
    const st = trainer.state();
    const w = await whole();
    lastCheckpointStep = st.step;
    if (o.writesCheckpoints === false || !w) return;
    progress.wall_seconds = elapsed();
    lastCheckpoint = await saveCheckpoint(ckRoot, w.adapter, w.moments, st, s.seed, o.identity, { ...progress });
    pruneCheckpoints(ckRoot, keep, progress.best?.step ?? null);
  };
  const tb = o.logTo?.includes('tensorboard') ? new EventWriter(runPath(o.output, 'tensorboard'), (resumed?.state.step ?? 0) + 1) : null;
  const logSamples = (step: number, samples: Sample[]) => {
    for (const x of samples) sink.log(`  sample @${step}: ${JSON.stringify(x.prompt)} → ${JSON.stringify(x.completion)}`);
    tb?.text(step, 'samples', samples.map((x) => `**${x.prompt}** → ${x.completion}`).join('\n\n'));
  };
  let samples: Sample[] = [];

  let extendedFrom: number | null = null;
  if (resumed) {
    truncateLog(logPath, resumed.state.step);
    if (prior.steps !== s.steps) {
      if (s.steps < resumed.state.step) throw new RangeError(`the run is at step ${resumed.state.step}, past the ${s.steps} steps asked`);
      extendedFrom = prior.steps;
      const next = resumed.state.step;
      sink.log(`extending the run from ${prior.steps} to ${s.steps} steps: the ${s.schedule} learning-rate schedule now spans ${s.steps} steps (lr at step ${next + 1}: ${learningRate(next, s).toPrecision(4)}, was ${next < prior.steps ? learningRate(next, { ...s, steps: prior.steps }).toPrecision(4) : 'past the end'})`);
    }
    sink.log(`resuming from ${resumed.dir} (step ${resumed.state.step} of ${s.steps})`);
  } else {
    writeFileAtomic(logPath, '');
    if (o.eval.length > 0) {
      const ev = await trainer.evaluate(o.eval, o.evalMtp === true);
      progress.eval_before = evalOf(ev);
      if (o.samples) samples = await generateSamples(o.model, adapter, o.samples);
      appendFileSync(logPath, `${JSON.stringify({ step: 0, eval_loss: ev.loss, eval_perplexity: ev.perplexity, eval_tokens: ev.tokens, ...(ev.mtpAgreement !== undefined ? { eval_mtp_agreement: ev.mtpAgreement } : {}), ...(o.samples ? { samples } : {}) })}\n`);
      tb?.scalars(0, { 'eval/loss': ev.loss, 'eval/perplexity': ev.perplexity, ...(ev.mtpAgreement !== undefined ? { 'eval/mtp_agreement': ev.mtpAgreement } : {}) });
      sink.log(`eval before training: loss ${ev.loss.toFixed(4)}, perplexity ${ev.perplexity.toFixed(2)} over ${ev.tokens} tokens${ev.mtpAgreement !== undefined ? `; MTP top-1 agreement ${(100 * ev.mtpAgreement).toFixed(1)}%` : ''}`);
      if (o.samples) logSamples(0, samples);
    }
  }

  let interrupted = false;
  let stoppedEarly = false;
  const startStep = trainer.state().step;
  const sessionT0 = performance.now();
  const bar = sink.progress('train', s.steps, 'steps');
  bar.update(startStep);
  while (trainer.state().step < s.steps) {
    const rec = await trainer.step().catch((e: unknown) => {
      bar.stop();
      if (!(e instanceof NonFiniteError)) throw e;
      const kept = lastCheckpointStep >= 0 ? `the last good checkpoint, step ${lastCheckpointStep}, is kept in ${ckRoot}` : 'no checkpoint was written';
      throw new NonFiniteError(`train: ${e.message}; training stopped, ${kept}`);
    });
    progress.train_seconds += rec.seconds;
    progress.last_loss = rec.loss;
    const last = rec.step === s.steps;
    const ev = o.eval.length > 0 && (last || (o.evalEvery > 0 && rec.step % o.evalEvery === 0)) ? await trainer.evaluate(o.eval, o.evalMtp === true) : null;
    let newBest = false;
    if (ev) {
      progress.eval_last = { step: rec.step, ...evalOf(ev) };
      if (progress.best === null || ev.loss < progress.best.eval_loss - minDelta) {
        progress.best = { step: rec.step, eval_loss: ev.loss };
        progress.evals_since_best = 0;
        newBest = true;
      } else {
        progress.evals_since_best++;
      }
      if (o.samples) samples = await generateSamples(o.model, adapter, o.samples);
    }
    const now = elapsed();
    appendFileSync(logPath, `${JSON.stringify(logLine(rec, ev, now, ev && o.samples ? samples : null))}\n`);
    tb?.scalars(rec.step, {
      'train/loss': rec.loss, 'train/lr': rec.lr, 'train/grad_norm': rec.gradNorm,
      'train/tokens_per_s': rec.seconds > 0 ? rec.tokens / rec.seconds : null,
      ...(rec.mtpLoss !== undefined ? { 'train/mtp_loss': rec.mtpLoss } : {}),
      ...(ev ? { 'eval/loss': ev.loss, 'eval/perplexity': ev.perplexity } : {}),
      ...(ev?.mtpAgreement !== undefined ? { 'eval/mtp_agreement': ev.mtpAgreement } : {}),
    });
    const tps = rec.seconds > 0 ? Math.round(rec.tokens / rec.seconds) : 0;
    const perStep = (performance.now() - sessionT0) / 1000 / (rec.step - startStep);
    bar.update(rec.step, `loss ${rec.loss === null ? '—' : rec.loss.toFixed(4)} · ${tps} tok/s · ${formatDuration(now)} elapsed · ETA ${formatDuration(perStep * (s.steps - rec.step))}${ev ? ` · eval ${ev.loss.toFixed(4)}` : ''}`);
    if (ev) {
      const b = progress.best!;
      sink.log(`step ${rec.step}/${s.steps}: eval loss ${ev.loss.toFixed(4)}, perplexity ${ev.perplexity.toFixed(2)}${ev.mtpAgreement !== undefined ? `, MTP agreement ${(100 * ev.mtpAgreement).toFixed(1)}%` : ''}${newBest ? ' (best)' : ` (best ${b.eval_loss.toFixed(4)} at step ${b.step})`} · ${formatDuration(now)} elapsed`);
      if (o.samples) logSamples(rec.step, samples);
    }
    stoppedEarly = !last && ev !== null && patience > 0 && progress.evals_since_best >= patience;
    if (stoppedEarly) sink.log(`early stopping at step ${rec.step}: ${patience} evals without a lower eval loss than ${progress.best!.eval_loss.toFixed(4)} (step ${progress.best!.step})`);
    interrupted = !last && !stoppedEarly && (o.shouldStop?.() ?? false);
    if (last || interrupted || stoppedEarly || (o.checkpointEvery > 0 && rec.step % o.checkpointEvery === 0) || (newBest && (keep > 0 || patience > 0))) {
      await checkpoint();
    }
    if (interrupted || stoppedEarly) break;
  }
  bar.stop();
  const step = trainer.state().step;
  if (step === s.steps && lastCheckpointStep !== step) await checkpoint();
  const finished = !interrupted;
  let evalAfter: EvalResult | null = null;
  if (finished && o.eval.length > 0) {
    const el = progress.eval_last;
    if (el !== null && el.step === step) {
      const { step: _at, ...kept } = el;
      evalAfter = kept;
    } else {
      evalAfter = await trainer.evaluate(o.eval, o.evalMtp === true);
    }
  }
  if (finished && o.samples && samples.length === 0) samples = await generateSamples(o.model, adapter, o.samples);
  let adapterDir: string | null = null;
  const final = finished ? await whole() : null;
  if (final && o.writesCheckpoints !== false) {
    adapterDir = runPath(o.output, 'adapter');
    await saveAdapter(final.adapter, adapterDir, { layout: o.adapterLayout, config: o.model.config });
  }
  const best = progress.best;
  const bestDir = best ? join(ckRoot, `step-${best.step}`) : null;
  const st = trainer.state();
  return {
    interrupted,
    stoppedEarly,
    step,
    steps: s.steps,
    resumedFrom: resumed?.state.step ?? null,
    resumes: progress.resumes,
    extendedFrom,
    lastLoss: progress.last_loss,
    evalBefore: progress.eval_before,
    evalAfter,
    best: best ? { step: best.step, evalLoss: best.eval_loss, checkpoint: bestDir !== null && existsSync(bestDir) ? bestDir : null } : null,
    samples,
    // the whole adapter's (with shards, this rank's Trainer holds only part of it)
    trainableParameters: final ? final.adapter.modules().reduce((n, m) => n + final.adapter.factors(m)!.A.length + final.adapter.factors(m)!.B.length, 0) : trainer.parameterCount(),
    tokens: st.tokensSeen,
    trainSeconds: progress.train_seconds,
    wallSeconds: elapsed(),
    tokensPerSecond: progress.train_seconds > 0 ? st.tokensSeen / progress.train_seconds : 0,
    lastCheckpoint,
    adapterDir,
  };
}
