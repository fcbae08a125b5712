// The learning rate of each optimizer step: linear warmup, then constant, linear decay or cosine.

export type ScheduleKind = 'constant' | 'linear' | 'cosine';

export interface ScheduleOptions {
  /** peak learning rate */
  lr: number;
  schedule: ScheduleKind;
  warmupSteps: number;
  /** total optimizer steps */
  steps: number;
}

/**
 * lr of the update with 0-based index s (s = 0 … steps−1), W = warmupSteps:
 *   s < W:  lr · (s+1) / W                 (the first update already moves; update W−1 is at lr)
 *   s ≥ W:  p = (s − W) / (steps − W) ∈ [0, 1)
 *           constant: lr;  linear: lr · (1 − p);  cosine: lr · ½ (1 + cos πp)
 * The decay never reaches 0 inside the run, so no update is wasted (the last one gets
 * lr/(steps−W) with linear).
 */
export function learningRate(s: number, o: ScheduleOptions): number {
  const W = o.warmupSteps;
  if (s < W) return (o.lr * (s + 1)) / W;
  const p = (s - W) / Math.max(1, o.steps - W);
  switch (o.schedule) {
    case 'constant': return o.lr;
    case 'linear': return o.lr * (1 - p);
    case 'cosine': return o.lr * 0.5 * (1 + Math.cos(Math.PI * p));
  }
}
