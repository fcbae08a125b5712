// LoRA dropout (PEFT's lora_dropout: y = W x + s·B A dropout(x), on the LoRA input only, in
// training only). The mask is a counter-based hash of (seed, row, col): its keep rate is 1 − p,
// each op applies it to its LoRA input (forward against a float64 reference with the same fixed
// mask, backward against float64 central differences: 2e-5 / 1e-4 as test/backend/tfjs/ops.test.ts),
// p = 0 is no dropout, and on the tiny preset: logits never drop, checkpointing draws the same
// masks, and the dropout seed alone decides the masks. Every backend: tfjs always, native when
// its addon is built (under CI=true it must be).
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dropoutHash, dropoutMask, dropoutScale, dropoutThreshold, loraDropout, moduleDropoutSeed } from '../../src/backend/dropout.js';
import { createNativeBackend, tryLoadAddon } from '../../src/backend/native/index.js';
import type { Backend, BackendName, ExpertLora, LoraDropout, LoraFactors } from '../../src/backend/ops.js';
import { createTfjsBackend } from '../../src/backend/tfjs/index.js';
import { createAdapter, type Adapter } from '../../src/lora/adapter.js';
import { initModel } from '../../src/model/init.js';
import { loadModel } from '../../src/model/load.js';
import type { ModelAdapter, V4Model } from '../../src/model/v4/model.js';
import * as R from '../ref64.js';

const FWD = 2e-5;
const BWD = 1e-4;
const skipNative = tryLoadAddon() === null && process.env.CI !== 'true';
const BACKENDS: BackendName[] = skipNative ? ['tfjs'] : ['tfjs', 'native'];

const f32 = (a: ArrayLike<number>): Float32Array => Float32Array.from(a);
/** random values already rounded to float32, as float64 */
const rnd = (n: number, seed: number, scale = 1): Float64Array => Float64Array.from(f32(R.rand(n, seed, scale)));

describe('the mask', () => {
  it('keeps 1 − p of 1e5 elements (within 1%), with multipliers exactly 0 or fround(1/(1−p))', () => {
    for (const p of [0.05, 0.1, 0.3, 0.5]) {
      const m = dropoutMask(loraDropout(p, 0xdeadbeef), null, 100, 1000);
      const scale = dropoutScale(p);
      let kept = 0;
      for (const v of m) {
        if (v !== 0 && v !== scale) throw new Error(`multiplier ${v}`);
        if (v !== 0) kept++;
      }
      expect(Math.abs(kept / m.length - (1 - p)), `p = ${p}`).toBeLessThan(0.01);
      expect(scale).toBe(Math.fround(1 / (1 - p)));
    }
  });

  it('is the hash of the file comment: pinned values, threshold ⌊p·2^24⌋, rows by index', () => {
    // pinned, so that the definition (shared with kernels/cpu/lora.h) cannot drift unnoticed
    expect([dropoutHash(1, 0, 0), dropoutHash(1, 2, 3), dropoutHash(0xdeadbeef, 70000, 4095)]).toEqual([804215951, 3017641876, 1795551057]);
    expect(moduleDropoutSeed(0, 'layers.0.attn.wq_a')).toBe(1531298799);
    expect(dropoutThreshold(0.1)).toBe(1677721);
    const d = loraDropout(0.25, 77);
    const m = dropoutMask(d, null, 9, 13);
    for (let row = 0; row < 9; row++) {
      for (let col = 0; col < 13; col++) expect(m[row * 13 + col] !== 0).toBe(dropoutHash(77, row, col) >>> 8 >= d.threshold);
    }
    // row i of a gathered input is model row rows[i] (routed experts: the token index)
    const rows = [8, 0, 5];
    const g = dropoutMask(d, rows, 3, 13);
    rows.forEach((r, i) => expect(Array.from(g.subarray(i * 13, (i + 1) * 13))).toEqual(Array.from(m.subarray(r * 13, (r + 1) * 13))));
  });

  it('modules and seeds draw independent masks: agreement ≈ p² + (1−p)²', () => {
    const p = 0.3;
    const a = dropoutMask(loraDropout(p, moduleDropoutSeed(5, 'layers.0.attn.wq_a')), null, 100, 1000);
    const b = dropoutMask(loraDropout(p, moduleDropoutSeed(5, 'layers.0.ffn.experts.1.w1')), null, 100, 1000);
    const c = dropoutMask(loraDropout(p, moduleDropoutSeed(6, 'layers.0.attn.wq_a')), null, 100, 1000);
    const agree = (x: Float32Array, y: Float32Array) => x.reduce((n, v, i) => n + (v === y[i] ? 1 : 0), 0) / x.length;
    expect(Math.abs(agree(a, b) - (p * p + (1 - p) ** 2))).toBeLessThan(0.01);
    expect(Math.abs(agree(a, c) - (p * p + (1 - p) ** 2))).toBeLessThan(0.01);
  });
});

