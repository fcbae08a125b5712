// `v4tune report <recipe>`: the run report, `<output>/report.md` (written atomically): recipe,
// model, data, training (loss curve, eval before and after), adapter, export (merge, each
// quantized output with its error stats) and the eval perplexity of every stage the run made:
// base, base + adapter, merged, and the GPTQ INT4 output read back from its files. Stages the run
// has not reached are "not run"; `--json` prints the same content. `<output>/report.html` is the
// same report as a self-contained page with charts (src/report/html.ts, charts.ts).
import type { Command } from 'commander';
import { join } from 'node:path';
import { InputError } from '../../errors.js';
import { writeFileAtomic } from '../../fsutil.js';
import { loadRecipe, type LoadedRecipe } from '../../recipe/load.js';
import { reportCharts } from '../../report/charts.js';
import { renderReportHtml } from '../../report/html.js';
import { renderReport } from '../../report/render.js';
import { assertRunFolder, buildReport } from '../../report/report.js';
import type { RunReport } from '../../report/types.js';
import { withRunLock } from '../../lock.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export interface ReportRecipeOptions {
  /** evaluate at most this many eval rows (default: what train evaluated, else the whole eval split) */
  evalRows?: number;
}

/** The report stage (used by `report` and `run`): writes `<output>/report.md` and `report.html`; returns its content and paths. */
export async function reportRecipe(recipe: LoadedRecipe, ctx: CliContext, opts: ReportRecipeOptions = {}): Promise<RunReport & { ok: true; report: string; html: string }> {
  const report = await buildReport(recipe, ctx, opts);
  const path = join(recipe.output, 'report.md');
  const md = renderReport(report);
  writeFileAtomic(path, md);
  const html = join(recipe.output, 'report.html');
  writeFileAtomic(html, renderReportHtml(md, await reportCharts(report), `Run report: ${recipe.name}`));
  for (const r of report.perplexity.rows) {
    ctx.log(r.status === 'ok'
      ? `  ${r.label}: loss ${r.loss.toFixed(4)}, perplexity ${r.perplexity.toFixed(2)} (${r.tokens} tokens${r.from === 'train.json' ? ', from train.json' : ''})`
      : `  ${r.label}: not run`);
  }
  ctx.log(`report: wrote ${path} and ${html}`);
  return { ok: true, report: path, html, ...report };
}

export function register(program: Command): void {
  program.command('report')
    .description('write <output>/report.md and report.html (with charts): recipe, model, data, training, adapter, export, and eval perplexity before and after merging and INT4')
    .argument('<recipe>', 'recipe .yaml file')
    .option('--eval-rows <n>', 'evaluate at most N eval rows (default: what train evaluated, else the whole eval split)')
    .action(action(async (ctx: CliContext, file: string, opts: { evalRows?: string }) => {
      let evalRows: number | undefined;
      if (opts.evalRows !== undefined) {
        evalRows = Number(opts.evalRows);
        if (!Number.isInteger(evalRows) || evalRows < 1) throw new InputError(`--eval-rows must be a positive integer (got ${opts.evalRows})`);
      }
      const recipe = loadRecipe(file);
      assertRunFolder(recipe);
      return { ...(await withRunLock(recipe.output, `v4tune report ${file}`, () => reportRecipe(recipe, ctx, { evalRows }), (l) => ctx.warn(l))) };
    }));
}
