// `npm run bench`: every benchmark, one after another (never in parallel: they would share the
// cores), each writing its JSON into bench/results/. Needs the compiled package (npm ci / npm run build).
// Usage: node bench/run.mjs [name ...]   (names: prepare, forward, kernels, bf16, checkpointing, distributed, step, merge; default all)
// step and merge create a flash checkpoint (2 layers, 32 experts, ~3.9 GB; about 2.5 minutes on
// 2 cores): V4TUNE_BENCH_FLASH=<dir> reuses one made by `v4tune init-model --preset flash --out <dir>`.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const flashModel = process.env.V4TUNE_BENCH_FLASH ? ['--model', process.env.V4TUNE_BENCH_FLASH] : ['--layers', '2', '--experts', '32'];
const benches = {
  prepare: [['prepare.mjs']],
  forward: [
    ['forward.mjs', '--preset', 'small', '--backend', 'tfjs', '--out', 'bench/results/forward-tfjs.json'],
    ['forward.mjs', '--preset', 'small', '--backend', 'native', '--out', 'bench/results/forward-native.json'],
  ],
  kernels: [['kernels.mjs', '--model', 'small']],
  bf16: [['bf16.mjs', '--out', 'bench/results/bf16-flash.json']],
  checkpointing: [['checkpointing.mjs', '--preset', 'small', '--backend', 'native', '--out', 'bench/results/checkpointing.json']],
  distributed: [['distributed.mjs', '--out', 'bench/results/distributed.json']],
  step: [
    ['step.mjs', '--preset', 'small', '--tokens', '512', '--reps', '3', '--bf16', '--peft', 'make', '--peft-dtype', 'both', '--out', 'bench/results/step-small.json'],
    ['step.mjs', '--preset', 'flash', ...flashModel, '--tokens', '512,4096', '--reps', '2', '--bf16', '--peft', 'make', '--peft-tokens', '512', '--peft-dtype', 'both', '--out', 'bench/results/step-flash.json'],
    // long sequences: activations per token and the process's peak RSS, bf16 alone, attention in
    // query chunks of 1024 (train.attention_chunk), one process per length so each peak is its own
    ['step.mjs', '--preset', 'flash', ...flashModel, '--tokens', '8192', '--reps', '1', '--modes', 'bf16', '--attention-chunk', '1024', '--peft', 'none', '--out', 'bench/results/step-flash-8k.json'],
    ['step.mjs', '--preset', 'flash', ...flashModel, '--tokens', '16384', '--reps', '1', '--modes', 'bf16', '--attention-chunk', '1024', '--peft', 'none', '--out', 'bench/results/step-flash-16k.json'],
  ],
  merge: [['merge.mjs', ...flashModel, '--quantize', '--out', 'bench/results/merge-flash.json']],
};
const wanted = process.argv.slice(2);
for (const name of wanted) {
  if (!(name in benches)) {
    console.error(`bench: unknown benchmark "${name}" (${Object.keys(benches).join(', ')})`);
    process.exit(2);
  }
}
let failed = 0;
for (const name of wanted.length > 0 ? wanted : Object.keys(benches)) {
  for (const [script, ...args] of benches[name]) {
    console.log(`bench ${name}: node bench/${script} ${args.join(' ')}`);
    // with the glibc tunable the v4tune command's #! line sets (huge pages for large buffers), so
    // the figures are the CLI's; a GLIBC_TUNABLES of your own is kept
    const env = { ...process.env, GLIBC_TUNABLES: process.env.GLIBC_TUNABLES ?? 'glibc.malloc.hugetlb=1' };
    const r = spawnSync(process.execPath, [join(here, script), ...args], { stdio: 'inherit', cwd: join(here, '..'), env });
    if (r.status !== 0) {
      console.error(`bench ${name}: bench/${script} failed (exit ${r.status})`);
      failed++;
    }
  }
}
process.exit(failed > 0 ? 1 : 0);
