// A recipe's run folder (`output:`): which file or folder each stage writes where. Every stage,
// the report and the writers below them (train/run.ts, train/checkpoint.ts, lora/profile.ts)
// take their names from here.
//   model/               the preset's checkpoint, created on the fly (model.preset)
//   model.preset.json    the preset settings it was made with
//   expert-profile.json  profile-experts: routed-expert load and gate mass
//   checkpoints/step-N/  train: resumable checkpoints
//   train-log.jsonl      train: one line per step (and eval)
//   train.json           train: the summary
//   tensorboard/         train: event files (train.log_to: tensorboard)
//   adapter/             train: the trained adapter (PEFT)
//   merged/              merge: base + adapter
//   quantized/           quantize: gptq/, model-<TYPE>.gguf (+ mtp-<file>, <file>.json)
//   report.md, report.html   report
//   run.json             run: the summary of every stage
//   <stage>.stamp        run: the inputs a reused stage was made from (merge, quantize, report)
// The prepared dataset lives in `data.output` (by default `<output>/data`).
import { join } from 'node:path';
import { InputError } from '../errors.js';
import type { LoadedRecipe } from './load.js';

export const RUN_FILES = {
  model: 'model',
  presetStamp: 'model.preset.json',
  profile: 'expert-profile.json',
  checkpoints: 'checkpoints',
  trainLog: 'train-log.jsonl',
  trainSummary: 'train.json',
  tensorboard: 'tensorboard',
  adapter: 'adapter',
  merged: 'merged',
  quantized: 'quantized',
  report: 'report.md',
  reportHtml: 'report.html',
  runSummary: 'run.json',
} as const;

export type RunFile = keyof typeof RUN_FILES;

/** `<output>/<name of f>` */
export function runPath(output: string, f: RunFile): string {
  return join(output, RUN_FILES[f]);
}

/** The stamp of a stage `run` reuses while its inputs are unchanged. */
export function stampPath(output: string, stage: 'merge' | 'quantize' | 'report'): string {
  return join(output, `${stage}.stamp`);
}

/** Whether the recipe names a base model (a data-only recipe has no `model` section). */
export function recipeHasModel(recipe: LoadedRecipe): boolean {
  return recipe.model.path !== undefined || recipe.model.preset !== undefined;
}

/** The recipe's model folder: `model.path`, or `<output>/model` where a preset is created. */
export function recipeModelDir(recipe: LoadedRecipe): string {
  if (!recipeHasModel(recipe)) {
    throw new InputError(`${recipe.file}: the recipe has no model section (a data-only recipe can run \`v4tune prepare ${recipe.file}\`); add model.path or model.preset for this stage`);
  }
  return recipe.model.path ?? runPath(recipe.output, 'model');
}
