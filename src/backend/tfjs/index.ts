// The tfjs backend: every op of src/backend/ops.ts written with @tensorflow/tfjs in float32.
// Forwards keep their host inputs; each backward re-runs the op's forward under tf.grads and
// returns the vector-Jacobian product (autodiff of the forward), except RoPE (an exact host
// rotation), the indexer (discrete) and the lm-head loss (an explicit chunked softmax backward).
// Engine: tfjs-node when installed, else wasm, else the plain-JS cpu backend.
import * as tf from '@tensorflow/tfjs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { V4tuneError } from '../../errors.js';
import { dropoutMask } from '../dropout.js';
import type {
  Backend, ExpertLora, ExpertLoraGrads, ExpertWeights, F32, I32, LoraFactors, LoraGrads, RopeTable, Saved,
  WeightHandle, WeightSource,
} from '../ops.js';
import { ropeRotate, routeFromScores, topkLowerIndex } from '../host.js';

class TfWeight implements WeightHandle {
  /** row blocks of VOCAB_CHUNK rows (the lm head), split once on first use */
  chunks: tf.Tensor[] | null = null;
  constructor(readonly name: string, readonly shape: readonly number[], readonly t: tf.Tensor) {}
}

/** Vocabulary rows per lm-head chunk. */
const VOCAB_CHUNK = 8192;

/** The weight's row blocks of VOCAB_CHUNK rows (kept with the weight). */
function rowChunks(h: WeightHandle): tf.Tensor[] {
  const w = h as TfWeight;
  if (!w.chunks) {
    const V = w.shape[0];
    const sizes: number[] = [];
    for (let v0 = 0; v0 < V; v0 += VOCAB_CHUNK) sizes.push(Math.min(VOCAB_CHUNK, V - v0));
    w.chunks = sizes.length === 1 ? [wt(h)] : tf.split(wt(h), sizes, 0);
  }
  return w.chunks;
}

function wt(h: WeightHandle): tf.Tensor {
  if (!(h instanceof TfWeight)) throw new V4tuneError(`tfjs backend: weight ${h.name} was not prepared by the tfjs backend`);
  return h.t;
}

function expectSaved<S extends Saved>(s: Saved, op: string): S {
  if (s.op !== op) throw new V4tuneError(`tfjs backend: ${op} backward got the saved context of ${s.op}`);
  return s as S;
}

/** Host copy of a tensor's values (never the tensor's own storage). */
function host(t: tf.Tensor): F32 {
  return (t.dataSync() as Float32Array).slice();
}

const f32 = (a: F32, shape: number[]): tf.Tensor => tf.tensor(a, shape, 'float32');
const i32 = (a: I32 | number[], shape: number[]): tf.Tensor => tf.tensor(a, shape, 'int32');

/** Rows of x at idx; its gradient scatters (sums) dy back to those rows. x [n, c], idx int32 [m]. */
function gatherRows(x: tf.Tensor, idx: tf.Tensor): tf.Tensor {
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const xx = args[0] as tf.Tensor;
    const save = args[1] as tf.GradSaveFunc;
    const shape = xx.shape;
    save([idx]);
    return {
      value: tf.gather(xx, idx),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => [tf.scatterND(tf.expandDims(saved[0], 1), dy, shape)],
    };
  });
  return op(x);
}

/** out [n, c]: out[idx[i]] += u[i]; its gradient gathers dy at idx. u [m, c]. */
function scatterAddRows(u: tf.Tensor, idx: tf.Tensor, n: number): tf.Tensor {
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const uu = args[0] as tf.Tensor;
    const save = args[1] as tf.GradSaveFunc;
    save([idx]);
    return {
      value: tf.scatterND(tf.expandDims(idx, 1), uu, [n, uu.shape[1] as number]),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => [tf.gather(dy, saved[0])],
    };
  });
  return op(u);
}

/**
 * Vector-Jacobian product: the gradients of Σ_i ⟨f(xs)_i, dOuts_i⟩ with respect to xs.
 * Runs inside a tidy; returns host buffers.
 */
function vjp(f: (xs: tf.Tensor[]) => tf.Tensor[], xs: tf.Tensor[], dOuts: tf.Tensor[]): F32[] {
  const g = tf.grads((...args: tf.Tensor[]) => {
    const ys = f(args);
    return tf.addN(ys.map((y, i) => tf.sum(tf.mul(y, dOuts[i]))));
  });
  const outs = tf.tidy(() => g(xs));
  const res = outs.map(host);
  tf.dispose(outs);
  return res;
}

/**
 * y = x Wᵀ + s·((x ⊙ m) Aᵀ)Bᵀ. x [n, in], W [out, in], A [r, in], B [out, r]; m [n, in] the
 * dropout multipliers of the LoRA input (a constant: autodiff gives dx its LoRA part ⊙ m), or null.
 */
function linearTf(x: tf.Tensor, W: tf.Tensor, A: tf.Tensor | null, B: tf.Tensor | null, s: number, m: tf.Tensor | null = null): tf.Tensor {
  const y = tf.matMul(x, W, false, true);
  if (!A || !B) return y;
  return tf.add(y, tf.mul(tf.matMul(tf.matMul(m ? tf.mul(x, m) : x, A, false, true), B, false, true), s));
}

/**
 * The dropout multipliers [N, C] of a module's LoRA input as a tensor (row i is model row rows[i],
 * rows null: i), or null when the module has no dropout (or p = 0).
 */
function dropoutT(l: LoraFactors | null | undefined, rows: ArrayLike<number> | null, N: number, C: number): tf.Tensor | null {
  const d = l?.dropout;
  return d && d.p > 0 ? f32(dropoutMask(d, rows, N, C), [N, C]) : null;
}

