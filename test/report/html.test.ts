// report.html: the run report as one self-contained page with Vega-Lite charts rendered to SVG
// in Node (loss, learning rate, tokens/s, gradient norm, the expert profile with the adapted
// experts marked, INT4 error, perplexity), opened in headless Chromium without errors; report.md
// states the adapted experts, the best eval and the eval prompts' continuations.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { markdownToHtml } from '../../src/report/html.js';
import type { RunReport } from '../../src/report/types.js';
import { capture } from '../cli/capture.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 300_000 });

const CHROMIUM = ['chromium', 'chromium-browser', 'google-chrome'].find((c) => spawnSync('which', [c]).status === 0) ?? null;
const skipChromium = CHROMIUM === null && process.env.CI !== 'true';

/** A chat + text corpus, profiled experts, eval prompts, merge and GPTQ: every chart has data. */
function writeRun(dir: string): string {
  mkdirSync(join(dir, 'corpus'), { recursive: true });
  writeFileSync(join(dir, 'corpus', 'notes.jsonl'), Array.from({ length: 30 }, (_, i) => JSON.stringify({ text: `Pump ${i} was inspected; the seal on impeller ${i % 5} was replaced.` })).join('\n'));
  writeFileSync(join(dir, 'corpus', 'chats.jsonl'), Array.from({ length: 16 }, (_, i) => JSON.stringify({ messages: [
    { role: 'system', content: 'You are a maintenance assistant.' },
    { role: 'user', content: `Status of pump P-${i % 4}?` },
    { role: 'assistant', content: `Pump P-${i % 4}: ${i % 3 ? 'ok' : 'check seal'}.` },
  ] })).join('\n'));
  const file = join(dir, 'r.yaml');
  writeFileSync(file, [
    'name: html-run',
    'model: { preset: tiny }',
    'data: { sources: [{ path: corpus/notes.jsonl }, { path: corpus/chats.jsonl }], seq_len: 64, eval_fraction: 0.2 }',
    'lora: { r: 4, alpha: 8, experts: profiled, experts_per_layer: 2, profile_rows: 8 }',
    'train: { steps: 6, lr: 0.01, warmup_steps: 1, eval_every: 3, checkpoint_every: 0, eval_prompts: [{ chat: "Status of pump P-2?" }, "Pump 7 was"], eval_max_new_tokens: 4 }',
    'export: { merge: true, merge_dtype: bf16, quantize: [gptq], group_size: 32 }',
    'output: out',
  ].join('\n'));
  return file;
}

