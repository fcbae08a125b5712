// Expert profiles (ESFT-style selection of routed experts, design.md "LoRA"): the base model
// routes rows of the domain corpus; per block and expert we count the load (how often the expert
// is chosen) and the gate mass (Σ of its routing weights) over the tokens whose loss_mask is 1.
// `lora.experts: profiled` then adapts, per block, the experts with the most gate mass.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { DatasetRow } from '../data/dataset.js';
import { InputError } from '../errors.js';
import { readJsonFile, writeFileAtomic } from '../fsutil.js';
import type { RoutingObserver, V4Model } from '../model/v4/model.js';
import { mulberry32 } from '../random.js';
import { RUN_FILES } from '../recipe/layout.js';

export const PROFILE_FILE = RUN_FILES.profile;
export const PROFILE_FORMAT = 'v4tune-expert-profile/1';
export const SAMPLE_METHOD = 'seeded systematic';
export const SAMPLE_BY_SOURCE = 'seeded systematic per source';

/**
 * k row indices drawn source by source: each source (a row's source is the one holding most of
 * its tokens) gets its share of k by its rows (largest remainders; every source at least one
 * row while k allows), spread over its rows by sampleRows. `rowSource[i]`: the source of row i.
 */
export function sampleRowsBySource(rowSource: ArrayLike<number>, k: number, seed: number): number[] {
  const n = rowSource.length;
  if (k >= n) return Array.from({ length: n }, (_, i) => i);
  const bySource = new Map<number, number[]>();
  for (let i = 0; i < n; i++) (bySource.get(rowSource[i]!) ?? bySource.set(rowSource[i]!, []).get(rowSource[i]!)!).push(i);
  const groups = [...bySource.entries()].sort((a, b) => a[0] - b[0]);
  const quota = groups.map(([, rows]) => (k * rows.length) / n);
  const take = quota.map((q) => Math.floor(q));
  if (k >= groups.length) for (let g = 0; g < groups.length; g++) take[g] = Math.max(1, take[g]!);
  let left = k - take.reduce((a, b) => a + b, 0);
  const order = groups.map((_, g) => g).sort((a, b) => (quota[b]! - Math.floor(quota[b]!)) - (quota[a]! - Math.floor(quota[a]!)) || a - b);
  for (let i = 0; left > 0; i = (i + 1) % order.length) {
    const g = order[i]!;
    if (take[g]! < groups[g]![1].length) { take[g]!++; left--; }
  }
  while (left < 0) {
    const g = take.indexOf(Math.max(...take));
    take[g]!--;
    left++;
  }
  const out: number[] = [];
  groups.forEach(([source, rows], g) => {
    for (const j of sampleRows(rows.length, take[g]!, seed + source)) out.push(rows[j]!);
  });
  return out.sort((a, b) => a - b);
}

/**
 * k row indices of a split of n rows, spread over all of it: a seeded offset u in [0, n/k), then
 * every n/k rows (u, u + n/k, …). Rows are packed source after source, so every source gets
 * its share of the sample to within one row (a random draw of k could miss a small source).
 */
export function sampleRows(n: number, k: number, seed: number): number[] {
  if (k >= n) return Array.from({ length: n }, (_, i) => i);
  const stride = n / k;
  const u = mulberry32(seed)() * stride;
  return Array.from({ length: k }, (_, i) => Math.min(n - 1, Math.floor(u + i * stride)));
}

/** One block's routing over the counted tokens. */
export interface BlockProfile {
  /** counted tokens routed through the block */
  tokens: number;
  /** [E] times each expert was chosen (Σ over experts = tokens · k) */
  load: number[];
  /** [E] Σ of each expert's routing weights */
  gate_mass: number[];
}

