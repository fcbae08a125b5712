// INT4 export: group quantisation (src/export/int4.ts) against a float64 reference written here, and
// the GPTQ-layout safetensors output read back by a dequantiser written here.
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { linearKind, QUANT_FORMATS, quantizeCheckpoint, type QuantizeSummary } from '../../src/export/quantize.js';
import { GGUF_FORMATS } from '../../src/export/gguf-export.js';
import { recipeSchema } from '../../src/recipe/schema.js';
import { parseRecipe } from '../../src/recipe/load.js';
import { silentSink } from '../../src/sink.js';
import { quantizeRecipe } from '../../src/stages/quantize.js';
import { Checkpoint } from '../../src/model/checkpoint.js';
import { tryLoadAddon } from '../../src/backend/native/addon.js';
import { SafetensorsSet } from '../../src/model/safetensors.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dequantizeInt4, groupGrid, quantizeRtn } from '../../src/export/int4.js';
import { mulberry32 } from '../../src/random.js';
import { writeSmallBpeTokenizer } from './bpe-fixture.js';
import { gptqModelName, gptqQuantises } from '../../src/export/gptq-names.js';

// smallest IEEE half ≥ x (x > 0, normal range), computed from the exponent in float64
function f16Up(x: number): number {
  const e = Math.floor(Math.log2(x));
  const ulp = 2 ** (Math.max(e, -14) - 10);
  return Math.ceil(x / ulp) * ulp;
}

// float64 reference of the documented grid: s = f16↑((max−min)/15), z = round(−min/s) ≥ 1
function refGrid(vals: number[]): { s: number; z: number } {
  const lo = Math.min(0, ...vals);
  const hi = Math.max(0, ...vals);
  if (lo === hi) return { s: 1, z: 8 };
  let s = f16Up((hi - lo) / 15);
  let z = Math.round(-lo / s);
  if (z < 1) {
    z = 1;
    if (hi > 14.5 * s) s = f16Up(hi / 14.5);
  }
  return { s, z: Math.min(z, 15) };
}

const rng = mulberry32;

describe('the list of quantize formats', () => {
  // the CLI reads QUANT_FORMATS from quantize-types.ts without loading the writers: it must name
  // exactly the formats the writers and the recipe take
  it('is gptq and every GGUF writer format, as the recipe schema lists them', () => {
    expect([...QUANT_FORMATS]).toEqual(['gptq', ...Object.keys(GGUF_FORMATS)]);
    const parsed = recipeSchema.shape.export.parse({ quantize: [...QUANT_FORMATS] });
    expect(parsed.quantize).toEqual([...QUANT_FORMATS]);
    expect(() => recipeSchema.shape.export.parse({ quantize: ['gguf-q2_k'] })).toThrow();
  });
});

describe('INT4 round-to-nearest, group-wise over the input dimension', () => {
  const out = 12;
  const inF = 256;
  const gs = 64;
  const r = rng(7);
  const w = new Float32Array(out * inF);
  for (let i = 0; i < w.length; i++) w[i] = (r() - 0.5) * 0.2 * (1 + (i % 5));
  // row 3: a group with no negative weight; row 4: an all-zero group; row 5: a huge outlier
  for (let c = 0; c < gs; c++) {
    w[3 * inF + c] = r() * 0.05;
    w[4 * inF + c] = 0;
  }
  w[5 * inF + 70] = 40;

  const x = quantizeRtn(w, out, inF, gs);
  const back = dequantizeInt4(x);

  it('gives the reference grid (fp16 scale rounded up, zero in 1..15) for every (row, group)', () => {
    for (let row = 0; row < out; row++) {
      for (let g = 0; g < inF / gs; g++) {
        const vals = Array.from(w.subarray(row * inF + g * gs, row * inF + (g + 1) * gs));
        const ref = refGrid(vals);
        expect(x.scales[row * (inF / gs) + g]).toBe(ref.s);
        expect(x.zeros[row * (inF / gs) + g]).toBe(ref.z);
      }
    }
  });

  it('reconstructs every weight within half a step (≤ s/2, float64 rounding slack 1e-6·s)', () => {
    for (let row = 0; row < out; row++) {
      for (let c = 0; c < inF; c++) {
        const g = row * (inF / gs) + Math.floor(c / gs);
        const s = x.scales[g]!;
        const ref = refGrid(Array.from(w.subarray(row * inF + Math.floor(c / gs) * gs, row * inF + Math.floor(c / gs + 1) * gs)));
        const q64 = Math.min(15, Math.max(0, Math.round(w[row * inF + c]! / ref.s) + ref.z));
        expect(x.q[row * inF + c]).toBe(q64);
        expect(Math.abs(back[row * inF + c]! - w[row * inF + c]!)).toBeLessThanOrEqual(s / 2 + 1e-6 * s);
      }
    }
  });

  it('keeps an all-zero group exact and a non-negative group on the z = 1 grid', () => {
    for (let c = 0; c < gs; c++) expect(back[4 * inF + c]).toBe(0);
    expect(x.zeros[3 * (inF / gs)]).toBe(1);
  });

  it('refuses a group size that does not divide the input size', () => {
    expect(() => quantizeRtn(w, out, inF, 48)).toThrow(/not a multiple of the group size 48/);
  });

  it('refuses a non-finite weight, naming its row and column', () => {
    const bad = w.slice();
    bad[2 * inF + 9] = NaN;
    expect(() => quantizeRtn(bad, out, inF, gs)).toThrow(/row 2, column 9/);
  });

  it('rounds the scale up so the top of the range is never clamped by more than s/2', () => {
    const g = groupGrid(-1, 1.0000001);
    expect(g.scale * (15 - g.zero) + g.scale / 2).toBeGreaterThanOrEqual(1.0000001);
    expect(g.scale * g.zero + g.scale / 2).toBeGreaterThanOrEqual(1);
  });
});

