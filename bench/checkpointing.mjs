// Activation checkpointing per block: peak bytes of activations the tape holds (its records'
// inputs, outputs and saved contexts; weights and LoRA factors not counted) and seconds per
// loss-and-gradient step, without and with `checkpointing`, on a preset made on the fly with a
// LoRA adapter on every attention projection and the shared expert. Prints one JSON object and
// writes it to --out.
// Usage (after `npm run build`): node bench/checkpointing.mjs [--preset small|tiny] [--tokens 256]
//   [--reps 2] [--backend native|tfjs|auto] [--out bench/results/checkpointing.json]
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
// as bin/v4tune.js does for every command: atomic garbage collections instead of incremental
// marking beside the kernel pool (see there); and only the modules a training run loads, since
// each collection marks the whole JS heap
setFlagsFromString('--no-incremental-marking');
import { createAdapter } from '../dist/lora/adapter.js';
import { loadModel } from '../dist/model/load.js';
import { initModel } from '../dist/model/init.js';

const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'small' },
    tokens: { type: 'string', default: '256' },
    reps: { type: 'string', default: '2' },
    backend: { type: 'string', default: 'native' },
    out: { type: 'string', default: 'bench/results/checkpointing.json' },
  },
});
const T = Number(values.tokens);
const reps = Number(values.reps);
const dir = mkdtempSync(join(tmpdir(), 'v4tune-bench-'));
try {
  await initModel({ preset: values.preset, out: join(dir, 'model'), seed: 0 });
  const model = await loadModel(join(dir, 'model'), { backend: values.backend, note: () => {} });
  const adapter = createAdapter(model, {
    r: 8, alpha: 16, seed: 1,
    targets: ['attn.wq_a', 'attn.wq_b', 'attn.wkv', 'attn.wo_a', 'attn.wo_b', 'ffn.shared_experts.w1', 'ffn.shared_experts.w2', 'ffn.shared_experts.w3'],
  });
  const ids = Int32Array.from({ length: T }, (_, i) => (i * 7919 + 13) % model.config.vocab_size);
  const mask = new Uint8Array(T).fill(1);
  const run = async (checkpointing) => {
    const { savedPeakBytes, loss } = await model.lossAndGrads(ids, mask, { adapter, checkpointing, measureSavedBytes: true });
    const times = [];
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now();
      await model.lossAndGrads(ids, mask, { adapter, checkpointing });
      times.push((performance.now() - t0) / 1000);
    }
    times.sort((a, b) => a - b);
    return { saved_peak_bytes: savedPeakBytes, loss, seconds_median: times[Math.floor(times.length / 2)] };
  };
  const without = await run(false);
  const withCk = await run(true);
  const result = {
    bench: 'checkpointing',
    preset: values.preset,
    layers: model.config.num_hidden_layers,
    backend: model.backend.name,
    tokens: T,
    reps,
    without,
    with: withCk,
    saved_bytes_ratio: withCk.saved_peak_bytes / without.saved_peak_bytes,
    time_ratio: withCk.seconds_median / without.seconds_median,
    same_loss: withCk.loss === without.loss,
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
