// The recipe: one YAML file that drives every stage. Every field is documented once, here, with
// `.describe()`; the README's recipe reference is generated from this file (`npm run docs`).
// Relative paths are resolved against the recipe's folder by the loader (src/recipe/load.ts).
import { z } from 'zod';
import { DEFAULT_TARGETS } from '../model/layout.js';

export { DEFAULT_TARGETS };

const int = () => z.number().int();

export const modelSchema = z.object({
  path: z.string().min(1).optional()
    .describe('Folder of a DeepSeek V4 checkpoint as shipped (config.json, safetensors shards + index). Give this or `preset`.'),
  preset: z.enum(['tiny', 'small', 'flash']).optional()
    .describe('Create a random V4 checkpoint of this size on the fly (in `<output>/model`) instead of loading one: `tiny` exercises every V4 feature and trains in seconds, `small` is for benchmarks, `flash` has V4-Flash\'s exact widths and formats (sized by `layers` and `experts`).'),
  layers: int().min(1).max(43).optional()
    .describe('`flash` preset only: number of layers, ratio 4 (with the indexer) and 128 alternating (default 2; V4-Flash has 43).'),
  experts: int().min(6).max(256).optional()
    .describe('`flash` preset only: routed experts, 6 per token (default 32; V4-Flash has 256).'),
  seed: int().min(0).default(0)
    .describe('Seed of the preset checkpoint; the same seed gives byte-identical files.'),
  format: z.enum(['fp8', 'bf16']).default('fp8')
    .describe('Weight format of the preset checkpoint: `fp8` ships like DeepSeek (FP8 attention, FP4 experts), `bf16` everything BF16.'),
}).strict().describe('The base model. Optional for `prepare` (a data-only recipe); every other stage needs it.');

export const sourceSchema = z.object({
  path: z.string().min(1)
    .describe('A file or glob (`*`, `**`, `?`, `[..]`, `{a,b}`), relative to the recipe. A glob stays inside the folder before its first wildcard (links leading out are not followed, link cycles end); a glob rooted at `/`, `/proc`, `/sys` or `/dev` is refused.'),
  format: z.enum(['auto', 'text', 'jsonl', 'chat', 'sharegpt', 'alpaca']).default('auto')
    .describe('What a record is. `text`: a text file is one document; `jsonl`: a record\'s `text_field` is one document; `chat`: `{"messages": [{role: system|user|assistant, content}]}`, rendered in DeepSeek V4\'s prompt format with loss on assistant tokens only; `sharegpt`: `{"conversations": [{from: system|human|gpt, value}]}` as chat; `alpaca`: `{instruction, input?, output, system?}` as a user turn (instruction, blank line, input) and the answer. `auto`: .txt/.text/.md files are text; a file of records takes the format of its first record (`messages` chat, `conversations` sharegpt, `instruction` + `output` alpaca, else jsonl). Files of records: .jsonl/.ndjson (one per line), .json (an array, or one record per line), .parquet (rows); another extension is refused under `auto` and read by content when a format is declared.'),
  text_field: z.string().min(1).default('text')
    .describe('Field holding the document text in `jsonl` records (JSONL, JSON arrays, Parquet columns).'),
  name: z.string().min(1).optional()
    .describe('The source\'s name in the manifest, the dataset card and `inspect --source` (its index is the `source_ids` value). Default: `path` as written.'),
  weight: z.number().positive().max(1000).default(1)
    .describe('Documents of this source per epoch of the dataset, in expectation: 1 takes each once, 0.25 a seeded quarter of them, 3 each three times (repetition for small sources; copies beyond the first come from re-reading the source, so they land in other rows). Applies to the train split; eval documents are taken once.'),
  max_tokens: int().min(1).optional()
    .describe('Stop taking documents from this source before its tokens (train with repeats + eval) would exceed this.'),
  max_documents: int().min(1).optional()
    .describe('Take at most this many documents (train with repeats + eval) from this source.'),
}).strict();

