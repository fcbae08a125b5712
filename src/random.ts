// The one seeded generator of v4tune (data split, sampling, benchmarks and tests): mulberry32,
// 32 bits of state, uniform in [0, 1). Small and fast; not for anything cryptographic.

/** A seeded uniform generator in [0, 1): the same seed gives the same sequence on every machine. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
