// One LoRA training run in memory: the adapter's factors, their AdamW moments, the data order,
// and the update count. `step()` runs one optimizer step: grad_accum micro-batches of batch_rows
// rows each (a micro-batch is one packed forward/backward: its rows concatenated as segments, so
// every row behaves as if run alone), gradients weighted by counted-token share so the step
// minimises the mean loss over every counted token of the step, global-norm clipping, AdamW with
// the scheduled learning rate. Only LoRA factors change; the base stays frozen. With LoRA dropout
// (the adapter's options.dropout > 0) every micro-batch draws its masks from a seed fixed by
// (train seed, update, micro-batch), so a resumed run draws the masks an uninterrupted one did.
import { fmix32 } from '../backend/dropout.js';
import type { DatasetRow } from '../data/dataset.js';
import { firstNonFinite, NonFiniteError } from '../errors.js';
import type { Adapter } from '../lora/adapter.js';
import { peftKey } from '../lora/peft.js';
import type { V4Model } from '../model/v4/model.js';
import { ADAMW_DEFAULTS, adamwUpdate, zeroMoments, type Moments } from './adamw.js';
import { evalResult, evalSums, type EvalResult } from './evaluate.js';
import { accumulateGrads, clipCoefficient, globalNorm } from './grads.js';
import { nextTokenTargets } from '../model/loss.js';
import { DataOrder, type OrderState } from './order.js';
import { learningRate, type ScheduleKind } from './schedule.js';

/** The settings that decide the numbers of a run (the recipe's `train` section, math part). */
export interface TrainSettings {
  steps: number;
  batchRows: number;
  gradAccum: number;
  lr: number;
  schedule: ScheduleKind;
  warmupSteps: number;
  weightDecay: number;
  maxGradNorm: number;
  /** seed of the data order and of the LoRA dropout masks */
  seed: number;
  /** recompute each block in the backward instead of keeping its activations (same numbers, less memory) */
  activationCheckpointing?: boolean;
  /** query rows per chunk of attention's per-query path (model.lossAndGrads queryChunk; 0 or absent: none) */
  attentionChunk?: number;
  /** weight of the MTP loss (model.lossAndGrads mtpWeight; 0 or absent: none) */
  mtpWeight?: number;
}

/** Where a run stands; with the factors and moments it is everything a resume needs. */
export interface TrainerState {
  /** optimizer updates done */
  step: number;
  order: OrderState;
  /** tokens fed forward so far / tokens that counted in the loss */
  tokensSeen: number;
  lossTokensSeen: number;
}

export interface StepRecord {
  /** 1-based number of the update just made */
  step: number;
  /** mean loss over the step's counted tokens (before the update); null when none counted */
  loss: number | null;
  lr: number;
  /** global gradient norm before clipping */
  gradNorm: number;
  /** tokens fed forward / tokens that counted in the loss */
  tokens: number;
  lossTokens: number;
  seconds: number;
  epoch: number;
  /** with an MTP loss: its mean over the step's counted pairs */
  mtpLoss?: number | null;
}

export type { EvalResult } from './evaluate.js';

/** A micro-batch: its rows concatenated into one packed sequence, each row's segments kept. */
export function packRows(rows: readonly DatasetRow[]): { ids: Int32Array; mask: Uint8Array; segments: number[] } {
  let T = 0;
  for (const r of rows) T += r.input_ids.length;
  const ids = new Int32Array(T);
  const mask = new Uint8Array(T);
  const segments: number[] = [];
  let o = 0;
  for (const r of rows) {
    ids.set(r.input_ids, o);
    mask.set(r.loss_mask, o);
    segments.push(...r.segments);
    o += r.input_ids.length;
  }
  return { ids, mask, segments };
}

/** Positions of a packed sequence that count in the loss (design.md convention). */
export function countedPositions(ids: Int32Array, mask: Uint8Array, segments: readonly number[]): number {
  const segOf = new Int32Array(ids.length);
  let t = 0;
  segments.forEach((len, s) => {
    segOf.fill(s, t, t + len);
    t += len;
  });
  let n = 0;
  for (const v of nextTokenTargets(ids, segOf, mask)) if (v >= 0) n++;
  return n;
}

/**
 * The LoRA dropout seed of micro-batch `micro` of update `step` (both 0-based) in a run with
 * train seed `seed`: a pure function of the three, so a resume reproduces every mask.
 */
