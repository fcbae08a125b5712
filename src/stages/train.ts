// The train stage: the recipe's LoRA adapter trained on its prepared dataset, with checkpoints,
// a metrics log and eval on the eval split (train/run.ts writes them), under the run folder's
// lock. It decides what the run folder's state means: a fresh run, a resume (to the same result
// as a run never stopped; a longer train.steps extends it), a start over, or (`auto`, what `run`
// asks) the reuse of a finished run whose settings are unchanged.
import { createHash } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tryLoadAddon } from '../backend/native/addon.js';
import { cancelNativeKernels } from '../backend/native/index.js';
import type { Dataset, DatasetRow, RowReader, Split } from '../data/dataset.js';
import { loadTokenizer } from '../data/tokenizer.js';
import { joinDistributed, type DistributedRun } from '../distributed/launch.js';
import { InputError, V4tuneError } from '../errors.js';
import { readJsonFile, writeFileAtomic } from '../fsutil.js';
import { withRunLock } from '../lock.js';
import { createAdapter } from '../lora/adapter.js';
import { describeSelection } from '../lora/profile.js';
import { configFingerprint } from '../model/config.js';
import { loadModel } from '../model/load.js';
import type { V4Model } from '../model/v4/model.js';
import { RUN_FILES, runPath } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { recipeTokenizer } from '../recipe/model.js';
import { silentSink, type Sink } from '../sink.js';
import { checkTrainBounds } from '../train/bounds.js';
import { assertSameIdentity, checkpointsDir, identityChange, listCheckpoints, loadCheckpoint, readCheckpointState, type RunIdentity } from '../train/checkpoint.js';
import { resolveSteps, samplePrompts, warmStart } from '../train/plan.js';
import { runTraining } from '../train/run.js';
import { trainSummary, type TrainSummary } from '../train/summary.js';
import type { TrainSettings } from '../train/trainer.js';
import { requireDataset, requireTrainRows } from './dataset-inputs.js';
import { requireModel } from './inputs.js';
import { profiledSubset } from './profile.js';

export type { TrainSummary } from '../train/summary.js';

/** Exit code of a run stopped by Ctrl-C (128 + SIGINT), after its checkpoint is written. */
export const EXIT_INTERRUPTED = 130;

export interface TrainRecipeOptions {
  /** continue from the last checkpoint in `<output>/checkpoints` */
  resume?: boolean;
  /** delete an earlier run's checkpoints, log, adapter and summary, and start over */
  overwrite?: boolean;
  /** evaluate on at most this many eval rows (default: the whole eval split) */
  evalRows?: number;
  /**
   * What `run` wants: reuse a finished run whose settings are unchanged, resume an unfinished
   * one, and start over (saying which setting changed) when the settings differ
   */
  auto?: boolean;
}

/** The recipe's `train` section as the trainer takes it. */
export function trainSettings(recipe: LoadedRecipe, trainRows: number): TrainSettings {
  const t = recipe.train;
  return {
    steps: resolveSteps(t, trainRows),
    batchRows: t.batch_rows,
    gradAccum: t.grad_accum,
    lr: t.lr,
    schedule: t.schedule,
    warmupSteps: t.warmup_steps,
    weightDecay: t.weight_decay,
    maxGradNorm: t.max_grad_norm,
    seed: t.seed,
    activationCheckpointing: t.activation_checkpointing,
    attentionChunk: t.attention_chunk,
    mtpWeight: t.mtp_loss_weight,
  };
}

/**
 * Recipe settings this version cannot honour: each is refused with the field named, never
 * ignored.
 */
