// The HCCL engine of the Collective interface against a fake libhccl.so (hccl_fake.cc) beside the
// fake ACL runtime, both loaded with dlopen through ASCEND_HOME_PATH as the real CANN would be:
// every collective on 3 processes gives its definition on every rank (uneven and empty blocks,
// float64 allreduce, which HcclAllReduce does not take, by allgather); a collective runs in stream
// order between its upload and its download (hccl_order.cc); every HcclResult code has its name
// and meaning, and a failing call, a rank that never comes and a bad rank table say so; without
// libhccl.so the engine says what is missing in one line; a 2-process training step over it
// equals one process's; train.backend ascend under a rank table takes it, and nothing else does.
// A real HCCL on NPUs is not here (the last suite runs there, under npm run test:ascend).
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HcclCollective, ascendWorld, hcclErrorText, hcclUnavailableReason, joinHccl } from '../../../src/distributed/hccl.js';
import { makeFixture, mpirunArgs, run, skipWithoutMpi, type Fixture } from '../../distributed/helpers.js';
import { skipNative } from '../native/helpers.js';
import { onDevice } from './harness.js';
import { fakeCannEnv, fakeHcclHome, hcclOrderDriver, rankDevices, ranksMissing, runRanks, writeRankTable, type RankResult } from './hccl-harness.js';

const skip = skipNative || onDevice;

describe('the Ascend launch environment', () => {
  it('RANK_TABLE_FILE and RANK_ID make a world; RANK_SIZE is checked; nothing else does', () => {
    expect(ascendWorld({})).toBeNull();
    expect(ascendWorld({ RANK_ID: '1' })).toBeNull();
    expect(ascendWorld({ RANK_TABLE_FILE: '/t.json', RANK_ID: '1' })).toEqual({ rankTable: '/t.json', rank: 1, size: null });
    expect(ascendWorld({ RANK_TABLE_FILE: '/t.json', RANK_ID: '1', RANK_SIZE: '2' })).toEqual({ rankTable: '/t.json', rank: 1, size: 2 });
    expect(() => ascendWorld({ RANK_TABLE_FILE: '/t.json', RANK_ID: 'x' })).toThrow('RANK_ID must be a rank number (got "x")');
    expect(() => ascendWorld({ RANK_TABLE_FILE: '/t.json', RANK_ID: '2', RANK_SIZE: '2' })).toThrow('RANK_SIZE must be a rank count above RANK_ID 2 (got "2")');
  });

  it('HCCL is asked for only by train.backend ascend, and an Ascend backend without a rank table says why it is not used', () => {
    expect(joinHccl('native', false, { RANK_TABLE_FILE: '/t.json', RANK_ID: '0' })).toEqual({ collective: null, why: '' });
    expect(joinHccl('auto', false, { RANK_TABLE_FILE: '/t.json', RANK_ID: '0' })).toEqual({ collective: null, why: '' });
    expect(joinHccl('ascend', true, {})).toEqual({ collective: null, why: 'train.backend is ascend but no Ascend launch set RANK_TABLE_FILE and RANK_ID; collectives over MPI' });
  });
});

