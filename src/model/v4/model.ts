// The DeepSeek V4 model on a backend: embed → hc streams → blocks → hc_head → norm → head.
// `logits` runs the graph untaped; `lossAndGrads` records it on a tape and replays it backward
// for the LoRA gradients, optionally with activation checkpointing per block (block.ts
// `checkpointedBlock`). Packed rows: every segment behaves as if run alone.
import type { Backend, F32, LoraFactors, RopeTable, WeightHandle } from '../../backend/ops.js';
import { SavedBytes, Tape } from '../../backend/tape.js';
import { InputError } from '../../errors.js';
import { meanLoss } from '../loss.js';
import type { V4Config } from '../config.js';
import { block, blockObserved, checkpointedBlock } from './block.js';
import { Graph, type AdapterView, type DropoutPlan, type LinearInputSink, type RoutingSink } from './graph.js';
import { hcHead } from './mhc.js';
import { observeExpertInputs } from './moe.js';
import { mtpHidden } from './mtp.js';
import { ropeParamsFor, ropeTable } from './rope.js';
import { makeSeq, nextTokenTargets, type Seq } from './seq.js';
import { hasMtp, loadLayer, loadMtp, loadWeights, weightHandles, type BlockWeights, type ModelSource, type MtpWeights, type V4Weights } from './weights.js';
import { peftKey } from '../layout.js';

/** An adapter as the model applies it: module name → LoRA factors, and the list of modules. */
export interface ModelAdapter extends AdapterView {
  modules(): Iterable<string>;
  /** the adapter's LoRA options: `dropout` > 0 drops on every LoRA input in `lossAndGrads` */
  readonly options?: { readonly dropout?: number };
  /** refuses an adapter made for another base (src/lora Adapter implements it) */
  assertFits?(config: V4Config, where: string): void;
}

/**
 * Sees one MoE layer's routing: `block` (`layers.3`, `mtp.0`), the chosen experts idx [N, k] and
 * their weights [N, k] (s[idx] / Σ s[idx] · routed_scaling_factor; hash layers: the tid2eid
 * experts with their weights) for the N rows the block ran on. `positions`: the input position of
 * each row; null when row t is position t (every `layers.N` block). The MTP block's row for the
 * pair (t, t+1) is position t+1, the token whose embedding it takes.
 */
export type RoutingObserver = (block: string, idx: Int32Array, weights: Float32Array, N: number, k: number, positions: Int32Array | null) => void;

export interface ForwardOptions {
  /** segment lengths of a packed row (Σ = ids.length); default one segment */
  segments?: ArrayLike<number> | null;
  adapter?: ModelAdapter | null;
  /**
   * Told every MoE layer's routing in the inference forwards (`logits`, `lastLogits`, `loss`,
   * `mtpLogits`, `route`); `lossAndGrads` does not report. Absent: nothing is collected.
   */
  onRouting?: RoutingObserver | null;
  /**
   * Told the input of every named linear in the same inference forwards (graph.ts
   * `LinearInputSink`: grouped wo_a whole, routed experts only their rows, expert w2 the
   * activation); the MTP block's rows are its pair rows. Absent: nothing is collected.
   */
  onLinearInput?: LinearInputObserver | null;
}

/** See ForwardOptions.onLinearInput and graph.ts LinearInputSink. */
export type LinearInputObserver = LinearInputSink;

export interface LossResult {
  /** mean loss over counted positions */
  loss: number;
  /** Σ of the counted positions' losses */
  lossSum: number;
  /** counted positions */
  count: number;
}

