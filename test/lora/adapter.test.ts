// createAdapter: PEFT's initialisation (Kaiming-uniform A with a = sqrt 5, zero B), seeded,
// shaped from the base's logical shapes; ΔW = scaling·B·A against a float64 reference.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { Adapter, createAdapter } from '../../src/lora/adapter.js';
import { loraScaling, resolveLoraOptions } from '../../src/lora/config.js';
import { parseConfig } from '../../src/model/config.js';

const FIX = join(__dirname, '../../../shared/fixtures/v4-tiny-ref');
const config = parseConfig(JSON.parse(readFileSync(join(FIX, 'checkpoint/config.json'), 'utf8')), 'config.json');
const base = { config, dir: 'checkpoint' };

describe('createAdapter', () => {
  it('default targets give the fixture adapter modules with its shapes (PEFT keys)', () => {
    const a = createAdapter(base, { r: 4, alpha: 8 });
    const buf = readFileSync(join(FIX, 'adapter/adapter_model.safetensors'));
    const header = JSON.parse(buf.subarray(8, 8 + Number(buf.readBigUInt64LE(0))).toString()) as Record<string, { shape: number[] }>;
    const expected = new Map<string, number[]>();
    for (const [k, v] of Object.entries(header)) if (k !== '__metadata__') expected.set(k, v.shape);
    const got = new Map<string, number[]>();
    for (const m of a.modules()) {
      const l = a.factors(m)!;
      got.set(`base_model.model.${m}.lora_A.weight`, [l.r, l.in]);
      got.set(`base_model.model.${m}.lora_B.weight`, [l.out, l.r]);
    }
    expect([...got.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [k, s] of expected) expect(got.get(k), k).toEqual(s);
    expect(a.factors('layers.0.attn.wq_a')!.scaling).toBe(2);
  });

  it('initialises A ~ U(±1/sqrt(in)) (kaiming_uniform, a = sqrt 5) and B = 0', () => {
    const a = createAdapter(base, { r: 8, alpha: 16, targets: ['ffn.experts.*.w2', 'attn.wo_a'], seed: 3 });
    for (const m of a.modules()) {
      const l = a.factors(m)!;
      const bound = 1 / Math.sqrt(l.in);
      expect(l.B.every((x) => x === 0)).toBe(true);
      expect(l.A.every((x) => Math.abs(x) <= bound)).toBe(true);
    }
    // pooled: uniform on ±1/sqrt(in) has variance 1/(3·in)
    const all = a.modules().filter((m) => m.includes('experts')).map((m) => a.factors(m)!.A);
    let s2 = 0, n = 0;
    for (const A of all) for (const x of A) { s2 += x * x * 32 * 3; n++; }
    expect(s2 / n).toBeGreaterThan(0.93);
    expect(s2 / n).toBeLessThan(1.07);
  });

  it('is deterministic per seed, independent of the target order', () => {
    const a = createAdapter(base, { r: 4, alpha: 8, targets: ['attn.wkv', 'attn.wq_a'], seed: 5 });
    const b = createAdapter(base, { r: 4, alpha: 8, targets: ['attn.wq_a', 'attn.wkv'], seed: 5 });
    const c = createAdapter(base, { r: 4, alpha: 8, targets: ['attn.wq_a', 'attn.wkv'], seed: 6 });
    for (const m of a.modules()) expect(b.factors(m)!.A).toEqual(a.factors(m)!.A);
    expect(c.factors('layers.1.attn.wkv')!.A).not.toEqual(a.factors('layers.1.attn.wkv')!.A);
  });

  it('applies rank/alpha patterns and rsLoRA scaling', () => {
    const a = createAdapter(base, { r: 4, alpha: 8, targets: ['attn.wq_a', 'ffn.experts.*.w1'], rankPattern: { 'ffn.experts.*.w1': 16 }, alphaPattern: { 'attn.*': 2 }, rsLoRA: true });
    expect(a.factors('layers.0.ffn.experts.2.w1')).toMatchObject({ r: 16, alpha: 8, scaling: 8 / 4 });
    expect(a.factors('layers.0.attn.wq_a')).toMatchObject({ r: 4, alpha: 2, scaling: 1 });
    expect(loraScaling(8, 4, false)).toBe(2);
    expect(loraScaling(8, 16, true)).toBe(2);
  });

  it('an expert subset keeps adapters only on the listed experts of the listed blocks', () => {
    const a = createAdapter(base, { r: 2, alpha: 2, targets: ['ffn.experts.*.w1', 'attn.wkv'], expertSubset: { 'layers.1': [2, 5] } });
    expect(a.modules().filter((m) => m.startsWith('layers.1.ffn.'))).toEqual(['layers.1.ffn.experts.2.w1', 'layers.1.ffn.experts.5.w1']);
    expect(a.modules().filter((m) => m.startsWith('layers.0.ffn.')).length).toBe(8);
    expect(a.modules()).toContain('layers.1.attn.wkv');
    expect(() => createAdapter(base, { r: 2, alpha: 2, expertSubset: { 'block1': [1] } })).toThrow(/layers\.3 or mtp\.0/);
  });

  it('delta is scaling·B·A (float64 reference)', () => {
    const a = createAdapter(base, { r: 3, alpha: 6, targets: ['attn.wq_a'], seed: 1 });
    const l = a.factors('layers.0.attn.wq_a')! as { B: Float32Array; A: Float32Array; r: number; in: number; out: number; scaling: number };
    l.B.forEach((_, i) => { l.B[i] = Math.sin(i + 1); });
    const d = a.delta('layers.0.attn.wq_a');
    let maxErr = 0;
    for (let o = 0; o < l.out; o++) for (let i = 0; i < l.in; i++) {
      let ref = 0;
      for (let k = 0; k < l.r; k++) ref += l.B[o * l.r + k]! * l.A[k * l.in + i]!;
      maxErr = Math.max(maxErr, Math.abs(d[o * l.in + i]! - 2 * ref));
    }
    expect(maxErr).toBeLessThan(1e-6);
  });

  it('refuses a base with another fingerprint or other shapes, and bad options', () => {
    const a = createAdapter(base, { r: 2, alpha: 2, targets: ['attn.wq_a'] });
    expect(() => a.assertFits(config, 'base')).not.toThrow();
    const other = parseConfig({ ...JSON.parse(readFileSync(join(FIX, 'checkpoint/config.json'), 'utf8')), q_lora_rank: 64 }, 'other.json');
    expect(() => a.assertFits(other, 'other')).toThrow(/config fingerprint/);
    const foreign = new Adapter(a.options, new Map(a.layers), '', null);
    expect(() => foreign.assertFits(other, 'other')).toThrow(/layers\.0\.attn\.wq_a is \[64, 64\] in the base but the adapter's B·A is \[32, 64\]/);
    expect(() => resolveLoraOptions({ r: 0, alpha: 1 })).toThrow(InputError);
    expect(() => resolveLoraOptions({ r: 2, alpha: 1, dropout: 1 })).toThrow(/dropout/);
    expect(() => resolveLoraOptions({ r: 2, alpha: 1, targets: [] })).toThrow(/targets/);
  });
});