describe.skipIf(skip)('the HCCL collective on the fake libhccl.so', () => {
  let home: string;
  let tmp: string;
  beforeAll(() => {
    tmp = mkdtempSync(join(tmpdir(), 'v4tune-hccl-'));
    home = fakeHcclHome();
  }, 600_000);
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('every HcclResult code has its name and meaning; an unknown code says so', () => {
    const names = ['HCCL_SUCCESS', 'HCCL_E_PARA', 'HCCL_E_PTR', 'HCCL_E_MEMORY', 'HCCL_E_INTERNAL', 'HCCL_E_NOT_SUPPORT', 'HCCL_E_NOT_FOUND',
      'HCCL_E_UNAVAIL', 'HCCL_E_SYSCALL', 'HCCL_E_TIMEOUT', 'HCCL_E_OPEN_FILE_FAILURE', 'HCCL_E_TCP_CONNECT', 'HCCL_E_ROCE_CONNECT',
      'HCCL_E_TCP_TRANSFER', 'HCCL_E_ROCE_TRANSFER', 'HCCL_E_RUNTIME', 'HCCL_E_DRV', 'HCCL_E_PROFILING', 'HCCL_E_CCE', 'HCCL_E_NETWORK',
      'HCCL_E_AGAIN', 'HCCL_E_REMOTE'];
    names.forEach((name, code) => {
      const t = hcclErrorText(code);
      expect(t.startsWith(`${name} (${code}): `), t).toBe(true);
      expect(t.length).toBeGreaterThan(`${name} (${code}): `.length + 5);
    });
    expect(hcclErrorText(99)).toBe("HCCL error 99 (not a code v4tune knows; see CANN's hccl_types.h)");
  });

  it('without libhccl.so beside the runtime, HCCL is unavailable in one line', () => {
    // a CANN folder with the fake runtime but no libhccl.so, seen by a fresh process
    const bare = join(tmp, 'bare');
    mkdirSync(join(bare, 'lib64'), { recursive: true });
    symlinkSync(join(home, 'lib64', 'libascendcl.so'), join(bare, 'lib64', 'libascendcl.so'));
    const script = "import('./dist/distributed/hccl.js').then((m) => console.log(JSON.stringify(m.hcclUnavailableReason())))";
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: join(import.meta.dirname, '..', '..', '..'), encoding: 'utf8', env: { ...process.env, ...fakeCannEnv(bare), V4TUNE_ASCEND_KERNELS: join(home, 'lib64', 'libascendcl.so') } });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toBe('HCCL (libhccl.so) is not installed or not on the library path (source set_env.sh)');
  });

  it.skipIf(ranksMissing() !== '')('3 ranks: allreduce (f32, f64, i32), allgatherv, alltoallv, broadcast and barrier give their definitions on every rank', async () => {
    const table = writeRankTable(tmp, 3);
    checkCollectives(await runRanks('test/backend/ascend/hccl-check.mjs', [], 3, table, home), `HCCL (${join(home, 'lib64', 'libhccl.so')}, rank table ${table}, NPU 0)`);
  }, 300_000);

  it('stream order: the collective runs after its upload and before its download, on one stream; the fake shows the wrong orders', () => {
    const r = spawnSync(hcclOrderDriver(), [writeRankTable(mkdtempSync(join(tmp, 'order-')), 1)], { encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:exitcode=86' } });
    const checks = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { name: string; ok: boolean; message: string });
    expect(checks.map((c) => c.name)).toEqual([
      'HcclWorld: upload, collective, download on one stream, then waits',
      'an upload on another stream without an event is not seen by the collective',
      'the result reaches the host only when the stream is synchronised',
      'no device memory, stream or event left',
    ]);
    for (const c of checks) expect(c.ok, `${c.name}: ${c.message}`).toBe(true);
    expect(r.status, r.stderr).toBe(0);
  }, 600_000);

  it('a failing HCCL call rejects with the code\'s name, meaning and HCCL\'s text; the next call works', async () => {
    Object.assign(process.env, fakeCannEnv(home));
    const c = HcclCollective.init({ rankTable: writeRankTable(join(tmp), 1), rank: 0, size: 1 });
    try {
      process.env.V4TUNE_FAKE_HCCL_FAIL = 'HcclAllReduce=11';
      await expect(c.allreduceSum(Float32Array.of(1))).rejects.toThrow(
        'HcclAllReduce failed: HCCL_E_TCP_CONNECT (11): a TCP connection to another rank failed (check the rank table\'s server addresses and the firewall) [HCCL: fake libhccl.so returned 11]');
      delete process.env.V4TUNE_FAKE_HCCL_FAIL;
      const x = Float32Array.of(1, 2);
      await c.allreduceSum(x);
      expect(Array.from(x)).toEqual([1, 2]);
      const a = await c.alltoallv(Int32Array.of(5, 6), [2]);
      expect([...a.recv, ...a.recvCounts]).toEqual([5, 6, 2]);
    } finally {
      delete process.env.V4TUNE_FAKE_HCCL_FAIL;
      c.finalize();
    }
  });

  it('a bad rank table or rank fails at init by the code\'s name', () => {
    Object.assign(process.env, fakeCannEnv(home));
    expect(hcclUnavailableReason()).toBe('');
    expect(() => HcclCollective.init({ rankTable: join(tmp, 'missing.json'), rank: 0, size: null })).toThrow(/^HcclCommInitClusterInfo failed: HCCL_E_OPEN_FILE_FAILURE \(10\)/);
    expect(() => HcclCollective.init({ rankTable: writeRankTable(tmp, 2), rank: 2, size: null })).toThrow(/^HcclCommInitClusterInfo failed: HCCL_E_PARA \(1\)/);
    expect(() => HcclCollective.init({ rankTable: writeRankTable(tmp, 2), rank: 0, size: 3 })).toThrow(`RANK_SIZE is 3 but the rank table ${join(tmp, 'rank_table_2.json')} holds 2 ranks`);
  });

  it.skipIf(ranksMissing() !== '')('a rank that never comes: the other\'s collective fails with HCCL_E_TIMEOUT', async () => {
    const dir = mkdtempSync(join(tmp, 'alone-'));
    const table = writeRankTable(dir, 2);
    // only rank 0 of the table's 2 starts
    const [r0] = await runRanks('test/backend/ascend/hccl-check.mjs', [], 1, table, home, { env: { RANK_SIZE: '2', V4TUNE_FAKE_HCCL_TIMEOUT_MS: '300' } });
    expect(r0!.code).not.toBe(0);
    expect(r0!.stderr).toContain('HcclAllReduce failed: HCCL_E_TIMEOUT (9): timed out waiting for the other ranks');
  }, 120_000);
});

