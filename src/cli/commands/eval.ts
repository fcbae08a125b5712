// `v4tune eval <recipe>`: loss and perplexity of the recipe's model on the eval split of its
// prepared dataset (src/stages/eval.ts).
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export function register(program: Command): void {
  program.command('eval')
    .description('loss and perplexity of the model on the eval split of the prepared dataset')
    .argument('<recipe>', 'recipe .yaml file')
    .option('--max-rows <n>', 'evaluate at most N eval rows')
    .option('--adapter <dir>', 'evaluate with this PEFT adapter applied (e.g. <output>/adapter after train)')
    .action(action(async (ctx: CliContext, file: string, opts: { maxRows?: string; adapter?: string }) => {
      const [{ loadRecipe }, { evalRecipe }] = await Promise.all([import('../../recipe/load.js'), import('../../stages/eval.js')]);
      const recipe = loadRecipe(file);
      let maxRows: number | undefined;
      if (opts.maxRows !== undefined) {
        maxRows = Number(opts.maxRows);
        if (!Number.isInteger(maxRows) || maxRows < 1) throw new InputError(`--max-rows must be a positive integer (got ${opts.maxRows})`);
      }
      return { ...(await evalRecipe(recipe, ctx, { adapter: opts.adapter, maxRows })) };
    }));
}
