// Run as one rank of a 2-rank fake-HCCL world, with the fixture folder as argument: one training
// step's loss and LoRA gradients computed data parallel ×2 over the HCCL collective (each rank
// running one of the step's two micro-batches), and again with the routed experts split across
// the ranks (expert parallel ×2: tokens go to their experts' rank by alltoallv), against the
// same step in one process (trainer.ts stepGradients). The compute backend is the native one:
// what is under test is the collective. Each rank prints one JSON line.
import { join } from 'node:path';
import { createBackend } from '../../../dist/backend/index.js';
import { openDataset } from '../../../dist/data/dataset.js';
import { dataParallelGradients } from '../../../dist/distributed/data-parallel.js';
import { ExpertParallel, ExpertPlacement } from '../../../dist/distributed/expert-parallel.js';
import { ascendWorld, HcclCollective } from '../../../dist/distributed/hccl.js';
import { createAdapter } from '../../../dist/lora/adapter.js';
import { loadModel, openModelSource } from '../../../dist/model/load.js';
import { V4Model } from '../../../dist/model/v4/model.js';
import { stepGradients } from '../../../dist/train/trainer.js';

const dir = process.argv[2];
const c = HcclCollective.init(ascendWorld());
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

const compare = (want, got) => {
  let diff = 0;
  let scale = 0;
  for (const [k, g] of want.grads) {
    const h = got.grads.get(k);
    for (let i = 0; i < g.length; i++) {
      diff = Math.max(diff, Math.abs(g[i] - h[i]));
      scale = Math.max(scale, Math.abs(g[i]));
    }
  }
  return { diff, scale, loss: [want.lossSum / want.count, got.lossSum / got.count], count: [want.count, got.count], tokens: [want.tokens, got.tokens], keys: [want.grads.size, got.grads.size] };
};

// the reference: one process, every micro-batch and expert
const ref = await loadModel(modelDir, { backend: 'native', note: () => {} });
const want = await stepGradients(ref, adapterFor(ref.config), micro);

// data parallel ×2
const dp = await dataParallelGradients({ collective: c, expert: null, logDir: null, startStep: 0 })(ref, adapterFor(ref.config), micro);
const dpBytes = c.traffic.bytes;

// expert parallel ×2 (with data parallel ×2)
const src = await openModelSource(modelDir);
const ep = new ExpertParallel(c, new ExpertPlacement(src.config.n_routed_experts, 2, c.rank, c.size));
const model = await V4Model.load(src, ep.wrap(await createBackend('native', () => {})));
await src.close();
const epGot = await dataParallelGradients({ collective: c, expert: ep, logDir: null, startStep: 0 })(model, adapterFor(model.config), micro);

console.log(JSON.stringify({ rank: c.rank, engine: c.engine, dp: compare(want, dp), ep: compare(want, epGot), dpBytes, stats: ep.stats }));
c.finalize();