/** Clamped SwiGLU: w2( silu(min(w1 x, L)) ⊙ clamp(w3 x, −L, L) ); no clamp when L ≤ 0. */
function swigluTf(
  x: tf.Tensor, w: ExpertWeights, l: LoraTensors, limit: number,
): tf.Tensor {
  let g = linearTf(x, wt(w.w1), l.w1?.A ?? null, l.w1?.B ?? null, l.w1?.s ?? 0, l.w1?.m);
  let u = linearTf(x, wt(w.w3), l.w3?.A ?? null, l.w3?.B ?? null, l.w3?.s ?? 0, l.w3?.m);
  if (limit > 0) {
    g = tf.minimum(g, limit);
    u = tf.clipByValue(u, -limit, limit);
  }
  const h = tf.mul(tf.mul(g, tf.sigmoid(g)), u);
  return linearTf(h, wt(w.w2), l.w2?.A ?? null, l.w2?.B ?? null, l.w2?.s ?? 0, l.w2?.m);
}

interface LoraT {
  A: tf.Tensor;
  B: tf.Tensor;
  s: number;
  /** dropout multipliers of the projection's LoRA input (x for w1, w3; act for w2), or null */
  m: tf.Tensor | null;
}
interface LoraTensors {
  w1?: LoraT;
  w2?: LoraT;
  w3?: LoraT;
}
const PROJ = ['w1', 'w2', 'w3'] as const;

/** The LoRA factors of an expert as tensors, and the flat list of them in PROJ order (A, B). */
function loraList(l: ExpertLora): { host: LoraFactors[]; keys: (typeof PROJ)[number][] } {
  const host: LoraFactors[] = [];
  const keys: (typeof PROJ)[number][] = [];
  for (const p of PROJ) {
    const f = l[p];
    if (f) {
      host.push(f);
      keys.push(p);
    }
  }
  return { host, keys };
}

/** rows: the model rows (token indices) of the expert's n input rows (null: 0 … n−1), for dropout. */
function loraTensors(fs: LoraFactors[], keys: (typeof PROJ)[number][], ts: tf.Tensor[], d: number, I: number, rows: ArrayLike<number> | null, n: number): LoraTensors {
  const out: LoraTensors = {};
  keys.forEach((k, i) => {
    const inF = k === 'w2' ? I : d;
    const outF = k === 'w2' ? d : I;
    const r = fs[i].r;
    out[k] = { A: tf.reshape(ts[2 * i], [r, inF]), B: tf.reshape(ts[2 * i + 1], [outF, r]), s: fs[i].scaling, m: dropoutT(fs[i], rows, n, inF) };
  });
  return out;
}

/** Rows of a query chunk so that chunk·width stays near 4M floats. */
function chunkRows(N: number, width: number): number {
  return Math.max(1, Math.min(N, Math.floor((1 << 22) / Math.max(1, width))));
}

interface RmsSaved extends Saved { x: F32; w: WeightHandle | null; N: number; C: number; eps: number }
interface LinSaved extends Saved { x: F32; W: WeightHandle; lora: LoraFactors | null; N: number; inF: number; outF: number }
interface GLinSaved extends LinSaved { G: number; inG: number; outG: number }
interface MhcPreSaved extends Saved {
  X: F32; fn: WeightHandle; scale: WeightHandle; base: WeightHandle;
  N: number; hc: number; d: number; iters: number; hcEps: number; normEps: number;
}
interface MhcPostSaved extends Saved { f: F32; res: F32; post: F32; comb: F32; N: number; hc: number; d: number }
interface HcHeadSaved extends Saved {
  X: F32; fn: WeightHandle; scale: WeightHandle; base: WeightHandle; N: number; hc: number; d: number; hcEps: number; normEps: number;
}
interface RopeSaved extends Saved { pos: I32; table: RopeTable; N: number; nh: number; hd: number; inverse: boolean }
interface CompSaved extends Saved {
  a: F32; z: F32; ape: WeightHandle; N: number; m: number; hd: number; overlap: boolean; M: number; cur: I32; prev: I32;
}
interface AttnSaved extends Saved {
  q: F32; kv: F32; sink: WeightHandle; idx: I32; N: number; H: number; D: number; M: number; K: number; scale: number;
}
interface RouterSaved extends Saved { x: F32; W: WeightHandle; idx: I32; N: number; d: number; E: number; k: number; routeScale: number }
interface MoeSaved extends Saved {
  x: F32; idx: I32; weights: F32; experts: readonly ExpertWeights[]; lora: readonly ExpertLora[];
  N: number; d: number; I: number; k: number; limit: number;
}
interface SwigluSaved extends Saved { x: F32; w: ExpertWeights; lora: ExpertLora; N: number; d: number; I: number; limit: number }
interface LossSaved extends Saved { xs: F32; rows: Int32Array; tg: Int32Array; lse: Float64Array; W: WeightHandle; N: number; d: number; V: number }

/** RMS-normalise the rows of x [n, c]: x / sqrt(mean(x²) + eps). */
function rmsTf(x: tf.Tensor, eps: number): tf.Tensor {
  return tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps)));
}

/** mHC pre: y [N, d], post [N, hc], comb [N, hc, hc] (see ops.ts). */
function mhcPreTf(X: tf.Tensor, s: MhcPreSaved): tf.Tensor[] {
  const { N, hc, d, iters, hcEps, normEps } = s;
  const x = tf.reshape(X, [N, hc * d]);
  const rs = tf.rsqrt(tf.add(tf.mean(tf.square(x), 1, true), normEps));
  const mixes = tf.mul(tf.matMul(x, wt(s.fn), false, true), rs);
  const scale = wt(s.scale);
  const base = wt(s.base);
  const part = (lo: number, n: number, si: number): tf.Tensor =>
    tf.add(tf.mul(tf.slice(mixes, [0, lo], [N, n]), tf.slice(scale, [si], [1])), tf.slice(base, [lo], [n]));
  const pre = tf.add(tf.sigmoid(part(0, hc, 0)), hcEps);
  const post = tf.mul(tf.sigmoid(part(hc, hc, 1)), 2);
  let c = tf.add(tf.softmax(tf.reshape(part(2 * hc, hc * hc, 2), [N, hc, hc])), hcEps);
  c = tf.div(c, tf.add(tf.sum(c, 1, true), hcEps));
  for (let it = 1; it < iters; it++) {
    c = tf.div(c, tf.add(tf.sum(c, 2, true), hcEps));
    c = tf.div(c, tf.add(tf.sum(c, 1, true), hcEps));
  }
  const y = tf.sum(tf.mul(tf.reshape(pre, [N, hc, 1]), tf.reshape(X, [N, hc, d])), 1);
  return [y, post, c];
}

