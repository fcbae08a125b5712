// Expert parallel: a layer's routed experts are split across `ep` ranks (a group), each rank
// holding only its experts' base weights; attention, the shared expert and the head stay on
// every rank. A backend wrapper does it at the one op that touches routed experts (moe):
//   forward:  each (token, slot) pair goes with its routing weight to the rank owning its expert
//             (alltoallv), the owner runs its experts on what it received (the wrapped backend's
//             grouped expert kernel, k = 1), the weighted outputs come back (alltoallv) and are
//             summed per token;
//   backward: dy of each pair goes to the owner, which returns dx and dweight and keeps the
//             gradients of its experts' LoRA factors.
// The owner's LoRA gradients sum pairs from every rank's micro-batch, so each rank scales the dy
// it sends by its micro-batch's weight in the step (gradScale: counted tokens of the micro-batch
// / of the step; data-parallel.ts sets it) and unscales dx and dweight on return: the owner's
// gradients are then already the step's, and are not weighted again.
import type { Backend, ExpertLora, ExpertLoraGrads, ExpertWeights, F32, I32, Saved, WeightHandle, WeightSource } from '../backend/ops.js';
import { InputError } from '../errors.js';
import type { Collective } from './collective.js';

/** Which rank holds which routed experts, for a world of `size` ranks in groups of `ep`. */
export class ExpertPlacement {
  constructor(readonly nExperts: number, readonly ep: number, readonly rank: number, readonly size: number) {
    if (!Number.isInteger(ep) || ep < 1 || size % ep !== 0) throw new InputError(`distributed.expert_parallel (${ep}) must divide the world size (${size})`);
    if (ep > nExperts) throw new InputError(`distributed.expert_parallel (${ep}) exceeds the model's ${nExperts} routed experts per layer`);
  }

  /** The rank of this rank's group that holds expert e: experts in contiguous blocks. */
  owner(e: number): number {
    const first = this.rank - (this.rank % this.ep);
    return first + Math.floor((e * this.ep) / this.nExperts);
  }

  /** The experts rank r of a group holds (r: the rank's position in its group). */
  expertsOf(r: number): number[] {
    const out: number[] = [];
    for (let e = 0; e < this.nExperts; e++) if (Math.floor((e * this.ep) / this.nExperts) === r) out.push(e);
    return out;
  }

  local(): number[] {
    return this.expertsOf(this.rank % this.ep);
  }

  /** `experts 0–31 on rank 0, 32–63 on rank 1` */
  describe(): string {
    const parts: string[] = [];
    for (let r = 0; r < this.ep; r++) {
      const es = this.expertsOf(r);
      parts.push(`${es[0]}–${es[es.length - 1]} on rank ${r}${this.size > this.ep ? ` (+${this.ep}·g)` : ''}`);
    }
    return `${this.nExperts} routed experts per layer: ${parts.join(', ')}`;
  }
}

const EXPERT_WEIGHT = /\.ffn\.experts\.(\d+)\.w[123]\.weight$/;

/** Counters of one step's dispatch, this rank's side (reset by the caller). */
export interface DispatchStats {
  /** (token, expert) pairs this rank sent to other ranks / kept for its own experts */
  pairsSent: number;
  pairsKept: number;
  /** pairs this rank's experts computed (from every rank, its own included) */
  pairsComputed: number;
}

interface EpSaved extends Saved {
  readonly op: 'ep-moe';
  /** pairs in send order: token t and slot j of each */
  readonly tok: Int32Array;
  readonly slot: Int32Array;
  /** pairs per destination rank / per source rank */
  readonly sendPairs: Int32Array;
  readonly recvPairs: Int32Array;
  readonly inner: Saved | null;
  readonly R: number;
  readonly N: number;
  readonly k: number;
  readonly d: number;
}

export class ExpertParallel {
  /** the weight of the micro-batch now running in its step (see the file comment) */
  gradScale = 1;
  readonly stats: DispatchStats = { pairsSent: 0, pairsKept: 0, pairsComputed: 0 };
  private readonly mine: Set<number>;
  /** expert e's position among its owner's experts (the id its owner's kernel takes) */
  private readonly localId: Int32Array;

  constructor(readonly collective: Collective, readonly placement: ExpertPlacement) {
    this.mine = new Set(placement.local());
    this.localId = new Int32Array(placement.nExperts);
    for (let r = 0; r < placement.ep; r++) placement.expertsOf(r).forEach((e, i) => { this.localId[e] = i; });
  }

  /** Whether a base weight is one this rank loads (every weight but other ranks' experts). */
  holds(name: string): boolean {
    const m = EXPERT_WEIGHT.exec(name);
    return !m || this.mine.has(Number(m[1]));
  }

