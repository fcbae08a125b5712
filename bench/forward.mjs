// Forward throughput of the V4 graph: tokens/s of the loss forward (lm head in vocabulary chunks)
// on a preset checkpoint made on the fly. Prints one JSON object and writes it to --out.
// Usage (after `npm run build`): node bench/forward.mjs [--preset small|tiny] [--tokens 256]
//   [--reps 3] [--backend tfjs|native|auto] [--out bench/results/forward.json]
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
// as bin/v4tune.js does for every command: atomic garbage collections instead of incremental
// marking beside the kernel pool (see there); and only the modules a training run loads, since
// each collection marks the whole JS heap
setFlagsFromString('--no-incremental-marking');
import { loadModel } from '../dist/model/load.js';
import { initModel } from '../dist/model/init.js';

const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'small' },
    tokens: { type: 'string', default: '256' },
    reps: { type: 'string', default: '3' },
    backend: { type: 'string', default: 'tfjs' },
    out: { type: 'string', default: 'bench/results/forward.json' },
  },
});
const T = Number(values.tokens);
const reps = Number(values.reps);
const dir = mkdtempSync(join(tmpdir(), 'v4tune-bench-'));
try {
  await initModel({ preset: values.preset, out: join(dir, 'model'), seed: 0 });
  const notes = [];
  const model = await loadModel(join(dir, 'model'), { backend: values.backend, note: (l) => notes.push(l) });
  const ids = Int32Array.from({ length: T }, (_, i) => (i * 7919 + 13) % model.config.vocab_size);
  await model.loss(ids.subarray(0, Math.min(T, 32)), null); // warm-up
  const times = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    await model.loss(ids, null);
    times.push((performance.now() - t0) / 1000);
  }
  times.sort((a, b) => a - b);
  const median = times[Math.floor(times.length / 2)];
  const result = {
    bench: 'forward',
    preset: values.preset,
    backend: model.backend.name,
    tokens: T,
    reps,
    seconds_median: median,
    tokens_per_s: T / median,
    cpus: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    node: process.version,
    date: new Date().toISOString(),
  };
  model.dispose();
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(values.out, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
