// Never lose a user's data (as a careless user would meet it, through the CLI): a folder
// v4tune did not write is never replaced without --overwrite, an output that holds an input is
// always refused, one writer per run folder, a diverging run stops with its last good checkpoint,
// a NaN adapter is never merged, and a killed merge leaves no temporary behind its rerun.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LOCK_FILE } from '../../src/lock.js';
import { OUTPUT_MARKER } from '../../src/fsutil.js';
import { createAdapter } from '../../src/lora/adapter.js';
import { loadAdapter, saveAdapter } from '../../src/lora/peft.js';
import { initModel } from '../../src/model/init.js';
import { loadModel } from '../../src/model/load.js';
import { cli } from './capture.js';

vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = join(ROOT, 'bin', 'v4tune.js');
let dir: string;
let model: string;

/** `v4tune ...args` in a child process (needs dist/, which `npm test` builds first). */
function child(args: string[], cwd = dir): ChildProcess & { out: () => string } {
  const p = spawn(process.execPath, [BIN, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  p.stdout!.on('data', (b: Buffer) => { text += b.toString(); });
  p.stderr!.on('data', (b: Buffer) => { text += b.toString(); });
  return Object.assign(p, { out: () => text });
}

const exited = (p: ChildProcess): Promise<number | null> => new Promise((res) => p.on('exit', (code, sig) => res(code ?? (sig ? -1 : null))));

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

const temps = (folder: string) => readdirSync(folder).filter((n) => n.startsWith('.tmp-'));

/** A recipe over `corpus/*.txt` with the model folder above; `extra` lines appended. */
function recipe(name: string, lines: string[]): string {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, [`name: ${name}`, `model: { path: ${model} }`, ...lines].join('\n'));
  return file;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'v4tune-safety-'));
  model = join(dir, 'model');
  await initModel({ preset: 'tiny', out: model, seed: 2 });
  mkdirSync(join(dir, 'corpus'));
  for (let i = 0; i < 16; i++) writeFileSync(join(dir, 'corpus', `n${i}.txt`), `Pump ${i} seal replaced; vibration ${i % 4} mm/s after the repair of impeller ${i % 3}.`);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('no silent deletion', () => {
  it('a recipe whose data.output is the corpus folder is refused and the corpus is intact', async () => {
    const d = join(dir, 'data');
    mkdirSync(d);
    writeFileSync(join(d, 'notes.txt'), 'the only copy of these notes');
    const r = recipe('self', ['data: { sources: [{ path: data/*.txt }], seq_len: 32, output: data }', 'output: out-self']);
    const res = await cli('prepare', r);
    expect(res.code).toBe(2);
    expect(res.err).toMatch(/data.*contains .*notes\.txt, an input of this run/);
    expect(readFileSync(join(d, 'notes.txt'), 'utf8')).toBe('the only copy of these notes');
  });

  it('prepare will not replace a folder it did not write; --overwrite does; its own output is rebuilt freely', async () => {
    const d = join(dir, 'mine');
    mkdirSync(d);
    writeFileSync(join(d, 'keep.txt'), 'x');
    const r = recipe('mine', ['data: { sources: [{ path: corpus/*.txt }], seq_len: 32, output: mine }', 'output: out-mine']);
    const refused = await cli('prepare', r);
    expect(refused.code).toBe(2);
    expect(refused.err).toContain('was not written by v4tune');
    expect(refused.err).toContain('--overwrite');
    expect(existsSync(join(d, 'keep.txt'))).toBe(true);
    expect((await cli('prepare', r, '--overwrite')).code).toBe(0);
    expect(existsSync(join(d, 'keep.txt'))).toBe(false);
    expect(JSON.parse(readFileSync(join(d, OUTPUT_MARKER), 'utf8')).kind).toBe('dataset');
    writeFileSync(join(dir, 'corpus', 'n0.txt'), 'Pump 0 seal replaced again.'); // a changed corpus rebuilds the dataset
    expect((await cli('prepare', r)).code).toBe(0);
  });

  it('init-model --out onto a folder with other files (a git checkout) is refused; a model folder it wrote is replaced', async () => {
    const repo = join(dir, 'repo');
    mkdirSync(join(repo, '.git'), { recursive: true });
    writeFileSync(join(repo, '.git', 'HEAD'), 'ref: refs/heads/main\n');
    const res = await cli('init-model', '--preset', 'tiny', '--out', repo);
    expect(res.code).toBe(2);
    expect(res.err).toContain(`${repo}: folder exists and was not written by v4tune`);
    expect(readFileSync(join(repo, '.git', 'HEAD'), 'utf8')).toBe('ref: refs/heads/main\n');
    const m2 = join(dir, 'm2');
    expect((await cli('init-model', '--preset', 'tiny', '--out', m2)).code).toBe(0);
    expect((await cli('init-model', '--preset', 'tiny', '--out', m2, '--seed', '3')).code).toBe(0);
    // a dataset folder is not a model folder: replacing it needs --overwrite
    const res2 = await cli('init-model', '--preset', 'tiny', '--out', join(dir, 'mine'));
    expect(res2.code).toBe(2);
    expect(res2.err).toContain('holds a v4tune dataset, not a model');
  });

  it('merge --out refuses a foreign model folder, its own base and an input adapter folder', async () => {
    const m = await loadModel(model, { backend: 'tfjs', note: () => {} });
    const a = createAdapter(m, { r: 2, alpha: 4, seed: 1 });
    m.dispose();
    const adapter = join(dir, 'adapter');
    await saveAdapter(a, adapter);
    const foreign = join(dir, 'foreign');
    mkdirSync(foreign);
    writeFileSync(join(foreign, 'config.json'), '{}');
    const res = await cli('merge', '--model', model, '--adapter', adapter, '--out', foreign);
    expect(res.code).toBe(2);
    expect(res.err).toContain('was not written by v4tune');
    expect(readFileSync(join(foreign, 'config.json'), 'utf8')).toBe('{}');
    const self = await cli('merge', '--model', model, '--adapter', adapter, '--out', model);
    expect(self.code).toBe(2);
    expect(self.err).toMatch(/an input of this run|must lie outside the base checkpoint folder/);
    const parent = await cli('merge', '--model', model, '--adapter', adapter, '--out', dir, '--overwrite');
    expect(parent.code).toBe(2);
    expect(parent.err).toMatch(/an input of this run|must lie outside the base checkpoint folder/);
    expect(existsSync(join(model, 'config.json'))).toBe(true);
  });
});