function hcHeadTf(X: tf.Tensor, s: HcHeadSaved): tf.Tensor {
  const { N, hc, d, hcEps, normEps } = s;
  const x = tf.reshape(X, [N, hc * d]);
  const rs = tf.rsqrt(tf.add(tf.mean(tf.square(x), 1, true), normEps));
  const mixes = tf.mul(tf.matMul(x, wt(s.fn), false, true), rs);
  const pre = tf.add(tf.sigmoid(tf.add(tf.mul(mixes, wt(s.scale)), wt(s.base))), hcEps);
  return tf.sum(tf.mul(tf.reshape(pre, [N, hc, 1]), tf.reshape(X, [N, hc, d])), 1);
}

function mhcPostTf(f: tf.Tensor, res: tf.Tensor, post: tf.Tensor, comb: tf.Tensor, s: MhcPostSaved): tf.Tensor {
  const { N, hc, d } = s;
  const a = tf.mul(tf.reshape(post, [N, hc, 1]), tf.reshape(f, [N, 1, d]));
  return tf.add(a, tf.matMul(tf.reshape(comb, [N, hc, hc]), tf.reshape(res, [N, hc, d]), true, false));
}

/** Compressor pooling over the gathered windows (see ops.ts). a, z [N, cw] → [M, hd]. */
function compressorTf(a: tf.Tensor, z: tf.Tensor, s: CompSaved): tf.Tensor {
  const { m, hd, overlap, M } = s;
  const cw = overlap ? 2 * hd : hd;
  const ape = tf.reshape(wt(s.ape), [1, m, cw]);
  const aPad = tf.concat([a, tf.zeros([1, cw])], 0);
  const zPad = tf.concat([z, tf.fill([1, cw], -Infinity)], 0);
  const win = (idx: I32): [tf.Tensor, tf.Tensor] => {
    const it = i32(idx, [idx.length]);
    const aw = tf.reshape(gatherRows(aPad, it), [M, m, cw]);
    const zw = tf.add(tf.reshape(gatherRows(zPad, it), [M, m, cw]), ape);
    return [aw, zw];
  };
  let aw: tf.Tensor;
  let zw: tf.Tensor;
  const [ac, zc] = win(s.cur);
  if (overlap) {
    const [ap, zp] = win(s.prev);
    aw = tf.concat([tf.slice(ap, [0, 0, 0], [M, m, hd]), tf.slice(ac, [0, 0, hd], [M, m, hd])], 1);
    zw = tf.concat([tf.slice(zp, [0, 0, 0], [M, m, hd]), tf.slice(zc, [0, 0, hd], [M, m, hd])], 1);
  } else {
    aw = ac;
    zw = zc;
  }
  const mx = tf.max(zw, 1, true);
  const e = tf.exp(tf.sub(zw, mx));
  const p = tf.div(e, tf.sum(e, 1, true));
  return tf.sum(tf.mul(aw, p), 1);
}

/** Sparse attention with a sink over one chunk of queries. q [n, H, D], kv [M, D] → [n, H, D]. */
function attnChunkTf(q: tf.Tensor, kv: tf.Tensor, sink: tf.Tensor, idxC: I32, bias: F32, n: number, H: number, D: number, K: number, scale: number): tf.Tensor {
  const sel = tf.reshape(gatherRows(kv, i32(idxC, [n * K])), [n, K, D]);
  const sc = tf.add(tf.mul(tf.matMul(q, sel, false, true), scale), f32(bias, [n, 1, K]));
  const sinkB = tf.add(tf.zeros([n, H, 1]), tf.reshape(sink, [1, H, 1]));
  const lse = tf.logSumExp(tf.concat([sc, sinkB], 2), 2, true);
  const p = tf.exp(tf.sub(sc, lse));
  return tf.matMul(p, sel);
}

/** The chunk's clamped kv rows and its additive mask (0 where idx ≥ 0, −∞ where −1). */
function attnChunkIndex(idx: I32, n0: number, n: number, K: number): { idxC: I32; bias: F32 } {
  const idxC = new Int32Array(n * K);
  const bias = new Float32Array(n * K);
  for (let i = 0; i < n * K; i++) {
    const v = idx[n0 * K + i];
    idxC[i] = v < 0 ? 0 : v;
    bias[i] = v < 0 ? -Infinity : 0;
  }
  return { idxC, bias };
}

/** Router weights from scores: s[idx] / Σ s[idx] · routeScale, via a one-hot [N, k, E]. */
function routerWeightsTf(x: tf.Tensor, W: tf.Tensor, onehot: tf.Tensor, N: number, k: number, E: number, routeScale: number): tf.Tensor {
  const sc = tf.sqrt(tf.softplus(tf.matMul(x, W, false, true)));
  const sel = tf.sum(tf.mul(tf.reshape(sc, [N, 1, E]), onehot), 2);
  return tf.mul(tf.div(sel, tf.sum(sel, 1, true)), routeScale);
}

function oneHot(idx: I32, N: number, k: number, E: number): tf.Tensor {
  const oh = new Float32Array(N * k * E);
  for (let i = 0; i < N * k; i++) oh[i * E + idx[i]] = 1;
  return f32(oh, [N, k, E]);
}

