// `v4tune train <recipe>`: train the recipe's LoRA adapter on its prepared dataset, with
// checkpoints, a metrics log and eval on the eval split (src/stages/train.ts); `--resume`
// continues from the last checkpoint to the same result as a run never stopped.
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export function register(program: Command): void {
  program.command('train')
    .description('train the recipe\'s LoRA adapter on its prepared dataset (checkpoints, eval, train-log.jsonl, adapter/)')
    .argument('<recipe>', 'recipe .yaml file')
    .option('--resume', 'continue from the last checkpoint in <output>/checkpoints (same result as a run never stopped); with more train.steps/epochs than a finished run had, extend it')
    .option('--overwrite', 'delete an earlier run\'s checkpoints, log and adapter and start over')
    .option('--eval-rows <n>', 'evaluate on at most N eval rows (default: the whole eval split)')
    .action(action(async (ctx: CliContext, file: string, o: { resume?: boolean; overwrite?: boolean; evalRows?: string }) => {
      const [{ loadRecipe }, { trainRecipe }] = await Promise.all([import('../../recipe/load.js'), import('../../stages/train.js')]);
      const recipe = loadRecipe(file);
      let evalRows: number | undefined;
      if (o.evalRows !== undefined) {
        evalRows = Number(o.evalRows);
        if (!Number.isInteger(evalRows) || evalRows < 0) throw new InputError(`--eval-rows must be a non-negative integer (got ${o.evalRows})`);
      }
      return { ...(await trainRecipe(recipe, ctx, { resume: o.resume === true, overwrite: o.overwrite === true, evalRows })) };
    }));
}
