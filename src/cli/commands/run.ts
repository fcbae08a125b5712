// `v4tune run <recipe>`: every stage of the recipe, in order: model (a preset is created on the
// fly, and reused while its settings are unchanged), prepare, profile-experts (lora.experts:
// profiled; reused while the dataset and model are unchanged), train (which evaluates before and
// after; a finished run with unchanged settings is reused, an unfinished one resumed), merge
// (export.merge), quantize (export.quantize) and the report (report.md, with perplexity before
// and after each stage), each reused while its inputs are unchanged.
import type { Command } from 'commander';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { readJsonFile, writeFileAtomic } from '../../fsutil.js';
import { PROFILE_FILE } from '../../lora/profile.js';
import { parseConfig } from '../../model/config.js';
import { initModel } from '../../model/init.js';
import { assertExportFits } from '../../recipe/preflight.js';
import { loadRecipe, type LoadedRecipe } from '../../recipe/load.js';
import { withRunLock } from '../../lock.js';
import { action } from '../action.js';
import type { CliContext, Progress } from '../context.js';
import type { QuantizeSummary } from '../../export/quantize.js';
import { mergeRecipe, recipeMergePaths } from './merge.js';
import { runQuantize } from './quantize.js';
import { reportRecipe } from './report.js';
import { prepareRecipe, prepareResult, recipeModelDir } from './prepare.js';
import { currentProfile, profileRecipe, recipeProfileIdentity } from './profile-experts.js';
import { trainRecipe } from './train.js';

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

/** What `<output>/<name>.stamp` holds ('' when absent). */
function readStamp(recipe: LoadedRecipe, name: string): string {
  const f = join(recipe.output, `${name}.stamp`);
  return existsSync(f) ? readFileSync(f, 'utf8') : '';
}

/** Run `stage` unless `<output>/<name>.stamp` holds `key` and `done` still exists; then stamp it. */
async function stamped<T>(recipe: LoadedRecipe, name: string, key: string, done: string, stage: () => Promise<T>): Promise<{ reused: boolean; result?: T }> {
  const stampFile = join(recipe.output, `${name}.stamp`);
  if (existsSync(done) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === key) return { reused: true };
  const result = await stage();
  writeFileAtomic(stampFile, key);
  return { reused: false, result };
}

/** The preset settings a created model folder was made with (beside it, in the run folder). */
function presetStamp(recipe: LoadedRecipe): string {
  const { preset, seed, format, layers, experts } = recipe.model;
  return `${JSON.stringify({ preset, seed, format, layers, experts })}\n`;
}

/** The model stage: the recipe's checkpoint folder, creating a preset when asked. */
async function modelStage(recipe: LoadedRecipe, ctx: CliContext): Promise<{ dir: string; created: boolean }> {
  const dir = recipeModelDir(recipe);
  if (recipe.model.preset === undefined) return { dir, created: false };
  const stampFile = join(recipe.output, 'model.preset.json');
  const stamp = presetStamp(recipe);
  if (existsSync(join(dir, 'config.json')) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) {
    ctx.log(`model: reusing the ${recipe.model.preset} preset in ${dir} (settings unchanged)`);
    return { dir, created: false };
  }
  let bar: Progress | undefined;
  await initModel({
    preset: recipe.model.preset,
    out: dir,
    seed: recipe.model.seed,
    format: recipe.model.format,
    layers: recipe.model.layers,
    experts: recipe.model.experts,
    onTensor: (done, total) => (bar ??= ctx.progress(`model: creating the ${recipe.model.preset} preset`, total, 'tensors')).update(done),
  });
  bar?.stop();
  writeFileAtomic(stampFile, stamp);
  return { dir, created: true };
}

/**
 * The profile stage (lora.experts: profiled): profile-experts unless `<output>/expert-profile.json`
 * describes the current dataset and model on lora.profile_rows rows.
 */
async function profileStage(recipe: LoadedRecipe, ctx: CliContext): Promise<Record<string, unknown>> {
  const { id } = recipeProfileIdentity(recipe);
  const cur = currentProfile(recipe, id, recipe.lora.profile_rows);
  const file = join(recipe.output, PROFILE_FILE);
  if ('profile' in cur) {
    ctx.log(`profile: reusing ${file} (dataset and model unchanged)`);
    return { reused: true, profile: file, rows: cur.profile.rows };
  }
  if (cur.why !== 'missing') ctx.log(`profile: ${file} is stale (${cur.why}): measuring again`);
  return { reused: false, ...(await profileRecipe(recipe, ctx)) };
}

