// init-model: the tiny preset is a complete V4 checkpoint as shipped (FP8 + FP4 + scales,
// tid2eid, MTP, tokenizer), loads through Checkpoint.open, is well-conditioned, and the same
// seed gives byte-identical files.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { Checkpoint } from '../../src/model/checkpoint.js';
import { initModel, initTensorBytes, initValues, PRESETS, presetConfigJson, storedPlan } from '../../src/model/init.js';
import { BufferPool } from '../../src/model/buffer-pool.js';
import { tryLoadAddon } from '../../src/backend/native/addon.js';
import { parseConfig } from '../../src/model/config.js';
import { expectedTensors } from '../../src/model/layout.js';

const root = mkdtempSync(join(tmpdir(), 'v4tune-init-'));
const A = join(root, 'a'), B = join(root, 'b'), C = join(root, 'c'), F = join(root, 'bf16');
beforeAll(async () => {
  await initModel({ preset: 'tiny', out: A, seed: 7 });
  await initModel({ preset: 'tiny', out: B, seed: 7 });
  await initModel({ preset: 'tiny', out: C, seed: 8, tokenizer: false });
  await initModel({ preset: 'tiny', out: F, seed: 7, format: 'bf16', tokenizer: false });
}, 60_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

const files = (d: string) => readdirSync(d).sort();

describe('init-model tiny', () => {
  it('writes config, sharded safetensors with an index, and the tokenizer files', () => {
    expect(files(A)).toEqual(['.v4tune-output.json', 'config.json', 'model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors', 'model.safetensors.index.json', 'tokenizer.json', 'tokenizer_config.json']);
    const tok = JSON.parse(readFileSync(join(A, 'tokenizer.json'), 'utf8')) as { added_tokens: Array<{ id: number; content: string; special: boolean }> };
    expect(tok.added_tokens.find((t) => t.id === 128822)).toMatchObject({ content: '</think>', special: true });
  });

  it('same seed gives byte-identical files; another seed gives other weights', () => {
    for (const f of files(A)) expect(readFileSync(join(A, f)).equals(readFileSync(join(B, f))), f).toBe(true);
    expect(readFileSync(join(A, 'model-00003-of-00003.safetensors')).equals(readFileSync(join(C, 'model-00003-of-00003.safetensors')))).toBe(false);
    expect(readFileSync(join(A, 'config.json')).equals(readFileSync(join(C, 'config.json')))).toBe(true);
  });

  it('exercises every V4 feature and loads through Checkpoint.open', async () => {
    const ck = await Checkpoint.open(A);
    const c = ck.config;
    expect(c.vocab_size).toBe(129280);
    expect(c.compress_ratios).toEqual([0, 4, 128, 4]);
    expect(c.num_hash_layers).toBe(1);
    expect(c.index_head_dim % 64).toBe(0);
    expect(c.num_nextn_predict_layers).toBe(1);
    expect(ck.names()).toEqual(expectedTensors(c).map((t) => t.name));
    expect(ck.meta('layers.1.attn.wq_a.weight').format).toBe('fp8');
    expect(ck.meta('layers.1.ffn.shared_experts.w2.weight').format).toBe('fp8');
    expect(ck.meta('layers.1.ffn.experts.0.w1.weight')).toMatchObject({ dtype: 'I8', format: 'fp4', shape: [32, 32], logicalShape: [32, 64] });
    expect(ck.meta('layers.0.ffn.gate.tid2eid').dtype).toBe('I64');
    expect(ck.meta('layers.1.ffn.gate.bias').dtype).toBe('F32');
    expect(ck.meta('layers.0.hc_attn_fn').dtype).toBe('F32');
    expect(ck.meta('layers.0.attn_norm.weight').dtype).toBe('BF16');
    expect(ck.has('layers.3.attn.indexer.wq_b.weight') && ck.has('layers.2.attn.compressor.ape') && !ck.has('layers.2.attn.indexer.wq_b.weight')).toBe(true);
    expect(ck.has('mtp.0.e_proj.weight') && ck.has('mtp.0.ffn.gate.bias')).toBe(true);
    const t = await ck.ints('layers.0.ffn.gate.tid2eid');
    for (let v = 0; v < 1000; v++) {
      expect(t[2 * v]).not.toBe(t[2 * v + 1]);
      expect(t[2 * v]! >= 0 && t[2 * v]! < 8).toBe(true);
    }
    await ck.close();
  });

  it('is well-conditioned: linear weights ~ N(0, 1/fan_in) after quantisation, norms ~ 1', async () => {
    const ck = await Checkpoint.open(A);
    const rms = (x: Float32Array) => Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length);
    const mean = (x: Float32Array) => x.reduce((a, v) => a + v, 0) / x.length;
    expect(rms(await ck.f32('layers.1.attn.wq_b.weight')) * Math.sqrt(32)).toBeCloseTo(1, 1);
    expect(rms(await ck.f32('layers.1.attn.wo_a.weight')) * Math.sqrt(128)).toBeCloseTo(1, 1);
    expect(rms(await ck.f32('layers.2.ffn.experts.3.w2.weight')) * Math.sqrt(32)).toBeGreaterThan(0.8);
    expect(rms(await ck.f32('layers.2.ffn.experts.3.w2.weight')) * Math.sqrt(32)).toBeLessThan(1.2);
    expect(mean(await ck.f32('layers.0.attn_norm.weight'))).toBeCloseTo(1, 1);
    expect(rms(await ck.f32('layers.0.hc_attn_fn')) * 16).toBeCloseTo(1, 1);
    await ck.close();
  });

  it("every tensor holds the TypeScript encoders' bytes (init-model encodes on the addon where it is built)", async () => {
    expect(tryLoadAddon() !== null || process.env.CI !== 'true', 'CI builds the addon').toBe(true);
    for (const [dir, format, seed] of [[A, 'fp8', 7], [F, 'bf16', 7]] as const) {
      const ck = await Checkpoint.open(dir);
      let checked = 0;
      for (const t of expectedTensors(ck.config)) {
        const want = initTensorBytes(t, storedPlan(t, format), ck.config, seed);
        const got = await ck.raw(t.name);
        expect(Buffer.from(got.data).equals(Buffer.from(want.data)), `${format} ${t.name}`).toBe(true);
        expect(got.scale === null ? null : Buffer.from(got.scale).equals(Buffer.from(want.scale!)), `${format} ${t.name} scale`).toBe(want.scale === null ? null : true);
        checked++;
      }
      expect(checked).toBeGreaterThan(50);
      await ck.close();
    }
  });

  it('values drawn into a reused buffer (NaN-filled) equal fresh ones for every kind of tensor; the buffer pool lends by length within its byte bound', () => {
    const config = parseConfig(presetConfigJson('tiny', 'fp8'), 'tiny');
    const kinds = new Map<string, ReturnType<typeof expectedTensors>[number]>();
    for (const t of expectedTensors(config)) kinds.set(t.name.replace(/\d+/g, 'N').replace(/^.*\./, ''), t);
    expect(kinds.size).toBeGreaterThan(10);
    for (const t of kinds.values()) {
      const fresh = initValues(t, 5);
      const dirty = new Float32Array(fresh.length).fill(NaN);
      expect(initValues(t, 5, dirty), t.name).toEqual(fresh);
    }
    expect(() => initValues([...kinds.values()][0]!, 5, new Float32Array(3))).toThrow('has');
    const pool = new BufferPool<Float32Array>((n) => new Float32Array(n), 64);
    const a = pool.take(8);
    pool.give(a);
    expect(pool.take(8)).toBe(a); // the same buffer again
    expect(pool.take(8)).not.toBe(a); // lent once
    pool.give(a);
    pool.give(new Float32Array(12)); // 32 + 48 bytes > 64: the older (a) is dropped
    expect(pool.take(8)).not.toBe(a);
    const big = new Float32Array(32); // 128 bytes, over the bound: never kept
    pool.give(big);
    expect(pool.take(32)).not.toBe(big);
  });

  it('the compiled package draws on worker threads (3 of them, tiny) and writes the same files; a tensor a worker cannot draw is refused, naming it; a worker stopped mid-draw fails its tensor', async () => {
    // worker threads load compiled JavaScript: this runs dist/ (built by npm ci / npm run build)
    const dist = join(import.meta.dirname, '../../dist/model/init.js');
    if (!existsSync(dist)) throw new Error(`${dist} is missing: run \`npm run build\` first`);
    const compiled = (await import(dist)) as typeof import('../../src/model/init.js');
    expect(compiled.ValueWorkers.available()).toBe(true);
    const W = join(root, 'workers');
    await compiled.initModel({ preset: 'tiny', out: W, seed: 7, workers: 3 });
    expect(files(W)).toEqual(files(A));
    for (const f of files(A)) if (f.endsWith('.safetensors')) expect(readFileSync(join(W, f)).equals(readFileSync(join(A, f))), f).toBe(true);
    // a tensor the workers cannot draw (a shape whose element count disagrees with its buffer)
    const pool = new compiled.ValueWorkers(1);
    try {
      const t = expectedTensors(parseConfig(presetConfigJson('tiny', 'fp8'), 'tiny')).find((x) => x.shape.length === 2)!;
      await expect(pool.values(t, 1, new Float32Array(5))).rejects.toThrow(`init-model: drawing ${t.name}: initValues: ${t.name} has`);
      // the worker is still there after a refusal; stopped while drawing, its tensor fails instead of waiting forever
      const embed = expectedTensors(parseConfig(presetConfigJson('tiny', 'fp8'), 'tiny')).find((x) => x.name === 'embed.weight')!;
      const n = embed.shape.reduce((a, b) => a * b, 1);
      expect((await pool.values(t, 1, new Float32Array(t.shape.reduce((a, b) => a * b, 1)))).length).toBeGreaterThan(0);
      const drawing = pool.values(embed, 1, new Float32Array(n));
      await pool.close();
      await expect(drawing).rejects.toThrow('init-model: drawing embed.weight: the worker stopped');
      await expect(pool.values(embed, 1, new Float32Array(n))).rejects.toThrow('init-model: the value workers were closed');
    } finally {
      await pool.close();
    }
  });

  it('bf16 format stores every weight as BF16 with the same values as fp8 before quantisation', async () => {
    const ck = await Checkpoint.open(F);
    expect(ck.config.expert_dtype).toBeNull();
    expect(ck.config.quantization_config).toBeNull();
    expect(ck.meta('layers.1.ffn.experts.0.w1.weight')).toMatchObject({ dtype: 'BF16', format: 'bf16' });
    expect(ck.meta('layers.1.attn.wq_a.weight').dtype).toBe('BF16');
    const q = await Checkpoint.open(A);
    const a = await q.f32('layers.1.attn.wq_a.weight');
    const b = await ck.f32('layers.1.attn.wq_a.weight');
    let maxErr = 0;
    for (let i = 0; i < a.length; i++) maxErr = Math.max(maxErr, Math.abs(a[i]! - b[i]!) / Math.max(Math.abs(b[i]!), 2 ** -10));
    expect(maxErr).toBeLessThan(2 ** -4 + 2 ** -8);
    await ck.close();
    await q.close();
  });

  it('refuses an unknown preset, format or seed with InputError', async () => {
    await expect(initModel({ preset: 'huge' as 'tiny', out: join(root, 'x') })).rejects.toThrow(InputError);
    await expect(initModel({ preset: 'tiny', out: join(root, 'x'), format: 'int4' as 'fp8' })).rejects.toThrow(/--format/);
    await expect(initModel({ preset: 'tiny', out: join(root, 'x'), seed: -1 })).rejects.toThrow(/--seed/);
    expect(existsSync(join(root, 'x'))).toBe(false);
  });

  it('the small preset is a valid V4 config at benchmark size', () => {
    const c = parseConfig(presetConfigJson('small', 'fp8'), 'small');
    expect([c.hidden_size, c.n_routed_experts, c.moe_intermediate_size, c.head_dim, c.vocab_size]).toEqual([512, 16, 256, 128, 129280]);
    expect(c.index_head_dim % 64).toBe(0);
    expect(Object.keys(PRESETS)).toEqual(['tiny', 'small', 'flash']);
  });
});