describe.skipIf(skip || ranksMissing() !== '')('a training step over the fake HCCL', () => {
  let fx: Fixture;
  let home: string;
  beforeAll(async () => {
    home = fakeHcclHome();
    fx = await makeFixture();
  }, 600_000);
  afterAll(() => fx?.cleanup());

  // Tolerance as test/distributed's: the ranks compute the same micro-batches as one process; only
  // the order of the gradient sum differs (float32 rounding).
  it('2 processes, data parallel and expert parallel ×2: the step\'s loss and LoRA gradients equal one process\'s', async () => {
    const table = writeRankTable(fx.dir, 2);
    const ranks = await runRanks('test/backend/ascend/hccl-step-check.mjs', [fx.dir], 2, table, home, { timeoutMs: 240_000 });
    for (const x of ranks) expect(x.code, `rank ${x.rank}: ${x.stderr}`).toBe(0);
    for (const [me, r] of ranks.entries()) {
      const x = JSON.parse(r.stdout.trim().split('\n').pop()!) as {
        rank: number; engine: string; dpBytes: number; stats: { pairsSent: number };
        dp: StepDiff; ep: StepDiff;
      };
      expect(x.rank).toBe(me);
      expect(x.engine).toMatch(/^HCCL \(/);
      for (const d of [x.dp, x.ep]) {
        expect(d.keys[1]).toBe(d.keys[0]);
        expect(d.count[1]).toBe(d.count[0]);
        expect(d.tokens[1]).toBe(d.tokens[0]);
        expect(Math.abs(d.loss[1]! - d.loss[0]!) / d.loss[0]!).toBeLessThan(1e-6);
        expect(d.scale).toBeGreaterThan(1e-3);
        expect(d.diff).toBeLessThanOrEqual(1e-5 * d.scale);
      }
      expect(x.dpBytes).toBeGreaterThan(0);
      expect(x.stats.pairsSent).toBeGreaterThan(0); // tokens did cross to the other rank's experts
    }
  }, 300_000);
});

interface StepDiff { diff: number; scale: number; loss: number[]; count: number[]; tokens: number[]; keys: number[] }

describe.skipIf(skip || ranksMissing() !== '')('which engine a distributed run takes', () => {
  let tmp: string;
  let home: string;
  beforeAll(() => {
    tmp = mkdtempSync(join(tmpdir(), 'v4tune-hccl-join-'));
    home = fakeHcclHome();
  }, 600_000);
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const parse = (r: { code: number | null; stdout: string; stderr: string }) => {
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as { rank: number | null; describe: string | null; timeoutS: number | null; notes: string[] };
  };

  it('train.backend ascend under an Ascend launch: HCCL, named in the run\'s one-line description', async () => {
    const table = writeRankTable(tmp, 2);
    const ranks = await runRanks('test/backend/ascend/hccl-join-check.mjs', [join(tmp, 'out'), 'ascend'], 2, table, home);
    for (const [me, r] of ranks.entries()) {
      const x = parse(r);
      expect(x.rank).toBe(me);
      expect(x.describe).toMatch(new RegExp(`^2 ranks over HCCL \\(${join(home, 'lib64', 'libhccl.so')}, rank table ${table}, NPU 0\\): data parallel ×2 `));
      expect(x.timeoutS).toBe(1800);
      expect(x.notes).toEqual([]);
    }
  }, 120_000);

  it('another backend under the same launch does not take HCCL (one process each, no MPI launcher: single-process)', async () => {
    const table = writeRankTable(tmp, 2);
    const [r] = await runRanks('test/backend/ascend/hccl-join-check.mjs', [join(tmp, 'out'), 'native'], 1, table, home, { env: { RANK_SIZE: '2' } });
    expect(parse(r!)).toEqual({ rank: null, describe: null, timeoutS: null, notes: [] });
  }, 120_000);

  it('an Ascend launch of 2 ranks where HCCL does not load, with no MPI launcher, fails saying why', async () => {
    const bare = join(tmp, 'bare');
    mkdirSync(join(bare, 'lib64'), { recursive: true });
    symlinkSync(join(home, 'lib64', 'libascendcl.so'), join(bare, 'lib64', 'libascendcl.so'));
    const table = writeRankTable(tmp, 2);
    const [r] = await runRanks('test/backend/ascend/hccl-join-check.mjs', [join(tmp, 'out'), 'ascend'], 1, table, bare, { env: { RANK_SIZE: '2' } });
    expect(r!.code).not.toBe(0);
    expect(r!.stderr).toContain(`v4tune: rank 0 of the Ascend launch in ${table}: HCCL (libhccl.so) is not installed or not on the library path (source set_env.sh); HCCL is needed (or start the ranks with mpirun)`);
  }, 120_000);

  it.skipIf(skipWithoutMpi())('train.backend ascend under mpirun without a rank table: MPI, saying in one line why not HCCL', async () => {
    const r = await run('mpirun', [...mpirunArgs(2), process.execPath, 'test/backend/ascend/hccl-join-check.mjs', join(tmp, 'out-mpi'), 'ascend'], {
      cwd: join(import.meta.dirname, '..', '..', '..'), timeoutMs: 120_000, env: { ...fakeCannEnv(home), RANK_TABLE_FILE: '' },
    });
    expect(r.code, r.stderr).toBe(0);
    const xs = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { rank: number; describe: string; notes: string[] }).sort((a, b) => a.rank - b.rank);
    expect(xs.map((x) => x.rank)).toEqual([0, 1]);
    for (const x of xs) expect(x.describe).toMatch(/^2 ranks over MPI \(/);
    // rank 0 alone says it
    expect(xs[0]!.notes).toEqual(['distributed: train.backend is ascend but no Ascend launch set RANK_TABLE_FILE and RANK_ID; collectives over MPI']);
    expect(xs[1]!.notes).toEqual([]);
  }, 120_000);
});

// npm run test:ascend on an Atlas server, with V4TUNE_HCCL_RANK_TABLE naming a rank table of its
// NPUs: the same collectives through the installed CANN's HCCL, one process per NPU.
const deviceTable = process.env.V4TUNE_HCCL_RANK_TABLE;
describe.runIf(onDevice && deviceTable !== undefined)('the HCCL collective on the NPUs of V4TUNE_HCCL_RANK_TABLE', () => {
  it('allreduce, allgatherv, alltoallv, broadcast and barrier give their definitions on every rank', async () => {
    const devices = rankDevices(deviceTable!);
    const ranks = await runRanks('test/backend/ascend/hccl-check.mjs', [], devices.length, deviceTable!, null, { rankEnv: (r) => ({ V4TUNE_ASCEND_DEVICE_ID: String(devices[r]) }), timeoutMs: 600_000 });
    checkCollectives(ranks, /^HCCL \(/);
  }, 600_000);
});

/** Each rank's line of hccl-check.mjs against the collectives' definitions for its world size. */
function checkCollectives(ranks: RankResult[], engine: string | RegExp): void {
  for (const x of ranks) expect(x.code, `rank ${x.rank}: ${x.stderr}`).toBe(0);
  const outs = ranks.map((x) => JSON.parse(x.stdout.trim()) as Record<string, unknown>);
  const P = outs.length;
  const ranksUpTo = Array.from({ length: P }, (_, r) => r);
  const sum = (f: (r: number) => number) => ranksUpTo.reduce((s, r) => s + f(r), 0);
  for (const [me, x] of outs.entries()) {
    expect(x.rank).toBe(me);
    expect(x.size).toBe(P);
    if (typeof engine === 'string') expect(x.engine).toBe(engine);
    else expect(x.engine).toMatch(engine);
    expect(x.allreduceF32).toEqual([0, 1, 2, 3, 4].map((i) => sum((r) => r * 10 + i + 0.5)));
    expect(x.allreduceF64).toEqual([sum((r) => 1e-17 * (r + 1)), sum((r) => 2 ** 40 + r)]);
    expect(x.allreduceI32).toEqual([sum((r) => r), sum((r) => -2 * r), P << 20]);
    expect(x.allreduceBig).toEqual([sum((r) => r + 1), sum((r) => r + 1)]);
    expect(x.allgatherv).toEqual(ranksUpTo.flatMap((r) => Array.from({ length: r + 1 }, (_, i) => 100 * r + i)));
    // from rank q: (q + me) % 3 values 100·q + 10·me + i
    const want: number[] = [];
    const counts: number[] = [];
    for (let q = 0; q < P; q++) {
      counts.push((q + me) % 3);
      for (let i = 0; i < (q + me) % 3; i++) want.push(100 * q + 10 * me + i);
    }
    expect(x.alltoallv).toEqual(want);
    expect(x.alltoallvCounts).toEqual(counts);
    expect(x.alltoallvEmpty).toEqual([0, ...counts.map(() => 0)]);
    expect(x.broadcast).toEqual([7, 8, 9]);
    expect(x.badCounts).toBe(`HCCL alltoallv: ${P + 1} send counts for ${P} ranks`);
    // the allreduces count their buffers once; the rest what this rank sends to the others
    let out = 0;
    for (let q = 0; q < P; q++) if (q !== me) out += (me + q) % 3;
    const root = me === P - 1;
    const sent = 4 * (me + 1) * (P - 1) + (8 * out + 4 * P) + 4 * P + (root ? 3 * (P - 1) : 0);
    expect(x.traffic).toEqual({ bytes: 20 + 16 + 12 + 400_000 + sent, calls: root ? 8 : 7 });
  }
}
