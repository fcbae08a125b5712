// `mergeAdapter` on the reference fixture (FP8 attention/shared expert, FP4 routed experts,
// BF16/F32/I64 rest, an MTP block) with its PEFT adapter (non-zero A and B on every attention
// projection, the shared expert and every routed expert).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { register as registerMerge } from '../../src/cli/commands/merge.js';
import { InputError } from '../../src/errors.js';
import { tryLoadAddon } from '../../src/backend/native/addon.js';
import { MERGE_AHEAD_BYTES, mergeAdapter, type MergeSummary } from '../../src/export/merge.js';
import { Adapter, createAdapter } from '../../src/lora/adapter.js';
import { loadAdapter, saveAdapter } from '../../src/lora/peft.js';
import { Checkpoint, copyCheckpoint, writeCheckpointFiles, type RawTensor } from '../../src/model/checkpoint.js';
import { bf16BytesToF32, dequantFp4, dequantFp8Block, e8m0Decode, f32ToBf16Bytes, FP4_E2M1_MAX, FP8_E4M3_MAX } from '../../src/model/formats.js';
import { loadModel } from '../../src/model/load.js';
import { initModel } from '../../src/model/init.js';
import { tensorRng } from '../../src/random.js';
import { SafetensorsFile, INDEX_FILE, STREAM_CHUNK, type ByteSource } from '../../src/model/safetensors.js';
import type { OutFile } from '../../src/model/out-file.js';
import { cases, FIXTURE, readI32 } from '../model/fixture.js';
import { relErr } from '../ref64.js';

const BASE = join(FIXTURE, 'checkpoint');
const ADAPTER = join(FIXTURE, 'adapter');
const quiet = (): void => {};