export interface GradOptions extends ForwardOptions {
  adapter: ModelAdapter;
  /**
   * Activation checkpointing per block: the forward keeps only each block's input (and its
   * routing / indexer choices); the backward recomputes a block's forward right before replaying
   * it. Same loss and gradients; saved memory of one block instead of all. Default false.
   */
  checkpointing?: boolean;
  /**
   * Query rows per chunk of attention's per-query path (q, the attention core, the output
   * projections): its [rows, heads·head_dim] tensors then exist for one chunk at a time, in the
   * forward and in the backward, which runs each chunk's forward once more (attention.ts
   * `chunkedQueryPath`). Same loss; gradients equal up to the order of sums over rows. 0 (the
   * default) or ≥ the sequence: the whole sequence at once.
   */
  queryChunk?: number;
  /** Report `savedPeakBytes` (walks the saved contexts; for tests and benchmarks). Default false. */
  measureSavedBytes?: boolean;
  /**
   * Seed (uint32) of this forward's LoRA dropout masks, used only when the adapter's
   * `options.dropout` is > 0 (PEFT's lora_dropout: on each LoRA input, training forwards only;
   * `logits`, `loss` and generation never drop). Each adapted module draws its own mask from this
   * seed and its name, as a pure function of (row, col): the same seed gives the same masks and
   * gradients on every backend, with or without checkpointing; a trainer picks one per
   * micro-batch. Default 0.
   */
  dropoutSeed?: number;
  /**
   * Weight w of the MTP loss (default 0: none): the objective is L + w·L_mtp, where the MTP block
   * predicts token t+2 from the trunk's state at t and the embedding of t+1, and a pair counts iff
   * t+2 lies in the segment and lossMask[t+2] = 1 (L_mtp: the mean over counted pairs). The
   * trunk's streams enter the MTP block as constants: L_mtp's gradient reaches the MTP block's
   * LoRA factors (`mtp.` targets) only. Needs a checkpoint with an MTP block.
   */
  mtpWeight?: number;
}

export interface LossAndGrads extends LossResult {
  /** PEFT key (`base_model.model.<module>.lora_A.weight` / `.lora_B.weight`) → gradient */
  grads: Map<string, Float32Array>;
  /**
   * With `measureSavedBytes`: the most bytes of activations the tape held at once (inputs,
   * outputs and saved contexts of its records, recompute tapes included; base weights, LoRA
   * factors, RoPE tables and the row's layout not counted).
   */
  savedPeakBytes?: number;
  /** with mtpWeight > 0: the MTP loss's sum and counted pairs */
  mtp?: { lossSum: number; count: number };
}

/** The MTP block's next-next-token top-1 against the main head's (the speculative draft's acceptance, greedy). */
export interface MtpAgreement {
  /** pairs whose MTP top-1 for token t+2 equals the main head's top-1 at t+1 */
  agree: number;
  /** pairs (t, t+1) with t+2 in the segment */
  pairs: number;
}


/**
 * MTP targets of the pair rows (row i pairs token t = rows[i] with t+1 and predicts t+2): ids[t+2]
 * where t+2 lies in t's segment and lossMask[t+2] = 1 (every position when lossMask is null), else −1.
 */
export function mtpTargets(seq: Seq, rows: Int32Array, lossMask: Uint8Array | null): Int32Array {
  return Int32Array.from(rows, (t) => (t + 2 < seq.T && seq.segOf[t + 2] === seq.segOf[t] && (lossMask === null || lossMask[t + 2] === 1) ? seq.ids[t + 2]! : -1));
}

/** Float32 RoPE tables of a model, one for the plain layers and one for the compressed, grown as needed. */
class RopeTables {
  private readonly tables = new Map<string, RopeTable>();
  constructor(private readonly config: V4Config) {}

  /** the table for a layer's ratio covering positions < len */
  get(ratio: number, len: number): RopeTable {
    const key = ratio === 0 ? 'plain' : 'compressed';
    const have = this.tables.get(key);
    if (have && have.maxPos >= len) return have;
    const t = ropeTable(ropeParamsFor(this.config, ratio), Math.max(len, 2 * (have?.maxPos ?? 0), 256));
    this.tables.set(key, t);
    return t;
  }

  values(): RopeTable[] {
    return [...this.tables.values()];
  }
}

/**
 * The MTP block on the trunk's streams X [T, hc, d]: its normed hidden state per pair row (row i
 * pairs token t = rows[i] with t+1; pairs never cross a segment). `embed`: the embedding.
 */