export const dataSchema = z.object({
  sources: z.array(sourceSchema).min(1)
    .describe('Corpus files to tokenize.'),
  seq_len: int().min(2).max(1 << 20).default(1024)
    .describe('Tokens per row; at most the model\'s max_position_embeddings (and 1048576).'),
  packing: z.boolean().default(true)
    .describe('Pack documents into rows as independent segments (attention, positions and compression restart at each). `false`: one document per row, padded with eos (loss mask 0).'),
  eval_fraction: z.number().min(0).max(0.5).default(0.05)
    .describe('Fraction of documents held out for evaluation (split by document, seeded).'),
  seed: int().min(0).default(0)
    .describe('Seed of the train/eval split.'),
  shard_rows: int().min(1).max(1_000_000).default(4096)
    .describe('Rows per Arrow file (rows × seq_len must stay under 2³¹ tokens, Arrow\'s list offsets).'),
  dedup: z.boolean().default(true)
    .describe('Drop exact-duplicate documents (counted in the manifest).'),
  output: z.string().min(1).optional()
    .describe('Dataset folder. Default: `<output>/data`.'),
  workers: int().min(0).default(0)
    .describe('Tokenizer worker threads; 0 uses every core; at most 4 per core.'),
  max_bad_records: int().min(0).default(0)
    .describe('Records per source that may not fit their format (malformed JSON, a missing field, an unknown role...) before the run fails; each is skipped, counted in the manifest and reported as file:line. 0: the first one fails the run.'),
  hf_datasets: z.boolean().default(true)
    .describe('Also write the HF datasets layout (dataset_dict.json and a folder of Arrow stream files per split) so `datasets.load_from_disk(<folder>)` opens the dataset; it doubles the disk space.'),
}).strict().describe('The corpus and how it becomes packed Arrow rows.');

export const loraSchema = z.object({
  r: int().min(1).default(8)
    .describe('LoRA rank.'),
  alpha: z.number().positive().default(16)
    .describe('LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with `rslora`).'),
  targets: z.array(z.string().min(1)).min(1).default([...DEFAULT_TARGETS])
    .describe('Module patterns to adapt: dotted globs (`*` = one name component) over official module names without the `layers.N.` prefix, e.g. `attn.wq_a`, `ffn.experts.*.w1`; `mtp.` patterns reach the MTP block.'),
  rank_pattern: z.record(z.string(), int().min(1)).default({})
    .describe('Per-pattern rank overrides (pattern → r).'),
  alpha_pattern: z.record(z.string(), z.number().positive()).default({})
    .describe('Per-pattern alpha overrides (pattern → alpha).'),
  rslora: z.boolean().default(false)
    .describe('Rank-stabilised scaling alpha/sqrt(r).'),
  dropout: z.number().min(0).lt(1).default(0)
    .describe('Dropout on the LoRA input during training.'),
  seed: int().min(0).default(0)
    .describe('Seed of the adapter initialisation (Kaiming-uniform A, zero B).'),
  adapter_layout: z.enum(['transformers', 'official']).default('transformers')
    .describe('Layout of the saved adapter: `transformers` (module names of transformers\' DeepseekV4ForCausalLM, routed experts and wo_a through PEFT\'s `target_parameters`: what `PeftModel.from_pretrained` applies) or `official` (DeepSeek\'s module names, for its own inference code). v4tune reads both.'),
  experts: z.enum(['all', 'profiled']).default('all')
    .describe('`all`: one adapter pair per routed expert; `profiled`: only the experts with the most gate mass in `<output>/expert-profile.json`, which `profile-experts` writes (`run` writes it when missing or stale).'),
  experts_per_layer: int().min(1).optional()
    .describe('With `experts: profiled`, how many experts per layer get adapters: the ones with the most gate mass (ties: lower id). Unset: `profile_threshold` decides.'),
  profile_threshold: z.number().gt(0).max(1).default(0.5)
    .describe('With `experts: profiled` and no `experts_per_layer`: per layer, the fewest experts (most gate mass first) whose share of the layer\'s gate mass reaches this fraction (ESFT\'s gate criterion).'),
  profile_rows: int().min(1).default(64)
    .describe('Rows of the train split that `profile-experts` routes to measure per-expert load and gate mass (tokens with loss_mask 1 only), sampled across the whole split (seeded by `lora.seed`; every source gets its share).'),
}).strict().describe('The LoRA adapter.');

