// `v4tune profile-experts <recipe>`: per-layer routed-expert load and gate mass of the base model
// on the prepared train split, `<output>/expert-profile.json` (src/stages/profile.ts), for
// `lora.experts: profiled`.
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export function register(program: Command): void {
  program.command('profile-experts')
    .description('measure per-layer routed-expert load and gate mass of the base model on the prepared train split (<output>/expert-profile.json), for lora.experts: profiled')
    .argument('<recipe>', 'recipe .yaml file')
    .option('--rows <n>', 'route N train rows sampled across the split (default: the recipe\'s lora.profile_rows)')
    .action(action(async (ctx: CliContext, file: string, o: { rows?: string }) => {
      const [{ loadRecipe }, { profileRecipe }] = await Promise.all([import('../../recipe/load.js'), import('../../stages/profile.js')]);
      const recipe = loadRecipe(file);
      let rows: number | undefined;
      if (o.rows !== undefined) {
        rows = Number(o.rows);
        if (!Number.isInteger(rows) || rows < 1) throw new InputError(`--rows must be a positive integer (got ${o.rows})`);
      }
      return { ...(await profileRecipe(recipe, ctx, { rows })) };
    }));
}