export function assertTrainable(recipe: LoadedRecipe): void {
  const l = recipe.lora;
  if (l.experts_per_layer !== undefined && l.experts !== 'profiled') {
    throw new InputError(`${recipe.file}: lora.experts_per_layer only applies with lora.experts: profiled (set it, or remove experts_per_layer)`);
  }
  if (recipe.train.mtp_loss_weight > 0 && !l.targets.some((p) => p.startsWith('mtp.'))) {
    throw new InputError(`${recipe.file}: train.mtp_loss_weight trains the MTP block's own LoRA, but lora.targets has no mtp. pattern (add e.g. mtp.*.attn.wq_a, mtp.*.ffn.shared_experts.w1)`);
  }
}

/** What a resume must find unchanged: every setting that decides the trained numbers. */
function runIdentity(recipe: LoadedRecipe, datasetKey: string, fingerprint: string, subset: Record<string, number[]> | null): RunIdentity {
  const t = recipe.train;
  const id: RunIdentity = {};
  // the run's length (steps / epochs) is not part of it: a resume may extend the run
  for (const k of ['batch_rows', 'grad_accum', 'lr', 'schedule', 'warmup_steps', 'weight_decay', 'max_grad_norm', 'seed', 'precision'] as const) id[`train.${k}`] = t[k];
  if (t.mtp_loss_weight > 0) id['train.mtp_loss_weight'] = t.mtp_loss_weight;
  // the profile settings count only where they decide the experts (runs from before they existed resume)
  for (const [k, v] of Object.entries(recipe.lora)) if (subset || !k.startsWith('profile_')) id[`lora.${k}`] = v;
  if (subset) id[`the profiled experts (${RUN_FILES.profile})`] = createHash('sha256').update(JSON.stringify(subset)).digest('hex').slice(0, 16);
  if (recipe.model.preset !== undefined) {
    id['model.preset'] = recipe.model.preset;
    id['model.seed'] = recipe.model.seed;
    id['model.format'] = recipe.model.format;
  } else {
    id['model.path'] = recipe.model.path;
  }
  if (t.warm_start !== undefined) id['train.warm_start'] = t.warm_start;
  id['model config fingerprint'] = fingerprint;
  id['the prepared dataset (manifest cache_key)'] = datasetKey;
  return id;
}

/** A checkpoint's identity without the run length that checkpoints before extension recorded. */
function withoutRunLength(id: RunIdentity): RunIdentity {
  const { ['train.steps']: _steps, ...rest } = id;
  return rest;
}

/** Apply train.threads / train.precision to the native kernels; returns how to put them back. */
function nativeSettings(recipe: LoadedRecipe, sink: Sink): () => void {
  const t = recipe.train;
  const addon = t.backend === 'tfjs' ? null : tryLoadAddon();
  if (!addon) {
    if (t.precision === 'bf16') throw new InputError(`${recipe.file}: train.precision: bf16 needs the native backend (tfjs computes in fp32 only)`);
    if (t.threads !== 0) sink.warn(`train.threads applies to the native backend only; tfjs picks its own threads`);
    return () => {};
  }
  const before = addon.info();
  addon.setThreads(t.threads);
  const bf16 = addon.setBf16(t.precision === 'bf16');
  if (t.precision === 'bf16' && !bf16) sink.warn('train.precision: bf16 asked, but this CPU has no bf16 dot products: computing in fp32');
  return () => {
    addon.setThreads(before.threads);
    addon.setBf16(before.bf16);
  };
}

/** The first `cap` rows of a split. */
function firstRows(ds: Dataset, split: Split, cap: number): DatasetRow[] {
  const rows: DatasetRow[] = [];
  for (const r of ds.rows(split)) {
    if (rows.length >= cap) break;
    rows.push(r);
  }
  return rows;
}

function fmtInt(n: number): string {
  return n.toLocaleString('en-US');
}

/**
 * The train stage: returns train.json's content. It holds the run folder's lock: a second
 * writer of `<output>` is refused naming this one. Under mpirun, rank 0 holds the lock and
 * writes; the other ranks train silently beside it. Ctrl-C stops after the step with a
 * checkpoint (a V4tuneError with EXIT_INTERRUPTED); a second Ctrl-C exits at once.
 */
