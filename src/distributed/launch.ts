// Joining a distributed run: the world a launcher (mpirun, Slurm srun, the Kubernetes MPI
// Operator) started, checked against the recipe's `distributed` section, and what each rank
// does differently: rank 0 holds the run folder's lock and writes checkpoints, logs, the adapter
// and train.json; every other rank trains silently into a private scratch folder (removed at
// exit). A rank that the launcher ends (another rank died, or the job was cancelled) says so in
// one line and exits; the last complete checkpoint stays as it was (checkpoints are written to a
// temporary name and renamed).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBackend } from '../backend/index.js';
import { openRowReader, type Dataset, type RowReader } from '../data/dataset.js';
import { InputError } from '../errors.js';
import type { Adapter } from '../lora/adapter.js';
import { openModelSource, type LoadModelOptions } from '../model/load.js';
import { V4Model } from '../model/v4/model.js';
import { runPath } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { silentSink, type Sink } from '../sink.js';
import type { RunTrainingOptions } from '../train/run.js';
import type { Collective } from './collective.js';
import { dataParallelEvaluate, dataParallelGradients, evalShareOf, microBatchesOf, type EvalShare } from './data-parallel.js';
import { ExpertParallel, ExpertPlacement } from './expert-parallel.js';
import { HcclCollective, joinHccl } from './hccl.js';
import { MpiCollective, mpiUnavailableReason } from './mpi.js';
import { AdapterShards, routedExpertOf } from './shard.js';

/**
 * The world a launcher gave this process, from its environment (Open MPI's mpirun, a PMI
 * launcher: MPICH, Intel MPI, Slurm's srun --mpi=pmi2, or an srun step); null when none did.
 */
export function launcherWorld(env: NodeJS.ProcessEnv = process.env): { size: number; rank: number; launcher: string } | null {
  const pairs: [string, string, string][] = [
    ['OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK', 'Open MPI'],
    ['PMI_SIZE', 'PMI_RANK', 'PMI (MPICH, Intel MPI, Slurm)'],
    ['SLURM_STEP_NUM_TASKS', 'SLURM_PROCID', 'Slurm'],
  ];
  for (const [s, r, launcher] of pairs) {
    const size = Number(env[s]);
    const rank = Number(env[r]);
    if (Number.isInteger(size) && size >= 1 && Number.isInteger(rank) && rank >= 0 && rank < size) return { size, rank, launcher };
  }
  return null;
}

export interface DistributedRun {
  readonly collective: Collective;
  readonly rank: number;
  readonly size: number;
  /** set by loadModel when expert_parallel > 1 */
  readonly expert: ExpertParallel | null;
  /** the model with this rank's share of the routed experts (all of them without expert parallel) */
  loadModel(dir: string, opts: LoadModelOptions): Promise<V4Model>;
  /**
   * The LoRA modules this rank holds: every one but, with expert parallel, other ranks' routed
   * experts. The train stage passes it to createAdapter, loadCheckpoint and warmStart.
   */
  holds(module: string): boolean;
  /** the train split read row by row: this rank reads only the rows of its own micro-batches */
  trainRows(ds: Dataset): Promise<RowReader>;
  /**
   * This rank's share of the eval split's first `cap` rows (data-parallel.ts evalShareOf), read
   * alone: `rows` is what runTraining's eval gets, `total` the rows evaluated by all ranks.
   */
  evalRows(ds: Dataset, cap: number): Promise<EvalShare>;
  /** the whole adapter's modules and trainable parameters, on every rank (the split one's summed over the first expert-parallel group) */
  adapterSize(adapter: Adapter): Promise<{ modules: number; parameters: number }>;
  /**
   * runTraining's options for this rank (`startStep`: the step the run starts at; `output`: the
   * run folder), after trainRows and evalRows: the split gradients (logging what each rank held
   * and read per step) and eval, its micro-batches, where it writes, and (expert parallel) how
   * rank 0 gathers the complete adapter. The adapter must be made with holds().
   */
  trainOptions(startStep: number, output: string): Required<Pick<RunTrainingOptions, 'gradients' | 'evaluate' | 'runs' | 'output' | 'writesCheckpoints'>> & Pick<RunTrainingOptions, 'shards'>;
  /** what a rank says through: rank 0 the stage's sink, another rank nothing */
  context(sink: Sink): Sink;
  /** `2 ranks (MPI (Open MPI v4.1.4)): data parallel ×2, …` */
  describe(): string;
  /** After the run, on success: leave the job cleanly. */
  finish(): void;
}

