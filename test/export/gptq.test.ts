// GPTQ (src/export/gptq.ts): against round to nearest on a float64 reference written here, the
// model's linear-input observer, and `method: gptq` end to end on the tiny preset.
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../src/backend/index.js';
import { openDataset } from '../../src/data/dataset.js';
import { choleskyUpper, gptqFactor, gptqRows, int4Quantizer, outputErrorSq, q4_0Quantizer } from '../../src/export/gptq.js';
import { quantizeQ4_0 } from '../../src/export/gguf.js';
import { dequantizeInt4, quantizeRtn } from '../../src/export/int4.js';
import { CalibratedHessians, collectHessians, type CalibratedLinear } from '../../src/export/calibrate.js';
import { blockOrder, linearInput } from '../../src/export/linears.js';
import { linearKind, quantizeCheckpoint, type QuantizeSummary } from '../../src/export/quantize.js';
import { lineSink, silentSink } from '../../src/sink.js';
import { quantizeRecipe } from '../../src/stages/quantize.js';
import { Checkpoint } from '../../src/model/checkpoint.js';
import { f16Decode } from '../../src/model/formats.js';
import { initModel } from '../../src/model/init.js';
import { createAdapter } from '../../src/lora/adapter.js';
import { loadModel } from '../../src/model/load.js';
import { V4BlockStream, V4Model } from '../../src/model/v4/model.js';
import type { Backend, WeightHandle } from '../../src/backend/ops.js';
import { mulberry32 } from '../../src/random.js';
import { loadRecipe } from '../../src/recipe/load.js';
import { cli } from '../cli/capture.js';

// float64 reference: ‖(W − Q) Xᵀ‖ for W, Q [out, n] and X [T, n]
function outputError(W: ArrayLike<number>, Q: ArrayLike<number>, X: Float64Array, out: number, n: number, T: number): number {
  let s = 0;
  for (let r = 0; r < out; r++) {
    for (let t = 0; t < T; t++) {
      let y = 0;
      for (let i = 0; i < n; i++) y += (W[r * n + i]! - Q[r * n + i]!) * X[t * n + i]!;
      s += y * y;
    }
  }
  return Math.sqrt(s);
}

// H = (2/T) XᵀX in float64
function hessian(X: Float64Array, T: number, n: number): Float64Array {
  const H = new Float64Array(n * n);
  for (let t = 0; t < T; t++) for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) H[i * n + j] += (2 / T) * X[t * n + i]! * X[t * n + j]!;
  return H;
}