// ---------------------------------------------------------------- the GPTQ-layout safetensors output


const FIXTURE = join(__dirname, '../../../shared/fixtures/v4-tiny-ref/checkpoint');

// IEEE half bits → value, written here from the format (sign, 5-bit exponent bias 15, 10-bit mantissa)
function half(h: number): number {
  const e = (h >> 10) & 31;
  const m = h & 1023;
  const v = e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15);
  return h & 0x8000 ? -v : v;
}

const i32 = (b: Uint8Array): Int32Array => new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
const u16 = (b: Uint8Array): Uint16Array => new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));

describe('quantize → GPTQ-layout safetensors (method rtn, group 32, v4-tiny-ref fixture)', () => {
  let dir: string;
  let src: string;
  let out: string;
  let summary: QuantizeSummary;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'v4tune-quant-'));
    src = join(dir, 'model');
    cpSync(FIXTURE, src, { recursive: true });
    writeSmallBpeTokenizer(src);
    out = join(dir, 'gptq');
    summary = await quantizeCheckpoint({ model: src, out, format: 'gptq', method: 'rtn', groupSize: 32 });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('an independent AutoGPTQ dequantiser reconstructs every quantised linear within s/2, under GPTQModel\'s deepseek_v4 names (o_a_proj kept)', async () => {
    const ck = await Checkpoint.open(src);
    const set = SafetensorsSet.open(out);
    let checked = 0;
    try {
      expect(set.has('model.layers.0.self_attn.q_a_proj.qweight')).toBe(true);
      expect(set.has('model.layers.0.mlp.experts.7.up_proj.qweight')).toBe(true);
      expect(set.has('model.layers.0.self_attn.o_a_proj.weight')).toBe(true);
      expect(set.has('model.layers.0.self_attn.o_a_proj.qweight')).toBe(false);
      for (const n of ck.names().filter((x) => gptqQuantises(x))) {
        const [O, I] = ck.meta(n).logicalShape as [number, number];
        const w = await ck.f32(n);
        const base = gptqModelName(n, ck.config.moe_intermediate_size).slice(0, -'.weight'.length);
        expect(set.entry(`${base}.qweight`).shape).toEqual([I / 8, O]);
        expect(set.entry(`${base}.qzeros`).shape).toEqual([I / 32, O / 8]);
        expect(set.entry(`${base}.scales`).dtype).toBe('F16');
        expect(set.has(`${base}.weight`)).toBe(false);
        const qw = i32(set.read(`${base}.qweight`));
        const qz = i32(set.read(`${base}.qzeros`));
        const sc = u16(set.read(`${base}.scales`));
        const gi = i32(set.read(`${base}.g_idx`));
        for (let j = 0; j < O; j++) {
          for (let i = 0; i < I; i++) {
            const g = gi[i]!;
            expect(g).toBe(Math.floor(i / 32));
            const q = (qw[(i >> 3) * O + j]! >>> (4 * (i & 7))) & 15;
            const z = ((qz[g * (O / 8) + (j >> 3)]! >>> (4 * (j & 7))) & 15) + 1; // v1 format stores zero − 1
            const s = half(sc[g * O + j]!);
            const err = Math.abs((q - z) * s - w[j * I + i]!);
            if (!(err <= s / 2 + 1e-6 * s)) throw new Error(`${n}[${j}, ${i}]: |err| ${err} > s/2 = ${s / 2}`);
          }
        }
        checked++;
      }
    } finally {
      set.close();
      await ck.close();
    }
    // 5 layers (4 + MTP) × (4 attention (wo_a kept) + 3 shared + 8·3 routed)
    expect(checked).toBe(5 * (4 + 3 + 24));
    expect(summary.tensorsQuantized).toBe(checked);
  });

  it('keeps every other tensor: BF16/F32/int bytes unchanged, FP8 dequantised to BF16', async () => {
    const ck = await Checkpoint.open(src);
    const set = SafetensorsSet.open(out);
    try {
      const kept = ck.names().filter((x) => !gptqQuantises(x));
      expect(summary.tensorsKept).toBe(kept.length);
      for (const n of kept) {
        const m = ck.meta(n);
        const disk = gptqModelName(n, ck.config.moe_intermediate_size);
        const e = set.entry(disk);
        if (m.format === 'bf16' || m.format === 'f32' || m.format === 'int') {
          expect(e.dtype).toBe(m.dtype);
          expect(Buffer.from(set.read(disk)).equals(Buffer.from((await ck.raw(n)).data))).toBe(true);
        } else {
          expect(e.dtype).toBe('BF16');
          const w = await ck.f32(n);
          const got = u16(set.read(disk));
          for (let i = 0; i < w.length; i++) {
            const v = new Float32Array(new Uint32Array([got[i]! << 16]).buffer)[0]!;
            expect(Math.abs(v - w[i]!)).toBeLessThanOrEqual(Math.abs(w[i]!) * 2 ** -8);
          }
        }
      }
      expect(kept).toContain('layers.1.attn.indexer.wq_b.weight');
      expect(kept).toContain('head.weight');
    } finally {
      set.close();
      await ck.close();
    }
  });

  it('writes config.json with a gptq quantization_config, copies the tokenizer, reports the errors', () => {
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(cfg.quantization_config).toMatchObject({ quant_method: 'gptq', bits: 4, group_size: 32, desc_act: false, sym: false, checkpoint_format: 'gptq' });
    expect(cfg.expert_dtype).toBeUndefined();
    expect(cfg.hidden_size).toBe(64);
    expect(JSON.parse(readFileSync(join(out, 'quantize_config.json'), 'utf8'))).toEqual(cfg.quantization_config);
    expect(readFileSync(join(out, 'config.json'), 'utf8')).toMatch(/"swiglu_limit": 1\.5,|"rope_theta": 10000\.0,/);
    expect(readFileSync(join(out, 'tokenizer.json'), 'utf8')).toContain('BPE');
    expect(existsSync(join(out, 'model.safetensors.index.json'))).toBe(true);
    for (const k of ['attention', 'shared_expert', 'routed_expert'] as const) {
      const s = summary.errors[k]!;
      expect(s.maxAbsError).toBeGreaterThan(0);
      expect(s.meanAbsError).toBeLessThan(s.maxAbsError);
      expect(s.relRmsError).toBeLessThan(0.2);
    }
    expect(summary.bytesOut).toBeGreaterThan(0);
    expect(summary.compression).toBeCloseTo(summary.bytesIn / summary.bytesOut, 10);
  });

  it('refuses a group size that does not divide a linear\'s input, before writing anything', async () => {
    const bad = join(dir, 'bad');
    await expect(quantizeCheckpoint({ model: src, out: bad, format: 'gptq', method: 'rtn', groupSize: 128 })).rejects.toThrow(/input size (64|32) is not a multiple of the group size 128/);
    expect(existsSync(bad)).toBe(false);
  });

  it('refuses method gptq without calibration rows', async () => {
    await expect(quantizeCheckpoint({ model: src, out: join(dir, 'x'), format: 'gptq', method: 'gptq', groupSize: 32 })).rejects.toThrow(/method gptq needs calibration rows/);
  });

  it('the recipe stage takes <output>/merged when present and refuses an empty export.quantize', async () => {
    const output = join(dir, 'run');
    cpSync(src, join(output, 'merged'), { recursive: true });
    const recipe = parseRecipe(JSON.stringify({ model: { path: '/nonexistent' }, data: { sources: [{ path: 'corpus.txt' }] }, output, export: { quantize: [], method: 'rtn', group_size: 32 } }), join(dir, 'r.yaml'));
    await expect(quantizeRecipe(recipe)).rejects.toThrow(/export.quantize is empty/);
    const [s] = await quantizeRecipe({ ...recipe, export: { ...recipe.export, quantize: ['gptq'] } });
    expect(s!.model).toBe(join(output, 'merged'));
    expect(s!.out).toBe(join(output, 'quantized', 'gptq'));
    const [g] = await quantizeRecipe({ ...recipe, output: join(dir, 'run2') }, silentSink, { model: src, formats: ['gguf-q4_0'] });
    expect(existsSync(join(dir, 'run2', 'quantized', 'model-Q4_0.gguf'))).toBe(true);
    expect(g!.format).toBe('gguf-q4_0');
  });
});

