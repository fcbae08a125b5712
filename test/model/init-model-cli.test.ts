// `v4tune init-model`: the command writes the checkpoint and its JSON summary; bad flags exit 2.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { register } from '../../src/cli/commands/init-model.js';

const root = mkdtempSync(join(tmpdir(), 'v4tune-cli-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
afterEach(() => { process.exitCode = 0; vi.restoreAllMocks(); });

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const program = new Command('v4tune').option('--json').option('-q, --quiet').exitOverride();
  register(program);
  let stdout = '', stderr = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => { stdout += String(s); return true; });
  vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => { stderr += String(s); return true; });
  process.exitCode = 0;
  await program.parseAsync(['node', 'v4tune', ...args]);
  vi.restoreAllMocks();
  return { code: Number(process.exitCode ?? 0), stdout, stderr };
}

describe('v4tune init-model', () => {
  it('writes a tiny checkpoint and prints its summary as JSON', async () => {
    const out = join(root, 'tiny');
    const r = await run(['--json', 'init-model', '--preset', 'tiny', '--out', out, '--seed', '3']);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary).toMatchObject({ ok: true, preset: 'tiny', format: 'fp8', seed: 3, tensors: 263 });
    expect(existsSync(join(out, 'model.safetensors.index.json')) && existsSync(join(out, 'tokenizer.json'))).toBe(true);
  }, 30_000);

  it('an unknown preset or format exits 2 with one line naming the flag', async () => {
    const a = await run(['init-model', '--preset', 'medium', '--out', join(root, 'x')]);
    expect(a.code).toBe(2);
    expect(a.stderr).toBe('v4tune: --preset: unknown preset "medium" (tiny, small or flash)\n');
    const b = await run(['init-model', '--preset', 'tiny', '--out', join(root, 'x'), '--format', 'fp16']);
    expect(b.code).toBe(2);
    expect(b.stderr).toContain('--format');
    expect(existsSync(join(root, 'x'))).toBe(false);
  });
});
