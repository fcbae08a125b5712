// Export at flash width: `v4tune merge` of a rank-16 adapter (default targets, non-zero B) into a
// multi-GB flash checkpoint (FP8/FP4 requantised, and BF16), in a child process with its peak RSS
// (getrusage), against two plain copies of the same shard bytes taking turns with it: read and
// write through a 16 MiB buffer, and `cp` (copy_file_range, file to file in the kernel, as the
// merge copies the tensors it leaves untouched); medians of --reps turns. The merge writes its
// shards with direct I/O, as users run it, and once a turn through the page cache (--no-direct-io).
// Then native GPTQ on V4-Flash's
// expert shapes (w1/w3 [2048, 4096], w2 [4096, 2048], Hessian from 2048 tokens): the time per
// expert, the TypeScript GPTQ on a slice for the speed-up, and the projection to a full V4-Flash.
// Usage (after `npm run build` and `npm run build:native`):
//   node bench/merge.mjs [--model DIR] [--layers 2 --experts 32] [--reps 3] [--settle 5] [--cold] [--out bench/results/merge-flash.json] [--skip-gptq]
// --cold (root: drops the page cache) adds turns of cp and the merge reading the base from disk.
// --skip-gptq reruns only the merges and keeps the (dated) gptq section of the --out file;
// --skip-merge reruns only GPTQ and keeps the (dated) merge and quantize sections.
// --quantize also times `v4tune quantize --method rtn` of the whole checkpoint to gptq (INT4) and to a Q4_K GGUF, and
// one expert linear's round to nearest in TypeScript against the addon;
// --quantize-gptq (with --model) `v4tune quantize --format gptq --method gptq` on --calibration-rows rows of 512 tokens.
// Without --model the flash preset is created in a temp folder first (minutes).
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createAdapter, saveAdapter } from '../dist/index.js';
import { tryLoadAddon } from '../dist/backend/native/addon.js';
import { gptqFactorNative, gptqInt4Native, hessianAccumulateNative, int4RtnNative, outputErrorSqNative, packGptqNative, q4kRtnNative } from '../dist/backend/native/gptq.js';
import { gptqRows, int4Quantizer } from '../dist/export/gptq.js';
import { packGptq } from '../dist/export/gptq-export.js';
import { dequantizeInt4, quantizeRtn, rowErrorSums } from '../dist/export/int4.js';
import { dequantizeQ4_K, quantizeQ4_K } from '../dist/export/q4k.js';
import { parseConfig } from '../dist/model/config.js';
import { initModel } from '../dist/model/init.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    layers: { type: 'string', default: '2' },
    experts: { type: 'string', default: '32' },
    out: { type: 'string', default: 'bench/results/merge-flash.json' },
    'gptq-tokens': { type: 'string', default: '2048' },
    // keep the gptq section of the existing --out file (measured before, dated) and rerun only the merges
    'skip-gptq': { type: 'boolean', default: false },
    // keep the merge (and quantize) sections of the existing --out file and rerun only GPTQ
    'skip-merge': { type: 'boolean', default: false },
    // also time `v4tune quantize --format gptq --method rtn` of the whole checkpoint (minutes; else an earlier quantize section of --out is kept)
    quantize: { type: 'boolean', default: false },
    // also time `v4tune prepare` + `v4tune quantize --format gptq --method gptq` (calibration on
    // --calibration-rows rows of 512 tokens) of the --model checkpoint (minutes; else an earlier
    // quantize_gptq section of --out is kept)
    'quantize-gptq': { type: 'boolean', default: false },
    'calibration-rows': { type: 'string', default: '8' },
    reps: { type: 'string', default: '3' },
    // seconds each timed run waits after the sync before it starts (the VM's balloon hands the
    // pages the last run freed back to the host meanwhile, as on a machine that was idle)
    settle: { type: 'string', default: '5' },
    // also time cp and the merge (direct I/O and through the page cache) from a cold page cache:
    // each run after `sync` and dropping the caches (writes /proc/sys/vm/drop_caches: root only)
    cold: { type: 'boolean', default: false },
  },
});
const tmp = mkdtempSync(join(tmpdir(), 'v4tune-merge-'));
// -r hook of the timed child processes: their peak RSS (getrusage) into $V4TUNE_RSS_OUT
writeFileSync(join(tmp, 'rss.cjs'), "process.on('exit', () => { if (require('node:worker_threads').isMainThread) require('node:fs').writeFileSync(process.env.V4TUNE_RSS_OUT, String(process.resourceUsage().maxRSS)); });\n");
const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const median = (xs) => { const v = [...xs].sort((p, q) => p - q); return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2; };
const mbs = (bytes, sec) => round(bytes / 1e6 / sec);

