// Run under `mpirun -np 2` with the fixture folder as argument: one training step's loss and
// LoRA gradients with the routed experts split across the ranks (expert parallel ×2, each rank
// running one of the step's two micro-batches), against the same step computed in one process
// with every expert (trainer.ts stepGradients). Each rank prints one JSON line.
import { join } from 'node:path';
import { createBackend } from '../../dist/backend/index.js';
import { openDataset } from '../../dist/data/dataset.js';
import { dataParallelGradients } from '../../dist/distributed/data-parallel.js';
import { ExpertParallel, ExpertPlacement } from '../../dist/distributed/expert-parallel.js';
import { MpiCollective } from '../../dist/distributed/mpi.js';
import { createAdapter } from '../../dist/lora/adapter.js';
import { openModelSource, loadModel } from '../../dist/model/load.js';
import { V4Model } from '../../dist/model/v4/model.js';
import { stepGradients } from '../../dist/train/trainer.js';

const dir = process.argv[2];
const checkpointing = process.argv[3] === 'checkpointing';
const c = MpiCollective.init();
const modelDir = join(dir, 'model');
const rows = [...openDataset(join(dir, 'data')).rows('train')];
const micro = [rows.slice(0, 2), rows.slice(2, 4)];

const adapterFor = (config) => {
  const a = createAdapter({ config, dir: modelDir }, { r: 4, alpha: 8, seed: 3 });
  // B starts at 0 (no gradient reaches A): give every B small seeded values
  let s = 12345;
  for (const m of a.modules()) {
    const B = a.factors(m).B;
    for (let i = 0; i < B.length; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      B[i] = ((s / 2 ** 32) - 0.5) * 0.2;
    }
  }
  return a;
};

// the reference: one process, every expert
const ref = await loadModel(modelDir, { backend: 'native', note: () => {} });
const want = await stepGradients(ref, adapterFor(ref.config), micro, checkpointing);

// expert parallel ×2
const src = await openModelSource(modelDir);
const placement = new ExpertPlacement(src.config.n_routed_experts, 2, c.rank, c.size);
const ep = new ExpertParallel(c, placement);
const model = await V4Model.load(src, ep.wrap(await createBackend('native', () => {})));
await src.close();
const held = model.weights.layers.flatMap((l) => l.ffn.experts.map((e, i) => ('raw' in e.w1 ? i : -1))).filter((i) => i >= 0);
const got = await dataParallelGradients({ collective: c, expert: ep, logDir: null, startStep: 0 })(model, adapterFor(model.config), micro, checkpointing);

let expert = { diff: 0, scale: 0 };
let other = { diff: 0, scale: 0 };
for (const [k, g] of want.grads) {
  const h = got.grads.get(k);
  const acc = /\.ffn\.experts\.\d+\./.test(k) ? expert : other;
  for (let i = 0; i < g.length; i++) {
    acc.diff = Math.max(acc.diff, Math.abs(g[i] - h[i]));
    acc.scale = Math.max(acc.scale, Math.abs(g[i]));
  }
}
console.log(JSON.stringify({
  rank: c.rank, backend: model.backend.name, placement: placement.describe(), local: placement.local(), held: [...new Set(held)].sort((a, b) => a - b),
  loss: { want: want.lossSum / want.count, got: got.lossSum / got.count, count: [want.count, got.count], tokens: [want.tokens, got.tokens] },
  expert, other, keys: [want.grads.size, got.grads.size], stats: ep.stats, bytes: c.traffic.bytes,
}));
c.finalize();
