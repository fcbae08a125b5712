// The native backend against the tfjs backend (the oracle) op by op on fresh random inputs:
// forwards and backwards through the Backend interface of src/backend/ops.ts. Both compute in
// float32 with different summation orders; bounds are stated per op.
import { beforeAll, describe, expect, it } from 'vitest';
import type { Backend, ExpertLora, LoraFactors, RopeTable, WeightSource } from '../../../src/backend/ops.js';
import { createTfjsBackend } from '../../../src/backend/tfjs/index.js';
import { dequantFp4, dequantFp8Block, quantFp4, quantFp8Block } from '../../../src/model/formats.js';
import { addon, randn, rng, skipNative, whyUnavailable } from './helpers.js';
import { relErr } from '../../ref64.js';

let nat: Backend;
let tfb: Backend;
const r = rng(77);

function lora(rk: number, inF: number, outF: number, scaling: number): LoraFactors {
  return { A: randn(rk * inF, r, 0.3), B: randn(outF * rk, r, 0.3), r: rk, scaling };
}

/** A checkpoint-like source holding FP8 / FP4 tensors: raw bytes for native, dequantised f32 for tfjs. */
function quantSource(tensors: Record<string, { format: 'fp8' | 'fp4'; rows: number; cols: number; x: Float32Array }>): WeightSource & { raw(name: string): Promise<{ data: Uint8Array; scale: Uint8Array | null }> } {
  const q = Object.fromEntries(Object.entries(tensors).map(([n, t]) => {
    const qq = t.format === 'fp8' ? quantFp8Block(t.x, t.rows, t.cols) : quantFp4(t.x, t.rows, t.cols);
    const deq = t.format === 'fp8' ? dequantFp8Block(qq.weight, qq.scale, t.rows, t.cols) : dequantFp4(qq.weight, qq.scale, t.rows, t.cols);
    return [n, { ...t, data: qq.weight, scale: qq.scale, deq }];
  }));
  return {
    meta: (n) => ({ logicalShape: [q[n].rows, q[n].cols], format: q[n].format }),
    f32: async (n) => q[n].deq.slice(),
    raw: async (n) => ({ data: q[n].data, scale: q[n].scale }),
  };
}