export function dropoutSeedFor(seed: number, step: number, micro: number): number {
  const h = fmix32(fmix32(seed >>> 0) ^ Math.imul(step + 1, 0x9e3779b1));
  return fmix32(h ^ Math.imul(micro + 1, 0x85ebca77));
}

/** A step's gradients and sums (what stepGradients and its distributed counterparts return). */
export interface StepGradients {
  grads: Map<string, Float32Array>;
  lossSum: number;
  count: number;
  tokens: number;
  mtpLossSum: number;
  mtpCount: number;
  /**
   * Σ g² over every gradient of the step, where `grads` holds only this process's share of them
   * (expert parallel: other ranks' routed experts); absent: the global norm is `grads`' own.
   */
  normSq?: number;
}

/**
 * The gradient of one optimizer step: the mean loss over every counted token of all its
 * micro-batches. Micro-batch b (its rows packed as segments) has mean loss L_b over c_b counted
 * tokens; the step's loss is Σ_b c_b·L_b / Σ_b c_b, so its gradient is Σ_b (c_b / Σ c)·∇L_b.
 * A micro-batch with no counted token adds nothing (and is not run). `dropoutSeed(b)`: the
 * LoRA dropout seed of micro-batch b (used only when the adapter has dropout); `queryChunk`:
 * model.lossAndGrads's.
 */
export async function stepGradients(
  model: V4Model, adapter: Adapter, micro: readonly (readonly DatasetRow[])[], checkpointing = false,
  dropoutSeed: (b: number) => number = () => 0, mtpWeight = 0, queryChunk = 0,
): Promise<StepGradients> {
  const packed = micro.map((rows) => {
    const p = packRows(rows);
    return { ...p, count: countedPositions(p.ids, p.mask, p.segments) };
  });
  const count = packed.reduce((n, mb) => n + mb.count, 0);
  const grads = new Map<string, Float32Array>();
  let lossSum = 0;
  let tokens = 0;
  let mtpLossSum = 0;
  let mtpCount = 0;
  for (const [b, mb] of packed.entries()) {
    if (mb.count === 0) continue;
    tokens += mb.ids.length;
    const r = await model.lossAndGrads(mb.ids, mb.mask, { segments: mb.segments, adapter, checkpointing, dropoutSeed: dropoutSeed(b), mtpWeight, queryChunk });
    lossSum += r.lossSum;
    mtpLossSum += r.mtp?.lossSum ?? 0;
    mtpCount += r.mtp?.count ?? 0;
    // (the MTP term of a micro-batch is its own mean, weighted like its main loss)
    accumulateGrads(grads, r.grads, r.count / count);
  }
  return { grads, lossSum, count, tokens, mtpLossSum, mtpCount };
}

/**
 * How a step's gradient is computed from its micro-batches: stepGradients in one process;
 * src/distributed/data-parallel.ts splits the micro-batches across ranks and sums.
 */
export type StepGradientsFn = typeof stepGradients;

/**
 * The train split as the trainer reads it: an array, or rows decoded when asked for (a rank of
 * a distributed run reads only the rows of its own micro-batches, data/dataset.ts openRowReader).
 */
export type TrainRows = readonly DatasetRow[] | { readonly length: number; get(i: number): DatasetRow };

/** How `evaluate` runs its rows (src/distributed splits them across ranks and sums). */
export type EvaluateFn = (model: V4Model, adapter: Adapter, rows: readonly DatasetRow[], mtp: boolean) => Promise<EvalResult>;

export class Trainer {
  /** PEFT key → the adapter's factor (updated in place) */
  readonly params = new Map<string, Float32Array>();
  readonly moments = new Map<string, Moments>();
  private readonly order: DataOrder;
  private st: TrainerState;

  constructor(
    readonly model: V4Model,
    readonly adapter: Adapter,
    readonly train: TrainRows,
    readonly settings: TrainSettings,
    resume?: { state: TrainerState; moments: Map<string, Moments> },
    private readonly gradients: StepGradientsFn = stepGradients,
    private readonly evaluator: EvaluateFn | null = null,
    /** the micro-batches of a step this process runs (the others' rows are not read; default: all) */
    private readonly runs: ((gradAccum: number) => readonly number[]) | null = null,
  ) {
    for (const module of adapter.modules()) {
      const l = adapter.factors(module)!;
      this.params.set(peftKey(module, 'A'), l.A);
      this.params.set(peftKey(module, 'B'), l.B);
    }
    for (const [k, p] of this.params) {
      const mom = resume?.moments.get(k) ?? (resume ? undefined : zeroMoments(p.length));
      if (!mom || mom.m.length !== p.length || mom.v.length !== p.length) {
        throw new RangeError(`optimizer state for ${k} is missing or has the wrong size`);
      }
      this.moments.set(k, mom);
    }
    this.st = resume ? { ...resume.state, order: { ...resume.state.order } } : { step: 0, order: { epoch: 0, cursor: 0 }, tokensSeen: 0, lossTokensSeen: 0 };
    this.order = new DataOrder(train.length, settings.seed, this.st.order);
  }

