// `v4tune inspect <dir>`: a dataset folder (manifest.json) or a model folder (config.json).
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { InspectOptions } from '../../data/inspect.js';
import { InputError } from '../../errors.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

interface Flags { rows?: string; row?: string; split?: string; source?: string; sample?: string; seed: string }

function count(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InputError(`${flag} must be a non-negative integer (got ${v})`);
  return n;
}

function datasetOptions(o: Flags): InspectOptions {
  if (o.split !== undefined && o.split !== 'train' && o.split !== 'eval') throw new InputError(`--split must be train or eval (got ${o.split})`);
  const picks = [o.rows, o.row, o.sample].filter((x) => x !== undefined).length;
  if (picks > 1) throw new InputError('--rows, --row and --sample choose rows in different ways: give one of them');
  return {
    rows: count('--rows', o.rows),
    row: count('--row', o.row),
    sample: count('--sample', o.sample),
    seed: count('--seed', o.seed),
    ...(o.split !== undefined ? { split: o.split as 'train' | 'eval' } : {}),
    ...(o.source !== undefined ? { source: o.source } : {}),
  };
}

export function register(program: Command): void {
  program.command('inspect')
    .description('summarise a prepared dataset (manifest, per-source counts, length histogram, decoded rows with their sources) or a model folder (config, parameters by part, formats)')
    .argument('<dir>', 'a dataset folder (from prepare) or a V4 model folder')
    .option('--rows <n>', 'datasets: decode the first N rows back to text, showing the loss mask')
    .option('--row <n>', 'datasets: decode row N of the split (--split, default train)')
    .option('--sample <k>', 'datasets: decode K rows drawn at random (seeded by --seed)')
    .option('--seed <s>', 'datasets: seed of --sample', '0')
    .option('--source <name>', 'datasets: only rows holding a document of this source (a name from the manifest)')
    .option('--split <split>', 'datasets: train or eval (default: both, train for --row)')
    .action(action(async (ctx: CliContext, dir: string, opts: Flags) => {
      if (!existsSync(dir)) throw new InputError(`${dir}: no such folder`);
      if (existsSync(join(dir, 'manifest.json'))) {
        const { inspectDataset, renderDatasetSummary } = await import('../../data/inspect.js');
        const s = await inspectDataset(dir, datasetOptions(opts));
        ctx.log(renderDatasetSummary(s, { color: !ctx.json && process.stdout.isTTY === true }));
        return { ok: true, kind: 'dataset', ...s };
      }
      if (existsSync(join(dir, 'config.json'))) {
        const { inspectModel, renderModelSummary } = await import('../../model/inspect.js');
        const s = await inspectModel(dir);
        ctx.log(renderModelSummary(s));
        return { ok: true, kind: 'model', ...s };
      }
      throw new InputError(`${dir}: neither a dataset (no manifest.json) nor a model folder (no config.json)`);
    }));
}
