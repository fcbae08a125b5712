// Builds and runs the Ascend test driver (harness.cc). The driver is compiled with g++ once per
// content hash of its sources into the system temp folder (a lock folder makes parallel test
// files wait for one build; each source's object is cached by its own hash and compiled in
// parallel with the others), so `npm ci`'s addon build is untouched.
//   default: the shim-built kernels behind the fake ACL table (every CI run)
//   V4TUNE_ASCEND_DEVICE=1 (npm run test:ascend): the real ACL runtime (dlopen) and the kernel
//     library that kernels/ascend/CMakeLists.txt builds (V4TUNE_ASCEND_KERNELS, default
//     kernels/ascend/build/libv4tune_ascend_kernels.so)
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const onDevice = process.env.V4TUNE_ASCEND_DEVICE === '1';

export const kernelSources = ['expert_lora.cpp', 'linear_lora.cpp', 'sinkhorn.cpp'].map((f) => `kernels/ascend/${f}`);
const hostSources = ['native/ascend_acl.cc', 'native/ascend_host.cc'];
const testSources = onDevice ? ['test/backend/ascend/harness.cc'] : ['test/backend/ascend/fake_acl.cc', 'test/backend/ascend/harness.cc'];
const headers = [
  ...readdirSync(join(root, 'kernels/ascend')).filter((f) => f.endsWith('.h')).map((f) => `kernels/ascend/${f}`),
  'kernels/ascend/shim/ascendc_shim.h', 'native/ascend_acl.h', 'native/ascend_host.h', 'kernels/cpu/lora.h',
  'kernels/cpu/weights.h', 'test/backend/ascend/fake_acl.h', 'native/ascend_hccl.h',
];
// The shim-built driver runs under AddressSanitizer: a kernel or host read or write outside the
// fake's device memory (or any host buffer) fails the run instead of passing unnoticed.
const flags = ['-std=c++17', '-O2', '-Wall', onDevice ? '-DV4_ASCEND_DEVICE' : '-DV4_ASCEND_SHIM', '-Ikernels/ascend', '-Ikernels/cpu', '-Inative'];

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

// flags that only the link step takes (the rest go to every compile as well)
const LINK_ONLY = new Set(['-shared', '-rdynamic']);
// the compiled objects and drivers are kept between runs (test/tmp-setup.ts names the folder)
const cacheDir = process.env.V4TUNE_TEST_CACHE_DIR ?? tmpdir();
const objDir = join(cacheDir, 'v4tune-ascend-obj');

/**
 * Each source compiled once per content (the source, every header, the compile flags) into
 * `<temp>/v4tune-ascend-obj/<hash>.o`, the missing ones in parallel (make -j, one job a core):
 * the driver and the HCCL stream-order driver share the kernels' and the fake's objects.
 */
function objects(sources: string[], compile: string[]): string[] {
  mkdirSync(objDir, { recursive: true });
  const hh = createHash('sha256');
  for (const f of headers) hh.update(f).update(readFileSync(join(root, f)));
  hh.update(compile.join(' '));
  const headerHash = hh.digest('hex');
  const objs = sources.map((f) => join(objDir, `${createHash('sha256').update(headerHash).update(f).update(readFileSync(join(root, f))).digest('hex').slice(0, 16)}.o`));
  const missing = sources.map((f, i) => [f, objs[i]!] as const).filter(([, o]) => !existsSync(o));
  if (missing.length > 0) {
    // each object written under a temporary name, then renamed: a parallel test file compiling the same one never reads half of it
    const rules = missing.map(([f, o]) => `${o}:\n\tg++ ${compile.join(' ')} -c ${f} -o ${o}.${process.pid}.tmp && mv -f ${o}.${process.pid}.tmp ${o}\n`);
    const r = spawnSync('make', ['-s', '-j', String(Math.max(1, availableParallelism())), '-f', '-', ...missing.map(([, o]) => o)], { cwd: root, encoding: 'utf8', input: rules.join('') });
    if (r.status !== 0) throw new Error(`compiling ${missing.map(([f]) => f).join(', ')} for the Ascend tests failed:\n${r.error ?? ''}${r.stderr}`);
  }
  return objs;
}

const built = new Map<string, string>();
/**
 * Compile `sources` into `<temp>/v4tune-ascend-<hash>/<name>` unless that file is there (the hash
 * covers the sources, the headers and the flags); returns its path.
 */
