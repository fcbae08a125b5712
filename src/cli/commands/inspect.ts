// `v4tune inspect <dir>`: a dataset folder (manifest.json) or a model folder (config.json).
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../../errors.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export function register(program: Command): void {
  program.command('inspect')
    .description('summarise a prepared dataset or a model folder')
    .argument('<dir>', 'a dataset folder (from prepare) or a V4 model folder')
    .option('--rows <n>', 'datasets: decode the first N rows, showing the loss mask', '0')
    .action(action(async (ctx: CliContext, dir: string) => {
      if (!existsSync(dir)) throw new InputError(`${dir}: no such folder`);
      if (!existsSync(join(dir, 'manifest.json')) && !existsSync(join(dir, 'config.json'))) {
        throw new InputError(`${dir}: neither a dataset (no manifest.json) nor a model folder (no config.json)`);
      }
      ctx.log(dir);
      return { ok: true };
    }));
}