async function mtpPairs(
  g: Graph, W: MtpWeights, embed: WeightHandle, ids: Int32Array, seq: Seq, X: F32, c: V4Config, tables: RopeTables, onRouting: RoutingObserver | null | undefined,
): Promise<{ hn: F32; rows: Int32Array }> {
  const rowsL: number[] = [];
  const segs: number[] = [];
  seq.segs.forEach((len, s) => {
    if (len < 2) return;
    segs.push(len - 1);
    for (let p = 0; p < len - 1; p++) rowsL.push(seq.segStart[s] + p);
  });
  const rows = Int32Array.from(rowsL);
  if (rows.length === 0) return { hn: new Float32Array(0), rows };
  const hcd = c.hc_mult * c.hidden_size;
  const Xr = new Float32Array(rows.length * hcd);
  rows.forEach((t, i) => Xr.set(X.subarray(t * hcd, (t + 1) * hcd), i * hcd));
  const seqNext = makeSeq(Int32Array.from(rows, (t) => ids[t + 1]), segs);
  const at = Int32Array.from(rows, (t) => t + 1);
  const gm = onRouting ? g.withRouting((b, idx, w, N, k) => onRouting(b, idx, w, N, k, at)) : g;
  const hn = await mtpHidden(gm, W, embed, Xr, seqNext, c, tables.get(W.block.ratio, seqNext.maxLen));
  return { hn, rows };
}

/** an untaped graph without an adapter that tells `onLinearInput` the named linears' inputs */
function observingGraph(backend: Backend, onLinearInput: LinearInputObserver | null): Graph {
  return new Graph(backend, null, null, new Map(), null, null, null, onLinearInput, 0);
}

/** the streams entering the first block: the embedding repeated hc times, [T, hc, d] */
async function streamsIn(g: Graph, embed: WeightHandle, seq: Seq, c: V4Config): Promise<F32> {
  const emb = await g.embedding(embed, seq.ids, seq.T, c.hidden_size);
  return g.untaped().repeatStreams(emb, seq.T, c.hc_mult, c.hidden_size);
}

export class V4Model {
  private readonly tables: RopeTables;

  private constructor(readonly config: V4Config, readonly backend: Backend, readonly weights: V4Weights) {
    this.tables = new RopeTables(config);
  }

  /** Prepare every base weight of `src` on `backend`. */
  static async load(src: ModelSource, backend: Backend): Promise<V4Model> {
    return new V4Model(src.config, backend, await loadWeights(backend, src));
  }

  /** Logits [T, vocab] row-major. */
  async logits(ids: Int32Array, opts: ForwardOptions = {}): Promise<Float32Array> {
    const seq = makeSeq(ids, opts.segments);
    const g = this.graph(null, opts.adapter, null, opts.onRouting, opts.onLinearInput);
    const hn = await this.hidden(g, seq);
    const c = this.config;
    return this.backend.logits(hn, this.weights.head, seq.T, c.hidden_size, c.vocab_size);
  }

  /** Logits of the last token only [vocab] (generation). */
  async lastLogits(ids: Int32Array, opts: ForwardOptions = {}): Promise<Float32Array> {
    const seq = makeSeq(ids, opts.segments);
    const g = this.graph(null, opts.adapter, null, opts.onRouting, opts.onLinearInput);
    const hn = await this.hidden(g, seq);
    const c = this.config;
    const d = c.hidden_size;
    return this.backend.logits(hn.subarray((seq.T - 1) * d), this.weights.head, 1, d, c.vocab_size);
  }

  /** The next-token loss (design.md convention) without gradients; vocab in chunks. */
  async loss(ids: Int32Array, lossMask: Uint8Array | null, opts: ForwardOptions = {}): Promise<LossResult> {
    const seq = makeSeq(ids, opts.segments);
    const g = this.graph(null, opts.adapter, null, opts.onRouting, opts.onLinearInput);
    const hn = await this.hidden(g, seq);
    const c = this.config;
    const { lossSum, count } = await this.backend.lmHeadLossForward(hn, this.weights.head, nextTokenTargets(seq, lossMask), seq.T, c.hidden_size, c.vocab_size);
    return { loss: meanLoss(lossSum, count), lossSum, count };
  }

