// The seeded generators: mulberry32 pinned to its earlier draws; sfc32 against a word-by-word BigInt reference (the published algorithm,
// arithmetic mod 2^32 written out), and tensorRng's streams pinned to the values the closure-state
// version drew (the words behind every preset checkpoint written so far: a change of the state's
// representation must not change a single draw).
import { describe, expect, it } from 'vitest';
import { mulberry32, sfc32, tensorRng } from '../src/random.js';

const M = (1n << 32n) - 1n;

function sfc32Ref(a0: number, b0: number, c0: number, d0: number): () => number {
  let a = BigInt(a0 >>> 0), b = BigInt(b0 >>> 0), c = BigInt(c0 >>> 0), d = BigInt(d0 >>> 0);
  return () => {
    const t = (a + b + d) & M;
    d = (d + 1n) & M;
    a = b ^ (b >> 9n);
    b = (c + (c << 3n)) & M;
    c = ((((c << 21n) & M) | (c >> 11n)) + t) & M;
    return Number(t) / 4294967296;
  };
}

describe('seeded generators', () => {
  it('sfc32 draws the reference sequence, over words past 2^31 and the counter wrapping', () => {
    const seeds = [mulberry32(7), mulberry32(8)];
    for (let k = 0; k < 8; k++) {
      const w = [0, 1, 2, 3].map(() => Math.floor(seeds[k % 2]!() * 4294967296));
      if (k === 0) w[3] = 0xfffffff0; // d wraps within the draws below
      const got = sfc32(w[0]!, w[1]!, w[2]!, w[3]!);
      const want = sfc32Ref(w[0]!, w[1]!, w[2]!, w[3]!);
      for (let i = 0; i < 5000; i++) {
        const g = got();
        const r = want();
        if (g !== r) expect.fail(`state ${w.join(', ')}: draw ${i} is ${g}, the reference ${r}`);
      }
    }
  });

  it('mulberry32 draws the sequence it drew with its word in a closure (pinned: first three draws and the 100000th)', () => {
    const pinned: [number, number[]][] = [
      [0, [1144304738, 1416247, 958946056, 451400699]],
      [7, [50271532, 266108690, 4195786334, 2876007971]],
      [4294967295, [3850105811, 813802916, 3073704848, 3542019437]],
    ];
    for (const [seed, want] of pinned) {
      const r = mulberry32(seed);
      const got: number[] = [];
      for (let i = 0; i < 100000; i++) {
        const x = r();
        if (!(x >= 0 && x < 1)) expect.fail(`${seed}: draw ${i} is ${x}, outside [0, 1)`);
        if (i < 3 || i === 99999) got.push(x * 4294967296);
      }
      expect(got, `${seed}`).toEqual(want);
    }
  });

  it("tensorRng's streams are the ones preset checkpoints were drawn from (first three draws and the 100000th)", () => {
    const pinned: [number, string, number[]][] = [
      [0, 'embed.weight', [3287508061, 762754349, 15629462, 4157332877]],
      [3, 'layers.0.attn.wq_b.weight', [1606408046, 2710397503, 464813652, 3425066054]],
      [4294967295, 'x', [1190331051, 3641893723, 2541655787, 649314036]],
    ];
    for (const [seed, name, want] of pinned) {
      const r = tensorRng(seed, name);
      const got: number[] = [];
      for (let i = 0; i < 100000; i++) {
        const x = r();
        if (!(x >= 0 && x < 1)) expect.fail(`${seed} ${name}: draw ${i} is ${x}, outside [0, 1)`);
        if (i < 3 || i === 99999) got.push(x * 4294967296);
      }
      expect(got, `${seed} ${name}`).toEqual(want);
    }
  });
});
