// `v4tune run <recipe>`: every stage of the recipe that this version builds, in order:
// model (a preset is created on the fly, and reused while its settings are unchanged), prepare,
// train (which evaluates before and after; a finished run with unchanged settings is reused, an
// unfinished one resumed). Stages of the design that are not built yet are listed as such.
import type { Command } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../../fsutil.js';
import { initModel } from '../../model/init.js';
import { loadRecipe, type LoadedRecipe } from '../../recipe/load.js';
import { action } from '../action.js';
import type { CliContext, Progress } from '../context.js';
import { prepareRecipe, prepareResult, recipeModelDir } from './prepare.js';
import { trainRecipe } from './train.js';

/** Stages of the design this version does not build; `run` names them and goes on. */
const NOT_BUILT_STAGES = ['merge', 'quantize'];

/** The preset settings a created model folder was made with (beside it, in the run folder). */
function presetStamp(recipe: LoadedRecipe): string {
  const { preset, seed, format } = recipe.model;
  return `${JSON.stringify({ preset, seed, format })}\n`;
}

/** The model stage: the recipe's checkpoint folder, creating a preset when asked. */
async function modelStage(recipe: LoadedRecipe, ctx: CliContext): Promise<{ dir: string; created: boolean }> {
  const dir = recipeModelDir(recipe);
  if (recipe.model.preset === undefined) return { dir, created: false };
  const stampFile = join(recipe.output, 'model.preset.json');
  const stamp = presetStamp(recipe);
  if (existsSync(join(dir, 'config.json')) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) {
    ctx.log(`model: reusing the ${recipe.model.preset} preset in ${dir} (settings unchanged)`);
    return { dir, created: false };
  }
  let bar: Progress | undefined;
  await initModel({
    preset: recipe.model.preset,
    out: dir,
    seed: recipe.model.seed,
    format: recipe.model.format,
    onTensor: (done, total) => (bar ??= ctx.progress(`model: creating the ${recipe.model.preset} preset`, total, 'tensors')).update(done),
  });
  bar?.stop();
  writeFileAtomic(stampFile, stamp);
  return { dir, created: true };
}

export function register(program: Command): void {
  program.command('run')
    .description(`run every built stage of a recipe: model, prepare, train with eval before and after (${NOT_BUILT_STAGES.join(', ')}: not built yet)`)
    .argument('<recipe>', 'recipe .yaml file')
    .action(action(async (ctx: CliContext, file: string) => {
      const recipe = loadRecipe(file);
      ctx.log(`run ${recipe.name}: ${recipe.file} → ${recipe.output}`);
      ctx.log(`plan: model (${recipe.model.preset ? `preset ${recipe.model.preset}` : recipe.model.path}) → prepare → train (eval before and after); not built yet: ${NOT_BUILT_STAGES.join(', ')}`);
      const model = await modelStage(recipe, ctx);
      const prepared = await prepareRecipe(recipe, ctx);
      const data = prepareResult(prepared);
      ctx.log(`prepare: ${prepared.reused ? 'reused' : 'wrote'} ${prepared.output}: ${prepared.manifest.rows} rows, ${prepared.manifest.tokens} tokens (train ${prepared.manifest.splits.train.rows} rows, eval ${prepared.manifest.splits.eval.rows} rows)`);
      const train = await trainRecipe(recipe, ctx, { auto: true });
      for (const stage of NOT_BUILT_STAGES) ctx.log(`${stage}: not built yet (see README.md, "What is not done yet")`);
      const summary = { ok: true, recipe: recipe.file, output: recipe.output, model, data, train, not_built: NOT_BUILT_STAGES };
      writeFileAtomic(join(recipe.output, 'run.json'), `${JSON.stringify(summary, null, 2)}\n`);
      return summary;
    }));
}
