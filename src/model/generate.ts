// Generation: the next token from logits (greedy, or sampled with temperature, top-k and top-p,
// seeded), and a decode loop over the model with an optional adapter, streaming each token.
import type { ModelAdapter, V4Model } from './v4/model.js';
import { mulberry32 } from '../random.js';

/** A seeded uniform generator in [0, 1) (the sampler's randomness). */
export const seededRandom = mulberry32;

export interface SamplingOptions {
  /** 0 = greedy (argmax, ties to the lower id) */
  temperature: number;
  /** nucleus mass in (0, 1] */
  topP: number;
  /** keep only the k most likely tokens (0 = no limit) */
  topK?: number;
}

/**
 * The next token from logits [V]: argmax (ties to the lower id) when temperature = 0; else a
 * draw from softmax(logits / temperature) restricted to the k most likely tokens (topK > 0) and
 * then to the smallest set of most likely tokens whose probability reaches topP.
 */
export function sampleToken(logits: Float32Array, temperature: number, topP: number, rand: () => number, topK = 0): number {
  if (temperature <= 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  let mx = -Infinity;
  for (const v of logits) mx = Math.max(mx, v);
  const p = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp((logits[i]! - mx) / temperature);
  let order = Array.from(p.keys()).sort((a, b) => p[b]! - p[a]! || a - b);
  if (topK > 0 && topK < order.length) {
    order = order.slice(0, topK);
    sum = order.reduce((s, i) => s + p[i]!, 0);
  }
  const keep: number[] = [];
  let mass = 0;
  for (const i of order) {
    keep.push(i);
    mass += p[i]! / sum;
    if (mass >= topP) break;
  }
  let u = rand() * keep.reduce((s, i) => s + p[i]!, 0);
  for (const i of keep) {
    u -= p[i]!;
    if (u <= 0) return i;
  }
  return keep[keep.length - 1]!;
}

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  seed: number;
  adapter?: ModelAdapter | null;
  /** stop after this id (included in the output) */
  stopId: number;
  /** told every new token as it is chosen */
  onToken?: (id: number) => void;
}

/** New tokens after `prompt`, until stopId or maxNewTokens (one full forward per token). */
export async function generateTokens(model: V4Model, prompt: readonly number[], o: GenerateOptions): Promise<number[]> {
  const ids = prompt.slice();
  const rand = seededRandom(o.seed);
  const out: number[] = [];
  for (let i = 0; i < o.maxNewTokens; i++) {
    const next = sampleToken(await model.lastLogits(Int32Array.from(ids), { adapter: o.adapter ?? null }), o.temperature, o.topP, rand, o.topK ?? 0);
    ids.push(next);
    out.push(next);
    o.onToken?.(next);
    if (next === o.stopId) break;
  }
  return out;
}

/**
 * Streams text as tokens come: each call with the ids so far returns the text not yet shown
 * (held back while the decoded text ends inside a multi-byte character).
 */
export function textStreamer(decode: (ids: readonly number[]) => string): (ids: readonly number[]) => string {
  let shown = 0;
  return (ids) => {
    const text = decode(ids);
    if (text.endsWith('\ufffd')) return '';
    const add = text.slice(shown);
    shown = text.length;
    return add;
  };
}
