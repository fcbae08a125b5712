// v4tune's GGUF files in llama.cpp itself: the build inside node-llama-cpp 3.22.1 (a devDependency;
// its prebuilt linux-x64 CPU binary, no download, no compiler) loads each file once, and its
// logits over the whole vocabulary at every position are compared with v4tune's on the same
// weights (the GGUF's tensors dequantised back into a checkpoint: gguf-weights.ts). F32 KV cache,
// flash attention off, so llama.cpp's attention runs in F32 like v4tune's.
//
// Tolerances, relative to the largest |logit| at each position:
// - F32, 200 tokens: 1e-4, same argmax everywhere — both compute in F32 on the same weights.
// - F16 / BF16 / Q8_0, 32 tokens: llama.cpp's CPU matmul converts the activations to the weights'
//   dot type (F16: 11-bit mantissa, unit roundoff 4.9e-4; BF16: 8-bit, 3.9e-3; Q8_0: 8-bit blocks
//   of 32, half a step of amax/127 ≤ 3.9e-3), which v4tune (F32 activations) does not. The bounds
//   (F16 5e-3, BF16 5e-2, Q8_0 5e-2) are about 10× the activation unit roundoff; measured:
//   F16 ~1e-3, BF16 ~6e-3, Q8_0 ~2e-2. The layer math itself is what F32 proves (all 200 tokens,
//   past the 128-token compression of layer 2); these show the rounding of each type stays bounded.
// - Q4_0 / Q4_K: llama.cpp rounds the activations of these dot products to 8 bits too (Q8_0 /
//   Q8_K): the Q8_0 bound (measured ~2e-2). Q4_K on a model 256 wide (WIDE_256), so that its
//   super-blocks are what llama.cpp runs, not only the Q5_0 fallback. Greedy decoding (llama.cpp's incremental decode
//   path, one token at a time): see GREEDY below.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importNodeLlamaCpp } from './llama-cpu.js';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ControlledEvaluateInputItem, Llama, LlamaLogLevel, LlamaModel, Token } from 'node-llama-cpp';
import { quantizeCheckpoint } from '../../src/export/quantize.js';
import { GgmlType, readGgufHeader } from '../../src/export/gguf.js';
import { mtpGgufPath, type GgufFormat } from '../../src/export/gguf-export.js';
import { readChatTemplate } from '../../src/chat/config.js';
import { loadTokenizer } from '../../src/data/tokenizer.js';
import { Checkpoint } from '../../src/model/checkpoint.js';
import { loadModel } from '../../src/model/load.js';
import type { V4Model } from '../../src/model/v4/model.js';
import { INTEROP_OVERRIDES, writeTinyModel } from './fixtures.js';
import { ggufTypes, ggufWeightsAsCheckpoint } from './gguf-weights.js';
import { ggufPyTensors, skipPython } from './python.js';

const T = 200;
/** the formats whose activations llama.cpp rounds: compared on the first 32 tokens (past the 16-token window; 8 compressed entries per ratio-4 layer) */
const T_ROUNDED = 32;
const V = 129280;
/**
 * Q4_0 / Q4_K greedy decoding, 64 tokens after a 24-token prompt. v4tune is run teacher-forced on
 * llama.cpp's continuation, so every one of the 64 steps is compared (a single flip does not end
 * the comparison). At every step llama.cpp's token is v4tune's argmax unless v4tune's top-2 margin
 * is within twice the Q4 logit bound (a near-tie that llama.cpp's 8-bit activation rounding may
 * flip); the logits themselves are bounded by the test before, on the same model. This random
 * model's next-token distributions are flat (top-2 margins of 0.1-10 % of the largest logit), so
 * such near-ties do occur: the free-running continuations agree token for token for at least
 * MIN_GREEDY tokens (measured: 15 for Q4_0, the 16th a near-tie at 0.6 %, 52 for Q4_K; 12
 * leaves room for the other CPU kernels llama.cpp picks on another machine).
 */