/** `<output>/expert-profile.json`. */
export interface ExpertProfile {
  format: typeof PROFILE_FORMAT;
  /** manifest cache_key of the prepared dataset that was routed */
  dataset_cache_key: string;
  /** configFingerprint of the base model */
  model_fingerprint: string;
  /** rows asked for (`--rows` / lora.profile_rows) and rows routed (fewer when the split is shorter) */
  rows_requested: number;
  rows: number;
  /** how the routed rows were drawn from the train split (absent: its first rows, before v4tune sampled) */
  sample?: { method: typeof SAMPLE_METHOD | typeof SAMPLE_BY_SOURCE; seed: number; split_rows: number };
  n_routed_experts: number;
  num_experts_per_tok: number;
  /** `layers.N` in order, then `mtp.0` when the model has an MTP block */
  blocks: Record<string, BlockProfile>;
}

/** Counts routing into per-block profiles; `observe(mask)` is the model's observer for one row. */
export class RoutingCounter {
  readonly blocks = new Map<string, BlockProfile>();

  constructor(readonly experts: number) {}

  /**
   * The observer for one row: rows whose input position has mask 0 (prompt, padding) are skipped.
   * Every block is listed, even when no token of it counted.
   */
  observe(mask: Uint8Array): RoutingObserver {
    return (block, idx, weights, N, k, positions) => {
      let b = this.blocks.get(block);
      if (!b) {
        b = { tokens: 0, load: new Array<number>(this.experts).fill(0), gate_mass: new Array<number>(this.experts).fill(0) };
        this.blocks.set(block, b);
      }
      for (let n = 0; n < N; n++) {
        if (mask[positions ? positions[n]! : n] !== 1) continue;
        b.tokens++;
        for (let j = n * k; j < (n + 1) * k; j++) {
          b.load[idx[j]!]!++;
          b.gate_mass[idx[j]!]! += weights[j]!;
        }
      }
    };
  }
}

export interface ProfileIdentity {
  datasetCacheKey: string;
  modelFingerprint: string;
}

/**
 * Route `rows` through the base model (no adapter) and count; `onRow(done)` after each row.
 * `sample`: how the rows were drawn (sampleRows), recorded in the profile.
 */
export async function profileExperts(
  model: V4Model, rows: Iterable<DatasetRow>, maxRows: number, id: ProfileIdentity, onRow?: (done: number) => void,
  sample?: { seed: number; splitRows: number; bySource?: boolean },
): Promise<ExpertProfile> {
  const c = model.config;
  const counter = new RoutingCounter(c.n_routed_experts);
  let done = 0;
  for (const row of rows) {
    if (done >= maxRows) break;
    await model.route(row.input_ids, { segments: row.segments, onRouting: counter.observe(row.loss_mask) });
    onRow?.(++done);
  }
  const blocks: Record<string, BlockProfile> = {};
  const order = (b: string): number => (b.startsWith('mtp.') ? 1e9 + Number(b.slice(4)) : Number(b.slice(7)));
  for (const name of [...counter.blocks.keys()].sort((a, b) => order(a) - order(b))) blocks[name] = counter.blocks.get(name)!;
  return {
    format: PROFILE_FORMAT,
    dataset_cache_key: id.datasetCacheKey,
    model_fingerprint: id.modelFingerprint,
    rows_requested: maxRows,
    rows: done,
    ...(sample ? { sample: { method: sample.bySource ? SAMPLE_BY_SOURCE : SAMPLE_METHOD, seed: sample.seed, split_rows: sample.splitRows } } : {}),
    n_routed_experts: c.n_routed_experts,
    num_experts_per_tok: c.num_experts_per_tok,
    blocks,
  };
}

export function writeProfile(output: string, p: ExpertProfile): string {
  const file = join(output, PROFILE_FILE);
  writeFileAtomic(file, `${JSON.stringify(p, null, 2)}\n`);
  return file;
}