describe('GPTQ of one weight against round to nearest', () => {
  const out = 16;
  const n = 128;
  const T = 512;
  const r = mulberry32(11);
  const gauss = (): number => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  const W = new Float32Array(out * n);
  for (let i = 0; i < W.length; i++) W[i] = gauss() * 0.1;
  // correlated inputs: X = Z·M with a random mixing M, so H has strong off-diagonal terms
  const k = 16;
  const Z = new Float64Array(T * k);
  for (let i = 0; i < Z.length; i++) Z[i] = gauss();
  const M = new Float64Array(k * n);
  for (let i = 0; i < M.length; i++) M[i] = gauss();
  const X = new Float64Array(T * n);
  for (let t = 0; t < T; t++) for (let i = 0; i < n; i++) {
    let s = 0.05 * gauss();
    for (let j = 0; j < k; j++) s += Z[t * k + j]! * M[j * n + i]!;
    X[t * n + i] = s;
  }
  const H = hessian(X, T, n);

  it('lowers the output error ‖(W − Q)Xᵀ‖ below RTN\'s on correlated inputs, every code on its group grid', () => {
    const gs = 32;
    const qz = int4Quantizer(out, n, gs);
    const Q = gptqRows(W, n, 0, out, H, qz);
    const rtn = dequantizeInt4(quantizeRtn(W, out, n, gs));
    const eG = outputError(W, Q, X, out, n, T);
    const eR = outputError(W, rtn, X, out, n, T);
    expect(eG).toBeLessThan(0.7 * eR);
    const x = qz.result;
    for (let g = 0; g < out * (n / gs); g++) {
      expect(x.scales[g]).toBe(f16Decode(x.scaleBits[g]!));
      expect(x.scales[g]).toBeGreaterThan(0);
      expect(x.zeros[g]).toBeGreaterThanOrEqual(1);
      expect(x.zeros[g]).toBeLessThanOrEqual(15);
    }
    for (const q of x.q) expect(q).toBeLessThanOrEqual(15);
    // the returned weights are exactly the codes on their grids (what the GPTQ writer packs)
    expect(Array.from(dequantizeInt4(x))).toEqual(Array.from(Q));
    // the export's output error tr(E H Eᵀ) (from H's upper triangle) is ‖(W − Q)Xᵀ‖² · 2/T
    for (const q of [Q, rtn]) {
      const E = Float64Array.from(W, (w, i) => w - q[i]!);
      expect(Math.abs(outputErrorSq(E, out, n, H) / ((outputError(W, q, X, out, n, T) ** 2 * 2) / T) - 1)).toBeLessThan(1e-12);
    }
  });

  it('equals RTN exactly when H is diagonal (no error propagates): codes, scales and zeros', () => {
    for (const [gs, diag] of [[n, () => 1], [32, () => 0.1 + r()]] as const) {
      const D = new Float64Array(n * n);
      for (let i = 0; i < n; i++) D[i * n + i] = diag();
      const qz = int4Quantizer(out, n, gs);
      gptqRows(W, n, 0, out, D, qz);
      const rtn = quantizeRtn(W, out, n, gs);
      expect(qz.result.q).toEqual(rtn.q);
      expect(qz.result.scaleBits).toEqual(rtn.scaleBits);
      expect(qz.result.zeros).toEqual(rtn.zeros);
    }
  });

  it('with the Q4_0 grid: llama.cpp\'s bytes for a diagonal H, a lower output error on correlated inputs', () => {
    const D = new Float64Array(n * n);
    for (let i = 0; i < n; i++) D[i * n + i] = 1;
    const q0 = q4_0Quantizer(out, n);
    gptqRows(W, n, 0, out, D, q0);
    expect(Buffer.from(q0.result).equals(Buffer.from(quantizeQ4_0(W)))).toBe(true);
    const q1 = q4_0Quantizer(out, n);
    const Q = gptqRows(W, n, 0, out, H, q1);
    const d0 = q4_0Quantizer(out, n);
    const R = gptqRows(W, n, 0, out, D, d0);
    expect(outputError(W, Q, X, out, n, T)).toBeLessThan(outputError(W, R, X, out, n, T));
  });

  // gptqFactor takes U from the reversed Cholesky factor's inverse; AutoGPTQ's route (factor,
  // invert, factor the inverse) is written here with a Gauss–Jordan inverse. H has a dead input.
  it('the factor U is the upper Cholesky factor of (H + damp)⁻¹: Uᵀ·U·(H + damp) = I, and AutoGPTQ\'s three-step U within 1e-10', () => {
    const Hx = H.slice();
    for (let j = 0; j < n; j++) Hx[7 * n + j] = Hx[j * n + 7] = 0;
    const f = gptqFactor(Hx, n, { damp: 0.01 });
    expect(f.dead[7]).toBe(1);
    const Hd = Hx.slice();
    let mean = 0;
    for (let i = 0; i < n; i++) mean += Hd[i * n + i] === 0 ? 1 : Hd[i * n + i]!;
    for (let i = 0; i < n; i++) Hd[i * n + i] = (Hd[i * n + i] === 0 ? 1 : Hd[i * n + i]!) + 0.01 * (mean / n);
    // Gauss–Jordan with partial pivoting on [Hd | I]
    const a = Hd.slice();
    const inv = new Float64Array(n * n);
    for (let i = 0; i < n; i++) inv[i * n + i] = 1;
    for (let c = 0; c < n; c++) {
      let p = c;
      for (let r2 = c + 1; r2 < n; r2++) if (Math.abs(a[r2 * n + c]!) > Math.abs(a[p * n + c]!)) p = r2;
      for (const m of [a, inv]) for (let j = 0; j < n; j++) [m[c * n + j], m[p * n + j]] = [m[p * n + j]!, m[c * n + j]!];
      const d = a[c * n + c]!;
      for (const m of [a, inv]) for (let j = 0; j < n; j++) m[c * n + j]! /= d;
      for (let r2 = 0; r2 < n; r2++) {
        if (r2 === c) continue;
        const g = a[r2 * n + c]!;
        for (const m of [a, inv]) for (let j = 0; j < n; j++) m[r2 * n + j]! -= g * m[c * n + j]!;
      }
    }
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) inv[i * n + j] = inv[j * n + i]!;
    const U3 = choleskyUpper(inv, n)!;
    let worst = 0;
    let scale = 0;
    for (let i = 0; i < n * n; i++) {
      worst = Math.max(worst, Math.abs(f.U[i]! - U3[i]!));
      scale = Math.max(scale, Math.abs(U3[i]!));
    }
    expect(worst / scale).toBeLessThan(1e-10);
    // (Uᵀ U) Hd = I
    const UtU = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      let t = 0;
      for (let k2 = 0; k2 <= Math.min(i, j); k2++) t += f.U[k2 * n + i]! * f.U[k2 * n + j]!;
      UtU[i * n + j] = t;
    }
    let off = 0;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      let t = 0;
      for (let k2 = 0; k2 < n; k2++) t += UtU[i * n + k2]! * Hd[k2 * n + j]!;
      off = Math.max(off, Math.abs(t - (i === j ? 1 : 0)));
    }
    expect(off).toBeLessThan(1e-9);
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) expect(f.U[i * n + j]).toBe(0);
  });

  it('zeroes a dead input (H_ii = 0) and refuses a Hessian dampening cannot make positive definite', () => {
    const Hd = H.slice();
    for (let j = 0; j < n; j++) {
      Hd[5 * n + j] = 0;
      Hd[j * n + 5] = 0;
    }
    const qz = int4Quantizer(out, n, 32);
    const Q = gptqRows(W, n, 0, out, Hd, qz);
    for (let row = 0; row < out; row++) expect(Q[row * n + 5]).toBe(0);
    const bad = new Float64Array(n * n);
    for (let i = 0; i < n; i++) bad[i * n + i] = i === 3 ? -100 : 1;
    expect(() => gptqRows(W, n, 0, out, bad, int4Quantizer(out, n, 32), { name: 'tensor x' })).toThrow(/tensor x: .*not positive definite.*gptq_damp/);
  });
});