/** the shard files of a checkpoint folder and their total bytes */
function shards(dir) {
  const files = readdirSync(dir).filter((f) => f.endsWith('.safetensors')).map((f) => join(dir, f));
  return { files, bytes: files.reduce((s, f) => s + statSync(f).size, 0) };
}

/** copy every shard through a 16 MiB buffer; seconds (the copy removed after, unless remove is false) */
function plainCopy(files, outDir, remove = true) {
  mkdirSync(outDir, { recursive: true });
  const buf = Buffer.allocUnsafe(16 << 20);
  const t0 = performance.now();
  for (const f of files) {
    const src = openSync(f, 'r');
    const dst = openSync(join(outDir, f.split('/').pop()), 'w');
    for (;;) {
      const n = readSync(src, buf, 0, buf.length, null);
      if (n === 0) break;
      let w = 0;
      while (w < n) w += writeSync(dst, buf, w, n - w);
    }
    closeSync(src);
    closeSync(dst);
  }
  const s = (performance.now() - t0) / 1000;
  if (remove) rmSync(outDir, { recursive: true, force: true });
  return s;
}

/** `cp` (coreutils: copy_file_range, file to file in the kernel, as the merge copies untouched tensors); seconds */
function kernelCopy(files, outDir) {
  mkdirSync(outDir, { recursive: true });
  const t0 = performance.now();
  const r = spawnSync('cp', ['--reflink=never', ...files, outDir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cp failed (${r.status}): ${r.stderr}`);
  return (performance.now() - t0) / 1000;
}

/** read every shard through a 16 MiB buffer (into the page cache) */
function warmRead(files) {
  const buf = Buffer.allocUnsafe(16 << 20);
  for (const f of files) {
    const src = openSync(f, 'r');
    while (readSync(src, buf, 0, buf.length, null) > 0);
    closeSync(src);
  }
}

/**
 * `v4tune <args>` in a child process, run as users run it: the bin file as a command, so its #!
 * line sets glibc's malloc.hugetlb tunable (or, with smallPages, `node bin/v4tune.js`, without it);
 * the rss hook preloaded through NODE_OPTIONS
 */
function cli(args, { smallPages = false } = {}) {
  const bin = join(root, 'bin', 'v4tune.js');
  const env = { ...process.env, V4TUNE_RSS_OUT: join(tmp, 'rss'), NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} -r ${join(tmp, 'rss.cjs')}`.trim() };
  return smallPages
    ? spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...env, GLIBC_TUNABLES: '' }, maxBuffer: 1 << 26 })
    : spawnSync(bin, args, { encoding: 'utf8', env, maxBuffer: 1 << 26 });
}

/** `v4tune merge` in a child process: seconds and peak RSS (MB) */
function cliMerge(model, adapter, out, dtype, remove = true, smallPages = false, directIo = true) {
  const t0 = performance.now();
  const r = cli(['--json', 'merge', '--model', model, '--adapter', adapter, '--out', out, '--dtype', dtype, ...(directIo ? [] : ['--no-direct-io'])], { smallPages });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`merge failed (${r.status}): ${r.stderr}`);
  const peakMB = Number(readFileSync(join(tmp, 'rss'), 'utf8')) / 1024;
  const written = shards(out).bytes;
  const summary = JSON.parse(r.stdout);
  // a merge that ran without the addon (e.g. native/build being rebuilt while it started) is not this bench's figure
  if (summary.nativeTensors !== summary.merged + summary.converted) {
    throw new Error(`bench/merge: the ${dtype} merge produced ${summary.nativeTensors} of ${summary.merged + summary.converted} tensors natively (addon not loaded in the merge process?); rerun`);
  }
  if (remove) rmSync(out, { recursive: true, force: true });
  return { seconds, peakMB, written, summary };
}

/**
 * `v4tune quantize --format <format> --method rtn` (gptq: INT4 group 32; gguf-q4_k: llama.cpp's
 * Q4_K) of the whole checkpoint in a child process: seconds, peak RSS (MB), bytes written
 */
