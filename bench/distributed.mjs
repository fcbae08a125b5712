// Scaling of distributed LoRA training on this machine, 1 → 2 ranks under `mpirun`, and a
// projection for V4-Flash on N machines from what was measured. Writes
// bench/results/distributed.json (and prints it).
//
// Measured (bench/distributed-rank.mjs, the `small` preset, LoRA r 8 on every default target,
// routed experts included; grad_accum 4 micro-batches of one 128-token row; median of --steps
// optimizer steps after one warm-up step):
//   1 rank × 1 thread, 1 rank × 2 threads, 2 ranks × 1 thread data parallel, 2 ranks × 1 thread
//   data + expert parallel ×2 (each rank holding only its routed experts' LoRA factors and
//   moments): tokens/s, scaling efficiency = tokens/s of P ranks / (P × tokens/s
//   of 1 rank with the same threads per rank), bytes per step (allreduce payload per rank;
//   alltoallv bytes of all ranks together).
// Projection (see `projection` in the JSON for every assumption): per-token training FLOPs from
// each config's matmul sizes (forward + the base's input gradients = 2 × forward; attention
// scores, compressor and indexer left out), the achieved FLOP/s of one core from the 1-rank
// measurement, a machine's compute = cores × that, the gradient allreduce as a ring
// (2(N−1)/N × the replicated LoRA gradient bytes: with expert_parallel = N each routed expert's
// factors are on one machine and their gradients are not allreduced), the expert-parallel alltoallv as measured per remote
// (token, expert) pair ((4d + 3) × 4 bytes forward and backward, checked against the measurement
// here) with uniform routing ((N−1)/N of the pairs remote), no overlap of communication and
// compute (v4tune does not overlap them).
// Usage (after `npm run build`, with Open MPI and the MPI binding): node bench/distributed.mjs
//   [--steps 2] [--out bench/results/distributed.json]
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { FLASH_MAX, PRESETS, initModel } from '../dist/model/init.js';

const { values } = parseArgs({ options: { steps: { type: 'string', default: '2' }, out: { type: 'string', default: 'bench/results/distributed.json' } } });
const dir = mkdtempSync(join(tmpdir(), 'v4tune-bench-dist-'));
const mpirun = (np) => ['-np', String(np), '--allow-run-as-root', '--oversubscribe', '--bind-to', 'none'];

/** Forward matmul FLOPs per token of a V4 config (2 per multiply-add). */
function forwardFlops(c) {
  const d = c.hidden_size;
  const H = c.num_attention_heads;
  const hd = c.head_dim;
  const attn = d * c.q_lora_rank + c.q_lora_rank * H * hd + d * hd + H * hd * c.o_lora_rank + c.o_groups * c.o_lora_rank * d;
  const moe = (c.num_experts_per_tok + 1) * 3 * d * c.moe_intermediate_size + d * c.n_routed_experts;
  return 2 * (c.num_hidden_layers * (attn + moe) + d * c.vocab_size);
}

/** LoRA parameters of the default targets at rank r (every routed expert adapted): all, and the routed experts' part. */
function loraParams(c, r) {
  const d = c.hidden_size;
  const H = c.num_attention_heads;
  const hd = c.head_dim;
  const I = c.moe_intermediate_size;
  const inG = (H * hd) / c.o_groups;
  const attn = r * (d + c.q_lora_rank) + r * (c.q_lora_rank + H * hd) + r * (d + hd) + r * (inG + c.o_groups * c.o_lora_rank) + r * (c.o_groups * c.o_lora_rank + d);
  const expert = 3 * r * (d + I);
  return { all: c.num_hidden_layers * (attn + (c.n_routed_experts + 1) * expert), routed: c.num_hidden_layers * c.n_routed_experts * expert };
}

/** Base weight bytes as shipped: routed experts FP4 (+ a scale byte per 32), the rest FP8 (+ scales per 128×128), embedding and head BF16. */
function baseBytes(c) {
  const d = c.hidden_size;
  const H = c.num_attention_heads;
  const hd = c.head_dim;
  const attn = d * c.q_lora_rank + c.q_lora_rank * H * hd + d * hd + H * hd * c.o_lora_rank + c.o_groups * c.o_lora_rank * d;
  const experts = c.num_hidden_layers * c.n_routed_experts * 3 * d * c.moe_intermediate_size;
  const rest = c.num_hidden_layers * (attn + 3 * d * c.moe_intermediate_size);
  return { experts: experts * (0.5 + 1 / 32), rest: rest * (1 + 1 / 16384) + 2 * 2 * d * c.vocab_size };
}

