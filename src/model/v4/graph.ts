// The graph context of one forward: the backend, the tape (null when no gradient is wanted), the
// adapter, the LoRA dropout of a training forward, and the LoRA gradients that the backward
// accumulates. Each method runs one op of src/backend/ops.ts and records its backward on the tape.
import { loraDropout, moduleDropoutSeed } from '../../backend/dropout.js';
import type {
  Backend, ExpertLora, ExpertLoraGrads, ExpertWeights, F32, I32, LoraFactors, LoraGrads, RopeTable, WeightHandle,
} from '../../backend/ops.js';
import type { Tape } from '../../backend/tape.js';
import { V4tuneError } from '../../errors.js';

/** What the graph needs of an adapter: the LoRA factors of an official module name, if any. */
export interface AdapterView {
  factors(module: string): LoraFactors | undefined;
}

function addInto(acc: Map<string, LoraGrads>, module: string, g: LoraGrads): void {
  const have = acc.get(module);
  if (!have) {
    acc.set(module, { dA: g.dA.slice(), dB: g.dB.slice() });
    return;
  }
  for (let i = 0; i < g.dA.length; i++) have.dA[i] += g.dA[i];
  for (let i = 0; i < g.dB.length; i++) have.dB[i] += g.dB[i];
}

/**
 * LoRA dropout of one training forward: probability p on every adapted module's LoRA input, each
 * module's mask seeded by `seed` and the module's name (src/backend/dropout.ts), so the masks are
 * a pure function of (seed, module, row, col): a recomputed forward draws them again.
 */
export interface DropoutPlan {
  readonly p: number;
  readonly seed: number;
}

/** One discrete choice of a forward: routing indices [T, k] or an indexer selection [T, K]. */
export interface Choice {
  readonly kind: 'router' | 'indexer';
  readonly idx: I32;
  readonly K: number;
}

/**
 * The discrete choices of a forward in the order it made them. A log records while it is fresh;
 * after `replay()` it hands the same choices back in the same order, so a recomputed forward
 * routes and selects exactly as the first one did (activation checkpointing). It also keeps the
 * outputs a recompute may take as the first forward computed them instead of computing them
 * again (attention's chunked query path, whose backward reruns it anyway).
 */
export class ChoiceLog {
  readonly made: Choice[] = [];
  readonly outputs: F32[] = [];
  private cursor = -1;
  private outputCursor = 0;

  get replaying(): boolean {
    return this.cursor >= 0;
  }

  /** From now on, hand back the recorded choices (and kept outputs) from the first. */
  replay(): void {
    this.cursor = 0;
    this.outputCursor = 0;
  }

  /** Recording: keep an output for the recompute. */
  keepOutput(y: F32): void {
    this.outputs.push(y);
  }

  /** Replaying: the next kept output, which must have `length` elements. */
  nextOutput(length: number): F32 {
    const y = this.outputs[this.outputCursor++];
    if (!y || y.length !== length) {
      throw new V4tuneError(`activation checkpointing: the recomputed forward asked for a kept output of ${length} elements where the first forward kept ${y ? `${y.length}` : 'none'}`);
    }
    return y;
  }

  /** Recording: keep `c`. */
  push(c: Choice): void {
    this.made.push(c);
  }

  /** Replaying: the next recorded choice, which must be of `kind`. */
  next(kind: Choice['kind']): Choice {
    const c = this.made[this.cursor++];
    if (!c || c.kind !== kind) {
      throw new V4tuneError(`activation checkpointing: the recomputed forward asked for a ${kind} choice where the first forward's next choice was ${c ? `a ${c.kind} choice` : 'none (it made no more choices)'}`);
    }
    return c;
  }
}

/**
 * Sees each MoE layer's routing in an inference forward: `block` (`layers.3`, `mtp.0`), the chosen
 * experts idx [N, k] and their weights [N, k] (w = s[idx] / Σ s[idx] · routed_scaling_factor;
 * hash layers: the tid2eid experts with their weights), for the N rows the block ran on.
 */
export type RoutingSink = (block: string, idx: I32, weights: F32, N: number, k: number) => void;

/**
 * Sees the input x [rows, cols] of a named linear in an inference forward (module: the official
 * name without `.weight`, e.g. `layers.3.attn.wq_a`, `layers.3.ffn.experts.5.w2`). A grouped
 * linear (wo_a) is told its whole input, cols = G·inG, group g reading columns g·inG … (g+1)·inG.
 * Routed experts: only the rows routed to the expert, `tokenIdx` [rows] their row in the block's
 * input; null for every other linear (row t is row t). Expert w2: the clamped SwiGLU activation.
 */