export const trainSchema = z.object({
  backend: z.enum(['auto', 'native', 'tfjs', 'ascend']).default('auto')
    .describe('Compute backend: `auto` uses ascend where CANN and an Ascend NPU are visible, else native when the addon is built, else tfjs (and says why); `ascend` runs the fused LoRA ops on the NPU (README: Ascend backend).'),
  steps: int().min(1).optional()
    .describe('Optimizer steps (default 100, or what `epochs` gives). Raising it on a finished run and resuming extends the run: the schedule then spans the new length.'),
  epochs: z.number().positive().optional()
    .describe('Train for this many passes over the train split instead of giving `steps`: steps = ceil(epochs · train rows / (batch_rows · grad_accum)).'),
  batch_rows: int().min(1).default(1)
    .describe('Rows per micro-batch.'),
  grad_accum: int().min(1).default(1)
    .describe('Micro-batches per optimizer step.'),
  lr: z.number().positive().default(2e-4)
    .describe('Peak learning rate (AdamW).'),
  schedule: z.enum(['constant', 'linear', 'cosine']).default('cosine')
    .describe('Learning-rate schedule after warmup.'),
  warmup_steps: int().min(0).default(10)
    .describe('Linear warmup steps.'),
  weight_decay: z.number().min(0).default(0)
    .describe('AdamW weight decay on LoRA weights.'),
  max_grad_norm: z.number().positive().default(1)
    .describe('Global gradient-norm clip.'),
  seed: int().min(0).default(0)
    .describe('Seed of data order and dropout.'),
  eval_every: int().min(0).default(50)
    .describe('Evaluate every N steps (0: only at the end).'),
  checkpoint_every: int().min(0).default(50)
    .describe('Save a resumable checkpoint every N steps (0: only at the end).'),
  keep_checkpoints: int().min(0).default(0)
    .describe('Keep only the newest N checkpoints plus the best by eval loss (a checkpoint is also written at each new best eval); 0 keeps every one.'),
  early_stopping_patience: int().min(0).default(0)
    .describe('Stop when this many evals in a row do not lower the best eval loss (by more than `early_stopping_min_delta`); 0: never. Needs `eval_every` > 0.'),
  early_stopping_min_delta: z.number().min(0).default(0)
    .describe('The least drop in eval loss that counts as better, for early stopping and the best checkpoint.'),
  warm_start: z.string().min(1).optional()
    .describe('A PEFT adapter folder to start from instead of a fresh adapter (its modules and ranks must be the ones `lora` asks for); the optimizer starts fresh at step 0.'),
  log_to: z.array(z.enum(['jsonl', 'tensorboard'])).min(1).default(['jsonl'])
    .describe('Where metrics go: `jsonl` (`<output>/train-log.jsonl`, always written: the report reads it), `tensorboard` (event files in `<output>/tensorboard`: loss, lr, grad norm, tokens/s, eval loss, sample generations).'),
  eval_prompts: z.array(z.union([z.string(), z.object({ chat: z.string().min(1) }).strict()])).default([])
    .describe('Prompts continued greedily at every eval, shown as they happen and in the log, TensorBoard and the report: a string is continued as text; `{chat: "…"}` is a user message rendered by the chat template with the assistant turn opened.'),
  eval_max_new_tokens: int().min(1).default(32)
    .describe('Tokens generated per eval prompt at most.'),
  mtp_loss_weight: z.number().min(0).default(0)
    .describe('Weight w of the MTP loss: the objective is loss + w · MTP loss (the MTP block predicting token t+2), so the MTP block, V4\'s speculative draft, is trained along with the trunk. Needs `mtp.` patterns in `lora.targets` (the MTP block\'s own LoRA is what it trains) and a model with an MTP block.'),
  eval_mtp: z.boolean().default(true)
    .describe('At every eval, also measure the MTP block\'s next-next-token top-1 agreement with the main head (the greedy speculative acceptance rate), when the model has an MTP block; it costs a second forward per eval row.'),
  activation_checkpointing: z.boolean().default(false)
    .describe('Recompute each block in the backward pass instead of keeping its activations.'),
  attention_chunk: int().min(0).default(0)
    .describe('Query rows per chunk of attention\'s per-query path (q, the attention core, the output projections) in training: its heads × head_dim-wide tensors then exist for one chunk at a time, and the backward runs each chunk\'s forward once more; under `activation_checkpointing` that rerun takes the place of the recompute\'s, whose chunks reuse the output kept by the forward (a 8192-token flash step: 8 % slower, 12.5 instead of 18.5 GB peak). With `activation_checkpointing` it is what lets 16k-token sequences fit (1024 is a good value); 0 runs the whole sequence at once.'),
  threads: int().min(0).default(0)
    .describe('Native kernel threads; 0 uses every core.'),
  precision: z.enum(['fp32', 'bf16']).default('fp32')
    .describe("`fp32` (exact to the reference); `bf16` rounds every GEMM's inputs to bf16 and sums in fp32 where the CPU can (AVX512-BF16 dot products, or AMX tiles on Intel Xeon 4th generation and later: `V4TUNE_AMX=0` opts out of the tiles); faster, looser (1e-2 of fp32)."),
}).strict().describe('The training run.');

