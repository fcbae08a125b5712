// The profile-experts stage: route rows sampled across the whole prepared train split (seeded by
// lora.seed, every source in proportion: lora/profile.ts sampleRowsBySource) through the base
// model and write, per block and routed expert, the load and gate mass over the tokens whose
// loss_mask is 1 to `<output>/expert-profile.json`. `lora.experts: profiled` trains adapters on
// the experts with the most gate mass only (profiledSubset).
import { withRunLock } from '../lock.js';
import {
  describeSelection, expertSubset, profileExperts, SAMPLE_BY_SOURCE, SAMPLE_METHOD, sampleRows, sampleRowsBySource, profileMismatch, readProfile, selectExperts, writeProfile,
  type BlockSelection, type ExpertProfile, type ProfileIdentity, type SelectionRule,
} from '../lora/profile.js';
import { configFingerprint, type V4Config } from '../model/config.js';
import { loadModel } from '../model/load.js';
import { runPath } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { silentSink, type Sink } from '../sink.js';
import { InputError } from '../errors.js';
import { requireDataset, requireTrainRows } from './dataset-inputs.js';
import { requireModel } from './inputs.js';

/** What the profile-experts stage returns (and `profile-experts --json` prints). */
export interface ProfileSummary {
  ok: true;
  /** the profile file */
  profile: string;
  rows: number;
  blocks: number;
  /** per block, the experts the recipe's selection rule keeps */
  selection: Record<string, number[]>;
}

/** The recipe's model config and what a profile must match (the dataset's cache_key, the config fingerprint). */
export function recipeProfileIdentity(recipe: LoadedRecipe): { config: V4Config; id: ProfileIdentity } {
  const { config } = requireModel(recipe);
  const ds = requireDataset(recipe, false);
  return { config, id: { datasetCacheKey: ds.manifest.cache_key, modelFingerprint: configFingerprint(config) } };
}

/** The recipe's selection rule: lora.experts_per_layer, else lora.profile_threshold. */
export function selectionRule(recipe: LoadedRecipe): SelectionRule {
  return { perLayer: recipe.lora.experts_per_layer, threshold: recipe.lora.profile_threshold };
}

/**
 * The profile in the recipe's output when it describes the current dataset and model (and, with
 * `rows`, was measured on that many rows asked for); else why not.
 */
export function currentProfile(recipe: LoadedRecipe, id: ProfileIdentity, rows?: number): { profile: ExpertProfile } | { why: string } {
  const p = readProfile(recipe.output);
  if (!p) return { why: 'missing' };
  const m = profileMismatch(p, id);
  if (m) return { why: m };
  if (rows !== undefined && p.rows_requested !== rows) return { why: `it was measured on ${p.rows_requested} rows, lora.profile_rows is ${rows}` };
  if ((p.sample?.method !== SAMPLE_METHOD && p.sample?.method !== SAMPLE_BY_SOURCE) || p.sample.seed !== recipe.lora.seed) return { why: `it routed ${p.sample ? `rows sampled with seed ${p.sample.seed}, lora.seed is ${recipe.lora.seed}` : 'the first rows of the split, not a sample across it'}` };
  return { profile: p };
}

/**
 * The experts `lora.experts: profiled` adapts, from `<output>/expert-profile.json`: an InputError
 * naming the file and the command to run when it is missing or describes another dataset or model.
 */
export function profiledSubset(recipe: LoadedRecipe, id: ProfileIdentity): { subset: Record<string, number[]>; selection: Record<string, BlockSelection>; profile: ExpertProfile } {
  const file = runPath(recipe.output, 'profile');
  const cur = currentProfile(recipe, id);
  if ('why' in cur) {
    throw new InputError(cur.why === 'missing'
      ? `${recipe.file}: lora.experts: profiled needs ${file} (run \`v4tune profile-experts ${recipe.file}\` first)`
      : `${file} is stale: ${cur.why} (run \`v4tune profile-experts ${recipe.file}\` again)`);
  }
  const selection = selectExperts(cur.profile, selectionRule(recipe));
  return { subset: expertSubset(selection), selection, profile: cur.profile };
}

function pct(x: number): string {
  return `${Math.round(x * 100)}%`;
}

export interface ProfileRecipeOptions {
  /** route this many train rows (default: lora.profile_rows) */
  rows?: number;
}

/** The profile-experts stage: writes the profile under the run folder's lock. */
export async function profileRecipe(recipe: LoadedRecipe, sink: Sink = silentSink, opts: ProfileRecipeOptions = {}): Promise<ProfileSummary> {
  return withRunLock(recipe.output, `v4tune profile-experts ${recipe.file}`, () => profileLocked(recipe, sink, opts), (l) => sink.warn(l));
}

