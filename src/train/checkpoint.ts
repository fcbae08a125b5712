// Resumable training checkpoints: `<output>/checkpoints/step-N/` holds
//   adapter/                  the adapter at step N, PEFT format (saveAdapter)
//   optimizer.safetensors     AdamW moments: `<PEFT key>.exp_avg` / `.exp_avg_sq`, F32
//   state.json                step, data-order position and seed, tokens seen, and the settings
//                             the run was made with (a resume must use the same ones)
// The folder is written under a temporary name and renamed: a step-N folder is whole or absent.
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { readJsonFile, writeDirAtomic } from '../fsutil.js';
import { runPath } from '../recipe/layout.js';
import type { Adapter } from '../lora/adapter.js';
import { loadAdapter, saveAdapter } from '../lora/peft.js';
import { f32BytesToF32, f32ToBytes } from '../model/formats.js';
import { SafetensorsFile, writeSafetensorsFile, type TensorSpec } from '../model/safetensors.js';
import { VERSION } from '../version.js';
import { ADAMW_DEFAULTS, type Moments } from './adamw.js';
import type { EvalResult } from './evaluate.js';
import type { TrainerState } from './trainer.js';

export const CHECKPOINT_FORMAT = 'v4tune-train-checkpoint';
export const CHECKPOINT_FORMAT_VERSION = 1;
const STATE = 'state.json';
const OPTIMIZER = 'optimizer.safetensors';
const ADAPTER = 'adapter';

/** What a run must keep equal to resume: field (as the recipe names it) → value. */
export type RunIdentity = Record<string, unknown>;

export interface CheckpointState {
  format: typeof CHECKPOINT_FORMAT;
  format_version: number;
  v4tune_version: string;
  step: number;
  tokens_seen: number;
  loss_tokens_seen: number;
  optimizer: { name: 'adamw'; beta1: number; beta2: number; eps: number };
  /** the data order: permutation(seed, epoch)[cursor] is the next row (order.ts) */
  data: { epoch: number; cursor: number };
  /** random numbers: the data order's stream is a function of (seed, epoch), so this is its whole state */
  rng: { algorithm: 'sfc32 per (seed, epoch)'; seed: number; epoch: number };
  identity: RunIdentity;
  /** the run's own record up to this step (absent in checkpoints of v4tune before it existed) */
  run?: RunProgress;
}

/** What a run has done up to a checkpoint, so a resumed run reports the whole run, not its last session. */
export interface RunProgress {
  /** the schedule's length when the checkpoint was written (a resume may extend it) */
  steps: number;
  /** eval of the untrained adapter (step 0) */
  eval_before: RunEval | null;
  /** the latest eval, with its step */
  eval_last: (RunEval & { step: number }) | null;
  /** mean loss of the last step */
  last_loss: number | null;
  /** seconds in optimizer steps / wall-clock seconds of the run, every session summed */
  train_seconds: number;
  wall_seconds: number;
  /** the lowest eval loss so far and its step, and evals since it (early stopping) */
  best: { step: number; eval_loss: number } | null;
  evals_since_best: number;
  /** the step each earlier session resumed from */
  resumes: number[];
}

/** An eval as a checkpoint records it. */
export type RunEval = EvalResult;

export interface TrainCheckpoint {
  dir: string;
  state: CheckpointState;
  adapter: Adapter;
  moments: Map<string, Moments>;
}

export function checkpointsDir(output: string): string {
  return runPath(output, 'checkpoints');
}

/** Write `<root>/step-N/` atomically. */
export async function saveCheckpoint(root: string, adapter: Adapter, moments: ReadonlyMap<string, Moments>, st: TrainerState, seed: number, identity: RunIdentity, run?: RunProgress): Promise<string> {
  const dir = join(root, `step-${st.step}`);
  const state: CheckpointState = {
    format: CHECKPOINT_FORMAT,
    format_version: CHECKPOINT_FORMAT_VERSION,
    v4tune_version: VERSION,
    step: st.step,
    tokens_seen: st.tokensSeen,
    loss_tokens_seen: st.lossTokensSeen,
    optimizer: { name: 'adamw', ...ADAMW_DEFAULTS },
    data: { epoch: st.order.epoch, cursor: st.order.cursor },
    rng: { algorithm: 'sfc32 per (seed, epoch)', seed, epoch: st.order.epoch },
    identity,
    ...(run ? { run } : {}),
  };
  const tensors: Array<TensorSpec & { data: Uint8Array }> = [];
  for (const [k, mom] of moments) {
    tensors.push({ name: `${k}.exp_avg`, dtype: 'F32', shape: [mom.m.length], data: f32ToBytes(mom.m) });
    tensors.push({ name: `${k}.exp_avg_sq`, dtype: 'F32', shape: [mom.v.length], data: f32ToBytes(mom.v) });
  }
  tensors.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  await writeDirAtomic(dir, async (tmp) => {
    await saveAdapter(adapter, join(tmp, ADAPTER), { layout: 'official' }); // resumable state: v4tune's own names
    writeSafetensorsFile(join(tmp, OPTIMIZER), tensors, { format: 'pt', step: String(st.step) });
    writeFileSync(join(tmp, STATE), `${JSON.stringify(state, null, 2)}\n`);
  }, { kind: 'checkpoint' });
  return dir;
}

