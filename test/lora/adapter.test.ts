// createAdapter: PEFT's initialisation (Kaiming-uniform A with a = sqrt 5, zero B), seeded,
// shaped from the base's logical shapes; ΔW = scaling·B·A against a float64 reference; fma32
// (ΔW's float32 fused multiply-add) against exact integer arithmetic.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { Adapter, createAdapter, fma32 } from '../../src/lora/adapter.js';
import { mulberry32 } from '../../src/random.js';
import { loraScaling, resolveLoraOptions } from '../../src/lora/config.js';
import { parseConfig } from '../../src/model/config.js';

const FIX = join(__dirname, '../../../shared/fixtures/v4-tiny-ref');
const config = parseConfig(JSON.parse(readFileSync(join(FIX, 'checkpoint/config.json'), 'utf8')), 'config.json');
const base = { config, dir: 'checkpoint' };

// exact values as integers in units of 2^-600 (every float32 and every product of two is a
// multiple), and the float32 nearest such a value, ties to even, from its bits alone
const UNIT = 600n;
function exact(x: number): bigint {
  if (x === 0) return 0n;
  const v = new DataView(new ArrayBuffer(8));
  v.setFloat64(0, x);
  const bits = v.getBigUint64(0);
  const e = Number((bits >> 52n) & 0x7ffn);
  const m = (bits & ((1n << 52n) - 1n)) | (e ? 1n << 52n : 0n);
  const shift = BigInt((e || 1) - 1075) + UNIT;
  const mag = m << shift; // float32 values and their products sit far above 2^-600
  return x < 0 ? -mag : mag;
}
function nearestF32(v: bigint): number {
  const neg = v < 0n;
  let a = neg ? -v : v;
  const bitLen = a.toString(2).length;
  // the unit of the last of 24 significant bits, never below float32's smallest subnormal 2^-149
  const lsb = BigInt(Math.max(bitLen - 24, Number(UNIT) - 149));
  const q = a >> lsb;
  const rem = a - (q << lsb);
  const half = 1n << (lsb - 1n);
  const up = rem > half || (rem === half && (q & 1n) === 1n);
  a = (q + (up ? 1n : 0n));
  const out = Number(a) * 2 ** (Number(lsb) - Number(UNIT));
  const r = out >= 2 ** 128 ? Infinity : out;
  return neg ? -r : r;
}
// an exact zero sum is +0 unless both terms are −0 (IEEE 754, rounding to nearest)
function fmaRef(a: number, b: number, c: number): number {
  const v = exact(a) * exact(b) / (1n << UNIT) + exact(c);
  if (v === 0n) return Object.is(a * b, -0) && Object.is(c, -0) ? -0 : 0;
  return nearestF32(v);
}

describe('fma32: the float32 fused multiply-add of loraDelta', () => {
  it('equals exact a·b + c rounded once to float32 on random values of every scale and on halfway cases', () => {
    const rnd = mulberry32(11);
    const f32 = (): number => Math.fround((rnd() - 0.5) * 2 ** Math.floor(rnd() * 60 - 30));
    const cases: Array<[number, number, number]> = [];
    for (let i = 0; i < 20000; i++) cases.push([f32(), f32(), f32()]);
    // a·b + c where a·b is c's float32 halfway step plus or minus a sliver the double sum drops
    const hi = Math.fround(2 ** -24 * (1 + 2 ** -12));
    const lo = Math.fround(1 - 2 ** -12 + 2 ** -24); // hi·lo = 2^-24 + 2^-60
    for (const sc of [1, 2 ** -20, 2 ** 20, 2 ** -100, 2 ** 100]) {
      cases.push([hi * sc, lo, sc], [-hi * sc, lo, -sc], [hi * sc, -lo, sc], [hi * sc, lo, Math.fround(sc * (1 + 2 ** -23))]);
      cases.push([Math.fround(2 ** -24 * (1 - 2 ** -12)) * sc, Math.fround(1 + 2 ** -12), sc]); // 2^-24 − 2^-48: below halfway
    }
    cases.push([2 ** -140, 2 ** -9, 2 ** -149], [3.4028234663852886e38, 1, 2 ** 103], [3.4028234663852886e38, 1, 2 ** 102], [0, -1, 0], [-0, 1, -0], [1, 1, -1], [2 ** -100, 2 ** -60, 0]);
    let wrong = 0;
    for (const [a, b, c] of cases) if (!Object.is(fma32(a, b, c), fmaRef(a, b, c))) wrong++;
    expect(wrong).toBe(0);
    // the halfway case really needs the correction: rounding the double sum gives the other answer
    expect(fma32(hi, lo, 1)).toBe(1 + 2 ** -23);
    expect(Math.fround(hi * lo + 1)).toBe(1);
  });
});

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
