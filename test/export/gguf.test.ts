// GGUF export: the file is read back by a GGUF v3 parser written here from the spec (ggml
// docs/gguf.md), and Q4_0 blocks are checked against llama.cpp's rounding re-derived here.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GgmlType, GgufType, GgufWriter, quantizeQ4_0, readGgufHeader } from '../../src/export/gguf.js';
import { ggufName, linearKind, quantizeCheckpoint, type QuantizeSummary } from '../../src/export/quantize.js';
import { deepseek4Vocab } from '../../src/export/llama-deepseek4.js';
import { InputError } from '../../src/errors.js';
import { Checkpoint } from '../../src/model/checkpoint.js';
import { f16Decode, f16Encode, f32ToF16Bytes } from '../../src/model/formats.js';
import { writeSmallBpeTokenizer } from './bpe-fixture.js';
import { keptBf16AsF16 } from '../../src/export/kept.js';
import { initModel } from '../../src/model/init.js';

const FIXTURE = join(__dirname, '../../../shared/fixtures/v4-tiny-ref/checkpoint');

interface Parsed {
  magic: string;
  version: number;
  kv: Map<string, unknown>;
  tensors: { name: string; dims: number[]; type: number; offset: number }[];
  dataStart: number;
  buf: Buffer;
}

// GGUF v3 from the spec: magic, u32 version, u64 tensor count, u64 kv count, kvs, tensor infos, aligned data
function parseGguf(buf: Buffer): Parsed {
  let p = 0;
  const u32 = (): number => { const v = buf.readUInt32LE(p); p += 4; return v; };
  const u64 = (): number => { const v = Number(buf.readBigUInt64LE(p)); p += 8; return v; };
  const str = (): string => { const n = u64(); const s = buf.toString('utf8', p, p + n); p += n; return s; };
  const value = (t: number): unknown => {
    switch (t) {
      case 0: return buf.readUInt8(p++);
      case 1: return buf.readInt8(p++);
      case 4: return u32();
      case 5: { const v = buf.readInt32LE(p); p += 4; return v; }
      case 6: { const v = buf.readFloatLE(p); p += 4; return v; }
      case 7: return buf.readUInt8(p++) !== 0;
      case 8: return str();
      case 9: { const it = u32(); const n = u64(); return Array.from({ length: n }, () => value(it)); }
      case 10: return u64();
      case 12: { const v = buf.readDoubleLE(p); p += 8; return v; }
      default: throw new Error(`value type ${t} not expected in this file`);
    }
  };
  const magic = buf.toString('latin1', 0, 4);
  p = 4;
  const version = u32();
  const nT = u64();
  const nKv = u64();
  const kv = new Map<string, unknown>();
  for (let i = 0; i < nKv; i++) {
    const k = str();
    kv.set(k, value(u32()));
  }
  const tensors = [];
  for (let i = 0; i < nT; i++) {
    const name = str();
    const nd = u32();
    const dims = Array.from({ length: nd }, () => u64());
    tensors.push({ name, dims, type: u32(), offset: u64() });
  }
  const alignment = (kv.get('general.alignment') as number | undefined) ?? 32;
  return { magic, version, kv, tensors, dataStart: Math.ceil(p / alignment) * alignment, buf };
}

// half bits → value from the format
function half(h: number): number {
  const e = (h >> 10) & 31;
  const m = h & 1023;
  const v = e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15);
  return h & 0x8000 ? -v : v;
}

// Q4_0 block (18 bytes: f16 d, 16 bytes; element j in the low nibble of byte j, j+16 in the high nibble)
function dequantBlocks(b: Buffer, n: number): { w: Float64Array; d: Float64Array } {
  const w = new Float64Array(n);
  const d = new Float64Array(n / 32);
  for (let k = 0; k < n / 32; k++) {
    d[k] = half(b.readUInt16LE(18 * k));
    for (let j = 0; j < 16; j++) {
      const byte = b[18 * k + 2 + j]!;
      w[32 * k + j] = ((byte & 15) - 8) * d[k]!;
      w[32 * k + 16 + j] = ((byte >> 4) - 8) * d[k]!;
    }
  }
  return { w, d };
}

