// The native backend: every op of src/backend/ops.ts on the C++ kernels in kernels/cpu/
// (through native/). Base weights stay in their shipped format (FP8 blocks, FP4 groups, BF16)
// and are dequantised inside the GEMM's packing step; LoRA factors and activations are host
// float32 buffers; each kernel runs off the JS thread.
import { V4tuneError } from '../../errors.js';
import type {
  Backend, ExpertLora, ExpertLoraGrads, ExpertWeights, F32, I32, LoraFactors, LoraGrads, RopeTable, Saved,
  WeightHandle, WeightSource,
} from '../ops.js';
import { dropoutScale } from '../dropout.js';
import { addInto, routeFromScores } from '../host.js';
import { loadAddon, rawWeight, tryLoadAddon, type NativeAddon, type NativeFormat, type RawDropout, type RawExpert, type RawExpertGrads, type RawWeight } from './addon.js';

export { nativeUnavailableReason, tryLoadAddon, loadAddon } from './addon.js';

class NativeWeight implements WeightHandle {
  private hostCopy: F32 | null = null;
  constructor(readonly name: string, readonly shape: readonly number[], readonly raw: RawWeight) {}
  /** fp32 values (decoded once) for the small parameters the kernels take as plain arrays */
  host(addon: NativeAddon): F32 {
    if (this.raw.fmt === 0) return this.raw.data as F32;
    if (!this.hostCopy) {
      this.hostCopy = new Float32Array(this.raw.rows * this.raw.cols);
      addon.decodeWeight(this.raw, this.hostCopy);
    }
    return this.hostCopy;
  }
}

interface RawSource {
  raw(name: string): Promise<{ data: Uint8Array; scale: Uint8Array | null }>;
}
function hasRaw(s: WeightSource): s is WeightSource & RawSource {
  return typeof (s as Partial<RawSource>).raw === 'function';
}

function nw(h: WeightHandle): NativeWeight {
  if (!(h instanceof NativeWeight)) throw new V4tuneError(`native backend: weight ${h.name} was not prepared by the native backend`);
  return h;
}
function expectSaved<S extends Saved>(s: Saved, op: string): S {
  if (s.op !== op) throw new V4tuneError(`native backend: ${op} backward got the saved context of ${s.op}`);
  return s as S;
}
function rowsCols(shape: readonly number[]): [number, number] {
  const cols = shape.length ? shape[shape.length - 1] : 1;
  const n = shape.reduce((a, b) => a * b, 1);
  return [cols > 0 ? n / cols : 0, cols];
}
const softplus = (v: number): number => (v > 20 ? v : Math.log1p(Math.exp(v)));

interface RmsSaved extends Saved { x: F32; w: F32 | null; rstd: F32; N: number; C: number }
interface LinSaved extends Saved { x: F32; W: NativeWeight; lora: LoraFactors | null; N: number; G: number }
interface MhcPreSaved extends Saved { X: F32; mix: F32; fn: F32; scale: F32; base: F32; N: number; hc: number; d: number; iters: number; hcEps: number; normEps: number }
interface MhcPostSaved extends Saved { f: F32; res: F32; post: F32; comb: F32; N: number; hc: number; d: number }
interface HcHeadSaved extends Saved { X: F32; mix: F32; fn: F32; scale: F32; base: F32; N: number; hc: number; d: number; hcEps: number; normEps: number }
interface RopeSaved extends Saved { pos: I32; table: RopeTable; N: number; nh: number; hd: number; inverse: boolean }
interface CompSaved extends Saved { a: F32; z: F32; ape: F32; segs: I32; N: number; m: number; hd: number; overlap: boolean }
interface AttnSaved extends Saved { q: F32; kv: F32; lse: F32; sink: F32; idx: I32; N: number; H: number; D: number; M: number; K: number; scale: number }
interface RouterSaved extends Saved { x: F32; W: NativeWeight; sc: F32; idx: I32; N: number; d: number; E: number; k: number; routeScale: number }
/** h13: the experts' h1 and h3 per pair, kept by a training forward (null: the backward recomputes them) */
interface MoeSaved extends Saved { x: F32; plan: MoePlan; experts: RawExpert[]; N: number; d: number; I: number; k: number; limit: number; lora: readonly ExpertLora[]; h13: F32 | null }
/** dx1: d(lossSum)/dx computed in the forward's pass (withGrad), else null */
interface LossSaved extends Saved { x: F32; W: NativeWeight; targets: I32; N: number; d: number; dx1: F32 | null }

