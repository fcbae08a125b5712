// The run stage: every stage of a recipe, in order: model (a preset is created on the fly, and
// reused while its settings are unchanged), prepare, profile-experts (lora.experts: profiled;
// reused while the dataset and model are unchanged), train (which evaluates before and after; a
// finished run with unchanged settings is reused, an unfinished one resumed), merge
// (export.merge), quantize (export.quantize) and the report (report.md, with perplexity before
// and after each stage), each reused while its inputs are unchanged (`<output>/<stage>.stamp`
// holds the key of the inputs it was made from). The run folder is locked throughout; run.json
// holds the summary.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../fsutil.js';
import { withRunLock } from '../lock.js';
import { runPath, stampPath } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { assertExportFits } from '../recipe/preflight.js';
import { silentSink, type Sink } from '../sink.js';
import { readModelConfig } from './inputs.js';
import { mergeRecipe, recipeMergePaths } from './merge.js';
import { ensureModel, type ModelStageResult } from './model.js';
import { preparedJson, prepareRecipe } from './prepare.js';
import { ensureProfile, type ProfileStageResult } from './profile.js';
import { quantizeRecipe } from './quantize.js';
import { reportRecipe } from './report.js';
import { trainRecipe, type TrainSummary } from './train.js';

/** run.json: what each stage did (`reused`: its outputs were kept, its inputs unchanged). */
export interface RunSummary {
  ok: true;
  recipe: string;
  output: string;
  model: ModelStageResult;
  data: Record<string, unknown>;
  profile?: ProfileStageResult;
  train: TrainSummary;
  merge?: { reused: boolean; out: string; dtype: string; merged?: number; shards?: number; bytes?: number };
  quantize?: { reused: boolean; out: string; outputs?: Array<{ format: string; out: string; tensors: number; compression: number }> };
  report: {
    reused: boolean;
    out: string;
    perplexity?: Array<{ stage: string; loss?: number; perplexity?: number; tokens?: number; status?: string }>;
  };
}

/** sha256 over a folder's top-level files (names, sizes and, for small files, contents) */
function folderKey(dir: string, h = createHash('sha256')): string {
  for (const name of readdirSync(dir).sort()) {
    const f = join(dir, name);
    const st = statSync(f);
    if (!st.isFile()) continue;
    h.update(`${name}\0${st.size}\0`);
    // small files (configs, adapters, indexes) by content; shards by size and mtime
    h.update(st.size <= 16 * 1024 * 1024 ? readFileSync(f) : `${st.mtimeMs}`);
  }
  return h.digest('hex');
}

const readIfThere = (f: string): string => (existsSync(f) ? readFileSync(f, 'utf8') : '');

/** Run `stage` unless its stamp holds `key` and `done` still exists; then stamp it. */
async function stamped<T>(recipe: LoadedRecipe, name: 'merge' | 'quantize' | 'report', key: string, done: string, stage: () => Promise<T>): Promise<{ reused: boolean; result?: T }> {
  const stampFile = stampPath(recipe.output, name);
  if (existsSync(done) && readIfThere(stampFile) === key) return { reused: true };
  const result = await stage();
  writeFileAtomic(stampFile, key);
  return { reused: false, result };
}

/** Every stage of the recipe, each reused while its inputs are unchanged, under the run folder's lock. */
export async function runRecipe(recipe: LoadedRecipe, sink: Sink = silentSink): Promise<RunSummary> {
  return withRunLock(recipe.output, `v4tune run ${recipe.file}`, () => runLocked(recipe, sink), (l) => sink.warn(l));
}

