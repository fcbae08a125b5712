// `v4tune run <recipe>`: every stage of the recipe, in order, each reused while its inputs are
// unchanged (src/stages/run.ts): model, prepare, profile-experts (lora.experts: profiled),
// train with eval before and after, merge (export.merge), quantize (export.quantize), report.
import type { Command } from 'commander';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export function register(program: Command): void {
  program.command('run')
    .description('run every stage of a recipe: model, prepare, profile-experts (lora.experts: profiled), train with eval before and after, merge (export.merge), quantize (export.quantize), report; each reused while its inputs are unchanged')
    .argument('<recipe>', 'recipe .yaml file')
    .action(action(async (ctx: CliContext, file: string) => {
      const [{ loadRecipe }, { runRecipe }] = await Promise.all([import('../../recipe/load.js'), import('../../stages/run.js')]);
      return { ...(await runRecipe(loadRecipe(file), ctx)) };
    }));
}