/** Pairs (token, slot) sorted by expert: tokens idx [P], slots [P], offsets off [E+1], weights w [P]. */
interface MoePlan { idx: I32; slot: I32; off: I32; w: F32 }
function moePlan(idx: I32, weights: F32, N: number, k: number, E: number): MoePlan {
  const off = new Int32Array(E + 1);
  for (let i = 0; i < N * k; i++) {
    const e = idx[i];
    if (e < 0 || e >= E) throw new V4tuneError(`moe: expert index ${e} out of range [0, ${E})`);
    off[e + 1]++;
  }
  for (let e = 0; e < E; e++) off[e + 1] += off[e];
  const fill = off.slice(0, E);
  const P = N * k;
  const tok = new Int32Array(P);
  const slot = new Int32Array(P);
  const w = new Float32Array(P);
  for (let n = 0; n < N; n++)
    for (let j = 0; j < k; j++) {
      const s = n * k + j;
      const p = fill[idx[s]]++;
      tok[p] = n;
      slot[p] = s;
      w[p] = weights[s];
    }
  return { idx: tok, slot, off, w };
}

/** A module's dropout as the kernels take it; null when there is none (or p = 0). */
function rawDropout(l: LoraFactors | null | undefined): RawDropout | null {
  const d = l?.dropout;
  return d && d.p > 0 ? { threshold: d.threshold, scale: dropoutScale(d.p), seed: d.seed, row0: d.row0 ?? 0 } : null;
}

function rawExpert(w: ExpertWeights, l: ExpertLora): RawExpert {
  const e: RawExpert = { w1: nw(w.w1).raw, w2: nw(w.w2).raw, w3: nw(w.w3).raw };
  if (l.w1) Object.assign(e, { a1: l.w1.A, b1: l.w1.B, r1: l.w1.r, s1: l.w1.scaling, d1: rawDropout(l.w1) });
  if (l.w2) Object.assign(e, { a2: l.w2.A, b2: l.w2.B, r2: l.w2.r, s2: l.w2.scaling, d2: rawDropout(l.w2) });
  if (l.w3) Object.assign(e, { a3: l.w3.A, b3: l.w3.B, r3: l.w3.r, s3: l.w3.scaling, d3: rawDropout(l.w3) });
  return e;
}
function gradBuffers(l: ExpertLora): RawExpertGrads {
  const g: RawExpertGrads = {};
  if (l.w1) Object.assign(g, { da1: new Float32Array(l.w1.A.length), db1: new Float32Array(l.w1.B.length) });
  if (l.w2) Object.assign(g, { da2: new Float32Array(l.w2.A.length), db2: new Float32Array(l.w2.B.length) });
  if (l.w3) Object.assign(g, { da3: new Float32Array(l.w3.A.length), db3: new Float32Array(l.w3.B.length) });
  return g;
}
function loraGrads(g: RawExpertGrads): ExpertLoraGrads {
  const out: ExpertLoraGrads = {};
  if (g.da1 && g.db1) out.w1 = { dA: g.da1, dB: g.db1 };
  if (g.da2 && g.db2) out.w2 = { dA: g.da2, dB: g.db2 };
  if (g.da3 && g.db3) out.w3 = { dA: g.da3, dB: g.db3 };
  return out;
}