/** Per-expert row lists of a routing: rows (token index) and slots (token·k + j). */
function expertRows(idx: I32, N: number, k: number, E: number): { rows: I32[]; slots: I32[] } {
  const counts = new Int32Array(E);
  for (let i = 0; i < N * k; i++) {
    const e = idx[i];
    if (e < 0 || e >= E) throw new V4tuneError(`moe: expert index ${e} out of range [0, ${E})`);
    counts[e]++;
  }
  const rows = Array.from(counts, (c) => new Int32Array(c));
  const slots = Array.from(counts, (c) => new Int32Array(c));
  const fill = new Int32Array(E);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < k; j++) {
      const e = idx[n * k + j];
      rows[e][fill[e]] = n;
      slots[e][fill[e]] = n * k + j;
      fill[e]++;
    }
  }
  return { rows, slots };
}

export type TfjsEngine = 'tensorflow' | 'wasm' | 'cpu';

/** Pick the tfjs engine: tfjs-node if installed, else wasm (file path to its dist), else cpu. */
export async function initTfjs(prefer?: TfjsEngine): Promise<TfjsEngine> {
  const current = tf.getBackend() as string | undefined;
  if (prefer && current === prefer) return prefer;
  if (!prefer && (current === 'tensorflow' || current === 'wasm')) return current as TfjsEngine;
  if (!prefer || prefer === 'tensorflow') {
    try {
      const spec = '@tensorflow/tfjs-node';
      await import(spec);
      if (await tf.setBackend('tensorflow')) return 'tensorflow';
    } catch {
      // not installed: fall through to wasm
    }
  }
  if (!prefer || prefer === 'wasm') {
    try {
      const wasm = await import('@tensorflow/tfjs-backend-wasm');
      const require = createRequire(import.meta.url);
      const dist = path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep;
      wasm.setWasmPaths(dist);
      if (await tf.setBackend('wasm')) return 'wasm';
    } catch {
      // no wasm: fall through to cpu
    }
  }
  await tf.setBackend('cpu');
  return 'cpu';
}

export async function createTfjsBackend(prefer?: TfjsEngine): Promise<TfjsBackend> {
  const engine = await initTfjs(prefer);
  return new TfjsBackend(engine);
}

export class TfjsBackend implements Backend {
  readonly name: string;
  private readonly weights = new Set<TfWeight>();

  constructor(readonly engine: TfjsEngine) {
    this.name = `tfjs (${engine})`;
  }

  async prepareWeight(src: WeightSource, name: string): Promise<WeightHandle> {
    const shape = src.meta(name).logicalShape;
    const data = await src.f32(name);
    return this.weightFromArray(name, data, shape);
  }

  weightFromArray(name: string, data: F32, shape: number[]): WeightHandle {
    const h = new TfWeight(name, shape.slice(), tf.tensor(data.slice(), shape, 'float32'));
    this.weights.add(h);
    return h;
  }

  releaseWeights(handles: Iterable<WeightHandle>): void {
    for (const h of handles) {
      const w = h as TfWeight;
      if (!this.weights.delete(w)) continue;
      if (w.chunks && w.chunks.length > 1) tf.dispose(w.chunks);
      w.t.dispose();
    }
  }

  dispose(): void {
    this.releaseWeights([...this.weights]);
  }

  async embedding(W: WeightHandle, ids: I32, N: number, d: number): Promise<F32> {
    return tf.tidy(() => host(tf.reshape(tf.gather(wt(W), i32(ids, [N])), [N * d])));
  }

  // y = x ⊙ rsqrt(mean(x²) + eps) ⊙ w
  async rmsnormForward(x: F32, w: WeightHandle | null, N: number, C: number, eps: number): Promise<{ y: F32; saved: Saved }> {
    const saved: RmsSaved = { op: 'rmsnorm', x, w, N, C, eps };
    const y = tf.tidy(() => host(this.rmsF(f32(x, [N, C]), saved)));
    return { y, saved };
  }
  private rmsF(x: tf.Tensor, s: RmsSaved): tf.Tensor {
    const y = rmsTf(x, s.eps);
    return s.w ? tf.mul(y, wt(s.w)) : y;
  }
  async rmsnormBackward(saved: Saved, dy: F32): Promise<{ dx: F32 }> {
    const s = expectSaved<RmsSaved>(saved, 'rmsnorm');
    return this.withTensors(() => {
      const [dx] = vjp(([x]) => [this.rmsF(x, s)], [f32(s.x, [s.N, s.C])], [f32(dy, [s.N, s.C])]);
      return { dx };
    });
  }

  async linearForward(x: F32, W: WeightHandle, lora: LoraFactors | null, N: number, inF: number, outF: number): Promise<{ y: F32; saved: Saved }> {
    const saved: LinSaved = { op: 'linear', x, W, lora, N, inF, outF };
    const y = tf.tidy(() => host(this.linF(f32(x, [N, inF]), ...this.loraT(lora, inF, outF), saved)));
    return { y, saved };
  }
  private loraT(l: LoraFactors | null, inF: number, outF: number): [tf.Tensor | null, tf.Tensor | null] {
    return l ? [f32(l.A, [l.r, inF]), f32(l.B, [outF, l.r])] : [null, null];
  }
  private linF(x: tf.Tensor, A: tf.Tensor | null, B: tf.Tensor | null, s: LinSaved): tf.Tensor {
    const m = A ? dropoutT(s.lora, null, s.N, s.inF) : null;
    return tf.reshape(linearTf(x, wt(s.W), A, B, s.lora?.scaling ?? 0, m), [s.N * s.outF]);
  }
  async linearBackward(saved: Saved, dy: F32): Promise<{ dx: F32; lora: LoraGrads | null }> {
    const s = expectSaved<LinSaved>(saved, 'linear');
    return this.withTensors(() => {
      const x = f32(s.x, [s.N, s.inF]);
      const [A, B] = this.loraT(s.lora, s.inF, s.outF);
      const g = f32(dy, [s.N * s.outF]);
      if (!A || !B) return { dx: vjp(([xx]) => [this.linF(xx, null, null, s)], [x], [g])[0], lora: null };
      const [dx, dA, dB] = vjp(([xx, aa, bb]) => [this.linF(xx, aa, bb, s)], [x, A, B], [g]);
      return { dx, lora: { dA, dB } };
    });
  }

