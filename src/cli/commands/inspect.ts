// `v4tune inspect <dir>`: a dataset folder (manifest.json) or a model folder (config.json).
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { inspectDataset, renderDatasetSummary } from '../../data/inspect.js';
import { InputError } from '../../errors.js';
import { inspectModel, renderModelSummary } from '../../model/inspect.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export function register(program: Command): void {
  program.command('inspect')
    .description('summarise a prepared dataset (manifest, length histogram, decoded rows) or a model folder (config, parameters by part, formats)')
    .argument('<dir>', 'a dataset folder (from prepare) or a V4 model folder')
    .option('--rows <n>', 'datasets: decode the first N rows back to text, showing the loss mask', '0')
    .action(action(async (ctx: CliContext, dir: string, opts: { rows: string }) => {
      if (!existsSync(dir)) throw new InputError(`${dir}: no such folder`);
      const rows = Number(opts.rows);
      if (!Number.isInteger(rows) || rows < 0) throw new InputError(`--rows must be a non-negative integer (got ${opts.rows})`);
      if (existsSync(join(dir, 'manifest.json'))) {
        const s = await inspectDataset(dir, { rows });
        ctx.log(renderDatasetSummary(s, { color: !ctx.json && process.stdout.isTTY === true }));
        return { ok: true, kind: 'dataset', ...s };
      }
      if (existsSync(join(dir, 'config.json'))) {
        const s = await inspectModel(dir);
        ctx.log(renderModelSummary(s));
        return { ok: true, kind: 'model', ...s };
      }
      throw new InputError(`${dir}: neither a dataset (no manifest.json) nor a model folder (no config.json)`);
    }));
}