export class NativeBackend implements Backend {
  readonly name: string;
  private readonly weights = new Set<NativeWeight>();
  /**
   * whether a training forward of the routed experts and the shared expert keeps h1 and h3 for
   * the backward (2·pairs·I floats) instead of the backward recomputing w1·x and w3·x
   */
  protected readonly keepExpertHidden: boolean = true;

  constructor(readonly addon: NativeAddon) {
    const i = addon.info();
    this.name = `native (${i.isa}${i.amx ? ', bf16 on AMX tiles' : i.bf16 ? ', bf16 dot products' : ''}, ${i.threads} thread${i.threads === 1 ? '' : 's'})`;
  }

  async prepareWeight(src: WeightSource, name: string): Promise<WeightHandle> {
    const meta = src.meta(name);
    const [rows, cols] = rowsCols(meta.logicalShape);
    let raw: RawWeight;
    if (hasRaw(src) && (meta.format === 'fp8' || meta.format === 'fp4' || meta.format === 'bf16')) {
      const r = await src.raw(name);
      raw = rawWeight(meta.format as NativeFormat, r.data, r.scale, rows, cols);
    } else {
      raw = rawWeight('f32', await src.f32(name), null, rows, cols);
    }
    const h = new NativeWeight(name, meta.logicalShape.slice(), raw);
    this.weights.add(h);
    return h;
  }

  weightFromArray(name: string, data: F32, shape: number[]): WeightHandle {
    const [rows, cols] = rowsCols(shape);
    const h = new NativeWeight(name, shape.slice(), rawWeight('f32', data.slice(), null, rows, cols));
    this.weights.add(h);
    return h;
  }

  releaseWeights(handles: Iterable<WeightHandle>): void {
    for (const h of handles) this.weights.delete(h as NativeWeight);
  }

  dispose(): void {
    this.weights.clear();
  }

  async embedding(W: WeightHandle, ids: I32, N: number, d: number): Promise<F32> {
    const out = new Float32Array(N * d);
    await this.addon.embedding(out, ids, nw(W).raw, N);
    return out;
  }

  async rmsnormForward(x: F32, w: WeightHandle | null, N: number, C: number, eps: number): Promise<{ y: F32; saved: Saved }> {
    const y = new Float32Array(N * C);
    const rstd = new Float32Array(N);
    const wf = w ? nw(w).host(this.addon) : null;
    await this.addon.rmsnormForward(y, rstd, x, wf, N, C, eps);
    const saved: RmsSaved = { op: 'rmsnorm', x, w: wf, rstd, N, C };
    return { y, saved };
  }
  async rmsnormBackward(saved: Saved, dy: F32): Promise<{ dx: F32 }> {
    const s = expectSaved<RmsSaved>(saved, 'rmsnorm');
    const dx = new Float32Array(s.N * s.C);
    await this.addon.rmsnormBackward(dx, null, dy, s.x, s.w, s.rstd, s.N, s.C);
    return { dx };
  }