class MpiRun implements DistributedRun {
  expert: ExpertParallel | null = null;
  shards: AdapterShards | null = null;
  private scratch: string | null = null;
  private reader: RowReader | null = null;
  private evalShare: EvalShare | null = null;

  constructor(readonly collective: Collective, private readonly recipe: LoadedRecipe, private readonly ep: number) {
    const ckRoot = runPath(recipe.output, 'checkpoints');
    process.on('SIGTERM', () => {
      process.stderr.write(`v4tune: rank ${this.rank} of ${this.size}: ended by the launcher (another rank failed or the job was cancelled); the last complete checkpoint in ${ckRoot} is kept\n`);
      process.exit(143);
    });
    process.on('exit', () => this.removeScratch());
  }

  get rank(): number {
    return this.collective.rank;
  }

  get size(): number {
    return this.collective.size;
  }

  async loadModel(dir: string, opts: LoadModelOptions): Promise<V4Model> {
    const src = await openModelSource(dir);
    try {
      let backend = await createBackend(opts.backend ?? 'auto', this.rank === 0 ? opts.note : () => {});
      if (this.ep > 1) {
        this.expert = new ExpertParallel(this.collective, new ExpertPlacement(src.config.n_routed_experts, this.ep, this.rank, this.size));
        backend = this.expert.wrap(backend);
        this.shards = new AdapterShards(this.collective, this.expert.placement);
      }
      return await V4Model.load(src, backend);
    } finally {
      await src.close();
    }
  }

  holds(module: string): boolean {
    return this.shards?.holds(module) ?? true;
  }

  async trainRows(ds: Dataset): Promise<RowReader> {
    this.reader = await openRowReader(ds, 'train');
    return this.reader;
  }

  async evalRows(ds: Dataset, cap: number): Promise<EvalShare> {
    const reader = await openRowReader(ds, 'eval');
    try {
      const total = Math.min(cap, reader.length);
      const { indices, counted } = evalShareOf(this.rank, this.size, total);
      this.evalShare = { rows: indices.map((i) => reader.get(i)), counted, total };
      return this.evalShare;
    } finally {
      reader.close();
    }
  }

  async adapterSize(adapter: Adapter): Promise<{ modules: number; parameters: number }> {
    const n = new Float64Array(2);
    for (const m of adapter.modules()) {
      // without the split every rank holds the whole; with it rank 0 counts the replicated
      // modules and each rank of the first group its routed experts
      const counts = this.shards ? (routedExpertOf(m) === null ? this.rank === 0 : this.rank < this.shards.placement.ep) : true;
      if (!counts) continue;
      n[0] += 1;
      n[1] += adapter.factors(m)!.A.length + adapter.factors(m)!.B.length;
    }
    if (this.shards) await this.collective.allreduceSum(n);
    return { modules: n[0]!, parameters: n[1]! };
  }

  trainOptions(startStep: number, output: string): ReturnType<DistributedRun['trainOptions']> {
    return {
      gradients: dataParallelGradients({ collective: this.collective, expert: this.expert, logDir: output, startStep, shards: this.shards, reads: this.reader }),
      evaluate: dataParallelEvaluate(this.collective, this.expert, this.evalShare),
      runs: (gradAccum) => microBatchesOf(this.rank, this.size, gradAccum),
      output: this.runOutput(output),
      writesCheckpoints: this.rank === 0,
      ...(this.shards ? { shards: this.shards } : {}),
    };
  }

  /** where this rank's runTraining writes: the run folder on rank 0, a scratch folder elsewhere */
  private runOutput(output: string): string {
    if (this.rank === 0) return output;
    this.scratch ??= mkdtempSync(join(tmpdir(), `v4tune-rank${this.rank}-`));
    return this.scratch;
  }

  context(sink: Sink): Sink {
    return this.rank === 0 ? sink : silentSink;
  }

