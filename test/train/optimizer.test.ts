// The optimizer-side math of a training step, against float64 references written here:
// AdamW (decoupled decay, bias correction), the learning-rate schedules, global-norm clipping,
// token-weighted gradient accumulation, and the seeded data order.
import { describe, expect, it } from 'vitest';
import { ADAMW_DEFAULTS, adamwUpdate, zeroMoments } from '../../src/train/adamw.js';
import { accumulateGrads, clipCoefficient, globalNorm } from '../../src/train/grads.js';
import { DataOrder, epochPermutation } from '../../src/train/order.js';
import { learningRate, type ScheduleOptions } from '../../src/train/schedule.js';

/** AdamW as in Loshchilov & Hutter / torch.optim.AdamW, every value in float64. */
function adamw64(p: number[], gs: number[][], lrs: number[], wd: number): number[] {
  const { beta1, beta2, eps } = ADAMW_DEFAULTS;
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  const q = [...p];
  gs.forEach((g, s) => {
    const t = s + 1;
    for (let i = 0; i < q.length; i++) {
      q[i] -= lrs[s]! * wd * q[i]!;
      m[i] = beta1 * m[i]! + (1 - beta1) * g[i]!;
      v[i] = beta2 * v[i]! + (1 - beta2) * g[i]! * g[i]!;
      const mh = m[i]! / (1 - beta1 ** t);
      const vh = v[i]! / (1 - beta2 ** t);
      q[i] -= (lrs[s]! * mh) / (Math.sqrt(vh) + eps);
    }
  });
  return q;
}

describe('AdamW', () => {
  it('first update by hand: p·(1 − lr·wd) − lr·g/(|g| + eps)', () => {
    const p = Float32Array.of(1, -2, 0.5);
    const g = Float32Array.of(0.5, -0.25, 0);
    adamwUpdate(p, g, zeroMoments(3), 1, { lr: 0.1, weightDecay: 0.1, ...ADAMW_DEFAULTS });
    // m̂ = g, v̂ = g² after one step, so the Adam part is lr·sign(g) (0 where g = 0)
    expect(p[0]).toBeCloseTo(1 * 0.99 - 0.1, 6);
    expect(p[1]).toBeCloseTo(-2 * 0.99 + 0.1, 6);
    expect(p[2]).toBeCloseTo(0.5 * 0.99, 6);
  });

  it('five updates match the float64 reference (float32 storage: 1e-6 relative to lr)', () => {
    const n = 64;
    let seed = 12345;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
    const p0 = Array.from({ length: n }, () => rnd());
    const gs = Array.from({ length: 5 }, (_, s) => Array.from({ length: n }, () => rnd() * 10 ** (-s)));
    const lrs = [1e-3, 2e-3, 3e-3, 2e-3, 1e-3];
    const wd = 0.01;
    const ref = adamw64(p0, gs, lrs, wd);
    const p = Float32Array.from(p0);
    const mom = zeroMoments(n);
    gs.forEach((g, s) => adamwUpdate(p, Float32Array.from(g), mom, s + 1, { lr: lrs[s]!, weightDecay: wd, ...ADAMW_DEFAULTS }));
    let worst = 0;
    for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(p[i]! - ref[i]!));
    // float32 rounding of p (|p| ≤ 1: 6e-8 per step) and of the moments; 1e-6 = 1e-3 of the smallest lr
    expect(worst).toBeLessThan(1e-6);
    // and the updates moved the parameters by far more than that
    expect(Math.abs(ref[0]! - p0[0]!)).toBeGreaterThan(1e-3);
  });

  it('gScale is the same as scaling the gradient (how clipping enters)', () => {
    const g = Float32Array.of(0.3, -4, 1e-3);
    const a = Float32Array.of(1, 2, 3);
    const b = Float32Array.of(1, 2, 3);
    const ma = zeroMoments(3);
    const mb = zeroMoments(3);
    for (let t = 1; t <= 3; t++) {
      adamwUpdate(a, g, ma, t, { lr: 0.01, weightDecay: 0, ...ADAMW_DEFAULTS }, 0.25);
      adamwUpdate(b, g.map((x) => x * 0.25), mb, t, { lr: 0.01, weightDecay: 0, ...ADAMW_DEFAULTS });
    }
    expect([...a]).toEqual([...b]);
    expect([...ma.v]).toEqual([...mb.v]);
  });
});