export type LinearInputSink = ((module: string, x: F32, rows: number, cols: number, tokenIdx: I32 | null) => void) & {
  /**
   * the linears the sink listens to (absent: all): it is told only those, and an input computed
   * only to be told (an expert w2's activation, recomputed from its w1 and w3) is not computed
   * for the others
   */
  wants?: (module: string) => boolean;
};

export class Graph {
  /**
   * `loraGrads`: module name → accumulated gradients of its LoRA factors (shared by the graphs of
   * one step); `choices`: where discrete choices are recorded or replayed from (null: neither);
   * `dropout`: the LoRA dropout of a training forward (null: none, as in every inference forward);
   * `routing`: told every MoE layer's routing (null: nobody listens); `linearInput`: told the
   * input of every named linear (null: nobody listens); `queryChunk`: in a taped forward,
   * attention's per-query path runs over chunks of this many rows (0: the whole sequence at once;
   * attention.ts); `row0`: the model row of row 0 of the ops' inputs (a chunk's graph), for the
   * LoRA dropout masks.
   */
  constructor(
    readonly be: Backend, readonly tape: Tape | null, readonly adapter: AdapterView | null,
    readonly loraGrads: Map<string, LoraGrads> = new Map(), readonly choices: ChoiceLog | null = null,
    readonly dropout: DropoutPlan | null = null, readonly routing: RoutingSink | null = null,
    readonly linearInput: LinearInputSink | null = null, readonly queryChunk = 0, readonly row0 = 0,
  ) {}

  /** The same backend, adapter, dropout and sinks with nothing recorded (the indexer's discrete path). */
  untaped(): Graph {
    return new Graph(this.be, null, this.adapter, new Map(), null, this.dropout, this.routing, this.linearInput, this.queryChunk, this.row0);
  }

  /** The same backend, adapter, dropout, sinks and gradient sums on another tape and choice log. */
  with(tape: Tape | null, choices: ChoiceLog | null): Graph {
    return new Graph(this.be, tape, this.adapter, this.loraGrads, choices, this.dropout, this.routing, this.linearInput, this.queryChunk, this.row0);
  }

  /** The same graph with another routing sink (the MTP block maps its rows back to token positions). */
  withRouting(routing: RoutingSink | null): Graph {
    return new Graph(this.be, this.tape, this.adapter, this.loraGrads, this.choices, this.dropout, routing, this.linearInput, this.queryChunk, this.row0);
  }

  /**
   * The graph of the rows row0 … of the sequence run alone on `tape` (no choices: a chunk of
   * row-wise ops makes none): same backend, adapter, dropout and gradient sums; the dropout masks
   * are the ones the whole sequence's ops draw on those rows.
   */
  atRows(tape: Tape | null, row0: number): Graph {
    return new Graph(this.be, tape, this.adapter, this.loraGrads, null, this.dropout, null, null, 0, row0);
  }

  /** An indexer selection: made by `make`, or the recorded one when replaying. */
  async select(make: () => Promise<{ idx: I32; K: number }>): Promise<{ idx: I32; K: number }> {
    if (this.choices?.replaying) return this.choices.next('indexer');
    const r = await make();
    this.choices?.push({ kind: 'indexer', idx: r.idx, K: r.K });
    return r;
  }

  /** The LoRA factors of `module`, with its dropout when this forward drops. */
  lora(module: string | null): LoraFactors | null {
    const f = module && this.adapter ? this.adapter.factors(module) : undefined;
    if (!module || !f) return null;
    if (!this.dropout) return f;
    const dropout = loraDropout(this.dropout.p, moduleDropoutSeed(this.dropout.seed, module), this.row0);
    return { A: f.A, B: f.B, r: f.r, scaling: f.scaling, dropout };
  }

  private expertLora(module: string): ExpertLora {
    const out: { w1?: LoraFactors; w2?: LoraFactors; w3?: LoraFactors } = {};
    for (const p of ['w1', 'w2', 'w3'] as const) {
      const f = this.lora(`${module}.${p}`);
      if (f) out[p] = f;
    }
    return out;
  }

  private addExpertGrads(module: string, g: ExpertLoraGrads): void {
    for (const p of ['w1', 'w2', 'w3'] as const) {
      const gp = g[p];
      if (gp) addInto(this.loraGrads, `${module}.${p}`, gp);
    }
  }

