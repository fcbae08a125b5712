// AdamW (Loshchilov & Hutter, decoupled weight decay) on the LoRA factors, as torch.optim.AdamW
// computes it. Moments are kept in float32 (the checkpoint stores them bit for bit); each update
// is computed in float64 and rounded once into the float32 parameter.

/** AdamW hyper-parameters of one update (lr comes from the schedule, step by step). */
export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export const ADAMW_DEFAULTS = { beta1: 0.9, beta2: 0.999, eps: 1e-8 } as const;

/** The optimizer state of one parameter tensor: first and second moments (exp_avg, exp_avg_sq). */
export interface Moments {
  m: Float32Array;
  v: Float32Array;
}

/**
 * One AdamW update of p in place, t = 1-based update count (bias correction). p, g, m, v [n].
 *   p ← p − lr·wd·p                                  (decoupled weight decay)
 *   m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
 *   p ← p − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + eps)
 * `gScale` multiplies g on the fly (the gradient-clipping coefficient).
 */
export function adamwUpdate(p: Float32Array, g: Float32Array, mom: Moments, t: number, h: AdamWHyper, gScale = 1): void {
  const { m, v } = mom;
  const bc1 = 1 - Math.pow(h.beta1, t);
  const bc2 = 1 - Math.pow(h.beta2, t);
  const decay = 1 - h.lr * h.weightDecay;
  for (let i = 0; i < p.length; i++) {
    const gi = g[i]! * gScale;
    const mi = h.beta1 * m[i]! + (1 - h.beta1) * gi;
    const vi = h.beta2 * v[i]! + (1 - h.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    // the update reads the moments as stored (float32), as a resumed run would
    const mhat = m[i]! / bc1;
    const vhat = v[i]! / bc2;
    p[i] = p[i]! * decay - (h.lr * mhat) / (Math.sqrt(vhat) + h.eps);
  }
}

/** Zero moments shaped like a parameter of n values. */
export function zeroMoments(n: number): Moments {
  return { m: new Float32Array(n), v: new Float32Array(n) };
}