function cliQuantize(model, out, format) {
  const recipe = join(tmp, 'quantize.yaml');
  writeFileSync(recipe, `name: bench-quantize\nmodel:\n  path: ${model}\ndata:\n  sources:\n    - path: ${join(root, 'datasets')}/*/*.txt\noutput: ${join(tmp, 'runs')}\nexport:\n  quantize: [gptq]\n  method: rtn\n  group_size: 32\n`);
  const t0 = performance.now();
  const r = cli(['quantize', recipe, '--model', model, '--out', out, '--format', format, '--method', 'rtn']);
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`quantize failed (${r.status}): ${r.stderr}`);
  const peakMB = Number(readFileSync(join(tmp, 'rss'), 'utf8')) / 1024;
  const written = format === 'gptq' ? shards(join(out, 'gptq')).bytes : readdirSync(out).filter((f) => f.endsWith('.gguf')).reduce((a, f) => a + statSync(join(out, f)).size, 0);
  rmSync(out, { recursive: true, force: true });
  return { seconds, peakMB, written };
}

/**
 * Round to nearest of one routed expert's w1 [2048, 4096] (FP4's range): the TypeScript of
 * int4.ts / q4k.ts (grid, error sums, packing) against the addon's, in the same run; the outputs
 * compared byte for byte
 */
async function quantPerLinear() {
  const out = 2048;
  const n = 4096;
  const w = randn(out * n, 11, 0.02);
  const time = async (f) => {
    const t0 = performance.now();
    const r = await f();
    return { r, s: (performance.now() - t0) / 1000 };
  };
  const same = (a, b) => a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
  await int4RtnNative(w, out, n, 32); // warm the pool and the pages
  const tsInt4 = await time(() => {
    const x = quantizeRtn(w, out, n, 32);
    rowErrorSums(w, dequantizeInt4(x), n);
    return packGptq(x);
  });
  const natInt4 = await time(async () => packGptqNative(await int4RtnNative(w, out, n, 32)));
  const tsQ4k = await time(() => {
    const b = quantizeQ4_K(w);
    rowErrorSums(w, dequantizeQ4_K(b, w.length), n);
    return b;
  });
  const natQ4k = await time(() => q4kRtnNative(w, out, n));
  if (!same(tsInt4.r.qweight, natInt4.r.qweight) || !same(tsQ4k.r, natQ4k.r.bytes)) throw new Error('bench/merge: the native round to nearest differs from the TypeScript one');
  const row = (ts, nat) => ({ typescript_s: round(ts.s, 3), native_s: round(nat.s, 4), speedup: round(ts.s / nat.s), native_ns_per_weight: round((nat.s * 1e9) / (out * n), 2) });
  return {
    shape: [out, n], threads: cpus().length,
    int4_group32: row(tsInt4, natInt4), q4_k: row(tsQ4k, natQ4k),
    note: 'one linear, 2 threads for the addon, one for the TypeScript: the grid and codes, the per-row error sums the export reports and (INT4) the GPTQ packing; the same bytes from both',
  };
}

/**
 * `v4tune prepare` of the bench's corpora (512-token rows, the checkpoint's tokenizer), then
 * `v4tune quantize --format gptq --method gptq` of the whole checkpoint on `rows` calibration rows,
 * in a child process: seconds, peak RSS (MB) and the calibration summary
 */
function cliQuantizeGptq(model, out, rows) {
  const recipe = join(tmp, 'quantize-gptq.yaml');
  writeFileSync(recipe, `name: bench-quantize-gptq\nmodel:\n  path: ${model}\ndata:\n  sources:\n    - path: ${join(root, 'datasets')}/*/*.txt\n  seq_len: 512\n  eval_fraction: 0\noutput: ${join(tmp, 'runs-gptq')}\nexport:\n  quantize: [gptq]\n  method: gptq\n  group_size: 32\n  calibration_rows: ${rows}\n`);
  const p = cli(['prepare', recipe]);
  if (p.status !== 0) throw new Error(`prepare failed (${p.status}): ${p.stderr}`);
  const t0 = performance.now();
  const r = cli(['quantize', recipe, '--model', model, '--out', out, '--format', 'gptq', '--method', 'gptq']);
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`quantize failed (${r.status}): ${r.stderr}`);
  const peakMB = Number(readFileSync(join(tmp, 'rss'), 'utf8')) / 1024;
  const summary = JSON.parse(readFileSync(join(out, 'gptq', 'v4tune-quantize.json'), 'utf8'));
  const written = shards(join(out, 'gptq')).bytes;
  rmSync(out, { recursive: true, force: true });
  return { seconds, peakMB, written, summary, log: r.stdout };
}