  async embedding(W: WeightHandle, ids: I32, N: number, d: number): Promise<F32> {
    return this.be.embedding(W, ids, N, d);
  }

  async rmsnorm(x: F32, w: WeightHandle | null, N: number, C: number, eps: number): Promise<F32> {
    const { y, saved } = await this.be.rmsnormForward(x, w, N, C, eps);
    this.tape?.record([x], [y], async ([dy]) => [(await this.be.rmsnormBackward(saved, dy)).dx], [saved]);
    return y;
  }

  // a linear's input to the linearInput sink, if it listens to that linear
  private tell(module: string, x: F32, N: number, cols: number): void {
    const sink = this.linearInput;
    if (sink && (sink.wants?.(module) ?? true)) sink(module, x, N, cols, null);
  }

  /** y = x Wᵀ (+ LoRA of `module` when the adapter has one). */
  async linear(x: F32, W: WeightHandle, module: string | null, N: number, inF: number, outF: number): Promise<F32> {
    if (module) this.tell(module, x, N, inF);
    const lora = this.lora(module);
    const { y, saved } = await this.be.linearForward(x, W, lora, N, inF, outF);
    this.tape?.record([x], [y], async ([dy]) => {
      const r = await this.be.linearBackward(saved, dy);
      if (r.lora && module) addInto(this.loraGrads, module, r.lora);
      return [r.dx];
    }, [saved]);
    return y;
  }

  async groupedLinear(x: F32, W: WeightHandle, module: string | null, N: number, G: number, inG: number, outG: number): Promise<F32> {
    if (module) this.tell(module, x, N, G * inG);
    const lora = this.lora(module);
    const { y, saved } = await this.be.groupedLinearForward(x, W, lora, N, G, inG, outG);
    this.tape?.record([x], [y], async ([dy]) => {
      const r = await this.be.groupedLinearBackward(saved, dy);
      if (r.lora && module) addInto(this.loraGrads, module, r.lora);
      return [r.dx];
    }, [saved]);
    return y;
  }

  async mhcPre(
    X: F32, fn: WeightHandle, scale: WeightHandle, base: WeightHandle,
    N: number, hc: number, d: number, iters: number, hcEps: number, normEps: number,
  ): Promise<{ y: F32; post: F32; comb: F32 }> {
    const { y, post, comb, saved } = await this.be.mhcPreForward(X, fn, scale, base, N, hc, d, iters, hcEps, normEps);
    this.tape?.record([X], [y, post, comb], async ([dy, dp, dc]) => [(await this.be.mhcPreBackward(saved, dy, dp, dc)).dX], [saved]);
    return { y, post, comb };
  }

  async mhcPost(f: F32, res: F32, post: F32, comb: F32, N: number, hc: number, d: number): Promise<F32> {
    const { out, saved } = await this.be.mhcPostForward(f, res, post, comb, N, hc, d);
    this.tape?.record([f, res, post, comb], [out], async ([dout]) => {
      const r = await this.be.mhcPostBackward(saved, dout);
      return [r.df, r.dres, r.dpost, r.dcomb];
    }, [saved]);
    return out;
  }

  async hcHead(X: F32, fn: WeightHandle, scale: WeightHandle, base: WeightHandle, N: number, hc: number, d: number, hcEps: number, normEps: number): Promise<F32> {
    const { y, saved } = await this.be.hcHeadForward(X, fn, scale, base, N, hc, d, hcEps, normEps);
    this.tape?.record([X], [y], async ([dy]) => [(await this.be.hcHeadBackward(saved, dy)).dX], [saved]);
    return y;
  }

  /** RoPE of x; `inPlace`: x is a temporary nothing else reads (not saved by the op that made it), rotated where it lies */
  async rope(x: F32, pos: I32, table: RopeTable, N: number, nh: number, hd: number, inverse: boolean, inPlace = false): Promise<F32> {
    const { y, saved } = await this.be.ropeForward(x, pos, table, N, nh, hd, inverse, inPlace);
    this.tape?.record([x], [y], async ([dy]) => [(await this.be.ropeBackward(saved, dy)).dx], [saved]);
    return y;
  }

  async compressor(a: F32, z: F32, ape: WeightHandle, segs: I32, N: number, m: number, hd: number, overlap: boolean): Promise<F32> {
    const { out, saved } = await this.be.compressorForward(a, z, ape, segs, N, m, hd, overlap);
    this.tape?.record([a, z], [out], async ([dout]) => {
      const r = await this.be.compressorBackward(saved, dout);
      return [r.da, r.dz];
    }, [saved]);
    return out;
  }