  /**
   * Loss and the gradient of the loss for every LoRA tensor of the adapter (zeros where no
   * gradient reached it). Position t predicting t+1 counts iff lossMask[t+1] = 1 and t, t+1 share
   * a segment; the loss is the mean over counted positions.
   */
  async lossAndGrads(ids: Int32Array, lossMask: Uint8Array, opts: GradOptions): Promise<LossAndGrads> {
    const seq = makeSeq(ids, opts.segments);
    const account = opts.measureSavedBytes ? new SavedBytes() : null;
    const tape = new Tape(account, this.backend.addInto ? (dst, src) => this.backend.addInto!(dst, src) : undefined);
    const chunk = opts.queryChunk ?? 0;
    if (!Number.isInteger(chunk) || chunk < 0) throw new InputError(`queryChunk: ${chunk} is not a whole number ≥ 0`);
    const g = this.graph(tape, opts.adapter, this.dropoutPlan(opts), null, null, chunk);
    const X = await this.trunk(g, seq, opts.checkpointing ?? false);
    const hn = await this.headInput(g, X, seq);
    const c = this.config;
    const targets = nextTokenTargets(seq, lossMask);
    const { lossSum, count, saved } = await this.backend.lmHeadLossForward(hn, this.weights.head, targets, seq.T, c.hidden_size, c.vocab_size, true);
    if (count === 0) throw new InputError('lossMask: no position counts (every target is masked or crosses a segment)');
    const { dx } = await this.backend.lmHeadLossBackward(saved, 1 / count);
    const seeds: Array<[F32, F32]> = [[hn, dx]];
    let mtp: { lossSum: number; count: number } | undefined;
    const w = opts.mtpWeight ?? 0;
    if (w > 0) {
      if (!this.weights.mtp[0]) throw new InputError('mtpWeight: this checkpoint has no MTP block (mtp.0.*)');
      const { hn: hm, rows } = await this.mtpForward(g, ids, seq, X, null);
      mtp = { lossSum: 0, count: 0 };
      if (rows.length > 0) {
        const tg = mtpTargets(seq, rows, lossMask);
        const r2 = await this.backend.lmHeadLossForward(hm, this.weights.head, tg, rows.length, c.hidden_size, c.vocab_size, true);
        mtp = { lossSum: r2.lossSum, count: r2.count };
        if (r2.count > 0) seeds.push([hm, (await this.backend.lmHeadLossBackward(r2.saved, w / r2.count)).dx]);
      }
    }
    await tape.backward(seeds);
    const grads = new Map<string, Float32Array>();
    for (const module of opts.adapter.modules()) {
      const f = opts.adapter.factors(module) as LoraFactors;
      const gr = g.loraGrads.get(module);
      grads.set(peftKey(module, 'A'), gr ? gr.dA : new Float32Array(f.A.length));
      grads.set(peftKey(module, 'B'), gr ? gr.dB : new Float32Array(f.B.length));
    }
    const res: LossAndGrads = { loss: lossSum / count, lossSum, count, grads, ...(mtp ? { mtp } : {}) };
    if (account) {
      const factors = [...opts.adapter.modules()].map((m) => opts.adapter.factors(m));
      res.savedPeakBytes = account.peak([this.weights, factors, this.tables.values(), seq]);
    }
    return res;
  }

  /**
   * MTP logits: row i pairs token t = rows[i] (hidden state) with token t+1 (embedding) and
   * predicts token t+2; pairs never cross a segment. [rows.length, vocab].
   */
  async mtpLogits(ids: Int32Array, opts: ForwardOptions = {}): Promise<{ logits: Float32Array; rows: Int32Array }> {
    if (!this.weights.mtp[0]) throw new InputError('mtpLogits: this checkpoint has no MTP block (mtp.0.*)');
    const c = this.config;
    const seq = makeSeq(ids, opts.segments);
    const g = this.graph(null, opts.adapter, null, opts.onRouting, opts.onLinearInput);
    const { hn, rows } = await this.mtpForward(g, ids, seq, await this.trunk(g, seq), opts.onRouting);
    if (rows.length === 0) return { logits: new Float32Array(0), rows };
    return { logits: await this.backend.logits(hn, this.weights.head, rows.length, c.hidden_size, c.vocab_size), rows };
  }

  /**
   * How often the MTP block's top-1 for token t+2 (from pair (t, t+1)) equals the main head's
   * top-1 at position t+1, over the pairs with t+2 in the segment; one trunk forward feeds both
   * heads. Ties go to the lower id.
   */
  async mtpAgreement(ids: Int32Array, opts: ForwardOptions = {}): Promise<MtpAgreement> {
    this.needMtp('mtpAgreement');
    const seq = makeSeq(ids, opts.segments);
    const g = this.graph(null, opts.adapter, null);
    const X = await this.trunk(g, seq);
    const hn = await this.headInput(g, X, seq);
    return this.agreement(g, ids, seq, X, (await this.headTop1(hn, seq.T, null)).top1);
  }