  /** `inner` with routed experts placed across the group (prepareWeight, routedExpertsForward, routedExpertsBackward). */
  wrap(inner: Backend): Backend {
    const overrides: Partial<Backend> = {
      name: `${inner.name}, expert parallel ×${this.placement.ep}`,
      prepareWeight: async (src: WeightSource, name: string): Promise<WeightHandle> => {
        if (this.holds(name)) return inner.prepareWeight(src, name);
        // another rank's expert: its shape only (never read, never handed to a kernel)
        return { name, shape: src.meta(name).logicalShape.slice() };
      },
      routedExpertsForward: (x, idx, weights, experts, lora, N, d, I, k, limit) => this.forward(inner, x, idx, weights, experts, lora, N, d, I, k, limit),
      routedExpertsBackward: (saved, dy) => this.backward(inner, saved, dy),
    };
    return new Proxy(inner, {
      get(target, prop, receiver) {
        if (Object.prototype.hasOwnProperty.call(overrides, prop)) return overrides[prop as keyof Backend];
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  private async forward(
    inner: Backend, x: F32, idx: I32, weights: F32, experts: readonly ExpertWeights[], lora: readonly ExpertLora[],
    N: number, d: number, I: number, k: number, limit: number,
  ): Promise<{ y: F32; saved: Saved }> {
    const c = this.collective;
    const P = c.size;
    const pl = this.placement;
    // the pairs, grouped by the rank owning their expert (stable within a rank)
    const sendPairs = new Int32Array(P);
    const dest = new Int32Array(N * k).fill(-1);
    for (let p = 0; p < N * k; p++) {
      const e = idx[p]!;
      if (e < 0 || e >= experts.length) continue;
      dest[p] = pl.owner(e);
      sendPairs[dest[p]!]!++;
    }
    const start = new Int32Array(P);
    for (let q = 1; q < P; q++) start[q] = start[q - 1]! + sendPairs[q - 1]!;
    const total = start[P - 1]! + sendPairs[P - 1]!;
    const tok = new Int32Array(total);
    const slot = new Int32Array(total);
    const at = start.slice();
    const stride = d + 2;
    const send = new Float32Array(total * stride);
    for (let p = 0; p < N * k; p++) {
      const q = dest[p]!;
      if (q < 0) continue;
      const i = at[q]!++;
      const t = Math.floor(p / k);
      tok[i] = t;
      slot[i] = p % k;
      send[i * stride] = this.localId[idx[p]!]!;
      send[i * stride + 1] = weights[p]!;
      send.set(x.subarray(t * d, (t + 1) * d), i * stride + 2);
    }
    this.stats.pairsKept += sendPairs[c.rank]!;
    this.stats.pairsSent += total - sendPairs[c.rank]!;
    const got = await c.alltoallv(send, Array.from(sendPairs, (n) => n * stride));
    const recvPairs = Int32Array.from(got.recvCounts, (n) => n / stride);
    const R = got.recv.length / stride;
    this.stats.pairsComputed += R;
    let inner_: Saved | null = null;
    let yR: F32 = new Float32Array(0);
    if (R > 0) {
      const X = new Float32Array(R * d);
      const idxL = new Int32Array(R);
      const wL = new Float32Array(R);
      for (let i = 0; i < R; i++) {
        idxL[i] = got.recv[i * stride]!;
        wL[i] = got.recv[i * stride + 1]!;
        X.set(got.recv.subarray(i * stride + 2, (i + 1) * stride), i * d);
      }
      const local = pl.local();
      const r = await inner.routedExpertsForward(X, idxL, wL, local.map((e) => experts[e]!), local.map((e) => lora[e] ?? {}), R, d, I, 1, limit);
      yR = r.y;
      inner_ = r.saved;
    }
    const back = await c.alltoallv(yR, Array.from(recvPairs, (n) => n * d));
    const y = new Float32Array(N * d);
    for (let i = 0; i < total; i++) {
      const t = tok[i]!;
      const row = back.recv.subarray(i * d, (i + 1) * d);
      for (let j = 0; j < d; j++) y[t * d + j] += row[j]!;
    }
    const saved: EpSaved = { op: 'ep-moe', tok, slot, sendPairs, recvPairs, inner: inner_, R, N, k, d };
    return { y, saved };
  }

  private async backward(inner: Backend, saved: Saved, dy: F32): Promise<{ dx: F32; dweights: F32; lora: ExpertLoraGrads[] }> {
    if (saved.op !== 'ep-moe') throw new TypeError(`expert parallel: routedExpertsBackward got a context of op ${saved.op}`);
    const s = saved as EpSaved;
    const c = this.collective;
    const d = s.d;
    const w = this.gradScale;
    const total = s.tok.length;
    const send = new Float32Array(total * d);
    for (let i = 0; i < total; i++) {
      const t = s.tok[i]!;
      for (let j = 0; j < d; j++) send[i * d + j] = w * dy[t * d + j]!;
    }
    const got = await c.alltoallv(send, Array.from(s.sendPairs, (n) => n * d));
    const nLocal = this.placement.local().length;
    const lora: ExpertLoraGrads[] = Array.from({ length: this.placement.nExperts }, () => ({}));
    const stride = d + 1;
    const out = new Float32Array(s.R * stride);
    if (s.R > 0 && s.inner) {
      const r = await inner.routedExpertsBackward(s.inner, got.recv);
      for (let i = 0; i < s.R; i++) {
        out.set(r.dx.subarray(i * d, (i + 1) * d), i * stride);
        out[i * stride + d] = r.dweights[i]!;
      }
      const local = this.placement.local();
      for (let l = 0; l < nLocal; l++) lora[local[l]!] = r.lora[l] ?? {};
    }
    const back = await c.alltoallv(out, Array.from(s.recvPairs, (n) => n * stride));
    const dx = new Float32Array(s.N * d);
    const dweights = new Float32Array(s.N * s.k);
    if (w !== 0) {
      const inv = 1 / w;
      for (let i = 0; i < total; i++) {
        const t = s.tok[i]!;
        const row = back.recv.subarray(i * stride, (i + 1) * stride);
        for (let j = 0; j < d; j++) dx[t * d + j] += row[j]! * inv;
        dweights[t * s.k + s.slot[i]!] = row[d]! * inv;
      }
    }
    return { dx, dweights, lora };
  }
}