describe('learning-rate schedules', () => {
  const base = { lr: 1, warmupSteps: 4, steps: 14 };
  const all = (schedule: ScheduleOptions['schedule']) => Array.from({ length: base.steps }, (_, s) => learningRate(s, { ...base, schedule }));

  it('linear warmup from lr/W to lr over the first W updates', () => {
    for (const k of ['constant', 'linear', 'cosine'] as const) {
      expect(all(k).slice(0, 4)).toEqual([0.25, 0.5, 0.75, 1]);
    }
  });

  it('constant stays at lr; linear and cosine decay from lr and never reach 0 inside the run', () => {
    expect(all('constant').slice(4)).toEqual(new Array(10).fill(1));
    const lin = all('linear').slice(4);
    const cos = all('cosine').slice(4);
    expect(lin[0]).toBe(1);
    expect(cos[0]).toBe(1);
    // p = (s − W)/(steps − W): at s = W + 5, p = 0.5
    expect(lin[5]).toBeCloseTo(0.5, 12);
    expect(cos[5]).toBeCloseTo(0.5, 12);
    expect(cos[2]).toBeCloseTo(0.5 * (1 + Math.cos(Math.PI * 0.2)), 12);
    expect(lin[9]).toBeCloseTo(0.1, 12);
    for (const xs of [lin, cos]) for (let i = 1; i < xs.length; i++) expect(xs[i]!).toBeLessThan(xs[i - 1]!);
    expect(Math.min(...lin, ...cos)).toBeGreaterThan(0);
  });

  it('no warmup starts at lr; warmup longer than the run only warms up', () => {
    expect(learningRate(0, { lr: 2e-4, schedule: 'cosine', warmupSteps: 0, steps: 10 })).toBe(2e-4);
    expect(learningRate(2, { lr: 1, schedule: 'linear', warmupSteps: 10, steps: 5 })).toBeCloseTo(0.3, 12);
  });
});

describe('gradient clipping and accumulation', () => {
  it('the global norm is over every tensor together, in float64', () => {
    expect(globalNorm([Float32Array.of(3, 4), Float32Array.of(12)])).toBe(13);
    const big = new Float32Array(1 << 20).fill(1e-3);
    // a float32 running sum of 2^20 squares of 1e-3 drifts far beyond 1e-9 (each add rounds at
    // ulp(sum) ≈ 6e-8 against a term of 1e-6); the float64 sum stays within 1e-9
    let f32 = Math.fround(0);
    for (let i = 0; i < big.length; i++) f32 = Math.fround(f32 + Math.fround(big[i]! * big[i]!));
    const exact = Math.sqrt(big.length) * Math.fround(1e-3);
    expect(Math.abs(Math.sqrt(f32) - exact)).toBeGreaterThan(1e-6);
    expect(Math.abs(globalNorm([big]) - exact)).toBeLessThan(1e-9);
  });

  it('clips to max_grad_norm as torch clip_grad_norm_, and leaves small gradients alone', () => {
    expect(clipCoefficient(13, 1)).toBeCloseTo(1 / (13 + 1e-6), 15);
    expect(13 * clipCoefficient(13, 1)).toBeLessThanOrEqual(1);
    expect(clipCoefficient(0.5, 1)).toBe(1);
  });

  it('accumulates w·g per key (a micro-batch weighted by its share of counted tokens)', () => {
    const acc = new Map<string, Float32Array>();
    accumulateGrads(acc, new Map([['a', Float32Array.of(1, 2)]]), 0.25);
    accumulateGrads(acc, new Map([['a', Float32Array.of(4, 4)], ['b', Float32Array.of(8)]]), 0.75);
    expect([...acc.get('a')!]).toEqual([0.25 + 3, 0.5 + 3]);
    expect([...acc.get('b')!]).toEqual([6]);
  });
});

describe('data order', () => {
  it('each epoch is a seeded permutation of every row; epochs and seeds differ', () => {
    const p0 = epochPermutation(50, 3, 0);
    expect([...p0].sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect([...epochPermutation(50, 3, 0)]).toEqual([...p0]);
    expect([...epochPermutation(50, 3, 1)]).not.toEqual([...p0]);
    expect([...epochPermutation(50, 4, 0)]).not.toEqual([...p0]);
  });

  it('draws across epoch ends, and an order restarted from its position continues identically', () => {
    const whole = new DataOrder(7, 1);
    const straight = [...whole.take(5), ...whole.take(5), ...whole.take(5)];
    expect(straight.slice(0, 7).sort()).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(straight.slice(7, 14).sort()).toEqual([0, 1, 2, 3, 4, 5, 6]);
    const first = new DataOrder(7, 1);
    const a = first.take(5);
    const pos = first.position();
    expect(pos).toEqual({ epoch: 0, cursor: 5 });
    const again = new DataOrder(7, 1, pos);
    expect([...a, ...again.take(5), ...again.take(5)]).toEqual(straight);
  });
});
