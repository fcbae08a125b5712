// A whole LoRA training step (loss and gradients, no optimizer) on the native backend, with every
// backend op timed and its FLOPs counted, against the FMA peak measured in the same run; the
// bf16 mode too; and the same step with PEFT + transformers on the same checkpoint (BF16 copy,
// float32 compute, same targets, rank and threads) in the same run.
//
// FLOPs are the model's: each frozen linear counts 2·rows·in·out forward and the same again
// backward (dx only; base weights get no gradient), LoRA its forward and twice that backward,
// attention 4·(visible keys)·H·D forward and 8·… backward, mHC its mixes and sums, the head
// 2·T·d·V forward and again for dh. Work repeated (activation checkpointing re-runs each
// block's forward) is not counted, so the fraction of peak is conservative; the experts'
// backward reads h1 and h3 from the training forward, so it repeats nothing. Element-wise ops (norms, RoPE, routing softmax) count 0.
//
// Usage (after `npm run build` and `npm run build:native`):
//   node bench/step.mjs --preset flash|small [--layers 2 --experts 32] [--model DIR]
//     [--tokens 512,4096] [--reps 2] [--rank 16] [--checkpointing-from 4096] [--attention-chunk 0] [--bf16] [--modes fp32,bf16]
//     [--peft DIR|make|none] [--peft-tokens 512] [--peft-dtype float32|bfloat16|both] [--out bench/results/step-flash.json]
// --model reuses a checkpoint folder (else the preset is created in a temp folder); --peft make
// writes the BF16 copy transformers needs (v4tune merge --dtype bf16 of a zero adapter).
import { setFlagsFromString } from 'node:v8';
// as bin/v4tune.js does for every command: atomic garbage collections instead of incremental
// marking beside the kernel pool (see there); and only the modules a training run loads, since
// each collection marks the whole JS heap
setFlagsFromString('--no-incremental-marking');
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createAdapter } from '../dist/lora/adapter.js';
import { saveAdapter } from '../dist/lora/peft.js';
import { loadModel } from '../dist/model/load.js';
import { tryLoadAddon } from '../dist/backend/native/addon.js';
import { initModel } from '../dist/model/init.js';
import { mergeAdapter } from '../dist/export/merge.js';
import { parseConfig } from '../dist/model/config.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'small' },
    layers: { type: 'string' },
    experts: { type: 'string' },
    model: { type: 'string' },
    tokens: { type: 'string', default: '512' },
    reps: { type: 'string', default: '2' },
    rank: { type: 'string', default: '16' },
    'checkpointing-from': { type: 'string', default: '4096' },
    // query rows per chunk of attention's per-query path (train.attention_chunk) for sequences longer than it; 0: none
    'attention-chunk': { type: 'string', default: '0' },
    bf16: { type: 'boolean', default: false },
    // the modes to time, e.g. bf16 alone for a long sequence (default fp32, and bf16 with --bf16)
    modes: { type: 'string' },
    peft: { type: 'string', default: 'none' },
    'peft-tokens': { type: 'string', default: '512' },
    'peft-dtype': { type: 'string', default: 'float32' },
    out: { type: 'string' },
  },
});
const reps = Number(values.reps);
const rank = Number(values.rank);
const ckFrom = Number(values['checkpointing-from']);
const qChunk = Number(values['attention-chunk']);
const tokenList = values.tokens.split(',').map(Number);
const out = values.out ?? `bench/results/step-${values.preset}.json`;
const addon = tryLoadAddon();
if (!addon) throw new Error('bench/step: the native addon is not built (npm run build:native)');
const threads = addon.info().threads;
const tmp = mkdtempSync(join(tmpdir(), 'v4tune-step-'));
const load0 = loadavg();

