// Shared fixtures of the distributed tests: whether MPI is here (under CI=true it must be: the
// tests never skip there), `mpirun` with the flags one machine needs, a tiny model with a
// prepared dataset, recipes over it, and an adapter reader.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { prepareDataset } from '../../src/data/prepare.js';
import { MPI_ADDON_PATH } from '../../src/distributed/mpi.js';
import { initModel } from '../../src/model/init.js';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const CLI = join(ROOT, 'bin', 'v4tune.js');

/** '' when mpirun and the MPI binding are here; else the one line saying how to get them. */
export function mpiMissing(): string {
  const run = spawnSync('mpirun', ['--version'], { encoding: 'utf8' });
  if (run.status !== 0 || run.error) return 'mpirun not found (apt-get install openmpi-bin libopenmpi-dev, then node native/mpi/build.mjs)';
  if (!existsSync(MPI_ADDON_PATH)) return 'the MPI binding is not built (apt-get install libopenmpi-dev, then node native/mpi/build.mjs)';
  if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) return 'dist/ is not built (npx tsc -p tsconfig.json)';
  return '';
}

/** Skip (saying how to enable) where MPI is missing, never under CI=true. */
export function skipWithoutMpi(): boolean {
  const why = mpiMissing();
  if (why && process.env.CI !== 'true') {
    console.log(`test/distributed skipped: ${why}`);
    return true;
  }
  return false;
}

/** `mpirun -np N` for one machine: as root, more ranks than cores. */
export function mpirunArgs(np: number): string[] {
  return ['-np', String(np), '--allow-run-as-root', '--oversubscribe', '--bind-to', 'none'];
}

export interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** Run a command to its end (or `timeoutMs`, then SIGKILL) and collect its output. */
export function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv; onSpawn?: (pid: number) => void } = {}): Promise<Ran> {
  return new Promise((done) => {
    const t0 = performance.now();
    const p = spawn(cmd, args, { cwd: opts.cwd, env: { ...process.env, V4TUNE_THREADS: '1', ...opts.env } });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 240_000);
    opts.onSpawn?.(p.pid!);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      done({ code, signal, stdout, stderr, seconds: (performance.now() - t0) / 1000 });
    });
  });
}

/** `v4tune <args>` in one process, or under `mpirun -np np` when np > 1. */
export function v4tune(np: number, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<Ran> {
  return np > 1 ? run('mpirun', [...mpirunArgs(np), process.execPath, CLI, ...args], opts) : run(process.execPath, [CLI, ...args], opts);
}

export interface Fixture {
  dir: string;
  cleanup(): void;
}

/** The tiny preset (seed 7) and 40 short documents prepared at seq_len 32 (about 30 train rows). */
export async function makeFixture(): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), 'v4tune-dist-'));
  await initModel({ preset: 'tiny', out: join(dir, 'model'), seed: 7 });
  mkdirSync(join(dir, 'corpus'));
  const states = ['ok', 'check seal', 'vibration high'];
  for (let d = 0; d < 40; d++) {
    writeFileSync(join(dir, 'corpus', `doc-${d}.txt`), `pump P-${d % 4} pressure ${(d % 5) + 2} bar: ${states[d % 3]}. unit ${d} serviced on day ${d * 3}.`);
  }
  await prepareDataset({
    tokenizer: join(dir, 'model', 'tokenizer.json'),
    sources: [{ path: join(dir, 'corpus', '*.txt'), format: 'text', text_field: 'text' }],
    seq_len: 32, packing: true, eval_fraction: 0.2, seed: 0, shard_rows: 4096, dedup: true, output: join(dir, 'data'), workers: 1,
  });
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A recipe over the fixture writing to `<dir>/<output>`; `train`, `distributed`: YAML flow maps' contents. */
export function writeRecipe(fx: Fixture, file: string, output: string, train: string, extra = ''): string {
  const path = join(fx.dir, file);
  writeFileSync(path, [
    'name: dist',
    'model: { path: model }',
    'data: { sources: [{ path: corpus/*.txt, format: text }], seq_len: 32, eval_fraction: 0.2, output: data }',
    'lora: { r: 4, alpha: 8 }',
    `train: { lr: 0.01, warmup_steps: 0, eval_every: 0, threads: 1, ${train.includes('eval_prompts') ? '' : 'eval_prompts: [], '}${train} }`,
    extra,
    `output: ${output}`,
  ].join('\n'));
  return path;
}

/** The F32 tensors of a safetensors file. */
export function readSafetensors(path: string): Map<string, Float32Array> {
  const b = readFileSync(path);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString()) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  const out = new Map<string, Float32Array>();
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    if (v.dtype !== 'F32') throw new Error(`${path}: ${k} is ${v.dtype}`);
    const [s, e] = v.data_offsets;
    out.set(k, new Float32Array(b.buffer.slice(b.byteOffset + 8 + n + s, b.byteOffset + 8 + n + e)));
  }
  return out;
}

/** max |a − b| over every tensor (the keys must agree), and max |a|. */
export function maxDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): { diff: number; scale: number } {
  if ([...a.keys()].sort().join() !== [...b.keys()].sort().join()) throw new Error('the two sets of tensors have different keys');
  let diff = 0;
  let scale = 0;
  for (const [k, x] of a) {
    const y = b.get(k)!;
    for (let i = 0; i < x.length; i++) {
      diff = Math.max(diff, Math.abs(x[i]! - y[i]!));
      scale = Math.max(scale, Math.abs(x[i]!));
    }
  }
  return { diff, scale };
}
