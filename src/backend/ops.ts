// The op interface of the DeepSeek V4 graph. Every backend (tfjs, native C++, ascend)
// implements exactly this; the model in src/model/v4/ calls nothing else.
//
// Conventions (llm.c style):
// - Activations are plain host buffers: Float32Array / Int32Array, row-major, float32.
//   The shape of every buffer is stated in the comment above its op.
// - Base weights are `WeightHandle`s made by `backend.prepareWeight`: the backend decides how it
//   holds them (tfjs: dequantised fp32 tensors; native: the shipped FP8/FP4/BF16 bytes).
//   Base weights are frozen: no op returns a gradient for them.
// - LoRA factors (the only trainable parameters) are host buffers (`LoraFactors`).
// - Every compute op is async (a native backend runs its kernels off the JS thread).
// - A forward returns its outputs and a `Saved` context. The matching backward takes that context
//   and the gradients of the outputs, and returns fresh buffers with the gradients of the inputs
//   and of the LoRA factors; the caller (the tape) accumulates them. Only the backend that made a
//   `Saved` reads it.
// - A packed row of segments is handled by the ops that look across tokens (compressor pooling,
//   indexer, attention): they take the segment lengths or explicit index lists, so no value ever
//   crosses a segment boundary. Every other op is per token.

export type F32 = Float32Array;
export type I32 = Int32Array;

/** A frozen base weight in the backend's own representation. Opaque to the model. */
export interface WeightHandle {
  readonly name: string;
  /** logical (dequantised) shape, e.g. [out, in] for a linear weight */
  readonly shape: readonly number[];
}

/** Where weights come from: the checkpoint (src/model/checkpoint.ts satisfies this). */
export interface WeightSource {
  meta(name: string): { logicalShape: number[]; format: string };
  f32(name: string, expectShape?: number[]): Promise<Float32Array>;
}

/**
 * Dropout on a LoRA input (PEFT's lora_dropout; training only). The LoRA path reads x ⊙ m/(1−p)
 * where the base path reads x: element (row, col) of the op's LoRA input is kept iff
 * hash32(seed, row, col) >>> 8 ≥ threshold (src/backend/dropout.ts, the one definition).
 * row: the token's index in the op's x [N, ·] (routed experts: the token's index in x, never its
 * expert-sorted position); col: the column of that input (grouped linear: g·inG + i; the expert
 * w2: the column of act [·, I]). The mask's gradient: dx gets the LoRA part ⊙ m/(1−p), and dA is
 * taken against the masked input. Absent (or p = 0): no dropout.
 */
export interface LoraDropout {
  /** drop probability in [0, 1) */
  readonly p: number;
  /** ⌊p·2^24⌋ */
  readonly threshold: number;
  /** uint32 seed of this module's mask in this forward */
  readonly seed: number;
  /**
   * The model row of the op's input row 0 (default 0): row i of a plain or grouped linear's
   * input is model row row0 + i, so an op run on the rows t0 … t1−1 alone (a query chunk)
   * draws the mask the whole sequence's op draws there. Routed experts name their rows.
   */
  readonly row0?: number;
}

/** One adapted module: y += scaling · (dropout(x) Aᵀ) Bᵀ; A is [r, in], B is [out, r]. */
export interface LoraFactors {
  readonly A: F32;
  readonly B: F32;
  readonly r: number;
  readonly scaling: number;
  /** dropout on this module's LoRA input (training forwards only); absent: none */
  readonly dropout?: LoraDropout;
}

/** Gradients of the loss with respect to a module's LoRA factors (shapes of A and B). */
export interface LoraGrads {
  dA: F32;
  dB: F32;
}

/** What a forward keeps for its backward. Only the backend that made it reads it. */
export interface Saved {
  readonly op: string;
}

/** The three projections of one SwiGLU expert, each [out, in]: w1, w3 [I, d], w2 [d, I]. */
export interface ExpertWeights {
  readonly w1: WeightHandle;
  readonly w2: WeightHandle;
  readonly w3: WeightHandle;
}

