// Killed for real: `v4tune train` as a child process, SIGKILLed three times mid-run (no
// checkpoint of its own, the lock left behind, a log line maybe cut short) and resumed each time,
// ends with the adapter, train.json and log of a run never stopped (times aside).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { fixtureRecipe, makeFixture, type Fixture } from './helpers.js';

vi.setConfig({ testTimeout: 600_000, hookTimeout: 300_000 });

const BIN = join(process.cwd(), 'bin', 'v4tune.js');
const built = existsSync(join(process.cwd(), 'dist', 'cli', 'main.js'));

let fx: Fixture;
beforeAll(async () => { fx = await makeFixture(20); });
afterAll(() => fx?.cleanup());

/** The recipe as a file (JSON is YAML) for the CLI. */
function recipeFile(out: string): string {
  const r = fixtureRecipe(fx, out, { steps: 12, batch_rows: 2, checkpoint_every: 2, eval_every: 3, lr: 5e-3, warmup_steps: 1 });
  const file = join(fx.dir, `${out.split('/').pop()}.yaml`);
  writeFileSync(file, JSON.stringify({ model: { path: r.model.path }, data: { sources: r.data.sources, seq_len: 32, output: r.data.output }, lora: r.lora, train: { ...r.train, warm_start: undefined }, output: r.output }));
  return file;
}

const lastStep = (out: string): number => {
  const p = join(out, 'train-log.jsonl');
  if (!existsSync(p)) return -1;
  let s = -1;
  for (const l of readFileSync(p, 'utf8').split('\n')) {
    try { s = Math.max(s, (JSON.parse(l) as { step: number }).step); } catch { /* a line cut short */ }
  }
  return s;
};

/** Run `v4tune train`; SIGKILL it once its log reaches `killAt` (null: let it finish). Resolves with the exit code or signal. */
function train(file: string, out: string, args: string[], killAt: number | null): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, '--quiet', 'train', file, '--eval-rows', '2', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => { err += String(d); });
    const timer = killAt === null ? null : setInterval(() => { if (lastStep(out) >= killAt) child.kill('SIGKILL'); }, 10);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (timer) clearInterval(timer);
      resolve(signal ?? `${code}${code ? `: ${err}` : ''}`);
    });
  });
}

type Json = Record<string, unknown>;
const TIMES = new Set(['train_seconds', 'wall_seconds', 'tokens_per_s', 'seconds', 'elapsed', 'resumed_from', 'resumes', 'recipe']);
const timeless = (x: unknown, out: string): unknown => JSON.parse(JSON.stringify(x, (k, v: unknown) => (TIMES.has(k) ? undefined : typeof v === 'string' ? v.split(out).join('OUT') : v)));
const logOf = (out: string) => readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Json);

describe.skipIf(!built)('v4tune train killed with SIGKILL', () => {
  it('three kills mid-run, three resumes: the adapter bit for bit, train.json and the log as a run never stopped', async () => {
    const straight = join(fx.dir, 'kill-straight');
    expect(await train(recipeFile(straight), straight, [], null)).toBe('0');
    const out = join(fx.dir, 'kill-stopped');
    const file = recipeFile(out);
    expect(await train(file, out, [], 3)).toBe('SIGKILL');
    for (const at of [6, 9]) {
      expect(existsSync(join(out, 'adapter'))).toBe(false);
      expect(await train(file, out, ['--resume'], at)).toBe('SIGKILL');
    }
    expect(await train(file, out, ['--resume'], null)).toBe('0');
    const adapter = 'adapter/adapter_model.safetensors';
    expect(readFileSync(join(out, adapter)).equals(readFileSync(join(straight, adapter)))).toBe(true);
    const a = JSON.parse(readFileSync(join(straight, 'train.json'), 'utf8')) as Json;
    const b = JSON.parse(readFileSync(join(out, 'train.json'), 'utf8')) as Json;
    expect((b.resumes as number[]).length).toBe(3);
    expect(timeless(b, out)).toEqual(timeless(a, straight));
    expect(timeless(logOf(out), out)).toEqual(timeless(logOf(straight), straight));
  });
});