  /**
   * What an eval needs of one row from a single trunk forward: the loss (as `loss` gives it) and,
   * with `mtp`, the MTP agreement (as `mtpAgreement` gives it); on a backend with
   * lmHeadLossTop1 the main head's top-1 comes from the loss's own pass over the head.
   */
  async evalRow(ids: Int32Array, lossMask: Uint8Array | null, opts: ForwardOptions & { mtp?: boolean } = {}): Promise<{ loss: LossResult; agreement: MtpAgreement | null }> {
    if (!opts.mtp) return { loss: await this.loss(ids, lossMask, opts), agreement: null };
    this.needMtp('mtpAgreement');
    const seq = makeSeq(ids, opts.segments);
    const g = this.graph(null, opts.adapter, null);
    const X = await this.trunk(g, seq);
    const hn = await this.headInput(g, X, seq);
    const c = this.config;
    const targets = nextTokenTargets(seq, lossMask);
    const r = await this.headTop1(hn, seq.T, targets);
    const { lossSum, count } = r.loss ?? await this.backend.lmHeadLossForward(hn, this.weights.head, targets, seq.T, c.hidden_size, c.vocab_size);
    return { loss: { loss: meanLoss(lossSum, count), lossSum, count }, agreement: await this.agreement(g, ids, seq, X, r.top1) };
  }

  private needMtp(what: string): void {
    if (!this.weights.mtp[0]) throw new InputError(`${what}: this checkpoint has no MTP block (mtp.0.*)`);
  }

  /**
   * The head's top-1 for each of the N rows of x, and with `targets` the loss as well (null when
   * not asked for, or when the backend has no lmHeadLossTop1: lmHeadLossForward gives it then).
   */
  private async headTop1(x: F32, N: number, targets: Int32Array | null): Promise<{ top1: Int32Array; loss: { lossSum: number; count: number } | null }> {
    const c = this.config;
    const V = c.vocab_size;
    if (this.backend.lmHeadLossTop1) {
      const r = await this.backend.lmHeadLossTop1(x, this.weights.head, targets ?? new Int32Array(N).fill(-1), N, c.hidden_size, V);
      return { top1: r.top1, loss: targets ? r : null };
    }
    const l = await this.backend.logits(x, this.weights.head, N, c.hidden_size, V);
    return { top1: Int32Array.from({ length: N }, (_, r) => rowArgmax(l, r, V)), loss: null };
  }

  /** mtpAgreement on the trunk's streams X, given the main head's top-1 at every position */
  private async agreement(g: Graph, ids: Int32Array, seq: Seq, X: F32, mainTop: Int32Array): Promise<MtpAgreement> {
    const { hn, rows } = await this.mtpForward(g, ids, seq, X, null);
    if (rows.length === 0) return { agree: 0, pairs: 0 };
    const draft = (await this.headTop1(hn, rows.length, null)).top1;
    let agree = 0;
    let pairs = 0;
    rows.forEach((t, i) => {
      if (t + 2 >= seq.T || seq.segOf[t + 2] !== seq.segOf[t]) return;
      pairs++;
      if (draft[i] === mainTop[t + 1]) agree++;
    });
    return { agree, pairs };
  }

  /**
   * The routing of every MoE layer, for `onRouting`: the blocks, and the MTP block when the
   * checkpoint has one, without the LM heads (profile-experts).
   */
  async route(ids: Int32Array, opts: ForwardOptions = {}): Promise<void> {
    const seq = makeSeq(ids, opts.segments);
    const g = this.graph(null, opts.adapter, null, opts.onRouting, opts.onLinearInput);
    const X = await this.trunk(g, seq);
    if (this.weights.mtp[0]) await this.mtpForward(g, ids, seq, X, opts.onRouting);
  }

  /** The MTP block on the trunk's streams X [T, hc, d]: its normed hidden state per pair row. */
  private mtpForward(g: Graph, ids: Int32Array, seq: Seq, X: F32, onRouting: RoutingObserver | null | undefined): Promise<{ hn: F32; rows: Int32Array }> {
    return mtpPairs(g, this.weights.mtp[0]!, this.weights.embed, ids, seq, X, this.config, this.tables, onRouting);
  }