  async linearForward(x: F32, W: WeightHandle, lora: LoraFactors | null, N: number, inF: number, outF: number): Promise<{ y: F32; saved: Saved }> {
    return this.linF(x, W, lora, N, 1, inF, outF, 'linear');
  }
  async linearBackward(saved: Saved, dy: F32): Promise<{ dx: F32; lora: LoraGrads | null }> {
    return this.linB(expectSaved<LinSaved>(saved, 'linear'), dy);
  }
  async groupedLinearForward(x: F32, W: WeightHandle, lora: LoraFactors | null, N: number, G: number, inG: number, outG: number): Promise<{ y: F32; saved: Saved }> {
    return this.linF(x, W, lora, N, G, inG, G * outG, 'groupedLinear');
  }
  async groupedLinearBackward(saved: Saved, dy: F32): Promise<{ dx: F32; lora: LoraGrads | null }> {
    return this.linB(expectSaved<LinSaved>(saved, 'groupedLinear'), dy);
  }
  private async linF(x: F32, W: WeightHandle, lora: LoraFactors | null, N: number, G: number, inG: number, outF: number, op: string): Promise<{ y: F32; saved: Saved }> {
    const w = nw(W);
    if (w.raw.rows !== outF || w.raw.cols !== inG) throw new V4tuneError(`native backend: ${op} ${w.name} is [${w.raw.rows}, ${w.raw.cols}], expected [${outF}, ${inG}]`);
    const y = new Float32Array(N * outF);
    await this.addon.linearForward(y, x, w.raw, lora?.A ?? null, lora?.B ?? null, lora?.r ?? 0, lora?.scaling ?? 0, N, G, rawDropout(lora));
    const saved: LinSaved = { op, x, W: w, lora, N, G };
    return { y, saved };
  }
  private async linB(s: LinSaved, dy: F32): Promise<{ dx: F32; lora: LoraGrads | null }> {
    const dx = new Float32Array(s.x.length);
    const l = s.lora;
    const dA = l ? new Float32Array(l.A.length) : null;
    const dB = l ? new Float32Array(l.B.length) : null;
    await this.addon.linearBackward(dx, dA, dB, dy, s.x, s.W.raw, l?.A ?? null, l?.B ?? null, l?.r ?? 0, l?.scaling ?? 0, s.N, s.G, rawDropout(l));
    return { dx, lora: dA && dB ? { dA, dB } : null };
  }

  async mhcPreForward(X: F32, fn: WeightHandle, scale: WeightHandle, base: WeightHandle, N: number, hc: number, d: number, iters: number, hcEps: number, normEps: number): Promise<{ y: F32; post: F32; comb: F32; saved: Saved }> {
    const y = new Float32Array(N * d);
    const post = new Float32Array(N * hc);
    const comb = new Float32Array(N * hc * hc);
    const mix = new Float32Array(N * (2 + hc) * hc);
    const [f, sc, b] = [nw(fn).host(this.addon), nw(scale).host(this.addon), nw(base).host(this.addon)];
    await this.addon.mhcPreForward(y, post, comb, mix, X, f, sc, b, N, hc, d, true, iters, hcEps, normEps);
    const saved: MhcPreSaved = { op: 'mhcPre', X, mix, fn: f, scale: sc, base: b, N, hc, d, iters, hcEps, normEps };
    return { y, post, comb, saved };
  }
  async mhcPreBackward(saved: Saved, dy: F32, dpost: F32, dcomb: F32): Promise<{ dX: F32 }> {
    const s = expectSaved<MhcPreSaved>(saved, 'mhcPre');
    const dX = new Float32Array(s.X.length);
    await this.addon.mhcPreBackward(dX, dy, dpost, dcomb, s.mix, s.X, s.fn, s.scale, s.base, s.N, s.hc, s.d, true, s.iters, s.hcEps, s.normEps);
    return { dX };
  }

  async mhcPostForward(f: F32, res: F32, post: F32, comb: F32, N: number, hc: number, d: number): Promise<{ out: F32; saved: Saved }> {
    const out = new Float32Array(N * hc * d);
    await this.addon.mhcPostForward(out, f, res, post, comb, N, hc, d);
    const saved: MhcPostSaved = { op: 'mhcPost', f, res, post, comb, N, hc, d };
    return { out, saved };
  }
  async mhcPostBackward(saved: Saved, dout: F32): Promise<{ df: F32; dres: F32; dpost: F32; dcomb: F32 }> {
    const s = expectSaved<MhcPostSaved>(saved, 'mhcPost');
    const df = new Float32Array(s.f.length);
    const dres = new Float32Array(s.res.length);
    const dpost = new Float32Array(s.post.length);
    const dcomb = new Float32Array(s.comb.length);
    await this.addon.mhcPostBackward(df, dres, dpost, dcomb, dout, s.f, s.res, s.post, s.comb, s.N, s.hc, s.d);
    return { df, dres, dpost, dcomb };
  }

