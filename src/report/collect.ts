// The report's sections that come from the files a run leaves (no model is run here): the
// model's headers, the dataset manifest, train.json + train-log.jsonl, the adapter, the merged
// folder and each quantized output with its error stats.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { DatasetManifest } from '../data/manifest.js';
import { InputError } from '../errors.js';
import { formatOutput, QUANT_FORMATS, type KindStats, type LinearKind, type QuantFormat } from '../export/quantize.js';
import { ADAPTER_CONFIG, ADAPTER_WEIGHTS, loadAdapter } from '../lora/peft.js';
import { readProfile } from '../lora/profile.js';
import { gptqLayerErrors } from './int4-layers.js';
import { inspectModel } from '../model/inspect.js';
import { recipeModelDir, runPath } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';
import type { TrainSummary } from '../train/summary.js';
import type {
  AdapterSection, DataSection, ExpertsSection, ExportSection, MergeSection, ModelSection, NotRun, QuantOutputSection,
  RecipeSection, Section, TrainingSection,
} from './types.js';
import { readJsonFile } from '../fsutil.js';

const ALL_FORMATS: readonly QuantFormat[] = QUANT_FORMATS;
const LOSS_CURVE_POINTS = 10;

const notRun = (reason: string): NotRun => ({ status: 'not run', reason });

const readJson = <T>(path: string): T => readJsonFile(path) as T;

/** safetensors bytes of a checkpoint folder (every .safetensors file in it) */
function safetensorsBytes(dir: string): number {
  return readdirSync(dir).filter((f) => f.endsWith('.safetensors')).reduce((a, f) => a + statSync(join(dir, f)).size, 0);
}

export function recipeSection(recipe: LoadedRecipe): RecipeSection {
  return {
    file: recipe.file,
    name: recipe.name,
    output: recipe.output,
    seeds: { model: recipe.model.seed, data: recipe.data.seed, lora: recipe.lora.seed, train: recipe.train.seed },
  };
}

export async function modelSection(recipe: LoadedRecipe): Promise<Section<ModelSection>> {
  const dir = recipeModelDir(recipe);
  if (!existsSync(join(dir, 'config.json'))) return notRun(`no model in ${dir} (\`v4tune run\` or \`v4tune init-model\` makes it)`);
  const s = await inspectModel(dir);
  const m = recipe.model;
  return {
    status: 'ok',
    dir,
    source: m.preset !== undefined ? `preset ${m.preset} (seed ${m.seed}, ${m.format})` : (m.path ?? dir),
    layout: s.layout,
    layers: s.config.num_hidden_layers,
    hiddenSize: s.config.hidden_size,
    vocabSize: s.config.vocab_size,
    routedExperts: s.config.n_routed_experts,
    expertsPerToken: s.config.num_experts_per_tok,
    sharedExperts: s.config.n_shared_experts,
    mtpLayers: s.config.num_nextn_predict_layers,
    parameters: Object.fromEntries(Object.entries(s.parameters).filter(([, n]) => n > 0)),
    totalParameters: s.totalParameters,
    bytes: s.totalBytes,
  };
}

export function dataSection(recipe: LoadedRecipe): Section<DataSection> {
  const dir = recipe.data.output;
  const path = join(dir, 'manifest.json');
  if (!existsSync(path)) return notRun(`no prepared dataset in ${dir} (\`v4tune prepare ${recipe.file}\` makes it)`);
  const m = readJson<DatasetManifest & { rows?: number; tokens?: number; loss_tokens?: number; packing_efficiency?: number }>(path);
  const split = (k: 'train' | 'eval') => {
    const s = m.splits[k];
    return { documents: s.documents, rows: s.rows, tokens: s.tokens, lossTokens: s.loss_tokens, packingEfficiency: s.packing_efficiency };
  };
  const train = split('train');
  const ev = split('eval');
  const rows = m.rows ?? train.rows + ev.rows;
  const tokens = m.tokens ?? train.tokens + ev.tokens;
  return {
    status: 'ok',
    dir,
    seqLen: m.seq_len,
    documents: m.documents,
    rows,
    tokens,
    lossTokens: m.loss_tokens ?? train.lossTokens + ev.lossTokens,
    packingEfficiency: m.packing_efficiency ?? (rows > 0 ? tokens / (rows * m.seq_len) : 0),
    splits: { train, eval: ev },
    tokenizer: { kind: m.tokenizer.kind, file: m.tokenizer.file, vocabSize: m.tokenizer.vocab_size, encoder: m.tokenizer.encoder ?? null },
  };
}

/** train.json of a run (what `train` writes at its end), or null */
export function readTrainJson(recipe: LoadedRecipe): TrainSummary | null {
  const path = runPath(recipe.output, 'trainSummary');
  return existsSync(path) ? readJson<TrainSummary>(path) : null;
}