/** The profile in `output`, or null when there is none; a malformed one is an InputError naming the file. */
export function readProfile(output: string): ExpertProfile | null {
  const file = join(output, PROFILE_FILE);
  if (!existsSync(file)) return null;
  const p = readJsonFile(file) as ExpertProfile;
  if (p?.format !== PROFILE_FORMAT) throw new InputError(`${file}: not an expert profile (format ${JSON.stringify(p?.format)}, expected ${PROFILE_FORMAT})`);
  const E = p.n_routed_experts;
  for (const [name, b] of Object.entries(p.blocks ?? {})) {
    if (!/^(layers|mtp)\.\d+$/.test(name) || !Array.isArray(b.load) || !Array.isArray(b.gate_mass) || b.load.length !== E || b.gate_mass.length !== E) {
      throw new InputError(`${file}: blocks["${name}"] must hold load and gate_mass of ${E} experts`);
    }
  }
  return p;
}

/** Why a profile does not describe this dataset and model (null: it does). */
export function profileMismatch(p: ExpertProfile, id: ProfileIdentity): string | null {
  if (p.dataset_cache_key !== id.datasetCacheKey) return `it was measured on another prepared dataset (cache_key ${p.dataset_cache_key.slice(0, 12)}…, now ${id.datasetCacheKey.slice(0, 12)}…)`;
  if (p.model_fingerprint !== id.modelFingerprint) return `it was measured on a model with config fingerprint ${p.model_fingerprint}, this one has ${id.modelFingerprint}`;
  return null;
}

export interface SelectionRule {
  /** keep this many experts per block */
  perLayer?: number;
  /** else the fewest experts whose share of the block's gate mass reaches this (0, 1] */
  threshold: number;
}

/** One block's chosen experts. */
export interface BlockSelection {
  /** expert ids, ascending */
  experts: number[];
  /** their share of the block's gate mass (0 when the block saw no counted token) */
  share: number;
}

/**
 * ESFT's gate criterion for one block: experts by gate mass, most first (ties: lower id); the
 * first `perLayer` of them, or the shortest prefix whose mass reaches `threshold` of the total.
 * A block with no gate mass keeps the first `perLayer` ids (or expert 0 alone).
 */
export function selectBlock(gateMass: ReadonlyArray<number>, rule: SelectionRule): BlockSelection {
  const order = gateMass.map((_, e) => e).sort((a, b) => gateMass[b]! - gateMass[a]! || a - b);
  const total = gateMass.reduce((s, v) => s + v, 0);
  let n: number;
  if (rule.perLayer !== undefined) {
    n = Math.min(rule.perLayer, order.length);
  } else {
    // a share that reaches the threshold up to rounding counts as reaching it
    const need = rule.threshold * total * (1 - 1e-9);
    n = 0;
    let cum = 0;
    while (n < order.length && (n === 0 || cum < need)) cum += gateMass[order[n++]!]!;
  }
  const experts = order.slice(0, n).sort((a, b) => a - b);
  const mass = experts.reduce((s, e) => s + gateMass[e]!, 0);
  return { experts, share: total > 0 ? mass / total : 0 };
}

/** The selection for every block of a profile. */
export function selectExperts(p: ExpertProfile, rule: SelectionRule): Record<string, BlockSelection> {
  const out: Record<string, BlockSelection> = {};
  for (const [name, b] of Object.entries(p.blocks)) out[name] = selectBlock(b.gate_mass, rule);
  return out;
}

/** createAdapter's `expertSubset` from a selection. */
export function expertSubset(sel: Readonly<Record<string, BlockSelection>>): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const [name, s] of Object.entries(sel)) out[name] = s.experts;
  return out;
}

/** "3.0/8 experts per layer on average, 61% of gate mass" */
export function describeSelection(sel: Readonly<Record<string, BlockSelection>>, experts: number): string {
  const v = Object.values(sel);
  if (v.length === 0) return 'no block was profiled';
  const avg = v.reduce((s, b) => s + b.experts.length, 0) / v.length;
  const share = v.reduce((s, b) => s + b.share, 0) / v.length;
  return `${Number.isInteger(avg) ? avg : avg.toFixed(1)}/${experts} experts per layer on average, ${Math.round(share * 100)}% of gate mass`;
}