/** LoRA factors of one expert's projections (any may be absent). */
export interface ExpertLora {
  readonly w1?: LoraFactors;
  readonly w2?: LoraFactors;
  readonly w3?: LoraFactors;
}

export interface ExpertLoraGrads {
  w1?: LoraGrads;
  w2?: LoraGrads;
  w3?: LoraGrads;
}

/** Float32 RoPE tables: angle of pair i at position p is cos[p·(rd/2)+i], sin[p·(rd/2)+i]. */
export interface RopeTable {
  readonly rd: number;
  readonly maxPos: number;
  readonly cos: F32;
  readonly sin: F32;
}

export interface Backend {
  /** 'tfjs (wasm)', 'tfjs (cpu)', 'native (avx2)', ... for the one-line note */
  readonly name: string;

  /** Load one base weight (official checkpoint name) into the backend's representation. */
  prepareWeight(src: WeightSource, name: string): Promise<WeightHandle>;
  /** A weight from host values (tests, presets): [shape], row-major. */
  weightFromArray(name: string, data: F32, shape: number[]): WeightHandle;
  /**
   * Free these weights (a streamed model drops a block it is done with: V4BlockStream); handles
   * this backend did not make are ignored.
   */
  releaseWeights(handles: Iterable<WeightHandle>): void;
  /** Free everything this backend holds. */
  dispose(): void;

  // ---- embedding: out [N, d] = W[ids[n]]; W [V, d]. No backward (the embedding is frozen).
  embedding(W: WeightHandle, ids: I32, N: number, d: number): Promise<F32>;

  // ---- rmsnorm: y [N, C] = x / sqrt(mean(x²) + eps) ⊙ w; w [C] or null (no weight).
  rmsnormForward(x: F32, w: WeightHandle | null, N: number, C: number, eps: number): Promise<{ y: F32; saved: Saved }>;
  rmsnormBackward(saved: Saved, dy: F32): Promise<{ dx: F32 }>;

  // ---- linear with optional LoRA: y [N, out] = x Wᵀ + s·(x Aᵀ) Bᵀ; x [N, in], W [out, in].
  linearForward(x: F32, W: WeightHandle, lora: LoraFactors | null, N: number, inF: number, outF: number): Promise<{ y: F32; saved: Saved }>;
  linearBackward(saved: Saved, dy: F32): Promise<{ dx: F32; lora: LoraGrads | null }>;

  // ---- grouped linear (wo_a): x [N, G, inG]; W [G·outG, inG]; group g uses rows g·outG…(g+1)·outG.
  // y [N, G·outG], y[n, g·outG + o] = Σ_i W[g·outG+o, i]·x[n,g,i] + (the same with s·B A for W).
  // A LoRA on it has A [r, inG], B [G·outG, r]: its delta has W's shape and is applied per group.
  groupedLinearForward(x: F32, W: WeightHandle, lora: LoraFactors | null, N: number, G: number, inG: number, outG: number): Promise<{ y: F32; saved: Saved }>;
  groupedLinearBackward(saved: Saved, dy: F32): Promise<{ dx: F32; lora: LoraGrads | null }>;

  // ---- mHC pre: X [N, hc, d]; fn [(2+hc)·hc, hc·d]; scale [3]; base [(2+hc)·hc].
  // m = (fn·flat(X)) / sqrt(mean(flat(X)²) + normEps)
  // pre = σ(m[0:hc]·scale0 + base) + hcEps; post = 2σ(m[hc:2hc]·scale1 + base);
  // comb = Sinkhorn(softmax_j(m[2hc:]·scale2 + base) + hcEps), `iters` rounds (column first).
  // y [N, d] = Σ_i pre_i X_i; post [N, hc]; comb [N, hc, hc] (comb[n, i, j]: stream i → stream j).
  mhcPreForward(
    X: F32, fn: WeightHandle, scale: WeightHandle, base: WeightHandle,
    N: number, hc: number, d: number, iters: number, hcEps: number, normEps: number,
  ): Promise<{ y: F32; post: F32; comb: F32; saved: Saved }>;
  mhcPreBackward(saved: Saved, dy: F32, dpost: F32, dcomb: F32): Promise<{ dX: F32 }>;

