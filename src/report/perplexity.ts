// Perplexity before and after (design.md "Export"): the eval-split loss of each stage a run has
// made, on the same first N eval rows: (a) the base model, (b) base + adapter, (c) the merged
// model, (d) the GPTQ INT4 output read back from its files (src/model/gptq-source.ts). (a) and
// (b) reuse train.json's eval when train evaluated the same rows; the rest run model.loss.
// GGUF outputs are not run (v4tune has no GGUF reader); their weight errors are in the report.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { openDataset } from '../data/dataset.js';
import { formatOutput } from '../export/quantize.js';
import { loadAdapter } from '../lora/peft.js';
import { loadModel } from '../model/load.js';
import type { ModelAdapter } from '../model/v4/model.js';
import { recipeModelDir, runPath } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';
import type { Sink } from '../sink.js';
import { evaluate, type EvalResult } from '../train/evaluate.js';
import type { TrainSummary } from '../train/summary.js';
import type { PerplexityRow, PerplexitySection, PerplexityStage } from './types.js';

export interface PerplexityOptions {
  /** evaluate at most this many eval rows (default: what train evaluated, else the whole split) */
  evalRows?: number;
}

interface StagePlan {
  stage: PerplexityStage;
  label: string;
  model: string;
  adapter: string | null;
  /** why the stage cannot be evaluated, or null */
  missing: string | null;
  /** train.json's numbers for this stage on the same rows, or null */
  reuse: EvalResult | null;
}

const GGUF_NOTE = 'GGUF outputs are not evaluated (v4tune does not run GGUF files); their weight error stats are under Export.';

export async function measurePerplexity(recipe: LoadedRecipe, train: TrainSummary | null, sink: Sink, opts: PerplexityOptions = {}): Promise<PerplexitySection> {
  const modelDir = recipeModelDir(recipe);
  const adapterDir = runPath(recipe.output, 'adapter');
  const mergedDir = runPath(recipe.output, 'merged');
  const gptqDir = formatOutput(runPath(recipe.output, 'quantized'), 'gptq');
  const notes: string[] = [];
  if (recipe.export.quantize.some((f) => f !== 'gptq') || existsSync(formatOutput(runPath(recipe.output, 'quantized'), 'gguf-q4_0'))) notes.push(GGUF_NOTE);

  const dataDir = recipe.data.output;
  const plans: StagePlan[] = [
    { stage: 'base', label: '(a) base model', model: modelDir, adapter: null, missing: existsSync(join(modelDir, 'config.json')) ? null : `no model in ${modelDir}`, reuse: null },
    { stage: 'adapter', label: '(b) base + adapter', model: modelDir, adapter: adapterDir, missing: existsSync(join(adapterDir, 'adapter_config.json')) ? null : `no trained adapter in ${adapterDir}`, reuse: null },
    { stage: 'merged', label: '(c) merged', model: mergedDir, adapter: null, missing: existsSync(join(mergedDir, 'config.json')) ? null : `no merged model in ${mergedDir}`, reuse: null },
    { stage: 'gptq', label: '(d) GPTQ INT4 (read back)', model: gptqDir, adapter: null, missing: existsSync(join(gptqDir, 'config.json')) ? null : `no GPTQ output in ${gptqDir}`, reuse: null },
  ];
  if (plans[1]!.missing === null && plans[0]!.missing !== null) plans[1]!.missing = plans[0]!.missing;

  if (!existsSync(join(dataDir, 'manifest.json'))) {
    const reason = `no prepared dataset in ${dataDir} (\`v4tune prepare ${recipe.file}\` makes it)`;
    return { evalRows: null, evalRowsTotal: null, rows: plans.map((p) => ({ stage: p.stage, label: p.label, model: p.model, status: 'not run', reason })), notes };
  }
  const total = openDataset(dataDir).rowCount('eval');
  if (total === 0) {
    const reason = `the eval split of ${dataDir} is empty (raise data.eval_fraction)`;
    return { evalRows: 0, evalRowsTotal: 0, rows: plans.map((p) => ({ stage: p.stage, label: p.label, model: p.model, status: 'not run', reason })), notes };
  }
  const evalRows = Math.min(opts.evalRows ?? train?.eval_rows ?? total, total);
  if (train?.eval_before?.rows === evalRows) plans[0]!.reuse = train.eval_before;
  if (train?.eval_after?.rows === evalRows && train.ok && train.step === train.steps) plans[1]!.reuse = train.eval_after;

  const rows: PerplexityRow[] = [];
  // base and base + adapter share one loaded model
  let base: Awaited<ReturnType<typeof loadModel>> | null = null;
  try {
    for (const p of plans) {
      const head = { stage: p.stage, label: p.label, model: p.adapter ? `${p.model} + ${p.adapter}` : p.model };
      if (p.missing !== null) {
        rows.push({ ...head, status: 'not run', reason: p.missing });
        continue;
      }
      if (p.reuse !== null) {
        rows.push({ ...head, status: 'ok', from: 'train.json', loss: p.reuse.loss, perplexity: p.reuse.perplexity, tokens: p.reuse.tokens, rows: p.reuse.rows });
        continue;
      }
      sink.log(`report: eval ${p.label}: ${head.model} on ${evalRows} eval rows`);
      let n: EvalResult;
      if (p.stage === 'base' || p.stage === 'adapter') {
        base ??= await loadModel(modelDir, { backend: recipe.train.backend, note: (l) => sink.log(l) });
        const adapter: ModelAdapter | undefined = p.adapter ? await loadAdapter(p.adapter, { warn: (l) => sink.warn(l) }) : undefined;
        n = await evaluate(base, dataDir, { maxRows: evalRows, adapter, sink });
      } else {
        if (base !== null) {
          base.dispose();
          base = null;
        }
        const model = await loadModel(p.model, { backend: recipe.train.backend, note: (l) => sink.log(l) });
        try {
          n = await evaluate(model, dataDir, { maxRows: evalRows, sink });
        } finally {
          model.dispose();
        }
      }
      rows.push({ ...head, status: 'ok', from: 'computed', loss: n.loss, perplexity: n.perplexity, tokens: n.tokens, rows: n.rows });
    }
  } finally {
    base?.dispose();
  }
  return { evalRows, evalRowsTotal: total, rows, notes };
}