describe('Q4_0 blocks (llama.cpp layout and rounding)', () => {
  it('match llama.cpp\'s reference rounding: d = m/−8 of the signed max-magnitude value, q = min(15, ⌊x/d + 8.5⌋)', () => {
    const x = new Float32Array(96);
    for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 1.7) * (1 + (i % 7));
    x[40] = -9.5; // block 1's extreme is negative
    for (let i = 64; i < 96; i++) x[i] = 0; // an all-zero block
    const b = Buffer.from(quantizeQ4_0(x));
    expect(b.length).toBe(3 * 18);
    for (let k = 0; k < 3; k++) {
      let m = 0;
      for (let j = 0; j < 32; j++) if (Math.abs(x[32 * k + j]!) > Math.abs(m)) m = x[32 * k + j]!;
      const d = Math.fround(m / -8);
      expect(Math.abs(half(b.readUInt16LE(18 * k)) - d)).toBeLessThanOrEqual(Math.abs(d) * 2 ** -11);
      for (let j = 0; j < 32; j++) {
        const id = d === 0 ? 0 : Math.fround(1 / d);
        const q = Math.min(15, Math.floor(Math.fround(Math.fround(x[32 * k + j]! * id) + 8.5)));
        const byte = b[18 * k + 2 + (j % 16)]!;
        expect(j < 16 ? byte & 15 : byte >> 4).toBe(q);
      }
    }
    const { w } = dequantBlocks(b, 96);
    for (let i = 64; i < 96; i++) expect(w[i] === 0).toBe(true); // ±0: d = −0/8 is stored as f16 −0, like llama.cpp
  });
});

describe('F16 tensors (gguf-f16, and the F16 matrices of the other formats)', () => {
  it('f32ToF16Bytes (from the f32 bits) gives f16Encode\'s code for every 4099th f32 bit pattern and around every f16 code (nearest, ties to even, subnormals, overflow to inf)', () => {
    const u = new Uint32Array(1_048_576 + 6 * 0x7c00 + 8);
    let k = 0;
    for (let b = 0; b < 2 ** 32 && k < 1_048_576; b += 4099) u[k++] = b;
    const f = new Float32Array(u.buffer);
    const one = new Float32Array(1);
    const oneBits = new Uint32Array(one.buffer);
    for (let h = 0; h < 0x7c00; h++) {
      one[0] = f16Decode(h);
      // the code's value, the f32 just below and just above it, both signs
      for (const d of [-1, 0, 1]) for (const sign of [0, 0x80000000]) u[k++] = ((oneBits[0]! + d) | sign) >>> 0;
    }
    // halfway cases: 1 + 2^-11 (tie, to even 1), 1 + 3·2^-11 (tie, up), 2^-25 (tie, to 0), 65520 (to inf)
    for (const x of [1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -25, 3 * 2 ** -25, 65520, 65519, Infinity, NaN]) f[k++] = x;
    const bytes = f32ToF16Bytes(f.subarray(0, k));
    let bad = 0;
    for (let i = 0; i < k; i++) if ((bytes[2 * i]! | (bytes[2 * i + 1]! << 8)) !== f16Encode(f[i]!)) bad++;
    expect(bad).toBe(0);
    expect(k).toBeGreaterThan(1_100_000);
  });
});

