// Gradient bookkeeping of one optimizer step: accumulation of micro-batch gradients weighted by
// their share of counted tokens, the global L2 norm, and the clipping coefficient.

/**
 * acc += w · g for every tensor of g (acc gets a zero tensor for a key it lacks).
 * A micro-batch's gradient is of its own mean loss; weighting it by w = count_mb / count_step makes
 * the sum the gradient of the mean over every counted token of the step.
 */
export function accumulateGrads(acc: Map<string, Float32Array>, g: ReadonlyMap<string, Float32Array>, w: number): void {
  for (const [k, gi] of g) {
    let a = acc.get(k);
    if (!a) {
      a = new Float32Array(gi.length);
      acc.set(k, a);
    }
    for (let i = 0; i < gi.length; i++) a[i] += w * gi[i]!;
  }
}

/** ‖g‖₂ over every tensor together, summed in float64. */
export function globalNorm(grads: Iterable<Float32Array>): number {
  let s = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) s += g[i]! * g[i]!;
  return Math.sqrt(s);
}

/**
 * The factor gradients are multiplied by so their global norm is at most maxNorm, as
 * torch.nn.utils.clip_grad_norm_: min(1, maxNorm / (norm + 1e-6)).
 */
export function clipCoefficient(norm: number, maxNorm: number): number {
  return Math.min(1, maxNorm / (norm + 1e-6));
}
