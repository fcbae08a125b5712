// v4tune's GGUF files in llama.cpp itself: the build inside node-llama-cpp 3.22.1 (a devDependency;
// its prebuilt linux-x64 CPU binary, no download, no compiler) loads each file, and its logits at
// every position of a 200-token sequence are compared with v4tune's on the same weights (the
// GGUF's tensors dequantised back into a checkpoint: gguf-weights.ts). F32 KV cache, flash
// attention off, so llama.cpp's attention runs in F32 like v4tune's.
//
// Compared at every position: the logits of every 61st token id and each position's 8 largest
// (reading all 129280 through node-llama-cpp's Map costs minutes), and the
// argmax over the whole vocabulary. Tolerances, relative to the largest |logit| at each position:
// - F32: 1e-4, same argmax everywhere — both compute in F32 on the same weights.
// - F16 / BF16 / Q8_0: llama.cpp's CPU matmul converts the activations to the weights' dot type
//   (F16: 11-bit mantissa, unit roundoff 4.9e-4; BF16: 8-bit, 3.9e-3; Q8_0: 8-bit blocks of 32,
//   half a step of amax/127 ≤ 3.9e-3), which v4tune (F32 activations) does not. The bounds
//   (F16 5e-3, BF16 5e-2, Q8_0 5e-2) are about 10× the activation unit roundoff; measured here:
//   F16 1.4e-3, BF16 6.8e-3, Q8_0 2.5e-2.
// - Q4_0 / Q4_K: llama.cpp rounds the activations of these dot products to 8 bits too (Q8_0 /
//   Q8_K): the Q8_0 bound (measured 2.6e-2, 2.3e-2); and the greedy continuation of a prompt.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getLlama, type Llama, type LlamaModel } from 'node-llama-cpp';
import { quantizeCheckpoint } from '../../src/export/quantize.js';
import { GgmlType, readGgufHeader } from '../../src/export/gguf.js';
import { mtpGgufPath, type GgufFormat } from '../../src/export/gguf-export.js';
import { readChatTemplate } from '../../src/chat/config.js';
import { loadTokenizer } from '../../src/data/tokenizer.js';
import { loadModel } from '../../src/model/load.js';
import type { V4Model } from '../../src/model/v4/model.js';
import { INTEROP_OVERRIDES, writeTinyModel } from './fixtures.js';
import { ggufTypes, ggufWeightsAsCheckpoint } from './gguf-weights.js';

const T = 200;
/** the formats whose activations llama.cpp rounds are compared on the first 100 tokens */
const T_ROUNDED = 100;
const V = 129280;
const GREEDY = 16;
/**
 * greedy tokens that must agree: this random model's next-token distributions are flat (top-2
 * margins of 1-10 % of the largest logit), so after enough steps one falls within llama.cpp's
 * 8-bit activation rounding; measured: the first 15 agree for both Q4 formats
 */
const MIN_GREEDY = 12;

/** a fixed pseudo-random sequence of ordinary token ids */
function sequence(n: number, seed: number): number[] {
  let x = seed;
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    ids.push(100 + (x % 120000));
  }
  return ids;
}

let dir = '';
let llama: Llama;
const files = new Map<GgufFormat, string>();
const FORMATS: GgufFormat[] = ['gguf-f32', 'gguf-f16', 'gguf-bf16', 'gguf-q8_0', 'gguf-q4_0', 'gguf-q4_k'];
/**
 * F32 and F16 run on the tiny model (index_topk 4, 2 of 8 experts: both top-k choices exercised).
 * The formats whose activation rounding in llama.cpp is coarser run on the same model with every
 * choice made continuous — index_topk 64 (every visible compressed entry) and all 8 experts per
 * token: with a top-k, a score moved by rounding can flip which entries or experts are kept, a
 * discrete change no logit bound covers.
 */
const modelOf = (f: GgufFormat): string => (f === 'gguf-f32' || f === 'gguf-f16' ? 'model' : 'wide');

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'v4tune-gguf-llama-'));
  await writeTinyModel(join(dir, 'model'));
  await writeTinyModel(join(dir, 'wide'), { overrides: { ...INTEROP_OVERRIDES, index_topk: 64, num_experts_per_tok: 8 } });
  for (const format of FORMATS) {
    const out = join(dir, `${format}.gguf`);
    await quantizeCheckpoint({ model: join(dir, modelOf(format)), out, format, method: 'rtn', groupSize: 32 });
    files.set(format, out);
  }
  llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' });
}, 300_000);