// ---- float64 references with a fixed mask m (multipliers [rows, in]) on the LoRA input
type L64 = { A: Float64Array; B: Float64Array; r: number; s: number };
const mul = (x: Float64Array, m: Float32Array | null): Float64Array => (m ? x.map((v, i) => v * m[i]) : x);
const addTo = (y: Float64Array, z: Float64Array): Float64Array => y.map((v, i) => v + z[i]);

/** y = x Wᵀ + s ((x ⊙ m) Aᵀ) Bᵀ */
function linearDrop(x: Float64Array, W: Float64Array, N: number, inF: number, outF: number, l: L64 | undefined, m: Float32Array | null): Float64Array {
  const y = R.linear(x, W, N, inF, outF);
  return l ? addTo(y, R.linear(mul(x, m), new Float64Array(outF * inF), N, inF, outF, l)) : y;
}
function groupedDrop(x: Float64Array, W: Float64Array, N: number, G: number, inG: number, outG: number, l: L64, m: Float32Array | null): Float64Array {
  return addTo(R.groupedLinear(x, W, N, G, inG, outG), R.groupedLinear(mul(x, m), new Float64Array(W.length), N, G, inG, outG, l));
}
interface E64 { w1: Float64Array; w2: Float64Array; w3: Float64Array; lora: { w1: L64; w2: L64; w3: L64 } }
type Masks = { w1: Float32Array | null; w2: Float32Array | null; w3: Float32Array | null };
/** clamped SwiGLU with masked LoRA inputs: m.w1, m.w3 [N, d] on x, m.w2 [N, I] on act */
function swigluDrop(x: Float64Array, e: E64, N: number, d: number, I: number, L: number, m: Masks): Float64Array {
  const g = linearDrop(x, e.w1, N, d, I, e.lora.w1, m.w1);
  const u = linearDrop(x, e.w3, N, d, I, e.lora.w3, m.w3);
  const h = g.map((gv, i) => R.silu(Math.min(gv, L)) * Math.min(Math.max(u[i], -L), L));
  return linearDrop(h, e.w2, N, I, d, e.lora.w2, m.w2);
}
/** routed experts: token n's masks are row n of each expert's [N, ·] masks (row = token index) */
function moeDrop(x: Float64Array, idx: Int32Array, w: Float64Array, ex: E64[], masks: Masks[], N: number, d: number, I: number, k: number, L: number): Float64Array {
  const y = new Float64Array(N * d);
  const row = (m: Float32Array | null, n: number, C: number) => (m ? m.subarray(n * C, (n + 1) * C) : null);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < k; j++) {
      const e = idx[n * k + j];
      const ms = masks[e];
      const out = swigluDrop(x.subarray(n * d, (n + 1) * d), ex[e], 1, d, I, L, { w1: row(ms.w1, n, d), w2: row(ms.w2, n, I), w3: row(ms.w3, n, d) });
      for (let c = 0; c < d; c++) y[n * d + c] += w[n * k + j] * out[c];
    }
  }
  return y;
}