  async hcHeadForward(X: F32, fn: WeightHandle, scale: WeightHandle, base: WeightHandle, N: number, hc: number, d: number, hcEps: number, normEps: number): Promise<{ y: F32; saved: Saved }> {
    const y = new Float32Array(N * d);
    const mix = new Float32Array(N * hc);
    const [f, sc, b] = [nw(fn).host(this.addon), nw(scale).host(this.addon), nw(base).host(this.addon)];
    await this.addon.mhcPreForward(y, null, null, mix, X, f, sc, b, N, hc, d, false, 1, hcEps, normEps);
    const saved: HcHeadSaved = { op: 'hcHead', X, mix, fn: f, scale: sc, base: b, N, hc, d, hcEps, normEps };
    return { y, saved };
  }
  async hcHeadBackward(saved: Saved, dy: F32): Promise<{ dX: F32 }> {
    const s = expectSaved<HcHeadSaved>(saved, 'hcHead');
    const dX = new Float32Array(s.X.length);
    await this.addon.mhcPreBackward(dX, dy, null, null, s.mix, s.X, s.fn, s.scale, s.base, s.N, s.hc, s.d, false, 1, s.hcEps, s.normEps);
    return { dX };
  }

  async ropeForward(x: F32, pos: I32, table: RopeTable, N: number, nh: number, hd: number, inverse: boolean, inPlace = false): Promise<{ y: F32; saved: Saved }> {
    // in place: a new view of x's memory (the kernel rotates the rd dims where they lie)
    const y = inPlace ? new Float32Array(x.buffer, x.byteOffset, x.length) : new Float32Array(x.length);
    await this.addon.rope(y, pos, table.cos, table.sin, table.maxPos, N, nh, hd, table.rd, inverse, x);
    const saved: RopeSaved = { op: 'rope', pos, table, N, nh, hd, inverse };
    return { y, saved };
  }
  // the rotation is orthogonal: dx is the opposite rotation of dy
  async ropeBackward(saved: Saved, dy: F32): Promise<{ dx: F32 }> {
    const s = expectSaved<RopeSaved>(saved, 'rope');
    const dx = new Float32Array(dy.length);
    await this.addon.rope(dx, s.pos, s.table.cos, s.table.sin, s.table.maxPos, s.N, s.nh, s.hd, s.table.rd, !s.inverse, dy);
    return { dx };
  }

  async compressorForward(a: F32, z: F32, ape: WeightHandle, segs: I32, N: number, m: number, hd: number, overlap: boolean): Promise<{ out: F32; saved: Saved }> {
    let total = 0;
    let M = 0;
    for (const len of segs) {
      total += len;
      M += Math.floor(len / m);
    }
    if (total !== N) throw new V4tuneError(`compressor: segments sum to ${total}, expected ${N} tokens`);
    const apeF = nw(ape).host(this.addon);
    const out = new Float32Array(M * hd);
    if (M > 0) await this.addon.compressorForward(out, a, z, apeF, segs, m, hd, overlap);
    const saved: CompSaved = { op: 'compressor', a, z, ape: apeF, segs, N, m, hd, overlap };
    return { out, saved };
  }
  async compressorBackward(saved: Saved, dout: F32): Promise<{ da: F32; dz: F32 }> {
    const s = expectSaved<CompSaved>(saved, 'compressor');
    const da = new Float32Array(s.a.length);
    const dz = new Float32Array(s.z.length);
    if (dout.length > 0) await this.addon.compressorBackward(da, dz, dout, s.a, s.z, s.ape, s.segs, s.m, s.hd, s.overlap);
    return { da, dz };
  }

