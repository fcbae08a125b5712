// The README's "Library API" pipeline script, run as written: the first ts block of that section
// is transpiled, its `from 'v4tune'` pointed at the package root (dist/index.js, which `npm test`
// builds first), and run by node in a scratch folder holding the bundled datasets, so the README
// cannot drift from the API.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import ts from 'typescript';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = process.cwd();

/** The first ```ts block after the README's "## Library API" heading. */
function readmeScript(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('\n## Library API\n'));
  const m = /```ts\n([\s\S]*?)```/.exec(section);
  if (!m) throw new Error('README.md: no ts block in "## Library API"');
  return m[1]!;
}

describe('the README\'s library pipeline', () => {
  const dir = mkdtempSync(join(tmpdir(), 'v4tune-pipeline-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('runs prepare → train → eval → merge → quantize → report through the package root, with finite typed results and every artifact written', () => {
    const source = readmeScript();
    expect(source).toMatch(/from 'v4tune';/);
    const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText
      .replace(/from 'v4tune';/, `from '${pathToFileURL(join(ROOT, 'dist', 'index.js')).href}';`);
    writeFileSync(join(dir, 'pipeline.mjs'), js);
    symlinkSync(join(ROOT, 'datasets'), join(dir, 'datasets'));
    const r = spawnSync(process.execPath, ['pipeline.mjs'], { cwd: dir, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.some((l) => l.startsWith('train library: model'))).toBe(true); // the sink's lines
    const out = JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
    const run = join(dir, 'runs', 'library');
    expect(out.model).toBe(join(run, 'model'));
    expect(out.steps).toBe(3);
    expect(out.rows).toBeGreaterThan(0);
    for (const k of ['evalBefore', 'evalAfter', 'perplexity']) expect(Number.isFinite(out[k])).toBe(true);
    expect(out.perplexity).toBeCloseTo(Math.exp(out.evalAfter as number), 3);
    // the report evaluated every stage: base, base + adapter, merged, GPTQ INT4
    expect((out.perplexities as unknown[]).every((p) => Number.isFinite(p))).toBe(true);
    expect((out.perplexities as unknown[]).length).toBe(4);
    expect(out.merged).toBe(join(run, 'merged'));
    expect(out.gptq).toBe(join(run, 'quantized', 'gptq'));
    expect(out.report).toBe(join(run, 'report.md'));
    for (const f of ['model/config.json', 'data/manifest.json', 'train.json', 'train-log.jsonl', 'adapter/adapter_model.safetensors', 'merged/config.json', 'quantized/gptq/quantize_config.json', 'report.md', 'report.html']) {
      expect(existsSync(join(run, f)), f).toBe(true);
    }
    expect(existsSync(join(run, '.v4tune.lock'))).toBe(false);
  }, 300_000);
});