  state(): TrainerState {
    return { ...this.st, order: this.order.position() };
  }

  /** Trainable parameters (every value of every factor). */
  parameterCount(): number {
    let n = 0;
    for (const p of this.params.values()) n += p.length;
    return n;
  }

  /** One optimizer step (see the file comment). */
  async step(): Promise<StepRecord> {
    const s = this.settings;
    const t0 = performance.now();
    const micro: DatasetRow[][] = [];
    const mine = new Set(this.runs ? this.runs(s.gradAccum) : Array.from({ length: s.gradAccum }, (_, a) => a));
    const train = this.train;
    const row = 'get' in train ? (i: number) => train.get(i) : (i: number) => train[i]!;
    // every micro-batch's rows are drawn (the order is the run's); only this process's are read
    for (let a = 0; a < s.gradAccum; a++) {
      const ids = this.order.take(s.batchRows);
      micro.push(mine.has(a) ? ids.map(row) : []);
    }
    const update = this.st.step;
    const { grads, lossSum, count, tokens, mtpLossSum, mtpCount, normSq } = await this.gradients(
      this.model, this.adapter, micro, s.activationCheckpointing ?? false, (b) => dropoutSeedFor(s.seed, update, b), s.mtpWeight ?? 0, s.attentionChunk ?? 0,
    );
    const lr = learningRate(this.st.step, s);
    // a non-finite loss, gradient or updated factor stops the run before anything is saved
    if (count > 0 && !Number.isFinite(lossSum)) throw new NonFiniteError(`step ${update + 1}: the loss is ${lossSum / count}`);
    let gradNorm = 0;
    if (count > 0) {
      gradNorm = normSq !== undefined ? Math.sqrt(normSq) : globalNorm(grads.values());
      if (!Number.isFinite(gradNorm)) throw new NonFiniteError(`step ${update + 1}: the gradient norm is ${gradNorm} (loss ${lossSum / count})`);
      const clip = clipCoefficient(gradNorm, s.maxGradNorm);
      const h = { lr, ...ADAMW_DEFAULTS, weightDecay: s.weightDecay };
      for (const [k, p] of this.params) {
        const g = grads.get(k);
        if (!g) throw new RangeError(`the model returned no gradient for ${k}`);
        adamwUpdate(p, g, this.moments.get(k)!, this.st.step + 1, h, clip);
        const bad = firstNonFinite(p);
        if (bad >= 0) throw new NonFiniteError(`step ${update + 1}: the update made ${k} ${p[bad]} at element ${bad} (learning rate ${lr}: too large?)`);
      }
    }
    this.st.step++;
    this.st.tokensSeen += tokens;
    this.st.lossTokensSeen += count;
    const order = this.order.position();
    this.st.order = order;
    return {
      step: this.st.step,
      loss: count > 0 ? lossSum / count : null,
      lr,
      gradNorm,
      tokens,
      lossTokens: count,
      seconds: (performance.now() - t0) / 1000,
      epoch: order.epoch,
      ...((s.mtpWeight ?? 0) > 0 ? { mtpLoss: mtpCount > 0 ? mtpLossSum / mtpCount : null } : {}),
    };
  }

  /**
   * Mean loss of the adapted model over `rows` (each row alone), design.md convention; with
   * `mtp`, also the MTP block's top-1 agreement with the main head over the same rows.
   */
  async evaluate(rows: readonly DatasetRow[], mtp = false): Promise<EvalResult> {
    if (this.evaluator) return this.evaluator(this.model, this.adapter, rows, mtp);
    const r = evalResult(await evalSums(this.model, rows, { adapter: this.adapter, mtp }), mtp);
    if (r.tokens > 0 && !Number.isFinite(r.loss)) throw new NonFiniteError(`eval: the loss over ${r.tokens} tokens is ${r.loss}`);
    return r;
  }
}