// ---------------------------------------------------------------- FLOPs per op
const count = (a) => a.reduce((s, v) => s + (v >= 0 ? 1 : 0), 0);
const loraF = (l, N, inF, outF) => (l ? 2 * N * l.r * (inF + outF) : 0);
/** forward FLOPs and the backward/forward ratio (base part, LoRA part) of each op, from its arguments */
const FLOPS = {
  linearForward: (x, W, l, N, inF, outF) => ({ base: 2 * N * inF * outF, lora: loraF(l, N, inF, outF) }),
  groupedLinearForward: (x, W, l, N, G, inG, outG) => ({ base: 2 * N * G * inG * outG, lora: l ? 2 * N * G * l.r * (inG + outG) : 0 }),
  routedExpertsForward: (x, idx, w, experts, lora, N, d, I) => {
    const P = count(idx);
    const r = lora.find((e) => e && (e.w1 || e.w2 || e.w3));
    const rr = r ? (r.w1 ?? r.w2 ?? r.w3).r : 0;
    return { base: 6 * P * d * I, lora: 6 * P * rr * (d + I) };
  },
  swigluForward: (x, w, l, N, d, I) => ({ base: 6 * N * d * I, lora: 6 * N * ((l.w1 ?? l.w2 ?? l.w3)?.r ?? 0) * (d + I) }),
  attentionForward: (q, kv, sink, idx, N, H, D) => ({ base: 4 * count(idx) * H * D, lora: 0, back: 2 }),
  mhcPreForward: (X, fn, s, b, N, hc, d) => ({ base: 2 * N * (2 + hc) * hc * hc * d + 2 * N * hc * d, lora: 0, back: 2 }),
  mhcPostForward: (f, res, post, comb, N, hc, d) => ({ base: 2 * N * hc * d * (1 + hc), lora: 0, back: 2 }),
  hcHeadForward: (X, fn, s, b, N, hc, d) => ({ base: 2 * N * hc * hc * d + 2 * N * hc * d, lora: 0, back: 2 }),
  routerForward: (x, W, bias, hash, N, d, E) => ({ base: 2 * N * d * E, lora: 0 }),
  lmHeadLossForward: (x, W, targets, N, d, V, withGrad) => ({ base: 2 * count(targets) * d * V * (withGrad === false ? 1 : 2), lora: 0, back: 0 }),
  logits: (x, W, N, d, V) => ({ base: 2 * N * d * V, lora: 0 }),
  indexerTopk: (q, k, w, kStart, kCount, N, M, nh, hd) => ({ base: 2 * kCount.reduce((s, v) => s + v, 0) * nh * hd, lora: 0 }),
};
const FAMILY = {
  linear: 'attention', groupedLinear: 'attention', attention: 'attention', rope: 'attention', compressor: 'attention', indexerTopk: 'attention',
  mhcPre: 'mHC', mhcPost: 'mHC', hcHead: 'mHC',
  routedExperts: 'routed experts', router: 'routed experts',
  swiglu: 'shared expert',
  lmHeadLoss: 'head', logits: 'head',
  rmsnorm: 'norms, embedding', embedding: 'norms, embedding',
};

/** The ops of the backend interface (src/backend/ops.ts); helpers they call are not timed apart. */
const OPS = [
  'embedding', 'logits', 'indexerTopk', 'lmHeadLossForward', 'lmHeadLossBackward',
  ...['rmsnorm', 'linear', 'groupedLinear', 'mhcPre', 'mhcPost', 'hcHead', 'rope', 'compressor', 'attention', 'router', 'routedExperts', 'swiglu']
    .flatMap((op) => [`${op}Forward`, `${op}Backward`]),
];