  async groupedLinearForward(x: F32, W: WeightHandle, lora: LoraFactors | null, N: number, G: number, inG: number, outG: number): Promise<{ y: F32; saved: Saved }> {
    const saved: GLinSaved = { op: 'groupedLinear', x, W, lora, N, inF: G * inG, outF: G * outG, G, inG, outG };
    const y = tf.tidy(() => host(this.glinF(f32(x, [N, G * inG]), ...this.loraT(lora, inG, G * outG), saved)));
    return { y, saved };
  }
  // per group g: y_g = x_g W_gᵀ + s·(x̃_g Aᵀ) B_gᵀ, W_g / B_g the g-th block of outG rows,
  // x̃ = x ⊙ m with the dropout mask m over x [N, G·inG] (column g·inG + i)
  private glinF(x: tf.Tensor, A: tf.Tensor | null, B: tf.Tensor | null, s: GLinSaved): tf.Tensor {
    const { N, G, inG, outG } = s;
    const xg = tf.transpose(tf.reshape(x, [N, G, inG]), [1, 0, 2]);
    let y = tf.matMul(xg, tf.reshape(wt(s.W), [G, outG, inG]), false, true);
    if (A && B && s.lora) {
      const r = s.lora.r;
      const m = dropoutT(s.lora, null, N, G * inG);
      const xl = m ? tf.mul(x, m) : x;
      const u = tf.transpose(tf.reshape(tf.matMul(tf.reshape(xl, [N * G, inG]), A, false, true), [N, G, r]), [1, 0, 2]);
      y = tf.add(y, tf.mul(tf.matMul(u, tf.reshape(B, [G, outG, r]), false, true), s.lora.scaling));
    }
    return tf.reshape(tf.transpose(y, [1, 0, 2]), [N * G * outG]);
  }
  async groupedLinearBackward(saved: Saved, dy: F32): Promise<{ dx: F32; lora: LoraGrads | null }> {
    const s = expectSaved<GLinSaved>(saved, 'groupedLinear');
    return this.withTensors(() => {
      const x = f32(s.x, [s.N, s.G * s.inG]);
      const [A, B] = this.loraT(s.lora, s.inG, s.G * s.outG);
      const g = f32(dy, [s.N * s.G * s.outG]);
      if (!A || !B) return { dx: vjp(([xx]) => [this.glinF(xx, null, null, s)], [x], [g])[0], lora: null };
      const [dx, dA, dB] = vjp(([xx, aa, bb]) => [this.glinF(xx, aa, bb, s)], [x, A, B], [g]);
      return { dx, lora: { dA, dB } };
    });
  }

  async mhcPreForward(
    X: F32, fn: WeightHandle, scale: WeightHandle, base: WeightHandle,
    N: number, hc: number, d: number, iters: number, hcEps: number, normEps: number,
  ): Promise<{ y: F32; post: F32; comb: F32; saved: Saved }> {
    const saved: MhcPreSaved = { op: 'mhcPre', X, fn, scale, base, N, hc, d, iters, hcEps, normEps };
    const [y, post, comb] = tf.tidy(() => mhcPreTf(f32(X, [N, hc * d]), saved).map(host));
    return { y, post, comb, saved };
  }
  async mhcPreBackward(saved: Saved, dy: F32, dpost: F32, dcomb: F32): Promise<{ dX: F32 }> {
    const s = expectSaved<MhcPreSaved>(saved, 'mhcPre');
    return this.withTensors(() => {
      const { N, hc, d } = s;
      const [dX] = vjp(([X]) => mhcPreTf(X, s), [f32(s.X, [N, hc * d])], [f32(dy, [N, d]), f32(dpost, [N, hc]), f32(dcomb, [N, hc, hc])]);
      return { dX };
    });
  }

  async mhcPostForward(f: F32, res: F32, post: F32, comb: F32, N: number, hc: number, d: number): Promise<{ out: F32; saved: Saved }> {
    const saved: MhcPostSaved = { op: 'mhcPost', f, res, post, comb, N, hc, d };
    const out = tf.tidy(() => host(mhcPostTf(f32(f, [N, d]), f32(res, [N, hc, d]), f32(post, [N, hc]), f32(comb, [N, hc, hc]), saved)));
    return { out, saved };
  }
  async mhcPostBackward(saved: Saved, dout: F32): Promise<{ df: F32; dres: F32; dpost: F32; dcomb: F32 }> {
    const s = expectSaved<MhcPostSaved>(saved, 'mhcPost');
    return this.withTensors(() => {
      const { N, hc, d } = s;
      const [df, dres, dpost, dcomb] = vjp(
        ([f, r, p, c]) => [mhcPostTf(f, r, p, c, s)],
        [f32(s.f, [N, d]), f32(s.res, [N, hc, d]), f32(s.post, [N, hc]), f32(s.comb, [N, hc, hc])],
        [f32(dout, [N, hc, d])],
      );
      return { df, dres, dpost, dcomb };
    });
  }

  async hcHeadForward(X: F32, fn: WeightHandle, scale: WeightHandle, base: WeightHandle, N: number, hc: number, d: number, hcEps: number, normEps: number): Promise<{ y: F32; saved: Saved }> {
    const saved: HcHeadSaved = { op: 'hcHead', X, fn, scale, base, N, hc, d, hcEps, normEps };
    const y = tf.tidy(() => host(hcHeadTf(f32(X, [N, hc * d]), saved)));
    return { y, saved };
  }
  async hcHeadBackward(saved: Saved, dy: F32): Promise<{ dX: F32 }> {
    const s = expectSaved<HcHeadSaved>(saved, 'hcHead');
    return this.withTensors(() => {
      const [dX] = vjp(([X]) => [hcHeadTf(X, s)], [f32(s.X, [s.N, s.hc * s.d])], [f32(dy, [s.N, s.d])]);
      return { dX };
    });
  }

