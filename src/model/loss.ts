// The loss convention shared across v4tune (design.md "Interfaces every part shares"):
// position t predicting token t+1 counts iff loss_mask[t+1] = 1 and t, t+1 lie in the same
// segment; the loss is the mean over counted positions.
import { InputError } from '../errors.js';

/**
 * Next-token targets of a row: targets[t] = ids[t+1] where position t counts, else −1.
 * segOf [T]: the segment of each token; lossMask [T] or null (every position counts).
 */
export function nextTokenTargets(ids: Int32Array, segOf: Int32Array, lossMask: Uint8Array | null): Int32Array {
  const T = ids.length;
  if (lossMask && lossMask.length !== T) throw new InputError(`lossMask: has ${lossMask.length} entries but ids has ${T} tokens`);
  const tg = new Int32Array(T).fill(-1);
  for (let t = 0; t + 1 < T; t++) {
    if (segOf[t] !== segOf[t + 1]) continue;
    if (lossMask && lossMask[t + 1] !== 1) continue;
    tg[t] = ids[t + 1];
  }
  return tg;
}

/** Mean of a loss sum over its counted positions (NaN when none counts). */
export function meanLoss(lossSum: number, count: number): number {
  return count > 0 ? lossSum / count : NaN;
}