// ---------------------------------------------------------------- the observer and the recipe stage


describe('blockOrder', () => {
  it('puts layers and experts in numeric order, the rest by name', () => {
    const names = ['layers.10.attn.wq_a.weight', 'layers.2.ffn.experts.10.w1.weight', 'mtp.0.e_proj.weight', 'layers.2.ffn.experts.9.w1.weight', 'embed.weight', 'layers.2.attn.wq_a.weight', 'norm.weight', 'layers.1.ffn.gate.weight', 'head.weight'];
    expect(blockOrder(names)).toEqual([
      'embed.weight', 'head.weight', 'layers.1.ffn.gate.weight', 'layers.2.attn.wq_a.weight', 'layers.2.ffn.experts.9.w1.weight',
      'layers.2.ffn.experts.10.w1.weight', 'layers.10.attn.wq_a.weight', 'mtp.0.e_proj.weight', 'norm.weight',
    ]);
    expect(names[0]).toBe('layers.10.attn.wq_a.weight'); // the input is left as it was
  });
});

describe('method gptq on the tiny preset', () => {
  let dir: string;
  let modelDir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'v4tune-gptq-'));
    modelDir = join(dir, 'model');
    await initModel({ preset: 'tiny', out: modelDir, format: 'bf16', seed: 3 });
    mkdirSync(join(dir, 'corpus'));
    const docs = Array.from({ length: 40 }, (_, i) => `Pump ${i} was inspected; the seal on impeller ${i % 5} showed wear of ${i * 0.1} mm and was replaced by crew ${i % 3}.`);
    writeFileSync(join(dir, 'corpus', 'notes.jsonl'), docs.map((text) => JSON.stringify({ text })).join('\n'));
    writeFileSync(join(dir, 'r.yaml'), [
      `model: { path: ${JSON.stringify(modelDir)} }`,
      'data: { sources: [{ path: corpus/*.jsonl }], seq_len: 64, eval_fraction: 0.25 }',
      'export: { quantize: [gptq], method: gptq, group_size: 32, calibration_rows: 1000 }',
      'output: out',
    ].join('\n'));
    const p = await cli('prepare', join(dir, 'r.yaml'));
    expect(p.code, p.err).toBe(0);
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('the observer sees the input of every quantised linear with its shape (routed experts: only their rows)', async () => {
    const ckpt = await Checkpoint.open(modelDir);
    const model = await V4Model.load(ckpt, await createBackend('tfjs'));
    const c = model.config;
    const seen = new Map<string, { rows: number; cols: number; tokenIdx: Int32Array | null }[]>();
    const routed = new Map<string, Int32Array>();
    const row = openDataset(join(dir, 'out', 'data')).rows('train')[Symbol.iterator]().next().value!;
    try {
      await model.route(row.input_ids, {
        segments: row.segments,
        onLinearInput: (m, x, rows, cols, tokenIdx) => {
          expect(x.length).toBe(rows * cols);
          seen.set(m, [...(seen.get(m) ?? []), { rows, cols, tokenIdx: tokenIdx && Int32Array.from(tokenIdx) }]);
        },
        onRouting: (b, idx) => routed.set(b, Int32Array.from(idx)),
      });
      const T = row.input_ids.length;
      let checked = 0;
      for (const n of ckpt.names().filter((x) => linearKind(x))) {
        const m = n.slice(0, -'.weight'.length);
        const [, inF] = ckpt.meta(n).logicalShape as [number, number];
        const e = /^(.+)\.ffn\.experts\.(\d+)\.w[123]$/.exec(m);
        const calls = seen.get(m) ?? [];
        const blockRows = m.startsWith('mtp.') ? T - row.segments.filter((s: number) => s >= 2).length : T;
        if (e) {
          const idx = routed.get(e[1]!)!;
          const mine: number[] = [];
          for (let t = 0; t < idx.length / c.num_experts_per_tok; t++) {
            if (Array.from(idx.subarray(t * c.num_experts_per_tok, (t + 1) * c.num_experts_per_tok)).includes(Number(e[2]))) mine.push(t);
          }
          if (mine.length === 0) {
            expect(calls).toEqual([]);
            continue;
          }
          expect(calls).toHaveLength(1);
          expect(calls[0]!.cols).toBe(inF);
          expect(Array.from(calls[0]!.tokenIdx!)).toEqual(mine);
        } else {
          expect(calls, m).toHaveLength(1);
          expect(calls[0]!.rows).toBe(blockRows);
          expect(calls[0]!.cols).toBe(m.endsWith('.attn.wo_a') ? c.o_groups * inF : inF);
          expect(calls[0]!.tokenIdx).toBeNull();
        }
        checked++;
      }
      expect(checked).toBeGreaterThan(5 * (5 + 3));
    } finally {
      model.dispose();
      await ckpt.close();
    }
  }, 120_000);

  it('an expert w2 is told its clamped SwiGLU activation (float64 recount), with the adapter\'s LoRA on w1/w3 when there is one', async () => {
    const ckpt = await Checkpoint.open(modelDir);
    const model = await V4Model.load(ckpt, await createBackend('tfjs'));
    const c = model.config;
    const [d, I, L] = [c.hidden_size, c.moe_intermediate_size, c.swiglu_limit];
    const mod = 'layers.0.ffn.shared_experts';
    const w1 = await ckpt.f32(`${mod}.w1.weight`);
    const w3 = await ckpt.f32(`${mod}.w3.weight`);
    const row = openDataset(join(dir, 'out', 'data')).rows('train')[Symbol.iterator]().next().value!;
    // the activation from the observed input x, in float64, with the weights given
    const act = (x: Float32Array, W1: Float32Array, W3: Float32Array, n: number): Float64Array => {
      const h = new Float64Array(n * I);
      for (let t = 0; t < n; t++) {
        for (let i = 0; i < I; i++) {
          let a = 0;
          let b = 0;
          for (let j = 0; j < d; j++) { a += x[t * d + j]! * W1[i * d + j]!; b += x[t * d + j]! * W3[i * d + j]!; }
          if (L > 0) { a = Math.min(a, L); b = Math.min(Math.max(b, -L), L); }
          h[t * I + i] = (a / (1 + Math.exp(-a))) * b;
        }
      }
      return h;
    };
    const observe = async (adapter: ReturnType<typeof createAdapter> | null) => {
      const got = new Map<string, { x: Float32Array; rows: number }>();
      await model.route(row.input_ids, { segments: row.segments, adapter, onLinearInput: (m, x, rows) => { if (m.startsWith(mod)) got.set(m, { x: Float32Array.from(x), rows }); } });
      return got;
    };
    const relMax = (a: Float32Array, b: Float64Array): number => {
      let num = 0;
      let den = 0;
      for (let i = 0; i < b.length; i++) { num = Math.max(num, Math.abs(a[i]! - b[i]!)); den = Math.max(den, Math.abs(b[i]!)); }
      return num / den;
    };
    try {
      const plain = await observe(null);
      const x = plain.get(`${mod}.w1`)!;
      expect(relMax(plain.get(`${mod}.w2`)!.x, act(x.x, w1, w3, x.rows))).toBeLessThan(1e-5);
      const adapter = createAdapter(model, { r: 4, alpha: 8, targets: ['ffn.shared_experts.w1', 'ffn.shared_experts.w3'], seed: 2 });
      for (const l of adapter.layers.values()) l.B.fill(0.05);
      const adapted = await observe(adapter);
      const withDelta = (W: Float32Array, m: string) => {
        const dW = adapter.delta(m);
        return Float32Array.from(W, (v, i) => v + dW[i]!);
      };
      const expected = act(x.x, withDelta(w1, `${mod}.w1`), withDelta(w3, `${mod}.w3`), x.rows);
      expect(relMax(adapted.get(`${mod}.w2`)!.x, expected)).toBeLessThan(1e-5);
      expect(relMax(plain.get(`${mod}.w2`)!.x, expected)).toBeGreaterThan(1e-3);
    } finally {
      model.dispose();
      await ckpt.close();
    }
  }, 120_000);

  it('writes a GPTQ folder that reads back, with a lower output error than RTN and an eval loss nearer the unquantised model\'s', async () => {
    const recipe = loadRecipe(join(dir, 'r.yaml'));
    const warns: string[] = [];
    const [g] = await quantizeRecipe(recipe, lineSink(() => {}, (l) => warns.push(l)), { out: join(dir, 'q-gptq') });
    const [rt] = await quantizeRecipe(recipe, silentSink, { out: join(dir, 'q-rtn'), method: 'rtn' });
    const have = openDataset(join(dir, 'out', 'data')).rowCount('train');
    expect(warns.join('\n')).toContain(`export.calibration_rows is 1000 but the train split of ${join(dir, 'out', 'data')} has ${have} rows`);
    expect(g!.calibration).toMatchObject({ rows: have, damp: 0.01, passes: 1 });
    const layers = (JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')) as { num_hidden_layers: number }).num_hidden_layers;
    expect(g!.calibration!.blockRuns).toBe(layers + 1); // one window: every block once, the MTP block too
    // w3 reuses w1's factor (routed and shared experts), wkv wq_a's: one factorisation per input
    const ck = await Checkpoint.open(modelDir);
    const fallback = new Set(g!.calibration!.rtnFallback);
    const ran = ck.names().filter((n) => linearKind(n) && !n.endsWith('.attn.wo_a.weight') && !fallback.has(n));
    await ck.close();
    expect(g!.calibration!.linears).toBe(ran.length);
    expect(g!.calibration!.factorizations).toBe(new Set(ran.map((n) => linearInput(n.slice(0, -'.weight'.length)))).size);
    expect(g!.calibration!.factorizations).toBeLessThan(ran.length * 0.7);
    const s: QuantizeSummary = g!;
    for (const k of ['attention', 'shared_expert', 'routed_expert'] as const) {
      expect(s.errors[k]!.relOutputError!).toBeLessThan(s.errors[k]!.rtnRelOutputError!);
    }
    expect(rt!.errors.attention!.relOutputError).toBeUndefined();
    const evalLoss = async (m: string): Promise<number> => {
      const model = await loadModel(m, { backend: 'auto', note: () => {} });
      let sum = 0;
      let count = 0;
      try {
        for (const row of openDataset(join(dir, 'out', 'data')).rows('eval')) {
          const r = await model.loss(row.input_ids, row.loss_mask, { segments: row.segments });
          sum += r.lossSum;
          count += r.count;
        }
      } finally {
        model.dispose();
      }
      return sum / count;
    };
    // The random tiny model's loss sits above ln(vocab): any weight noise drifts it down towards
    // uniform, so "lower than RTN's loss" would reward noise. What INT4 should do is keep the
    // model's loss: GPTQ's eval loss stays nearer the unquantised model's than RTN's (+0.005).
    const lossBase = await evalLoss(modelDir);
    const lossG = await evalLoss(g!.out);
    const lossR = await evalLoss(rt!.out);
    expect(Number.isFinite(lossG)).toBe(true);
    expect(Math.abs(lossG - lossBase)).toBeLessThanOrEqual(Math.abs(lossR - lossBase) + 0.005);
  }, 600_000);

  it('calibrates once for several formats: the GGUF format reuses the gptq format\'s Hessians (GPTQ output error still below RTN\'s)', async () => {
    const recipe = loadRecipe(join(dir, 'r.yaml'));
    // listed GGUF first: the stage still calibrates for gptq first, whose linears cover the GGUF's
    const [q, g] = await quantizeRecipe(recipe, silentSink, { out: join(dir, 'q-both'), formats: ['gguf-q4_0', 'gptq'] });
    expect([q!.format, g!.format]).toEqual(['gguf-q4_0', 'gptq']);
    expect(g!.calibration).toMatchObject({ passes: 1, reused: false });
    expect(q!.calibration).toMatchObject({ passes: 0, reused: true });
    for (const k of ['attention', 'shared_expert', 'routed_expert'] as const) {
      expect(q!.errors[k]!.relOutputError!).toBeLessThan(q!.errors[k]!.rtnRelOutputError!);
    }
  }, 600_000);

  it('linears that read one input (w1 and w3, wq_a and wkv) share one Hessian: the bits of each collected alone, counted once in a window', async () => {
    const ckpt = await Checkpoint.open(modelDir);
    const model = await V4BlockStream.open(ckpt, await createBackend('tfjs'));
    const d = model.config.hidden_size;
    const rows = [...openDataset(join(dir, 'out', 'data')).rows('train')].slice(0, 2);
    const mods = ['layers.0.ffn.shared_experts.w1', 'layers.0.ffn.shared_experts.w3', 'layers.1.attn.wq_a', 'layers.1.attn.wkv'];
    const lin = (module: string): CalibratedLinear => ({ module, cols: d, groups: 1, input: linearInput(module) });
    try {
      expect(mods.map(linearInput)).toEqual(['layers.0.ffn.shared_experts.w1', 'layers.0.ffn.shared_experts.w1', 'layers.1.attn.wq_a', 'layers.1.attn.wq_a']);
      expect(linearInput('mtp.0.ffn.experts.12.w3')).toBe('mtp.0.ffn.experts.12.w1');
      expect(linearInput('layers.3.ffn.experts.12.w2')).toBe('layers.3.ffn.experts.12.w2');
      const shared = await collectHessians(model, rows, mods.map(lin));
      expect(shared.get(mods[0]!)).toBe(shared.get(mods[1]!));
      expect(shared.get(mods[2]!)).toBe(shared.get(mods[3]!));
      expect(shared.get(mods[0]!)).not.toBe(shared.get(mods[2]!));
      for (const m of mods) {
        const alone = (await collectHessians(model, rows, [{ module: m, cols: d, groups: 1 }])).get(m)!;
        expect(alone.tokens, m).toBe(shared.get(m)!.tokens);
        expect(Buffer.from(alone.H[0]!.buffer).equals(Buffer.from(shared.get(m)!.H[0]!.buffer)), m).toBe(true);
      }
      // a window of two inputs' Hessians holds the four linears; planned apart they need two
      const bytes = 2 * d * d * 8;
      expect(new CalibratedHessians(model, rows, mods.map(lin), bytes).windowCount).toBe(1);
      expect(new CalibratedHessians(model, rows, mods.map((m) => ({ module: m, cols: d, groups: 1 })), bytes).windowCount).toBe(2);
      // partners that are told different tensors (two layers' shared experts) are refused
      const wrong = [lin('layers.0.ffn.shared_experts.w1'), { ...lin('layers.1.ffn.shared_experts.w1'), input: 'layers.0.ffn.shared_experts.w1' }];
      await expect(collectHessians(model, rows, wrong)).rejects.toThrow(/layers\.1\.ffn\.shared_experts\.w1 is planned to share layers\.0\.ffn\.shared_experts\.w1's Hessian but was given another input tensor/);
    } finally {
      model.dispose();
      await ckpt.close();
    }
  }, 120_000);

  it('the model one block at a time: every linear gets the inputs of the whole-model forward, bit for bit, with one block in memory', async () => {
    const ckpt = await Checkpoint.open(modelDir);
    const rows = [...openDataset(join(dir, 'out', 'data')).rows('train')].slice(0, 2);
    const copyInputs = (into: Map<string, Float32Array[]>) => (m: string, x: Float32Array, n: number, cols: number): void => {
      into.set(m, [...(into.get(m) ?? []), x.slice(0, n * cols)]);
    };
    const whole = new Map<string, Float32Array[]>();
    const model = await V4Model.load(ckpt, await createBackend('auto', () => {}));
    try {
      for (const r of rows) await model.route(r.input_ids, { segments: r.segments, onLinearInput: copyInputs(whole) });
    } finally {
      model.dispose();
    }
    // the stream's backend, counting the weights it holds
    const inner = await createBackend('auto', () => {});
    const live = new Set<WeightHandle>();
    let most = 0;
    const counting = new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === 'prepareWeight') {
          return async (src: Parameters<Backend['prepareWeight']>[0], name: string) => {
            const h = await target.prepareWeight(src, name);
            live.add(h);
            most = Math.max(most, live.size);
            return h;
          };
        }
        if (prop === 'releaseWeights') return (hs: Iterable<WeightHandle>) => { for (const h of hs) live.delete(h); target.releaseWeights(hs); };
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as Backend;
    const stream = await V4BlockStream.open(ckpt, counting);
    const frame = live.size;
    expect(frame).toBe(1); // the embedding alone: no pass of the stream reaches the head
    const streamed = new Map<string, Float32Array[]>();
    try {
      expect(stream.blocks).toBe(stream.config.num_hidden_layers + 1); // the tiny preset has an MTP block
      for (const r of rows) {
        const row = await stream.start(r.input_ids, r.segments);
        for (let b = 0; b < stream.blocks; b++) {
          const y = await stream.run(b, row, copyInputs(streamed));
          if (b < stream.config.num_hidden_layers) row.X = y;
        }
      }
      expect(stream.loads).toBe(2 * stream.blocks);
      // an observer that wants some linears only is told those only (the others' expert
      // activations are not computed); observing block 1 alone tells it the same bits
      const wanted = new Set(['layers.1.ffn.experts.0.w2', 'layers.1.ffn.shared_experts.w2', 'layers.1.attn.wq_b']);
      const only = new Map<string, Float32Array[]>();
      const row = await stream.start(rows[0]!.input_ids, rows[0]!.segments);
      row.X = await stream.run(0, row);
      await stream.observe(1, row, Object.assign(copyInputs(only), { wants: (m: string) => wanted.has(m) }));
      expect([...only.keys()].sort()).toEqual([...wanted].filter((m) => whole.has(m)).sort());
      for (const [m, xs] of only) expect(Buffer.from(xs[0]!.buffer).equals(Buffer.from(whole.get(m)![0]!.buffer)), m).toBe(true);
      const perBlock = ckpt.names().filter((n) => n.startsWith('layers.1.')).length;
      expect(most).toBeLessThanOrEqual(frame + perBlock + 16); // the embedding and one block (its scales not counted as weights)
      expect(most).toBeLessThan(ckpt.names().length / 2);
    } finally {
      stream.dispose();
      await ckpt.close();
    }
    const modules = [...whole.keys()].sort();
    expect(modules.length).toBeGreaterThan(20);
    expect([...streamed.keys()].sort()).toEqual(modules);
    expect(modules.some((m) => m.startsWith('mtp.0.'))).toBe(true);
    for (const m of modules) {
      const a = whole.get(m)!;
      const b = streamed.get(m)!;
      expect(b.length, m).toBe(a.length);
      a.forEach((x, i) => expect(Buffer.from(b[i]!.buffer).equals(Buffer.from(x.buffer)), `${m} call ${i}`).toBe(true));
    }
  }, 120_000);

  it('Hessians collected in small windows, asked for out of block order (the stream starting again), equal those of one window, bit for bit', async () => {
    const ckpt = await Checkpoint.open(modelDir);
    const stream = await V4BlockStream.open(ckpt, await createBackend('auto', () => {}));
    const d = stream.config.hidden_size;
    const rows = [...openDataset(join(dir, 'out', 'data')).rows('train')].slice(0, 3);
    // layers.1 (three windows: the first two only observe the block, the third runs it whole),
    // then layers.0 (behind the streams: a restart), the MTP block, layers.1 again
    const mods = [
      'layers.1.ffn.shared_experts.w1', 'layers.1.ffn.experts.0.w2', 'layers.1.attn.wq_a', 'layers.0.attn.wq_a', 'layers.0.ffn.shared_experts.w1',
      'mtp.0.attn.wq_a', 'mtp.0.ffn.shared_experts.w1', 'layers.1.attn.wkv',
    ];
    const lin = (module: string): CalibratedLinear => ({ module, cols: module.endsWith('.w2') ? stream.config.moe_intermediate_size : d, groups: 1, input: linearInput(module) });
    try {
      const one = new CalibratedHessians(stream, rows, mods.map(lin));
      expect(one.windowCount).toBe(1);
      // one input's Hessian per window: eight windows (1.wkv, planned last, is apart from 1.wq_a)
      const small = new CalibratedHessians(stream, rows, mods.map(lin), d * d * 8);
      expect(small.windowCount).toBe(8);
      for (const m of mods) {
        const a = await one.get(m);
        const b = await small.get(m);
        expect(b.tokens, m).toBe(a.tokens);
        expect(a.tokens, m).toBeGreaterThan(0);
        expect(Buffer.from(b.H[0]!.buffer).equals(Buffer.from(a.H[0]!.buffer)), m).toBe(true);
      }
      const L = stream.config.num_hidden_layers;
      // a plan that goes back to layers.0 after the MTP block (as the gptq export plans the wo_a
      // it keeps, last): the MTP window does not take layers.0 with it, so collecting only what
      // comes before never starts again from the embedding
      const back = ['layers.0.attn.wq_a', 'layers.1.attn.wq_a', 'mtp.0.attn.wq_a', 'layers.0.ffn.shared_experts.w1'];
      const tail = new CalibratedHessians(stream, rows, back.map(lin), 2 * d * d * 8);
      expect(tail.windowCount).toBe(3);
      for (const m of back.slice(0, 3)) await tail.get(m);
      expect(tail.starts).toBe(1);
      expect(one.passes).toBe(1);
      expect(one.blockRuns).toBe(L + 1); // every block once
      expect(small.passes).toBe(8);
      // blocks run: 0 then 1 observed (the streams stay at 1's input: the next window is in
      // block 1), 1 observed again, 1 whole (advancing), 0 observed after a restart, 0 (advancing),
      // 1 … L−1 then the MTP block, the MTP block, then a restart for block 1: 0 and 1
      expect(small.blockRuns).toBe(2 + 1 + 1 + 1 + 1 + L + 1 + 2);
    } finally {
      stream.dispose();
      await ckpt.close();
    }
  }, 120_000);

  it('quantizes block by block: whatever the Hessian windows, the calibration rows go through the blocks once, in order', async () => {
    const rows = [...openDataset(join(dir, 'out', 'data')).rows('train')].slice(0, 2).map((r) => ({ input_ids: r.input_ids, segments: r.segments }));
    const cfg = JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')) as { hidden_size: number };
    // windows of one input's Hessian and more: windows that span two blocks, and (gptq) wo_a,
    // planned in its layer's place though the gptq format keeps it
    for (const [format, k] of [['gguf-q4_0', 1], ['gptq', 1], ['gptq', 3], ['gptq', 5], ['gptq', 8]] as const) {
      const s = await quantizeCheckpoint({
        model: modelDir, out: join(dir, `q-windows-${format}-${k}${format === 'gptq' ? '' : '.gguf'}`), format, method: 'gptq', groupSize: 32,
        calibration: { rows, damp: 0.01, backend: 'auto', hessianBudgetBytes: k * cfg.hidden_size * cfg.hidden_size * 8, note: () => {} },
      });
      const c = s.calibration!;
      expect(c.passes, `${format} ${k}`).toBeGreaterThan(5);
      expect(c.starts, `${format} ${k}`).toBe(1);
      if (k === 1) expect(c.blockRuns, format).toBe(c.passes); // each pass ran the one block its window lies in
    }
  }, 120_000);

  it('without room for kept factors every linear factors its own Hessian again: the same bytes', async () => {
    const rows = [...openDataset(join(dir, 'out', 'data')).rows('train')].slice(0, 2).map((r) => ({ input_ids: r.input_ids, segments: r.segments }));
    const run = (tag: string, factorBudgetBytes?: number) => quantizeCheckpoint({
      model: modelDir, out: join(dir, `q-factors-${tag}`), format: 'gptq', method: 'gptq', groupSize: 32,
      calibration: { rows, damp: 0.01, backend: 'auto', factorBudgetBytes, note: () => {} },
    });
    const kept = await run('kept');
    const none = await run('none', 0);
    // one factor per input with the default budget; with none, one per linear (wo_a excepted: gptq keeps it)
    expect(kept.calibration!.factorizations).toBeLessThan(none.calibration!.factorizations);
    expect(none.calibration!.factorizations).toBe(none.calibration!.linears);
    const written = readdirSync(join(dir, 'q-factors-kept')).filter((f) => f !== 'v4tune-quantize.json'); // the summary counts the factorisations
    expect(written.some((f) => f.endsWith('.safetensors'))).toBe(true);
    for (const f of written) {
      expect(readFileSync(join(dir, 'q-factors-none', f)).equals(readFileSync(join(dir, 'q-factors-kept', f))), f).toBe(true);
    }
  }, 120_000);

  it('refuses a missing dataset and an empty train split, naming the recipe', async () => {
    const recipe = loadRecipe(join(dir, 'r.yaml'));
    await expect(quantizeRecipe({ ...recipe, data: { ...recipe.data, output: join(dir, 'nowhere') } }, silentSink, { out: join(dir, 'x') }))
      .rejects.toThrow(new RegExp(`${recipe.file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: export.method gptq calibrates on the prepared dataset`));
    const empty = join(dir, 'empty');
    cpSync(join(dir, 'out', 'data'), empty, { recursive: true });
    const manifest = openDataset(join(dir, 'out', 'data')).manifest;
    writeFileSync(join(empty, 'manifest.json'), JSON.stringify({ ...manifest, splits: { ...manifest.splits, train: { ...manifest.splits.train, rows: 0, shards: [] } } }));
    await expect(quantizeRecipe({ ...recipe, data: { ...recipe.data, output: empty } }, silentSink, { out: join(dir, 'y') })).rejects.toThrow(/export.method gptq needs calibration rows, but the train split .* is empty/);
  });
});
