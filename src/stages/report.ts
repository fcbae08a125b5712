// The report stage: the run report, `<output>/report.md` (written atomically): recipe, model,
// data, training (loss curve, eval before and after), adapter, export (merge, each quantized
// output with its error stats) and the eval perplexity of every stage the run made: base,
// base + adapter, merged, and the GPTQ INT4 output read back from its files (src/report/).
// Stages the run has not reached are "not run". `<output>/report.html` is the same report as a
// self-contained page with charts.
import { writeFileAtomic } from '../fsutil.js';
import { withRunLock } from '../lock.js';
import { runPath } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { reportCharts } from '../report/charts.js';
import { renderReportHtml } from '../report/html.js';
import type { PerplexityOptions } from '../report/perplexity.js';
import { renderReport } from '../report/render.js';
import { assertRunFolder, buildReport } from '../report/report.js';
import type { RunReport } from '../report/types.js';
import { silentSink, type Sink } from '../sink.js';

export type { RunReport } from '../report/types.js';

/** evaluate at most `evalRows` eval rows (default: what train evaluated, else the whole eval split) */
export type ReportRecipeOptions = PerplexityOptions;

/** What the report stage returns (and `report --json` prints): the report's content and its two files. */
export type ReportResult = RunReport & { ok: true; report: string; html: string };

export async function reportRecipe(recipe: LoadedRecipe, sink: Sink = silentSink, opts: ReportRecipeOptions = {}): Promise<ReportResult> {
  // (checked before the lock, which would create the folder)
  assertRunFolder(recipe);
  return withRunLock(recipe.output, `v4tune report ${recipe.file}`, async () => {
    const report = await buildReport(recipe, sink, opts);
    const path = runPath(recipe.output, 'report');
    const md = renderReport(report);
    writeFileAtomic(path, md);
    const html = runPath(recipe.output, 'reportHtml');
    writeFileAtomic(html, renderReportHtml(md, await reportCharts(report), `Run report: ${recipe.name}`));
    for (const r of report.perplexity.rows) {
      sink.log(r.status === 'ok'
        ? `  ${r.label}: loss ${r.loss.toFixed(4)}, perplexity ${r.perplexity.toFixed(2)} (${r.tokens} tokens${r.from === 'train.json' ? ', from train.json' : ''})`
        : `  ${r.label}: not run`);
    }
    sink.log(`report: wrote ${path} and ${html}`);
    return { ok: true as const, report: path, html, ...report };
  }, (l) => sink.warn(l));
}