/** normal-ish values (sum of 4 uniforms), seeded */
function randn(n, seed, scale) {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let k = 0; k < 4; k++) {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      s += ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
    }
    out[i] = s * scale * 1.732;
  }
  return out;
}

/**
 * native GPTQ of `users` linears [out, n] reading one input (an expert's w1 and w3: one Hessian
 * and factor, as the export shares them) with a Hessian from `tokens` correlated inputs:
 * seconds per phase, the column loop and the output errors summed over the users
 */
async function gptqLinear(out, n, tokens, seed, users = 1) {
  const f = 16;
  const z = randn(tokens * f, seed, 1);
  const mix = randn(f * n, seed + 1, 1);
  const x = randn(tokens * n, seed + 2, 0.3);
  for (let t = 0; t < tokens; t++) for (let k = 0; k < f; k++) {
    const zt = z[t * f + k];
    for (let i = 0; i < n; i++) x[t * n + i] += zt * mix[k * n + i];
  }
  const H = new Float64Array(n * n);
  let t0 = performance.now();
  hessianAccumulateNative(H, x, 0, tokens, n, n);
  const hessian = (performance.now() - t0) / 1000;
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) H[j * n + i] = H[i * n + j] *= 2 / tokens;
  // the factor twice: the first call also faults in the addon's kept float64 scratch (once per
  // process and shape); the second is what each of a quantize's many factorisations costs
  t0 = performance.now();
  await gptqFactorNative(H, n, 0.01);
  const factorFirst = (performance.now() - t0) / 1000;
  t0 = performance.now();
  const factor = await gptqFactorNative(H, n, 0.01);
  const factorS = (performance.now() - t0) / 1000;
  let loop = 0;
  let outputError = 0;
  let err = 0;
  let ref = 0;
  let w;
  for (let u = 0; u < users; u++) {
    w = randn(out * n, seed + 3 + u, 1 / Math.sqrt(n));
    const qz = int4Quantizer(out, n, 128);
    t0 = performance.now();
    const Q = await gptqInt4Native(w, n, 0, out, factor, qz.result);
    loop += (performance.now() - t0) / 1000;
    const E = new Float64Array(out * n);
    for (let i = 0; i < E.length; i++) E[i] = w[i] - Q[i];
    t0 = performance.now();
    err += await outputErrorSqNative(E, out, n, H);
    outputError += (performance.now() - t0) / 1000;
    ref += await outputErrorSqNative(Float64Array.from(w), out, n, H);
  }
  return {
    shape: [out, n], tokens, linears: users, hessian_s: round(hessian, 3), factor_first_s: round(factorFirst, 3), factor_s: round(factorS, 3), column_loop_s: round(loop, 3), output_error_s: round(outputError, 3),
    rel_output_error: round(Math.sqrt(err / ref), 4), total_s: round(hessian + factorS + loop + 3 * outputError, 2), H, w, factor,
  };
}

