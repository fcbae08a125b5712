// `v4tune prepare <recipe>`: the recipe's corpus → tokenized, packed Arrow shards + manifest
// (src/stages/prepare.ts).
import type { Command } from 'commander';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export function register(program: Command): void {
  program.command('prepare')
    .description('tokenize and pack the recipe\'s corpus into Arrow shards + manifest.json + the HF datasets layout (reused when nothing changed); needs a tokenizer, not a model')
    .argument('<recipe>', 'recipe .yaml file')
    .option('--overwrite', 'replace a data.output folder that v4tune did not write as a dataset')
    .action(action(async (ctx: CliContext, file: string, o: { overwrite?: boolean }) => {
      const [{ loadRecipe }, { preparedJson, prepareRecipe }] = await Promise.all([import('../../recipe/load.js'), import('../../stages/prepare.js')]);
      const recipe = loadRecipe(file);
      ctx.log(`prepare: ${recipe.data.sources.length} source(s) → ${recipe.data.output} (seq_len ${recipe.data.seq_len}, packing ${recipe.data.packing ? 'on' : 'off'})`);
      return preparedJson(await prepareRecipe(recipe, ctx, { overwrite: o.overwrite === true }));
    }));
}