const P = 0.3;
const drop = (seed: number): LoraDropout => loraDropout(P, seed);
const factors = (l: L64, dropout?: LoraDropout): LoraFactors => ({ A: f32(l.A), B: f32(l.B), r: l.r, scaling: l.s, ...(dropout ? { dropout } : {}) });
/** the mask actually has both kept and dropped elements (else the test proves nothing) */
function mixed(m: Float32Array): Float32Array {
  expect(m.some((v) => v === 0) && m.some((v) => v !== 0)).toBe(true);
  return m;
}

describe.each(BACKENDS)('ops with dropout on the %s backend', (name) => {
  let be: Backend;
  beforeAll(async () => {
    be = name === 'native' ? await createNativeBackend() : await createTfjsBackend();
  });
  afterAll(() => be?.dispose());
  const W = (n: string, a: Float64Array, shape: number[]) => be.weightFromArray(n, f32(a), shape);

  it('linear: forward vs float64 with the fixed mask, dx/dA/dB vs finite differences; p = 0 is no dropout', async () => {
    const [N, inF, outF, r, s] = [5, 20, 6, 2, 1.5];
    const x = rnd(N * inF, 1);
    const Wt = rnd(outF * inF, 2);
    const l: L64 = { A: rnd(r * inF, 3), B: rnd(outF * r, 4), r, s };
    const d = drop(11);
    const m = mixed(dropoutMask(d, null, N, inF));
    const ref = (xx: Float64Array, ll: L64) => linearDrop(xx, Wt, N, inF, outF, ll, m);
    const Wh = W('W', Wt, [outF, inF]);
    const { y, saved } = await be.linearForward(f32(x), Wh, factors(l, d), N, inF, outF);
    expect(R.relErr(y, ref(x, l))).toBeLessThan(FWD);
    const dy = rnd(N * outF, 5);
    const g = await be.linearBackward(saved, f32(dy));
    expect(R.relErr(g.dx, R.fdGrad((v) => ref(v, l), x, dy))).toBeLessThan(BWD);
    expect(R.relErr(g.lora!.dA, R.fdGrad((v) => ref(x, { ...l, A: v }), l.A, dy))).toBeLessThan(BWD);
    expect(R.relErr(g.lora!.dB, R.fdGrad((v) => ref(x, { ...l, B: v }), l.B, dy))).toBeLessThan(BWD);

    const none = await be.linearForward(f32(x), Wh, factors(l), N, inF, outF);
    const zero = await be.linearForward(f32(x), Wh, factors(l, loraDropout(0, 11)), N, inF, outF);
    expect(zero.y).toEqual(none.y);
    const gn = await be.linearBackward(none.saved, f32(dy));
    const gz = await be.linearBackward(zero.saved, f32(dy));
    expect([gz.dx, gz.lora!.dA, gz.lora!.dB]).toEqual([gn.dx, gn.lora!.dA, gn.lora!.dB]);
  });

  it('grouped linear (wo_a): the mask over x [N, G·inG] (col g·inG + i); forward, dx/dA/dB', async () => {
    const [N, G, inG, outG, r, s] = [3, 2, 9, 3, 2, 2];
    const x = rnd(N * G * inG, 6);
    const Wt = rnd(G * outG * inG, 7);
    const l: L64 = { A: rnd(r * inG, 8), B: rnd(G * outG * r, 9), r, s };
    const d = drop(12);
    const m = mixed(dropoutMask(d, null, N, G * inG));
    const ref = (xx: Float64Array, ll: L64) => groupedDrop(xx, Wt, N, G, inG, outG, ll, m);
    const { y, saved } = await be.groupedLinearForward(f32(x), W('W', Wt, [G * outG, inG]), factors(l, d), N, G, inG, outG);
    expect(R.relErr(y, ref(x, l))).toBeLessThan(FWD);
    const dy = rnd(N * G * outG, 10);
    const g = await be.groupedLinearBackward(saved, f32(dy));
    expect(R.relErr(g.dx, R.fdGrad((v) => ref(v, l), x, dy))).toBeLessThan(BWD);
    expect(R.relErr(g.lora!.dA, R.fdGrad((v) => ref(x, { ...l, A: v }), l.A, dy))).toBeLessThan(BWD);
    expect(R.relErr(g.lora!.dB, R.fdGrad((v) => ref(x, { ...l, B: v }), l.B, dy))).toBeLessThan(BWD);
  });

  describe('experts', () => {
    const [N, d, I, k, L, r, s] = [5, 6, 5, 2, 0.8, 2, 2];
    const mk = (seed: number): E64 => ({
      w1: rnd(I * d, seed, 1.5), w2: rnd(d * I, seed + 1), w3: rnd(I * d, seed + 2, 1.5),
      lora: { w1: { A: rnd(r * d, seed + 3), B: rnd(I * r, seed + 4), r, s }, w2: { A: rnd(r * I, seed + 5), B: rnd(d * r, seed + 6), r, s }, w3: { A: rnd(r * d, seed + 7), B: rnd(I * r, seed + 8), r, s } },
    });
    const handles = (e: E64, i: number) => ({ w1: W(`w1.${i}`, e.w1, [I, d]), w2: W(`w2.${i}`, e.w2, [d, I]), w3: W(`w3.${i}`, e.w3, [I, d]) });
    // each projection its own seed (its own module); w2's mask is over act [N, I]
    const seeds = (e: number) => ({ w1: 100 + 3 * e, w2: 101 + 3 * e, w3: 102 + 3 * e });
    const loraOf = (e: E64, i: number): ExpertLora => ({
      w1: factors(e.lora.w1, drop(seeds(i).w1)), w2: factors(e.lora.w2, drop(seeds(i).w2)), w3: factors(e.lora.w3, drop(seeds(i).w3)),
    });
    const masksOf = (i: number): Masks => ({
      w1: dropoutMask(drop(seeds(i).w1), null, N, d), w2: dropoutMask(drop(seeds(i).w2), null, N, I), w3: dropoutMask(drop(seeds(i).w3), null, N, d),
    });
    type Proj = 'w1' | 'w2' | 'w3';
    const withFactor = (e: E64, p: Proj, which: 'A' | 'B', v: Float64Array): E64 => ({ ...e, lora: { ...e.lora, [p]: { ...e.lora[p], [which]: v } } });

    it('shared expert: forward, dx and every LoRA factor (w1, w3 masks on x, w2 on act)', async () => {
      const e = mk(20);
      const x = rnd(N * d, 30, 2);
      const ms = masksOf(0);
      for (const m of [ms.w1!, ms.w2!, ms.w3!]) mixed(m);
      const ref = (xx: Float64Array, ee: E64) => swigluDrop(xx, ee, N, d, I, L, ms);
      const { y, saved } = await be.swigluForward(f32(x), handles(e, 0), loraOf(e, 0), N, d, I, L);
      expect(R.relErr(y, ref(x, e))).toBeLessThan(FWD);
      const dy = rnd(N * d, 31);
      const g = await be.swigluBackward(saved, f32(dy));
      expect(R.relErr(g.dx, R.fdGrad((v) => ref(v, e), x, dy))).toBeLessThan(BWD);
      for (const p of ['w1', 'w2', 'w3'] as const) {
        expect(R.relErr(g.lora[p]!.dA, R.fdGrad((v) => ref(x, withFactor(e, p, 'A', v)), e.lora[p].A, dy)), `${p} A`).toBeLessThan(BWD);
        expect(R.relErr(g.lora[p]!.dB, R.fdGrad((v) => ref(x, withFactor(e, p, 'B', v)), e.lora[p].B, dy)), `${p} B`).toBeLessThan(BWD);
      }
    });

    it('routed experts: the mask row is the token index; forward, dx, dweights and LoRA factors', async () => {
      const ex = [mk(40), mk(50), mk(60)];
      const x = rnd(N * d, 70, 2);
      // tokens reach experts out of order, so expert-sorted positions differ from token indices
      const idx = Int32Array.from([2, 0, 1, 2, 0, 2, 2, 1, 0, 1]);
      const wts = rnd(N * k, 71);
      const masks = ex.map((_, i) => masksOf(i));
      const ref = (xx: Float64Array, ee: E64[], ww: Float64Array) => moeDrop(xx, idx, ww, ee, masks, N, d, I, k, L);
      const { y, saved } = await be.routedExpertsForward(f32(x), idx, f32(wts), ex.map(handles), ex.map(loraOf), N, d, I, k, L);
      expect(R.relErr(y, ref(x, ex, wts))).toBeLessThan(FWD);
      const dy = rnd(N * d, 72);
      const g = await be.routedExpertsBackward(saved, f32(dy));
      expect(R.relErr(g.dx, R.fdGrad((v) => ref(v, ex, wts), x, dy))).toBeLessThan(BWD);
      expect(R.relErr(g.dweights, R.fdGrad((v) => ref(x, ex, v), wts, dy))).toBeLessThan(BWD);
      for (const e of [0, 2]) {
        for (const p of ['w1', 'w2', 'w3'] as const) {
          const at = (which: 'A' | 'B') => (v: Float64Array) => ref(x, ex.map((ee, i) => (i === e ? withFactor(ee, p, which, v) : ee)), wts);
          expect(R.relErr(g.lora[e][p]!.dA, R.fdGrad(at('A'), ex[e].lora[p].A, dy)), `expert ${e} ${p} A`).toBeLessThan(BWD);
          expect(R.relErr(g.lora[e][p]!.dB, R.fdGrad(at('B'), ex[e].lora[p].B, dy)), `expert ${e} ${p} B`).toBeLessThan(BWD);
        }
      }
    });
  });
});

