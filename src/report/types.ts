// The run report's content (design.md: "ML engineers ... get a trained adapter, eval numbers and
// a report"): one section per stage of a recipe, each either what the stage left in the run
// folder or "not run" with the reason. `report.md` renders it; `--json` prints it as is.
import type { KindStats, LinearKind, QuantFormat } from '../export/quantize.js';
import type { WeightFormat } from '../model/checkpoint.js';
import type { EvalResult } from '../train/evaluate.js';
import type { LayerError } from './int4-layers.js';

/** A stage whose outputs are not in the run folder. */
export interface NotRun {
  status: 'not run';
  /** what is missing, and the command that makes it */
  reason: string;
}

export type Section<T> = ({ status: 'ok' } & T) | NotRun;

export interface RecipeSection {
  file: string;
  name: string;
  output: string;
  seeds: { model: number; data: number; lora: number; train: number };
}

export interface ModelSection {
  dir: string;
  /** `preset tiny (seed 0, fp8)` or the checkpoint path */
  source: string;
  layout: 'official' | 'transformers';
  layers: number;
  hiddenSize: number;
  vocabSize: number;
  routedExperts: number;
  expertsPerToken: number;
  sharedExperts: number;
  mtpLayers: number;
  /** logical parameters by part of the model */
  parameters: Record<string, number>;
  totalParameters: number;
  /** safetensors bytes on disk */
  bytes: number;
}

export interface SplitSection {
  documents: number;
  rows: number;
  tokens: number;
  lossTokens: number;
  packingEfficiency: number;
}

export interface DataSection {
  dir: string;
  seqLen: number;
  documents: { read: number; empty: number; duplicates: number; kept: number };
  rows: number;
  tokens: number;
  lossTokens: number;
  packingEfficiency: number;
  splits: { train: SplitSection; eval: SplitSection };
  tokenizer: { kind: string; file: string; vocabSize: number; encoder: string | null };
}


export interface TrainingSection {
  step: number;
  steps: number;
  interrupted: boolean;
  backend: string;
  trainRows: number;
  evalRows: number;
  /** tokens seen by the optimizer */
  tokens: number;
  seconds: number;
  tokensPerSecond: number;
  lastLoss: number | null;
  /** train loss at about ten evenly spaced logged steps (first and last included) */
  lossCurve: Array<{ step: number; loss: number }>;
  /** every eval the run logged (step 0: before training) */
  evals: Array<{ step: number; loss: number; perplexity: number; tokens: number }>;
  evalBefore: EvalResult | null;
  evalAfter: EvalResult | null;
  /** every logged step (the report page's charts) */
  curve: Array<{ step: number; loss: number | null; lr: number; gradNorm: number; tokensPerSecond: number | null }>;
  /** the eval prompts' continuations at each eval (train.eval_prompts) */
  samples: Array<{ step: number; samples: Array<{ prompt: string; completion: string }> }>;
  /** the lowest eval loss, and its checkpoint when kept */
  best: { step: number; evalLoss: number; checkpoint: string | null } | null;
  stoppedEarly: boolean;
  /** the step each session after the first resumed from */
  resumes: number[];
  /** the schedule's length before the run was extended, or null */
  extendedFrom: number | null;
}

/** The expert profile and which routed experts the adapter adapts. */
export interface ExpertsSection {
  /** `<output>/expert-profile.json`, or null when the run has no profile */
  profile: string | null;
  /** rows routed and the split they were sampled from */
  rows: number | null;
  splitRows: number | null;
  experts: number;
  /** per MoE block: each expert's share of the block's gate mass (null without a profile) and the adapted experts */
  blocks: Array<{ block: string; share: number[] | null; adapted: number[] }>;
  /** `all` when every routed expert of every block is adapted */
  adapted: 'all' | 'subset' | 'none';
}

export interface AdapterSection {
  dir: string;
  modules: number;
  trainableParameters: number;
  r: number;
  alpha: number;
  rslora: boolean;
  dropout: number;
  targets: string[];
}

export interface MergeSection {
  dir: string;
  /** the recipe's export.merge_dtype */
  dtype: string;
  /** tensors and bytes by storage format */
  formats: Partial<Record<WeightFormat, { tensors: number; bytes: number }>>;
  shards: number;
  bytes: number;
}

export type QuantOutputSection = { format: QuantFormat; path: string } & Section<{
  method: string;
  groupSize: number | null;
  tensorsQuantized: number;
  /** safetensors bytes of the checkpoint it was made from (null when that folder is gone) */
  bytesIn: number | null;
  bytesOut: number;
  compression: number | null;
  errors: Partial<Record<LinearKind, KindStats>>;
  /** GPTQ: ‖W − Ŵ‖ / ‖W‖ per layer and kind, its files read back against the source (absent when the source is gone) */
  layers?: LayerError[];
}>;

export interface ExportSection {
  merge: Section<MergeSection>;
  quantized: QuantOutputSection[];
}

export type PerplexityStage = 'base' | 'adapter' | 'merged' | 'gptq';

export type PerplexityRow = { stage: PerplexityStage; label: string; model: string } & Section<EvalResult & {
  /** `train.json` when the numbers are the train stage's own eval on the same rows */
  from: 'train.json' | 'computed';
}>;

export interface PerplexitySection {
  /** eval rows every computed stage uses (null: no dataset) */
  evalRows: number | null;
  evalRowsTotal: number | null;
  rows: PerplexityRow[];
  notes: string[];
}

export interface RunReport {
  v4tune_version: string;
  generated_at: string;
  recipe: RecipeSection;
  model: Section<ModelSection>;
  data: Section<DataSection>;
  training: Section<TrainingSection>;
  adapter: Section<AdapterSection>;
  experts: Section<ExpertsSection>;
  export: ExportSection;
  perplexity: PerplexitySection;
}