/** native GPTQ on V4-Flash's expert shapes, the TypeScript GPTQ on a slice, the full-model projection */
async function benchGptq() {
  // GPTQ on the expert shapes of V4-Flash
  const tokens = Number(values['gptq-tokens']);
  const d = 4096;
  const I = 2048;
  const w1 = await gptqLinear(I, d, tokens, 11, 2);
  const w2 = await gptqLinear(d, I, tokens, 21);
  const perExpert = w1.total_s + w2.total_s;
  // the TypeScript reference on a slice (128 rows of w2's shape) for the speed-up on the same rows
  const sliceRows = 128;
  let t0 = performance.now();
  gptqRows(w2.w, I, 0, sliceRows, w2.H, int4Quantizer(d, I, 128), { damp: 0.01 });
  const tsSlice = (performance.now() - t0) / 1000;
  t0 = performance.now();
  await gptqInt4Native(w2.w, I, 0, sliceRows, await gptqFactorNative(w2.H, I, 0.01), int4Quantizer(d, I, 128).result);
  const natSlice = (performance.now() - t0) / 1000;
  const flashExperts = 43 * 256;
  const gptq = {
    threads: tryLoadAddon().info().threads,
    w1_w3: { ...w1, H: undefined, w: undefined, factor: undefined },
    w2: { ...w2, H: undefined, w: undefined, factor: undefined },
    per_expert_s: round(perExpert, 2),
    note_per_expert: 'w1 and w3 share one Hessian accumulation and one factor (the Cholesky factor of H + damp in reversed index order and its triangular inverse), as the export shares them; then each its column loop and the 3 output-error traces the export reports (GPTQ, round to nearest, the weight itself); w2 the same at its shape on its own input. The TypeScript slice runs the whole gptqRows (factor included) against the native factor plus column loop.',
    slice_rows: sliceRows,
    typescript_slice_s: round(tsSlice, 2),
    native_slice_s: round(natSlice, 3),
    native_speedup_on_slice: round(tsSlice / natSlice, 1),
    v4_flash_routed_experts: flashExperts,
    v4_flash_experts_hours: round((perExpert * flashExperts) / 3600, 1),
  };
  console.log(`GPTQ per expert ${gptq.per_expert_s} s (${gptq.threads} threads); V4-Flash's ${flashExperts} routed experts: ${gptq.v4_flash_experts_hours} h; TS/native on a ${sliceRows}-row slice: ${gptq.native_speedup_on_slice}×`);
  return gptq;
}

