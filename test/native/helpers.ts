// Shared pieces of the native kernel tests: the addon (skipped only when it is not built and
// CI is not 'true'), seeded random inputs, float64 finite differences, and error measures.
import { tryLoadAddon, nativeUnavailableReason, type NativeAddon } from '../../src/backend/native/addon.js';
import { mulberry32 } from '../../src/random.js';

export const addon: NativeAddon | null = tryLoadAddon();
/** Skip the native suites only off CI with no addon; under CI=true a missing addon fails. */
export const skipNative = addon === null && process.env.CI !== 'true';
export const whyUnavailable = nativeUnavailableReason();

export function A(): NativeAddon {
  if (!addon) throw new Error(whyUnavailable);
  return addon;
}

/** mulberry32 uniform in [0, 1) */
export const rng = mulberry32;
export function randn(n: number, r: () => number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12);
    out[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r()) * scale;
  }
  return out;
}
export const f64 = (a: ArrayLike<number>): Float64Array => Float64Array.from(a as ArrayLike<number>);

/** max |a − b| / max |b| (b the reference) */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / Math.max(den, 1e-30);
}

/**
 * The gradient of f at x by central differences in float64 (h = 1e-6: error ~1e-9 relative for
 * smooth f). Used as the reference for every backward.
 */
export function fdGrad(f: (x: Float64Array) => number, x: ArrayLike<number>, h = 1e-6): Float64Array {
  const xx = f64(x);
  const g = new Float64Array(xx.length);
  for (let i = 0; i < xx.length; i++) {
    const v = xx[i];
    xx[i] = v + h;
    const fp = f(xx);
    xx[i] = v - h;
    const fm = f(xx);
    xx[i] = v;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

/** Σ out·g: the scalar whose gradient a backward with upstream gradient g computes. */
export function contract(out: ArrayLike<number>, g: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < out.length; i++) s += out[i] * g[i];
  return s;
}

export const sigmoid = (v: number): number => 1 / (1 + Math.exp(-v));