  async indexerTopk(q: F32, k: F32, w: F32, kStart: I32, kCount: I32, N: number, M: number, nh: number, hd: number, topk: number): Promise<{ idx: I32; K: number }> {
    let maxCount = 0;
    for (let n = 0; n < N; n++) maxCount = Math.max(maxCount, kCount[n]);
    const K = Math.min(topk, maxCount);
    const idx = new Int32Array(N * K).fill(-1);
    if (K > 0) await this.addon.indexerTopk(idx, q, k, w, kStart, kCount, N, M, nh, hd, K);
    return { idx, K };
  }

  async attentionForward(q: F32, kv: F32, sink: WeightHandle, idx: I32, N: number, H: number, D: number, M: number, K: number, scale: number): Promise<{ o: F32; saved: Saved }> {
    const o = new Float32Array(N * H * D);
    const lse = new Float32Array(N * H);
    const sk = nw(sink).host(this.addon);
    await this.addon.attentionForward(o, lse, q, kv, idx, sk, N, H, D, M, K, scale);
    // o is not kept: the backward takes dO·O from P and dP (so a RoPE after may rotate o in place)
    const saved: AttnSaved = { op: 'attention', q, kv, lse, sink: sk, idx, N, H, D, M, K, scale };
    return { o, saved };
  }
  async attentionBackward(saved: Saved, dout: F32): Promise<{ dq: F32; dkv: F32 }> {
    const s = expectSaved<AttnSaved>(saved, 'attention');
    const dq = new Float32Array(s.q.length);
    const dkv = new Float32Array(s.kv.length);
    await this.addon.attentionBackward(dq, dkv, null, dout, s.lse, s.q, s.kv, s.idx, s.sink, s.N, s.H, s.D, s.M, s.K, s.scale);
    return { dq, dkv };
  }

  // s = sqrt(softplus(x Wᵀ)); idx = hashIdx or top-k(s + bias); weights = s[idx] / Σ s[idx] · routeScale
  async routerForward(x: F32, W: WeightHandle, bias: WeightHandle | null, hashIdx: I32 | null, N: number, d: number, E: number, k: number, routeScale: number): Promise<{ weights: F32; idx: I32; saved: Saved }> {
    const w = nw(W);
    const sc = new Float32Array(N * E);
    await this.addon.gemm(N, E, d, 1, x, d, 1, w.raw, true, 0, sc, E);
    for (let i = 0; i < sc.length; i++) sc[i] = Math.sqrt(softplus(sc[i]));
    const { weights, idx } = routeFromScores(sc, bias && !hashIdx ? nw(bias).host(this.addon) : null, hashIdx, N, E, k, routeScale);
    const saved: RouterSaved = { op: 'router', x, W: w, sc, idx, N, d, E, k, routeScale };
    return { weights, idx, saved };
  }
  // in the forward pass this was: w_j = rs·s_j / S, S = Σ_k s_k, s = sqrt(softplus(l)); so
  //   ds_j = rs·(dw_j / S − Σ_k dw_k s_k / S²),  dl = ds · σ(l) / (2s) with σ(l) = 1 − e^{−s²},  dx = dl W
  async routerBackward(saved: Saved, dweights: F32): Promise<{ dx: F32 }> {
    const s = expectSaved<RouterSaved>(saved, 'router');
    const { N, E, k, d } = s;
    const dl = new Float32Array(N * E);
    for (let n = 0; n < N; n++) {
      let S = 0;
      let dot = 0;
      for (let j = 0; j < k; j++) {
        const v = s.sc[n * E + s.idx[n * k + j]];
        S += v;
        dot += dweights[n * k + j] * v;
      }
      for (let j = 0; j < k; j++) {
        const e = s.idx[n * k + j];
        const v = s.sc[n * E + e];
        const ds = s.routeScale * (dweights[n * k + j] / S - dot / (S * S));
        dl[n * E + e] += v > 0 ? (ds * (1 - Math.exp(-v * v))) / (2 * v) : 0;
      }
    }
    const dx = new Float32Array(N * d);
    await this.addon.gemm(N, d, E, 1, dl, E, 1, s.W.raw, false, 0, dx, d);
    return { dx };
  }