  async ropeForward(x: F32, pos: I32, table: RopeTable, N: number, nh: number, hd: number, inverse: boolean): Promise<{ y: F32; saved: Saved }> {
    const saved: RopeSaved = { op: 'rope', pos, table, N, nh, hd, inverse };
    return { y: ropeRotate(x, pos, table, N, nh, hd, inverse), saved };
  }
  // the rotation is orthogonal: dx = R(θ)ᵀ dy = the opposite rotation of dy
  async ropeBackward(saved: Saved, dy: F32): Promise<{ dx: F32 }> {
    const s = expectSaved<RopeSaved>(saved, 'rope');
    return { dx: ropeRotate(dy, s.pos, s.table, s.N, s.nh, s.hd, !s.inverse) };
  }

  async compressorForward(a: F32, z: F32, ape: WeightHandle, segs: I32, N: number, m: number, hd: number, overlap: boolean): Promise<{ out: F32; saved: Saved }> {
    let M = 0;
    for (const len of segs) M += Math.floor(len / m);
    const cur = new Int32Array(M * m);
    const prev = new Int32Array(M * m);
    let s0 = 0;
    let e = 0;
    for (const len of segs) {
      const nW = Math.floor(len / m);
      for (let w = 0; w < nW; w++, e++) {
        for (let r = 0; r < m; r++) {
          cur[e * m + r] = s0 + w * m + r;
          prev[e * m + r] = w > 0 ? s0 + (w - 1) * m + r : N;
        }
      }
      s0 += len;
    }
    if (s0 !== N) throw new V4tuneError(`compressor: segments sum to ${s0}, expected ${N} tokens`);
    const saved: CompSaved = { op: 'compressor', a, z, ape, N, m, hd, overlap, M, cur, prev };
    if (M === 0) return { out: new Float32Array(0), saved };
    const cw = overlap ? 2 * hd : hd;
    const out = tf.tidy(() => host(compressorTf(f32(a, [N, cw]), f32(z, [N, cw]), saved)));
    return { out, saved };
  }
  async compressorBackward(saved: Saved, dout: F32): Promise<{ da: F32; dz: F32 }> {
    const s = expectSaved<CompSaved>(saved, 'compressor');
    const cw = s.overlap ? 2 * s.hd : s.hd;
    if (s.M === 0) return { da: new Float32Array(s.N * cw), dz: new Float32Array(s.N * cw) };
    return this.withTensors(() => {
      const [da, dz] = vjp(([a, z]) => [compressorTf(a, z, s)], [f32(s.a, [s.N, cw]), f32(s.z, [s.N, cw])], [f32(dout, [s.M, s.hd])]);
      return { da, dz };
    });
  }

  async indexerTopk(q: F32, k: F32, w: F32, kStart: I32, kCount: I32, N: number, M: number, nh: number, hd: number, topk: number): Promise<{ idx: I32; K: number }> {
    let maxCount = 0;
    for (let n = 0; n < N; n++) maxCount = Math.max(maxCount, kCount[n]);
    const K = Math.min(topk, maxCount);
    const idx = new Int32Array(N * K).fill(-1);
    if (K === 0) return { idx, K };
    const rows = chunkRows(N, nh * M);
    const kt = f32(k, [M, hd]);
    for (let n0 = 0; n0 < N; n0 += rows) {
      const n = Math.min(rows, N - n0);
      // score[n][s] = Σ_h w[n,h]·ReLU(q[n,h]·k[s])
      const sc = tf.tidy(() => {
        const qc = f32(q.subarray(n0 * nh * hd, (n0 + n) * nh * hd), [n * nh, hd]);
        const dots = tf.reshape(tf.relu(tf.matMul(qc, kt, false, true)), [n, nh, M]);
        const wc = f32(w.subarray(n0 * nh, (n0 + n) * nh), [n, nh, 1]);
        return host(tf.sum(tf.mul(dots, wc), 1));
      });
      for (let i = 0; i < n; i++) {
        const row = n0 + i;
        topkLowerIndex(sc.subarray(i * M, (i + 1) * M), kStart[row], kCount[row], K, idx.subarray(row * K, (row + 1) * K));
      }
    }
    kt.dispose();
    return { idx, K };
  }

  async attentionForward(q: F32, kv: F32, sink: WeightHandle, idx: I32, N: number, H: number, D: number, M: number, K: number, scale: number): Promise<{ o: F32; saved: Saved }> {
    const saved: AttnSaved = { op: 'attention', q, kv, sink, idx, N, H, D, M, K, scale };
    const o = new Float32Array(N * H * D);
    const rows = chunkRows(N, K * Math.max(D, H));
    const kvt = f32(kv, [M, D]);
    for (let n0 = 0; n0 < N; n0 += rows) {
      const n = Math.min(rows, N - n0);
      const { idxC, bias } = attnChunkIndex(idx, n0, n, K);
      tf.tidy(() => {
        const qc = f32(q.subarray(n0 * H * D, (n0 + n) * H * D), [n, H, D]);
        o.set(host(attnChunkTf(qc, kvt, wt(sink), idxC, bias, n, H, D, K, scale)), n0 * H * D);
      });
    }
    kvt.dispose();
    return { o, saved };
  }
  async attentionBackward(saved: Saved, dout: F32): Promise<{ dq: F32; dkv: F32 }> {
    const s = expectSaved<AttnSaved>(saved, 'attention');
    const { N, H, D, M, K, scale } = s;
    const dq = new Float32Array(N * H * D);
    const dkv = new Float32Array(M * D);
    const rows = chunkRows(N, K * Math.max(D, H));
    for (let n0 = 0; n0 < N; n0 += rows) {
      const n = Math.min(rows, N - n0);
      const { idxC, bias } = attnChunkIndex(s.idx, n0, n, K);
      this.withTensors(() => {
        const qc = f32(s.q.subarray(n0 * H * D, (n0 + n) * H * D), [n, H, D]);
        const g = f32(dout.subarray(n0 * H * D, (n0 + n) * H * D), [n, H, D]);
        const [dqc, dkvc] = vjp(([qq, kk]) => [attnChunkTf(qq, kk, wt(s.sink), idxC, bias, n, H, D, K, scale)], [qc, f32(s.kv, [M, D])], [g]);
        dq.set(dqc, n0 * H * D);
        for (let i = 0; i < dkv.length; i++) dkv[i] += dkvc[i];
      });
    }
    return { dq, dkv };
  }