describe('one writer per run folder', () => {
  it('a second train on the same output exits 2 naming the first; the first finishes', async () => {
    const lines = ['data: { sources: [{ path: corpus/*.txt }], seq_len: 32, output: out-lock/data }', 'train: { steps: 2000, threads: 1, checkpoint_every: 0, eval_every: 0 }', 'output: out-lock'];
    const r = recipe('lock', lines);
    expect((await cli('prepare', r)).code).toBe(0);
    const first = child(['train', r]);
    const done = exited(first);
    await until(() => existsSync(join(dir, 'out-lock', LOCK_FILE)) && first.out().includes('train lock'), 60_000);
    const second = await cli('train', r);
    expect(second.code).toBe(2);
    expect(second.err).toContain(`in use by v4tune train`);
    expect(second.err).toContain(`pid ${first.pid}`);
    first.kill('SIGINT'); // stops after the step with a checkpoint
    expect(await done).toBe(130);
    expect(existsSync(join(dir, 'out-lock', LOCK_FILE))).toBe(false);
  });

  it('a stale lock (its process gone) is reported and taken over', async () => {
    const out = join(dir, 'out-stale');
    mkdirSync(out, { recursive: true });
    const gone = spawn(process.execPath, ['-e', '0']);
    await exited(gone);
    writeFileSync(join(out, LOCK_FILE), JSON.stringify({ pid: gone.pid, host: hostname(), command: 'v4tune train old.yaml', started: '2026-01-01T00:00:00Z' }));
    const r = recipe('stale', ['data: { sources: [{ path: corpus/*.txt }], seq_len: 32, output: out-stale/data }', 'output: out-stale']);
    const res = await cli('prepare', r);
    expect(res.code).toBe(0);
    expect(res.err).toContain(`stale lock of v4tune train old.yaml (pid ${gone.pid}`);
    expect(existsSync(join(out, LOCK_FILE))).toBe(false);
  });
});

