// The fake HCCL beside the fake ACL runtime, rank tables, and ranks as child processes: what the
// HCCL tests need to run a world of processes on this machine without CANN.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildOnce, fakeAscendHome, kernelSources } from './harness.js';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/**
 * A folder holding lib64/libascendcl.so (the fake ACL runtime and kernels, harness.ts) and
 * lib64/libhccl.so (the fake HCCL, hccl_fake.cc), for ASCEND_HOME_PATH.
 */
export function fakeHcclHome(): string {
  const home = fakeAscendHome();
  const lib = buildOnce('libhccl.so', ['test/backend/ascend/hccl_fake.cc'], ['-shared', '-fPIC']);
  const link = join(home, 'lib64', 'libhccl.so');
  if (!existsSync(link) || readlinkSync(link) !== lib) {
    const tmp = `${link}.${process.pid}`;
    symlinkSync(lib, tmp);
    renameSync(tmp, link);
  }
  return home;
}

/** The environment of a process that uses the fake CANN in `home`. */
export function fakeCannEnv(home: string): NodeJS.ProcessEnv {
  return { ASCEND_HOME_PATH: home, V4TUNE_ASCEND_KERNELS: join(home, 'lib64', 'libascendcl.so') };
}

/**
 * A rank table of `n` ranks in `dir` (the v1.0 layout hccl_tools.py writes): one server per rank,
 * each with its NPU 0, as the fake gives every process one device. Returns its path.
 */
export function writeRankTable(dir: string, n: number): string {
  const servers = Array.from({ length: n }, (_, r) => ({
    server_id: `127.0.0.${r + 1}`,
    device: [{ device_id: '0', device_ip: `192.168.100.${r + 1}`, rank_id: String(r) }],
  }));
  const path = join(dir, `rank_table_${n}.json`);
  writeFileSync(path, JSON.stringify({ version: '1.0', server_count: String(n), server_list: servers, status: 'completed' }, null, 2));
  return path;
}

/** '' when the ranks can run (dist/ built); else what to do. */
export function ranksMissing(): string {
  return existsSync(join(ROOT, 'dist', 'distributed', 'hccl.js')) ? '' : 'dist/ is not built (npx tsc -p tsconfig.json)';
}

export interface RankResult {
  rank: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * `node script ...args` as ranks 0 … n−1 of the world in `rankTable` (RANK_TABLE_FILE, RANK_ID,
 * RANK_SIZE) on the fake CANN in `home` (null: the installed CANN); each is SIGKILLed after timeoutMs.
 */
export function runRanks(script: string, args: string[], n: number, rankTable: string, home: string | null, opts: { env?: NodeJS.ProcessEnv; rankEnv?: (rank: number) => NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {}): Promise<RankResult[]> {
  return Promise.all(Array.from({ length: n }, (_, rank) => new Promise<RankResult>((done) => {
    const p = spawn(process.execPath, [join(ROOT, script), ...args], {
      cwd: opts.cwd ?? ROOT,
      env: {
        ...process.env, ...(home === null ? {} : fakeCannEnv(home)), V4TUNE_THREADS: '1', RANK_TABLE_FILE: rankTable, RANK_ID: String(rank), RANK_SIZE: String(n),
        ...opts.env, ...opts.rankEnv?.(rank),
      },
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    p.on('close', (code) => {
      clearTimeout(timer);
      done({ rank, code, stdout, stderr });
    });
  })));
}

/** The NPU of each rank of a rank table (its device_id by rank_id), for a table of this server's NPUs. */
export function rankDevices(rankTable: string): number[] {
  const t = JSON.parse(readFileSync(rankTable, 'utf8')) as { server_list: { device: { device_id: string; rank_id: string }[] }[] };
  const devices: number[] = [];
  for (const s of t.server_list) for (const d of s.device) devices[Number(d.rank_id)] = Number(d.device_id);
  return devices;
}

/**
 * The stream-order driver (hccl_order.cc): the host code, the fake ACL table and the fake HCCL in
 * one process, under AddressSanitizer like the Ascend test driver.
 */
export function hcclOrderDriver(): string {
  const sources = [...kernelSources, 'test/backend/ascend/fake_acl.cc', 'native/ascend_acl.cc', 'native/ascend_hccl.cc', 'test/backend/ascend/hccl_fake.cc', 'test/backend/ascend/hccl_order.cc'];
  return buildOnce('hccl_order', sources, ['-fsanitize=address', '-fno-omit-frame-pointer', '-rdynamic']);
}