  async routerForward(x: F32, W: WeightHandle, bias: WeightHandle | null, hashIdx: I32 | null, N: number, d: number, E: number, k: number, routeScale: number): Promise<{ weights: F32; idx: I32; saved: Saved }> {
    const sc = tf.tidy(() => host(tf.sqrt(tf.softplus(tf.matMul(f32(x, [N, d]), wt(W), false, true)))));
    const { weights, idx } = routeFromScores(sc, bias && !hashIdx ? tf.tidy(() => host(wt(bias))) : null, hashIdx, N, E, k, routeScale);
    const saved: RouterSaved = { op: 'router', x, W, idx, N, d, E, k, routeScale };
    return { weights, idx, saved };
  }
  async routerBackward(saved: Saved, dweights: F32): Promise<{ dx: F32 }> {
    const s = expectSaved<RouterSaved>(saved, 'router');
    return this.withTensors(() => {
      const oh = oneHot(s.idx, s.N, s.k, s.E);
      const [dx] = vjp(([x]) => [routerWeightsTf(x, wt(s.W), oh, s.N, s.k, s.E, s.routeScale)], [f32(s.x, [s.N, s.d])], [f32(dweights, [s.N, s.k])]);
      return { dx };
    });
  }

  // y = Σ_e scatter_rows( swiglu_e(x[rows_e]) ⊙ weights[slots_e] )
  private moeF(x: tf.Tensor, wflat: tf.Tensor, loraTs: tf.Tensor[], s: MoeSaved, plan: MoePlan): tf.Tensor {
    const parts: tf.Tensor[] = [];
    let li = 0;
    for (const e of plan.used) {
      const { host: fs, keys } = loraList(s.lora[e] ?? {});
      const lt = loraTensors(fs, keys, loraTs.slice(li, li + 2 * fs.length), s.d, s.I, plan.rows[e], plan.rows[e].length);
      li += 2 * fs.length;
      const xe = gatherRows(x, plan.rowsT[e]);
      const we = gatherRows(wflat, plan.slotsT[e]);
      parts.push(tf.mul(swigluTf(xe, s.experts[e], lt, s.limit), we));
    }
    if (parts.length === 0) return tf.zeros([s.N, s.d]);
    return scatterAddRows(tf.concat(parts, 0), plan.allRows, s.N);
  }
  private moePlan(s: MoeSaved): MoePlan {
    const E = s.experts.length;
    const { rows, slots } = expertRows(s.idx, s.N, s.k, E);
    const used: number[] = [];
    for (let e = 0; e < E; e++) if (rows[e].length > 0) used.push(e);
    const all = new Int32Array(s.N * s.k);
    let o = 0;
    for (const e of used) {
      all.set(rows[e], o);
      o += rows[e].length;
    }
    return {
      used,
      rows,
      rowsT: rows.map((r) => (r.length ? i32(r, [r.length]) : null)) as tf.Tensor[],
      slotsT: slots.map((r) => (r.length ? i32(r, [r.length]) : null)) as tf.Tensor[],
      allRows: i32(all.subarray(0, o), [o]),
    };
  }
  private moeLora(s: MoeSaved, used: number[]): tf.Tensor[] {
    const out: tf.Tensor[] = [];
    for (const e of used) for (const f of loraList(s.lora[e] ?? {}).host) out.push(f32(f.A, [f.A.length]), f32(f.B, [f.B.length]));
    return out;
  }
  async routedExpertsForward(x: F32, idx: I32, weights: F32, experts: readonly ExpertWeights[], lora: readonly ExpertLora[], N: number, d: number, I: number, k: number, limit: number): Promise<{ y: F32; saved: Saved }> {
    const saved: MoeSaved = { op: 'moe', x, idx, weights, experts, lora, N, d, I, k, limit };
    const y = tf.tidy(() => {
      const plan = this.moePlan(saved);
      return host(this.moeF(f32(x, [N, d]), f32(weights, [N * k, 1]), this.moeLora(saved, plan.used), saved, plan));
    });
    return { y, saved };
  }
  async routedExpertsBackward(saved: Saved, dy: F32): Promise<{ dx: F32; dweights: F32; lora: ExpertLoraGrads[] }> {
    const s = expectSaved<MoeSaved>(saved, 'moe');
    return this.withTensors(() => {
      const plan = this.moePlan(s);
      const lts = this.moeLora(s, plan.used);
      const g = vjp(
        ([x, w, ...ls]) => [this.moeF(x, w, ls, s, plan)],
        [f32(s.x, [s.N, s.d]), f32(s.weights, [s.N * s.k, 1]), ...lts],
        [f32(dy, [s.N, s.d])],
      );
      const lora: ExpertLoraGrads[] = s.experts.map(() => ({}));
      let li = 2;
      for (const e of plan.used) {
        for (const key of loraList(s.lora[e] ?? {}).keys) {
          lora[e][key] = { dA: g[li], dB: g[li + 1] };
          li += 2;
        }
      }
      return { dx: g[0], dweights: g[1], lora };
    });
  }

