// The interop tests' Python: the venv that test/interop/python-env.sh builds (a cache folder
// keyed by requirements.txt). Absent, the interop suites skip with one line saying how to
// build it; under CI=true they must run, so an absent venv fails them instead.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';

const here = dirname(fileURLToPath(import.meta.url));

/** The venv's python, as python-env.sh names it; null when it has not been built. */
export function findPython(): string | null {
  const key = createHash('sha256').update(readFileSync(join(here, 'requirements.txt'))).digest('hex').slice(0, 16);
  const cache = process.env.V4TUNE_PY_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'v4tune');
  const venv = join(cache, `venv-${key}`);
  const python = join(venv, 'bin', 'python');
  return existsSync(python) && existsSync(join(venv, '.complete')) ? python : null;
}

export const python = findPython();
/** True when the interop suites should skip (no venv, not under CI). */
export const skipPython = python === null && process.env.CI !== 'true';
if (skipPython) {
  console.log('interop tests skipped: the Python clients are not installed (run `bash test/interop/python-env.sh` to enable them)');
}

/** Run a Python script in the venv; returns stdout, throws with stderr on a non-zero exit. */
export function runPython(script: string, args: string[] = [], timeoutMs = 600_000): string {
  if (python === null) throw new Error('interop Python venv missing: run `bash test/interop/python-env.sh`');
  const r = spawnSync(python, ['-c', script, ...args], { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`python failed (${r.status ?? r.signal}):\n${r.stderr}`);
  return r.stdout;
}

/**
 * gguf-py's reading of GGUF tensors (GGUFReader, gguf.quants.dequantize: llama.cpp's Python
 * reader): each named tensor's ggml type and its values as float32, flattened (through files in `dir`)
 */
export function ggufPyTensors(path: string, names: string[], dir: string): Map<string, { type: string; values: Float32Array }> {
  const files = Object.fromEntries(names.map((n, i) => [n, join(dir, `gguf-py-${i}.f32`)]));
  const PY = String.raw`
import sys, json, numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader(sys.argv[1])
ts = {t.name: t for t in r.tensors}
types = {}
for name, file in json.loads(sys.argv[2]).items():
    t = ts[name]
    dequantize(t.data, t.tensor_type).astype('<f4').reshape(-1).tofile(file)
    types[name] = t.tensor_type.name
print(json.dumps(types))
`;
  const types = JSON.parse(runPython(PY, [path, JSON.stringify(files)], 120_000).trim().split('\n').pop()!) as Record<string, string>;
  return new Map(names.map((n) => {
    const b = readFileSync(files[n]!);
    return [n, { type: types[n]!, values: new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)) }];
  }));
}