const GREEDY = 64;
const MIN_GREEDY = 12;
const Q4_TOL = 5e-2;

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
/** llama.cpp's log lines (info and above) since the last `llamaLog.length = 0` */
const llamaLog: string[] = [];
/** a format's file rounded to nearest, keyed by the format; GPTQ's (method gptq) keyed `<format>+gptq` */
const files = new Map<string, string>();
const FORMATS: GgufFormat[] = ['gguf-f32', 'gguf-f16', 'gguf-bf16', 'gguf-q8_0', 'gguf-q4_0', 'gguf-q4_k'];
/**
 * F32 and F16 run on the tiny model (index_topk 4, 2 of 8 experts: both top-k choices exercised).
 * The formats whose activation rounding in llama.cpp is coarser run on the same model with every
 * choice made continuous — index_topk 64 (every visible compressed entry) and all 8 experts per
 * token: with a top-k, a score moved by rounding can flip which entries or experts are kept, a
 * discrete change no logit bound covers.
 */
const modelOf = (f: string): string => (f === 'gguf-f32' || f === 'gguf-f16' ? 'model' : f.startsWith('gguf-q4_k') ? 'wide256' : 'wide');
/**
 * Q4_K's super-blocks are 256 wide: a linear whose input is not a multiple of 256 falls back to
 * Q5_0 (as llama.cpp's quantizer does), and no input of the tiny preset is one (hidden 64). So
 * Q4_K runs on the wide model made 256 wide where it matters — hidden, q_lora, o_groups × o_lora
 * and the experts' width: every layer's wq_a, wq_b, wkv, wo_b and its routed and shared experts'
 * w1, w3, w2 are Q4_K — with wo_a's input left at 128, so the file holds the Q5_0 fallback too.
 */
const WIDE_256 = { hidden_size: 256, q_lora_rank: 256, o_lora_rank: 128, moe_intermediate_size: 256 } as const;
/**
 * the formats also written by GPTQ (its own column loop: other codes in the same blocks), on a
 * 64-token calibration row: Q4_0, and Q4_K on the 256-wide model (GPTQ's Q4_K grid with its
 * super-block scale and min fits).
 */
const GPTQ_FORMATS = ['gguf-q4_0', 'gguf-q4_k'] as const;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'v4tune-gguf-llama-'));
  await writeTinyModel(join(dir, 'model'));
  await writeTinyModel(join(dir, 'wide'), { overrides: { ...INTEROP_OVERRIDES, index_topk: 64, num_experts_per_tok: 8 } });
  await writeTinyModel(join(dir, 'wide256'), { overrides: { ...INTEROP_OVERRIDES, index_topk: 64, num_experts_per_tok: 8, ...WIDE_256 } });
  for (const format of FORMATS) {
    const out = join(dir, `${format}.gguf`);
    await quantizeCheckpoint({ model: join(dir, modelOf(format)), out, format, method: 'rtn', groupSize: 32 });
    files.set(format, out);
  }
  for (const format of GPTQ_FORMATS) {
    const out = join(dir, `${format}-gptq.gguf`);
    const calibration = { rows: [{ input_ids: Int32Array.from(sequence(64, 4242)) }], damp: 0.01, note: () => {} };
    await quantizeCheckpoint({ model: join(dir, modelOf(format)), out, format, method: 'gptq', groupSize: 32, calibration });
    files.set(`${format}+gptq`, out);
  }
  // node-llama-cpp validates CI at import and throws on an empty one (`CI= npm test`): imported
  // here, after an empty CI is taken as unset
  if (process.env.CI === '') delete process.env.CI;
  const { getLlama, LlamaLogLevel: levels } = await importNodeLlamaCpp();
  llama = await getLlama({ gpu: false, build: 'never', logLevel: levels.info, logger: (_level: LlamaLogLevel, message: string) => { llamaLog.push(message); } });
}, 300_000);

const llamaModels = new Map<string, LlamaModel>();
const v4tuneModels = new Map<string, V4Model>();

