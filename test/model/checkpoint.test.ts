// Checkpoint: the reference fixture (written by an independent implementation) loads with the
// release's names, dtypes and shapes; both layouts read to identical tensors; bad checkpoints
// and configs end in one InputError naming the file and the tensor or field.
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { Checkpoint, copyCheckpoint, writeCheckpointFiles, type TensorPlan } from '../../src/model/checkpoint.js';
import { configFingerprint, parseConfig, parseConfigWithWarnings } from '../../src/model/config.js';
import { e8m0Decode, fp4e2m1Decode, fp8e4m3Decode } from '../../src/model/formats.js';
import { expectedTensors } from '../../src/model/layout.js';
import { SafetensorsSet } from '../../src/model/safetensors.js';

const FIXTURE = join(__dirname, '../../../shared/fixtures/v4-tiny-ref/checkpoint');
const fixtureConfig = (): Record<string, unknown> => JSON.parse(readFileSync(join(FIXTURE, 'config.json'), 'utf8'));

let ck: Checkpoint;
const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'v4tune-ck-'));
  dirs.push(d);
  return d;
}
beforeAll(async () => { ck = await Checkpoint.open(FIXTURE); });
afterAll(async () => {
  await ck.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** copy the fixture into a new folder through writeCheckpointFiles, optionally changed */
async function copyFixture(opts: { layout?: 'official' | 'transformers'; drop?: string; plan?: (p: TensorPlan) => TensorPlan; config?: Record<string, unknown> } = {}): Promise<string> {
  const d = tmp();
  writeFileSync(join(d, 'config.json'), JSON.stringify(opts.config ?? fixtureConfig()));
  const plans = ck.names().filter((n) => n !== opts.drop).map((n) => (opts.plan ? opts.plan(ck.plan(n)) : ck.plan(n)));
  await writeCheckpointFiles(d, plans, async (n) => {
    const r = await ck.raw(n);
    const p = plans.find((x) => x.name === n)!;
    const need = p.shape.reduce((a, b) => a * b, 1) * (r.data.length / r.meta.shape.reduce((a, b) => a * b, 1));
    const scaleNeed = p.scaleShape ? p.scaleShape.reduce((a, b) => a * b, 1) : 0;
    const scale = r.scale && scaleNeed !== r.scale.length ? new Uint8Array(scaleNeed).fill(127) : r.scale;
    return { data: need === r.data.length ? r.data : new Uint8Array(need), scale };
  }, { layout: opts.layout, maxShardBytes: 300_000 });
  return d;
}

const sameBits = (a: Float32Array | Int32Array, b: Float32Array | Int32Array): boolean =>
  a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;

async function rejects(p: Promise<unknown>, ...parts: string[]): Promise<void> {
  let err: unknown;
  try { await p; } catch (e) { err = e; }
  expect(err).toBeInstanceOf(InputError);
  for (const s of parts) expect((err as Error).message).toContain(s);
}

describe('the reference fixture checkpoint', () => {
  it('opens in the official layout with every tensor config.json implies', () => {
    expect(ck.layout).toBe('official');
    expect(ck.config.compress_ratios).toEqual([0, 4, 128, 4]);
    expect(ck.config.mtp_compress_ratio).toBe(0);
    expect(ck.config.expert_dtype).toBe('fp4');
    const expected = expectedTensors(ck.config).map((t) => t.name).sort();
    expect(ck.names()).toEqual(expected);
    expect(ck.names().some((n) => n.endsWith('.scale'))).toBe(false);
  });

  it('reports the release dtypes, formats and shapes', () => {
    const m = (n: string) => { const x = ck.meta(n); return [x.dtype, x.format, x.shape, x.logicalShape]; };
    expect(m('layers.1.attn.wq_b.weight')).toEqual(['F8_E4M3', 'fp8', [256, 32], [256, 32]]);
    expect(m('layers.0.ffn.experts.5.w2.weight')).toEqual(['I8', 'fp4', [64, 16], [64, 32]]);
    expect(m('layers.0.ffn.gate.tid2eid')).toEqual(['I64', 'int', [1000, 2], [1000, 2]]);
    expect(m('layers.1.ffn.gate.bias')).toEqual(['F32', 'f32', [8], [8]]);
    expect(m('layers.2.attn.compressor.ape')).toEqual(['F32', 'f32', [128, 64], [128, 64]]);
    expect(m('layers.3.attn.indexer.wq_b.weight')).toEqual(['F8_E4M3', 'fp8', [128, 32], [128, 32]]);
    expect(m('mtp.0.e_proj.weight')).toEqual(['F8_E4M3', 'fp8', [64, 64], [64, 64]]);
    expect(m('embed.weight')).toEqual(['BF16', 'bf16', [1000, 64], [1000, 64]]);
    expect(ck.plan('layers.1.attn.wq_b.weight').scaleShape).toEqual([2, 1]);
    expect(ck.plan('layers.0.ffn.experts.5.w2.weight').scaleShape).toEqual([64, 1]);
  });

  it('dequantises FP8 (block scale) and FP4 (per-32 scale) exactly as byte x scale', async () => {
    const r = await ck.raw('layers.1.attn.wq_b.weight');
    const w = await ck.f32('layers.1.attn.wq_b.weight', [256, 32]);
    for (const i of [0, 31, 32 * 128, 32 * 255 + 31]) {
      expect(w[i]).toBe(fp8e4m3Decode(r.data[i]!) * e8m0Decode(r.scale![i >= 128 * 32 ? 1 : 0]!));
    }
    const q = await ck.raw('layers.0.ffn.experts.5.w2.weight');
    const e = await ck.f32('layers.0.ffn.experts.5.w2.weight');
    for (const [row, col] of [[0, 0], [0, 1], [7, 30], [63, 31]] as const) {
      const byte = q.data[row * 16 + (col >> 1)]!;
      const nib = col & 1 ? byte >> 4 : byte & 0xf;
      expect(e[row * 32 + col]).toBe(fp4e2m1Decode(nib) * e8m0Decode(q.scale![row]!));
    }
  });

  it('reads tid2eid as expert ids and refuses a float read of it', async () => {
    const t = await ck.ints('layers.0.ffn.gate.tid2eid');
    expect(t.length).toBe(2000);
    expect(Math.min(...t)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...t)).toBeLessThan(8);
    await rejects(ck.f32('layers.0.ffn.gate.tid2eid'), 'layers.0.ffn.gate.tid2eid', 'I64');
  });

  it('names the tensor and both shapes when a caller expects another shape', async () => {
    await rejects(ck.f32('layers.0.attn.wkv.weight', [64, 32]), 'model-0000', 'layers.0.attn.wkv.weight', '[64, 64]', 'expected [64, 32]');
    await rejects(ck.f32('layers.9.attn.wkv.weight'), 'missing tensor layers.9.attn.wkv.weight');
  });
});

describe('layouts', () => {
  it('the transformers layout (renamed, experts stacked) reads to identical tensors', async () => {
    const d = await copyFixture({ layout: 'transformers' });
    const set = SafetensorsSet.open(d);
    expect(set.entry('model.layers.0.mlp.experts.gate_up_proj').shape).toEqual([8, 64, 32]);
    expect(set.entry('model.layers.0.mlp.experts.gate_up_proj_scale_inv').shape).toEqual([8, 64, 2]);
    expect(set.entry('model.layers.0.mlp.experts.down_proj').shape).toEqual([8, 64, 16]);
    expect(set.entry('model.layers.1.self_attn.compressor.indexer.q_b_proj.weight').dtype).toBe('F8_E4M3');
    expect(set.has('model.layers.1.mlp.gate.e_score_correction_bias')).toBe(true);
    expect(set.has('lm_head.weight') && set.has('model.embed_tokens.weight') && set.has('mtp.0.e_proj.weight')).toBe(true);
    set.close();
    const hf = await Checkpoint.open(d);
    expect(hf.layout).toBe('transformers');
    expect(hf.names()).toEqual(ck.names());
    for (const n of ck.names()) {
      expect(hf.meta(n).logicalShape, n).toEqual(ck.meta(n).logicalShape);
      const [a, b] = ck.meta(n).format === 'int' ? [await hf.ints(n), await ck.ints(n)] : [await hf.f32(n), await ck.f32(n)];
      expect(sameBits(a, b), n).toBe(true);
    }
    await hf.close();
  });

  it('copyCheckpoint official -> transformers -> official keeps every stored byte', async () => {
    const hfDir = join(tmp(), 'hf');
    await copyCheckpoint(ck, hfDir, { layout: 'transformers' });
    const hf = await Checkpoint.open(hfDir);
    expect(hf.layout).toBe('transformers');
    const backDir = join(tmp(), 'back');
    await copyCheckpoint(hf, backDir);
    await hf.close();
    const back = await Checkpoint.open(backDir);
    expect(back.layout).toBe('official');
    expect(back.names()).toEqual(ck.names());
    for (const n of ck.names()) {
      const [a, b] = [await ck.raw(n), await back.raw(n)];
      expect(Buffer.from(b.data).equals(Buffer.from(a.data)) && (a.scale === null ? b.scale === null : Buffer.from(b.scale!).equals(Buffer.from(a.scale))), n).toBe(true);
    }
    expect(readFileSync(join(backDir, 'config.json'), 'utf8')).toBe(readFileSync(join(FIXTURE, 'config.json'), 'utf8'));
    await back.close();
  });

  it('an official-layout copy is byte-identical tensor by tensor', async () => {
    const d = await copyFixture();
    const c2 = await Checkpoint.open(d);
    for (const n of ['layers.3.attn.indexer.compressor.ape', 'layers.2.ffn.experts.7.w3.weight', 'mtp.0.hc_head_fn']) {
      const [a, b] = [await ck.raw(n), await c2.raw(n)];
      expect(b.data).toEqual(a.data);
      expect(b.scale).toEqual(a.scale);
    }
    await c2.close();
  });
});

describe('writeCheckpointFiles with aheadBytes', () => {
  const len = (i: number): number => 1000 + 37 * i;
  const fill = (i: number, n: number): Uint8Array => new Uint8Array(n).map((_, k) => (k * 7 + i * 13) & 255);
  const plans: TensorPlan[] = Array.from({ length: 6 }, (_, i) => ({ name: `t${i}.weight`, dtype: 'U8', shape: [len(i)], scaleShape: null }));
  const index = (name: string): number => Number(name.slice(1, -'.weight'.length));
  // t1, t3 and t4 hold memory (produced in memory, each later one sooner); the others are sources read on demand
  const heldOnes = new Set(['t1.weight', 't3.weight', 't4.weight']);
  const source = (i: number) => ({ length: len(i), read: (into: Uint8Array, at: number) => into.set(fill(i, len(i)).subarray(at, at + into.length)) });

  it('writes the tensors that hold memory as soon as each is produced, in any order, and the files equal an in-order write', async () => {
    const ref = tmp();
    const refShards = await writeCheckpointFiles(ref, plans, (n) => ({ data: fill(index(n), len(index(n))), scale: null }), { maxShardBytes: 3000 });
    const out = tmp();
    const writtenOrder: string[] = [];
    const shards = await writeCheckpointFiles(out, plans, async (n) => {
      const i = index(n);
      if (!heldOnes.has(n)) return { data: source(i), scale: null };
      await new Promise((res) => setTimeout(res, 60 - 12 * i));
      return { data: fill(i, len(i)), scale: null };
    }, { ahead: 1, maxShardBytes: 3000, aheadBytes: { budget: 1 << 20, heldBytes: (n) => (heldOnes.has(n) ? len(index(n)) : 0) }, onWritten: (n) => writtenOrder.push(n) });
    expect(shards).toEqual(refShards);
    expect(shards.length).toBeGreaterThan(1);
    for (const f of [...shards, 'model.safetensors.index.json']) expect(readFileSync(join(out, f)).equals(readFileSync(join(ref, f))), f).toBe(true);
    // the later held tensors were produced sooner and written first
    expect(writtenOrder.filter((n) => heldOnes.has(n))).toEqual(['t4.weight', 't3.weight', 't1.weight']);
    expect(writtenOrder.filter((n) => !heldOnes.has(n))).toEqual(['t0.weight', 't2.weight', 't5.weight']);
  });

  it('a failure in either lane ends the write with that error once the other lane has stopped, and leaves no file', async () => {
    for (const bad of ['t3.weight', 't2.weight']) {
      const out = tmp();
      let settledAfter = 0;
      let failedAt = 0;
      const p = writeCheckpointFiles(out, plans, async (n) => {
        const i = index(n);
        if (n === bad) {
          failedAt = Date.now();
          throw new InputError(`bad tensor ${n}`);
        }
        if (!heldOnes.has(n)) return { data: source(i), scale: null };
        await new Promise((res) => setTimeout(res, 30));
        settledAfter = Date.now();
        return { data: fill(i, len(i)), scale: null };
      }, { ahead: 1, aheadBytes: { budget: 1 << 20, heldBytes: (n) => (heldOnes.has(n) ? len(index(n)) : 0) } });
      await rejects(p, `bad tensor ${bad}`);
      expect(failedAt).toBeGreaterThan(0);
      expect(settledAfter).toBeGreaterThan(0);
      expect(readdirSync(out)).toEqual([]);
    }
  });
});

describe('bad checkpoints', () => {
  it('a missing tensor is named', async () => {
    const d = await copyFixture({ drop: 'layers.2.attn.compressor.wgate.weight' });
    await rejects(Checkpoint.open(d), 'missing tensor layers.2.attn.compressor.wgate.weight');
  });

  it('an MTP block may be absent as a whole, but not in part', async () => {
    const d = tmp();
    writeFileSync(join(d, 'config.json'), JSON.stringify(fixtureConfig()));
    const plans = ck.names().filter((n) => !n.startsWith('mtp.')).map((n) => ck.plan(n));
    await writeCheckpointFiles(d, plans, async (n) => ck.raw(n));
    const c2 = await Checkpoint.open(d);
    expect(c2.has('mtp.0.e_proj.weight')).toBe(false);
    await c2.close();
    const d2 = await copyFixture({ drop: 'mtp.0.hnorm.weight' });
    await rejects(Checkpoint.open(d2), 'missing tensor mtp.0.hnorm.weight');
  });

  it('a tensor of the wrong shape is named with expected vs found', async () => {
    const d = await copyFixture({ plan: (p) => (p.name === 'layers.1.attn.q_norm.weight' ? { ...p, shape: [48] } : p) });
    await rejects(Checkpoint.open(d), 'layers.1.attn.q_norm.weight', 'shape [48]', 'expected [32]');
  });

  it('a scale of the wrong shape is named', async () => {
    const d = await copyFixture({ plan: (p) => (p.name === 'layers.0.attn.wq_b.weight' ? { ...p, scaleShape: [1, 1] } : p) });
    const bad = Checkpoint.open(d);
    await rejects(bad, 'layers.0.attn.wq_b.weight', 'scale layers.0.attn.wq_b.scale', 'expected [2, 1]');
  });

  it('an FP4 scale with the right element count but transposed shape is named', async () => {
    const name = 'layers.0.ffn.experts.5.w2.weight';
    const d = await copyFixture({ plan: (p) => (p.name === name ? { ...p, scaleShape: [...p.scaleShape!].reverse() } : p) });
    await rejects(Checkpoint.open(d), name, 'scale layers.0.ffn.experts.5.w2.scale', 'has shape [1, 64]', 'expected [64, 1]');
  });

  it('a config whose sizes disagree with each other names config.json and the fields', async () => {
    const d = tmp();
    cpSync(FIXTURE, d, { recursive: true });
    writeFileSync(join(d, 'config.json'), JSON.stringify({ ...fixtureConfig(), o_groups: 3 }));
    await rejects(Checkpoint.open(d), join(d, 'config.json'), 'o_groups (3) must divide num_attention_heads (4)');
  });

  it('a config whose sizes disagree with the weights names the tensor', async () => {
    const d = tmp();
    cpSync(FIXTURE, d, { recursive: true });
    writeFileSync(join(d, 'config.json'), JSON.stringify({ ...fixtureConfig(), q_lora_rank: 48 }));
    await rejects(Checkpoint.open(d), 'layers.0.attn.q_norm.weight', 'expected [48]');
  });

  it('a folder without config.json is not a model folder', async () => {
    await rejects(Checkpoint.open(tmp()), 'no config.json');
  });
});

describe('config.json', () => {
  it('cuts compress_ratios to the layers and keeps the next entry as the MTP ratio', () => {
    const c = parseConfig({ ...fixtureConfig(), compress_ratios: [0, 4, 128, 4, 128, 0, 0] }, 'c.json');
    expect(c.compress_ratios).toEqual([0, 4, 128, 4]);
    expect(c.mtp_compress_ratio).toBe(128);
    expect(c.rope_scaling).toEqual({ type: 'yarn', factor: 16, original_max_position_embeddings: 65536, beta_fast: 32, beta_slow: 1 });
    expect(c.quantization_config).toMatchObject({ weight_block_size: [128, 128], scale_fmt: 'ue8m0' });
  });

  it('refuses inconsistent or malformed fields, naming the file and field', () => {
    const bad: Array<[Record<string, unknown>, string]> = [
      [{ qk_rope_head_dim: 80 }, 'qk_rope_head_dim (80) exceeds head_dim (64)'],
      [{ num_experts_per_tok: 9 }, 'num_experts_per_tok (9) exceeds n_routed_experts (8)'],
      [{ compress_ratios: [0, 4] }, 'compress_ratios has 2 entries'],
      [{ hidden_size: 'big' }, 'hidden_size must be a number'],
      [{ num_hidden_layers: 2.5 }, 'num_hidden_layers must be an integer'],
      [{ vocab_size: undefined }, 'missing field vocab_size'],
      [{ eos_token_id: 1000 }, 'eos_token_id (1000) is not below vocab_size (1000)'],
      [{ moe_intermediate_size: 40 }, 'moe_intermediate_size (40) must be a multiple of 32'],
      [{ compress_ratios: undefined }, 'missing field compress_ratios'],
      [{ hc_sinkhorn_iters: 1e9 }, 'hc_sinkhorn_iters must be <= 1000 (got 1000000000)'],
      [{ hidden_size: 2 ** 30 }, `hidden_size must be <= ${2 ** 24}`],
      [{ max_position_embeddings: 0 }, 'max_position_embeddings must be >= 1'],
    ];
    for (const [patch, msg] of bad) {
      expect(() => parseConfig({ ...fixtureConfig(), ...patch }, 'cfg.json'), msg).toThrow(InputError);
      expect(() => parseConfig({ ...fixtureConfig(), ...patch }, 'cfg.json')).toThrow(`cfg.json: ${msg}`);
    }
  });

  it('warns (only) when index_head_dim is not a multiple of 64', () => {
    expect(parseConfigWithWarnings(fixtureConfig(), 'c.json').warnings).toEqual([]);
    const w = parseConfigWithWarnings({ ...fixtureConfig(), index_head_dim: 32 }, 'c.json').warnings;
    expect(w.join()).toContain('index_head_dim 32 is not a multiple of 64');
  });

  it('fingerprints the architecture, not the key order or non-shape fields', () => {
    const a = parseConfig(fixtureConfig(), 'a');
    const reordered = Object.fromEntries(Object.entries(fixtureConfig()).reverse());
    expect(configFingerprint(parseConfig({ ...reordered, rope_theta: 5000 }, 'b'))).toBe(configFingerprint(a));
    expect(configFingerprint(parseConfig({ ...fixtureConfig(), n_routed_experts: 16 }, 'c'))).not.toBe(configFingerprint(a));
    expect(configFingerprint(a)).toMatch(/^[0-9a-f]{16}$/);
  });
});
