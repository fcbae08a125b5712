// Kernels run off the JS thread: the event loop keeps turning while one runs, a cancelled
// kernel rejects cleanly, and argument errors surface as TypeErrors before anything runs.
import { describe, expect, it } from 'vitest';
import { rawWeight } from '../../../src/backend/native/addon.js';
import { A, addon, randn, rng, skipNative, whyUnavailable } from './helpers.js';

describe.skipIf(skipNative)('native kernels are asynchronous', () => {
  it('the addon is built (required under CI)', () => {
    expect(addon, whyUnavailable).not.toBeNull();
  });

  const r = rng(50);
  const [M, N, K] = [512, 1024, 2048];
  const a = randn(M * K, r);
  const w = rawWeight('f32', randn(N * K, r), null, N, K);

  it('a GEMM returns a Promise and the event loop runs timers while it computes', async () => {
    const c = new Float32Array(M * N);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const t0 = performance.now();
    const p = A().gemm(M, N, K, 1, a, K, 1, w, true, 0, c, N);
    expect(p).toBeInstanceOf(Promise);
    await p;
    clearInterval(timer);
    const ms = performance.now() - t0;
    if (ms > 20) expect(ticks).toBeGreaterThan(0);
    expect(c.some((v) => v !== 0)).toBe(true);
  });

  it('cancel() makes running kernels reject; clearCancel() lets later ones run', async () => {
    const c = new Float32Array(M * N);
    const jobs = Array.from({ length: 4 }, () => A().gemm(M, N, K, 1, a, K, 1, w, true, 0, c, N));
    A().cancel();
    const results = await Promise.allSettled(jobs);
    A().clearCancel();
    expect(results.some((x) => x.status === 'rejected' && String(x.reason).includes('cancelled'))).toBe(true);
    await expect(A().gemm(8, 8, 8, 1, a, K, 1, rawWeight('f32', randn(64, r), null, 8, 8), true, 0, c, N)).resolves.toBeUndefined();
  });

  it('bad arguments throw a TypeError naming the kernel and the argument', () => {
    const c = new Float32Array(10);
    expect(() => A().gemm(M, N, K, 1, a, K, 1, w, true, 0, c, N)).toThrow(/gemm: argument 10 has 10 elements/);
    expect(() => A().gemm(M, N, K, 1, a, K, 1, rawWeight('f32', new Float32Array(5), null, N, K), true, 0, c, N)).toThrow(/W.data is too short/);
    expect(() => A().rmsnormForward(c, c, c, null, 5, 5, 1e-6)).toThrow(/rmsnormForward: argument 0/);
  });
});
