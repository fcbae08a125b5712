// Run as one process of a launch, with an output folder and a train.backend as arguments: the
// distributed run joinDistributed makes of this process (the engine it picked and the lines it
// said), as one JSON line (hccl.test.ts checks it).
import { joinDistributed } from '../../../dist/distributed/launch.js';

const [output, backend] = process.argv.slice(2);
const recipe = {
  file: 'recipe.yaml', output,
  train: { backend, grad_accum: 2 },
  distributed: { data_parallel: undefined, expert_parallel: 1, timeout_s: 1800 },
  lora: { dropout: 0 },
};
const notes = [];
const dist = await joinDistributed(recipe, (l) => notes.push(l));
console.log(JSON.stringify({ rank: dist?.rank ?? null, describe: dist?.describe() ?? null, timeoutS: dist?.collective.timeoutS ?? null, notes }));
dist?.finish();