interface LogRecord {
  step: number;
  loss?: number;
  lr?: number;
  grad_norm?: number;
  tokens_per_s?: number | null;
  samples?: Array<{ prompt: string; completion: string }>;
  eval_loss?: number;
  eval_perplexity?: number;
  eval_tokens?: number;
}

/** about `n` evenly spaced items of `xs`, the first and the last included */
export function evenlySpaced<T>(xs: readonly T[], n: number): T[] {
  if (xs.length <= n) return xs.slice();
  const picks = new Set<number>();
  for (let k = 0; k < n; k++) picks.add(Math.round((k * (xs.length - 1)) / (n - 1)));
  return [...picks].sort((a, b) => a - b).map((i) => xs[i]!);
}

export function trainingSection(recipe: LoadedRecipe, t: TrainSummary | null): Section<TrainingSection> {
  if (t === null) return notRun(`no train.json in ${recipe.output} (\`v4tune train ${recipe.file}\` makes it)`);
  const logPath = runPath(recipe.output, 'trainLog');
  const log: LogRecord[] = [];
  if (existsSync(logPath)) {
    for (const [i, line] of readFileSync(logPath, 'utf8').split('\n').entries()) {
      if (line.trim() === '') continue;
      try {
        log.push(JSON.parse(line) as LogRecord);
      } catch {
        throw new InputError(`${logPath}:${i + 1}: not valid JSON`);
      }
    }
  }
  // a resumed run may log a step twice: the later record wins
  const byStep = (xs: LogRecord[]): LogRecord[] => [...new Map(xs.map((r) => [r.step, r])).values()].sort((a, b) => a.step - b.step);
  const losses = byStep(log.filter((r) => typeof r.loss === 'number'));
  const evals = byStep(log.filter((r) => typeof r.eval_loss === 'number'));
  return {
    status: 'ok',
    step: t.step,
    steps: t.steps,
    interrupted: t.interrupted,
    backend: t.backend,
    trainRows: t.train_rows,
    evalRows: t.eval_rows,
    tokens: t.tokens,
    seconds: t.train_seconds,
    tokensPerSecond: t.tokens_per_s,
    lastLoss: t.last_loss,
    lossCurve: evenlySpaced(losses, LOSS_CURVE_POINTS).map((r) => ({ step: r.step, loss: r.loss! })),
    evals: evals.map((r) => ({ step: r.step, loss: r.eval_loss!, perplexity: r.eval_perplexity ?? Math.exp(r.eval_loss!), tokens: r.eval_tokens ?? 0 })),
    evalBefore: t.eval_before,
    evalAfter: t.eval_after,
    curve: losses.map((r) => ({ step: r.step, loss: r.loss ?? null, lr: r.lr ?? 0, gradNorm: r.grad_norm ?? 0, tokensPerSecond: r.tokens_per_s ?? null })),
    samples: byStep(log.filter((r) => Array.isArray(r.samples))).map((r) => ({ step: r.step, samples: r.samples! })),
    best: t.best ? { step: t.best.step, evalLoss: t.best.eval_loss, checkpoint: t.best.checkpoint } : null,
    stoppedEarly: t.stopped_early === true,
    resumes: t.resumes ?? [],
    extendedFrom: t.extended_from ?? null,
  };
}

/**
 * The expert profile (when the run has one) and the routed experts the trained adapter adapts,
 * per MoE block; not run without a trained adapter.
 */
export async function expertsSection(recipe: LoadedRecipe): Promise<Section<ExpertsSection>> {
  const dir = runPath(recipe.output, 'adapter');
  if (!existsSync(join(dir, ADAPTER_CONFIG))) return notRun(`no trained adapter in ${dir} (\`v4tune train ${recipe.file}\` makes it)`);
  const cfgPath = join(recipeModelDir(recipe), 'config.json');
  if (!existsSync(cfgPath)) return notRun(`no model config in ${cfgPath}`);
  const config = readJson<{ n_routed_experts: number; num_hidden_layers: number }>(cfgPath);
  const profile = readProfile(recipe.output);
  const adapter = await loadAdapter(dir, { warn: () => {} });
  const adapted = new Map<string, Set<number>>();
  for (const m of adapter.modules()) {
    const x = /^((?:layers|mtp)\.\d+)\.ffn\.experts\.(\d+)\.w[123]$/.exec(m);
    if (x) (adapted.get(x[1]!) ?? adapted.set(x[1]!, new Set()).get(x[1]!)!).add(Number(x[2]));
  }
  const E = config.n_routed_experts;
  const names = profile ? Object.keys(profile.blocks) : [...Array.from({ length: config.num_hidden_layers }, (_, i) => `layers.${i}`), ...[...adapted.keys()].filter((b) => b.startsWith('mtp.'))];
  const blocks = names.map((block) => {
    const b = profile?.blocks[block];
    const total = b ? b.gate_mass.reduce((s, v) => s + v, 0) : 0;
    return { block, share: b ? b.gate_mass.map((v) => (total > 0 ? v / total : 0)) : null, adapted: [...(adapted.get(block) ?? [])].sort((x, y) => x - y) };
  });
  const count = blocks.reduce((s, b) => s + b.adapted.length, 0);
  return {
    status: 'ok',
    profile: profile ? runPath(recipe.output, 'profile') : null,
    rows: profile?.rows ?? null,
    splitRows: profile?.sample?.split_rows ?? null,
    experts: E,
    blocks,
    adapted: count === 0 ? 'none' : blocks.every((b) => b.adapted.length === E) ? 'all' : 'subset',
  };
}

