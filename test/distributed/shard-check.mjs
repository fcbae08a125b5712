// Run under `mpirun -np 2` with: the fixture folder, the run folder to write, and optionally a
// checkpoint to resume from. Trains the library way with expert parallel ×2 and the adapter
// split (each rank creates and updates only its routed experts' LoRA factors and moments) and
// the train split read row by row (each rank reads only its micro-batches' rows); rank 0 writes
// the complete adapter and checkpoints. Each rank prints one JSON line: what it holds and read.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBackend } from '../../dist/backend/index.js';
import { openDataset, openRowReader } from '../../dist/data/dataset.js';
import { dataParallelEvaluate, dataParallelGradients, microBatchesOf } from '../../dist/distributed/data-parallel.js';
import { ExpertParallel, ExpertPlacement } from '../../dist/distributed/expert-parallel.js';
import { MpiCollective } from '../../dist/distributed/mpi.js';
import { AdapterShards, routedExpertOf } from '../../dist/distributed/shard.js';
import { createAdapter } from '../../dist/lora/adapter.js';
import { openModelSource } from '../../dist/model/load.js';
import { V4Model } from '../../dist/model/v4/model.js';
import { loadCheckpoint } from '../../dist/train/checkpoint.js';
import { runTraining } from '../../dist/train/run.js';
import { SETTINGS } from './shard-settings.mjs';

const [dir, out, resumeFrom] = process.argv.slice(2);
const c = MpiCollective.init();
const modelDir = join(dir, 'model');
const src = await openModelSource(modelDir);
const placement = new ExpertPlacement(src.config.n_routed_experts, 2, c.rank, c.size);
const ep = new ExpertParallel(c, placement);
const shards = new AdapterShards(c, placement);
const model = await V4Model.load(src, ep.wrap(await createBackend('native', () => {})));
await src.close();
const start = resumeFrom
  ? { checkpoint: await loadCheckpoint(resumeFrom, (m) => shards.holds(m)) }
  : { adapter: createAdapter({ config: model.config, dir: modelDir }, { r: 4, alpha: 8, seed: 3 }, (m) => shards.holds(m)) };
const adapter = 'checkpoint' in start ? start.checkpoint.adapter : start.adapter;
const rows = await openRowReader(openDataset(join(dir, 'data')), 'train');
const sink = { log: () => {}, progress: () => ({ update: () => {}, stop: () => {} }) };
const r = await runTraining({
  model, start, train: rows, eval: [], settings: SETTINGS, evalEvery: 0, checkpointEvery: 1, identity: {},
  output: c.rank === 0 ? out : mkdtempSync(join(tmpdir(), 'v4tune-shard-')),
  gradients: dataParallelGradients({ collective: c, expert: ep, logDir: c.rank === 0 ? out : null, startStep: 'checkpoint' in start ? start.checkpoint.state.step : 0, shards }),
  evaluate: dataParallelEvaluate(c, ep),
  runs: (g) => microBatchesOf(c.rank, c.size, g),
  shards,
  writesCheckpoints: c.rank === 0,
}, sink);
const experts = new Set();
let values = 0;
for (const m of adapter.modules()) {
  const e = routedExpertOf(m);
  if (e !== null) experts.add(e);
  values += adapter.factors(m).A.length + adapter.factors(m).B.length;
}
const moments = 'checkpoint' in start ? start.checkpoint.moments : null;
console.log(JSON.stringify({
  rank: c.rank, step: r.step, local: placement.local(), experts: [...experts].sort((a, b) => a - b), values,
  momentKeys: moments ? moments.size : null, moduleKeys: 2 * adapter.modules().length,
  rowsRead: rows.stats.rows, bytesRead: rows.stats.bytes, trainRows: rows.length, trainable: r.trainableParameters,
}));
rows.close();
c.finalize();
