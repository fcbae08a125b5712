// The ascend backend end to end on a stand-in runtime: a libascendcl.so built from the fake ACL
// table and the shim-built kernels, found through ASCEND_HOME_PATH and loaded by the addon with
// dlopen as the real one would be. `auto` takes ascend once a device is visible; the backend's
// routed-expert and linear ops and its mHC pre backward (through the addon's bindings, on libuv
// worker threads, through the host code) equal the native backend's; LoRA dropout is refused by name.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../../src/backend/index.js';
import { createNativeBackend } from '../../../src/backend/native/index.js';
import type { Backend, ExpertLora, ExpertWeights, LoraFactors } from '../../../src/backend/ops.js';
import { randn, rng, skipNative } from '../native/helpers.js';
import { relErr } from '../../ref64.js';
import { fakeAscendHome, onDevice } from './harness.js';

const TOL = 1e-4;

describe.skipIf(skipNative || onDevice)('the ascend backend on the fake runtime', () => {
  let asc: Backend;
  let nat: Backend;
  const notes: string[] = [];
  beforeAll(async () => {
    const home = fakeAscendHome();
    process.env.ASCEND_HOME_PATH = home;
    process.env.V4TUNE_ASCEND_KERNELS = join(home, 'lib64', 'libascendcl.so');
    asc = await createBackend('auto', (l) => notes.push(l));
    nat = await createNativeBackend();
  }, 600_000);
  afterAll(() => {
    asc?.dispose();
    nat?.dispose();
  });

  it('auto takes ascend where a device is visible, and says so in one line', () => {
    expect(asc.name).toBe('ascend (NPU 0, 20 AI cores; other ops on the CPU kernels)');
    expect(notes).toEqual([`v4tune: backend ${asc.name}`]);
  });

  const r = rng(77);
  const N = 10, d = 64, I = 128, E = 4, k = 2, limit = 5;
  const lora = (inF: number, outF: number, rank: number): LoraFactors => ({ A: randn(rank * inF, r, 0.3), B: randn(outF * rank, r, 0.3), r: rank, scaling: 8 / rank });
  const weights = Array.from({ length: E }, () => ({ w1: randn(I * d, r, 0.3), w2: randn(d * I, r, 0.1), w3: randn(I * d, r, 0.3) }));
  const adapters: ExpertLora[] = [
    { w1: lora(d, I, 4), w2: lora(I, d, 8), w3: lora(d, I, 4) },
    { w1: lora(d, I, 16) },
    {},
    { w2: lora(I, d, 4), w3: lora(d, I, 8) },
  ];
  // uneven loads (expert 0 on 7 tokens, 3 on 6); expert 2 takes no token
  const idx = Int32Array.from([[0, 1], [0, 3], [1, 3], [0, 1], [3, 0], [1, 0], [0, 3], [1, 3], [0, 1], [3, 1]].flat());
  const gate = Float32Array.from({ length: N * k }, () => 0.1 + r());
  const x = randn(N * d, r), dy = randn(N * d, r);
  const experts = (be: Backend): ExpertWeights[] => weights.map((w, e) => ({
    w1: be.weightFromArray(`e${e}.w1`, w.w1, [I, d]), w2: be.weightFromArray(`e${e}.w2`, w.w2, [d, I]), w3: be.weightFromArray(`e${e}.w3`, w.w3, [I, d]),
  }));

  it('routed experts: forward, dx, the routing-weight gradient and every LoRA gradient equal the native backend', async () => {
    expect(asc.name).toMatch(/^ascend /);
    expect(idx.includes(2)).toBe(false);
    const a = await asc.routedExpertsForward(x, idx, gate, experts(asc), adapters, N, d, I, k, limit);
    const b = await nat.routedExpertsForward(x, idx, gate, experts(nat), adapters, N, d, I, k, limit);
    expect(relErr(a.y, b.y), 'y').toBeLessThan(TOL);
    const ga = await asc.routedExpertsBackward(a.saved, dy), gb = await nat.routedExpertsBackward(b.saved, dy);
    expect(relErr(ga.dx, gb.dx), 'dx').toBeLessThan(TOL);
    expect(relErr(ga.dweights, gb.dweights), 'dweights').toBeLessThan(TOL);
    let n = 0;
    gb.lora.forEach((g, e) => {
      for (const p of ['w1', 'w2', 'w3'] as const) {
        if (!g[p]) continue;
        expect(relErr(ga.lora[e][p]!.dA, g[p]!.dA), `e${e} ${p} dA`).toBeLessThan(TOL);
        expect(relErr(ga.lora[e][p]!.dB, g[p]!.dB), `e${e} ${p} dB`).toBeLessThan(TOL);
        n++;
      }
    });
    expect(n).toBe(6);
  }, 600_000);

  it('linear and grouped linear with LoRA equal the native backend', async () => {
    expect(asc.name).toMatch(/^ascend /);
    const inF = 64, outF = 48, G = 2;
    const W = randn(outF * inF, r, 0.2), l = lora(inF, outF, 4), lg = lora(inF, G * outF, 4);
    const xs = randn(N * inF, r), dys = randn(N * outF, r), xg = randn(N * G * inF, r), dyg = randn(N * G * outF, r);
    const Wg = randn(G * outF * inF, r, 0.2);
    const fa = await asc.linearForward(xs, asc.weightFromArray('W', W, [outF, inF]), l, N, inF, outF);
    const fb = await nat.linearForward(xs, nat.weightFromArray('W', W, [outF, inF]), l, N, inF, outF);
    expect(relErr(fa.y, fb.y), 'y').toBeLessThan(TOL);
    const ba = await asc.linearBackward(fa.saved, dys), bb = await nat.linearBackward(fb.saved, dys);
    expect(relErr(ba.dx, bb.dx), 'dx').toBeLessThan(TOL);
    expect(relErr(ba.lora!.dA, bb.lora!.dA), 'dA').toBeLessThan(TOL);
    expect(relErr(ba.lora!.dB, bb.lora!.dB), 'dB').toBeLessThan(TOL);
    const ga = await asc.groupedLinearForward(xg, asc.weightFromArray('Wg', Wg, [G * outF, inF]), lg, N, G, inF, outF);
    const gb = await nat.groupedLinearForward(xg, nat.weightFromArray('Wg', Wg, [G * outF, inF]), lg, N, G, inF, outF);
    expect(relErr(ga.y, gb.y), 'grouped y').toBeLessThan(TOL);
    const gba = await asc.groupedLinearBackward(ga.saved, dyg), gbb = await nat.groupedLinearBackward(gb.saved, dyg);
    expect(relErr(gba.dx, gbb.dx), 'grouped dx').toBeLessThan(TOL);
    expect(relErr(gba.lora!.dA, gbb.lora!.dA), 'grouped dA').toBeLessThan(TOL);
    expect(relErr(gba.lora!.dB, gbb.lora!.dB), 'grouped dB').toBeLessThan(TOL);
  }, 600_000);

  it('the mHC pre backward, its Sinkhorn part on the device, equals the native backend', async () => {
    expect(asc.name).toMatch(/^ascend /);
    const hc = 4, dd = 16, n = hc * dd, nm = (2 + hc) * hc, iters = 20, hcEps = 1e-6, normEps = 1e-6;
    const X = randn(N * n, r), fn = randn(nm * n, r, 0.2), scale = Float32Array.from([0.8, 1.1, 1.3]), base = randn(nm, r, 0.5);
    const dy = randn(N * dd, r), dpost = randn(N * hc, r), dcomb = randn(N * hc * hc, r);
    const run = async (be: Backend) => {
      const f = await be.mhcPreForward(X, be.weightFromArray('fn', fn, [nm, n]), be.weightFromArray('scale', scale, [3]),
        be.weightFromArray('base', base, [nm]), N, hc, dd, iters, hcEps, normEps);
      return { f, b: await be.mhcPreBackward(f.saved, dy, dpost, dcomb) };
    };
    const a = await run(asc), b = await run(nat);
    expect(relErr(a.f.comb, b.f.comb), 'comb').toBeLessThan(TOL);
    expect(relErr(a.b.dX, b.b.dX), 'dX').toBeLessThan(TOL);
    // the comb part matters: without dcomb the result differs
    const noComb = await nat.mhcPreBackward(b.f.saved, dy, dpost, new Float32Array(N * hc * hc));
    expect(relErr(noComb.dX, b.b.dX)).toBeGreaterThan(1e-3);
  }, 600_000);

  it('LoRA dropout is refused by name', async () => {
    expect(asc.name).toMatch(/^ascend /);
    const dropped: LoraFactors = { ...lora(64, 48, 4), dropout: { p: 0.1, threshold: Math.floor(0.1 * 2 ** 24), seed: 3 } };
    await expect(asc.linearForward(randn(N * 64, r), asc.weightFromArray('Wd', randn(48 * 64, r), [48, 64]), dropped, N, 64, 48))
      .rejects.toThrow('ascend: LoRA dropout is not built into the Ascend kernels; set lora.dropout to 0');
  });
});