export function register(program: Command): void {
  program.command('run')
    .description('run every stage of a recipe: model, prepare, profile-experts (lora.experts: profiled), train with eval before and after, merge (export.merge), quantize (export.quantize), report; each reused while its inputs are unchanged')
    .argument('<recipe>', 'recipe .yaml file')
    .action(action(async (ctx: CliContext, file: string) => {
      const recipe = loadRecipe(file);
      return withRunLock(recipe.output, `v4tune run ${recipe.file}`, () => runRecipe(recipe, ctx), (l) => ctx.warn(l));
    }));
}

/** Every stage of the recipe, each reused while its inputs are unchanged (the run folder is locked). */
async function runRecipe(recipe: LoadedRecipe, ctx: CliContext): Promise<Record<string, unknown>> {
  ctx.log(`run ${recipe.name}: ${recipe.file} → ${recipe.output}`);
  const ex = recipe.export;
  const exportPlan = [ex.merge ? `merge (${ex.merge_dtype})` : '', ex.quantize.length ? `quantize (${ex.quantize.join(', ')})` : ''].filter(Boolean);
  ctx.log(`plan: model (${recipe.model.preset ? `preset ${recipe.model.preset}` : recipe.model.path}) → prepare${recipe.lora.experts === 'profiled' ? ' → profile-experts' : ''} → train (eval before and after)${exportPlan.map((p) => ` → ${p}`).join('')} → report`);
  const model = await modelStage(recipe, ctx);
  // export settings that can be checked now are checked before training and merging
  const cfgPath = join(model.dir, 'config.json');
  assertExportFits(recipe, parseConfig(readJsonFile(cfgPath), cfgPath));
  const prepared = await prepareRecipe(recipe, ctx);
  const data = prepareResult(prepared);
  ctx.log(`prepare: ${prepared.reused ? 'reused' : 'wrote'} ${prepared.output}: ${prepared.manifest.rows} rows, ${prepared.manifest.tokens} tokens (train ${prepared.manifest.splits.train.rows} rows, eval ${prepared.manifest.splits.eval.rows} rows)`);
  const profile = recipe.lora.experts === 'profiled' ? await profileStage(recipe, ctx) : undefined;
  const train = await trainRecipe(recipe, ctx, { auto: true });
  const summary: Record<string, unknown> = { ok: true, recipe: recipe.file, output: recipe.output, model, data, ...(profile ? { profile } : {}), train };
  // what the quantize stage reads: the merged model when there is one, else the base
  let exportSource = folderKey(model.dir);
  if (ex.merge) {
    const p = recipeMergePaths(recipe);
    const key = createHash('sha256').update(`${exportSource}\0${folderKey(p.adapter)}\0${p.dtype}`).digest('hex');
    const m = await stamped(recipe, 'merge', key, join(p.out, 'config.json'), () => mergeRecipe(recipe, ctx));
    if (m.reused) ctx.log(`merge: reusing ${p.out} (adapter and base unchanged)`);
    summary.merge = { reused: m.reused, out: p.out, dtype: p.dtype, ...(m.result ? { merged: m.result.merged, shards: m.result.shards.length, bytes: m.result.bytesWritten } : {}) };
    exportSource = key;
  }
  if (ex.quantize.length > 0) {
    const outDir = join(recipe.output, 'quantized');
    const key = createHash('sha256').update(`${exportSource}\0${ex.quantize.join(',')}\0${ex.method}\0${ex.group_size}`).digest('hex');
    const q = await stamped(recipe, 'quantize', key, outDir, () => runQuantize(recipe, ctx, { out: outDir }));
    if (q.reused) ctx.log(`quantize: reusing ${outDir} (its input and settings unchanged)`);
    summary.quantize = { reused: q.reused, out: outDir, ...(q.result ? { outputs: q.result.map((s: QuantizeSummary) => ({ format: s.format, out: s.out, tensors: s.tensorsQuantized, compression: s.compression })) } : {}) };
  }
  // the report: redone when training or an export changed (it evaluates the merged and INT4 models)
  const trainJson = join(recipe.output, 'train.json');
  const reportKey = createHash('sha256')
    .update(`${exportSource}\0${existsSync(trainJson) ? readFileSync(trainJson, 'utf8') : ''}\0${readStamp(recipe, 'quantize')}`)
    .digest('hex');
  const reportFile = join(recipe.output, 'report.md');
  const rep = await stamped(recipe, 'report', reportKey, reportFile, () => reportRecipe(recipe, ctx));
  if (rep.reused) ctx.log(`report: reusing ${reportFile} (training and exports unchanged)`);
  summary.report = { reused: rep.reused, out: reportFile, ...(rep.result ? { perplexity: rep.result.perplexity.rows.map((r) => ({ stage: r.label, ...(r.status === 'ok' ? { loss: r.loss, perplexity: r.perplexity, tokens: r.tokens } : { status: r.status }) })) } : {}) };
  writeFileAtomic(join(recipe.output, 'run.json'), `${JSON.stringify(summary, null, 2)}\n`);
  return summary;
}
