// One rank of bench/distributed.mjs, started by `mpirun -np N`: optimizer steps of a LoRA run on
// the model in --dir (every attention projection, the shared and the routed experts adapted) with
// the data-parallel step (src/distributed/data-parallel.ts), routed experts split over --ep ranks
// with their LoRA factors and moments (src/distributed/shard.ts: each rank holds only its own
// experts' and the replicated modules', as `mpirun … v4tune train` does); each rank runs only its
// micro-batches.
// Rank 0 prints one JSON object: median seconds per step, tokens per step and the traffic of a
// step (distributed-log.jsonl of src/distributed).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createBackend } from '../dist/backend/index.js';
import { tryLoadAddon } from '../dist/backend/native/addon.js';
import { dataParallelGradients, DISTRIBUTED_LOG, microBatchesOf } from '../dist/distributed/data-parallel.js';
import { ExpertParallel, ExpertPlacement } from '../dist/distributed/expert-parallel.js';
import { MpiCollective } from '../dist/distributed/mpi.js';
import { AdapterShards } from '../dist/distributed/shard.js';
import { createAdapter } from '../dist/lora/adapter.js';
import { openModelSource } from '../dist/model/load.js';
import { V4Model } from '../dist/model/v4/model.js';
import { Trainer } from '../dist/train/trainer.js';

const { values } = parseArgs({
  options: {
    dir: { type: 'string' }, ep: { type: 'string', default: '1' }, steps: { type: 'string', default: '3' },
    'seq-len': { type: 'string', default: '128' }, 'grad-accum': { type: 'string', default: '4' }, threads: { type: 'string', default: '1' },
  },
});
const c = MpiCollective.init();
const ep = Number(values.ep);
const T = Number(values['seq-len']);
const G = Number(values['grad-accum']);
tryLoadAddon()?.setThreads(Number(values.threads));
const src = await openModelSource(values.dir);
const placement = ep > 1 ? new ExpertParallel(c, new ExpertPlacement(src.config.n_routed_experts, ep, c.rank, c.size)) : null;
const backend = await createBackend('native', () => {});
const model = await V4Model.load(src, placement ? placement.wrap(backend) : backend);
await src.close();
const shards = placement ? new AdapterShards(c, placement.placement) : null;
const lora = { r: 8, alpha: 16, seed: 1 };
const adapter = createAdapter(model, lora, shards ? (m) => shards.holds(m) : undefined);
const full = shards ? createAdapter(model, lora) : adapter;
const trainable = full.modules().reduce((n, m) => n + full.factors(m).A.length + full.factors(m).B.length, 0);
const V = model.config.vocab_size;
// 64 synthetic rows of T tokens, two documents each
const rows = Array.from({ length: 64 }, (_, r) => {
  const input_ids = Int32Array.from({ length: T }, (_, i) => (r * 7919 + i * 104729 + 13) % V);
  const h = T / 2;
  return { input_ids, loss_mask: new Uint8Array(T).fill(1), segments: [h, T - h], segment_ids: Uint16Array.from({ length: T }, (_, i) => (i < h ? 0 : 1)) };
});
const logDir = mkdtempSync(join(tmpdir(), 'v4tune-bench-dist-'));
const steps = Number(values.steps);
const settings = { steps: steps + 1, batchRows: 1, gradAccum: G, lr: 1e-3, schedule: 'constant', warmupSteps: 0, weightDecay: 0, maxGradNorm: 1, seed: 0 };
const gradients = dataParallelGradients({ collective: c, expert: placement, logDir, startStep: 0, shards });
const trainer = new Trainer(model, adapter, rows, settings, undefined, gradients, null, (g) => microBatchesOf(c.rank, c.size, g));
const times = [];
let tokens = 0;
for (let s = 0; s <= steps; s++) {
  await c.barrier();
  const t0 = performance.now();
  const rec = await trainer.step();
  await c.barrier();
  if (s > 0) times.push((performance.now() - t0) / 1000); // the first step warms up
  tokens = rec.tokens;
}
if (c.rank === 0) {
  const log = readFileSync(join(logDir, DISTRIBUTED_LOG), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).at(-1);
  times.sort((a, b) => a - b);
  const sec = times[Math.floor(times.length / 2)];
  console.log(JSON.stringify({
    ranks: c.size, expert_parallel: ep, threads_per_rank: Number(values.threads), tokens_per_step: tokens, seconds_per_step: sec,
    tokens_per_s: tokens / sec, trainable_parameters: trainable, lora_values_held: log.lora_values_held ?? Array(c.size).fill(trainer.parameterCount()),
    allreduce_bytes_per_step: log.allreduce_bytes, alltoallv_bytes_per_step: log.alltoallv_bytes, pairs_sent: log.pairs_sent, pairs_kept: log.pairs_kept,
    placement: placement?.placement.describe() ?? null,
  }));
}
rmSync(logDir, { recursive: true, force: true });
c.finalize();