  // ---- mHC post: out [N, hc, d], out[n, j] = post[n, j]·f[n] + Σ_i comb[n, i, j]·res[n, i].
  // f [N, d]; res [N, hc, d]; post [N, hc]; comb [N, hc, hc].
  mhcPostForward(f: F32, res: F32, post: F32, comb: F32, N: number, hc: number, d: number): Promise<{ out: F32; saved: Saved }>;
  mhcPostBackward(saved: Saved, dout: F32): Promise<{ df: F32; dres: F32; dpost: F32; dcomb: F32 }>;

  // ---- hc_head: X [N, hc, d]; fn [hc, hc·d]; scale [1]; base [hc].
  // pre = σ((fn·flat(X)) / sqrt(mean(flat(X)²) + normEps)·scale + base) + hcEps; y [N, d] = Σ_i pre_i X_i.
  hcHeadForward(X: F32, fn: WeightHandle, scale: WeightHandle, base: WeightHandle, N: number, hc: number, d: number, hcEps: number, normEps: number): Promise<{ y: F32; saved: Saved }>;
  hcHeadBackward(saved: Saved, dy: F32): Promise<{ dX: F32 }>;

  // ---- interleaved RoPE on the last rd dims of each head: x [N, nh, hd]; pos [N].
  // Pair k = (x[hd-rd+2k], x[hd-rd+2k+1]) is multiplied by e^{±iθ(pos, k)} (− when inverse).
  // Linear and orthogonal: the backward is the opposite rotation of dy.
  // inPlace: the caller gives up x (nothing else reads it after): y may be x's memory rotated in
  // place (a new view of it, so the tape still tells them apart), only the rd dims touched.
  ropeForward(x: F32, pos: I32, table: RopeTable, N: number, nh: number, hd: number, inverse: boolean, inPlace?: boolean): Promise<{ y: F32; saved: Saved }>;
  ropeBackward(saved: Saved, dy: F32): Promise<{ dx: F32 }>;

  // ---- compressor pooling. a, z [N, cw] (cw = hd, or 2·hd when overlap, i.e. ratio 4);
  // ape [m, cw]; segs: segment lengths (Σ = N). Per segment, whole windows of m tokens only:
  // z' = z + ape[pos mod m]; entry i = Σ_rows softmax_rows(z') ⊙ a over the window's rows
  // (overlap: window i−1's rows through channels [0:hd] and window i's through [hd:2hd]; the
  // first window of a segment has no previous rows).
  // out [M, hd], M = Σ_seg ⌊len/m⌋, entries of each segment in order.
  compressorForward(a: F32, z: F32, ape: WeightHandle, segs: I32, N: number, m: number, hd: number, overlap: boolean): Promise<{ out: F32; saved: Saved }>;
  compressorBackward(saved: Saved, dout: F32): Promise<{ da: F32; dz: F32 }>;

  // ---- lightning indexer top-k (discrete: no backward).
  // q [N, nh, hd]; k [M, hd]; w [N, nh]; query n sees entries kStart[n] … kStart[n]+kCount[n]−1.
  // score[n][s] = Σ_h w[n,h]·ReLU(q[n,h]·k[s]); keeps the top min(topk, kCount[n]) visible
  // entries, ties toward the lower index. idx [N, K] (K = min(topk, max kCount)): row indices
  // into k, −1 padded.
  indexerTopk(q: F32, k: F32, w: F32, kStart: I32, kCount: I32, N: number, M: number, nh: number, hd: number, topk: number): Promise<{ idx: I32; K: number }>;

  // ---- sparse attention with a sink. q [N, H, D]; kv [M, D] (key = value); sink [H];
  // idx [N, K] rows of kv, −1 = none. s = q·kv[idx]·scale;
  // p = e^s / (Σ e^s + e^sink[h]); o [N, H, D] = Σ p·kv[idx]. saved never holds o: the op after
  // may overwrite o in place (the backward needs q, kv and what the forward computed beside o).
  attentionForward(q: F32, kv: F32, sink: WeightHandle, idx: I32, N: number, H: number, D: number, M: number, K: number, scale: number): Promise<{ o: F32; saved: Saved }>;
  attentionBackward(saved: Saved, dout: F32): Promise<{ dq: F32; dkv: F32 }>;