  private graph(
    tape: Tape | null, adapter: ModelAdapter | null | undefined, dropout: DropoutPlan | null = null,
    onRouting: RoutingObserver | null = null, onLinearInput: LinearInputObserver | null = null, queryChunk = 0,
  ): Graph {
    adapter?.assertFits?.(this.config, 'adapter');
    const routing: RoutingSink | null = onRouting ? (b, idx, w, N, k) => onRouting(b, idx, w, N, k, null) : null;
    return new Graph(this.backend, tape, adapter ?? null, new Map(), null, dropout, routing, onLinearInput, queryChunk);
  }

  /** The LoRA dropout of a training forward: the adapter's dropout with `dropoutSeed`; null when p = 0. */
  private dropoutPlan(opts: GradOptions): DropoutPlan | null {
    const p = opts.adapter.options?.dropout ?? 0;
    if (!(p > 0)) return null;
    if (p >= 1) throw new InputError(`adapter: lora dropout must be in [0, 1) (got ${p})`);
    const seed = opts.dropoutSeed ?? 0;
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
      throw new InputError(`lossAndGrads: dropoutSeed must be an integer in 0..4294967295 (got ${JSON.stringify(seed)})`);
    }
    return { p, seed };
  }

  /** Free the backend's weights. */
  dispose(): void {
    this.backend.dispose();
  }

  /** Float32 RoPE table for a layer's ratio covering positions < len. */
  private table(ratio: number, len: number): RopeTable {
    return this.tables.get(ratio, len);
  }

  /** Streams after the last layer: [T, hc, d]; `checkpointing`: per block (see checkpointedBlock). */
  private async trunk(g: Graph, seq: Seq, checkpointing = false): Promise<F32> {
    const c = this.config;
    let X = await streamsIn(g, this.weights.embed, seq, c);
    const run = checkpointing ? checkpointedBlock : block;
    for (const B of this.weights.layers) X = await run(g, B, X, seq, c, this.table(B.ratio, seq.maxLen));
    return X;
  }

  /** norm(hc_head(trunk)) [T, d]: the head's input. */
  private async hidden(g: Graph, seq: Seq, checkpointing = false): Promise<F32> {
    return this.headInput(g, await this.trunk(g, seq, checkpointing), seq);
  }

  /** norm(hc_head(X)) [T, d] of the trunk's streams X. */
  private async headInput(g: Graph, X: F32, seq: Seq): Promise<F32> {
    const c = this.config;
    const y = await hcHead(g, this.weights.hcHead, X, seq.T, c);
    return g.rmsnorm(y, this.weights.norm, seq.T, c.hidden_size, c.rms_norm_eps);
  }
}

/** One calibration row's place in a V4BlockStream pass: its layout and the streams entering the next block. */
export interface StreamRow {
  readonly ids: Int32Array;
  readonly seq: Seq;
  /** the streams entering block `next` [T, hc, d] (for the MTP block: the trunk's output) */
  X: F32;
  /** the MoE input fx [T, d] and routing of the block last observed on these streams (V4BlockStream.observe) */
  moe?: { block: number; X: F32; fx: F32; idx: Int32Array };
}

/**
 * The model one block at a time, for passes that need every block's inputs but not every block
 * in memory at once (streamed GPTQ calibration, export/calibrate.ts). The embedding stays loaded
 * (the head and the final norms are never loaded: no pass of this reaches the logits); a block's
 * weights are loaded when it first runs and released when another block is loaded, so memory
 * holds the embedding and one block. Block b <
 * num_hidden_layers is `layers.b`; b = num_hidden_layers is the MTP block `mtp.0` where the
 * checkpoint has one, run on the trunk's output as V4Model's `route` runs it. Each block sees the
 * inputs the whole model's forward gives it (the same ops on the same values).
 */
export class V4BlockStream {
  private readonly tables: RopeTables;
  private loaded: { b: number; w: BlockWeights | MtpWeights } | null = null;
  /** block loads so far */
  loads = 0;

  private constructor(private readonly src: ModelSource, readonly backend: Backend, private readonly embed: WeightHandle) {
    this.tables = new RopeTables(src.config);
  }

  static async open(src: ModelSource, backend: Backend): Promise<V4BlockStream> {
    return new V4BlockStream(src, backend, await backend.prepareWeight(src, 'embed.weight'));
  }

  get config(): V4Config {
    return this.src.config;
  }