afterAll(async () => {
  for (const m of v4tuneModels.values()) m.dispose();
  for (const m of llamaModels.values()) await m.dispose();
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** the file loaded in llama.cpp (once per file; disposed after the suite) */
async function open(path: string): Promise<LlamaModel> {
  let m = llamaModels.get(path);
  if (!m) {
    m = await llama.loadModel({ modelPath: path });
    llamaModels.set(path, m);
  }
  return m;
}

const contextOptions = { flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32', threads: 2 } as const;

/** llama.cpp's logits over the whole vocabulary at every position, T × V (read 25 positions per call: a Map per position) */
async function llamaLogits(model: LlamaModel, ids: number[]): Promise<Float32Array> {
  const ctx = await model.createContext({ contextSize: 512, batchSize: 512, ...contextOptions });
  try {
    const seq = ctx.getSequence();
    const out = new Float32Array(ids.length * V).fill(NaN);
    for (let from = 0; from < ids.length; from += 25) {
      const res = await seq.controlledEvaluate(ids.slice(from, from + 25).map((t): ControlledEvaluateInputItem => [t as Token, { generateNext: { logits: true } }]));
      res.forEach((r, i) => {
        const l = r?.next?.logits;
        if (!l || l.size !== V) throw new Error(`llama.cpp gave ${l?.size ?? 0} logits at position ${from + i}`);
        for (const [v, x] of l) out[(from + i) * V + v] = x;
      });
    }
    return out;
  } finally {
    await ctx.dispose();
  }
}

/** llama.cpp's greedy continuation of `prompt` (its greedy sampler, temperature 0), one token per decode call */
async function llamaGreedy(model: LlamaModel, prompt: number[], n: number): Promise<number[]> {
  const ctx = await model.createContext({ contextSize: 256, batchSize: 256, ...contextOptions });
  try {
    const seq = ctx.getSequence();
    const ids: number[] = [];
    let input: number[] = prompt;
    for (let i = 0; i < n; i++) {
      const res = await seq.controlledEvaluate(input.map((t, j): ControlledEvaluateInputItem => (j === input.length - 1 ? [t as Token, { generateNext: { token: true, options: { temperature: 0 } } }] : t as Token)));
      const next = res[res.length - 1]?.next?.token;
      if (next === undefined || next === null) throw new Error('llama.cpp gave no token');
      ids.push(next);
      input = [next];
    }
    return ids;
  } finally {
    await ctx.dispose();
  }
}

/** the argmax of row t (the lower id on a tie) */
function argmax(x: Float32Array, t: number): number {
  let best = 0;
  for (let v = 1; v < V; v++) if (x[t * V + v]! > x[t * V + best]!) best = v;
  return best;
}

function rowMax(x: Float32Array, t: number): number {
  let mx = 0;
  for (let v = 0; v < V; v++) mx = Math.max(mx, Math.abs(x[t * V + v]!));
  return mx;
}

/** v4tune's top-2 margin at row t, relative to the row's largest |logit| */
function margin(b: Float32Array, t: number): number {
  const ib = argmax(b, t);
  let second = -Infinity;
  for (let v = 0; v < V; v++) if (v !== ib) second = Math.max(second, b[t * V + v]!);
  return (b[t * V + ib]! - second) / rowMax(b, t);
}

/**
 * llama.cpp's logits `a` against v4tune's `b`, over the whole vocabulary: per position
 * max |a − b| / max |b|; the positions whose argmax differ; v4tune's top-2 margins.
 */
function compare(a: Float32Array, b: Float32Array, n: number): { worst: number; argmaxDiffs: number[]; margins: number[] } {
  let worst = 0;
  const argmaxDiffs: number[] = [];
  const margins: number[] = [];
  for (let t = 0; t < n; t++) {
    let d = 0;
    for (let v = 0; v < V; v++) d = Math.max(d, Math.abs(a[t * V + v]! - b[t * V + v]!));
    worst = Math.max(worst, d / rowMax(b, t));
    if (argmax(a, t) !== argmax(b, t)) argmaxDiffs.push(t);
    margins.push(margin(b, t));
  }
  return { worst, argmaxDiffs, margins };
}

/** v4tune on the weights the GGUF file holds (loaded once per format; disposed after the suite) */
async function v4tuneOnGgufWeights(format: string): Promise<V4Model> {
  const have = v4tuneModels.get(format);
  if (have) return have;
  const out = join(dir, `weights-${format}`);
  await ggufWeightsAsCheckpoint(files.get(format)!, join(dir, modelOf(format.replace('+gptq', ''))), out);
  const m = await loadModel(out, { backend: 'auto', note: () => {} });
  v4tuneModels.set(format, m);
  return m;
}

describe('llama.cpp (node-llama-cpp 3.22.1) runs v4tune GGUF files', { timeout: 300_000 }, () => {
  const ids = sequence(T, 12345);

  it('F32: logits at every position of 200 tokens equal v4tune\'s to 1e-4 of the largest logit, same argmax everywhere', async () => {
    const got = await llamaLogits(await open(files.get('gguf-f32')!), ids);
    const m = await loadModel(join(dir, 'model'), { backend: 'auto', note: () => {} });
    const want = await m.logits(Int32Array.from(ids));
    m.dispose();
    const r = compare(got, want, T);
    console.log(`gguf-f32: worst relative logit difference ${r.worst.toExponential(2)} over ${T} positions`);
    expect(r.worst).toBeLessThan(1e-4);
    expect(r.argmaxDiffs).toEqual([]);
  });

  for (const [format, tol] of [['gguf-f16', 5e-3], ['gguf-bf16', 5e-2], ['gguf-q8_0', 5e-2], ['gguf-q4_0', Q4_TOL], ['gguf-q4_k', Q4_TOL], ['gguf-q4_0+gptq', Q4_TOL], ['gguf-q4_k+gptq', Q4_TOL]] as const) {
    it(`${format}: logits at every position of ${T_ROUNDED} tokens within ${tol} of v4tune's on the same (dequantised) weights; argmax equal wherever v4tune's top-2 margin exceeds twice that`, async () => {
      const short = ids.slice(0, T_ROUNDED);
      const got = await llamaLogits(await open(files.get(format)!), short);
      const want = await (await v4tuneOnGgufWeights(format)).logits(Int32Array.from(short));
      const r = compare(got, want, T_ROUNDED);
      console.log(`${format}: worst relative logit difference ${r.worst.toExponential(2)}, argmax differs at ${r.argmaxDiffs.length} of ${T_ROUNDED} positions`);
      expect(r.worst).toBeLessThan(tol);
      expect(r.argmaxDiffs.filter((t) => r.margins[t]! > 2 * tol)).toEqual([]);
    });
  }

  it('the GPTQ-made Q4_0 and Q4_K files (run above) hold other codes than round to nearest\'s', () => {
    for (const format of GPTQ_FORMATS) expect(readFileSync(files.get(`${format}+gptq`)!).equals(readFileSync(files.get(format)!)), format).toBe(false);
  });

  for (const format of ['gguf-q4_0', 'gguf-q4_k'] as const) {
    it(`${format}: greedy decoding for ${GREEDY} tokens: llama.cpp picks v4tune's argmax at every step but near-ties (top-2 margin ≤ ${2 * Q4_TOL}); the first ${MIN_GREEDY} tokens agree exactly`, async () => {
      const prompt = sequence(24, 777);
      const got = await llamaGreedy(await open(files.get(format)!), prompt, GREEDY);
      // v4tune teacher-forced on llama.cpp's continuation: row prompt.length - 1 + i predicts step i
      const want = await (await v4tuneOnGgufWeights(format)).logits(Int32Array.from([...prompt, ...got]));
      const flips: Array<{ step: number; margin: number }> = [];
      for (let i = 0; i < GREEDY; i++) {
        const t = prompt.length - 1 + i;
        if (got[i] !== argmax(want, t)) flips.push({ step: i, margin: margin(want, t) });
      }
      const exact = flips.length === 0 ? GREEDY : flips[0]!.step;
      console.log(`${format}: greedy agrees token for token for ${exact} of ${GREEDY}; llama.cpp's pick differs from v4tune's argmax at ${flips.length} of ${GREEDY} steps (v4tune's top-2 margins there: ${flips.map((f) => f.margin.toExponential(1)).join(', ') || 'none'})`);
      expect(flips.filter((f) => f.margin > 2 * Q4_TOL)).toEqual([]);
      expect(exact).toBeGreaterThanOrEqual(MIN_GREEDY);
    });
  }

  it('Q4_K: linears whose input is a multiple of 256 are Q4_K (in both files llama.cpp ran above); the others Q5_0, as llama.cpp\'s quantizer falls back', () => {
    for (const file of ['gguf-q4_k', 'gguf-q4_k+gptq']) {
      const types = ggufTypes(files.get(file)!);
      const f = readGgufHeader(files.get(file)!);
      const count = new Map<number, number>();
      for (const t of f.tensors) {
        if (!/^blk\.\d+\.(attn_(q_a|q_b|kv|output_a|output_b)|ffn_(gate|up|down)_(exps|shexp))\.weight$/.test(t.name)) continue;
        const want = t.dims[0]! % 256 === 0 ? GgmlType.Q4_K : GgmlType.Q5_0;
        expect(types.get(t.name), `${file}: ${t.name}`).toBe(want);
        count.set(want, (count.get(want) ?? 0) + 1);
      }
      // every layer's wq_a, wq_b, wkv, wo_b and six expert tensors are Q4_K, its wo_a Q5_0
      expect(count.get(GgmlType.Q4_K), file).toBe(4 * 10);
      expect(count.get(GgmlType.Q5_0), file).toBe(4);
    }
  });

  it('the tokenizer llama.cpp reads from the GGUF gives v4tune\'s ids on the bundled corpus', async () => {
    const model = await open(files.get('gguf-q4_0')!);
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
  });

  it('the MTP block is llama.cpp\'s nextn layer in mtp-<file>: llama.cpp loads it as 4 trunk + 1 nextn layer and checks every tensor of the layer (node-llama-cpp does not set load_mtp, so llama.cpp sets them aside instead of running them)', async () => {
    const L = 4; // the tiny preset's trunk layers: the nextn layer is blk.4
    for (const format of ['gguf-f32', 'gguf-q4_0'] as const) {
      const path = mtpGgufPath(files.get(format)!);
      const f = readGgufHeader(path);
      expect(f.kv.get('deepseek4.nextn_predict_layers')?.value).toBe(1);
      expect(f.kv.get('deepseek4.block_count')?.value).toBe(L + 1);
      const names = f.tensors.map((t) => t.name);
      // as convert_hf_to_gguf.py --mtp: the trunk's embedding, norm and head, the MTP block's hc_head as the root output_hc_*, the block as blk.L
      expect(names.filter((n) => !n.startsWith(`blk.${L}.`)).sort()).toEqual(['output.weight', 'output_hc_base.weight', 'output_hc_fn.weight', 'output_hc_scale.weight', 'output_norm.weight', 'token_embd.weight']);
      for (const n of ['nextn.eh_proj', 'nextn.enorm', 'nextn.hnorm', 'nextn.shared_head_norm', 'attn_q_a', 'ffn_gate_exps']) expect(names, n).toContain(`blk.${L}.${n}.weight`);
      expect(f.tensors.find((t) => t.name === `blk.${L}.nextn.eh_proj.weight`)!.dims).toEqual([128, 64]);

      llamaLog.length = 0;
      const model = await open(path);
      // node-llama-cpp hands llama.cpp's log lines over asynchronously: wait for the end of the load
      for (let i = 0; i < 50 && !llamaLog.join('').includes('model buffer size'); i++) await new Promise((r) => setTimeout(r, 100));
      const log = llamaLog.join('\n');
      expect(log).toMatch(new RegExp(`loaded meta data with \\d+ key-value pairs and ${f.tensors.length} tensors`));
      // n_layer counts the trunk: n_layer_all − n_layer_nextn (a file whose nextn.eh_proj is missing gets n_layer_nextn 0)
      expect(log).toMatch(/^print_info: n_layer\s+= 4$/m);
      expect(log).toMatch(/^print_info: n_layer_all\s+= 5$/m);
      // every tensor of the nextn layer passed llama.cpp's shape check (a wrong or missing one fails the load), then was set aside
      const setAside = [...log.matchAll(/model has unused tensor (\S+)/g)].map((m) => m[1]).sort();
      expect(setAside).toEqual(names.filter((n) => n.startsWith(`blk.${L}.`)).sort());
      expect(model.fileInsights.hasMtpWeights).toBe(true);
    }
    // the trunk file has no nextn layer
    const main = readGgufHeader(files.get('gguf-q4_0')!);
    expect(main.kv.get('deepseek4.nextn_predict_layers')).toBeUndefined();
    expect(main.tensors.some((t) => t.name.includes('nextn'))).toBe(false);
  });

  // official MTP tensor (inside mtp.0.) → llama.cpp name (llama-arch.cpp LLM_TENSOR_NEXTN_*, and
  // the layer names convert_hf_to_gguf.py gives the block's other tensors), written out here
  // independently of v4tune's exporter
  const MTP_NAMES: Array<[string[], string]> = [
    [['e_proj.weight', 'h_proj.weight'], 'blk.4.nextn.eh_proj.weight'],
    [['enorm.weight'], 'blk.4.nextn.enorm.weight'],
    [['hnorm.weight'], 'blk.4.nextn.hnorm.weight'],
    [['norm.weight'], 'blk.4.nextn.shared_head_norm.weight'],
    [['hc_head_fn'], 'output_hc_fn.weight'],
    [['attn.wq_a.weight'], 'blk.4.attn_q_a.weight'],
    [['attn.wkv.weight'], 'blk.4.attn_kv.weight'],
    [['attn.wo_a.weight'], 'blk.4.attn_output_a.weight'],
    [['ffn.shared_experts.w2.weight'], 'blk.4.ffn_down_shexp.weight'],
    [Array.from({ length: 8 }, (_, e) => `ffn.experts.${e}.w1.weight`), 'blk.4.ffn_gate_exps.weight'],
    [Array.from({ length: 8 }, (_, e) => `ffn.experts.${e}.w3.weight`), 'blk.4.ffn_up_exps.weight'],
  ];

  // F32 only: the names, order and eh_proj concatenation are what is MTP-specific; the Q4_0 / Q4_K
  // encoders are the trunk's, which llama.cpp's logits above prove (gguf-py's reader takes ~9 s per
  // file here, parsing the 129280-token vocabulary)
  it.skipIf(skipPython)('gguf-py reads the nextn tensors of the F32 MTP file as v4tune\'s MTP weights, exactly', async () => {
    const ck = await Checkpoint.open(join(dir, 'model'));
    const expected = new Map<string, Float32Array>();
    try {
      for (const [parts, name] of MTP_NAMES) {
        const ws = await Promise.all(parts.map((p) => ck.f32(`mtp.0.${p}`)));
        let data: Float32Array;
        if (parts.length === 2) {
          // eh_proj: [e_proj | h_proj] along the input, row by row
          const [e, h] = ws as [Float32Array, Float32Array];
          const ce = ck.meta(`mtp.0.${parts[0]}`).logicalShape[1]!;
          const ch = ck.meta(`mtp.0.${parts[1]}`).logicalShape[1]!;
          data = new Float32Array(e.length + h.length);
          for (let r = 0; r < e.length / ce; r++) {
            data.set(e.subarray(r * ce, (r + 1) * ce), r * (ce + ch));
            data.set(h.subarray(r * ch, (r + 1) * ch), r * (ce + ch) + ce);
          }
        } else {
          data = new Float32Array(ws.reduce((a, w) => a + w.length, 0));
          let o = 0;
          for (const w of ws) { data.set(w, o); o += w.length; }
        }
        expected.set(name, data);
      }
    } finally {
      await ck.close();
    }
    const got = ggufPyTensors(mtpGgufPath(files.get('gguf-f32')!), [...expected.keys()], dir);
    for (const [name, want] of expected) {
      expect(got.get(name)!.type, name).toBe('F32');
      expect(got.get(name)!.values, name).toEqual(want);
    }
  });
});
