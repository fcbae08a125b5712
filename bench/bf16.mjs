// The bf16 mode against fp32, kernel by kernel, at V4-Flash's width, fp32 FMA peak measured in
// the same run:
// - the sparse sink attention core, forward and backward, at the ratio-4 layer's shape (64 heads
//   × 512, a 128-row window plus the indexer's top 512 of the compressed entries, so up to 640
//   keys a query), the keys each query sees drawn as a training step draws them: the 128 window
//   rows before it and 512 distinct compressed entries among those already complete;
// - the routed experts' GEMMs on an FP4 weight (d 4096, I 2048): x·W1ᵀ (the forward) and dH·W2
//   (the backward's dX, the weight untransposed), at 96 rows an expert (512 tokens, 32 experts,
//   top-6) and 768 (4096 tokens).
// Usage (after `npm run build` and `npm run build:native`):
//   node bench/bf16.mjs [--tokens 4096] [--reps 3] [--out bench/results/bf16-flash.json]
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { rawWeight, tryLoadAddon } from '../dist/backend/native/addon.js';

const { values } = parseArgs({
  options: {
    tokens: { type: 'string', default: '4096' },
    reps: { type: 'string', default: '3' },
    out: { type: 'string', default: 'bench/results/bf16-flash.json' },
  },
});
const nat = tryLoadAddon();
if (!nat) {
  console.error('bench/bf16.mjs: the native addon is not built (npm run build:native)');
  process.exit(1);
}
if (!nat.info().cpuBf16) {
  console.error('bench/bf16.mjs: this CPU has no AVX512_BF16 (the bf16 mode needs it)');
  process.exit(1);
}

// V4-Flash's attention: 64 heads of 512, window 128, compress ratio 4, indexer top 512
const T = Number(values.tokens);
const [H, D, window, ratio, topk] = [64, 512, 128, 4, 512];
const C = Math.floor(T / ratio); // compressed entries
const M = T + C; // kv rows: the raw window rows, then the compressed entries
const K = window + topk;
const reps = Number(values.reps);

// mulberry32, so every run times the same numbers
let seed = 7;
const uniform = () => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const randn = (n, scale) => Float32Array.from({ length: n }, () => (uniform() + uniform() + uniform() - 1.5) * 2 * scale);
const q = randn(T * H * D, 1);
const kv = randn(M * D, 1);
const sink = randn(H, 1);
const dout = randn(T * H * D, 1);
// query t: the window rows max(0, t−127) .. t, and min(topk, complete) distinct compressed
// entries among the (t + 1) / ratio complete ones (−1 fills the rest)
const idx = new Int32Array(T * K).fill(-1);
let visible = 0;
for (let t = 0; t < T; t++) {
  let k = 0;
  for (let j = Math.max(0, t - window + 1); j <= t; j++) idx[t * K + k++] = j;
  const complete = Math.floor((t + 1) / ratio);
  const pick = Math.min(topk, complete);
  const chosen = new Set();
  while (chosen.size < pick) chosen.add(Math.floor(uniform() * complete));
  for (const c of chosen) idx[t * K + k++] = T + c;
  visible += k;
}
const scale = 1 / Math.sqrt(D);
// FLOPs as bench/step.mjs counts them: 4·keys·H·D forward, 8·keys·H·D backward
const fwdFlop = 4 * visible * H * D;
const bwdFlop = 8 * visible * H * D;

