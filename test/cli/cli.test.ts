import { describe, it, expect, afterEach, vi } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildProgram } from '../../src/cli/main.js';
import { cli } from './capture.js';
import { recipeReference, cliReference, replaceBetween } from '../../src/cli/docs.js';


afterEach(() => { process.exitCode = undefined; });

describe('cli', () => {
  it('exits 2 with one line on an unknown verb or a missing argument', async () => {
    expect((await cli('bogus')).code).toBe(2);
    const r = await cli('run');
    expect(r.code).toBe(2);
    expect(r.err).toContain("missing required argument 'recipe'");
  });

  it('exits 2 naming the file on a bad recipe, with a JSON error under --json', async () => {
    const r = await cli('--json', 'run', '/nonexistent/r.yaml');
    expect(r.code).toBe(2);
    expect(r.err).toContain('v4tune: /nonexistent/r.yaml: cannot read the recipe');
    expect(JSON.parse(r.out)).toMatchObject({ ok: false, exitCode: 2 });
  });

  it('has every verb of the design, each with its help', async () => {
    const verbs = ['init-model', 'prepare', 'profile-experts', 'train', 'eval', 'generate', 'merge', 'quantize', 'run', 'inspect', 'report'];
    expect(buildProgram().commands.map((c) => c.name()).sort()).toEqual([...verbs].sort());
    for (const v of verbs) {
      const r = await cli(v, '--help');
      expect(r.code, v).toBe(0);
      expect(r.out, v).toContain(`Usage: v4tune ${v}`);
    }
  });

  it('run as a command (its #! line), starts node with glibc\'s malloc.hugetlb tunable', () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-bin-'));
    try {
      // a preload that records, at exit, the tunables the process started with
      const hook = join(dir, 'hook.cjs');
      writeFileSync(hook, "process.on('exit', () => require('node:fs').writeFileSync(process.env.V4TUNE_TEST_OUT, JSON.stringify({ tunables: process.env.GLIBC_TUNABLES ?? null })));\n");
      const out = join(dir, 'out.json');
      const version = execFileSync(join('bin', 'v4tune.js'), ['--version'], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: `-r ${hook}`, V4TUNE_TEST_OUT: out } });
      expect(version.trim()).toBe(JSON.parse(readFileSync('package.json', 'utf8')).version);
      expect(JSON.parse(readFileSync(out, 'utf8'))).toEqual({ tunables: 'glibc.malloc.hugetlb=1' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // bin/v4tune.js turns V8's incremental marking off (its collections competed with the kernel
  // pool for the cores): a command that allocates (init-model) collects atomically, and with the
  // flag left out V8's trace names incremental marking at once
  it('collects garbage without incremental marking', () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-gc-'));
    try {
      const trace = execFileSync(process.execPath, ['--trace-gc', join('bin', 'v4tune.js'), 'init-model', '--preset', 'tiny', '--out', join(dir, 'm'), '-q'], { encoding: 'utf8' });
      expect(trace).toMatch(/Mark-Compact|Scavenge/);
      expect(trace).not.toMatch(/incremental/i);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('prints its version', async () => {
    const r = await cli('--version');
    expect(r.code).toBe(0);
    expect(r.out.trim()).toBe(JSON.parse(readFileSync('package.json', 'utf8')).version);
  });
});

describe('docs', () => {
  it('generates the recipe reference from the schema descriptions', () => {
    const ref = recipeReference();
    expect(ref).toContain('| `data.seq_len` | number | `1024` | Tokens per row; at most the model\'s max_position_embeddings (and 1048576). |');
    expect(ref).toContain('`train.backend`');
    expect(ref).toContain('`data.sources[].text_field`');
  });

  it('keeps the README in step with the schema and the CLI (run `npm run docs`)', () => {
    const readme = readFileSync('README.md', 'utf8');
    const regenerated = replaceBetween(replaceBetween(readme, 'recipe-reference', recipeReference()), 'cli-reference', cliReference());
    expect(regenerated).toBe(readme);
  });
});

describe('progress without a terminal', () => {
  it('prints at most one line per quarter and one at the end', async () => {
    const { makeContext } = await import('../../src/cli/context.js');
    const lines: string[] = [];
    const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => { lines.push(String(s).trim()); return true; });
    const isTTY = process.stdout.isTTY;
    Object.defineProperty(process.stdout, 'isTTY', { value: false, configurable: true });
    try {
      const p = makeContext({}).progress('write', 2, 'shards');
      p.update(1);
      p.update(2);
      p.stop();
    } finally {
      Object.defineProperty(process.stdout, 'isTTY', { value: isTTY, configurable: true });
      o.mockRestore();
    }
    expect(lines).toEqual(['write: 1/2 shards', 'write: 2/2 shards done']);
  });
});
