// Seeded fuzzing of the headers v4tune reads from other tools: a few hundred mutated
// safetensors files, PEFT adapters and GGUF files (bytes flipped, lengths and counts replaced,
// truncations). Every case must end as success or a V4tuneError (exit 1 or 2) naming the file —
// never an internal error, a hang or unbounded memory. Same seed, same cases.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { V4tuneError } from '../../src/errors.js';
import { GgmlType, GgufType, GgufWriter, quantizeQ4_0, readGgufHeader, readGgufTensor } from '../../src/export/gguf.js';
import { createAdapter } from '../../src/lora/adapter.js';
import { ADAPTER_CONFIG, ADAPTER_WEIGHTS, loadAdapter, saveAdapter } from '../../src/lora/peft.js';
import { parseConfig } from '../../src/model/config.js';
import { presetConfigJson } from '../../src/model/init.js';
import { SafetensorsFile, writeSafetensorsFile } from '../../src/model/safetensors.js';
import { mulberry32 } from '../../src/random.js';

const SEED = 20261205;
/** RSS growth allowed over the whole run: a mutated length must never be allocated as asked. */
const MAX_RSS_GROWTH = 1024 * 1024 * 1024;

let dir: string;
let safetensorsBytes: Buffer;
let adapterDir: string;
let ggufBytes: Buffer;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'v4tune-fuzz-'));
  const st = join(dir, 'base.safetensors');
  writeSafetensorsFile(st, [
    { name: 'a.weight', dtype: 'F32', shape: [4, 3], data: new Uint8Array(48).fill(1) },
    { name: 'b.weight', dtype: 'BF16', shape: [8], data: new Uint8Array(16).fill(2) },
    { name: 'c.scale', dtype: 'F8_E8M0', shape: [2, 1], data: new Uint8Array([127, 128]) },
  ]);
  safetensorsBytes = readFileSync(st);
  const config = parseConfig(presetConfigJson('tiny', 'fp8'), 'tiny');
  adapterDir = join(dir, 'adapter');
  await saveAdapter(createAdapter({ config }, { r: 2, alpha: 4, seed: 1, targets: ['attn.wq_a', 'attn.wo_b'] }), adapterDir);
  const gg = join(dir, 'base.gguf');
  const w = new GgufWriter(gg, [
    { key: 'general.architecture', type: GgufType.STRING, value: 'deepseek4' },
    { key: 'deepseek4.attention.compress_ratios', type: GgufType.ARRAY, itemType: GgufType.UINT32, value: [0, 4, 128] },
    { key: 'tokenizer.ggml.tokens', type: GgufType.ARRAY, itemType: GgufType.STRING, value: ['<s>', 'a', 'b'] },
  ], [
    { name: 'token_embd.weight', dims: [4, 2], type: GgmlType.F32 },
    { name: 'blk.0.attn_q.weight', dims: [32, 2], type: GgmlType.Q4_0 },
  ]);
  w.add('token_embd.weight', new Uint8Array(32));
  w.add('blk.0.attn_q.weight', quantizeQ4_0(new Float32Array(64).fill(0.5)));
  w.finish();
  ggufBytes = readFileSync(gg);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Rng = () => number;
const pick = (rng: Rng, n: number): number => Math.floor(rng() * n);

/** One mutation of `b` within its first `head` bytes (where the headers are). */
function mutate(b: Buffer, head: number, rng: Rng): Buffer {
  const out = Buffer.from(b);
  switch (pick(rng, 5)) {
    case 0: { // flip a few bytes
      for (let k = 1 + pick(rng, 4); k > 0; k--) out[pick(rng, Math.min(head, out.length))] = pick(rng, 256);
      return out;
    }
    case 1: { // a u64 length or count replaced by something huge or off by a little
      const at = pick(rng, Math.max(1, Math.min(head, out.length) - 8));
      const vals = [0n, 1n, 2n ** 63n - 1n, 2n ** 64n - 1n, BigInt(out.length), BigInt(out.length) + 1n, 2n ** 31n, 2n ** 40n];
      out.writeBigUInt64LE(vals[pick(rng, vals.length)]!, at);
      return out;
    }
    case 2: // truncated
      return out.subarray(0, pick(rng, out.length));
    case 3: { // a JSON-ish token spliced in
      const tokens = ['"', '{', '}', ']', '[', ',', '-1', '1e309', 'null', '"F8_E4M3"', '[99999999999,1]', '"data_offsets"'];
      const at = pick(rng, Math.min(head, out.length));
      return Buffer.concat([out.subarray(0, at), Buffer.from(tokens[pick(rng, tokens.length)]!), out.subarray(at)]);
    }
    default: { // a u32 (type or dimension count) replaced
      const at = pick(rng, Math.max(1, Math.min(head, out.length) - 4));
      out.writeUInt32LE([0, 1, 4, 5, 9, 13, 255, 0xffffffff][pick(rng, 8)]!, at);
      return out;
    }
  }
}

