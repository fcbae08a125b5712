// Target patterns: dotted globs over module names without `layers.N.`, MTP only by `mtp.`
// patterns, never the indexer or the router gate, and a miss lists the nearest names.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { parseConfig } from '../../src/model/config.js';
import { adaptableModules, patternMatches, patternValue, selectTargets } from '../../src/lora/patterns.js';

const config = parseConfig(JSON.parse(readFileSync(join(__dirname, '../../../shared/fixtures/v4-tiny-ref/checkpoint/config.json'), 'utf8')), 'config.json');

describe('patternMatches', () => {
  it('matches module names with the layers.N. prefix removed, * as one component', () => {
    expect(patternMatches('attn.wq_a', 'layers.2.attn.wq_a')).toBe(true);
    expect(patternMatches('attn.wq_a', 'mtp.0.attn.wq_a')).toBe(false);
    expect(patternMatches('ffn.experts.*.w1', 'layers.0.ffn.experts.7.w1')).toBe(true);
    expect(patternMatches('ffn.experts.*.w1', 'layers.0.ffn.experts.7.w2')).toBe(false);
    expect(patternMatches('ffn.*.w1', 'layers.0.ffn.experts.7.w1')).toBe(false); // * is exactly one component
    expect(patternMatches('ffn.shared_experts.w1|w3', 'layers.1.ffn.shared_experts.w3')).toBe(true);
    expect(patternMatches('attn.wq', 'layers.1.attn.wq_a')).toBe(false);
  });
  it('reaches the MTP block only with mtp. patterns, and one layer only with layers. patterns', () => {
    expect(patternMatches('mtp.*.attn.wq_a', 'mtp.0.attn.wq_a')).toBe(true);
    expect(patternMatches('mtp.0.e_proj', 'mtp.0.e_proj')).toBe(true);
    expect(patternMatches('mtp.*.attn.wq_a', 'layers.0.attn.wq_a')).toBe(false);
    expect(patternMatches('layers.3.attn.wo_b', 'layers.3.attn.wo_b')).toBe(true);
    expect(patternMatches('layers.3.attn.wo_b', 'layers.2.attn.wo_b')).toBe(false);
  });
});

describe('selectTargets', () => {
  it('never offers indexer projections or the router gate', () => {
    const names = adaptableModules(config).map((m) => m.name);
    expect(names).toContain('layers.1.attn.compressor.wgate');
    expect(names).toContain('mtp.0.h_proj');
    expect(names.some((n) => n.includes('indexer') || n.endsWith('ffn.gate'))).toBe(false);
    expect(() => selectTargets(['attn.indexer.wq_b'], config)).toThrow(/never LoRA targets/);
    expect(() => selectTargets(['ffn.gate'], config)).toThrow(/never LoRA targets/);
  });
  it('selects in name order with shapes [out, in] (FP4 experts at their logical shape)', () => {
    const t = selectTargets(['ffn.experts.*.w2', 'attn.wo_a'], config);
    expect(t.length).toBe(4 * 8 + 4);
    expect(t.find((m) => m.name === 'layers.0.ffn.experts.3.w2')).toEqual({ name: 'layers.0.ffn.experts.3.w2', out: 64, in: 32 });
    expect(t.find((m) => m.name === 'layers.2.attn.wo_a')).toEqual({ name: 'layers.2.attn.wo_a', out: 64, in: 128 });
    expect(selectTargets(['attn.compressor.wkv'], config).map((m) => m.name)).toEqual(['layers.1.attn.compressor.wkv', 'layers.2.attn.compressor.wkv', 'layers.3.attn.compressor.wkv']);
  });
  it('a pattern that matches nothing is an InputError naming the setting and the nearest names', () => {
    let err: unknown;
    try { selectTargets(['attn.wq_a', 'attn.wqa'], config, 'recipe.yaml: lora.targets'); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(/^recipe\.yaml: lora\.targets: "attn\.wqa" matches no module of this model; nearest: attn\.wq_a, /);
    expect((err as Error).message).toContain('attn.wq_b');
    expect(() => selectTargets(['ffn.experts.w1'], config)).toThrow(/nearest: ffn\.experts\.\*\.w1/);
  });
  it('rank_pattern / alpha_pattern: the first matching pattern wins', () => {
    const m = { 'ffn.experts.*.w1|w3': 2, 'ffn.experts.*.*': 8 };
    expect(patternValue(m, 'layers.1.ffn.experts.4.w1', 16)).toBe(2);
    expect(patternValue(m, 'layers.1.ffn.experts.4.w2', 16)).toBe(8);
    expect(patternValue(m, 'layers.1.attn.wkv', 16)).toBe(16);
  });
});