const root = mkdtempSync(join(tmpdir(), 'v4tune-merge-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

// the base's dequantised tensor as float32
function deq(r: RawTensor): Float32Array {
  const m = r.meta;
  const cols = m.logicalShape[m.logicalShape.length - 1]!;
  const rows = m.logicalShape.reduce((a, b) => a * b, 1) / cols;
  if (m.format === 'fp8') return dequantFp8Block(r.data, r.scale!, rows, cols);
  if (m.format === 'fp4') return dequantFp4(r.data, r.scale!, rows, cols);
  if (m.format === 'bf16') return bf16BytesToF32(r.data);
  throw new Error(`deq: ${m.name} is ${m.format}`);
}

const indexNames = (dir: string): string[] => Object.keys((JSON.parse(readFileSync(join(dir, INDEX_FILE), 'utf8')) as { weight_map: Record<string, string> }).weight_map).sort();

const L = cases().lora;
async function logitsOf(dir: string, ids: Int32Array, segments?: number[], adapter?: Adapter): Promise<Float32Array> {
  const model = await loadModel(dir, { backend: 'tfjs', note: quiet });
  try {
    return await model.logits(ids, { segments, adapter });
  } finally {
    model.dispose();
  }
}

let base: Checkpoint;
let adapter: Adapter;
beforeAll(async () => {
  base = await Checkpoint.open(BASE);
  adapter = await loadAdapter(ADAPTER, { warn: quiet });
}, 60_000);
afterAll(() => base.close());

describe('merge with dtype bf16', { timeout: 60_000 }, () => {
  const out = join(root, 'bf16');
  let summary: MergeSummary;
  /** byte count of every read from the base's shards */
  const reads: number[] = [];
  /** byte count of every copy from the base's shards to the output's in the kernel */
  const kernelCopies: number[] = [];
  beforeAll(async () => {
    // count every read from the base's shards (every read, whole tensor or streamed chunk, is a
    // positioned readInto, or readIntoAsync off the JS thread) and every copy file to file in the
    // kernel (copyRangeTo, where the native addon is built)
    const orig = SafetensorsFile.prototype.readInto;
    const origAsync = SafetensorsFile.prototype.readIntoAsync;
    const origCopy = SafetensorsFile.prototype.copyRangeTo;
    SafetensorsFile.prototype.readInto = function (this: SafetensorsFile, pos: number, into: Uint8Array, what: string): void {
      if (this.path.startsWith(BASE)) reads.push(into.length);
      orig.call(this, pos, into, what);
    };
    SafetensorsFile.prototype.readIntoAsync = async function (this: SafetensorsFile, pos: number, into: Uint8Array, what: string): Promise<void> {
      if (this.path.startsWith(BASE)) reads.push(into.length);
      await origAsync.call(this, pos, into, what);
    };
    SafetensorsFile.prototype.copyRangeTo = async function (this: SafetensorsFile, pos: number, len: number, out: OutFile, outPos: number, what: string): Promise<boolean> {
      const copied = await origCopy.call(this, pos, len, out, outPos, what);
      if (copied && this.path.startsWith(BASE)) {
        reads.push(len);
        kernelCopies.push(len);
      }
      return copied;
    };
    try {
      summary = await mergeAdapter({ base: BASE, adapter: ADAPTER, out, dtype: 'bf16', warn: quiet, aheadBytes: 0 });
    } finally {
      SafetensorsFile.prototype.readInto = orig;
      SafetensorsFile.prototype.readIntoAsync = origAsync;
      SafetensorsFile.prototype.copyRangeTo = origCopy;
    }
  }, 60_000);

  it('every merged tensor is exactly bf16(dequant(W) + scaling·B·A)', async () => {
    const merged = await Checkpoint.open(out);
    try {
      expect(summary.merged).toBe(adapter.modules().length);
      for (const module of adapter.modules()) {
        const name = `${module}.weight`;
        const x = deq(await base.raw(name));
        const d = adapter.delta(module);
        for (let i = 0; i < x.length; i++) x[i] = x[i]! + d[i]!;
        const r = await merged.raw(name);
        expect(r.meta.dtype, name).toBe('BF16');
        expect(r.scale, name).toBeNull();
        expect(Buffer.from(r.data).equals(Buffer.from(f32ToBf16Bytes(x))), name).toBe(true);
      }
    } finally {
      await merged.close();
    }
  });

  it('untouched FP8/FP4 weights become their exact dequantised values in BF16; every other tensor is byte-identical', async () => {
    const merged = await Checkpoint.open(out);
    try {
      const adapted = new Set(adapter.modules().map((m) => `${m}.weight`));
      let converted = 0;
      for (const name of base.names()) {
        if (adapted.has(name)) continue;
        const a = await base.raw(name);
        const b = await merged.raw(name);
        if (a.meta.format === 'fp8' || a.meta.format === 'fp4') {
          converted++;
          expect(b.meta.dtype, name).toBe('BF16');
          // e4m3 and e2m1 values times a power of two are exact in bf16, so this is equality
          expect(bf16BytesToF32(b.data), name).toEqual(deq(a));
        } else {
          expect(b.meta.dtype, name).toBe(a.meta.dtype);
          expect(Buffer.from(b.data).equals(Buffer.from(a.data)), name).toBe(true);
        }
      }
      expect(converted).toBeGreaterThan(0);
      expect(summary.converted).toBe(converted);
      const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
      expect(cfg.quantization_config).toBeUndefined();
      expect(cfg.expert_dtype).toBeUndefined();
      // no scale tensor is left: every weight is BF16
      expect(indexNames(out).filter((n) => n.endsWith('.scale'))).toEqual([]);
    } finally {
      await merged.close();
    }
  });

  it('reads the base tensor by tensor: no read exceeds the largest tensor, each byte is read once; copies are streamed; with aheadBytes 0 at most 2 decoded tensors held', () => {
    let largest = 0;
    let largestDecoded = 0;
    let total = 0;
    let copied = 0;
    for (const n of base.names()) {
      const p = base.plan(n);
      const bytes = (base.meta(n).shape.reduce((a, b) => a * b, 1) * ({ F8_E4M3: 1, I8: 1, BF16: 2, F32: 4, I64: 8 } as Record<string, number>)[p.dtype]!);
      const scale = p.scaleShape ? p.scaleShape.reduce((a, b) => a * b, 1) : 0;
      largest = Math.max(largest, bytes);
      total += bytes + scale;
      // dtype bf16: adapted and FP8/FP4 weights are decoded, the rest copied as stored
      if (adapter.layers.has(n.replace(/\.weight$/, '')) || ['fp8', 'fp4'].includes(base.meta(n).format)) largestDecoded = Math.max(largestDecoded, bytes);
      else copied += bytes + scale;
    }
    const shardBytes = readdirSync(BASE).filter((f) => f.endsWith('.safetensors')).map((f) => readFileSync(join(BASE, f)).length);
    expect(reads.length).toBeGreaterThan(base.names().length);
    expect(Math.max(...reads)).toBeLessThanOrEqual(largest);
    expect(Math.max(...reads)).toBeLessThan(Math.min(...shardBytes));
    expect(reads.reduce((a, b) => a + b, 0)).toBe(total);
    expect(summary.bytesRead).toBe(total);
    expect(copied).toBeGreaterThan(0);
    expect(summary.bytesStreamed).toBe(copied);
    // with the native addon every copy goes file to file in the kernel, never through JS memory
    expect(kernelCopies.reduce((a, b) => a + b, 0)).toBe(tryLoadAddon() ? copied : 0);
    expect(summary.largestReadBytes).toBe(largestDecoded);
    // copies hold nothing (they are streamed), so they may be started early; the bytes are bounded:
    // a BF16 output of the largest decoded tensor is 2 bytes an element: at most 2 · (in + out) held
    expect(summary.peakHeldBytes).toBeGreaterThan(0);
    // every tensor here is a format the native merge takes: all of them native where the addon is built
    expect(summary.nativeTensors).toBe(tryLoadAddon() ? summary.merged + summary.converted : 0);
    expect(summary.peakHeldBytes).toBeLessThanOrEqual(2 * (largestDecoded + 2 * largest));
  });
});

describe('merge with dtype original (FP8/FP4 requantised)', { timeout: 60_000 }, () => {
  const out = join(root, 'original');
  let summary: MergeSummary;
  beforeAll(async () => {
    summary = await mergeAdapter({ base: BASE, adapter: ADAPTER, out, warn: quiet });
  }, 60_000);

  // direct I/O where the file system takes it (model/out-file.ts); the page cache gives the same bytes
  it.skipIf(!tryLoadAddon())('writes its shards with direct I/O; through the page cache (directIo false) they are the same bytes', async () => {
    const probe = join(root, 'direct-probe');
    const h = tryLoadAddon()!.directOpen(probe, 0);
    if (h >= 0) tryLoadAddon()!.directClose(h);
    expect(summary.directIo).toBe(h >= 0);
    const buffered = join(root, 'original-buffered');
    const s = await mergeAdapter({ base: BASE, adapter: ADAPTER, out: buffered, warn: quiet, directIo: false });
    expect(s.directIo).toBe(false);
    expect(s.shards).toEqual(summary.shards);
    for (const f of [...summary.shards, INDEX_FILE]) expect(readFileSync(join(buffered, f)).equals(readFileSync(join(out, f))), f).toBe(true);
  });

  // a base mostly not in the page cache is read with direct I/O too; the fixture is cached, so
  // the threshold is raised past 1 to take that path here
  it.skipIf(!tryLoadAddon())('a base read with direct I/O (as a cold one is) merges to the same bytes', async () => {
    const orig = SafetensorsFile.prototype.readDirectIfUncached;
    SafetensorsFile.prototype.readDirectIfUncached = function (this: SafetensorsFile): boolean {
      return orig.call(this, 1.01);
    };
    let s: MergeSummary;
    const cold = join(root, 'original-direct-reads');
    try {
      s = await mergeAdapter({ base: BASE, adapter: ADAPTER, out: cold, warn: quiet });
    } finally {
      SafetensorsFile.prototype.readDirectIfUncached = orig;
    }
    const probe = join(BASE, readdirSync(BASE).find((f) => f.endsWith('.safetensors'))!);
    const fd = tryLoadAddon()!.directReadOpen(probe);
    if (fd >= 0) closeSync(fd);
    expect(s.shardsReadDirect).toBe(fd >= 0 ? readdirSync(BASE).filter((f) => f.endsWith('.safetensors')).length : 0);
    expect(summary.shardsReadDirect).toBe(0); // cached: read through the page cache
    for (const f of [...summary.shards, INDEX_FILE]) expect(readFileSync(join(cold, f)).equals(readFileSync(join(out, f))), f).toBe(true);
  });

  it('writes the same tensors with the same dtypes, shapes and scale shapes; the index lists every one', () => {
    const header = (dir: string): Map<string, string> => {
      const m = new Map<string, string>();
      for (const f of readdirSync(dir).filter((x) => x.endsWith('.safetensors'))) {
        const sf = SafetensorsFile.open(join(dir, f));
        for (const [k, e] of sf.entries) m.set(k, `${e.dtype} [${e.shape.join(', ')}]`);
        sf.close();
      }
      return m;
    };
    const a = header(BASE);
    const b = header(out);
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [k, v] of a) expect(b.get(k), k).toBe(v);
    expect(indexNames(out)).toEqual(indexNames(BASE));
    expect(indexNames(out)).toEqual([...a.keys()].sort());
    // every field kept (quantization_config included), floats written as floats for transformers
    const cfgText = readFileSync(join(out, 'config.json'), 'utf8');
    expect(JSON.parse(cfgText)).toEqual(JSON.parse(readFileSync(join(BASE, 'config.json'), 'utf8')));
    expect(cfgText).toContain('"rope_theta": 10000.0,');
    expect(summary.merged).toBe(adapter.modules().length);
    expect(summary.converted).toBe(0);
    // the default aheadBytes lets the merges run ahead of the writer, within that many bytes
    expect(summary.peakTensorsHeld).toBeGreaterThan(2);
    expect(summary.peakHeldBytes).toBeLessThanOrEqual(MERGE_AHEAD_BYTES);
    expect(summary.copied).toBe(base.names().length - adapter.modules().length);
  });

  it('copies every unadapted tensor byte for byte (the MTP block and tid2eid included)', async () => {
    const merged = await Checkpoint.open(out);
    try {
      const adapted = new Set(adapter.modules().map((m) => `${m}.weight`));
      const untouched = base.names().filter((n) => !adapted.has(n));
      expect(untouched).toContain('layers.0.ffn.gate.tid2eid');
      expect(untouched.filter((n) => n.startsWith('mtp.0.')).length).toBeGreaterThan(10);
      for (const name of untouched) {
        const a = await base.raw(name);
        const b = await merged.raw(name);
        expect(Buffer.from(b.data).equals(Buffer.from(a.data)), name).toBe(true);
        expect(b.scale === null ? null : Buffer.from(b.scale).equals(Buffer.from(a.scale!)), name).toBe(a.scale === null ? null : true);
      }
      expect(await merged.ints('layers.0.ffn.gate.tid2eid')).toEqual(await base.ints('layers.0.ffn.gate.tid2eid'));
    } finally {
      await merged.close();
    }
  });

  it('merged FP8 weights lie within e4m3 rounding of dequant(W) + ΔW, merged FP4 within e2m1 rounding, with fresh minimal scales', async () => {
    // Per element x = dequant(W) + ΔW and its block scale s (a power of two, the smallest with
    // amax/s ≤ qmax):  FP8 e4m3 (3 mantissa bits): |q − x| ≤ max(2^-4·|x|, 2^-10·s);
    // FP4 e2m1 {0, .5, 1, 1.5, 2, 3, 4, 6}: |q − x| ≤ max(|x|/4, s/4).
    const merged = await Checkpoint.open(out);
    const seen = { fp8: 0, fp4: 0 };
    try {
      for (const module of adapter.modules()) {
        const name = `${module}.weight`;
        const r0 = await base.raw(name);
        const x = deq(r0);
        const d = adapter.delta(module);
        for (let i = 0; i < x.length; i++) x[i] = x[i]! + d[i]!;
        const r = await merged.raw(name);
        const q = deq(r);
        const [rows, cols] = r.meta.logicalShape as [number, number];
        const fp8 = r.meta.format === 'fp8';
        seen[fp8 ? 'fp8' : 'fp4']++;
        const qmax = fp8 ? FP8_E4M3_MAX : FP4_E2M1_MAX;
        const sc = fp8 ? Math.ceil(cols / 128) : cols / 32;
        const blockOf = (i: number, j: number): number => (fp8 ? Math.floor(i / 128) * sc + Math.floor(j / 128) : i * sc + Math.floor(j / 32));
        const amax = new Float64Array(r.scale!.length);
        let worst = 0;
        for (let i = 0; i < rows; i++) {
          for (let j = 0; j < cols; j++) {
            const k = i * cols + j;
            const s = e8m0Decode(r.scale![blockOf(i, j)]!);
            const bound = fp8 ? Math.max(Math.abs(x[k]!) / 16, s / 1024) : Math.max(Math.abs(x[k]!) / 4, s / 4);
            worst = Math.max(worst, Math.abs(q[k]! - x[k]!) / bound);
            amax[blockOf(i, j)] = Math.max(amax[blockOf(i, j)]!, Math.abs(x[k]!));
          }
        }
        expect(worst, name).toBeLessThanOrEqual(1);
        for (let b = 0; b < amax.length; b++) {
          const s = e8m0Decode(r.scale![b]!);
          if (amax[b]! === 0) continue;
          expect(amax[b]! / s, `${name} block ${b}`).toBeLessThanOrEqual(qmax);
          expect(amax[b]! / (s / 2), `${name} block ${b}`).toBeGreaterThan(qmax);
        }
      }
      expect(seen.fp8).toBeGreaterThan(0);
      expect(seen.fp4).toBeGreaterThan(0);
    } finally {
      await merged.close();
    }
  });

  it('the merged checkpoint loads and runs (finite logits of the right shape)', async () => {
    const ids = readI32(L.ids).subarray(0, 40);
    const got = await logitsOf(out, ids);
    expect(got.length).toBe(40 * 1000);
    expect(got.every((v) => Number.isFinite(v))).toBe(true);
  });
});

describe('merge on the tiny preset with a random non-zero adapter (MTP module included)', { timeout: 60_000 }, () => {
  it('bf16: logits of the merged model match base + adapter within 1e-2 (max|Δ|/max|ref|; measured 7.4e-3 from bf16 rounding of W + ΔW)', async () => {
    const dir = join(root, 'tiny');
    await initModel({ preset: 'tiny', out: join(dir, 'base'), tokenizer: false });
    const ck = await Checkpoint.open(join(dir, 'base'));
    const a = createAdapter({ config: ck.config, dir: join(dir, 'base') }, {
      r: 4, alpha: 8, seed: 1,
      targets: ['attn.wq_a', 'attn.wq_b', 'attn.wkv', 'attn.wo_a', 'attn.wo_b', 'ffn.shared_experts.w1', 'ffn.shared_experts.w2', 'ffn.shared_experts.w3', 'ffn.experts.*.w1', 'ffn.experts.*.w2', 'ffn.experts.*.w3', 'mtp.*.attn.wq_a'],
    });
    for (const [m, l] of a.layers) {
      const rng = tensorRng(7, m);
      for (let i = 0; i < l.B.length; i++) (l.B as Float32Array)[i] = (2 * rng() - 1) * 0.02;
    }
    expect(a.modules()).toContain('mtp.0.attn.wq_a');
    await saveAdapter(a, join(dir, 'adapter'));
    const s = await mergeAdapter({ base: join(dir, 'base'), adapter: join(dir, 'adapter'), out: join(dir, 'merged'), dtype: 'bf16' });
    expect(s.merged).toBe(a.modules().length);
    // the MTP module is merged too: bf16(dequant(W) + ΔW)
    const merged = await Checkpoint.open(join(dir, 'merged'));
    const x = deq(await ck.raw('mtp.0.attn.wq_a.weight'));
    const d = a.delta('mtp.0.attn.wq_a');
    for (let i = 0; i < x.length; i++) x[i] = x[i]! + d[i]!;
    expect(Buffer.from((await merged.raw('mtp.0.attn.wq_a.weight')).data).equals(Buffer.from(f32ToBf16Bytes(x)))).toBe(true);
    await merged.close();
    await ck.close();
    const ids = new Int32Array(48).map((_, i) => ((i * 7919) % 1000) + 5);
    const ref0 = await logitsOf(join(dir, 'base'), ids);
    const ref = await logitsOf(join(dir, 'base'), ids, undefined, a);
    const got = await logitsOf(join(dir, 'merged'), ids);
    // the adapter moves the logits by ~65% of their range, so a merge that dropped or misplaced
    // ΔW anywhere would be far outside the bound; bf16 keeps 8 significant bits (2^-9 relative)
    expect(relErr(ref, ref0)).toBeGreaterThan(0.3);
    expect(relErr(got, ref)).toBeLessThanOrEqual(1e-2);
  });
});

describe('bad input: one InputError, nothing written', { timeout: 60_000 }, () => {
  const dir = join(root, 'bad');
  mkdirSync(dir, { recursive: true });
  const expectRefused = async (opts: Parameters<typeof mergeAdapter>[0], message: RegExp): Promise<void> => {
    const before = readdirSync(dir).sort();
    const err = await mergeAdapter({ warn: quiet, ...opts }).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(message);
    expect(readdirSync(dir).sort()).toEqual(before);
  };

  it('an adapter made for another base (fingerprint)', async () => {
    const other = new Adapter(adapter.options, new Map(adapter.layers), '', 'deadbeefdeadbeef');
    await saveAdapter(other, join(dir, 'adapter-other'));
    await expectRefused({ base: BASE, adapter: join(dir, 'adapter-other'), out: join(dir, 'o') }, /adapter-other\/adapter_config\.json: .*fingerprint deadbeefdeadbeef/);
  });

  it('an adapter module the base does not have', async () => {
    const l = adapter.layers.get('layers.0.attn.wq_a')!;
    const odd = new Adapter(adapter.options, new Map([['layers.7.attn.wq_a', l]]), '', null);
    await saveAdapter(odd, join(dir, 'adapter-odd'));
    await expectRefused({ base: BASE, adapter: join(dir, 'adapter-odd'), out: join(dir, 'o') }, /adapter-odd\/adapter_config\.json: .*layers\.7\.attn\.wq_a/);
  });

  it('an output path that is a file, inside the base, or a non-empty unrelated folder; a base that is not a model', async () => {
    writeFileSync(join(dir, 'file'), 'x');
    await expectRefused({ base: BASE, adapter: ADAPTER, out: join(dir, 'file') }, /file: output path exists and is a file/);
    await expectRefused({ base: BASE, adapter: ADAPTER, out: join(BASE, 'merged') }, /must lie outside the base checkpoint folder/);
    mkdirSync(join(dir, 'notes'));
    writeFileSync(join(dir, 'notes', 'a.txt'), 'keep');
    await expectRefused({ base: BASE, adapter: ADAPTER, out: join(dir, 'notes') }, /notes: output folder exists, is not empty/);
    expect(readFileSync(join(dir, 'notes', 'a.txt'), 'utf8')).toBe('keep');
    await expectRefused({ base: join(dir, 'notes'), adapter: ADAPTER, out: join(dir, 'o') }, /notes: no config\.json/);
    await expectRefused({ base: BASE, adapter: ADAPTER, out: join(dir, 'o'), dtype: 'fp8' as never }, /--dtype/);
  });

  it('a failure midway leaves neither the output nor a temp folder', async () => {
    const before = readdirSync(dir).sort();
    let n = 0;
    const err = await mergeAdapter({ base: BASE, adapter: ADAPTER, out: join(dir, 'o'), warn: quiet, onTensor: () => { if (++n === 20) throw new Error('disk full'); } }).then(() => null, (e: unknown) => e);
    expect((err as Error).message).toBe('disk full');
    expect(readdirSync(dir).sort()).toEqual(before);
    expect(existsSync(join(dir, 'o'))).toBe(false);
  });
});

describe('v4tune merge (CLI)', { timeout: 60_000 }, () => {
  const run = async (args: string[]): Promise<{ out: string; code: number | undefined }> => {
    const program = new Command().exitOverride().option('--json').option('--quiet');
    registerMerge(program);
    let out = '';
    const write = process.stdout.write.bind(process.stdout);
    const ewrite = process.stderr.write.bind(process.stderr);
    process.stdout.write = ((c: string) => { out += c; return true; }) as typeof process.stdout.write;
    process.stderr.write = (() => true) as typeof process.stderr.write;
    try {
      await program.parseAsync(['node', 'v4tune', ...args]);
    } finally {
      process.stdout.write = write;
      process.stderr.write = ewrite;
    }
    const code = process.exitCode as number | undefined;
    process.exitCode = undefined;
    return { out, code };
  };

  it('--model --adapter --out merges and prints a JSON summary; a missing flag exits 2', async () => {
    const dest = join(root, 'cli');
    const r = await run(['--json', 'merge', '--model', BASE, '--adapter', ADAPTER, '--out', dest, '--dtype', 'bf16']);
    expect(r.code).toBeUndefined();
    const s = JSON.parse(r.out) as MergeSummary & { ok: boolean };
    expect(s.ok).toBe(true);
    expect(s.merged).toBe(adapter.modules().length);
    expect(s.dtype).toBe('bf16');
    expect(s.peakRssBytes).toBeGreaterThan(0);
    expect(indexNames(dest).length).toBeGreaterThan(0);
    const paged = await run(['--json', 'merge', '--model', BASE, '--adapter', ADAPTER, '--out', join(root, 'cli-paged'), '--dtype', 'bf16', '--no-direct-io']);
    expect((JSON.parse(paged.out) as MergeSummary).directIo).toBe(false);
    for (const f of s.shards) expect(readFileSync(join(root, 'cli-paged', f)).equals(readFileSync(join(dest, f))), f).toBe(true);
    const bad = await run(['--json', 'merge', '--model', BASE, '--out', join(root, 'cli2')]);
    expect(bad.code).toBe(2);
    expect(bad.out).toMatch(/--adapter: required without a recipe/);
    expect(existsSync(join(root, 'cli2'))).toBe(false);
  });

  // ΔW = scaling · B·A past float32's range: the merge's finite check refuses the tensor before
  // anything is encoded, the verb exits 1 (a runtime failure, not bad flags) naming the base, the
  // tensor and the element, and the output folder is never made (the native requantisation for
  // the FP8/FP4 output where the addon is built, the TypeScript path for BF16)
  it('an adapter whose ΔW overflows float32 exits 1 naming the tensor; nothing is written', async () => {
    const name = 'layers.0.attn.wq_a';
    const l = adapter.layers.get(name)!;
    const huge = new Map(adapter.layers);
    huge.set(name, { ...l, A: new Float32Array(l.A.length).fill(1e20), B: new Float32Array(l.B.length).fill(1e20) });
    const dir = join(root, 'overflow');
    await saveAdapter(new Adapter(adapter.options, huge, '', adapter.fingerprint), join(dir, 'adapter'));
    for (const dtype of ['original', 'bf16']) {
      const before = readdirSync(dir).sort();
      const r = await run(['--json', 'merge', '--model', BASE, '--adapter', join(dir, 'adapter'), '--out', join(dir, `merged-${dtype}`), '--dtype', dtype]);
      expect(r.code, dtype).toBe(1);
      const s = JSON.parse(r.out) as { ok: boolean; exitCode: number; error: string };
      expect(s.ok).toBe(false);
      expect(s.exitCode).toBe(1);
      expect(s.error).toMatch(/checkpoint: tensor layers\.0\.attn\.wq_a\.weight holds -?Infinity at element \d+ after adding the adapter; nothing merged/);
      expect(readdirSync(dir).sort(), dtype).toEqual(before);
    }
  });
});

describe('transformers layout', { timeout: 60_000 }, () => {
  it('a transformers-layout base merges to a transformers-layout output with the same tensors as the official merge', async () => {
    const hf = join(root, 'hf-base');
    await copyCheckpoint(base, hf, { layout: 'transformers' });
    const out = join(root, 'hf-merged');
    const s = await mergeAdapter({ base: hf, adapter: ADAPTER, out, warn: quiet });
    expect(s.layout).toBe('transformers');
    const official = join(root, 'original');
    if (!existsSync(official)) await mergeAdapter({ base: BASE, adapter: ADAPTER, out: official, warn: quiet });
    const a = await Checkpoint.open(out);
    const b = await Checkpoint.open(official);
    try {
      expect(a.layout).toBe('transformers');
      expect(a.names()).toEqual(b.names());
      for (const n of a.names()) {
        const x = await a.raw(n);
        const y = await b.raw(n);
        expect(Buffer.from(x.data).equals(Buffer.from(y.data)), n).toBe(true);
      }
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('writeCheckpointFiles: streamed copies and the look-ahead bound', () => {
  it('a tensor left in a file is streamed in chunks of at most STREAM_CHUNK bytes; with ahead 1 at most 2 tensors are produced and not yet written', async () => {
    const dir = join(root, 'stream');
    mkdirSync(dir);
    // 3 tensors of 2.5 chunks each, as sources that record every read (the writer's reads); byte
    // value: the tensor's index and the chunk's offset
    const n = 3;
    const len = STREAM_CHUNK * 2 + STREAM_CHUNK / 2;
    const plans = Array.from({ length: n }, (_, i) => ({ name: `t${i}.weight`, dtype: 'U8' as const, shape: [len], scaleShape: null }));
    const events: string[] = [];
    const readSizes: number[] = [];
    let producedNotWritten = 0;
    let peak = 0;
    const written = new Set<number>();
    const shards = await writeCheckpointFiles(dir, plans, async (name) => {
      const i = Number(name.slice(1, -'.weight'.length));
      events.push(`produce ${i}`);
      peak = Math.max(peak, ++producedNotWritten);
      await new Promise<void>((res) => setImmediate(res));
      const data: ByteSource = {
        length: len,
        read(into, at) {
          readSizes.push(into.length);
          into.fill((i * 31 + at / STREAM_CHUNK) & 255);
          if (at + into.length === len && !written.has(i)) {
            written.add(i);
            producedNotWritten--;
          }
        },
      };
      return { data, scale: null };
    }, { ahead: 1, maxShardBytes: 3 * len });
    expect(events).toEqual(plans.map((_, i) => `produce ${i}`));
    expect(peak).toBe(2);
    expect(Math.max(...readSizes)).toBe(STREAM_CHUNK);
    expect(readSizes.length).toBe(n * 3);
    const files = shards.map((f) => SafetensorsFile.open(join(dir, f)));
    try {
      for (let i = 0; i < n; i++) {
        const f = files.find((x) => x.entries.has(`t${i}.weight`))!;
        const got = f.read(`t${i}.weight`);
        const want = new Uint8Array(len);
        for (let c = 0; c * STREAM_CHUNK < len; c++) want.fill((i * 31 + c) & 255, c * STREAM_CHUNK, (c + 1) * STREAM_CHUNK);
        expect(Buffer.from(got).equals(Buffer.from(want)), `t${i}`).toBe(true);
      }
    } finally {
      for (const f of files) f.close();
    }
  });
});