  // ---- router. x [N, d]; gate W [E, d]; bias [E] or null; s = sqrt(softplus(x Wᵀ)) [N, E].
  // idx [N, k]: hashIdx when given (hash layers: tid2eid rows), else top-k of s + bias (ties to
  // the lower index). weights [N, k] = s[idx] / Σ s[idx] · routeScale (bias never weights).
  routerForward(x: F32, W: WeightHandle, bias: WeightHandle | null, hashIdx: I32 | null, N: number, d: number, E: number, k: number, routeScale: number): Promise<{ weights: F32; idx: I32; saved: Saved }>;
  routerBackward(saved: Saved, dweights: F32): Promise<{ dx: F32 }>;

  // ---- routed experts, clamped SwiGLU with LoRA. x [N, d]; idx, weights [N, k].
  // y [N, d] = Σ_slots weights[n,j] · w2_e( silu(min(w1_e x, L)) ⊙ clamp(w3_e x, −L, L) ), e = idx[n,j].
  // experts[e], lora[e] (may be empty). I = moe_intermediate_size.
  /** train: a forward whose backward follows (a backend may keep more for it, e.g. the experts' hidden activations) */
  routedExpertsForward(x: F32, idx: I32, weights: F32, experts: readonly ExpertWeights[], lora: readonly ExpertLora[], N: number, d: number, I: number, k: number, limit: number, train?: boolean): Promise<{ y: F32; saved: Saved }>;
  routedExpertsBackward(saved: Saved, dy: F32): Promise<{ dx: F32; dweights: F32; lora: ExpertLoraGrads[] }>;

  // ---- one clamped SwiGLU expert on every row (the shared expert): x [N, d] → y [N, d].
  swigluForward(x: F32, w: ExpertWeights, lora: ExpertLora, N: number, d: number, I: number, limit: number, train?: boolean): Promise<{ y: F32; saved: Saved }>;
  swigluBackward(saved: Saved, dy: F32): Promise<{ dx: F32; lora: ExpertLoraGrads }>;

  // ---- lm head logits: x [N, d]; W [V, d] → [N, V].
  logits(x: F32, W: WeightHandle, N: number, d: number, V: number): Promise<F32>;

  // ---- lm head + cross-entropy in vocabulary chunks (never N × V at once).
  // x [N, d]; W [V, d]; targets [N] (−1 = not counted).
  // lossSum = Σ_{n counted} logsumexp(x_n Wᵀ) − x_n·W[targets[n]]; count = #counted.
  // backward: dx for d(lossSum)·dLossSum. withGrad (a backward will follow): a backend may
  // compute d(lossSum)/dx in the forward's own pass over W and only scale it in the backward
  // (native: two passes over the vocabulary per step instead of three).
  lmHeadLossForward(x: F32, W: WeightHandle, targets: I32, N: number, d: number, V: number, withGrad?: boolean): Promise<{ lossSum: number; count: number; saved: Saved }>;
  lmHeadLossBackward(saved: Saved, dLossSum: number): Promise<{ dx: F32 }>;
  /**
   * Optional (the native backend has it): lmHeadLossForward's loss, the same bits, and every
   * row's top-1 (the first index of its largest logit, counted or not), in one pass over the head
   * without N × V logits. Without it the model takes logits() and finds the top-1 itself.
   */
  lmHeadLossTop1?(x: F32, W: WeightHandle, targets: I32, N: number, d: number, V: number): Promise<{ lossSum: number; count: number; top1: I32 }>;
  /**
   * Optional (the native backend has it): dst[i] += src[i], the tape's gradient sums, with the
   * bits of host.ts addInto (one float add an element). Without it the tape runs that loop.
   */
  addInto?(dst: F32, src: F32): void;
}

export type BackendName = 'auto' | 'native' | 'tfjs' | 'ascend';