  async routedExpertsForward(x: F32, idx: I32, weights: F32, experts: readonly ExpertWeights[], lora: readonly ExpertLora[], N: number, d: number, I: number, k: number, limit: number, train = false): Promise<{ y: F32; saved: Saved }> {
    const plan = moePlan(idx, weights, N, k, experts.length);
    const raw = experts.map((w, e) => rawExpert(w, lora[e] ?? {}));
    const L = limit > 0 ? limit : Infinity;
    const y = new Float32Array(N * d);
    // a training forward keeps h1 and h3 (2·P·I floats), so the backward skips w1·x and w3·x
    const h13 = train && this.keepExpertHidden ? new Float32Array(2 * plan.idx.length * I) : null;
    await this.addon.routedExpertsForward(y, x, N, d, I, plan.idx, plan.off, plan.w, raw, L, h13);
    const saved: MoeSaved = { op: 'moe', x, plan, experts: raw, N, d, I, k, limit: L, lora, h13 };
    return { y, saved };
  }
  async routedExpertsBackward(saved: Saved, dy: F32): Promise<{ dx: F32; dweights: F32; lora: ExpertLoraGrads[] }> {
    const s = expectSaved<MoeSaved>(saved, 'moe');
    const dx = new Float32Array(s.N * s.d);
    const dw = new Float32Array(s.plan.idx.length);
    const grads = s.experts.map((_, e) => gradBuffers(s.lora[e] ?? {}));
    await this.addon.routedExpertsBackward(dx, dw, grads, dy, s.x, s.N, s.d, s.I, s.plan.idx, s.plan.off, s.plan.w, s.experts, s.limit, s.h13);
    const dweights = new Float32Array(s.N * s.k);
    for (let p = 0; p < dw.length; p++) dweights[s.plan.slot[p]] = dw[p];
    return { dx, dweights, lora: grads.map(loraGrads) };
  }

  async swigluForward(x: F32, w: ExpertWeights, lora: ExpertLora, N: number, d: number, I: number, limit: number, train = false): Promise<{ y: F32; saved: Saved }> {
    const plan = moePlan(new Int32Array(N), new Float32Array(N).fill(1), N, 1, 1);
    const raw = [rawExpert(w, lora)];
    const L = limit > 0 ? limit : Infinity;
    const y = new Float32Array(N * d);
    const h13 = train && this.keepExpertHidden ? new Float32Array(2 * N * I) : null;
    await this.addon.routedExpertsForward(y, x, N, d, I, plan.idx, plan.off, plan.w, raw, L, h13);
    const saved: MoeSaved = { op: 'swiglu', x, plan, experts: raw, N, d, I, k: 1, limit: L, lora: [lora], h13 };
    return { y, saved };
  }
  async swigluBackward(saved: Saved, dy: F32): Promise<{ dx: F32; lora: ExpertLoraGrads }> {
    const s = expectSaved<MoeSaved>(saved, 'swiglu');
    const dx = new Float32Array(s.N * s.d);
    const grads = [gradBuffers(s.lora[0])];
    await this.addon.routedExpertsBackward(dx, null, grads, dy, s.x, s.N, s.d, s.I, s.plan.idx, s.plan.off, s.plan.w, s.experts, s.limit, s.h13);
    return { dx, lora: loraGrads(grads[0]) };
  }

  async logits(x: F32, W: WeightHandle, N: number, d: number, V: number): Promise<F32> {
    const out = new Float32Array(N * V);
    await this.addon.gemm(N, V, d, 1, x, d, 1, nw(W).raw, true, 0, out, V);
    return out;
  }

