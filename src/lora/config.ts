// What the user sets for a LoRA adapter (the recipe's `lora` section, and createAdapter's options).
// Each adapted module W (out x in) gets W + scaling · B A with A (r x in), B (out x r).
import { InputError } from '../errors.js';
import { DEFAULT_TARGETS } from '../model/layout.js';

export type LoraInit = 'kaiming' | 'gaussian';

export interface LoraOptions {
  /** rank */
  r: number;
  /** lora_alpha; scaling = alpha / r (alpha / sqrt(r) with rsLoRA) */
  alpha: number;
  /** module patterns (patterns.ts): dotted globs over module names without `layers.N.`; default DEFAULT_TARGETS */
  targets?: ReadonlyArray<string>;
  /** per-pattern rank overrides (pattern -> r); the first pattern that matches a module wins */
  rankPattern?: Readonly<Record<string, number>>;
  /** per-pattern alpha overrides (pattern -> alpha); the first pattern that matches a module wins */
  alphaPattern?: Readonly<Record<string, number>>;
  /** rank-stabilised scaling alpha / sqrt(r) */
  rsLoRA?: boolean;
  /** dropout probability on the LoRA input (PEFT's lora_dropout): applied by `lossAndGrads` only, never at inference */
  dropout?: number;
  /** seed of the initialisation */
  seed?: number;
  /**
   * routed experts that get adapters, by block (`layers.3` / `mtp.0` -> expert ids), e.g. the
   * experts profile-experts measured as most used; blocks not listed keep every expert
   */
  expertSubset?: Readonly<Record<string, ReadonlyArray<number>>>;
  /** kaiming (default, as PEFT: A ~ kaiming_uniform(a = sqrt 5) = U(±1/sqrt(in)), B = 0) or gaussian (A ~ normal with std 1/r, B = 0) */
  init?: LoraInit;
}

/** LoraOptions with every default filled in. */
export type ResolvedLoraOptions = Required<LoraOptions>;

/** scaling of the update: alpha / r, or alpha / sqrt(r) with rsLoRA */
export function loraScaling(alpha: number, r: number, rsLoRA: boolean): number {
  return rsLoRA ? alpha / Math.sqrt(r) : alpha / r;
}

/** Check the options and fill in defaults (InputError naming `where` and the field). */
export function resolveLoraOptions(o: LoraOptions, where = 'lora'): ResolvedLoraOptions {
  const bad = (field: string, msg: string): never => {
    throw new InputError(`${where}: ${field} ${msg}`);
  };
  const posInt = (v: unknown, field: string): number => (Number.isInteger(v) && (v as number) >= 1 ? (v as number) : bad(field, `must be a positive integer (got ${JSON.stringify(v)})`));
  const posNum = (v: unknown, field: string): number => (typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : bad(field, `must be a positive number (got ${JSON.stringify(v)})`));
  const r = posInt(o.r, 'r');
  const alpha = posNum(o.alpha, 'alpha');
  const targets = [...(o.targets ?? DEFAULT_TARGETS)];
  if (targets.length === 0) bad('targets', 'must list at least one module pattern');
  for (const t of targets) if (typeof t !== 'string' || t.trim() === '') bad('targets', `has an empty pattern`);
  const rankPattern: Record<string, number> = {};
  for (const [k, v] of Object.entries(o.rankPattern ?? {})) rankPattern[k] = posInt(v, `rank_pattern["${k}"]`);
  const alphaPattern: Record<string, number> = {};
  for (const [k, v] of Object.entries(o.alphaPattern ?? {})) alphaPattern[k] = posNum(v, `alpha_pattern["${k}"]`);
  const dropout = o.dropout ?? 0;
  if (!(typeof dropout === 'number' && dropout >= 0 && dropout < 1)) bad('dropout', `must be in [0, 1) (got ${JSON.stringify(dropout)})`);
  const seed = o.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) bad('seed', `must be an integer in 0..4294967295 (got ${JSON.stringify(seed)})`);
  const init = o.init ?? 'kaiming';
  if (init !== 'kaiming' && init !== 'gaussian') bad('init', `must be kaiming or gaussian (got ${JSON.stringify(init)})`);
  const expertSubset: Record<string, number[]> = {};
  for (const [k, v] of Object.entries(o.expertSubset ?? {})) {
    if (!/^(layers|mtp)\.\d+$/.test(k)) bad('expert subset', `key "${k}" must be a block like layers.3 or mtp.0`);
    if (!Array.isArray(v) || v.some((e) => !Number.isInteger(e) || e < 0)) bad(`expert subset["${k}"]`, 'must be a list of expert ids');
    expertSubset[k] = [...v];
  }
  return { r, alpha, targets, rankPattern, alphaPattern, rsLoRA: o.rsLoRA ?? false, dropout, seed, init, expertSubset };
}