export function buildOnce(name: string, sources: string[], extra: string[]): string {
  const h = createHash('sha256');
  for (const f of [...sources, ...headers].sort()) h.update(f).update(readFileSync(join(root, f)));
  h.update([...flags, ...extra].join(' '));
  const dir = join(cacheDir, `v4tune-ascend-${h.digest('hex').slice(0, 16)}`);
  const out = join(dir, name);
  if (built.has(out)) return out;
  mkdirSync(dirname(out), { recursive: true });
  const lock = `${out}.lock`;
  if (!existsSync(out)) {
    let mine = false;
    try {
      mkdirSync(lock);
      mine = true;
    } catch {
      for (let waited = 0; !existsSync(out) && existsSync(lock) && waited < 600_000; waited += 250) sleep(250);
    }
    if (mine) {
      try {
        const all = [...flags, ...extra];
        const objs = objects(sources, all.filter((f) => !LINK_ONLY.has(f)));
        const r = spawnSync('g++', [...all, ...objs, '-ldl', '-o', `${out}.tmp`], { cwd: root, encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`linking ${name} for the Ascend tests failed:\n${r.error ?? ''}${r.stderr}`);
        renameSync(`${out}.tmp`, out);
      } finally {
        rmSync(lock, { recursive: true, force: true });
      }
    }
    if (!existsSync(out)) throw new Error(`${name} for the Ascend tests was not built (${out})`);
  }
  built.set(out, out);
  return out;
}

/** The driver's path, compiling it first when its sources changed. */
export function harness(): string {
  const asan = onDevice ? [] : ['-fsanitize=address', '-fno-omit-frame-pointer'];
  return buildOnce('harness', [...(onDevice ? [] : kernelSources), ...hostSources, ...testSources], asan);
}

/**
 * A folder holding lib64/libascendcl.so: the fake ACL runtime, aclnn grouped matmul and the
 * shim-built kernels' launchers under CANN's C names (fake_libascendcl.cc), also linked as
 * libnnopbase.so and libopapi.so, for the addon to load as ASCEND_HOME_PATH's CANN and as its
 * kernel library.
 */
export function fakeAscendHome(): string {
  const lib = buildOnce('lib64/libascendcl.so', [...kernelSources, 'test/backend/ascend/fake_acl.cc', 'test/backend/ascend/fake_libascendcl.cc'], ['-shared', '-fPIC']);
  for (const alias of ['libnnopbase.so', 'libopapi.so']) {
    const p = join(dirname(lib), alias);
    if (!existsSync(p)) {
      try {
        symlinkSync('libascendcl.so', p);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
  }
  return dirname(dirname(lib));
}

export type Arr = Float32Array | Int32Array | Uint8Array;
export interface CaseResult { error: string | null; out: Record<string, Float32Array> }

/** Run one op: kv goes to case.txt, arrays to files; returns the named float outputs. */
export function runCase(kv: Record<string, number | string>, arrays: Record<string, Arr>, outputs: string[]): CaseResult {
  const dir = mkdtempSync(join(tmpdir(), 'v4tune-ascend-case-'));
  try {
    writeFileSync(join(dir, 'case.txt'), Object.entries(kv).map(([k, v]) => `${k} ${v}`).join('\n') + '\n');
    for (const [name, a] of Object.entries(arrays)) writeFileSync(join(dir, name), new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    const r = spawnSync(harness(), ['run', dir], { cwd: root, encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:exitcode=86' } });
    const line = (r.stdout ?? '').trim().split('\n').pop() ?? '';
    if (line.startsWith('error: ')) return { error: line.slice(7), out: {} };
    if (r.status !== 0 || line !== 'ok') throw new Error(`harness run failed (status ${r.status}): ${r.stdout}${r.stderr}`);
    const out: Record<string, Float32Array> = {};
    for (const name of outputs) {
      const b = readFileSync(join(dir, name));
      out[name] = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
    }
    return { error: null, out };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface SelfCheck { name: string; ok: boolean; message: string }
/** The driver's self-tests (shim-selftest or host-selftest), one entry per check. */
export function selftest(kind: 'shim-selftest' | 'host-selftest'): SelfCheck[] {
  const r = spawnSync(harness(), [kind], { cwd: root, encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:exitcode=86' } });
  if (r.status !== 0 && r.status !== 1) throw new Error(`harness ${kind} failed (status ${r.status}): ${r.stdout}${r.stderr}`);
  return r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as SelfCheck);
}