  async attention(q: F32, kv: F32, sink: WeightHandle, idx: I32, N: number, H: number, D: number, M: number, K: number, scale: number): Promise<F32> {
    const { o, saved } = await this.be.attentionForward(q, kv, sink, idx, N, H, D, M, K, scale);
    this.tape?.record([q, kv], [o], async ([dout]) => {
      const r = await this.be.attentionBackward(saved, dout);
      return [r.dq, r.dkv];
    }, [saved]);
    return o;
  }

  async router(x: F32, W: WeightHandle, bias: WeightHandle | null, hashIdx: I32 | null, N: number, d: number, E: number, k: number, routeScale: number): Promise<{ weights: F32; idx: I32 }> {
    // A replay passes the recorded indices as given indices: the op's weights are s[idx] / Σ s[idx]
    // either way, so the recomputed weights are the first forward's, bit for bit.
    const given = this.choices?.replaying ? this.choices.next('router').idx : hashIdx;
    const { weights, idx, saved } = await this.be.routerForward(x, W, bias, given, N, d, E, k, routeScale);
    if (this.choices && !this.choices.replaying) this.choices.push({ kind: 'router', idx, K: k });
    this.tape?.record([x], [weights], async ([dw]) => [(await this.be.routerBackward(saved, dw)).dx], [saved]);
    return { weights, idx };
  }

  /** Routed experts of `module` (e.g. `layers.3.ffn.experts`): LoRA per expert `module.E.wN`. */
  async routedExperts(x: F32, idx: I32, weights: F32, experts: readonly ExpertWeights[], module: string, N: number, d: number, I: number, k: number, limit: number): Promise<F32> {
    const lora = experts.map((_, e) => this.expertLora(`${module}.${e}`));
    const { y, saved } = await this.be.routedExpertsForward(x, idx, weights, experts, lora, N, d, I, k, limit, this.tape != null);
    this.tape?.record([x, weights], [y], async ([dy]) => {
      const r = await this.be.routedExpertsBackward(saved, dy);
      r.lora.forEach((g, e) => this.addExpertGrads(`${module}.${e}`, g));
      return [r.dx, r.dweights];
    }, [saved]);
    return y;
  }

  /** One SwiGLU expert (the shared expert, `module` e.g. `layers.3.ffn.shared_experts`). */
  async swiglu(x: F32, w: ExpertWeights, module: string, N: number, d: number, I: number, limit: number): Promise<F32> {
    const lora = this.expertLora(module);
    const { y, saved } = await this.be.swigluForward(x, w, lora, N, d, I, limit, this.tape != null);
    this.tape?.record([x], [y], async ([dy]) => {
      const r = await this.be.swigluBackward(saved, dy);
      this.addExpertGrads(module, r.lora);
      return [r.dx];
    }, [saved]);
    return y;
  }

  // ---- host ops: element-wise sums and row concatenation

  /** a + b (same length). */
  add(a: F32, b: F32): F32 {
    const y = new Float32Array(a.length);
    for (let i = 0; i < a.length; i++) y[i] = a[i] + b[i];
    this.tape?.record([a, b], [y], async ([dy]) => [dy, dy.slice()]);
    return y;
  }

  /** Rows of the parts one after the other (all with the same row width). */
  concat(parts: F32[]): F32 {
    let n = 0;
    for (const p of parts) n += p.length;
    const y = new Float32Array(n);
    let o = 0;
    for (const p of parts) {
      y.set(p, o);
      o += p.length;
    }
    this.tape?.record(parts, [y], async ([dy]) => {
      let off = 0;
      return parts.map((p) => {
        const g = dy.slice(off, off + p.length);
        off += p.length;
        return g;
      });
    });
    return y;
  }

  /** x [N, d] repeated into hc streams: [N, hc, d]. */
  repeatStreams(x: F32, N: number, hc: number, d: number): F32 {
    const y = new Float32Array(N * hc * d);
    for (let n = 0; n < N; n++) for (let h = 0; h < hc; h++) y.set(x.subarray(n * d, (n + 1) * d), (n * hc + h) * d);
    this.tape?.record([x], [y], async ([dy]) => {
      const dx = new Float32Array(N * d);
      for (let n = 0; n < N; n++) for (let h = 0; h < hc; h++) for (let c = 0; c < d; c++) dx[n * d + c] += dy[(n * hc + h) * d + c];
      return [dx];
    });
    return y;
  }
}
