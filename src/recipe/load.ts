// Reads a recipe: YAML → zod validation → paths resolved against the recipe's folder.
// Every problem becomes one InputError naming the file, the dotted field path and the bad value.
import { readFileSync, statSync } from 'node:fs';
import { basename, dirname, extname, isAbsolute, resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import type { z } from 'zod';
import { InputError } from '../errors.js';
import { nearest } from '../nearest.js';
import { modelSchema, recipeSchema, type Recipe } from './schema.js';

/** A validated recipe with every path absolute. */
export interface LoadedRecipe extends Recipe {
  /** The `model` section; a recipe without one (data only) has neither `path` nor `preset`. */
  model: z.infer<typeof modelSchema>;
  file: string;
  dir: string;
  name: string;
  output: string;
  data: Recipe['data'] & { output: string };
}

export function loadRecipe(file: string): LoadedRecipe {
  const path = resolve(file);
  let text: string;
  try {
    if (statSync(path).isDirectory()) throw new InputError(`${file}: is a folder, expected a recipe .yaml file`);
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if (e instanceof InputError) throw e;
    throw new InputError(`${file}: cannot read the recipe (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  return parseRecipe(text, path);
}

/** Validate recipe text; `path` names the file in errors and anchors relative paths. */
export function parseRecipe(text: string, path: string): LoadedRecipe {
  const lines = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: false, lineCounter: lines });
  if (doc.errors.length > 0) {
    const err = doc.errors[0]!;
    const line = lines.linePos(err.pos[0]).line;
    throw new InputError(`${path}${line ? `:${line}` : ''}: not valid YAML (${err.message.split('\n')[0]})`);
  }
  const raw: unknown = doc.toJS() ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw new InputError(`${path}: a recipe is a YAML mapping with the sections model, data, lora, train, export, output`);
  }
  const parsed = recipeSchema.safeParse(raw);
  if (!parsed.success) {
    // A misspelt key also makes the field it meant "missing": report the misspelling first.
    const issues = [...parsed.error.issues].sort((a, b) => Number(b.code === 'unrecognized_keys') - Number(a.code === 'unrecognized_keys'));
    throw new InputError(`${path}: ${describeIssue(issues[0]!, raw)}`);
  }
  const r = parsed.data;
  const model = r.model ?? modelSchema.parse({});
  if (r.model !== undefined && (model.path === undefined) === (model.preset === undefined)) {
    throw new InputError(`${path}: model needs exactly one of model.path or model.preset (got ${model.path ? 'both' : 'neither'})`);
  }
  if (model.preset !== 'flash' && (model.layers !== undefined || model.experts !== undefined)) {
    throw new InputError(`${path}: model.layers and model.experts size the flash preset only (got preset ${model.preset ?? 'none'})`);
  }
  if (r.train.steps !== undefined && r.train.epochs !== undefined) {
    throw new InputError(`${path}: train needs at most one of train.steps and train.epochs (got both: ${r.train.steps} steps, ${r.train.epochs} epochs)`);
  }
  if (r.train.early_stopping_patience > 0 && r.train.eval_every === 0) {
    throw new InputError(`${path}: train.early_stopping_patience needs train.eval_every > 0 (early stopping compares evals during the run)`);
  }
  const dir = dirname(path);
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(dir, p));
  const name = r.name ?? basename(path, extname(path));
  const output = abs(r.output ?? `runs/${name}`);
  return {
    ...r,
    file: path,
    dir,
    name,
    output,
    model: { ...model, path: model.path === undefined ? undefined : abs(model.path) },
    // `deepseek-v4` names the embedded tokenizer (src/recipe/model.ts), not a file
    tokenizer: r.tokenizer === undefined || r.tokenizer === 'deepseek-v4' ? r.tokenizer : abs(r.tokenizer),
    train: { ...r.train, warm_start: r.train.warm_start === undefined ? undefined : abs(r.train.warm_start) },
    data: {
      ...r.data,
      sources: r.data.sources.map((s) => ({ ...s, path: abs(s.path) })),
      output: r.data.output === undefined ? resolve(output, 'data') : abs(r.data.output),
    },
  };
}

/**
 * Names other fine-tuning tools (transformers, PEFT, TRL, axolotl, LLaMA-Factory) give recipe
 * fields, lower case → field: far from ours in edit distance but meaning the same
 * (`learning_rate` is `lr`).
 */
const ALIASES: Record<string, string> = {
  rank: 'r',
  lora_r: 'r',
  lora_rank: 'r',
  lora_alpha: 'alpha',
  lora_dropout: 'dropout',
  target_modules: 'targets',
  use_rslora: 'rslora',
  learning_rate: 'lr',
  max_steps: 'steps',
  num_train_epochs: 'epochs',
  num_epochs: 'epochs',
  per_device_train_batch_size: 'batch_rows',
  batch_size: 'batch_rows',
  micro_batch_size: 'batch_rows',
  gradient_accumulation_steps: 'grad_accum',
  lr_scheduler_type: 'schedule',
  lr_scheduler: 'schedule',
  warmup: 'warmup_steps',
  eval_steps: 'eval_every',
  save_steps: 'checkpoint_every',
  save_total_limit: 'keep_checkpoints',
  report_to: 'log_to',
  gradient_checkpointing: 'activation_checkpointing',
  max_seq_length: 'seq_len',
  sequence_len: 'seq_len',
  cutoff_len: 'seq_len',
  max_length: 'seq_len',
  val_set_size: 'eval_fraction',
  sample_packing: 'packing',
  output_dir: 'output',
  base_model: 'model',
  model_name_or_path: 'model',
  datasets: 'data',
  dataset: 'data',
  bits: 'quantize',
};

function dotted(path: PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i > 0 ? '.' : ''}${String(p)}`)).join('');
}

function valueAt(root: unknown, path: PropertyKey[]): unknown {
  let v: unknown = root;
  for (const p of path) v = v !== null && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[p] : undefined;
  return v;
}

function describeIssue(issue: z.core.$ZodIssue, raw: unknown): string {
  const where = dotted(issue.path);
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0]!;
    const full = where ? `${where}.${key}` : key;
    const known = knownKeys(issue.path);
    const alias = ALIASES[key.toLowerCase()];
    const near = alias !== undefined && known.includes(alias) ? alias : nearest(key, known) ?? nearest(key.replace(/_/g, ''), known);
    if (near) return `unknown field ${full}: did you mean ${where ? `${where}.` : ''}${near}?${alias === near ? ` (\`${key}\` is another tool's name for it)` : ''}`;
    return `unknown field ${full}; known fields here: ${known.join(', ')}`;
  }
  const got = valueAt(raw, issue.path);
  const shown = got === undefined ? 'nothing' : JSON.stringify(got);
  return `${where || 'recipe'} ${explain(issue, got)} (got ${shown})`;
}

function explain(issue: z.core.$ZodIssue, got: unknown): string {
  switch (issue.code) {
    case 'invalid_type':
      return got === undefined ? `is required (a ${issue.expected})` : `must be a ${issue.expected}`;
    case 'too_small':
      return issue.origin === 'array' ? `needs at least ${issue.minimum} entr${issue.minimum === 1 ? 'y' : 'ies'}`
        : issue.origin === 'string' ? 'must not be empty'
        : `must be ${issue.inclusive ? '≥' : '>'} ${issue.minimum}`;
    case 'too_big':
      return `must be ${issue.inclusive ? '≤' : '<'} ${issue.maximum}`;
    case 'invalid_value':
      return `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    default:
      return issue.message.replace(/^Invalid input: /, 'must be ').toLowerCase();
  }
}

/** The field names of the object schema at `path` (array indices skipped). */
function knownKeys(path: PropertyKey[]): string[] {
  let s: unknown = recipeSchema;
  for (const p of path) {
    s = unwrap(s);
    const def = (s as { def: { type: string; element?: unknown } }).def;
    if (def.type === 'array') { s = def.element; continue; }
    if (typeof p === 'number') continue;
    s = (s as { shape: Record<string, unknown> }).shape[String(p)];
  }
  s = unwrap(s);
  return Object.keys((s as { shape?: Record<string, unknown> }).shape ?? {});
}

function unwrap(s: unknown): unknown {
  let cur = s as { def: { type: string; innerType?: unknown } };
  while (cur.def.innerType && ['default', 'optional', 'nullable', 'prefault'].includes(cur.def.type)) {
    cur = cur.def.innerType as typeof cur;
  }
  return cur;
}
