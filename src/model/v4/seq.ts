// One packed row: token ids and its segments (independent sequences laid end to end).
import { InputError } from '../../errors.js';
import { nextTokenTargets as targetsOf } from '../loss.js';

export interface Seq {
  /** tokens in the row */
  T: number;
  ids: Int32Array;
  /** segment lengths, Σ = T */
  segs: Int32Array;
  /** position of each token inside its segment [T] */
  pos: Int32Array;
  /** first token of each segment */
  segStart: Int32Array;
  /** segment of each token [T] */
  segOf: Int32Array;
  /** the longest segment */
  maxLen: number;
}

/** The row's layout; no segments = one segment of T tokens. */
export function makeSeq(ids: Int32Array, segments?: ArrayLike<number> | null): Seq {
  const T = ids.length;
  if (T === 0) throw new InputError('logits: ids is empty (need at least one token)');
  const segs = Int32Array.from(segments && segments.length ? Array.from(segments) : [T]);
  let sum = 0;
  for (const s of segs) {
    if (!Number.isInteger(s) || s <= 0) throw new InputError(`segments: every length must be a positive integer (got ${s})`);
    sum += s;
  }
  if (sum !== T) throw new InputError(`segments: lengths sum to ${sum} but ids has ${T} tokens`);
  const pos = new Int32Array(T);
  const segOf = new Int32Array(T);
  const segStart = new Int32Array(segs.length);
  let t = 0;
  let maxLen = 0;
  segs.forEach((len, s) => {
    segStart[s] = t;
    maxLen = Math.max(maxLen, len);
    for (let p = 0; p < len; p++, t++) {
      pos[t] = p;
      segOf[t] = s;
    }
  });
  return { T, ids, segs, pos, segStart, segOf, maxLen };
}

/** Next-token targets of the row (src/model/loss.ts convention): −1 where t does not count. */
export function nextTokenTargets(seq: Seq, lossMask: Uint8Array | null): Int32Array {
  return targetsOf(seq.ids, seq.segOf, lossMask);
}