describe('kept BF16 tensors converted to F16 in row chunks (the embedding and head)', () => {
  it('keptBf16AsF16 gives the bytes of the whole-tensor conversion, and names a NaN by its place in the whole', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-kept-'));
    try {
      await initModel({ preset: 'tiny', out: join(dir, 'm'), seed: 3, vocabSize: 1000, tokenizer: false });
      const ck = await Checkpoint.open(join(dir, 'm'));
      try {
        const want = f32ToF16Bytes(await ck.f32('embed.weight')); // [1000, 64] BF16
        for (const floats of [64 * 7, 100, 64 * 1000]) { // 7 rows a chunk (a short last one), 1 row, all
          expect(Buffer.from(await keptBf16AsF16(ck, 'embed.weight', new Float32Array(floats))).equals(Buffer.from(want)), `${floats}`).toBe(true);
        }
      } finally {
        await ck.close();
      }
      // a NaN at row 300, column 5 of the stored bytes
      const index = JSON.parse(readFileSync(join(dir, 'm', 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
      const file = join(dir, 'm', index.weight_map['embed.weight']!);
      const b = readFileSync(file);
      const n = Number(b.readBigUInt64LE(0));
      const e = (JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<string, { data_offsets: [number, number] }>)['embed.weight']!;
      b.writeUInt16LE(0x7fc0, 8 + n + e.data_offsets[0] + 2 * (300 * 64 + 5));
      writeFileSync(file, b);
      const bad = await Checkpoint.open(join(dir, 'm'));
      try {
        await expect(keptBf16AsF16(bad, 'embed.weight', new Float32Array(64 * 7))).rejects.toThrow(`tensor embed.weight holds NaN at element ${300 * 64 + 5}; nothing written`);
      } finally {
        await bad.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('GGUF vocabulary input', () => {
  it('a tokenizer.json or tokenizer_config.json that is not JSON is refused naming the file', () => {
    const d = mkdtempSync(join(tmpdir(), 'v4tune-gguf-vocab-'));
    try {
      writeFileSync(join(d, 'tokenizer.json'), '{"model": {"type": "BPE"');
      expect(() => deepseek4Vocab(d, 16)).toThrow(InputError);
      expect(() => deepseek4Vocab(d, 16)).toThrow(`${join(d, 'tokenizer.json')}: not valid JSON`);
      writeSmallBpeTokenizer(d);
      writeFileSync(join(d, 'tokenizer_config.json'), '{"bos_token": ');
      expect(() => deepseek4Vocab(d, 1 << 20)).toThrow(`${join(d, 'tokenizer_config.json')}: not valid JSON`);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});

describe('GGUF writer', () => {
  it('writes every KV type, tensor infos with aligned offsets, and the data after the aligned header', () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-gguf-'));
    try {
      const path = join(dir, 'a.gguf');
      const w = new GgufWriter(path, [
        { key: 'general.architecture', type: GgufType.STRING, value: 'deepseek4' },
        { key: 'general.alignment', type: GgufType.UINT32, value: 64 },
        { key: 'x.f', type: GgufType.FLOAT32, value: 0.5 },
        { key: 'x.b', type: GgufType.BOOL, value: true },
        { key: 'x.arr', type: GgufType.ARRAY, itemType: GgufType.UINT32, value: [0, 4, 128] },
        { key: 'x.u64', type: GgufType.UINT64, value: 2n ** 40n },
      ], [
        { name: 'a', dims: [3], type: GgmlType.F32 },
        { name: 'b', dims: [32, 2], type: GgmlType.Q4_0 },
      ]);
      w.add('a', new Uint8Array(new Float32Array([1, 2, 3]).buffer));
      w.add('b', quantizeQ4_0(new Float32Array(64).fill(1)));
      const size = w.finish();
      const f = parseGguf(readFileSync(path));
      expect(f.magic).toBe('GGUF');
      expect(f.version).toBe(3);
      expect([...f.kv.entries()]).toEqual([['general.architecture', 'deepseek4'], ['general.alignment', 64], ['x.f', 0.5], ['x.b', true], ['x.arr', [0, 4, 128]], ['x.u64', 2 ** 40]]);
      expect(f.tensors).toEqual([{ name: 'a', dims: [3], type: 0, offset: 0 }, { name: 'b', dims: [32, 2], type: 2, offset: 64 }]);
      expect(f.dataStart % 64).toBe(0);
      expect(f.buf.length).toBe(size);
      expect(f.buf.length).toBe(f.dataStart + 64 + 2 * 18 + (64 - 36));
      expect(f.buf.readFloatLE(f.dataStart + 8)).toBe(3);
      expect(dequantBlocks(f.buf.subarray(f.dataStart + 64), 64).w.every((v) => v === 1)).toBe(true);
      const h = readGgufHeader(path);
      expect(h.dataStart).toBe(f.dataStart);
      expect(h.tensors).toEqual(f.tensors);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the header reader (1 MiB at a time) reads a value longer than its chunk and fields across chunk ends, as the independent parser does', () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-gguf-'));
    try {
      const path = join(dir, 'long.gguf');
      const long = 'ß'.repeat(1_600_000); // 3.2 MB of UTF-8 in one string
      const words = Array.from({ length: 200_000 }, (_, i) => `w${i * 7919}`); // ≈ 2.6 MB of short strings
      const w = new GgufWriter(path, [
        { key: 'x.long', type: GgufType.STRING, value: long },
        { key: 'x.words', type: GgufType.ARRAY, itemType: GgufType.STRING, value: words },
        { key: 'x.ints', type: GgufType.ARRAY, itemType: GgufType.INT32, value: words.map((_, i) => i - 100_000) },
      ], [{ name: 'a', dims: [3], type: GgmlType.F32 }]);
      w.add('a', new Uint8Array(new Float32Array([1, 2, 3]).buffer));
      w.finish();
      const f = parseGguf(readFileSync(path));
      const h = readGgufHeader(path);
      expect(h.kv.get('x.long')!.value).toBe(long);
      expect(h.kv.get('x.words')!.value).toEqual(words);
      expect(h.kv.get('x.ints')!.value).toEqual(f.kv.get('x.ints'));
      expect(h.tensors).toEqual(f.tensors);
      expect(h.dataStart).toBe(f.dataStart);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('addAsync writes the bytes add writes (zero padding between and after the tensors), in flight together', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-gguf-'));
    try {
      const infos = [
        { name: 'a', dims: [3], type: GgmlType.F32 },
        { name: 'b', dims: [32, 2], type: GgmlType.Q4_0 },
        { name: 'c', dims: [5], type: GgmlType.F32 },
      ];
      const data = [new Uint8Array(new Float32Array([1, 2, 3]).buffer), quantizeQ4_0(new Float32Array(64).fill(-2)), new Uint8Array(new Float32Array([4, 5, 6, 7, 8]).buffer)];
      const kvs = [{ key: 'general.alignment', type: GgufType.UINT32, value: 32 }];
      const sync = new GgufWriter(join(dir, 'sync.gguf'), kvs, infos);
      infos.forEach((t, i) => sync.add(t.name, data[i]!));
      const syncSize = sync.finish();
      const w = new GgufWriter(join(dir, 'async.gguf'), kvs, infos);
      await Promise.all(infos.map((t, i) => w.addAsync(t.name, data[i]!)));
      expect(w.finish()).toBe(syncSize);
      const a = readFileSync(join(dir, 'async.gguf'));
      expect(a.equals(readFileSync(join(dir, 'sync.gguf')))).toBe(true);
      const f = parseGguf(a);
      expect(f.tensors.map((t) => t.offset)).toEqual([0, 32, 96]);
      expect(a.subarray(f.dataStart + 12, f.dataStart + 32).every((b) => b === 0)).toBe(true);
      expect(a.length).toBe(f.dataStart + 128);
      expect(a.readFloatLE(f.dataStart + 96 + 16)).toBe(8);
      // a tensor given in pieces (a stacked tensor's experts) lands as the whole does
      const p = new GgufWriter(join(dir, 'pieces.gguf'), kvs, infos);
      await p.addAsync('a', [data[0]!.subarray(0, 4), data[0]!.subarray(4, 4), data[0]!.subarray(4)]);
      await p.addAsync('b', [data[1]!.subarray(0, 18), data[1]!.subarray(18)]);
      await p.addAsync('c', [data[2]!]);
      expect(p.finish()).toBe(syncSize);
      expect(readFileSync(join(dir, 'pieces.gguf')).equals(a)).toBe(true);
      // with direct I/O (where the addon and the file system take it) the padding is written, not left as a hole: the same bytes
      const d = new GgufWriter(join(dir, 'direct.gguf'), kvs, infos, { directIo: true });
      await Promise.all(infos.map((t, i) => d.addAsync(t.name, data[i]!)));
      expect(d.finish()).toBe(syncSize);
      expect(readFileSync(join(dir, 'direct.gguf')).equals(a)).toBe(true);
      const q = new GgufWriter(join(dir, 'short.gguf'), kvs, infos);
      await expect(q.addAsync('a', [data[0]!.subarray(0, 8)])).rejects.toThrow('a has 8 bytes, its info needs 12');
      q.abort();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses tensors added out of order or with the wrong size, and leaves no file behind', () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-gguf-'));
    try {
      const path = join(dir, 'b.gguf');
      const w = new GgufWriter(path, [], [{ name: 'a', dims: [2], type: GgmlType.F32 }]);
      expect(() => w.add('z', new Uint8Array(8))).toThrow(/expected tensor a next/);
      expect(() => w.add('a', new Uint8Array(4))).toThrow(/needs 8/);
      w.abort();
      expect(() => readFileSync(path)).toThrow();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('quantize → GGUF Q4_0 (v4-tiny-ref fixture)', () => {
  let dir: string;
  let src: string;
  let out: string;
  let summary: QuantizeSummary;
  let f: Parsed;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'v4tune-gguf-'));
    src = join(dir, 'model');
    cpSync(FIXTURE, src, { recursive: true });
    writeSmallBpeTokenizer(src);
    out = join(dir, 'model-Q4_0.gguf');
    summary = await quantizeCheckpoint({ model: src, out, format: 'gguf-q4_0', method: 'rtn', groupSize: 128 });
    f = parseGguf(readFileSync(out));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('has the deepseek4 header: magic, version 3, counts, architecture and hyperparameters', () => {
    expect(f.magic).toBe('GGUF');
    expect(f.version).toBe(3);
    expect(f.kv.get('general.architecture')).toBe('deepseek4');
    expect(f.kv.get('general.alignment')).toBe(32);
    expect(f.kv.get('deepseek4.block_count')).toBe(4);
    expect(f.kv.get('deepseek4.embedding_length')).toBe(64);
    expect(f.kv.get('deepseek4.expert_count')).toBe(8);
    expect(f.kv.get('deepseek4.expert_used_count')).toBe(2);
    expect(f.kv.get('deepseek4.attention.head_count')).toBe(4);
    expect(f.kv.get('deepseek4.attention.compress_ratios')).toEqual([0, 4, 128, 4, 0]); // one per layer, then the MTP block's
    expect(f.kv.get('deepseek4.attention.output_group_count')).toBe(2);
    expect(f.kv.get('deepseek4.swiglu_clamp_exp')).toEqual([1.5, 1.5, 1.5, 1.5]);
    expect(f.kv.get('deepseek4.expert_gating_func')).toBe(4);
    expect(f.kv.get('tokenizer.ggml.model')).toBe('gpt2');
    expect((f.kv.get('tokenizer.ggml.tokens') as string[]).length).toBe(1000);
    expect(f.kv.get('deepseek4.rope.freq_base')).toBe(10000);
    // stacked routed experts: one tensor per layer per projection; the MTP block (quantised too) is in mtp-<file>
    const expertsPerLayer = 3;
    expect(summary.tensorsQuantized).toBe(5 * (5 + 3 + 24));
    expect(f.tensors.filter((t) => /^blk\.\d+\.ffn_(gate|up|down)_exps\.weight$/.test(t.name))).toHaveLength(4 * expertsPerLayer);
    expect(f.tensors.some((t) => t.name.startsWith('mtp') || t.name.startsWith('blk.4.'))).toBe(false);
    expect(summary.tensorsSkipped).toBe(0);
  });

  it('every tensor: llama.cpp name, type, reversed shape, aligned offsets in order, inside the file', async () => {
    const c = await Checkpoint.open(src);
    try {
      const byName = new Map(f.tensors.map((t) => [t.name, t]));
      let end = 0;
      for (const t of f.tensors) {
        expect(t.offset % 32).toBe(0);
        expect(t.offset).toBeGreaterThanOrEqual(end);
        const n = t.dims.reduce((a, b) => a * b, 1);
        end = t.offset + (t.type === 2 ? (n / 32) * 18 : t.type === 1 ? 2 * n : 4 * n);
      }
      expect(f.dataStart + end).toBeLessThanOrEqual(f.buf.length);
      for (const n of c.names()) {
        const g = ggufName(n);
        if (g === null) continue;
        const t = byName.get(g)!;
        expect(t, n).toBeDefined();
        const shape = c.meta(n).logicalShape;
        const stacked = /\.experts\.\d+\./.test(n);
        expect(t.dims).toEqual(stacked ? [...shape].reverse().concat([8]) : [...shape].reverse());
        const want = linearKind(n) ? GgmlType.Q4_0 : c.meta(n).format === 'int' ? GgmlType.I32 : c.meta(n).format === 'f32' || shape.length === 1 ? GgmlType.F32 : GgmlType.F16;
        expect(t.type, n).toBe(want);
      }
      expect(byName.get('blk.0.attn_q_a.weight')).toBeDefined();
      expect(byName.get('blk.1.indexer.attn_q_b.weight')).toBeDefined();
      expect(byName.get('token_embd.weight')!.dims).toEqual([64, 1000]);
      expect(byName.get('output_hc_fn.weight')!.type).toBe(GgmlType.F32);
    } finally {
      await c.close();
    }
  });

  it('Q4_0 blocks dequantise within |d| (+ the f16 rounding of d) of every weight, experts stacked in order', async () => {
    const c = await Checkpoint.open(src);
    try {
      const byName = new Map(f.tensors.map((t) => [t.name, t]));
      for (const n of c.names().filter((x) => linearKind(x) && ggufName(x))) {
        const t = byName.get(ggufName(n)!)!;
        const w = await c.f32(n);
        const e = /\.experts\.(\d+)\./.exec(n);
        const at = f.dataStart + t.offset + (e ? Number(e[1]) * (w.length / 32) * 18 : 0);
        const { w: r, d } = dequantBlocks(f.buf.subarray(at, at + (w.length / 32) * 18), w.length);
        for (let i = 0; i < w.length; i++) {
          const dk = Math.abs(d[Math.floor(i / 32)]!);
          const err = Math.abs(r[i]! - w[i]!);
          if (!(err <= dk * (1 + 8 * 2 ** -11) + 1e-12)) throw new Error(`${n}[${i}]: |err| ${err} > |d| ${dk}`);
        }
      }
      const t = byName.get('blk.0.ffn_gate_tid2eid.weight')!;
      expect(t.type).toBe(GgmlType.I32);
      const ids = await c.ints('layers.0.ffn.gate.tid2eid');
      expect(f.buf.readInt32LE(f.dataStart + t.offset + 4 * 5)).toBe(ids[5]);
    } finally {
      await c.close();
    }
    expect(summary.errors.routed_expert!.relRmsError).toBeLessThan(0.25);
  });
});