/** Steps of the complete checkpoints under root, ascending (temporary leftovers are not listed). */
export function listCheckpoints(root: string): number[] {
  if (!existsSync(root)) return [];
  const steps: number[] = [];
  for (const name of readdirSync(root)) {
    const m = /^step-(\d+)$/.exec(name);
    if (m && existsSync(join(root, name, STATE))) steps.push(Number(m[1]));
  }
  return steps.sort((a, b) => a - b);
}

/**
 * Delete the checkpoints under root but the newest `keep` and `alsoKeep` (the best by eval
 * loss); keep = 0 keeps every one. Returns the steps deleted.
 */
export function pruneCheckpoints(root: string, keep: number, alsoKeep: number | null): number[] {
  if (keep <= 0) return [];
  const steps = listCheckpoints(root);
  const newest = new Set(steps.slice(-keep));
  const gone = steps.filter((s) => !newest.has(s) && s !== alsoKeep);
  for (const s of gone) rmSync(join(root, `step-${s}`), { recursive: true, force: true });
  return gone;
}

/**
 * Remove what an interrupted atomic write of one of `targets` left in `root` (the
 * `.tmp-<target>-*` names of fsutil.ts); every target when none is named.
 */
export function removeLeftovers(root: string, targets?: readonly string[]): void {
  if (!existsSync(root)) return;
  for (const name of readdirSync(root)) {
    if (!name.startsWith('.tmp-')) continue;
    if (targets && !targets.some((t) => name.startsWith(`.tmp-${t}-`))) continue;
    rmSync(join(root, name), { recursive: true, force: true });
  }
}

/** Read and check `<dir>/state.json` of a checkpoint (InputError naming the file). */
export function readCheckpointState(dir: string): CheckpointState {
  const statePath = join(dir, STATE);
  const state = readJsonFile(statePath) as CheckpointState;
  if (state.format !== CHECKPOINT_FORMAT) throw new InputError(`${statePath}: format is ${JSON.stringify(state.format)}, expected "${CHECKPOINT_FORMAT}"`);
  if (state.format_version !== CHECKPOINT_FORMAT_VERSION) throw new InputError(`${statePath}: format_version ${state.format_version} is not one this v4tune reads (${CHECKPOINT_FORMAT_VERSION})`);
  for (const [f, v] of [['step', state.step], ['data.epoch', state.data?.epoch], ['data.cursor', state.data?.cursor]] as const) {
    if (!Number.isInteger(v) || (v as number) < 0) throw new InputError(`${statePath}: ${f} must be a non-negative integer (got ${JSON.stringify(v)})`);
  }
  if (typeof state.identity !== 'object' || state.identity === null) throw new InputError(`${statePath}: identity is missing`);
  return state;
}

/**
 * Read `<root>/step-N/` (InputError naming the file on anything malformed). `holds`: read only
 * the factors and moments of the modules it accepts (a rank of an expert-parallel run).
 */
export async function loadCheckpoint(dir: string, holds?: (module: string) => boolean): Promise<TrainCheckpoint> {
  const state = readCheckpointState(dir);
  const adapter = await loadAdapter(join(dir, ADAPTER), { holds });
  const optPath = join(dir, OPTIMIZER);
  const f = SafetensorsFile.open(optPath);
  const moments = new Map<string, Moments>();
  try {
    for (const [name, e] of f.entries) {
      const m = /^(.+)\.(exp_avg|exp_avg_sq)$/.exec(name);
      if (!m || e.dtype !== 'F32') throw new InputError(`${optPath}: tensor ${name} is not an F32 <key>.exp_avg / .exp_avg_sq moment`);
      if (holds && !holds(m[1]!.replace(/^base_model\.model\./, '').replace(/\.lora_[AB]\.weight$/, ''))) continue;
      const mom = moments.get(m[1]!) ?? { m: new Float32Array(0), v: new Float32Array(0) };
      if (m[2] === 'exp_avg') mom.m = f32BytesToF32(f.read(name));
      else mom.v = f32BytesToF32(f.read(name));
      moments.set(m[1]!, mom);
    }
  } finally {
    f.close();
  }
  for (const [k, mom] of moments) {
    if (mom.m.length === 0 || mom.m.length !== mom.v.length) throw new InputError(`${optPath}: ${k} needs both exp_avg and exp_avg_sq of the same size`);
  }
  return { dir, state, adapter, moments };
}

/** The first setting that differs between a checkpoint's identity and `now`, or null. */
export function identityChange(was: RunIdentity, now: RunIdentity): { key: string; was: string | undefined; now: string | undefined } | null {
  for (const key of new Set([...Object.keys(was), ...Object.keys(now)])) {
    const a = JSON.stringify(was[key]);
    const b = JSON.stringify(now[key]);
    if (a !== b) return { key, was: a, now: b };
  }
  return null;
}

/**
 * Refuse a resume under other settings than the checkpoint's: the first field that differs,
 * named as the recipe names it.
 */
export function assertSameIdentity(ck: TrainCheckpoint, now: RunIdentity, where: string): void {
  const d = identityChange(ck.state.identity, now);
  if (d) {
    throw new InputError(`${where}: ${d.key} is ${d.now ?? 'unset'} but the checkpoint ${ck.dir} was made with ${d.was ?? 'unset'}; a resume must use the same settings (or start over with --overwrite)`);
  }
}