export const exportSchema = z.object({
  merge: z.boolean().default(false)
    .describe('Merge the trained adapter into the base weights.'),
  merge_dtype: z.enum(['original', 'bf16']).default('original')
    .describe('Merged weights in the format they shipped in (FP8/FP4 requantised) or BF16.'),
  quantize: z.array(z.enum(['gptq', 'gguf-f32', 'gguf-f16', 'gguf-bf16', 'gguf-q8_0', 'gguf-q4_0', 'gguf-q4_k'])).default([])
    .describe('Outputs to write from the merged model: `gptq` (INT4 safetensors folder in GPTQModel\'s deepseek_v4 layout) and llama.cpp GGUF files `gguf-f32`, `gguf-f16`, `gguf-bf16` (the input of llama-quantize for any other type), `gguf-q8_0`, `gguf-q4_0`, `gguf-q4_k` (tokenizer embedded; the MTP block in `mtp-model-<TYPE>.gguf`).'),
  method: z.enum(['rtn', 'gptq']).default('rtn')
    .describe('INT4 rounding: `rtn` (round to nearest, per group); `gptq` (GPTQ: each linear rounded column by column against the Hessian of its inputs on `calibration_rows` rows of the train split, routed experts on the tokens routed to them).'),
  group_size: int().min(32).default(128)
    .describe('INT4 group size.'),
  calibration_rows: int().min(1).default(64)
    .describe('Rows of the prepared train split used for GPTQ calibration (`method: gptq`; clamped to the split with a warning).'),
  gptq_damp: z.number().positive().max(1).default(0.01)
    .describe('GPTQ dampening: added to each Hessian diagonal as a fraction of its mean (AutoGPTQ damp_percent); raise it when a Hessian is refused as not positive definite.'),
}).strict().describe('Merging and INT4 export.');

export const distributedSchema = z.object({
  data_parallel: int().min(1).optional()
    .describe('Ranks that each run their own share of every step\'s micro-batches (default: the world size the launcher gives, `mpirun -np N`); checked against it. The global batch stays `batch_rows × grad_accum` rows whatever the world size (each rank runs `grad_accum / data_parallel` micro-batches, so `grad_accum` must be a multiple of it), and a run resumes at another world size to the same result.'),
  expert_parallel: int().min(1).default(1)
    .describe('Ranks one layer\'s routed experts are split across (each loads only its experts\' base weights; tokens travel to their experts\' ranks and back); must divide the world size and be at most the routed experts per layer. 1: every rank holds every expert.'),
  timeout_s: z.number().positive().default(1800)
    .describe('Seconds a rank waits in one collective (the others still computing, or rank 0 writing a checkpoint) before it decides a rank hangs and ends the job with an error; a rank that dies ends the job at once.'),
}).strict().describe('Training on several processes or machines under MPI (`mpirun -np N v4tune train`, Slurm `srun`). Without a launcher, or without MPI, a run is single-process and gives the same result.');

export const recipeSchema = z.object({
  name: z.string().min(1).optional()
    .describe('Run name (default: the recipe file name).'),
  model: modelSchema.optional(),
  tokenizer: z.string().min(1).optional()
    .describe('tokenizer.json (HF) or SentencePiece .model, or `deepseek-v4` for the embedded DeepSeek V4 tokenizer. Default: the model folder\'s tokenizer.json (a preset\'s embedded tokenizer before the preset is created). A recipe without `model` (data only) needs it for `prepare`.'),
  data: dataSchema,
  lora: loraSchema.default(loraSchema.parse({})),
  train: trainSchema.default(trainSchema.parse({})),
  export: exportSchema.default(exportSchema.parse({})),
  distributed: distributedSchema.default(distributedSchema.parse({})),
  output: z.string().min(1).optional()
    .describe('Run folder for everything the recipe writes. Default: `runs/<name>` beside the recipe.'),
}).strict();

export type Recipe = z.infer<typeof recipeSchema>;
export type RecipeData = z.infer<typeof dataSchema>;
export type RecipeLora = z.infer<typeof loraSchema>;
export type RecipeTrain = z.infer<typeof trainSchema>;
export type RecipeExport = z.infer<typeof exportSchema>;