export async function trainRecipe(recipe: LoadedRecipe, sink: Sink = silentSink, opts: TrainRecipeOptions = {}): Promise<TrainSummary> {
  const dist = await joinDistributed(recipe, (l) => sink.warn(l));
  const rankSink = dist ? dist.context(sink) : sink;
  const train = () => trainLocked(recipe, rankSink, opts, dist);
  const summary = await (dist && dist.rank !== 0 ? train() : withRunLock(recipe.output, `v4tune train ${recipe.file}`, train, (l) => sink.warn(l)));
  dist?.finish();
  return summary;
}

async function trainLocked(recipe: LoadedRecipe, sink: Sink, opts: TrainRecipeOptions, dist: DistributedRun | null): Promise<TrainSummary> {
  assertTrainable(recipe);
  if (opts.resume && opts.overwrite) throw new InputError('--resume and --overwrite exclude each other');
  const { dir: modelDir, config } = requireModel(recipe);
  checkTrainBounds(config, {
    file: recipe.file, seqLen: recipe.data.seq_len, batchRows: recipe.train.batch_rows, threads: recipe.train.threads, checkpointing: recipe.train.activation_checkpointing,
    attentionChunk: recipe.train.attention_chunk,
  });
  const ds = requireDataset(recipe);
  const trainCount = requireTrainRows(ds);
  const evalCap = opts.evalRows ?? Infinity;

  const fingerprint = configFingerprint(config);
  const profiled = recipe.lora.experts === 'profiled' ? profiledSubset(recipe, { datasetCacheKey: ds.manifest.cache_key, modelFingerprint: fingerprint }) : null;
  const identity = runIdentity(recipe, ds.manifest.cache_key, fingerprint, profiled?.subset ?? null);

  const out = recipe.output;
  const ckRoot = checkpointsDir(out);
  const have = listCheckpoints(ckRoot);
  const summaryPath = runPath(out, 'trainSummary');
  const adapterDir = runPath(out, 'adapter');
  let resume = opts.resume === true;
  let overwrite = opts.overwrite === true;
  if (opts.auto && have.length > 0 && !resume && !overwrite) {
    const last = have[have.length - 1]!;
    const lastDir = join(ckRoot, `step-${last}`);
    const change = identityChange(withoutRunLength(readCheckpointState(lastDir).identity), identity);
    if (change) {
      sink.log(`train: ${change.key} is ${change.now ?? 'unset'}, the run in ${out} was made with ${change.was ?? 'unset'}: starting over`);
      overwrite = true;
    } else if (existsSync(join(adapterDir, 'adapter_model.safetensors')) && existsSync(summaryPath)) {
      const done = readJsonFile(summaryPath) as TrainSummary;
      if (done.ok === true && done.step === last && (last === resolveSteps(recipe.train, trainCount) || done.stopped_early === true)) {
        sink.log(`train: reusing the finished run in ${out} (settings unchanged)`);
        return { ...done, reused: true };
      }
      resume = true;
    } else {
      resume = true;
    }
  }
  if (resume && have.length === 0) throw new InputError(`${recipe.file}: --resume: no checkpoint in ${ckRoot} to resume from`);
  if (!resume && !overwrite && have.length > 0) {
    throw new InputError(`${recipe.file}: ${ckRoot} holds checkpoints of an earlier run (last: step ${have[have.length - 1]}); pass --resume to continue it or --overwrite to start over`);
  }
  if (overwrite && (dist?.rank ?? 0) === 0) {
    for (const p of [ckRoot, adapterDir, runPath(out, 'trainLog'), summaryPath]) rmSync(p, { recursive: true, force: true });
  }

  const restore = nativeSettings(recipe, sink);
  let stop = false;
  const onSigint = () => {
    if (stop) {
      process.stderr.write('v4tune: stopped at once (the last complete checkpoint is kept)\n');
      cancelNativeKernels(); // running kernels return early instead of finishing their work
      process.exit(EXIT_INTERRUPTED);
    }
    stop = true;
    sink.warn('Ctrl-C: stopping after this step, with a checkpoint (Ctrl-C again to quit at once)');
  };
  process.on('SIGINT', onSigint);
  let model: V4Model | null = null;
  let trainRows: DatasetRow[] | RowReader = [];
  try {
    model = await (dist ?? { loadModel }).loadModel(modelDir, { backend: recipe.train.backend, note: (l) => sink.log(l) });
    // a rank of a distributed run reads only its own micro-batches' train rows and its share of
    // the eval rows; with expert parallel it holds only its routed experts' LoRA factors
    trainRows = dist ? await dist.trainRows(ds) : [...ds.rows('train')];
    const evalShare = dist ? await dist.evalRows(ds, evalCap) : null;
    const evalRows = evalShare?.rows ?? firstRows(ds, 'eval', evalCap);
    const evalCount = evalShare?.total ?? evalRows.length;
    const holds = dist ? (m: string) => dist.holds(m) : undefined;
    const settings = trainSettings(recipe, trainRows.length);
    if (recipe.train.mtp_loss_weight > 0 && model.config.num_nextn_predict_layers === 0) throw new InputError(`${recipe.file}: train.mtp_loss_weight needs a model with an MTP block (${modelDir} has num_nextn_predict_layers 0)`);
    let start: Parameters<typeof runTraining>[0]['start'];
    if (resume) {
      const checkpoint = await loadCheckpoint(join(ckRoot, `step-${have[have.length - 1]}`), holds);
      // (checkpoints from before runs could be extended recorded train.steps in their identity)
      assertSameIdentity({ ...checkpoint, state: { ...checkpoint.state, identity: withoutRunLength(checkpoint.state.identity) } }, identity, recipe.file);
      if (checkpoint.state.step > settings.steps) {
        throw new InputError(`${recipe.file}: the run in ${out} is at step ${checkpoint.state.step}, past the ${settings.steps} steps the recipe asks for (a run can be extended, not shortened; --overwrite starts over)`);
      }
      checkpoint.adapter.assertFits(model.config, checkpoint.dir);
      start = { checkpoint };
    } else {
      const l = recipe.lora;
      start = {
        adapter: createAdapter({ config: model.config, dir: modelDir }, {
          r: l.r, alpha: l.alpha, targets: l.targets, rankPattern: l.rank_pattern, alphaPattern: l.alpha_pattern,
          rsLoRA: l.rslora, dropout: l.dropout, seed: l.seed, expertSubset: profiled?.subset,
        }, holds),
      };
      if (recipe.train.warm_start !== undefined) {
        await warmStart(start.adapter, recipe.train.warm_start, recipe.file, (l) => sink.warn(l), holds);
        sink.log(`  warm start: the adapter in ${recipe.train.warm_start} (optimizer state fresh, step 0)`);
      }
    }
    const adapter = 'checkpoint' in start ? start.checkpoint.adapter : start.adapter;
    // the whole adapter's size (with expert parallel each rank holds only part of it)
    const size = dist ? await dist.adapterSize(adapter) : { modules: adapter.modules().length, parameters: adapter.modules().reduce((n, m) => n + adapter.factors(m)!.A.length + adapter.factors(m)!.B.length, 0) };
    const t = recipe.train;
    const rowsPerStep = t.batch_rows * t.grad_accum;
    sink.log(`train ${recipe.name}: model ${modelDir}${recipe.model.preset ? ` (${recipe.model.preset} preset)` : ''} on ${model.backend.name}`);
    sink.log(`  adapter: ${size.modules} modules, r ${recipe.lora.r}, alpha ${recipe.lora.alpha}${recipe.lora.rslora ? ' (rsLoRA)' : ''}: ${fmtInt(size.parameters)} trainable parameters; written in the ${recipe.lora.adapter_layout} layout (lora.adapter_layout)`);
    if (profiled) {
      const adapted = Object.entries(profiled.selection).filter(([b]) => adapter.modules().some((m) => m.startsWith(`${b}.ffn.experts.`)));
      sink.log(`  experts: profiled — ${describeSelection(Object.fromEntries(adapted), model.config.n_routed_experts)} (${runPath(out, 'profile')})`);
    }
    sink.log(`  data: ${fmtInt(trainRows.length)} train rows, ${fmtInt(evalCount)} eval rows${evalCount < ds.rowCount('eval') ? ` (of ${fmtInt(ds.rowCount('eval'))})` : ''}, seq_len ${ds.manifest.seq_len}`);
    sink.log(`  steps: ${settings.steps}${t.epochs !== undefined ? ` (train.epochs ${t.epochs})` : ''} × ${rowsPerStep} rows (${t.batch_rows} per micro-batch × ${t.grad_accum}) = ${fmtInt(rowsPerStep * ds.manifest.seq_len)} tokens/step, ${(settings.steps * rowsPerStep / trainRows.length).toFixed(2)} epochs`);
    sink.log(`  AdamW lr ${t.lr} (${t.schedule}, warmup ${t.warmup_steps}), weight_decay ${t.weight_decay}, max_grad_norm ${t.max_grad_norm}; ${t.eval_every ? `eval every ${t.eval_every} steps` : 'eval at the end'}, ${t.checkpoint_every ? `checkpoint every ${t.checkpoint_every} steps` : 'checkpoint at the end'}`);
    sink.log(`  output: ${out}${t.activation_checkpointing ? ' (activation checkpointing on)' : ''}`);
    if (dist) sink.log(`  distributed: ${dist.describe()}`);
    const r = await runTraining({
      model,
      start,
      train: trainRows,
      eval: evalRows,
      settings,
      evalEvery: t.eval_every,
      checkpointEvery: t.checkpoint_every,
      keepCheckpoints: t.keep_checkpoints,
      earlyStopping: { patience: t.early_stopping_patience, minDelta: t.early_stopping_min_delta },
      logTo: t.log_to,
      samples: t.eval_prompts.length > 0 ? samplePrompts(recipe, await loadTokenizer(recipeTokenizer(recipe))) : undefined,
      evalMtp: t.eval_mtp && model.config.num_nextn_predict_layers > 0,
      output: out,
      identity,
      shouldStop: () => stop,
      adapterLayout: recipe.lora.adapter_layout,
      ...(dist ? dist.trainOptions('checkpoint' in start ? start.checkpoint.state.step : 0, out) : {}),
    }, sink);
    const summary = trainSummary(recipe, r, model.backend.name, trainRows.length, evalCount);
    if ((dist?.rank ?? 0) === 0) writeFileAtomic(summaryPath, `${JSON.stringify(summary, null, 2)}\n`);
    if (r.interrupted) {
      throw new V4tuneError(`train: stopped at step ${r.step} of ${r.steps}; checkpoint ${r.lastCheckpoint} (continue with \`v4tune train ${recipe.file} --resume\`)`, EXIT_INTERRUPTED);
    }
    sink.log(`train: ${r.step} steps${r.stoppedEarly ? ` (stopped early; best eval at step ${r.best?.step})` : ''}${r.resumedFrom !== null ? ` (resumed at ${r.resumedFrom})` : ''}, last loss ${r.lastLoss?.toFixed(4) ?? '—'}${r.evalAfter ? `, eval loss ${r.evalAfter.loss.toFixed(4)}${r.evalBefore ? ` (before ${r.evalBefore.loss.toFixed(4)})` : ''}` : ''}, ${Math.round(r.tokensPerSecond)} tokens/s → ${r.adapterDir}`);
    return summary;
  } finally {
    if ('close' in trainRows) trainRows.close();
    process.off('SIGINT', onSigint);
    model?.dispose();
    restore();
  }
}
