// Export settings checked against the base model's shapes before any stage runs, so a recipe
// whose `export` cannot be honoured fails in a second instead of after training and merging.
// GPTQ packs INT4 codes of every quantised linear (attention projections, shared and routed
// expert w1/w2/w3) in groups of export.group_size input columns and 8 codes per int32: each
// linear's input must be a multiple of the group size, and input and output multiples of 8.
import { InputError } from '../errors.js';
import type { V4Config } from '../model/config.js';
import { expectedTensors } from '../model/layout.js';
import type { LoadedRecipe } from './load.js';

/** The linears the INT4 writers quantise (the LoRA-targetable projections). */
const QUANTISED = /^(?:layers|mtp)\.\d+\.(?:attn\.(?:wq_a|wq_b|wkv|wo_a|wo_b)|ffn\.shared_experts\.w[123]|ffn\.experts\.\d+\.w[123])\.weight$/;

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/**
 * Why `recipe.export` cannot be applied to a model of this config (the first problem, naming the
 * field, the tensor and a group size that would work), or null.
 */
export function exportProblem(recipe: LoadedRecipe, config: V4Config): string | null {
  const ex = recipe.export;
  if (!ex.quantize.includes('gptq')) return null;
  const gs = ex.group_size;
  const linears = expectedTensors(config).filter((t) => QUANTISED.test(t.name) && t.shape.length === 2);
  const g = linears.reduce((a, t) => gcd(a, t.shape[1]!), 0);
  let fit = 0;
  for (let p = 32; p <= g; p *= 2) if (g % p === 0) fit = p;
  for (const t of linears) {
    const [out, inF] = t.shape as [number, number];
    if (inF % gs !== 0) {
      return `export.group_size ${gs} does not divide the input size ${inF} of ${t.name} (GPTQ quantises in groups along the input); ${fit > 0 ? `export.group_size: ${fit} divides every quantised linear's input` : `no group size of 32 or more divides every quantised linear's input (their greatest common divisor is ${g})`}`;
    }
    if (inF % 8 !== 0 || out % 8 !== 0) return `export.quantize: gptq needs every quantised linear's shape to be a multiple of 8 (8 codes per int32), ${t.name} is [${out}, ${inF}]`;
  }
  return null;
}

/** exportProblem as an InputError naming the recipe. */
export function assertExportFits(recipe: LoadedRecipe, config: V4Config): void {
  const why = exportProblem(recipe, config);
  if (why) throw new InputError(`${recipe.file}: ${why}; nothing was run`);
}