function rankRun(np, ep, threads) {
  const load = loadavg()[0];
  const r = spawnSync('mpirun', [...mpirun(np), process.execPath, 'bench/distributed-rank.mjs', '--dir', join(dir, 'model'), '--ep', String(ep), '--threads', String(threads), '--steps', values.steps], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`mpirun -np ${np} (ep ${ep}) failed:\n${r.stderr}`);
  const line = r.stdout.trim().split('\n').find((l) => l.startsWith('{'));
  return { ...JSON.parse(line), load_average_before: load, load_average_after: loadavg()[0] };
}

try {
  await initModel({ preset: 'small', out: join(dir, 'model'), seed: 0 });
  const one = rankRun(1, 1, 1);
  const oneTwoThreads = rankRun(1, 1, 2);
  const dp = rankRun(2, 1, 1);
  const ep = rankRun(2, 2, 1);
  const small = { ...PRESETS.small };
  const flash = { ...PRESETS.flash, num_hidden_layers: FLASH_MAX.layers, n_routed_experts: FLASH_MAX.experts };
  const perCore = one.tokens_per_s * 2 * forwardFlops(small); // achieved training FLOP/s of one core
  // EP alltoallv: the measured bytes per remote pair against (4d + 3)·4
  const perPair = ep.pairs_sent > 0 ? ep.alltoallv_bytes_per_step / ep.pairs_sent : null;
  const model = { perPairBytes: (4 * flash.hidden_size + 3) * 4 };
  const r = 16;
  const tokensPerStep = 64 * 4096;
  const cores = 64;
  const lora = loraParams(flash, r);
  const base = baseBytes(flash);
  const moeLayers = flash.num_hidden_layers;
  const project = (N, gbps) => {
    const bw = (gbps * 1e9) / 8;
    const compute = (tokensPerStep * 2 * forwardFlops(flash)) / (N * cores * perCore);
    const allreduce = N > 1 ? (2 * (N - 1) / N) * 4 * (lora.all - lora.routed) / bw : 0;
    const a2aBytes = (tokensPerStep / N) * moeLayers * flash.num_experts_per_tok * ((N - 1) / N) * model.perPairBytes;
    const alltoallv = a2aBytes / bw;
    const step = compute + allreduce + alltoallv;
    return {
      machines: N, network_gbps: gbps, seconds_per_step: step, compute_s: compute, allreduce_s: allreduce, alltoallv_s: alltoallv,
      tokens_per_s: tokensPerStep / step, efficiency: compute / step, alltoallv_bytes_per_machine: a2aBytes,
      base_bytes_per_machine: base.rest + base.experts / N, lora_and_adam_bytes_per_machine: 3 * 4 * (lora.all - lora.routed + lora.routed / N),
    };
  };
  const result = {
    bench: 'distributed',
    machine: `${cpus().length} cores ${cpus()[0]?.model ?? ''}`.trim(),
    node: process.version,
    note: 'one machine, ranks oversubscribing its cores together with other work: see the load averages',
    measured: {
      model: 'small preset (6 layers, d 512, 16 routed experts top-4), LoRA r 8 on every default target, 4 micro-batches × 128 tokens per step',
      one_rank_1_thread: one,
      one_rank_2_threads: oneTwoThreads,
      two_ranks_data_parallel: dp,
      two_ranks_expert_parallel_2: ep,
      efficiency_data_parallel: dp.tokens_per_s / (2 * one.tokens_per_s),
      efficiency_expert_parallel: ep.tokens_per_s / (2 * one.tokens_per_s),
      two_ranks_vs_one_rank_2_threads: dp.tokens_per_s / oneTwoThreads.tokens_per_s,
      alltoallv_bytes_per_remote_pair: perPair,
      alltoallv_bytes_per_remote_pair_model: (4 * small.hidden_size + 3) * 4,
    },
    projection: {
      model: `V4-Flash widths (flash preset at ${FLASH_MAX.layers} layers, ${FLASH_MAX.experts} routed experts top-${flash.num_experts_per_tok}, d ${flash.hidden_size}, I ${flash.moe_intermediate_size})`,
      assumptions: {
        training_flops_per_token: 2 * forwardFlops(flash),
        achieved_flops_per_core: perCore,
        cores_per_machine: cores,
        tokens_per_step: tokensPerStep,
        lora_rank: r,
        lora_parameters: lora.all,
        lora_parameters_routed_experts: lora.routed,
        data_parallel_and_expert_parallel: 'both over all N machines (expert_parallel = N): each machine holds 1/N of the routed experts\' base weights, LoRA factors and AdamW moments; only the replicated LoRA gradients are allreduced',
        overlap: 'none (v4tune runs the collectives between compute)',
        routing: 'uniform: (N−1)/N of the (token, expert) pairs go to another machine',
      },
      rows: [1, 2, 4, 8, 16].flatMap((N) => [100, 400].map((g) => project(N, g))),
    },
  };
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(values.out, `${JSON.stringify(result, null, 2)}\n`);
  console.log(JSON.stringify(result, null, 2));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