  private swF(x: tf.Tensor, ls: tf.Tensor[], s: SwigluSaved): tf.Tensor {
    const { host: fs, keys } = loraList(s.lora);
    return swigluTf(x, s.w, loraTensors(fs, keys, ls, s.d, s.I, null, s.N), s.limit);
  }
  private swLora(l: ExpertLora): tf.Tensor[] {
    return loraList(l).host.flatMap((f) => [f32(f.A, [f.A.length]), f32(f.B, [f.B.length])]);
  }
  async swigluForward(x: F32, w: ExpertWeights, lora: ExpertLora, N: number, d: number, I: number, limit: number): Promise<{ y: F32; saved: Saved }> {
    const saved: SwigluSaved = { op: 'swiglu', x, w, lora, N, d, I, limit };
    const y = tf.tidy(() => host(this.swF(f32(x, [N, d]), this.swLora(lora), saved)));
    return { y, saved };
  }
  async swigluBackward(saved: Saved, dy: F32): Promise<{ dx: F32; lora: ExpertLoraGrads }> {
    const s = expectSaved<SwigluSaved>(saved, 'swiglu');
    return this.withTensors(() => {
      const g = vjp(([x, ...ls]) => [this.swF(x, ls, s)], [f32(s.x, [s.N, s.d]), ...this.swLora(s.lora)], [f32(dy, [s.N, s.d])]);
      const lora: ExpertLoraGrads = {};
      loraList(s.lora).keys.forEach((key, i) => {
        lora[key] = { dA: g[1 + 2 * i], dB: g[2 + 2 * i] };
      });
      return { dx: g[0], lora };
    });
  }

  async logits(x: F32, W: WeightHandle, N: number, d: number, V: number): Promise<F32> {
    const out = new Float32Array(N * V);
    const rows = chunkRows(N, V);
    for (let n0 = 0; n0 < N; n0 += rows) {
      const n = Math.min(rows, N - n0);
      tf.tidy(() => out.set(host(tf.matMul(f32(x.subarray(n0 * d, (n0 + n) * d), [n, d]), wt(W), false, true)), n0 * V));
    }
    return out;
  }

  // lossSum = Σ_counted logsumexp(x Wᵀ) − x·W[target], the logsumexp accumulated over vocab chunks
  async lmHeadLossForward(x: F32, W: WeightHandle, targets: I32, N: number, d: number, V: number): Promise<{ lossSum: number; count: number; saved: Saved }> {
    const rowsL: number[] = [];
    for (let n = 0; n < N; n++) if (targets[n] >= 0) rowsL.push(n);
    const C = rowsL.length;
    const rows = Int32Array.from(rowsL);
    const tg = Int32Array.from(rowsL, (n) => targets[n]);
    const xs = new Float32Array(C * d);
    rowsL.forEach((n, i) => xs.set(x.subarray(n * d, (n + 1) * d), i * d));
    const lse = new Float64Array(C).fill(-Infinity);
    let lossSum = 0;
    if (C > 0) {
      const chunks = rowChunks(W);
      const rc = chunkRows(C, VOCAB_CHUNK);
      for (let r0 = 0; r0 < C; r0 += rc) {
        const r = Math.min(rc, C - r0);
        tf.tidy(() => {
          const xt = f32(xs.subarray(r0 * d, (r0 + r) * d), [r, d]);
          for (const Wc of chunks) {
            const part = host(tf.logSumExp(tf.matMul(xt, Wc, false, true), 1));
            for (let i = 0; i < r; i++) {
              const a = lse[r0 + i];
              const b = part[i];
              const mx = Math.max(a, b);
              lse[r0 + i] = mx + Math.log(Math.exp(a - mx) + Math.exp(b - mx));
            }
          }
          const tl = host(tf.sum(tf.mul(xt, tf.gather(wt(W), i32(tg.subarray(r0, r0 + r), [r]))), 1));
          for (let i = 0; i < r; i++) lossSum += lse[r0 + i] - tl[i];
        });
      }
    }
    const saved: LossSaved = { op: 'lmHeadLoss', xs, rows, tg, lse, W, N, d, V };
    return { lossSum, count: C, saved };
  }
  // dx_n = g·(Σ_v softmax(x_n Wᵀ)_v W_v − W[target_n]) for counted n, 0 elsewhere
  async lmHeadLossBackward(saved: Saved, dLossSum: number): Promise<{ dx: F32 }> {
    const s = expectSaved<LossSaved>(saved, 'lmHeadLoss');
    const { d, N } = s;
    const C = s.rows.length;
    const dx = new Float32Array(N * d);
    const chunks = rowChunks(s.W);
    const rc = chunkRows(C, VOCAB_CHUNK);
    for (let r0 = 0; r0 < C; r0 += rc) {
      const r = Math.min(rc, C - r0);
      const g = tf.tidy(() => {
        const xt = f32(s.xs.subarray(r0 * d, (r0 + r) * d), [r, d]);
        const lse = f32(Float32Array.from(s.lse.subarray(r0, r0 + r)), [r, 1]);
        let acc = tf.neg(tf.gather(wt(s.W), i32(s.tg.subarray(r0, r0 + r), [r])));
        for (const Wc of chunks) {
          const p = tf.exp(tf.sub(tf.matMul(xt, Wc, false, true), lse));
          acc = tf.add(acc, tf.matMul(p, Wc));
        }
        return host(tf.mul(acc, dLossSum));
      });
      for (let i = 0; i < r; i++) dx.set(g.subarray(i * d, (i + 1) * d), s.rows[r0 + i] * d);
    }
    return { dx };
  }

  /** Run host-returning tensor code with every intermediate tensor freed afterwards. */
  private withTensors<R>(fn: () => R): R {
    tf.engine().startScope();
    try {
      return fn();
    } finally {
      tf.engine().endScope();
    }
  }
}

interface MoePlan {
  used: number[];
  /** per expert, the tokens routed to it (host copy of rowsT) */
  rows: I32[];
  rowsT: tf.Tensor[];
  slotsT: tf.Tensor[];
  allRows: tf.Tensor;
}
