import { describe, it, expect, vi } from 'vitest';
import { mkdtempSync, writeFileSync, existsSync, readFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from '../../src/cli/main.js';

async function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => { out += String(s); return true; });
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => { err += String(s); return true; });
  process.exitCode = undefined;
  try {
    return { code: await main(['node', 'v4tune', ...args]), out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
    process.exitCode = undefined;
  }
}

describe('v4tune run', () => {
  it('creates the preset model, prepares the corpus and evaluates the base model; a second run reuses both', async () => {
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
      'output: out',
    ].join('\n'));

    const first = await cli('--json', 'run', join(dir, 'r.yaml'));
    expect(first.code, first.err).toBe(0);
    const s = JSON.parse(first.out);
    expect(s.model.created).toBe(true);
    expect(s.data.reused).toBe(false);
    expect(s.data.documents.kept).toBe(24);
    // A random model is close to uniform over the 129280-token vocabulary: loss ≈ ln(129280) ≈ 11.77.
    expect(s.eval.tokens).toBeGreaterThan(0);
    expect(Math.abs(s.eval.loss - Math.log(129280))).toBeLessThan(1.5);
    expect(s.not_built).toEqual(['train', 'merge', 'quantize']);
    expect(existsSync(join(dir, 'out', 'model', 'config.json'))).toBe(true);
    expect(JSON.parse(readFileSync(join(dir, 'out', 'run.json'), 'utf8')).eval.loss).toBe(s.eval.loss);

    const second = await cli('--json', 'run', join(dir, 'r.yaml'));
    expect(second.code).toBe(0);
    const t = JSON.parse(second.out);
    expect(t.model.created).toBe(false);
    expect(t.data.reused).toBe(true);
    expect(t.eval.loss).toBe(s.eval.loss);
  });
});
