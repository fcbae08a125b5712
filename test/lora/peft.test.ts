// PEFT adapter files: the fixture's adapter (made by another tool) loads with one warning;
// save -> load is exact; F16/BF16 load; malformed adapters end in one InputError.
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { createAdapter } from '../../src/lora/adapter.js';
import { loadAdapter, peftKey, saveAdapter } from '../../src/lora/peft.js';
import { configFingerprint, parseConfig } from '../../src/model/config.js';
import { f32ToBf16Bytes, f32ToF16Bytes, bf16BytesToF32, f16BytesToF32 } from '../../src/model/formats.js';
import { f32BytesToF32 } from '../../src/model/formats.js';
import { SafetensorsFile, writeSafetensorsFile } from '../../src/model/safetensors.js';

const FIX = join(__dirname, '../../../shared/fixtures/v4-tiny-ref');
const config = parseConfig(JSON.parse(readFileSync(join(FIX, 'checkpoint/config.json'), 'utf8')), 'config.json');
const root = mkdtempSync(join(tmpdir(), 'v4tune-peft-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('the fixture adapter (PEFT, from another tool)', () => {
  it('loads with one warning: r 4, alpha 8, scaling 2, every factor with PEFT shapes', async () => {
    const warnings: string[] = [];
    const a = await loadAdapter(join(FIX, 'adapter'), { warn: (l) => warnings.push(l) });
    expect(warnings.length).toBe(1);
    expect(warnings[0]).toContain('no base config fingerprint');
    expect(a.fingerprint).toBeNull();
    expect(a.modules().length).toBe(128);
    const l = a.factors('layers.3.attn.wo_a')!;
    expect([l.r, l.in, l.out, l.scaling]).toEqual([4, 128, 64, 2]);
    expect(a.factors('layers.2.ffn.experts.5.w2')).toMatchObject({ in: 32, out: 64 });
    expect(l.B.some((x) => x !== 0)).toBe(true);
    // the values are the file's F32 bytes
    const f = SafetensorsFile.open(join(FIX, 'adapter/adapter_model.safetensors'));
    expect(Buffer.from(l.A.buffer).equals(Buffer.from(f.read(peftKey('layers.3.attn.wo_a', 'A'))))).toBe(true);
    f.close();
    expect(() => a.assertFits(config, 'fixture checkpoint')).not.toThrow();
  });
});