interface Outcome { ok: number; refused: number; internal: string[] }

function attempt(o: Outcome, label: string, fn: () => unknown): void {
  try {
    fn();
    o.ok++;
  } catch (e) {
    if (e instanceof V4tuneError && (e.exitCode === 1 || e.exitCode === 2)) o.refused++;
    else o.internal.push(`${label}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
  }
}

async function attemptAsync(o: Outcome, label: string, fn: () => Promise<unknown>): Promise<void> {
  try {
    await fn();
    o.ok++;
  } catch (e) {
    if (e instanceof V4tuneError && (e.exitCode === 1 || e.exitCode === 2)) o.refused++;
    else o.internal.push(`${label}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
  }
}

describe('fuzzed headers end in success or a clear refusal', () => {
  const rss0 = process.memoryUsage().rss;
  let peak = rss0;
  const sample = () => { peak = Math.max(peak, process.memoryUsage().rss); };

  it('200 mutated safetensors files', () => {
    const rng = mulberry32(SEED);
    const o: Outcome = { ok: 0, refused: 0, internal: [] };
    const headLen = 8 + Number(safetensorsBytes.readBigUInt64LE(0));
    for (let i = 0; i < 200; i++) {
      const p = join(dir, `st-${i}.safetensors`);
      writeFileSync(p, mutate(safetensorsBytes, headLen, rng));
      attempt(o, `case ${i}`, () => {
        const f = SafetensorsFile.open(p);
        try {
          for (const k of f.entries.keys()) f.read(k);
        } finally {
          f.close();
        }
      });
      rmSync(p);
      sample();
    }
    expect(o.internal).toEqual([]);
    expect(o.refused).toBeGreaterThan(100); // the mutations do break most headers
    expect(peak - rss0).toBeLessThan(MAX_RSS_GROWTH);
  });

  it('100 mutated PEFT adapters (weights header and adapter_config.json)', async () => {
    const rng = mulberry32(SEED + 1);
    const o: Outcome = { ok: 0, refused: 0, internal: [] };
    const weights = readFileSync(join(adapterDir, ADAPTER_WEIGHTS));
    const cfg = readFileSync(join(adapterDir, ADAPTER_CONFIG));
    const headLen = 8 + Number(weights.readBigUInt64LE(0));
    for (let i = 0; i < 100; i++) {
      const d = join(dir, `ad-${i}`);
      mkdirSync(d);
      const onConfig = rng() < 0.3;
      writeFileSync(join(d, ADAPTER_WEIGHTS), onConfig ? weights : mutate(weights, headLen, rng));
      if (onConfig) writeFileSync(join(d, ADAPTER_CONFIG), mutate(cfg, cfg.length, rng));
      else copyFileSync(join(adapterDir, ADAPTER_CONFIG), join(d, ADAPTER_CONFIG));
      await attemptAsync(o, `case ${i}`, () => loadAdapter(d, { warn: () => {} }));
      rmSync(d, { recursive: true });
      sample();
    }
    expect(o.internal).toEqual([]);
    expect(o.refused).toBeGreaterThan(30);
    expect(peak - rss0).toBeLessThan(MAX_RSS_GROWTH);
  });

  it('150 mutated GGUF files', () => {
    const rng = mulberry32(SEED + 2);
    const o: Outcome = { ok: 0, refused: 0, internal: [] };
    const headLen = readGgufHeader(join(dir, 'base.gguf')).dataStart;
    for (let i = 0; i < 150; i++) {
      const p = join(dir, `g-${i}.gguf`);
      writeFileSync(p, mutate(ggufBytes, headLen, rng));
      attempt(o, `case ${i}`, () => {
        const f = readGgufHeader(p);
        for (const t of f.tensors) readGgufTensor(p, f, t);
      });
      rmSync(p);
      sample();
    }
    expect(o.internal).toEqual([]);
    expect(o.refused).toBeGreaterThan(50);
    expect(peak - rss0).toBeLessThan(MAX_RSS_GROWTH);
  });
});