  describe(): string {
    const ep = this.expert ? `; expert parallel ×${this.ep}: ${this.expert.placement.describe()}` : '';
    return `${this.size} ranks over ${this.collective.engine}: data parallel ×${this.size} (each rank runs ${this.recipe.train.grad_accum / this.size} of the step's ${this.recipe.train.grad_accum} micro-batches; gradients summed by allreduce once per step)${ep}`;
  }

  finish(): void {
    this.collective.finalize();
    this.removeScratch();
  }

  private removeScratch(): void {
    if (this.scratch) rmSync(this.scratch, { recursive: true, force: true });
    this.scratch = null;
  }
}

/**
 * The distributed run this process is part of, or null for a single-process run. A run asked
 * for (the recipe's `distributed` section, or a launcher's world of several ranks) that cannot
 * happen here says why once and trains single-process: the global batch does not depend on the
 * world size, so the result is the same. Without MPI, the ranks but 0 of a launched world exit.
 */
export async function joinDistributed(recipe: LoadedRecipe, note: (line: string) => void): Promise<DistributedRun | null> {
  const world = launcherWorld();
  const why = mpiUnavailableReason();
  // train.backend ascend under an Ascend launch (RANK_TABLE_FILE, RANK_ID): HCCL; otherwise MPI
  const hccl = joinHccl(recipe.train.backend, world !== null || process.env.PMIX_RANK !== undefined);
  let collective: MpiCollective | HcclCollective | null = hccl.collective;
  // with the binding, MPI says how many ranks there are (a PMIx launcher puts no size in the environment)
  if (!collective && !why && (world !== null || process.env.PMIX_RANK !== undefined)) {
    collective = MpiCollective.init();
    if (hccl.why && collective.size > 1 && collective.rank === 0) note(`distributed: ${hccl.why}`);
  }
  if (collective?.size === 1) {
    collective.finalize();
    collective = null;
  }
  const size = collective?.size ?? (why ? world?.size ?? 1 : 1);
  const dp = recipe.distributed.data_parallel;
  const ep = recipe.distributed.expert_parallel;
  if (size === 1) {
    if ((dp ?? 1) > 1 || ep > 1) {
      note(`distributed: the recipe asks for data_parallel ${dp ?? 1}, expert_parallel ${ep}, but this is one process (${why ? `${why}; ` : ''}start it with \`mpirun -np ${Math.max(dp ?? 1, ep)} v4tune train ${recipe.file}\`); training single-process, to the same result`);
    }
    return null;
  }
  if (!collective) {
    if (world!.rank !== 0) {
      process.stderr.write(`v4tune: rank ${world!.rank}: ${why}; rank 0 trains single-process, this rank exits\n`);
      process.exit(0);
    }
    note(`distributed: ${world!.launcher} started ${size} ranks, but ${why}; training single-process on rank 0, to the same result`);
    return null;
  }
  const where = recipe.file;
  if (dp !== undefined && dp !== size) throw new InputError(`${where}: distributed.data_parallel is ${dp} but the launcher started ${size} ranks (set it to ${size}, or start ${dp})`);
  const ga = recipe.train.grad_accum;
  if (ga % size !== 0) throw new InputError(`${where}: train.grad_accum (${ga}) must be a multiple of the ${size} data-parallel ranks: each rank runs grad_accum / ${size} micro-batches of the global batch (batch_rows × grad_accum rows per step, the same at any world size)`);
  if (size % ep !== 0) throw new InputError(`${where}: distributed.expert_parallel (${ep}) must divide the ${size} ranks`);
  if (ep > 1 && recipe.train.eval_prompts.length > 0) throw new InputError(`${where}: train.eval_prompts with distributed.expert_parallel > 1 is not supported (every rank generates the samples, and its greedy choices must agree token by token); remove eval_prompts or set expert_parallel: 1`);
  if (ep > 1 && recipe.lora.dropout > 0) throw new InputError(`${where}: lora.dropout with distributed.expert_parallel > 1 is not supported (a routed expert's dropout mask is drawn by the token's row in its rank's batch); set lora.dropout: 0 or expert_parallel: 1`);
  collective.timeoutS = recipe.distributed.timeout_s;
  return new MpiRun(collective, recipe, ep);
}