afterAll(async () => {
  for (const m of v4tuneModels.values()) m.dispose();
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

async function open(format: GgufFormat): Promise<LlamaModel> {
  return llama.loadModel({ modelPath: files.get(format)! });
}

/** the token ids whose logits are compared at every position: every 61st id (2120 ids), plus each position's 8 largest logits */
const PROBE = Array.from({ length: Math.ceil(V / 61) }, (_, i) => i * 61);

/** llama.cpp's logits at every position: the PROBE ids and the 8 largest (NaN elsewhere), T × V */
async function llamaLogits(model: LlamaModel, ids: number[]): Promise<Float32Array> {
  const ctx = await model.createContext({ contextSize: 512, batchSize: 512, flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32', threads: 2 });
  try {
    const filter = { tokens: PROBE, includeTop: 8 };
    const res = await ctx.getSequence().controlledEvaluate(ids.map((t) => [t, { generateNext: { logits: { filter } } }]));
    const out = new Float32Array(ids.length * V).fill(NaN);
    res.forEach((r, t) => {
      const l = r?.next?.logits;
      if (!l || l.size < PROBE.length) throw new Error(`llama.cpp gave no logits at position ${t}`);
      for (const [v, x] of l) out[t * V + v] = x;
    });
    return out;
  } finally {
    await ctx.dispose();
  }
}

/** llama.cpp's greedy continuation of `prompt` */
async function llamaGreedy(model: LlamaModel, prompt: number[], n: number): Promise<number[]> {
  const ctx = await model.createContext({ contextSize: 256, batchSize: 256, flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32', threads: 2 });
  try {
    const seq = ctx.getSequence();
    const out: number[] = [];
    let input: number[] = prompt;
    for (let i = 0; i < n; i++) {
      const res = await seq.controlledEvaluate(input.map((t, j) => (j === input.length - 1 ? [t, { generateNext: { logits: { filter: { tokens: [], includeTop: 1 } } } }] : t)));
      const l = res[res.length - 1]?.next?.logits;
      if (!l || l.size === 0) throw new Error('llama.cpp gave no logits');
      const best = [...l.entries()].reduce((a, b) => (b[1] > a[1] ? b : a))[0];
      out.push(best);
      input = [best];
    }
    return out;
  } finally {
    await ctx.dispose();
  }
}

/** the argmax of row t (NaN entries skipped) */
function argmax(x: Float32Array, t: number): number {
  let best = -1;
  for (let v = 0; v < V; v++) if (!Number.isNaN(x[t * V + v]!) && (best < 0 || x[t * V + v]! > x[t * V + best]!)) best = v;
  return best;
}

/**
 * llama.cpp's logits `a` (PROBE ids + each row's 8 largest) against v4tune's `b`: per position
 * max |a − b| / max |b| over the ids `a` has; the positions whose argmax (over the whole
 * vocabulary: `a` holds its max) differ; v4tune's top-2 margin / max |b| per position.
 */
function compare(a: Float32Array, b: Float32Array, n: number): { worst: number; argmaxDiffs: number[]; margins: number[] } {
  let worst = 0;
  const argmaxDiffs: number[] = [];
  const margins: number[] = [];
  for (let t = 0; t < n; t++) {
    let mx = 0;
    let d = 0;
    for (let v = 0; v < V; v++) {
      mx = Math.max(mx, Math.abs(b[t * V + v]!));
      const x = a[t * V + v]!;
      if (!Number.isNaN(x)) d = Math.max(d, Math.abs(x - b[t * V + v]!));
    }
    worst = Math.max(worst, d / mx);
    const ib = argmax(b, t);
    if (argmax(a, t) !== ib) argmaxDiffs.push(t);
    let second = -Infinity;
    for (let v = 0; v < V; v++) if (v !== ib) second = Math.max(second, b[t * V + v]!);
    margins.push((b[t * V + ib]! - second) / mx);
  }
  return { worst, argmaxDiffs, margins };
}

const v4tuneModels = new Map<GgufFormat, V4Model>();

/** v4tune on the weights the GGUF file holds (loaded once per format; disposed after the suite) */
async function v4tuneOnGgufWeights(format: GgufFormat): Promise<V4Model> {
  const have = v4tuneModels.get(format);
  if (have) return have;
  const out = join(dir, `weights-${format}`);
  await ggufWeightsAsCheckpoint(files.get(format)!, join(dir, modelOf(format)), out);
  const m = await loadModel(out, { backend: 'auto', note: () => {} });
  v4tuneModels.set(format, m);
  return m;
}

describe('llama.cpp (node-llama-cpp 3.22.1) runs v4tune GGUF files', { timeout: 300_000 }, () => {
  const ids = sequence(T, 12345);

  it('F32: logits at every position of 200 tokens equal v4tune\'s to 1e-4 of the largest logit, same argmax everywhere', async () => {
    const model = await open('gguf-f32');
    const got = await llamaLogits(model, ids);
    await model.dispose();
    const m = await loadModel(join(dir, 'model'), { backend: 'auto', note: () => {} });
    const want = await m.logits(Int32Array.from(ids));
    m.dispose();
    const r = compare(got, want, T);
    expect(r.worst).toBeLessThan(1e-4);
    expect(r.argmaxDiffs).toEqual([]);
  });

  for (const [format, tol] of [['gguf-f16', 5e-3], ['gguf-bf16', 5e-2], ['gguf-q8_0', 5e-2], ['gguf-q4_0', 5e-2], ['gguf-q4_k', 5e-2]] as const) {
    it(`${format}: logits at every position of ${T_ROUNDED} tokens within ${tol} of v4tune's on the same (dequantised) weights; argmax equal wherever v4tune's top-2 margin exceeds twice that`, async () => {
      const model = await open(format);
      const short = ids.slice(0, T_ROUNDED);
      const got = await llamaLogits(model, short);
      await model.dispose();
      const m = await v4tuneOnGgufWeights(format);
      const want = await m.logits(Int32Array.from(short));
      const r = compare(got, want, T_ROUNDED);
      console.log(`${format}: worst relative logit difference ${r.worst.toExponential(2)}, argmax differs at ${r.argmaxDiffs.length} of ${T_ROUNDED} positions`);
      expect(r.worst).toBeLessThan(tol);
      expect(r.argmaxDiffs.filter((t) => r.margins[t]! > 2 * tol)).toEqual([]);
    });
  }

  for (const format of ['gguf-q4_0', 'gguf-q4_k'] as const) {
    it(`${format}: the greedy continuation of a prompt agrees with v4tune's on the dequantised weights for its first ${MIN_GREEDY} tokens`, async () => {
      const prompt = sequence(24, 777);
      const model = await open(format);
      const got = await llamaGreedy(model, prompt, GREEDY);
      await model.dispose();
      const m = await v4tuneOnGgufWeights(format);
      const ids2 = [...prompt];
      for (let i = 0; i < GREEDY; i++) {
        const l = await m.logits(Int32Array.from(ids2));
        ids2.push(argmax(l, ids2.length - 1));
      }
      const want = ids2.slice(prompt.length);
      const agree = got.findIndex((t, i) => t !== want[i]);
      console.log(`${format}: greedy agrees for ${agree < 0 ? GREEDY : agree} of ${GREEDY} tokens`);
      expect(got.slice(0, MIN_GREEDY)).toEqual(want.slice(0, MIN_GREEDY));
    });
  }

  it('Q4_K: linears whose input is a multiple of 256 are Q4_K; the others Q5_0, as llama.cpp\'s quantizer falls back', () => {
    const types = ggufTypes(files.get('gguf-q4_k')!);
    const f = readGgufHeader(files.get('gguf-q4_k')!);
    for (const t of f.tensors) {
      if (!/^blk\.\d+\.(attn_(q_a|q_b|kv|output_a|output_b)|ffn_(gate|up|down)_(exps|shexp))\.weight$/.test(t.name)) continue;
      expect(types.get(t.name), t.name).toBe(t.dims[0]! % 256 === 0 ? GgmlType.Q4_K : GgmlType.Q5_0);
    }
  });

  it('the tokenizer llama.cpp reads from the GGUF gives v4tune\'s ids on the bundled corpus', async () => {
    const model = await open('gguf-q4_0');
    const tok = await loadTokenizer(join(dir, 'model', 'tokenizer.json'));
    const corpus = join(import.meta.dirname, '..', '..', 'datasets', 'pumpstation');
    let tokens = 0;
    for (const file of readdirSync(corpus).filter((x) => x.endsWith('.txt') || x.endsWith('.jsonl')).sort()) {
      const text = readFileSync(join(corpus, file), 'utf8');
      const want = tok.encode(text);
      const got = [...model.tokenize(text, false)];
      expect(got, file).toEqual(want);
      tokens += want.length;
    }
    expect(tokens).toBeGreaterThan(1000);
    expect(model.tokens.bos).toBe(0);
    expect(model.tokens.eos).toBe(1);
    // the model folder's chat template, as llama.cpp reads it from the file
    const template = readChatTemplate(join(dir, modelOf('gguf-q4_0')));
    expect(template).not.toBeNull();
    expect(model.fileInfo.metadata.tokenizer.chat_template).toBe(template);
    await model.dispose();
  });

  it('the MTP block is llama.cpp\'s nextn layer in mtp-<file>, which llama.cpp loads (node-llama-cpp has no MTP option: the nextn weights are read and set aside, not run)', async () => {
    const path = mtpGgufPath(files.get('gguf-q4_0')!);
    const f = readGgufHeader(path);
    expect(f.kv.get('deepseek4.nextn_predict_layers')?.value).toBe(1);
    expect(f.kv.get('deepseek4.block_count')?.value).toBe(5);
    const names = new Set(f.tensors.map((t) => t.name));
    for (const n of ['blk.4.nextn.eh_proj.weight', 'blk.4.nextn.enorm.weight', 'blk.4.nextn.hnorm.weight', 'blk.4.nextn.shared_head_norm.weight', 'blk.4.attn_q_a.weight', 'blk.4.ffn_gate_exps.weight', 'output_hc_fn.weight', 'token_embd.weight']) {
      expect(names.has(n), n).toBe(true);
    }
    expect(f.tensors.find((t) => t.name === 'blk.4.nextn.eh_proj.weight')!.dims).toEqual([128, 64]);
    expect([...names].some((n) => n.startsWith('blk.0.'))).toBe(false);
    const model = await llama.loadModel({ modelPath: path });
    expect(model.fileInsights.hasMtpWeights).toBe(true);
    await model.dispose();
  });
});
