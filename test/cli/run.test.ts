import { describe, it, expect } from 'vitest';
import { mkdtempSync, writeFileSync, existsSync, readFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cli } from './capture.js';


describe('v4tune run', () => {
  it('creates the preset model, prepares the corpus trains the adapter with eval before and after, merges and quantizes; a second run reuses all five', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-run-'));
    mkdirSync(join(dir, 'corpus'));
    const docs = Array.from({ length: 24 }, (_, i) => `Pump ${i} was inspected; the seal on impeller ${i % 5} showed wear of ${i * 0.1} mm and was replaced.`);
    writeFileSync(join(dir, 'corpus', 'notes.jsonl'), docs.map((text) => JSON.stringify({ text })).join('\n'));
    writeFileSync(join(dir, 'r.yaml'), [
      'model: { preset: tiny }',
      'data:',
      '  sources: [{ path: corpus/*.jsonl }]',
      '  seq_len: 64',
      '  eval_fraction: 0.25',
      'train: { steps: 3, lr: 0.01, warmup_steps: 0, eval_every: 0, checkpoint_every: 0 }',
      'export: { merge: true, merge_dtype: bf16, quantize: [gguf-q4_0] }',
      'output: out',
    ].join('\n'));

    const first = await cli('--json', 'run', join(dir, 'r.yaml'));
    expect(first.code, first.err).toBe(0);
    const s = JSON.parse(first.out);
    expect(s.model.created).toBe(true);
    expect(s.data.reused).toBe(false);
    expect(s.data.documents.kept).toBe(24);
    // A random model is close to uniform over the 129280-token vocabulary: loss ≈ ln(129280) ≈ 11.77.
    expect(s.train.eval_before.tokens).toBeGreaterThan(0);
    expect(Math.abs(s.train.eval_before.loss - Math.log(129280))).toBeLessThan(1.5);
    expect(s.train.step).toBe(3);
    expect(s.train.eval_after.loss).toBeLessThan(s.train.eval_before.loss);
    expect(s.merge).toMatchObject({ reused: false, dtype: 'bf16', merged: 128 });
    expect(s.quantize.reused).toBe(false);
    expect(s.quantize.outputs[0].format).toBe('gguf-q4_0');
    expect(existsSync(join(dir, 'out', 'merged', 'config.json'))).toBe(true);
    expect(readFileSync(join(dir, 'out', 'quantized', 'model-Q4_0.gguf')).subarray(0, 4).toString()).toBe('GGUF');
    expect(s.report.reused).toBe(false);
    expect(s.report.perplexity.map((r: { stage: string }) => r.stage)).toEqual(['(a) base model', '(b) base + adapter', '(c) merged', '(d) GPTQ INT4 (read back)']);
    expect(s.report.perplexity[2].loss).toBeCloseTo(s.train.eval_after.loss, 1);
    expect(readFileSync(join(dir, 'out', 'report.md'), 'utf8')).toContain('## Perplexity before and after');
    expect(existsSync(join(dir, 'out', 'model', 'config.json'))).toBe(true);
    expect(existsSync(join(dir, 'out', 'adapter', 'adapter_model.safetensors'))).toBe(true);
    expect(JSON.parse(readFileSync(join(dir, 'out', 'run.json'), 'utf8')).train.eval_after.loss).toBe(s.train.eval_after.loss);

    const second = await cli('--json', 'run', join(dir, 'r.yaml'));
    expect(second.code).toBe(0);
    const t = JSON.parse(second.out);
    expect(t.model.created).toBe(false);
    expect(t.data.reused).toBe(true);
    expect(t.train.reused).toBe(true);
    expect(t.train.eval_after.loss).toBe(s.train.eval_after.loss);
    expect(t.merge.reused).toBe(true);
    expect(t.quantize.reused).toBe(true);
    expect(t.report.reused).toBe(true);

    // a changed export setting redoes only the stage it feeds
    writeFileSync(join(dir, 'r.yaml'), readFileSync(join(dir, 'r.yaml'), 'utf8').replace('quantize: [gguf-q4_0]', 'quantize: [gguf-q4_0, gptq], group_size: 32'));
    const third = await cli('--json', 'run', join(dir, 'r.yaml'));
    expect(third.code, third.err).toBe(0);
    const u = JSON.parse(third.out);
    expect(u.merge.reused).toBe(true);
    expect(u.quantize.reused).toBe(false);
    expect(u.report.reused).toBe(false);
    expect(existsSync(join(dir, 'out', 'quantized', 'gptq', 'config.json'))).toBe(true);
  });
});