  // lossSum = Σ_counted logsumexp(x Wᵀ) − x·W[target], one pass over vocabulary chunks
  async lmHeadLossForward(x: F32, W: WeightHandle, targets: I32, N: number, d: number, V: number, withGrad = false): Promise<{ lossSum: number; count: number; saved: Saved }> {
    // withGrad: the same single pass over W also accumulates Σ p W − W[target] (dLossSum = 1)
    const { lossSum, count, dx1 } = await this.headPass(x, W, targets, N, d, V, withGrad, null);
    const saved: LossSaved = { op: 'lmHeadLoss', x, W: nw(W), targets, N, d, dx1 };
    return { lossSum, count, saved };
  }
  // long gradients on the pool (the same float adds), short ones in the host loop
  addInto(dst: F32, src: F32): void {
    if (src.length >= 1 << 15) this.addon.addInto(dst, src);
    else addInto(dst, src);
  }
  // the same pass (the counted rows' chunks unchanged) with every row's top-1 on the way
  async lmHeadLossTop1(x: F32, W: WeightHandle, targets: I32, N: number, d: number, V: number): Promise<{ lossSum: number; count: number; top1: I32 }> {
    const top1 = new Int32Array(N);
    const { lossSum, count } = await this.headPass(x, W, targets, N, d, V, false, top1);
    return { lossSum, count, top1 };
  }
  private async headPass(x: F32, W: WeightHandle, targets: I32, N: number, d: number, V: number, withGrad: boolean, top1: I32 | null): Promise<{ lossSum: number; count: number; dx1: F32 | null }> {
    const { tg, wts, count } = this.lossRows(targets, N, 1);
    const loss = new Float32Array(N);
    const dx1 = withGrad && count > 0 ? new Float32Array(N * d) : null;
    if (count > 0 || (top1 && N > 0)) await this.addon.lmheadCe(loss, dx1, x, nw(W).raw, tg, wts, N, this.vocabChunk(count > 0 ? count : N, V), top1);
    let lossSum = 0;
    for (let n = 0; n < N; n++) lossSum += loss[n];
    return { lossSum, count, dx1 };
  }
  // dx_n = g·(Σ_v softmax(x_n Wᵀ)_v W_v − W[target_n]) for counted n
  async lmHeadLossBackward(saved: Saved, dLossSum: number): Promise<{ dx: F32 }> {
    const s = expectSaved<LossSaved>(saved, 'lmHeadLoss');
    if (s.dx1) {
      const dx = new Float32Array(s.N * s.d);
      for (let i = 0; i < dx.length; i++) dx[i] = s.dx1[i] * dLossSum;
      return { dx };
    }
    const { tg, wts, count } = this.lossRows(s.targets, s.N, dLossSum);
    const dx = new Float32Array(s.N * s.d);
    if (count > 0 && dLossSum !== 0) await this.addon.lmheadCe(new Float32Array(s.N), dx, s.x, s.W.raw, tg, wts, s.N, this.vocabChunk(count, s.W.raw.rows));
    return { dx };
  }
  private lossRows(targets: I32, N: number, g: number): { tg: I32; wts: F32; count: number } {
    const tg = new Int32Array(N);
    const wts = new Float32Array(N);
    let count = 0;
    for (let n = 0; n < N; n++) {
      if (targets[n] < 0) continue;
      tg[n] = targets[n];
      wts[n] = g;
      count++;
    }
    return { tg, wts, count };
  }
  /** vocabulary rows per chunk: about 2M logits (8 MB, cache-sized) in flight */
  private vocabChunk(rows: number, V: number): number {
    return Math.max(128, Math.min(V, Math.floor((1 << 21) / Math.max(1, rows))));
  }
}

/**
 * Stop the running native kernels (e.g. on SIGINT): each rejects with "v4tune: kernel cancelled",
 * and so does every kernel started before `resumeNativeKernels()`. No-op without the addon.
 */
export function cancelNativeKernels(): void {
  tryLoadAddon()?.cancel();
}
export function resumeNativeKernels(): void {
  tryLoadAddon()?.clearCancel();
}

/** The native backend, or a V4tuneError saying why the addon cannot be used. */
export async function createNativeBackend(): Promise<Backend> {
  return new NativeBackend(loadAddon());
}