describe('report.html', () => {
  let dir: string;
  let html: string;
  let md: string;
  let rep: RunReport & { html: string };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'v4tune-html-'));
    const recipe = writeRun(dir);
    const run = await capture(() => main(['node', 'v4tune', '--quiet', 'run', recipe]));
    expect(run.code, run.err).toBe(0);
    const r = await capture(() => main(['node', 'v4tune', '--json', 'report', recipe]));
    expect(r.code, r.err).toBe(0);
    rep = JSON.parse(r.out);
    html = readFileSync(join(dir, 'out', 'report.html'), 'utf8');
    md = readFileSync(join(dir, 'out', 'report.md'), 'utf8');
  });

  it('is one self-contained page: every report.md section, eight SVG charts, nothing fetched', () => {
    expect(rep.html).toBe(join(dir, 'out', 'report.html'));
    for (const h of ['Recipe', 'Model', 'Data', 'Training', 'Adapter', 'Experts', 'Export', 'Perplexity before and after']) expect(html).toContain(`>${h}</h2>`);
    const svgs = html.match(/<svg[\s>]/g) ?? [];
    expect(svgs).toHaveLength(8);
    for (const label of ['Loss', 'Learning rate', 'Tokens/s', 'Gradient norm', 'Expert profile', 'INT4 error', 'INT4 error per layer', 'Perplexity']) expect(html).toContain(`aria-label="${label}"`);
    expect(html).not.toMatch(/<script|<link|<img|<iframe|src=|url\((?!#)|href="(?!#)/i);
  });

  it('report.md names the adapted experts, the best eval and the eval prompts\' continuations', () => {
    if (rep.experts.status !== 'ok' || rep.training.status !== 'ok') throw new Error('unreachable');
    expect(rep.experts.adapted).toBe('subset');
    for (const b of rep.experts.blocks.filter((x) => x.block.startsWith('layers.'))) {
      expect(b.adapted).toHaveLength(2);
      expect(md).toContain(`| ${b.block} | ${b.adapted.join(', ')} |`);
    }
    expect(md).toMatch(/profile: `.*expert-profile\.json`, 8 rows routed, sampled across \d+ train rows/);
    expect(md).toMatch(/- best eval loss \d+\.\d{4} at step \d/);
    expect(md).toContain('Eval prompts at step 6 (greedy):');
    expect(md).toContain('| Status of pump P-2? |');
    expect(rep.training.curve.map((p) => p.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(rep.training.samples.map((s) => s.step)).toEqual([0, 3, 6]);
  });

  it('gives the GPTQ error per layer and kind, read back against the merged model, consistent with the per-kind totals', () => {
    const q = rep.export.quantized[0]!;
    if (q.status !== 'ok') throw new Error('unreachable');
    expect(q.layers!.map((l) => l.block)).toEqual(['layers.0', 'layers.0', 'layers.0', 'layers.1', 'layers.1', 'layers.1', 'layers.2', 'layers.2', 'layers.2', 'layers.3', 'layers.3', 'layers.3', 'mtp.0', 'mtp.0', 'mtp.0']);
    for (const kind of ['attention', 'routed_expert', 'shared_expert'] as const) {
      const ls = q.layers!.filter((l) => l.kind === kind);
      expect(ls.reduce((s, l) => s + l.tensors, 0)).toBe(q.errors[kind]!.tensors);
      // the per-kind figure lies between the layers' extremes
      expect(q.errors[kind]!.relRmsError).toBeGreaterThanOrEqual(Math.min(...ls.map((l) => l.relRmsError)) - 1e-6);
      expect(q.errors[kind]!.relRmsError).toBeLessThanOrEqual(Math.max(...ls.map((l) => l.relRmsError)) + 1e-6);
    }
    expect(md).toContain('Relative RMS error per layer');
  });

  it('markdownToHtml escapes text and keeps tables, lists and code', () => {
    expect(markdownToHtml('## A <b>\n\n- `x<y>` and _it_\n\n| a | b \\| c |\n|---|---|\n| 1 | 2 |')).toBe(
      '<h2 id="a-b">A &lt;b&gt;</h2>\n<ul><li><code>x&lt;y&gt;</code> and <em>it</em></li></ul>\n<table><thead><tr><th>a</th><th>b | c</th></tr></thead><tbody><tr><td>1</td><td>2</td></tr></tbody></table>');
  });

  it.skipIf(skipChromium)('renders in headless Chromium without errors: the DOM holds every chart, the screenshot is drawn', () => {
    if (CHROMIUM === null) throw new Error('Chromium is not installed (apt-get install chromium)');
    const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--enable-logging=stderr', '--v=0'];
    const page = `file://${join(dir, 'out', 'report.html')}`;
    const dom = spawnSync(CHROMIUM, [...flags, `--user-data-dir=${join(dir, 'chromium-a')}`, '--dump-dom', page], { encoding: 'utf8', timeout: 120_000 });
    expect(dom.status, dom.stderr).toBe(0);
    expect((dom.stdout.match(/<svg[\s>]/g) ?? []).length).toBe(8);
    expect(dom.stdout).toContain('Run report: html-run');
    expect(dom.stderr).not.toMatch(/Uncaught|Failed to load resource|net::ERR_|CONSOLE\(\d+\)\].*error/i);
    const png = join(dir, 'report.png');
    const shot = spawnSync(CHROMIUM, [...flags, `--user-data-dir=${join(dir, 'chromium-b')}`, '--hide-scrollbars', '--window-size=1100,1600', `--screenshot=${png}`, page], { encoding: 'utf8', timeout: 120_000 });
    expect(shot.status, shot.stderr).toBe(0);
    expect(existsSync(png)).toBe(true);
    const bytes = readFileSync(png);
    expect(bytes.subarray(1, 4).toString('latin1')).toBe('PNG');
    expect(statSync(png).size).toBeGreaterThan(50_000); // a blank page compresses to a few kB
  });
});