describe('saveAdapter / loadAdapter', () => {
  it('official layout: round-trips exactly and records the base fingerprint in adapter_config.json', async () => {
    const a = createAdapter({ config, dir: '/models/tiny' }, { r: 4, alpha: 8, targets: ['attn.wq_b', 'ffn.experts.*.w3'], rankPattern: { 'attn.wq_b': 2 }, rsLoRA: true, dropout: 0.05, seed: 9 });
    for (const m of a.modules()) a.factors(m)!.B.forEach((_, i, B) => { B[i] = Math.cos(i); });
    const dir = join(root, 'saved');
    await saveAdapter(a, dir, { layout: 'official' });
    expect(readdirSync(dir).filter((n) => !n.startsWith('.')).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 8, use_rslora: true, lora_dropout: 0.05,
      target_modules: ['attn.wq_b', 'ffn.experts.*.w3'], rank_pattern: { 'attn.wq_b': 2 }, alpha_pattern: {}, base_model_name_or_path: '/models/tiny' });
    expect(cfg.v4tune.base_config_fingerprint).toBe(configFingerprint(config));
    const f = SafetensorsFile.open(join(dir, 'adapter_model.safetensors'));
    expect(f.entries.get(peftKey('layers.1.attn.wq_b', 'A'))).toMatchObject({ dtype: 'F32', shape: [2, 32] });
    expect(f.entries.get(peftKey('layers.1.attn.wq_b', 'B'))).toMatchObject({ dtype: 'F32', shape: [256, 2] });
    f.close();
    const warnings: string[] = [];
    const b = await loadAdapter(dir, { warn: (l) => warnings.push(l) });
    expect(warnings).toEqual([]);
    expect(b.fingerprint).toBe(a.fingerprint);
    expect(b.modules()).toEqual(a.modules());
    for (const m of a.modules()) {
      const [x, y] = [a.factors(m)!, b.factors(m)!];
      expect([y.r, y.alpha, y.scaling, y.in, y.out]).toEqual([x.r, x.alpha, x.scaling, x.in, x.out]);
      expect(Buffer.from(y.A.buffer).equals(Buffer.from(x.A.buffer)) && Buffer.from(y.B.buffer).equals(Buffer.from(x.B.buffer))).toBe(true);
    }
    const other = parseConfig({ ...JSON.parse(readFileSync(join(FIX, 'checkpoint/config.json'), 'utf8')), n_routed_experts: 16 }, 'other.json');
    expect(() => b.assertFits(other, 'other base')).toThrow(InputError);
    expect(() => b.assertFits(other, 'other base')).toThrow(/other base: the adapter was made for a base with config fingerprint/);
  });

  it('transformers layout (the default): PEFT names, stacked experts with fused gate-up, exact scalings; reads back to the same modules and factors', async () => {
    const a = createAdapter({ config, dir: '/models/tiny' }, {
      r: 4, alpha: 8, targets: ['attn.wq_a', 'attn.wo_a', 'attn.wkv', 'ffn.shared_experts.w2', 'ffn.experts.*.w1', 'ffn.experts.*.w2', 'ffn.experts.*.w3', 'mtp.*.attn.wq_b'],
      rankPattern: { 'ffn.experts.*.w3': 2, 'attn.wkv': 3 }, alphaPattern: { 'attn.wkv': 5 }, rsLoRA: true, seed: 4, expertSubset: { 'layers.2': [1, 6] },
    });
    for (const m of a.modules()) a.factors(m)!.B.forEach((_, i, B) => { B[i] = Math.sin(i + m.length); });
    const dir = join(root, 'hf');
    await expect(saveAdapter(a, dir)).rejects.toThrow(/covers a subset of them, so saving it needs the base's config/);
    await saveAdapter(a, dir, { config });
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
    expect(cfg.use_rslora).toBe(false);
    expect(cfg.target_modules).toContain('model.layers.0.self_attn.q_a_proj');
    expect(cfg.target_modules).toContain('model.layers.3.mlp.shared_experts.down_proj');
    expect(cfg.target_parameters).toContain('model.layers.1.self_attn.o_a_proj.weight');
    expect(cfg.target_parameters).toContain('model.layers.2.mlp.experts.gate_up_proj');
    expect(cfg.target_parameters).toContain('model.layers.2.mlp.experts.down_proj');
    expect(cfg.rank_pattern['model\\.layers\\.0\\.mlp\\.experts\\.gate_up_proj']).toBe(6);
    expect(cfg.v4tune.not_in_transformers.modules).toEqual(['mtp.0.attn.wq_b']);
    const f = SafetensorsFile.open(join(dir, 'adapter_model.safetensors'));
    const E = config.n_routed_experts;
    expect(f.entries.get('base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight')!.shape).toEqual([6 * E, config.hidden_size]);
    expect(f.entries.get('base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.weight')!.shape).toEqual([2 * config.moe_intermediate_size, 6 * E]);
    expect(f.entries.get('base_model.model.model.layers.0.mlp.experts.lora_A.weight')!.shape).toEqual([4 * E, config.moe_intermediate_size]);
    // PEFT's ΔW[e] = s · B_e A_e with A_e = rows e·R.., B_e[o][k] = B[o][k·E + e]: expert 5 of layer 0, w3 rows
    const R = 6;
    const A = f32BytesToF32(f.read('base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight'));
    const B = f32BytesToF32(f.read('base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.weight'));
    f.close();
    const s = cfg.alpha_pattern['model\\.layers\\.0\\.mlp\\.experts\\.gate_up_proj'] / R;
    const I = config.moe_intermediate_size;
    const d = config.hidden_size;
    const want = a.delta('layers.0.ffn.experts.5.w3');
    let worst = 0;
    for (let o = 0; o < I; o++) {
      for (let i = 0; i < d; i++) {
        let x = 0;
        for (let k = 0; k < R; k++) x += B[(I + o) * R * E + k * E + 5]! * A[(5 * R + k) * d + i]!;
        worst = Math.max(worst, Math.abs(s * x - want[o * d + i]!));
      }
    }
    expect(worst).toBeLessThan(1e-6);
    const b = await loadAdapter(dir, { warn: () => {} });
    expect(b.modules()).toEqual(a.modules());
    for (const m of a.modules()) {
      const [x, y] = [a.factors(m)!, b.factors(m)!];
      expect([y.r, y.alpha, y.scaling, y.in, y.out], m).toEqual([x.r, x.alpha, x.scaling, x.in, x.out]);
      expect(Buffer.from(y.A.buffer).equals(Buffer.from(x.A.buffer)), m).toBe(true);
      // B as written, except where w3's scaling differs from w1's (rsLoRA, ranks 4 and 2): the
      // ratio folded into the fused B and taken out again rounds once each way
      const exact = !/\.w3$/.test(m);
      const err = Math.max(...x.B.map((v, i) => Math.abs(v - y.B[i]!) / Math.max(Math.abs(v), 1e-30)));
      expect(err, m).toBeLessThanOrEqual(exact ? 0 : 2 ** -22);
    }
    expect(b.options).toEqual(a.options);
  });

  it('loads F16 and BF16 factors as their float32 values', async () => {
    const src = await loadAdapter(join(FIX, 'adapter'), { warn: () => {} });
    for (const [dtype, enc, dec] of [['F16', f32ToF16Bytes, f16BytesToF32], ['BF16', f32ToBf16Bytes, bf16BytesToF32]] as const) {
      const dir = join(root, dtype);
      cpSync(join(FIX, 'adapter'), dir, { recursive: true });
      const tensors = src.modules().flatMap((m) => {
        const l = src.factors(m)!;
        return [{ name: peftKey(m, 'A'), dtype, shape: [l.r, l.in], data: enc(l.A) }, { name: peftKey(m, 'B'), dtype, shape: [l.out, l.r], data: enc(l.B) }];
      });
      writeSafetensorsFile(join(dir, 'adapter_model.safetensors'), tensors);
      const a = await loadAdapter(dir, { warn: () => {} });
      const l = a.factors('layers.1.ffn.shared_experts.w2')!;
      expect(l.B).toEqual(dec(enc(src.factors('layers.1.ffn.shared_experts.w2')!.B)));
    }
  });

  it('malformed adapters end in one InputError naming the file and tensor', async () => {
    const good = join(FIX, 'adapter');
    const variant = (name: string, patch: (dir: string) => void): string => {
      const d = join(root, name);
      cpSync(good, d, { recursive: true });
      patch(d);
      return d;
    };
    const onlyA = variant('onlyA', (d) => writeSafetensorsFile(join(d, 'adapter_model.safetensors'), [{ name: peftKey('layers.0.attn.wkv', 'A'), dtype: 'F32', shape: [4, 64], data: new Uint8Array(1024) }]));
    await expect(loadAdapter(onlyA, { warn: () => {} })).rejects.toThrow(/module layers\.0\.attn\.wkv has lora_A but no lora_B/);
    const rank = variant('rank', (d) => writeFileSync(join(d, 'adapter_config.json'), JSON.stringify({ ...JSON.parse(readFileSync(join(good, 'adapter_config.json'), 'utf8')), r: 8 })));
    await expect(loadAdapter(rank, { warn: () => {} })).rejects.toThrow(/has rank 4 but adapter_config\.json gives r = 8/);
    const notLora = variant('ia3', (d) => writeFileSync(join(d, 'adapter_config.json'), JSON.stringify({ peft_type: 'IA3' })));
    await expect(loadAdapter(notLora)).rejects.toThrow(InputError);
    await expect(loadAdapter(join(root, 'nowhere'))).rejects.toThrow(/no adapter_config\.json/);
    const broken = variant('broken', (d) => writeFileSync(join(d, 'adapter_config.json'), '{"peft_type": "LORA", '));
    await expect(loadAdapter(broken)).rejects.toThrow(new RegExp(`${join(broken, 'adapter_config.json').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not valid JSON`));
  });
});