const loadavgStart = loadavg();
try {
  const addon = tryLoadAddon();
  if (!addon) throw new Error('bench/merge: the native addon is not built (npm run build:native)');
  const carried = (section) => {
    const prev = JSON.parse(readFileSync(values.out, 'utf8'));
    if (!prev[section]) throw new Error(`bench/merge: --skip-${section === 'gptq' ? 'gptq' : 'merge'} but ${values.out} holds no ${section} section`);
    return { ...prev[section], measured: prev[section].measured ?? prev.date, note_measured: `carried over from an earlier run of this bench (--skip-${section === 'gptq' ? 'gptq' : 'merge'}); not re-measured with the other figures` };
  };
  let merge;
  let model = values.model;
  let copyCache = 0;
  let base;
  if (values['skip-merge'] && values.quantize) throw new Error('bench/merge: --quantize needs the merge run (not --skip-merge)');
  if (values['skip-merge']) {
    merge = carried('merge');
  } else {
    if (!model) {
      model = join(tmp, 'flash');
      await initModel({ preset: 'flash', layers: Number(values.layers), experts: Number(values.experts), out: model, seed: 0 });
    }
    const config = parseConfig(JSON.parse(readFileSync(join(model, 'config.json'), 'utf8')), 'config.json');
    base = shards(model);
    const adapter = createAdapter({ config }, { r: 16, alpha: 32, seed: 1 });
    for (const l of adapter.layers.values()) l.B.fill(0.001);
    await saveAdapter(adapter, join(tmp, 'adapter'));
    console.log(`merge: ${model}, ${(base.bytes / 1e9).toFixed(2)} GB in ${base.files.length} shards, ${adapter.layers.size} adapted modules`);

    // read the shards once, untimed, so no run pays cold reads the others skip; then copy and merge
    // take turns, `reps` times, each starting with nothing dirty in the page cache (sync, untimed)
    // and timed twice: to the end of the process (the writes in the page cache) and to the end of
    // the `sync` after it (the bytes on disk)
    warmRead(base.files);
    const reps = Number(values.reps);
    const runs = { copy: [], cp: [], cp_reused_pages: [], original: [], original_paged: [], original_small_pages: [], bf16: [] };
    const settle = Number(values.settle);
    // one timed run into tmp/<dir>: after a sync, (settle) a pause, (cold) the page cache dropped;
    // timed to its end and to the end of a sync after it; its output removed, its times kept in list
    const turn = (list, dir, f, { settle: wait = true, cold = false } = {}) => {
      spawnSync('sync');
      if (cold) writeFileSync('/proc/sys/vm/drop_caches', '3');
      if (wait && settle > 0) spawnSync('sleep', [String(settle)]);
      const t0 = performance.now();
      const r = f(join(tmp, dir));
      const t1 = performance.now();
      spawnSync('sync');
      const t = { r, cache: (t1 - t0) / 1000, disk: (performance.now() - t0) / 1000 };
      rmSync(join(tmp, dir), { recursive: true, force: true });
      list.push(t);
      return t;
    };
    const mergeInto = (dtype, smallPages = false, directIo = true) => (out) => cliMerge(model, join(tmp, 'adapter'), out, dtype, false, smallPages, directIo);
    const cpAll = (out) => kernelCopy(base.files, out);
    for (let rep = 0; rep < reps; rep++) {
      const c = turn(runs.copy, 'copy', (out) => plainCopy(base.files, out, false));
      const k = turn(runs.cp, 'cp', cpAll);
      // cp again at once, into the page-cache pages the last one freed (not yet back with the host)
      const kr = turn(runs.cp_reused_pages, 'cp', cpAll, { settle: false });
      const m = turn(runs.original, 'merged', mergeInto('original'));
      const mp = turn(runs.original_paged, 'merged', mergeInto('original', false, false));
      const m4k = turn(runs.original_small_pages, 'merged', mergeInto('original', true));
      if (rep === 0) turn(runs.bf16, 'merged-bf16', mergeInto('bf16'));
      console.log(`rep ${rep + 1}/${reps}: copy ${round(c.cache, 2)} s (${round(c.disk, 2)} s to disk), cp ${round(k.cache, 2)} s (${round(k.disk, 2)} s), cp into freed pages ${round(kr.cache, 2)} s (${round(kr.disk, 2)} s), merge ${round(m.cache, 2)} s (${round(m.disk, 2)} s), through the page cache ${round(mp.cache, 2)} s (${round(mp.disk, 2)} s), without huge pages ${round(m4k.cache, 2)} s`);
    }
    // cold turns: nothing of the base in the page cache, as a checkpoint larger than memory is read
    const cold = { cp: [], original: [], original_paged: [] };
    if (values.cold) {
      for (let rep = 0; rep < reps; rep++) {
        const k = turn(cold.cp, 'cp', cpAll, { cold: true });
        const m = turn(cold.original, 'merged', mergeInto('original'), { cold: true });
        const mp = turn(cold.original_paged, 'merged', mergeInto('original', false, false), { cold: true });
        console.log(`cold rep ${rep + 1}/${reps}: cp ${round(k.cache, 2)} s (${round(k.disk, 2)} s to disk), merge ${round(m.cache, 2)} s (${round(m.disk, 2)} s; ${m.r.summary.shardsReadDirect} shards read direct), through the page cache ${round(mp.cache, 2)} s (${round(mp.disk, 2)} s)`);
      }
      warmRead(base.files);
    }
    copyCache = median(runs.copy.map((x) => x.cache));
    const copyDisk = median(runs.copy.map((x) => x.disk));
    const cpCache = median(runs.cp.map((x) => x.cache));
    const cpDisk = median(runs.cp.map((x) => x.disk));
    const row = (list) => {
      const cache = median(list.map((x) => x.cache));
      const disk = median(list.map((x) => x.disk));
      const m = list[0].r;
      return {
        seconds: list.map((x) => round(x.cache, 2)), seconds_to_disk: list.map((x) => round(x.disk, 2)),
        mb_per_s: mbs(base.bytes, cache), of_copy: round(copyCache / cache, 3),
        mb_per_s_to_disk: mbs(base.bytes, disk), of_copy_to_disk: round(copyDisk / disk, 3),
        // each rep against the copy run just before it
        of_copy_per_rep: list.map((x, i) => round(runs.copy[i].cache / x.cache, 3)),
        // against `cp` (copy_file_range)
        of_cp: round(cpCache / cache, 3), of_cp_to_disk: round(cpDisk / disk, 3),
        of_cp_per_rep: list.map((x, i) => round(runs.cp[i].cache / x.cache, 3)),
        // against `cp` run at once after the last cp's output was removed (its pages reused)
        of_cp_reused_pages: round(median(runs.cp_reused_pages.map((x) => x.cache)) / cache, 3),
        of_cp_reused_pages_to_disk: round(median(runs.cp_reused_pages.map((x) => x.disk)) / disk, 3),
        direct_io: m.summary.directIo,
        peak_rss_mb: round(Math.max(...list.map((x) => x.r.peakMB))), bytes_written: m.written,
        bytes_streamed: m.summary.bytesStreamed, peak_held_mb: round(m.summary.peakHeldBytes / 2 ** 20), largest_read_mb: round(m.summary.largestReadBytes / 2 ** 20),
      };
    };
    merge = {
      base_bytes: base.bytes,
      reps,
      copy: { seconds: runs.copy.map((x) => round(x.cache, 2)), seconds_to_disk: runs.copy.map((x) => round(x.disk, 2)), mb_per_s: mbs(base.bytes, copyCache), mb_per_s_to_disk: mbs(base.bytes, copyDisk) },
      cp: { seconds: runs.cp.map((x) => round(x.cache, 2)), seconds_to_disk: runs.cp.map((x) => round(x.disk, 2)), mb_per_s: mbs(base.bytes, cpCache), mb_per_s_to_disk: mbs(base.bytes, cpDisk) },
      cp_reused_pages: {
        seconds: runs.cp_reused_pages.map((x) => round(x.cache, 2)), seconds_to_disk: runs.cp_reused_pages.map((x) => round(x.disk, 2)),
        mb_per_s: mbs(base.bytes, median(runs.cp_reused_pages.map((x) => x.cache))), mb_per_s_to_disk: mbs(base.bytes, median(runs.cp_reused_pages.map((x) => x.disk))),
      },
      settle_s: settle,
      original: row(runs.original),
      original_paged: row(runs.original_paged),
      cold: values.cold ? (() => {
        const cpC = median(cold.cp.map((x) => x.cache));
        const cpD = median(cold.cp.map((x) => x.disk));
        const coldRow = (list) => ({
          seconds: list.map((x) => round(x.cache, 2)), seconds_to_disk: list.map((x) => round(x.disk, 2)),
          mb_per_s: mbs(base.bytes, median(list.map((x) => x.cache))),
          of_cp: round(cpC / median(list.map((x) => x.cache)), 3), of_cp_to_disk: round(cpD / median(list.map((x) => x.disk)), 3),
          shards_read_direct: list[0].r.summary.shardsReadDirect, direct_io: list[0].r.summary.directIo, peak_rss_mb: round(Math.max(...list.map((x) => x.r.peakMB))),
        });
        return {
          cp: { seconds: cold.cp.map((x) => round(x.cache, 2)), seconds_to_disk: cold.cp.map((x) => round(x.disk, 2)), mb_per_s: mbs(base.bytes, cpC), mb_per_s_to_disk: mbs(base.bytes, cpD) },
          original: coldRow(cold.original),
          original_paged: coldRow(cold.original_paged),
          note: 'each run after sync, dropping the page cache and --settle seconds: the base is read from disk, as one larger than memory is; original reads the shards with direct I/O (shards_read_direct) and writes with it, original_paged (--no-direct-io) does neither',
        };
      })() : undefined,
      original_small_pages: row(runs.original_small_pages),
      bf16: row(runs.bf16),
    };
    console.log(`copy ${merge.copy.mb_per_s} MB/s (${merge.copy.mb_per_s_to_disk} to disk), cp ${merge.cp.mb_per_s} MB/s (${merge.cp.mb_per_s_to_disk}); merge original ${merge.original.mb_per_s} MB/s = ${merge.original.of_copy} of copy (${merge.original.of_copy_to_disk} to disk), ${merge.original.of_cp} of cp (${merge.original.of_cp_to_disk}), ${merge.original.of_cp_reused_pages} of cp into freed pages (${merge.original.of_cp_reused_pages_to_disk}); through the page cache ${merge.original_paged.of_cp} of cp; peak RSS ${merge.original.peak_rss_mb} MB; bf16 ${merge.bf16.mb_per_s} MB/s (${merge.bf16.of_copy}, ${merge.bf16.peak_rss_mb} MB)`);
  }
  let quantize;
  if (values.quantize) {
    quantize = { per_linear: await quantPerLinear() };
    for (const format of ['gptq', 'gguf-q4_k']) {
      spawnSync('sync');
      const q = cliQuantize(model, join(tmp, 'quantized'), format);
      quantize[format === 'gptq' ? 'gptq_rtn' : 'gguf_q4_k_rtn'] = {
        format: format === 'gptq' ? 'gptq (INT4, group 32)' : 'gguf Q4_K (and the MTP file)', method: 'rtn', seconds: round(q.seconds, 1), mb_per_s: mbs(base.bytes, q.seconds),
        of_copy: round(copyCache / q.seconds, 3), peak_rss_mb: round(q.peakMB), bytes_written: q.written,
      };
    }
    console.log(`quantize: ${JSON.stringify(quantize)}`);
  } else if (existsSync(values.out)) {
    const prev = JSON.parse(readFileSync(values.out, 'utf8'));
    if (prev.quantize) quantize = { ...prev.quantize, measured: prev.quantize.measured ?? prev.date, note_measured: 'carried over from an earlier run of this bench (no --quantize)' };
  }

  let quantizeGptq;
  if (values['quantize-gptq']) {
    if (!model) throw new Error('bench/merge: --quantize-gptq needs --model (or the merge run that makes one)');
    spawnSync('sync');
    const rows = Number(values['calibration-rows']);
    const q = cliQuantizeGptq(model, join(tmp, 'quantized-gptq'), rows);
    const c = q.summary.calibration;
    quantizeGptq = {
      format: 'gptq (INT4, group 32)', method: 'gptq', calibration_rows: rows, tokens_per_row: 512, seconds: round(q.seconds, 1),
      peak_rss_mb: round(q.peakMB), bytes_written: q.written, calibration: c,
      note: 'prepare (untimed), then the whole quantize process: the calibration passes over the rows (one per window of Hessians, 4 GiB each, each running the blocks its linears lie in with one block\'s weights loaded: calibration.blockRuns), every quantised linear\'s GPTQ on the native addon and its three output-error traces, and the writing of the GPTQ folder.',
    };
    console.log(`quantize gptq gptq: ${quantizeGptq.seconds} s, peak RSS ${quantizeGptq.peak_rss_mb} MB, calibration ${JSON.stringify(c)}`);
  } else if (existsSync(values.out)) {
    const prev = JSON.parse(readFileSync(values.out, 'utf8'));
    if (prev.quantize_gptq) quantizeGptq = { ...prev.quantize_gptq, measured: prev.quantize_gptq.measured ?? prev.date, note_measured: 'carried over from an earlier run of this bench (no --quantize-gptq)' };
  }

  let gptq;
  if (values['skip-gptq']) {
    gptq = carried('gptq');
  } else {
    gptq = await benchGptq();
  }

  const result = {
    bench: 'merge',
    model: values.model ?? `created (flash, ${values.layers} layers, ${values.experts} experts, seed 0)`,
    merge,
    quantize,
    quantize_gptq: quantizeGptq,
    gptq,
    note: 'MB/s: base checkpoint bytes (weights + scales) over wall seconds of the whole `v4tune merge` process (start-up included); copy: the same shard files read and written through a 16 MiB buffer to the same disk. After one untimed read of the shards (so every run reads from the page cache), copy and merge take turns reps times; each run starts after a sync (nothing dirty left by the run before, which otherwise throttles its writes) and --settle seconds (settle_s: the VM\'s balloon reports the pages the last run freed back to the host meanwhile, so each run maps fresh pages as on an idle machine) and is timed to its end (seconds: its writes in the page cache) and to the end of a sync after it (seconds_to_disk: the bytes on disk). mb_per_s and of_copy from the medians; of_copy_per_rep against the copy run just before each merge. The merges run bin/v4tune.js as a command, as npx does (its #! line sets glibc\'s malloc.hugetlb tunable: huge pages for large buffers); original: the merge as users run it (its shards written with direct I/O, past the page cache, where the file system takes it: direct_io); original_paged: the same with --no-direct-io (through the page cache); cp_reused_pages: cp again at once after the last cp\'s output was removed, into the page-cache pages it freed (the fastest a copy runs on this VM); original_small_pages: the same merge started as `node bin/v4tune.js`, without it, once a rep right after. Peak RSS: getrusage of the merge process. bytes_streamed: the copied tensors, streamed shard to shard; peak_held_mb: the most buffer bytes of tensors merged ahead of the writer at once.',
    loadavg_start: loadavgStart,
    loadavg_end: loadavg(),
    cpus: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    node: process.version,
    date: new Date().toISOString(),
  };
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(values.out, `${JSON.stringify(result, null, 2)}\n`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
