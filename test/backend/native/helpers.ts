// Shared pieces of the native kernel tests: the addon (skipped only when it is not built and
// CI is not 'true') and seeded random inputs. The float64 references, the error measure and
// finite differences are test/ref64.ts's.
import { tryLoadAddon, nativeUnavailableReason, type NativeAddon } from '../../../src/backend/native/addon.js';
import { mulberry32 } from '../../../src/random.js';

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

/**
 * null when a and b hold the same float32 bits element for element, else where they first
 * differ (as fast as comparing bytes: toEqual walks a large typed array element by element
 * through its generic equality, seconds for a few million values).
 */
export function bitsDiffer(a: Float32Array, b: Float32Array): string | null {
  if (a.length !== b.length) return `lengths ${a.length} and ${b.length}`;
  const x = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  const y = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (x.equals(y)) return null;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i]) || x.readUInt32LE(4 * i) !== y.readUInt32LE(4 * i)) return `element ${i}: ${a[i]} against ${b[i]}`;
  return 'bytes differ';
}