describe('non-finite values stop the work', () => {
  it('lr 1e308 ends training with exit 1 at step 1, naming the tensor; no checkpoint or adapter is written', async () => {
    const r = recipe('huge', ['data: { sources: [{ path: corpus/*.txt }], seq_len: 32, output: out-huge/data }', 'train: { steps: 3, lr: 1.0e308, threads: 1, checkpoint_every: 1 }', 'output: out-huge']);
    expect((await cli('prepare', r)).code).toBe(0);
    const res = await cli('train', r);
    expect(res.code).toBe(1);
    expect(res.err).toMatch(/step 1: the update made base_model\.model\.\S+ Infinity .*training stopped, no checkpoint was written/);
    expect(existsSync(join(dir, 'out-huge', 'adapter'))).toBe(false);
    expect(existsSync(join(dir, 'out-huge', 'checkpoints', 'step-1'))).toBe(false);
  });

  it('a run that diverges later ends with exit 1 at the first non-finite step; the last good checkpoint is intact; its NaN eval is an error', async () => {
    // weight decay at lr 1e20 overflows the factors in the second update
    const r = recipe('diverge', ['data: { sources: [{ path: corpus/*.txt }], seq_len: 32, eval_fraction: 0.25, output: out-div/data }', 'train: { steps: 6, lr: 1.0e20, weight_decay: 0.1, warmup_steps: 0, schedule: constant, threads: 1, checkpoint_every: 1, eval_every: 0 }', 'output: out-div']);
    expect((await cli('prepare', r)).code).toBe(0);
    const res = await cli('train', r);
    expect(res.code).toBe(1);
    const m = /step (\d+): .*(not finite|NaN|Infinity).*training stopped, the last good checkpoint, step (\d+), is kept/.exec(res.err);
    expect(m, res.err).not.toBeNull();
    const bad = Number(m![1]);
    const kept = Number(m![3]);
    expect(kept).toBe(bad - 1);
    const ck = join(dir, 'out-div', 'checkpoints');
    expect(readdirSync(ck).filter((n) => n.startsWith('step-')).sort()).toEqual(Array.from({ length: kept }, (_, i) => `step-${i + 1}`).sort());
    expect(existsSync(join(dir, 'out-div', 'adapter'))).toBe(false);
    // the kept checkpoint is intact (its factors load, all finite), but this adapter already
    // overflows the forward on the eval rows: a non-finite eval loss is an error, never printed as a result
    const kept_ = await loadAdapter(join(ck, `step-${kept}`, 'adapter'));
    expect(kept_.modules().length).toBeGreaterThan(0);
    const ev = await cli('eval', r, '--adapter', join(ck, `step-${kept}`, 'adapter'));
    expect(ev.code, ev.err).toBe(1);
    expect(ev.err).toMatch(/eval: the loss over \d+ tokens of .* is NaN/);
  });

  // the tensors an export writes as they are (norms, hc_head_fn, embedding, head) are checked as
  // the quantised linears are: stored bytes (gptq keeps BF16 / F32 as stored), decoded float32 (GGUF)
  it('quantize refuses a checkpoint whose kept tensor holds NaN or Infinity, naming it; nothing is written', async () => {
    const poisoned = (tag: string, tensor: string, at: number, bits: number[]): string => {
      const copy = join(dir, `model-${tag}`);
      cpSync(model, copy, { recursive: true });
      const index = JSON.parse(readFileSync(join(copy, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
      const file = join(copy, index.weight_map[tensor]!);
      const b = readFileSync(file);
      const n = Number(b.readBigUInt64LE(0));
      const e = (JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<string, { data_offsets: [number, number] }>)[tensor]!;
      Buffer.from(bits).copy(b, 8 + n + e.data_offsets[0] + at * bits.length);
      writeFileSync(file, b);
      return copy;
    };
    const shardOf = (copy: string, tensor: string): string =>
      join(copy, (JSON.parse(readFileSync(join(copy, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> }).weight_map[tensor]!);
    const nan = poisoned('nan', 'layers.1.attn_norm.weight', 3, [0xc0, 0x7f]); // BF16 NaN
    const inf = poisoned('inf', 'hc_head_fn', 5, [0x00, 0x00, 0x80, 0x7f]); // F32 +Infinity
    const lin = poisoned('lin', 'layers.0.attn.wq_a.weight', 3, [0x7f]); // FP8 E4M3 NaN in a quantised linear
    const rec = recipe('poisoned', ['data: { sources: [{ path: corpus/*.txt }] }', 'export: { group_size: 32 }', 'output: out-poisoned']);
    const cases: Array<[string, string, string]> = [
      [nan, 'gptq', 'layers.1.attn_norm.weight holds NaN at element 3; nothing written'],
      [nan, 'gguf-q4_0', 'layers.1.attn_norm.weight holds NaN at element 3; nothing written'],
      [inf, 'gptq', 'hc_head_fn holds Infinity at element 5; nothing written'],
      [inf, 'gguf-f16', 'hc_head_fn holds Infinity at element 5; nothing written'],
      // the quantised linears: the shard file, the tensor, its row and column, from the addon's
      // rounding (INT4, Q4_0, Q8_0) and from the TypeScript one (Q4_K's Q5_0 rows, not a multiple of 256)
      ...(['gptq', 'gguf-q4_0', 'gguf-q8_0', 'gguf-q4_k'] as const).map((f): [string, string, string] =>
        [lin, f, `${shardOf(lin, 'layers.0.attn.wq_a.weight')}: tensor layers.0.attn.wq_a.weight: non-finite weight NaN at row 0, column 3; nothing written`]),
    ];
    for (const [m, format, want] of cases) {
      const out = join(dir, `q-${format}`);
      const res = await cli('quantize', rec, '--model', m, '--out', out, '--format', format, '--method', 'rtn');
      expect(res.code, `${format}: ${res.err}`).toBe(2);
      expect(res.err).toContain(want);
      expect(existsSync(out) ? readdirSync(out) : [], format).toEqual([]); // the folder at most, empty
      expect(temps(dir)).toEqual([]);
    }
  });

  it('merge refuses an adapter holding NaN, naming the tensor; nothing is written', async () => {
    const m = await loadModel(model, { backend: 'tfjs', note: () => {} });
    const a = createAdapter(m, { r: 2, alpha: 4, seed: 3 });
    m.dispose();
    const first = a.modules()[0]!;
    a.factors(first)!.B[5] = Number.NaN;
    const adapter = join(dir, 'adapter-nan');
    await saveAdapter(a, adapter);
    const out = join(dir, 'merged-nan');
    const res = await cli('merge', '--model', model, '--adapter', adapter, '--out', out);
    expect(res.code).toBe(2);
    expect(res.err).toContain(`${first}.lora_B holds NaN at element 5`);
    expect(existsSync(out)).toBe(false);
    expect(temps(dir)).toEqual([]);
  });
});

describe('bounds: sizes the model or the machine cannot hold are refused by field, before any work', () => {
  it('train.threads, train.batch_rows, data.seq_len and lora.r past their limits exit 2 naming the field and the limit', async () => {
    const data = 'data: { sources: [{ path: corpus/*.txt }], seq_len: 32, output: out-bounds/data }';
    expect((await cli('prepare', recipe('bounds', [data, 'output: out-bounds']))).code).toBe(0);
    const cases: Array<[string[], RegExp]> = [
      [[data, 'train: { threads: 100000 }'], /train\.threads is 100000; at most \d+ \(8 per core/],
      [[data, 'train: { batch_rows: 10000000 }'], /train\.batch_rows 10000000 × data\.seq_len 32 needs about [\d.]+ GiB of activations.*at most \d+ rows per micro-batch fit/],
      [['data: { sources: [{ path: corpus/*.txt }], seq_len: 1000000, output: out-bounds/data }'], /data\.seq_len is 1000000, longer than the model's 4096 positions/],
      [[data, 'lora: { r: 1000000 }'], /lora\.r: rank 1000000 exceeds what \S+ \(\d+ × \d+\) can use: at most \d+/],
    ];
    for (const [lines, want] of cases) {
      const res = await cli('train', recipe('bounds', [...lines, 'output: out-bounds']));
      expect(res.code, res.err).toBe(2);
      expect(res.err).toMatch(want);
    }
    expect(existsSync(join(dir, 'out-bounds', 'checkpoints'))).toBe(false);
  });
});

describe('temporaries never outlive a run', () => {
  async function adapterDir(): Promise<string> {
    const adapter = join(dir, 'adapter-k');
    if (!existsSync(adapter)) {
      const m = await loadModel(model, { backend: 'tfjs', note: () => {} });
      await saveAdapter(createAdapter(m, { r: 2, alpha: 4, seed: 4 }), adapter);
      m.dispose();
    }
    return adapter;
  }

  for (const signal of ['SIGKILL', 'SIGINT'] as const) {
    it(`${signal} during merge: ${signal === 'SIGINT' ? 'the temporary is removed at once' : 'the rerun removes the temporary'} and the rerun succeeds`, async () => {
      const adapter = await adapterDir();
      const parent = join(dir, `k-${signal}`);
      mkdirSync(parent);
      const out = join(parent, 'merged');
      const p = child(['merge', '--model', model, '--adapter', adapter, '--out', out, '--dtype', 'bf16', '--max-shard-mb', '1']);
      const code = exited(p);
      await until(() => temps(parent).length > 0, 60_000);
      p.kill(signal);
      expect(await code).toBe(signal === 'SIGINT' ? 130 : -1);
      expect(temps(parent).length).toBe(signal === 'SIGINT' ? 0 : 1);
      expect(existsSync(out)).toBe(false);
      const again = await cli('merge', '--model', model, '--adapter', adapter, '--out', out, '--dtype', 'bf16');
      expect(again.code, again.err).toBe(0);
      if (signal === 'SIGKILL') expect(again.err).toMatch(/removed .*\.tmp-merged-\d+@.* left by an interrupted v4tune run/);
      expect(temps(parent)).toEqual([]);
      expect(existsSync(join(out, 'config.json'))).toBe(true);
    });
  }
});