describe('v4tune quantize (the verb, registered on a fresh program)', () => {
  it('writes both formats from the recipe with --json summaries, and exits 2 naming a bad --format', async () => {
    const { Command } = await import('commander');
    const { register } = await import('../../src/cli/commands/quantize.js');
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-quant-cli-'));
    const writes: string[] = [];
    const origOut = process.stdout.write.bind(process.stdout);
    const origErr = process.stderr.write.bind(process.stderr);
    const run = async (...args: string[]): Promise<number> => {
      const p = new Command().option('--json').option('--quiet').exitOverride();
      register(p);
      process.exitCode = 0;
      process.stdout.write = ((s: string) => { writes.push(String(s)); return true; }) as typeof process.stdout.write;
      process.stderr.write = ((s: string) => { writes.push(String(s)); return true; }) as typeof process.stderr.write;
      try {
        await p.parseAsync(['node', 'v4tune', ...args]);
      } finally {
        process.stdout.write = origOut;
        process.stderr.write = origErr;
      }
      const code = Number(process.exitCode ?? 0);
      process.exitCode = 0;
      return code;
    };
    try {
      cpSync(FIXTURE, join(dir, 'model'), { recursive: true });
      writeSmallBpeTokenizer(join(dir, 'model'));
      writeFileSync(join(dir, 'r.yaml'), [
        `model: { path: ${JSON.stringify(join(dir, 'model'))} }`,
        'data: { sources: [{ path: corpus/*.jsonl }] }',
        'export: { quantize: [gptq, gguf-q4_0], method: rtn, group_size: 32 }',
        'output: out',
      ].join('\n'));
      expect(await run('--json', 'quantize', join(dir, 'r.yaml'))).toBe(0);
      const s = JSON.parse(writes.filter((l) => l.trimStart().startsWith('{')).pop()!) as { ok: boolean; outputs: QuantizeSummary[] };
      expect(s.ok).toBe(true);
      expect(s.outputs.map((o) => o.format)).toEqual(['gptq', 'gguf-q4_0']);
      expect(existsSync(join(dir, 'out', 'quantized', 'gptq', 'config.json'))).toBe(true);
      expect(existsSync(join(dir, 'out', 'quantized', 'model-Q4_0.gguf'))).toBe(true);
      // the fixture is FP8/FP4 already and mostly embed/head: INT4 + BF16-kept tensors is not smaller here
      expect(s.outputs[0]!.compression).toBeCloseTo(s.outputs[0]!.bytesIn / s.outputs[0]!.bytesOut, 10);
      expect(s.outputs[1]!.tensorsQuantized).toBe(5 * (5 + 3 + 24)); // the MTP block's linears go to mtp-model-Q4_0.gguf
      expect(existsSync(join(dir, 'out', 'quantized', 'mtp-model-Q4_0.gguf'))).toBe(true);
      // written with direct I/O where the addon and the file system take it; --no-direct-io: the same files through the page cache
      const addon = tryLoadAddon();
      const h = addon ? addon.directOpen(join(dir, 'probe'), 0) : -1;
      if (h >= 0) addon!.directClose(h);
      expect(s.outputs.map((o) => o.directIo)).toEqual([h >= 0, h >= 0]);
      writes.length = 0;
      expect(await run('--json', 'quantize', join(dir, 'r.yaml'), '--out', join(dir, 'paged'), '--no-direct-io')).toBe(0);
      const paged = JSON.parse(writes.filter((l) => l.trimStart().startsWith('{')).pop()!) as { outputs: QuantizeSummary[] };
      expect(paged.outputs.map((o) => o.directIo)).toEqual([false, false]);
      for (const f of ['gptq/model-00001-of-00001.safetensors', 'model-Q4_0.gguf', 'mtp-model-Q4_0.gguf']) {
        expect(readFileSync(join(dir, 'paged', f)).equals(readFileSync(join(dir, 'out', 'quantized', f))), f).toBe(true);
      }
      writes.length = 0;
      expect(await run('quantize', join(dir, 'r.yaml'), '--format', 'q8')).toBe(2);
      expect(writes.join('')).toContain('--format must be one of gptq, gguf-f32, gguf-f16, gguf-bf16, gguf-q8_0, gguf-q4_0, gguf-q4_k');
      writes.length = 0;
      expect(await run('quantize', join(dir, 'r.yaml'), '--method', 'gptq', '--format', 'gptq')).toBe(2);
      expect(writes.join('')).toContain('export.method gptq calibrates on the prepared dataset');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