  /** blocks: the layers, then the MTP block where the checkpoint has one */
  get blocks(): number {
    return this.config.num_hidden_layers + (hasMtp(this.src, 0) ? 1 : 0);
  }

  /** the block a module (`layers.3.attn.wq_a`, `mtp.0.ffn.experts.1.w1`) belongs to, or null */
  blockOf(module: string): number | null {
    const m = /^(layers|mtp)\.(\d+)\./.exec(module);
    if (!m) return null;
    const i = Number(m[2]);
    if (m[1] === 'layers') return i < this.config.num_hidden_layers ? i : null;
    return i === 0 && hasMtp(this.src, 0) ? this.config.num_hidden_layers : null;
  }

  /** a row at the start of a pass: the streams entering block 0 */
  async start(ids: Int32Array, segments?: ArrayLike<number> | null): Promise<StreamRow> {
    const seq = makeSeq(ids, segments);
    return { ids, seq, X: await streamsIn(observingGraph(this.backend, null), this.embed, seq, this.config) };
  }

  /**
   * Block b on the row's streams X (for the MTP block: the trunk's output), its weights loaded
   * first if they are not; returns the streams leaving a layer (for the MTP block, the MTP hidden
   * state). `onLinearInput` is told the inputs of the block's linears.
   */
  async run(b: number, row: StreamRow, onLinearInput: LinearInputObserver | null = null): Promise<F32> {
    row.moe = undefined; // the caller moves the row on: what observe kept goes stale
    const w = await this.load(b);
    const g = observingGraph(this.backend, onLinearInput);
    const c = this.config;
    if (b < c.num_hidden_layers) {
      const B = w as BlockWeights;
      return block(g, B, row.X, row.seq, c, this.tables.get(B.ratio, row.seq.maxLen));
    }
    return (await mtpPairs(g, w as MtpWeights, this.embed, row.ids, row.seq, row.X, c, this.tables, null)).hn;
  }

  /**
   * `run` for the linears' inputs only: a layer stops after its MoE's routing (no expert outputs,
   * no streams out); the MTP block runs whole. `moeOnly`: the observer wants only the MoE's
   * linears (routed and shared experts), so the MoE input and routing kept from this row's last
   * observation of block b are told again without running attention (the same values).
   */
  async observe(b: number, row: StreamRow, onLinearInput: LinearInputObserver, moeOnly = false): Promise<void> {
    const c = this.config;
    if (b >= c.num_hidden_layers) {
      await this.run(b, row, onLinearInput);
      return;
    }
    const B = (await this.load(b)) as BlockWeights;
    const g = observingGraph(this.backend, onLinearInput);
    const kept = row.moe;
    if (moeOnly && kept && kept.block === b && kept.X === row.X) {
      await observeExpertInputs(g, B.ffn, B.prefix, kept.fx, kept.idx, row.seq.T, c);
      return;
    }
    const { fx, idx } = await blockObserved(g, B, row.X, row.seq, c, this.tables.get(B.ratio, row.seq.maxLen));
    row.moe = { block: b, X: row.X, fx, idx };
  }

  /** block b's weights, loaded (and the block loaded before released) if they are not */
  private async load(b: number): Promise<BlockWeights | MtpWeights> {
    if (this.loaded?.b === b) return this.loaded.w;
    if (b < 0 || b >= this.blocks) throw new InputError(`V4BlockStream: no block ${b} (the model has ${this.blocks})`);
    this.release();
    const c = this.config;
    const w = b < c.num_hidden_layers ? await loadLayer(this.backend, this.src, b) : await loadMtp(this.backend, this.src, 0);
    this.loaded = { b, w };
    this.loads++;
    return w;
  }

  private release(): void {
    if (!this.loaded) return;
    this.backend.releaseWeights(weightHandles(this.loaded.w));
    this.loaded = null;
  }

  /** Free every weight (the backend's too). */
  dispose(): void {
    this.release();
    this.backend.dispose();
  }
}

/** the first index of row r's largest value in l [·, V] (NaN never wins) */
function rowArgmax(l: Float32Array, r: number, V: number): number {
  const o = r * V;
  let best = 0;
  let top = l[o]!;
  for (let v = 1; v < V; v++) {
    const x = l[o + v]!;
    if (x > top) {
      top = x;
      best = v;
    }
  }
  return best;
}