async function runLocked(recipe: LoadedRecipe, sink: Sink): Promise<RunSummary> {
  sink.log(`run ${recipe.name}: ${recipe.file} → ${recipe.output}`);
  const ex = recipe.export;
  const exportPlan = [ex.merge ? `merge (${ex.merge_dtype})` : '', ex.quantize.length ? `quantize (${ex.quantize.join(', ')})` : ''].filter(Boolean);
  sink.log(`plan: model (${recipe.model.preset ? `preset ${recipe.model.preset}` : recipe.model.path}) → prepare${recipe.lora.experts === 'profiled' ? ' → profile-experts' : ''} → train (eval before and after)${exportPlan.map((p) => ` → ${p}`).join('')} → report`);
  const model = await ensureModel(recipe, sink);
  // export settings that can be checked now are checked before training and merging
  assertExportFits(recipe, readModelConfig(model.dir));
  const prepared = await prepareRecipe(recipe, sink);
  const data = preparedJson(prepared);
  sink.log(`prepare: ${prepared.reused ? 'reused' : 'wrote'} ${prepared.output}: ${prepared.manifest.rows} rows, ${prepared.manifest.tokens} tokens (train ${prepared.manifest.splits.train.rows} rows, eval ${prepared.manifest.splits.eval.rows} rows)`);
  const profile = recipe.lora.experts === 'profiled' ? await ensureProfile(recipe, sink) : undefined;
  const train = await trainRecipe(recipe, sink, { auto: true });
  const summary: Omit<RunSummary, 'report'> = { ok: true, recipe: recipe.file, output: recipe.output, model, data, ...(profile ? { profile } : {}), train };
  // what the quantize stage reads: the merged model when there is one, else the base
  let exportSource = folderKey(model.dir);
  if (ex.merge) {
    const p = recipeMergePaths(recipe);
    const key = createHash('sha256').update(`${exportSource}\0${folderKey(p.adapter)}\0${p.dtype}`).digest('hex');
    const m = await stamped(recipe, 'merge', key, join(p.out, 'config.json'), () => mergeRecipe(recipe, sink));
    if (m.reused) sink.log(`merge: reusing ${p.out} (adapter and base unchanged)`);
    summary.merge = { reused: m.reused, out: p.out, dtype: p.dtype, ...(m.result ? { merged: m.result.merged, shards: m.result.shards.length, bytes: m.result.bytesWritten } : {}) };
    exportSource = key;
  }
  if (ex.quantize.length > 0) {
    const outDir = runPath(recipe.output, 'quantized');
    const key = createHash('sha256').update(`${exportSource}\0${ex.quantize.join(',')}\0${ex.method}\0${ex.group_size}`).digest('hex');
    const q = await stamped(recipe, 'quantize', key, outDir, () => quantizeRecipe(recipe, sink, { out: outDir }));
    if (q.reused) sink.log(`quantize: reusing ${outDir} (its input and settings unchanged)`);
    summary.quantize = { reused: q.reused, out: outDir, ...(q.result ? { outputs: q.result.map((s) => ({ format: s.format, out: s.out, tensors: s.tensorsQuantized, compression: s.compression })) } : {}) };
  }
  // the report: redone when training or an export changed (it evaluates the merged and INT4 models)
  const reportKey = createHash('sha256')
    .update(`${exportSource}\0${readIfThere(runPath(recipe.output, 'trainSummary'))}\0${readIfThere(stampPath(recipe.output, 'quantize'))}`)
    .digest('hex');
  const reportFile = runPath(recipe.output, 'report');
  const rep = await stamped(recipe, 'report', reportKey, reportFile, () => reportRecipe(recipe, sink));
  if (rep.reused) sink.log(`report: reusing ${reportFile} (training and exports unchanged)`);
  const done: RunSummary = {
    ...summary,
    report: { reused: rep.reused, out: reportFile, ...(rep.result ? { perplexity: rep.result.perplexity.rows.map((r) => ({ stage: r.label, ...(r.status === 'ok' ? { loss: r.loss, perplexity: r.perplexity, tokens: r.tokens } : { status: r.status }) })) } : {}) },
  };
  writeFileAtomic(runPath(recipe.output, 'runSummary'), `${JSON.stringify(done, null, 2)}\n`);
  return done;
}
