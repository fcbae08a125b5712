// The adapter of an expert-parallel run, split like the base: each rank creates, updates and
// holds the LoRA factors and AdamW moments of the routed experts it owns (ExpertPlacement), and
// every rank holds the replicated ones (attention, the shared expert, the head: data parallel).
// What is written is still the whole adapter: at a checkpoint and at the end every rank of the
// first expert-parallel group sends its experts' factors and moments to rank 0 (one alltoallv of
// a JSON header naming them, one of their values), and rank 0 puts the complete adapter together
// and writes it in the single-process format. The other groups hold copies of the first's.
import { Adapter, type LoraLayer } from '../lora/adapter.js';
import { peftKey } from '../lora/peft.js';
import type { Moments } from '../train/adamw.js';
import type { AdapterGather } from '../train/run.js';
import type { Collective } from './collective.js';
import type { ExpertPlacement } from './expert-parallel.js';

const ROUTED = /^(?:layers|mtp)\.\d+\.ffn\.experts\.(\d+)\./;

/** The routed expert a LoRA module belongs to (`layers.0.ffn.experts.5.w1` → 5), or null. */
export function routedExpertOf(module: string): number | null {
  const m = ROUTED.exec(module);
  return m ? Number(m[1]) : null;
}

/** What one rank of the group sends rank 0 for each of its modules. */
interface ModuleHeader {
  name: string;
  r: number;
  alpha: number;
  scaling: number;
  in: number;
  out: number;
}

export class AdapterShards implements AdapterGather {
  private readonly mine: Set<number>;

  constructor(readonly collective: Collective, readonly placement: ExpertPlacement) {
    this.mine = new Set(placement.local());
  }

  /** Whether this rank holds a LoRA module: every module but other ranks' routed experts. */
  holds(module: string): boolean {
    const e = routedExpertOf(module);
    return e === null || this.mine.has(e);
  }

  /** A whole adapter cut to this rank's share (a checkpoint's or a warm start's). */
  cut(a: Adapter): Adapter {
    const layers = new Map<string, LoraLayer>();
    for (const [m, l] of a.layers) if (this.holds(m)) layers.set(m, l);
    return new Adapter(a.options, layers, a.baseModel, a.fingerprint);
  }

  /** Moments cut to this rank's share. */
  cutMoments(moments: ReadonlyMap<string, Moments>): Map<string, Moments> {
    const out = new Map<string, Moments>();
    for (const [k, m] of moments) if (this.holds(k.replace(/^base_model\.model\./, ''))) out.set(k, m);
    return out;
  }

  /**
   * Every rank calls it at the same point: rank 0 gets the complete adapter and moments, the
   * others null. Ranks of the first group (positions 0 … ep−1) send their routed experts.
   */
  async gather(adapter: Adapter, moments: ReadonlyMap<string, Moments>): Promise<{ adapter: Adapter; moments: Map<string, Moments> } | null> {
    const c = this.collective;
    const sends = c.rank > 0 && c.rank < this.placement.ep;
    const own = sends ? adapter.modules().filter((m) => routedExpertOf(m) !== null) : [];
    const headers: ModuleHeader[] = own.map((name) => {
      const l = adapter.factors(name)!;
      return { name, r: l.r, alpha: l.alpha, scaling: l.scaling, in: l.in, out: l.out };
    });
    const to0 = (n: number) => Array.from({ length: c.size }, (_, q) => (q === 0 ? n : 0));
    const head = new TextEncoder().encode(sends ? JSON.stringify(headers) : '');
    const gotHead = await c.alltoallv(head, to0(head.length));
    // each module: A, B, then A's exp_avg, exp_avg_sq, then B's
    let n = 0;
    for (const h of headers) n += 3 * h.r * (h.in + h.out);
    const values = new Float32Array(n);
    let o = 0;
    for (const h of headers) {
      const l = adapter.factors(h.name)!;
      const ma = moments.get(peftKey(h.name, 'A'))!;
      const mb = moments.get(peftKey(h.name, 'B'))!;
      for (const x of [l.A, l.B, ma.m, ma.v, mb.m, mb.v]) {
        values.set(x, o);
        o += x.length;
      }
    }
    const got = await c.alltoallv(values, to0(values.length));
    if (c.rank !== 0) return null;
    const layers = new Map(adapter.layers);
    const all = new Map(moments);
    let hOff = 0;
    let vOff = 0;
    for (let q = 0; q < c.size; q++) {
      const hn = gotHead.recvCounts[q]!;
      const from = hn > 0 ? (JSON.parse(new TextDecoder().decode(gotHead.recv.subarray(hOff, hOff + hn))) as ModuleHeader[]) : [];
      hOff += hn;
      for (const h of from) {
        const take = (len: number) => {
          const x = got.recv.slice(vOff, vOff + len);
          vOff += len;
          return x;
        };
        const [nA, nB] = [h.r * h.in, h.out * h.r];
        const A = take(nA);
        const B = take(nB);
        all.set(peftKey(h.name, 'A'), { m: take(nA), v: take(nA) });
        all.set(peftKey(h.name, 'B'), { m: take(nB), v: take(nB) });
        layers.set(h.name, { A, B, r: h.r, alpha: h.alpha, scaling: h.scaling, in: h.in, out: h.out });
      }
    }
    if (vOff !== got.recv.length) throw new RangeError(`expert parallel: rank 0 received ${got.recv.length} adapter values but the headers name ${vOff}`);
    return { adapter: new Adapter(adapter.options, layers, adapter.baseModel, adapter.fingerprint), moments: all };
  }
}
