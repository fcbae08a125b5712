// Target patterns (design.md "Target patterns"): a dotted glob, `*` = one name component, `a|b`
// = either component, matched against the module names of `layers.N.` with the prefix removed.
// A pattern reaches the MTP block (`mtp.N.…`, matched whole) only when it starts with `mtp.`, and
// a specific layer only when it starts with `layers.`. Indexer projections and the router gate
// only steer discrete choices and are never targets. A pattern that matches nothing is an error
// listing the nearest names.
import { InputError } from '../errors.js';
import type { V4Config } from '../model/config.js';
import { expectedTensors } from '../model/layout.js';
import { editDistance } from '../nearest.js';

export interface TargetModule {
  /** official module name, e.g. `layers.3.ffn.experts.7.w1` */
  name: string;
  /** in features (LoRA A is [r, in]) */
  in: number;
  /** out features (LoRA B is [out, r]) */
  out: number;
}

const BLOCK_RE = /^(layers|mtp)\.(\d+)\.(.+)$/;

/** never LoRA targets: the indexer (discrete top-k) and the router gate */
export function isExcludedModule(rel: string): boolean {
  return rel.startsWith('attn.indexer.') || rel === 'ffn.gate';
}

/** every module of the base that a LoRA pair could adapt (2-D weights inside the blocks), in name order */
export function adaptableModules(c: V4Config): TargetModule[] {
  const out: TargetModule[] = [];
  for (const t of expectedTensors(c)) {
    if (!t.name.endsWith('.weight') || t.shape.length !== 2) continue;
    const name = t.name.slice(0, -'.weight'.length);
    const m = BLOCK_RE.exec(name);
    if (!m || isExcludedModule(m[3]!)) continue;
    out.push({ name, out: t.shape[0]!, in: t.shape[1]! });
  }
  return out;
}

/** the name a pattern is matched against: `layers.N.` removed, MTP and explicit-layer patterns whole */
function subject(pattern: string, module: string): string | null {
  const m = BLOCK_RE.exec(module);
  if (!m) return null;
  if (pattern.startsWith('mtp.')) return m[1] === 'mtp' ? module : null;
  if (pattern.startsWith('layers.')) return m[1] === 'layers' ? module : null;
  return m[1] === 'layers' ? m[3]! : null;
}

/** does a dotted glob match a module name */
export function patternMatches(pattern: string, module: string): boolean {
  const s = subject(pattern, module);
  if (s === null) return false;
  const p = pattern.split('.');
  const n = s.split('.');
  return p.length === n.length && p.every((c, i) => c === '*' || c.split('|').includes(n[i]!));
}

/** up to `k` distinct relative module names nearest to a pattern (experts shown as `*`) */
export function nearestNames(pattern: string, modules: ReadonlyArray<TargetModule>, k = 5): string[] {
  const names = new Set<string>();
  for (const m of modules) {
    const b = BLOCK_RE.exec(m.name)!;
    const rel = b[1] === 'mtp' ? m.name.replace(/^mtp\.\d+\./, 'mtp.*.') : b[3]!;
    names.add(rel.replace(/\.experts\.\d+\./, '.experts.*.'));
  }
  return [...names].map((n) => [n, editDistance(pattern, n)] as const).sort((x, y) => x[1] - y[1] || (x[0] < y[0] ? -1 : 1)).slice(0, k).map((x) => x[0]);
}

/**
 * The modules the patterns select, in name order. `where` names the setting in errors (e.g.
 * `recipe.yaml: lora.targets`).
 */
export function selectTargets(patterns: ReadonlyArray<string>, c: V4Config, where = 'lora.targets'): TargetModule[] {
  const all = adaptableModules(c);
  const chosen = new Set<string>();
  for (const p of patterns) {
    const hits = all.filter((m) => patternMatches(p, m.name));
    if (hits.length === 0) {
      const excluded = /(^|\.)attn\.indexer\.|(^|\.)ffn\.gate$/.test(p);
      throw new InputError(excluded
        ? `${where}: "${p}" names the indexer or the router gate, which are never LoRA targets (they only steer discrete choices)`
        : `${where}: "${p}" matches no module of this model; nearest: ${nearestNames(p, all).join(', ')}`);
    }
    for (const h of hits) chosen.add(h.name);
  }
  return all.filter((m) => chosen.has(m.name));
}

/** the value of the first pattern key that matches the module, else the default */
export function patternValue(map: Readonly<Record<string, number>>, module: string, dflt: number): number {
  for (const [p, v] of Object.entries(map)) if (patternMatches(p, module)) return v;
  return dflt;
}
