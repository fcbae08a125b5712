import { describe, it, expect } from 'vitest';
import { mkdtempSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cli } from './capture.js';
import { writeTinyRun } from './tiny-run.js';


describe('v4tune run', () => {
  it('creates the preset model, prepares the corpus, trains the adapter with eval before and after, merges, quantizes and reports; a second run reuses all six', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-run-'));
    const file = writeTinyRun(dir, 'export: { merge: true, merge_dtype: bf16, quantize: [gguf-q4_0] }');

    const first = await cli('--json', 'run', file);
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

    const second = await cli('--json', 'run', file);
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
    writeFileSync(file, readFileSync(file, 'utf8').replace('quantize: [gguf-q4_0]', 'quantize: [gguf-q4_0, gptq], group_size: 32'));
    const third = await cli('--json', 'run', file);
    expect(third.code, third.err).toBe(0);
    const u = JSON.parse(third.out);
    expect(u.merge.reused).toBe(true);
    expect(u.quantize.reused).toBe(false);
    expect(u.report.reused).toBe(false);
    expect(existsSync(join(dir, 'out', 'quantized', 'gptq', 'config.json'))).toBe(true);
  });
});
