// `v4tune report <recipe>`: the run report, `<output>/report.md` and `report.html`
// (src/stages/report.ts); `--json` prints the same content.
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export function register(program: Command): void {
  program.command('report')
    .description('write <output>/report.md and report.html (with charts): recipe, model, data, training, adapter, export, and eval perplexity before and after merging and INT4')
    .argument('<recipe>', 'recipe .yaml file')
    .option('--eval-rows <n>', 'evaluate at most N eval rows (default: what train evaluated, else the whole eval split)')
    .action(action(async (ctx: CliContext, file: string, opts: { evalRows?: string }) => {
      const [{ loadRecipe }, { reportRecipe }] = await Promise.all([import('../../recipe/load.js'), import('../../stages/report.js')]);
      let evalRows: number | undefined;
      if (opts.evalRows !== undefined) {
        evalRows = Number(opts.evalRows);
        if (!Number.isInteger(evalRows) || evalRows < 1) throw new InputError(`--eval-rows must be a positive integer (got ${opts.evalRows})`);
      }
      return { ...(await reportRecipe(loadRecipe(file), ctx, { evalRows })) };
    }));
}
