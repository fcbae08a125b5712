// `v4tune report`: the run report of a tiny end-to-end run (preset tiny, 3 steps, merge bf16,
// GPTQ group 32), with the perplexity of every stage, the GPTQ folder read back through
// GptqCheckpoint, and the reports of a run that stopped after prepare and of a missing run.
import { Command } from 'commander';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { register } from '../../src/cli/commands/report.js';
import { main } from '../../src/cli/main.js';
import { dequantizeInt4, quantizeRtn } from '../../src/export/int4.js';
import { Checkpoint } from '../../src/model/checkpoint.js';
import { GptqCheckpoint } from '../../src/model/gptq-source.js';
import type { PerplexityRow, RunReport } from '../../src/report/types.js';
import { capture, type CliResult } from '../cli/capture.js';
import { writeTinyRun } from '../cli/tiny-run.js';


/** the report verb on a fresh program (main.ts registers it separately) */
function report(...args: string[]): Promise<CliResult> {
  return capture(async () => {
    const p = new Command().option('--json').option('--quiet').exitOverride();
    register(p);
    await p.parseAsync(['node', 'v4tune', ...args]);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  });
}


const stage = (r: RunReport, s: PerplexityRow['stage']): PerplexityRow => r.perplexity.rows.find((x) => x.stage === s)!;

describe('v4tune report after a full run', () => {
  let dir: string;
  let recipe: string;
  let rep: RunReport & { report: string };
  let md: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'v4tune-report-'));
    recipe = writeTinyRun(dir, 'export: { merge: true, merge_dtype: bf16, quantize: [gptq], group_size: 32 }');
    const run = await capture(() => main(['node', 'v4tune', '--quiet', 'run', recipe]));
    expect(run.code, run.err).toBe(0);
    const r = await report('--json', 'report', recipe);
    expect(r.code, r.err).toBe(0);
    rep = JSON.parse(r.out);
    md = readFileSync(join(dir, 'out', 'report.md'), 'utf8');
  });

  it('writes report.md with every section, and --json prints the same content', () => {
    expect(rep.report).toBe(join(dir, 'out', 'report.md'));
    for (const h of ['## Recipe', '## Model', '## Data', '## Training', '## Adapter', '## Export', '### Merge', '### Quantized', '## Perplexity before and after']) expect(md).toContain(h);
    for (const s of [rep.model, rep.data, rep.training, rep.adapter, rep.export.merge, rep.export.quantized[0]!]) expect(s.status).toBe('ok');
    expect(md).not.toContain('not run');
    expect(rep.recipe).toMatchObject({ name: 'tiny-run', seeds: { model: 0, data: 0, lora: 0, train: 0 } });
    if (rep.model.status !== 'ok' || rep.training.status !== 'ok' || rep.adapter.status !== 'ok' || rep.data.status !== 'ok') throw new Error('unreachable');
    expect(rep.model).toMatchObject({ source: 'preset tiny (seed 0, fp8)', layers: 4, routedExperts: 8 });
    expect(rep.data.documents.kept).toBe(24);
    expect(rep.training).toMatchObject({ step: 3, steps: 3, interrupted: false });
    expect(rep.training.lossCurve.map((p) => p.step)).toEqual([1, 2, 3]);
    expect(rep.adapter).toMatchObject({ modules: 128, r: 8 });
    const q = rep.export.quantized[0]!;
    expect(q.format).toBe('gptq');
    if (q.status !== 'ok') throw new Error('unreachable');
    expect(q.groupSize).toBe(32);
    expect(q.compression).toBeGreaterThan(0);
    expect(Object.keys(q.errors).sort()).toEqual(['attention', 'routed_expert', 'shared_expert']);
    expect(md).toContain(`| (c) merged | ${(stage(rep, 'merged') as { loss: number }).loss.toFixed(4)} |`);
  });

  it('gives a finite perplexity = exp(loss) on the same tokens for base, base + adapter, merged and GPTQ', () => {
    expect(rep.perplexity.rows.map((r) => r.stage)).toEqual(['base', 'adapter', 'merged', 'gptq']);
    const tokens = new Set<number>();
    for (const r of rep.perplexity.rows) {
      if (r.status !== 'ok') throw new Error(`${r.stage}: ${r.reason}`);
      expect(Number.isFinite(r.perplexity)).toBe(true);
      expect(r.perplexity).toBeCloseTo(Math.exp(r.loss), 6);
      tokens.add(r.tokens);
    }
    expect(tokens.size).toBe(1);
    // train evaluated the whole eval split: its numbers are reused for (a) and (b)
    expect(stage(rep, 'base')).toMatchObject({ from: 'train.json' });
    expect(stage(rep, 'adapter')).toMatchObject({ from: 'train.json' });
    expect(stage(rep, 'merged')).toMatchObject({ from: 'computed' });
  });

  // INT4 moves the tiny preset (hidden 64, group 32: 8% relative RMS weight error) by about
  // 0.1 nat on these 177 eval tokens (+10% perplexity; the quickstart's 17k tokens: +0.3%), so the
  // bound is in nats; a wrong read-back (zero offset, transposed codes) moves it by whole nats.
  it('the merged model scores as base + adapter (within bf16 rounding), and GPTQ INT4 close to merged', () => {
    const ev = (s: PerplexityRow['stage']): { loss: number; perplexity: number } => stage(rep, s) as { loss: number; perplexity: number };
    expect(Math.abs(ev('merged').perplexity / ev('adapter').perplexity - 1)).toBeLessThan(1e-2);
    expect(Math.abs(ev('gptq').loss - ev('merged').loss)).toBeLessThan(0.2);
    expect(Math.abs(ev('gptq').loss - ev('merged').loss)).toBeLessThan(Math.abs(ev('base').loss - ev('merged').loss) / 5);
  });

  it('reads the GPTQ weights back exactly as dequantizeInt4 of the codes quantizeRtn gives for the merged weight', async () => {
    const g = await GptqCheckpoint.open(join(dir, 'out', 'quantized', 'gptq'));
    const m = await Checkpoint.open(join(dir, 'out', 'merged'));
    try {
      expect(g.quantizedNames().length).toBe(155); // 5 blocks × 32 linears, wo_a kept unquantised (GPTQModel's deepseek_v4 layout)
      expect(g.names()).toEqual(m.names());
      for (const name of ['layers.1.attn.wq_b.weight', 'layers.2.ffn.experts.5.w2.weight']) {
        const [out, inF] = m.meta(name).logicalShape as [number, number];
        const codes = quantizeRtn(await m.f32(name), out, inF, 32);
        const back = await g.f32(name);
        expect(g.meta(name).logicalShape).toEqual([out, inF]);
        expect(Array.from(g.int4(name).q)).toEqual(Array.from(codes.q));
        expect(Array.from(g.int4(name).zeros)).toEqual(Array.from(codes.zeros));
        expect(Array.from(back)).toEqual(Array.from(dequantizeInt4(codes)));
      }
      // a kept tensor reads as the merged model's
      expect(Array.from(await g.f32('layers.0.attn_norm.weight'))).toEqual(Array.from(await m.f32('layers.0.attn_norm.weight')));
    } finally {
      await g.close();
      await m.close();
    }
  });

  it('--eval-rows caps the rows and computes every stage on them', async () => {
    const r = await report('--json', 'report', recipe, '--eval-rows', '1');
    expect(r.code, r.err).toBe(0);
    const s: RunReport = JSON.parse(r.out);
    expect(s.perplexity.evalRows).toBe(1);
    for (const row of s.perplexity.rows) expect(row).toMatchObject({ status: 'ok', rows: 1, from: 'computed' });
    const bad = await report('report', recipe, '--eval-rows', '0');
    expect(bad.code).toBe(2);
  });
});