async function profileLocked(recipe: LoadedRecipe, sink: Sink, opts: ProfileRecipeOptions): Promise<ProfileSummary> {
  const { config, id } = recipeProfileIdentity(recipe);
  const { dir: modelDir } = requireModel(recipe);
  const ds = requireDataset(recipe);
  const dataDir = ds.dir;
  const available = requireTrainRows(ds);
  const asked = opts.rows ?? recipe.lora.profile_rows;
  const total = Math.min(asked, available);
  sink.log(`profile-experts ${recipe.name}: routing ${total} train rows${total < asked ? ` (of ${asked} asked; the split has ${available})` : ` sampled across all ${available} (seed ${recipe.lora.seed})`} of ${dataDir} through ${modelDir}`);
  const model = await loadModel(modelDir, { backend: recipe.train.backend, note: (l) => sink.log(l) });
  let profile: ExpertProfile;
  try {
    const bar = sink.progress('profile', total, 'rows');
    // each row's source: the one holding most of its tokens (datasets from before provenance have none)
    const rowSource: number[] = [];
    for (const row of ds.rows('train')) {
      if (!row.source_ids) break;
      const tokens = new Map<number, number>();
      row.segments.forEach((len, s) => {
        const src = row.source_ids![s];
        if (src !== undefined) tokens.set(src, (tokens.get(src) ?? 0) + len); // (padding has no source)
      });
      rowSource.push([...tokens.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0]?.[0] ?? -1);
    }
    const bySource = rowSource.length === available;
    const picks = new Set(bySource ? sampleRowsBySource(rowSource, total, recipe.lora.seed) : sampleRows(available, total, recipe.lora.seed));
    const sampled = function* () {
      let i = 0;
      for (const row of ds.rows('train')) if (picks.has(i++)) yield row;
    };
    profile = await profileExperts(model, sampled(), asked, id, (done) => bar.update(done), { seed: recipe.lora.seed, splitRows: available, bySource });
    bar.stop();
  } finally {
    model.dispose();
  }
  const file = writeProfile(recipe.output, profile);
  const rule = selectionRule(recipe);
  const selection = selectExperts(profile, rule);
  for (const [name, b] of Object.entries(profile.blocks)) {
    const total = b.gate_mass.reduce((s, v) => s + v, 0);
    const top = b.gate_mass.map((m, e) => [e, m] as const).sort((x, y) => y[1] - x[1] || x[0] - y[0]).slice(0, 4);
    const hash = name.startsWith('layers.') && Number(name.slice(7)) < config.num_hash_layers ? ' (hash)' : '';
    const s = selection[name]!;
    sink.log(`  ${name}${hash}: ${b.tokens} tokens; top ${top.map(([e, m]) => `${e} ${pct(total > 0 ? m / total : 0)}`).join(', ')}; keep ${s.experts.length} [${s.experts.join(' ')}] = ${pct(s.share)} of gate mass`);
  }
  const how = rule.perLayer !== undefined ? `lora.experts_per_layer ${rule.perLayer}` : `lora.profile_threshold ${rule.threshold}`;
  sink.log(`profile: ${profile.rows} rows → ${file}; with ${how}: ${describeSelection(selection, config.n_routed_experts)}`);
  return { ok: true, profile: file, rows: profile.rows, blocks: Object.keys(profile.blocks).length, selection: expertSubset(selection) };
}

/** What `run` records of the profile stage. */
export type ProfileStageResult = { reused: true; profile: string; rows: number } | ({ reused: false } & ProfileSummary);

/**
 * The profile stage of `run` (lora.experts: profiled): profile-experts unless
 * `<output>/expert-profile.json` describes the current dataset and model on lora.profile_rows rows.
 */
export async function ensureProfile(recipe: LoadedRecipe, sink: Sink = silentSink): Promise<ProfileStageResult> {
  const { id } = recipeProfileIdentity(recipe);
  const cur = currentProfile(recipe, id, recipe.lora.profile_rows);
  const file = runPath(recipe.output, 'profile');
  if ('profile' in cur) {
    sink.log(`profile: reusing ${file} (dataset and model unchanged)`);
    return { reused: true, profile: file, rows: cur.profile.rows };
  }
  if (cur.why !== 'missing') sink.log(`profile: ${file} is stale (${cur.why}): measuring again`);
  return { reused: false, ...(await profileRecipe(recipe, sink)) };
}