// ---- the whole model (tiny preset): where dropout applies and what decides its masks
interface TinyWithDropout { dir: string; model: V4Model; adapter: Adapter; ids: Int32Array }
/** A tiny preset in a temporary folder, a rank-4 adapter with dropout 0.2 and B ≠ 0 (so that
 *  dropout on the input of A changes the output and every gradient), and T token ids. */
async function tinyWithDropout(name: BackendName, prefix: string, T: number): Promise<TinyWithDropout> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  await initModel({ preset: 'tiny', out: join(dir, 'm'), seed: 5 });
  const model = await loadModel(join(dir, 'm'), { backend: name, note: () => {} });
  const adapter = createAdapter(model, { r: 4, alpha: 8, seed: 3, dropout: 0.2 });
  const r = R.rand(1 << 16, 9, 0.05);
  let o = 0;
  for (const l of adapter.layers.values()) for (let i = 0; i < l.B.length; i++) l.B[i] = r[o++ % r.length];
  const ids = Int32Array.from({ length: T }, (_, i) => (i * 37 + 11) % model.config.vocab_size);
  return { dir, model, adapter, ids };
}

describe.each(BACKENDS)('the tiny preset with lora dropout on the %s backend', (name) => {
  let dir: string;
  let model: V4Model;
  let adapter: Adapter;
  const T = 40;
  let ids: Int32Array;
  const mask = Uint8Array.from({ length: T }, (_, i) => (i % 5 === 0 ? 0 : 1));
  const segments = [25, 15];
  /** the same factors with another dropout probability */
  const withP = (a: Adapter, p: number): ModelAdapter => ({ factors: (m) => a.factors(m), modules: () => a.modules(), options: { dropout: p } });
  const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
  const allSame = (a: Map<string, Float32Array>, b: Map<string, Float32Array>) => [...a].every(([k, g]) => same(g, b.get(k)!));

  beforeAll(async () => {
    ({ dir, model, adapter, ids } = await tinyWithDropout(name, 'v4tune-dropout-', T));
  }, 120_000);
  afterAll(() => {
    model?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('logits and loss never drop: the same with dropout 0.2 as with 0 (bit for bit)', async () => {
    const a = await model.logits(ids, { segments, adapter });
    const b = await model.logits(ids, { segments, adapter: withP(adapter, 0) });
    expect(same(a, b)).toBe(true);
    const la = await model.loss(ids, mask, { segments, adapter });
    const lb = await model.loss(ids, mask, { segments, adapter: withP(adapter, 0) });
    expect(la.loss).toBe(lb.loss);
  });

  it('lossAndGrads drops; the same dropoutSeed gives the same loss and grads, another seed others; p = 0 ignores the seed', async () => {
    const plain = await model.lossAndGrads(ids, mask, { segments, adapter: withP(adapter, 0) });
    const a = await model.lossAndGrads(ids, mask, { segments, adapter, dropoutSeed: 7 });
    const a2 = await model.lossAndGrads(ids, mask, { segments, adapter, dropoutSeed: 7 });
    const b = await model.lossAndGrads(ids, mask, { segments, adapter, dropoutSeed: 8 });
    expect(a.loss).not.toBe(plain.loss);
    expect(a2.loss).toBe(a.loss);
    expect(allSame(a.grads, a2.grads)).toBe(true);
    expect(b.loss).not.toBe(a.loss);
    // every module's gradient moves with the seed (each module draws its own mask)
    const unchanged = [...a.grads].filter(([k, g]) => g.some((v) => v !== 0) && same(g, b.grads.get(k)!)).map(([k]) => k);
    expect(unchanged).toEqual([]);
    const z = await model.lossAndGrads(ids, mask, { segments, adapter: withP(adapter, 0), dropoutSeed: 123 });
    expect(z.loss).toBe(plain.loss);
    expect(allSame(z.grads, plain.grads)).toBe(true);
  });

  it('activation checkpointing draws the same masks: same loss and grads, bit for bit', async () => {
    const full = await model.lossAndGrads(ids, mask, { segments, adapter, dropoutSeed: 99 });
    const ckpt = await model.lossAndGrads(ids, mask, { segments, adapter, dropoutSeed: 99, checkpointing: true });
    expect(ckpt.loss).toBe(full.loss);
    expect(allSame(ckpt.grads, full.grads)).toBe(true);
  });

  it('a dropoutSeed that is not a uint32 is refused by name', async () => {
    await expect(model.lossAndGrads(ids, mask, { segments, adapter, dropoutSeed: -1 })).rejects.toThrow(/dropoutSeed must be an integer/);
  });
});

describe.each(BACKENDS)('attention query chunks with lora dropout on the %s backend', (name) => {
  let dir: string;
  let model: V4Model;
  let adapter: Adapter;
  const T = 40;
  const segments = [25, 15];
  const mask = Uint8Array.from({ length: T }, (_, i) => (i % 5 === 0 ? 0 : 1));
  let ids: Int32Array;
  beforeAll(async () => {
    ({ dir, model, adapter, ids } = await tinyWithDropout(name, 'v4tune-qchunk-', T));
  }, 120_000);
  afterAll(() => {
    model?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // A chunk's linears draw the masks of their model rows (row0): drawn at the chunk's own rows
  // 0 … n−1 instead, every chunk but the first would drop other elements and the gradients of
  // wq_b, wo_a and wo_b would move by far more than 1e-5.
  it.each([false, true])('chunks of 7 rows (checkpointing %s): the same loss and gradients as the whole sequence (1e-5)', async (checkpointing) => {
    const whole = await model.lossAndGrads(ids, mask, { segments, adapter, dropoutSeed: 99, checkpointing });
    const spy = vi.spyOn(model.backend, 'attentionForward');
    const chunked = await model.lossAndGrads(ids, mask, { segments, adapter, dropoutSeed: 99, checkpointing, queryChunk: 7 });
    // ⌈40 / 7⌉ = 6 chunks per layer forward, run again in the backward; a checkpointed block's
    // recompute takes the path's output from its first forward instead of a third run
    const L = model.config.num_hidden_layers;
    expect(spy.mock.calls.length).toBe(L * 6 * 2);
    expect(spy.mock.calls.every((a) => a[4] <= 7)).toBe(true);
    spy.mockRestore();
    expect(Math.abs(chunked.loss - whole.loss)).toBeLessThanOrEqual(1e-6 * Math.abs(whole.loss));
    const worst = [...whole.grads].map(([k, g]) => [k, R.relErr(chunked.grads.get(k)!, g)] as const).filter(([, e]) => !(e <= 1e-5));
    expect(worst).toEqual([]);
    expect([...whole.grads].filter(([k]) => /wq_b|wo_a|wo_b/.test(k)).every(([, g]) => g.some((v) => v !== 0))).toBe(true);
  });
});