describe('v4tune report before the run is done', () => {
  it('after prepare only: the model and data sections, the base perplexity, and the later stages "not run"', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-report-prep-'));
    const recipe = writeTinyRun(dir, 'export: { merge: true, merge_dtype: bf16, quantize: [gptq, gguf-q4_0], group_size: 32 }');
    const init = await capture(() => main(['node', 'v4tune', '--quiet', 'init-model', '--preset', 'tiny', '--out', join(dir, 'out', 'model')]));
    expect(init.code, init.err).toBe(0);
    const prep = await capture(() => main(['node', 'v4tune', '--quiet', 'prepare', recipe]));
    expect(prep.code, prep.err).toBe(0);
    const r = await report('--json', 'report', recipe, '--eval-rows', '2');
    expect(r.code, r.err).toBe(0);
    const s: RunReport = JSON.parse(r.out);
    expect(s.model.status).toBe('ok');
    expect(s.data.status).toBe('ok');
    for (const x of [s.training, s.adapter, s.export.merge, ...s.export.quantized]) expect(x.status).toBe('not run');
    expect(s.export.quantized.map((q) => q.format)).toEqual(['gptq', 'gguf-q4_0']);
    expect(stage(s, 'base')).toMatchObject({ status: 'ok', from: 'computed', rows: 2 });
    for (const st of ['adapter', 'merged', 'gptq'] as const) expect(stage(s, st).status).toBe('not run');
    const md = readFileSync(join(dir, 'out', 'report.md'), 'utf8');
    expect(md).toContain('## Training\n\n_Not run: no train.json');
    expect(md).toContain('| (b) base + adapter | not run |');
    expect(md).toContain('GGUF outputs are not evaluated');
  });

  it('a recipe whose output folder does not exist is bad input (exit 2) naming the folder, and nothing is written', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-report-none-'));
    const recipe = writeTinyRun(dir, 'export: { merge: false }');
    const r = await report('report', recipe);
    expect(r.code).toBe(2);
    expect(r.err).toContain(join(dir, 'out'));
    expect(existsSync(join(dir, 'out'))).toBe(false);
  });

  it('with only the model made: the data, adapter and every perplexity "not run" (no dataset to evaluate on)', async () => {
    const src = mkdtempSync(join(tmpdir(), 'v4tune-report-copy-'));
    const recipe = writeTinyRun(src, 'export: { merge: false }');
    await capture(() => main(['node', 'v4tune', '--quiet', 'init-model', '--preset', 'tiny', '--out', join(src, 'out', 'model')]));
    const r = await report('--json', 'report', recipe, '--eval-rows', '1');
    expect(r.code, r.err).toBe(0);
    const s: RunReport = JSON.parse(r.out);
    expect(s.data.status).toBe('not run');
    expect(s.adapter.status).toBe('not run');
    expect(s.perplexity.evalRows).toBeNull();
    for (const row of s.perplexity.rows) expect(row.status).toBe('not run');
  });
});
