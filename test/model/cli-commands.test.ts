// The eval and generate verbs: sampling rules, the tokenizer requirement, greedy generation on a
// tiny preset model, and eval's loss over a prepared dataset.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Command } from 'commander';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { register as registerGenerate } from '../../src/cli/commands/generate.js';
import { sampleToken, seededRandom } from '../../src/model/generate.js';
import { evaluate } from '../../src/train/evaluate.js';
import { prepareDataset } from '../../src/data/prepare.js';
import { initModel } from '../../src/model/init.js';
import { loadModel } from '../../src/model/load.js';
import { FIXTURE } from './fixture.js';


async function runGenerate(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const program = new Command('v4tune').exitOverride().option('--json').option('-q, --quiet');
  registerGenerate(program);
  let out = '';
  let err = '';
  const so = vi.spyOn(process.stdout, 'write').mockImplementation((s) => ((out += String(s)), true));
  const se = vi.spyOn(process.stderr, 'write').mockImplementation((s) => ((err += String(s)), true));
  process.exitCode = 0;
  try {
    await program.parseAsync(['node', 'v4tune', '--quiet', 'generate', ...args]);
  } finally {
    so.mockRestore();
    se.mockRestore();
  }
  const code = typeof process.exitCode === 'number' ? process.exitCode : 0;
  process.exitCode = 0;
  return { code, out, err };
}

describe('sampling', () => {
  it('greedy takes the argmax, ties to the lower id', () => {
    expect(sampleToken(Float32Array.from([1, 3, 3, 2]), 0, 1, () => 0.5)).toBe(1);
  });
  it('top-p keeps the smallest set reaching p; a tiny p is greedy', () => {
    const l = Float32Array.from([0, 5, 1, 4.9]);
    for (let i = 0; i < 20; i++) expect(sampleToken(l, 1, 1e-6, seededRandom(i))).toBe(1);
    const seen = new Set<number>();
    for (let i = 0; i < 200; i++) seen.add(sampleToken(l, 1, 0.9, seededRandom(i)));
    expect([...seen].sort()).toEqual([1, 3]);
  });
  it('the same seed gives the same draws', () => {
    const l = Float32Array.from([0.1, 0.2, 0.3, 0.4]);
    const a = Array.from({ length: 10 }, (_, i) => sampleToken(l, 1, 1, seededRandom(i)));
    const b = Array.from({ length: 10 }, (_, i) => sampleToken(l, 1, 1, seededRandom(i)));
    expect(a).toEqual(b);
  });
});

describe('generate and eval on a tiny preset model', { timeout: 120_000 }, () => {
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'v4tune-gen-'));
    await initModel({ preset: 'tiny', out: join(dir, 'model'), seed: 1 });
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('a model folder without a tokenizer is bad input naming the folder (exit 2)', async () => {
    const ck = join(FIXTURE, 'checkpoint');
    const r = await runGenerate(['--model', ck, '--prompt', 'hi']);
    expect(r.code).toBe(2);
    expect(r.err).toContain(ck);
    expect(r.err).toContain('tokenizer');
  });

  it('greedy generation is deterministic and prints prompt + completion', async () => {
    const args = ['--model', join(dir, 'model'), '--prompt', 'The sea', '--max-new-tokens', '3', '--backend', 'tfjs'];
    const a = await runGenerate(args);
    const b = await runGenerate(args);
    expect(a.code).toBe(0);
    expect(a.out.startsWith('The sea')).toBe(true);
    expect(a.out).toBe(b.out);
  });

  it('eval: loss, perplexity and counted tokens over the eval split', async () => {
    const corpusDir = join(dir, 'corpus');
    mkdirSync(corpusDir);
    for (let i = 0; i < 12; i++) writeFileSync(join(corpusDir, `doc${i}.txt`), `Document ${i}: the tide rises and falls ${i} times.`);
    const corpus = join(corpusDir, '*.txt');
    const data = join(dir, 'data');
    await prepareDataset({
      tokenizer: join(dir, 'model', 'tokenizer.json'), sources: [{ path: corpus, format: 'text', text_field: 'text' }],
      seq_len: 32, packing: true, eval_fraction: 0.3, seed: 0, shard_rows: 100, dedup: true, output: data, workers: 1, vocabSize: 129280,
    });
    const model = await loadModel(join(dir, 'model'), { backend: 'tfjs' });
    try {
      const s = await evaluate(model, data);
      expect(s.rows).toBeGreaterThan(0);
      expect(s.tokens).toBeGreaterThan(0);
      expect(Number.isFinite(s.loss)).toBe(true);
      expect(s.perplexity).toBeCloseTo(Math.exp(s.loss), 6);
      // random weights: the loss is near ln(vocab)
      expect(Math.abs(s.loss - Math.log(129280))).toBeLessThan(2);
    } finally {
      model.dispose();
    }
  });
});