/** The trained adapter as v4tune reads it (either PEFT layout): modules and factors in official names. */
export async function adapterSection(recipe: LoadedRecipe): Promise<Section<AdapterSection>> {
  const dir = runPath(recipe.output, 'adapter');
  if (!existsSync(join(dir, ADAPTER_CONFIG)) || !existsSync(join(dir, ADAPTER_WEIGHTS))) return notRun(`no trained adapter in ${dir} (\`v4tune train ${recipe.file}\` makes it)`);
  const a = await loadAdapter(dir, { warn: () => {} });
  let params = 0;
  for (const l of a.layers.values()) params += l.A.length + l.B.length;
  return {
    status: 'ok',
    dir,
    modules: a.layers.size,
    trainableParameters: params,
    r: a.options.r,
    alpha: a.options.alpha,
    rslora: a.options.rsLoRA,
    dropout: a.options.dropout,
    targets: [...a.options.targets],
  };
}

async function mergeSection(recipe: LoadedRecipe): Promise<Section<MergeSection>> {
  const dir = runPath(recipe.output, 'merged');
  if (!existsSync(join(dir, 'config.json'))) {
    return notRun(recipe.export.merge ? `no merged model in ${dir} (\`v4tune merge ${recipe.file}\` makes it)` : `export.merge is off and ${dir} does not exist`);
  }
  const s = await inspectModel(dir);
  const shards = readdirSync(dir).filter((f) => f.endsWith('.safetensors')).length;
  return { status: 'ok', dir, dtype: recipe.export.merge_dtype, formats: s.formats, shards, bytes: safetensorsBytes(dir) };
}

interface QuantStatsJson {
  method?: string;
  group_size?: number;
  source?: string;
  quantized?: string[];
  errors?: Partial<Record<LinearKind, KindStats>>;
}

function quantOutputSection(recipe: LoadedRecipe, format: QuantFormat): QuantOutputSection {
  const path = formatOutput(runPath(recipe.output, 'quantized'), format);
  const statsPath = format === 'gptq' ? join(path, 'v4tune-quantize.json') : `${path}.json`;
  if (!existsSync(path) || !existsSync(statsPath)) {
    return { format, path, status: 'not run', reason: `no ${format} output at ${path} (\`v4tune quantize ${recipe.file}\` makes it)` };
  }
  const s = readJson<QuantStatsJson>(statsPath);
  const errors = s.errors ?? {};
  const bytesOut = format === 'gptq' ? safetensorsBytes(path) : statSync(path).size;
  const bytesIn = s.source !== undefined && existsSync(s.source) && statSync(s.source).isDirectory() ? safetensorsBytes(s.source) : null;
  return {
    format,
    path,
    status: 'ok',
    method: s.method ?? 'rtn',
    groupSize: format === 'gptq' ? (s.group_size ?? null) : 32,
    tensorsQuantized: s.quantized?.length ?? Object.values(errors).reduce((a, k) => a + (k?.tensors ?? 0), 0),
    bytesIn,
    bytesOut,
    compression: bytesIn !== null && bytesOut > 0 ? bytesIn / bytesOut : null,
    errors,
  };
}

export async function exportSection(recipe: LoadedRecipe): Promise<ExportSection> {
  const formats = ALL_FORMATS.filter((f) => recipe.export.quantize.includes(f) || existsSync(formatOutput(runPath(recipe.output, 'quantized'), f)));
  const quantized = formats.map((f) => quantOutputSection(recipe, f));
  // the GPTQ folder read back against its source, per layer (the stats file holds kinds only)
  for (const q of quantized) {
    if (q.format !== 'gptq' || q.status !== 'ok') continue;
    const s = readJson<QuantStatsJson>(join(q.path, 'v4tune-quantize.json'));
    if (s.source !== undefined && existsSync(join(s.source, 'config.json'))) q.layers = await gptqLayerErrors(q.path, s.source);
  }
  return { merge: await mergeSection(recipe), quantized };
}