describe.skipIf(skipNative)('native backend vs tfjs backend', () => {
  it('the addon is built (required under CI)', () => {
    expect(addon, whyUnavailable).not.toBeNull();
  });
  beforeAll(async () => {
    const { createNativeBackend } = await import('../../../src/backend/native/index.js');
    nat = await createNativeBackend();
    tfb = await createTfjsBackend();
  });

  it('names itself after the dispatched ISA and thread count', () => {
    expect(nat.name).toMatch(/^native \((avx512|avx2|scalar)/);
  });

  it('linear and grouped linear with LoRA on FP8 weights: y 1e-5, dx/dA/dB 1e-4', async () => {
    const [N, inF, outF, G] = [6, 256, 128, 2];
    const src = quantSource({ w: { format: 'fp8', rows: outF, cols: inF, x: randn(outF * inF, r, 0.1) }, g: { format: 'fp8', rows: G * outF, cols: inF / G, x: randn(outF * inF, r, 0.1) } });
    const [wn, wt] = [await nat.prepareWeight(src, 'w'), await tfb.prepareWeight(src, 'w')];
    const l = lora(4, inF, outF, 0.5);
    const x = randn(N * inF, r);
    const dy = randn(N * outF, r);
    const a = await nat.linearForward(x, wn, l, N, inF, outF);
    const b = await tfb.linearForward(x, wt, l, N, inF, outF);
    expect(relErr(a.y, b.y)).toBeLessThan(1e-5);
    const ga = await nat.linearBackward(a.saved, dy);
    const gb = await tfb.linearBackward(b.saved, dy);
    expect(relErr(ga.dx, gb.dx)).toBeLessThan(1e-4);
    expect(relErr(ga.lora!.dA, gb.lora!.dA)).toBeLessThan(1e-4);
    expect(relErr(ga.lora!.dB, gb.lora!.dB)).toBeLessThan(1e-4);
    const [gn, gt] = [await nat.prepareWeight(src, 'g'), await tfb.prepareWeight(src, 'g')];
    const lg = lora(3, inF / G, G * outF, 0.25);
    const c = await nat.groupedLinearForward(x, gn, lg, N, G, inF / G, outF);
    const d = await tfb.groupedLinearForward(x, gt, lg, N, G, inF / G, outF);
    expect(relErr(c.y, d.y)).toBeLessThan(1e-5);
    const dyg = randn(N * G * outF, r);
    const gc = await nat.groupedLinearBackward(c.saved, dyg);
    const gd = await tfb.groupedLinearBackward(d.saved, dyg);
    expect(relErr(gc.dx, gd.dx)).toBeLessThan(1e-4);
    expect(relErr(gc.lora!.dA, gd.lora!.dA)).toBeLessThan(1e-4);
    expect(relErr(gc.lora!.dB, gd.lora!.dB)).toBeLessThan(1e-4);
  });

  it('router + routed experts (FP4, LoRA on some experts) + shared SwiGLU: outputs 1e-5, gradients 1e-4', async () => {
    const [N, d, I, E, k, L] = [7, 64, 32, 4, 2, 2.0];
    const t: Record<string, { format: 'fp4'; rows: number; cols: number; x: Float32Array }> = {};
    for (let e = 0; e <= E; e++) {
      t[`${e}.w1`] = { format: 'fp4', rows: I, cols: d, x: randn(I * d, r, 0.3) };
      t[`${e}.w2`] = { format: 'fp4', rows: d, cols: I, x: randn(d * I, r, 0.3) };
      t[`${e}.w3`] = { format: 'fp4', rows: I, cols: d, x: randn(I * d, r, 0.3) };
    }
    const src = quantSource(t);
    const prep = async (be: Backend, e: number) => ({ w1: await be.prepareWeight(src, `${e}.w1`), w2: await be.prepareWeight(src, `${e}.w2`), w3: await be.prepareWeight(src, `${e}.w3`) });
    const en = await Promise.all(Array.from({ length: E }, (_, e) => prep(nat, e)));
    const et = await Promise.all(Array.from({ length: E }, (_, e) => prep(tfb, e)));
    const lo: ExpertLora[] = [{ w1: lora(2, d, I, 0.5), w2: lora(2, I, d, 0.5), w3: lora(2, d, I, 0.5) }, {}, { w2: lora(3, I, d, 1) }, { w1: lora(2, d, I, 0.7) }];
    const gate = randn(E * d, r, 0.2);
    const bias = randn(E, r, 0.1);
    const [gn, gt] = [nat.weightFromArray('gate', gate, [E, d]), tfb.weightFromArray('gate', gate, [E, d])];
    const [bn, bt] = [nat.weightFromArray('bias', bias, [E]), tfb.weightFromArray('bias', bias, [E])];
    const x = randn(N * d, r);
    const ra = await nat.routerForward(x, gn, bn, null, N, d, E, k, 1.5);
    const rb = await tfb.routerForward(x, gt, bt, null, N, d, E, k, 1.5);
    expect(Array.from(ra.idx)).toEqual(Array.from(rb.idx));
    expect(relErr(ra.weights, rb.weights)).toBeLessThan(1e-5);
    const ma = await nat.routedExpertsForward(x, ra.idx, ra.weights, en, lo, N, d, I, k, L);
    const mb = await tfb.routedExpertsForward(x, rb.idx, rb.weights, et, lo, N, d, I, k, L);
    expect(relErr(ma.y, mb.y)).toBeLessThan(1e-5);
    const dy = randn(N * d, r);
    const ga = await nat.routedExpertsBackward(ma.saved, dy);
    const gb = await tfb.routedExpertsBackward(mb.saved, dy);
    expect(relErr(ga.dx, gb.dx)).toBeLessThan(1e-4);
    expect(relErr(ga.dweights, gb.dweights)).toBeLessThan(1e-4);
    for (let e = 0; e < E; e++)
      for (const p of ['w1', 'w2', 'w3'] as const) {
        expect(Boolean(ga.lora[e][p]), `expert ${e} ${p}`).toBe(Boolean(gb.lora[e][p]));
        if (!ga.lora[e][p]) continue;
        expect(relErr(ga.lora[e][p]!.dA, gb.lora[e][p]!.dA), `expert ${e} ${p} dA`).toBeLessThan(1e-4);
        expect(relErr(ga.lora[e][p]!.dB, gb.lora[e][p]!.dB), `expert ${e} ${p} dB`).toBeLessThan(1e-4);
      }
    // a training forward keeps h1/h3 and its backward reads them: the same bits as recomputing
    const mk = await nat.routedExpertsForward(x, ra.idx, ra.weights, en, lo, N, d, I, k, L, true);
    expect((mk.saved as { h13?: Float32Array | null }).h13?.length).toBe(2 * N * k * I);
    expect(mk.y).toEqual(ma.y);
    const gk = await nat.routedExpertsBackward(mk.saved, dy);
    expect(gk.dx).toEqual(ga.dx);
    expect(gk.dweights).toEqual(ga.dweights);
    expect(gk.lora).toEqual(ga.lora);
    expect((ma.saved as { h13?: Float32Array | null }).h13).toBeNull();
    const dr = await nat.routerBackward(ra.saved, ga.dweights);
    const dt = await tfb.routerBackward(rb.saved, gb.dweights);
    expect(relErr(dr.dx, dt.dx)).toBeLessThan(1e-4);
    const sh = await prep(nat, E);
    const st = await prep(tfb, E);
    const ls: ExpertLora = { w2: lora(2, I, d, 0.5) };
    const sa = await nat.swigluForward(x, sh, ls, N, d, I, L);
    const sb = await tfb.swigluForward(x, st, ls, N, d, I, L);
    expect(relErr(sa.y, sb.y)).toBeLessThan(1e-5);
    const sga = await nat.swigluBackward(sa.saved, dy);
    const sgb = await tfb.swigluBackward(sb.saved, dy);
    expect(relErr(sga.dx, sgb.dx)).toBeLessThan(1e-4);
    expect(relErr(sga.lora.w2!.dB, sgb.lora.w2!.dB)).toBeLessThan(1e-4);
    const sk = await nat.swigluForward(x, sh, ls, N, d, I, L, true);
    expect((sk.saved as { h13?: Float32Array | null }).h13?.length).toBe(2 * N * I);
    const sgk = await nat.swigluBackward(sk.saved, dy);
    expect(sgk.dx).toEqual(sga.dx);
    expect(sgk.lora).toEqual(sga.lora);
  });

  it('rmsnorm, rope, mHC pre/post, hc_head: outputs 1e-5, gradients 1e-4', async () => {
    const [N, hc, d, C] = [5, 4, 16, 24];
    const x = randn(N * C, r);
    const w = randn(C, r);
    const a = await nat.rmsnormForward(x, nat.weightFromArray('w', w, [C]), N, C, 1e-6);
    const b = await tfb.rmsnormForward(x, tfb.weightFromArray('w', w, [C]), N, C, 1e-6);
    expect(relErr(a.y, b.y)).toBeLessThan(1e-5);
    const dy = randn(N * C, r);
    expect(relErr((await nat.rmsnormBackward(a.saved, dy)).dx, (await tfb.rmsnormBackward(b.saved, dy)).dx)).toBeLessThan(1e-4);

    const rd = 4;
    const maxPos = 20;
    const table: RopeTable = { rd, maxPos, cos: Float32Array.from({ length: maxPos * 2 }, (_, i) => Math.cos(i * 0.37)), sin: Float32Array.from({ length: maxPos * 2 }, (_, i) => Math.sin(i * 0.37)) };
    const pos = Int32Array.from([0, 3, 19, 7, 7]);
    const q = randn(N * 2 * 8, r);
    const ra = await nat.ropeForward(q, pos, table, N, 2, 8, false);
    const rb = await tfb.ropeForward(q, pos, table, N, 2, 8, false);
    expect(relErr(ra.y, rb.y)).toBeLessThan(1e-6);
    const dq = randn(q.length, r);
    expect(relErr((await nat.ropeBackward(ra.saved, dq)).dx, (await tfb.ropeBackward(rb.saved, dq)).dx)).toBeLessThan(1e-6);
    // in place: the same values in q's own memory, under a new identity (the tape tells them apart)
    const qCopy = q.slice();
    const rc = await nat.ropeForward(qCopy, pos, table, N, 2, 8, false, true);
    expect(rc.y).not.toBe(qCopy);
    expect(rc.y.buffer).toBe(qCopy.buffer);
    expect(Buffer.from(rc.y.buffer).equals(Buffer.from(ra.y.buffer))).toBe(true);
    expect(Buffer.from((await nat.ropeBackward(rc.saved, dq)).dx.buffer).equals(Buffer.from((await nat.ropeBackward(ra.saved, dq)).dx.buffer))).toBe(true);

    const nm = (2 + hc) * hc;
    const X = randn(N * hc * d, r);
    const fn = randn(nm * hc * d, r, 0.2);
    const sc = Float32Array.from([0.5, 0.9, 1.2]);
    const base = randn(nm, r, 0.3);
    const mk = (be: Backend) => [be.weightFromArray('fn', fn, [nm, hc * d]), be.weightFromArray('sc', sc, [3]), be.weightFromArray('base', base, [nm])] as const;
    const [fa, sa, ba] = mk(nat);
    const [fb, sb, bb] = mk(tfb);
    const pa = await nat.mhcPreForward(X, fa, sa, ba, N, hc, d, 20, 1e-6, 1e-6);
    const pb = await tfb.mhcPreForward(X, fb, sb, bb, N, hc, d, 20, 1e-6, 1e-6);
    expect(relErr(pa.y, pb.y)).toBeLessThan(1e-5);
    expect(relErr(pa.post, pb.post)).toBeLessThan(1e-5);
    expect(relErr(pa.comb, pb.comb)).toBeLessThan(1e-5);
    const [gy, gp, gc] = [randn(N * d, r), randn(N * hc, r), randn(N * hc * hc, r)];
    expect(relErr((await nat.mhcPreBackward(pa.saved, gy, gp, gc)).dX, (await tfb.mhcPreBackward(pb.saved, gy, gp, gc)).dX)).toBeLessThan(1e-4);

    const F = randn(N * d, r);
    const oa = await nat.mhcPostForward(F, X, pa.post, pa.comb, N, hc, d);
    const ob = await tfb.mhcPostForward(F, X, pa.post, pa.comb, N, hc, d);
    expect(relErr(oa.out, ob.out)).toBeLessThan(1e-5);
    const go = randn(N * hc * d, r);
    const [da, db] = [await nat.mhcPostBackward(oa.saved, go), await tfb.mhcPostBackward(ob.saved, go)];
    for (const key of ['df', 'dres', 'dpost', 'dcomb'] as const) expect(relErr(da[key], db[key]), key).toBeLessThan(1e-4);

    const hfn = randn(hc * hc * d, r, 0.2);
    const hn = [nat.weightFromArray('f', hfn, [hc, hc * d]), nat.weightFromArray('s', Float32Array.from([0.8]), [1]), nat.weightFromArray('b', base.subarray(0, hc), [hc])] as const;
    const ht = [tfb.weightFromArray('f', hfn, [hc, hc * d]), tfb.weightFromArray('s', Float32Array.from([0.8]), [1]), tfb.weightFromArray('b', base.subarray(0, hc), [hc])] as const;
    const ha = await nat.hcHeadForward(X, ...hn, N, hc, d, 1e-6, 1e-6);
    const hb = await tfb.hcHeadForward(X, ...ht, N, hc, d, 1e-6, 1e-6);
    expect(relErr(ha.y, hb.y)).toBeLessThan(1e-5);
    expect(relErr((await nat.hcHeadBackward(ha.saved, gy)).dX, (await tfb.hcHeadBackward(hb.saved, gy)).dX)).toBeLessThan(1e-4);
  });

  it('compressor, indexer top-k and sparse sink attention: outputs 1e-5, gradients 1e-4', async () => {
    const hd = 8;
    const segs = Int32Array.from([9, 8]);
    const N = 17;
    for (const [m, overlap] of [[4, true], [3, false]] as const) {
      const cw = overlap ? 2 * hd : hd;
      const a = randn(N * cw, r);
      const z = randn(N * cw, r);
      const ape = randn(m * cw, r);
      const ca = await nat.compressorForward(a, z, nat.weightFromArray('ape', ape, [m, cw]), segs, N, m, hd, overlap);
      const cb = await tfb.compressorForward(a, z, tfb.weightFromArray('ape', ape, [m, cw]), segs, N, m, hd, overlap);
      expect(relErr(ca.out, cb.out)).toBeLessThan(1e-5);
      const g = randn(ca.out.length, r);
      const [ga, gb] = [await nat.compressorBackward(ca.saved, g), await tfb.compressorBackward(cb.saved, g)];
      expect(relErr(ga.da, gb.da)).toBeLessThan(1e-4);
      expect(relErr(ga.dz, gb.dz)).toBeLessThan(1e-4);
    }
    const [nh, M] = [3, 6];
    const q = randn(N * nh * hd, r);
    const kk = randn(M * hd, r);
    const w = randn(N * nh, r);
    const kStart = new Int32Array(N);
    const kCount = Int32Array.from({ length: N }, (_, n) => Math.min(M, Math.floor((n + 1) / 3)));
    const ia = await nat.indexerTopk(q, kk, w, kStart, kCount, N, M, nh, hd, 3);
    const ib = await tfb.indexerTopk(q, kk, w, kStart, kCount, N, M, nh, hd, 3);
    expect(ia.K).toBe(ib.K);
    expect(Array.from(ia.idx)).toEqual(Array.from(ib.idx));

    const [H, D, Mkv, K] = [4, 16, 23, 7];
    const qa = randn(N * H * D, r);
    const kv = randn(Mkv * D, r);
    const sink = randn(H, r);
    const idx = Int32Array.from({ length: N * K }, (_, i) => ((i * 5) % (Mkv + 4)) - 4);
    const aa = await nat.attentionForward(qa, kv, nat.weightFromArray('sink', sink, [H]), idx, N, H, D, Mkv, K, 0.25);
    const ab = await tfb.attentionForward(qa, kv, tfb.weightFromArray('sink', sink, [H]), idx, N, H, D, Mkv, K, 0.25);
    expect(relErr(aa.o, ab.o)).toBeLessThan(1e-5);
    const go = randn(aa.o.length, r);
    const [da, db] = [await nat.attentionBackward(aa.saved, go), await tfb.attentionBackward(ab.saved, go)];
    expect(relErr(da.dq, db.dq)).toBeLessThan(1e-4);
    expect(relErr(da.dkv, db.dkv)).toBeLessThan(1e-4);
  });

  it('embedding, logits and the chunked LM-head loss: 1e-5, dx 1e-4', async () => {
    const [N, d, V] = [6, 16, 700];
    const W = randn(V * d, r, 0.3);
    const [wn, wt] = [nat.weightFromArray('head', W, [V, d]), tfb.weightFromArray('head', W, [V, d])];
    const ids = Int32Array.from([5, 0, 699, 5, 12, 300]);
    expect(relErr(await nat.embedding(wn, ids, N, d), await tfb.embedding(wt, ids, N, d))).toBe(0);
    const x = randn(N * d, r);
    expect(relErr(await nat.logits(x, wn, N, d, V), await tfb.logits(x, wt, N, d, V))).toBeLessThan(1e-5);
    const tg = Int32Array.from([3, -1, 699, 0, -1, 42]);
    const la = await nat.lmHeadLossForward(x, wn, tg, N, d, V);
    const lb = await tfb.lmHeadLossForward(x, wt, tg, N, d, V);
    expect(la.count).toBe(lb.count);
    expect(Math.abs(la.lossSum - lb.lossSum) / Math.abs(lb.lossSum)).toBeLessThan(1e-5);
    const [ga, gb] = [await nat.lmHeadLossBackward(la.saved, 0.25), await tfb.lmHeadLossBackward(lb.saved, 0.25)];
    expect(relErr(ga.dx, gb.dx)).toBeLessThan(1e-4);
    // withGrad: the gradient comes from the forward's own pass, the backward only scales it
    const lc = await nat.lmHeadLossForward(x, wn, tg, N, d, V, true);
    expect(Math.abs(lc.lossSum - la.lossSum) / Math.abs(la.lossSum)).toBeLessThan(1e-6);
    const gc = await nat.lmHeadLossBackward(lc.saved, 0.25);
    expect(relErr(gc.dx, ga.dx)).toBeLessThan(1e-6);
    expect(relErr(gc.dx, gb.dx)).toBeLessThan(1e-4);
    // the eval's pass: the same loss bits, and each row's top-1 (the positions not counted too)
    // is the first largest of the tfjs backend's logits; with no target at all, top-1 alone
    const logits = await tfb.logits(x, wt, N, d, V);
    const argmax = (row: number): number => {
      let b = 0;
      for (let v = 1; v < V; v++) if (logits[row * V + v]! > logits[row * V + b]!) b = v;
      return b;
    };
    const want = Array.from({ length: N }, (_, n) => argmax(n));
    const lt = await nat.lmHeadLossTop1!(x, wn, tg, N, d, V);
    expect([lt.lossSum, lt.count]).toEqual([la.lossSum, la.count]);
    expect(Array.from(lt.top1)).toEqual(want);
    const none = await nat.lmHeadLossTop1!(x, wn, new Int32Array(N).fill(-1), N, d, V);
    expect([none.lossSum, none.count]).toEqual([0, 0]);
    expect(Array.from(none.top1)).toEqual(want);
    expect(new Set(want).size).toBeGreaterThan(2);
  });
});
