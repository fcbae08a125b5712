// Which linears the `gptq` output quantises: those of linears.ts except wo_a — GPTQModel's
// deepseek_v4 definition leaves o_a_proj unquantised (`o_a_proj:!`). Names: model/gptq-names.ts.
import { linearKind } from './linears.js';

export { gptqModelName } from '../model/gptq-names.js';

/** whether the gptq output quantises an official tensor */
export function gptqQuantises(official: string): boolean {
  return linearKind(official) !== null && !official.endsWith('.attn.wo_a.weight');
}