const o = new Float32Array(T * H * D);
const lse = new Float32Array(T * H);
const dq = new Float32Array(T * H * D);
const dkv = new Float32Array(M * D);
const dsink = new Float32Array(H);
const threads = nat.info().threads;
const result = {
  bench: 'bf16',
  shape: { tokens: T, heads: H, head_dim: D, kv_rows: M, keys_per_query_max: K, keys_per_query_mean: +(visible / T).toFixed(1) },
  threads,
  note: 'fp32 and bf16: the sparse sink attention core alone (native addon attentionForward / attentionBackward), V4-Flash ratio-4 layer; each mode timed reps times after one warm-up, fp32 and bf16 taking turns; seconds: best of the reps; FLOPs 4·keys·H·D forward and 8·keys·H·D backward (bench/step.mjs); FMA peak measured right before each mode. gemm: the same for one GEMM on an FP4 weight (random codes, scales 2^-7), 2·M·N·K FLOPs',
  fp32: {},
  bf16: {},
  loadavg_start: loadavg(),
};
const times = { fp32: { fwd: [], bwd: [] }, bf16: { fwd: [], bwd: [] } };
const peaks = { fp32: [], bf16: [] };
for (let rep = -1; rep < reps; rep++) {
  for (const mode of ['fp32', 'bf16']) {
    if (rep >= 0) peaks[mode].push(nat.fmaPeak(threads, 0.3));
    nat.setBf16(mode === 'bf16');
    let t0 = performance.now();
    await nat.attentionForward(o, lse, q, kv, idx, sink, T, H, D, M, K, scale);
    const fwd = (performance.now() - t0) / 1000;
    dq.fill(0);
    dkv.fill(0);
    dsink.fill(0);
    t0 = performance.now();
    await nat.attentionBackward(dq, dkv, dsink, dout, lse, q, kv, idx, sink, T, H, D, M, K, scale);
    const bwd = (performance.now() - t0) / 1000;
    nat.setBf16(false);
    if (rep >= 0) times[mode].fwd.push(fwd), times[mode].bwd.push(bwd);
  }
}
const round = (x, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
for (const mode of ['fp32', 'bf16']) {
  const f = Math.min(...times[mode].fwd);
  const b = Math.min(...times[mode].bwd);
  const peak = Math.max(...peaks[mode]);
  result[mode] = {
    forward_s: round(f), backward_s: round(b), forward_gflops: round(fwdFlop / f / 1e9, 1), backward_gflops: round(bwdFlop / b / 1e9, 1),
    fma_peak_gflops: round(peak, 1), forward_of_fp32_peak: round(fwdFlop / f / 1e9 / peak), backward_of_fp32_peak: round(bwdFlop / b / 1e9 / peak),
    forward_s_all: times[mode].fwd.map((x) => round(x)), backward_s_all: times[mode].bwd.map((x) => round(x)),
  };
}
result.bf16_over_fp32 = {
  forward: round(result.fp32.forward_s / result.bf16.forward_s, 2),
  backward: round(result.fp32.backward_s / result.bf16.backward_s, 2),
  step: round((result.fp32.forward_s + result.fp32.backward_s) / (result.bf16.forward_s + result.bf16.backward_s), 2),
};

// the routed experts' GEMMs on an FP4 weight, fp32 and bf16 taking turns
const fp4 = (rows, cols) => {
  const data = new Uint8Array((rows * cols) / 2);
  for (let i = 0; i < data.length; i++) data[i] = Math.floor(uniform() * 256);
  return rawWeight('fp4', data, new Uint8Array((rows * cols) / 32).fill(120), rows, cols);
};
const [d, I] = [4096, 2048];
const W1 = fp4(I, d); // w1 [I, d]: h = x W1ᵀ
const W2 = fp4(d, I); // w2 [d, I]: dX of the second projection's input = dY W2
result.gemm = {};
for (const rowsPerExpert of [96, 768]) {
  for (const [name, N, K, W, transB] of [['forward x·W1ᵀ', I, d, W1, true], ['backward dY·W2', I, d, W2, false]]) {
    const M = rowsPerExpert;
    const a = randn(M * K, 1);
    const y = new Float32Array(M * N);
    const best = { fp32: Infinity, bf16: Infinity };
    for (let rep = -1; rep < reps * 3; rep++) {
      for (const mode of ['fp32', 'bf16']) {
        nat.setBf16(mode === 'bf16');
        const t0 = performance.now();
        await nat.gemm(M, N, K, 1, a, K, 1, W, transB, 0, y, N);
        const t = (performance.now() - t0) / 1000;
        nat.setBf16(false);
        if (rep >= 0) best[mode] = Math.min(best[mode], t);
      }
    }
    const flop = 2 * M * N * K;
    result.gemm[`${name}, ${M} rows`] = {
      M, N, K, transB, fp32_s: round(best.fp32, 5), bf16_s: round(best.bf16, 5),
      fp32_gflops: round(flop / best.fp32 / 1e9, 1), bf16_gflops: round(flop / best.bf16 / 1e9, 1), bf16_over_fp32: round(best.fp32 / best.bf16, 2),
    };
    console.log(`FP4 GEMM ${name}, ${M} × ${N} × ${K}: fp32 ${result.gemm[`${name}, ${M} rows`].fp32_gflops} GFLOP/s, bf16 ${result.gemm[`${name}, ${M} rows`].bf16_gflops}: ${result.gemm[`${name}, ${M} rows`].bf16_over_fp32}x`);
  }
}
result.loadavg_end = loadavg();
result.cpus = cpus().length;
result.cpu = cpus()[0]?.model ?? 'unknown';
result.node = process.version;
result.date = new Date().toISOString();
console.log(`attention ${T} tokens (${result.shape.keys_per_query_mean} keys a query): fp32 forward ${result.fp32.forward_s} s (${result.fp32.forward_gflops} GFLOP/s), backward ${result.fp32.backward_s} s (${result.fp32.backward_gflops}); bf16 forward ${result.bf16.forward_s} s (${result.bf16.forward_gflops}), backward ${result.bf16.backward_s} s (${result.bf16.backward_gflops}); bf16 over fp32: ${result.bf16_over_fp32.forward}x / ${result.bf16_over_fp32.backward}x`);
mkdirSync(dirname(values.out), { recursive: true });
writeFileSync(values.out, `${JSON.stringify(result, null, 2)}\n`);