/** Wrap every op of the backend: time and FLOPs per op kind while `on`. */
function profile(be) {
  const stats = new Map();
  const savedInfo = new WeakMap();
  const prof = { on: false, stats, reset: () => stats.clear() };
  for (const name of OPS) {
    const f = be[name];
    const op = name.replace(/(Forward|Backward)$/, '');
    be[name] = async function (...args) {
      if (!prof.on) return f.apply(be, args);
      let flops = 0;
      if (name.endsWith('Backward')) {
        const info = savedInfo.get(args[0]);
        if (info) flops = info.base * (info.back ?? 1) + info.lora * 2;
      } else if (FLOPS[name]) {
        const c = FLOPS[name](...args);
        flops = c.base + c.lora;
      }
      const t0 = performance.now();
      const r = await f.apply(be, args);
      const dt = (performance.now() - t0) / 1000;
      if (r && typeof r === 'object' && r.saved && FLOPS[name]) savedInfo.set(r.saved, FLOPS[name](...args));
      const s = stats.get(op) ?? { calls: 0, seconds: 0, flops: 0 };
      s.calls += 1;
      s.seconds += dt;
      s.flops += flops;
      stats.set(op, s);
      return r;
    };
  }
  return prof;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

async function nativeRuns(model, prof, peak) {
  const adapter = createAdapter(model, { r: rank, alpha: 2 * rank, seed: 1 });
  for (const l of adapter.layers.values()) l.B.fill(0.01);
  const runs = [];
  for (const T of tokenList) {
    const ids = Int32Array.from({ length: T }, (_, i) => (i * 7919 + 13) % model.config.vocab_size);
    const mask = new Uint8Array(T).fill(1);
    const checkpointing = T >= ckFrom;
    const queryChunk = qChunk > 0 && T > qChunk ? qChunk : 0;
    const modes = values.modes ? values.modes.split(',') : values.bf16 && addon.info().cpuBf16 ? ['fp32', 'bf16'] : ['fp32'];
    if (modes.includes('bf16') && !addon.info().cpuBf16) throw new Error('bench/step: --modes bf16 needs a CPU with AVX512_BF16');
    // the step that measures the activation bytes is also the warm-up (weights packed, pages touched), in the first mode
    addon.setBf16(modes[0] === 'bf16');
    const { savedPeakBytes } = await model.lossAndGrads(ids, mask, { adapter, checkpointing, queryChunk, measureSavedBytes: true });
    // the modes take turns rep by rep, so a change in the machine's load reaches both alike
    const byMode = new Map(modes.map((m) => [m, { times: [], perRep: [], loss: 0 }]));
    for (let r = 0; r < reps; r++) {
      for (const mode of modes) {
        const m = byMode.get(mode);
        addon.setBf16(mode === 'bf16');
        prof.reset();
        prof.on = true;
        const t0 = performance.now();
        m.loss = (await model.lossAndGrads(ids, mask, { adapter, checkpointing, queryChunk })).loss;
        m.times.push((performance.now() - t0) / 1000);
        prof.on = false;
        m.perRep.push(new Map([...prof.stats].map(([k, v]) => [k, { ...v }])));
      }
    }
    addon.setBf16(false);
    for (const mode of modes) {
      const { times, perRep, loss } = byMode.get(mode);
      const sec = median(times);
      const rep = perRep[times.indexOf(sec)];
      let flops = 0;
      let opSeconds = 0;
      const ops = {};
      const families = {};
      for (const [op, s] of [...rep].sort((a, b) => b[1].seconds - a[1].seconds)) {
        flops += s.flops;
        opSeconds += s.seconds;
        ops[op] = { calls: s.calls, seconds: round(s.seconds, 4), share: round(s.seconds / sec, 3), gflop: round(s.flops / 1e9, 2), gflops: s.flops ? round(s.flops / 1e9 / s.seconds) : 0 };
        const fam = FAMILY[op] ?? 'other';
        const f = (families[fam] ??= { seconds: 0, gflop: 0 });
        f.seconds += s.seconds;
        f.gflop += s.flops / 1e9;
      }
      for (const f of Object.values(families)) {
        f.share = round(f.seconds / sec, 3);
        f.gflops = f.gflop ? round(f.gflop / f.seconds) : 0;
        f.seconds = round(f.seconds, 4);
        f.gflop = round(f.gflop, 2);
      }
      families['host (JS between ops)'] = { seconds: round(sec - opSeconds, 4), share: round((sec - opSeconds) / sec, 3) };
      const run = {
        tokens: T, mode, checkpointing, attention_chunk: queryChunk, seconds_median: round(sec, 4), seconds: times.map((t) => round(t, 4)), tokens_per_s: round(T / sec),
        loss, gflop_per_step: round(flops / 1e9, 1), gflops: round(flops / 1e9 / sec), fraction_of_fma_peak: round(flops / 1e9 / sec / peak, 3),
        activation_bytes: savedPeakBytes, activation_bytes_per_token: Math.round(savedPeakBytes / T), families, ops,
      };
      console.log(`native ${T} tokens ${mode}${checkpointing ? ' (checkpointing)' : ''}${queryChunk ? ` (attention chunks of ${queryChunk})` : ''}: ${run.tokens_per_s} tokens/s, ${run.gflops} GFLOP/s = ${run.fraction_of_fma_peak} of the FMA peak`);
      runs.push(run);
    }
  }
  return runs;
}

function peftRun(dir, T, dtype) {
  const py = spawnSync('bash', [join(here, '..', 'test', 'interop', 'python-env.sh')], { encoding: 'utf8' }).stdout.trim().split('\n').pop();
  if (!py || !existsSync(py)) return { error: 'the interop Python venv is missing (bash test/interop/python-env.sh)' };
  const r = spawnSync(py, [join(here, 'peft_step.py'), dir, String(T), String(reps), String(threads), String(rank), dtype], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) return { tokens: T, dtype, error: `python exited ${r.status ?? r.signal}: ${(r.stderr ?? '').trim().split('\n').slice(-3).join(' | ')}` };
  const res = JSON.parse(r.stdout.trim().split('\n').pop());
  console.log(`PEFT + transformers ${T} tokens, ${dtype}: ${round(res.tokens_per_s)} tokens/s (peak RSS ${round(res.peak_rss_mb)} MB)`);
  return res;
}

try {
  let dir = values.model;
  // seconds init-model took to write the checkpoint (created here only)
  let initSeconds = null;
  if (!dir) {
    dir = join(tmp, 'model');
    const sizes = values.preset === 'flash' ? { layers: Number(values.layers ?? 2), experts: Number(values.experts ?? 32) } : {};
    const t0 = performance.now();
    await initModel({ preset: values.preset, out: dir, seed: 0, ...sizes });
    initSeconds = Number(((performance.now() - t0) / 1000).toFixed(1));
  }
  // PEFT first, before this process loads anything: at flash width its float32 step peaks near
  // 23 GB on a 24 GB machine, so it runs while this process is still small
  let peftDir = values.peft;
  if (peftDir === 'make') {
    peftDir = join(tmp, 'bf16');
    const config = parseConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')), join(dir, 'config.json'));
    const zero = createAdapter({ config }, { r: rank, alpha: 2 * rank, seed: 1 });
    await saveAdapter(zero, join(tmp, 'zero-adapter'));
    await mergeAdapter({ base: dir, adapter: join(tmp, 'zero-adapter'), out: peftDir, dtype: 'bf16' });
  }
  const peftDtypes = values['peft-dtype'] === 'both' ? ['float32', 'bfloat16'] : [values['peft-dtype']];
  if (!peftDtypes.every((d) => d === 'float32' || d === 'bfloat16')) throw new Error(`bench/step: --peft-dtype must be float32, bfloat16 or both (got ${values['peft-dtype']})`);
  const peft = peftDir && peftDir !== 'none' ? peftDtypes.flatMap((dt) => values['peft-tokens'].split(',').map((t) => peftRun(peftDir, Number(t), dt))) : [];
  const peak0 = addon.fmaPeak(threads, 1.0);
  const model = await loadModel(dir, { backend: 'native', note: () => {} });
  const prof = profile(model.backend);
  const runs = await nativeRuns(model, prof, peak0);
  const config = model.config;
  model.dispose();
  const peak1 = addon.fmaPeak(threads, 1.0);
  const peak = Math.max(peak0, peak1);
  for (const r of runs) r.fraction_of_fma_peak = round(r.gflops / peak, 3);
  const ratios = {};
  for (const p of peft) {
    // float32 PEFT against native fp32 (and bf16); bfloat16 PEFT against native bf16
    const mode = p.dtype === 'bfloat16' ? 'bf16' : 'fp32';
    const nat = runs.find((r) => r.tokens === p.tokens && r.mode === mode);
    if (nat && p.tokens_per_s) ratios[mode === 'bf16' ? `native_bf16_over_peft_bf16_${p.tokens}` : `native_fp32_over_peft_${p.tokens}`] = round(nat.tokens_per_s / p.tokens_per_s, 2);
    const nb = runs.find((r) => r.tokens === p.tokens && r.mode === 'bf16');
    if (mode === 'fp32' && nb && p.tokens_per_s) ratios[`native_bf16_over_peft_${p.tokens}`] = round(nb.tokens_per_s / p.tokens_per_s, 2);
  }
  for (const T of tokenList) {
    const a = runs.find((r) => r.tokens === T && r.mode === 'fp32');
    const b = runs.find((r) => r.tokens === T && r.mode === 'bf16');
    if (a && b) ratios[`bf16_over_fp32_${T}`] = round(b.tokens_per_s / a.tokens_per_s, 2);
  }
  const result = {
    bench: 'step',
    preset: values.preset,
    model: values.model ?? `created (${values.preset}, seed 0)`,
    init_model_seconds: initSeconds,
    config: {
      hidden_size: config.hidden_size, layers: config.num_hidden_layers, heads: config.num_attention_heads, head_dim: config.head_dim,
      experts: config.n_routed_experts, top_k: config.num_experts_per_tok, moe_intermediate_size: config.moe_intermediate_size,
      compress_ratios: config.compress_ratios, vocab: config.vocab_size,
    },
    lora: { rank, alpha: 2 * rank, targets: 'default (attention projections, shared expert, every routed expert)' },
    backend: `native (${addon.info().isa}, ${threads} threads${addon.info().cpuAmx ? '; bf16 mode on AMX tiles' : addon.info().cpuBf16 ? '; bf16 mode on AVX512-BF16 dot products' : ''})`,
    fma_peak_gflops: { start: round(peak0), end: round(peak1), used: round(peak) },
    runs,
    peft,
    ratios,
    note: 'FLOPs: model FLOPs (frozen linears forward + dx backward, LoRA forward + 2× backward); recomputation (activation checkpointing, and the second forward of the attention query path under attention_chunk) not counted; the expert backward reads h1 and h3 kept by the forward. fraction_of_fma_peak: against the fp32 FMA peak measured at the start and end of this run (the larger), also for the bf16 mode. PEFT: transformers on the BF16 copy of the same checkpoint (dtype float32: loaded and computed in float32; bfloat16: loaded in bfloat16, LoRA weights in float32 as PEFT keeps them), same rank, targets and threads, same run.',
    // the bench process's peak resident set (getrusage): the weights as shipped, every mode's steps and the PEFT child excluded
    peak_rss_mb: round(process.resourceUsage().maxRSS / 1024),
    loadavg_start: load0,
    loadavg_end: loadavg(),
    cpus: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    node: process.version,
    date: new Date().toISOString(),
  };
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  console.log(JSON.stringify(ratios));
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
