// The tape: the model's forward records each op it ran (its differentiable inputs, its outputs,
// and a closure over the op's backward); `backward` replays the records in reverse, handing each
// the gradients of its outputs and accumulating what it returns into its inputs' gradients.
// Buffers are identified by object identity; a buffer no record produced is a leaf.
//
// Memory accounting (optional, `SavedBytes`): every record declares what it keeps alive — its
// inputs, outputs and the op's saved context — and the accountant follows the bytes of the
// typed-array buffers reachable from them while records hold them. Tapes that share an accountant
// (a block's recompute tape under activation checkpointing) add to the same total.
import { addInto } from './host.js';
import type { F32 } from './ops.js';

interface TapeRecord {
  readonly inputs: readonly F32[];
  readonly outputs: readonly F32[];
  readonly backward: (dOutputs: F32[]) => Promise<readonly (F32 | null)[]>;
  /** the accountant's handle of what this record holds, or −1 */
  readonly held: number;
}

/**
 * Calls `visit` once for every ArrayBuffer reachable from `roots` through object properties,
 * array elements, Map/Set entries and typed-array views (functions are not entered).
 */
export function reachableBuffers(roots: readonly unknown[], visit: (buf: ArrayBufferLike) => void): void {
  const seen = new Set<object>();
  const stack: unknown[] = [...roots];
  while (stack.length > 0) {
    const v = stack.pop();
    if (v === null || typeof v !== 'object' || seen.has(v)) continue;
    seen.add(v);
    if (ArrayBuffer.isView(v)) {
      if (!seen.has(v.buffer)) {
        seen.add(v.buffer);
        visit(v.buffer);
      }
    } else if (v instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && v instanceof SharedArrayBuffer)) {
      visit(v);
    } else if (v instanceof Map) {
      for (const [k, x] of v) stack.push(k, x);
    } else if (v instanceof Set) {
      for (const x of v) stack.push(x);
    } else {
      for (const x of Object.values(v)) stack.push(x);
    }
  }
}

/**
 * The bytes of buffers that tape records hold, over time. A buffer (an ArrayBuffer, counted at
 * its full byteLength) counts once while at least one record holds it. Only integer ids and sizes
 * are kept (a WeakMap from buffer to id), so the accounting never keeps a buffer alive; the
 * timeline is replayed by `peak`, which leaves out the buffers reachable from the given roots
 * (base weights, LoRA factors, RoPE tables: what lives on without the tape).
 */
export class SavedBytes {
  private readonly ids = new WeakMap<ArrayBufferLike, number>();
  private readonly sizes: number[] = [];
  /** +ids held / −ids released, in order */
  private readonly events: { sign: 1 | -1; ids: Int32Array }[] = [];
  private readonly holdings: Int32Array[] = [];

  /** Start holding everything reachable from `roots`; returns the handle to release it with. */
  hold(roots: readonly unknown[]): number {
    const list: number[] = [];
    reachableBuffers(roots, (buf) => {
      let id = this.ids.get(buf);
      if (id === undefined) {
        id = this.sizes.length;
        this.ids.set(buf, id);
        this.sizes.push(buf.byteLength);
      }
      list.push(id);
    });
    const ids = Int32Array.from(list);
    this.events.push({ sign: 1, ids });
    this.holdings.push(ids);
    return this.holdings.length - 1;
  }

  release(handle: number): void {
    this.events.push({ sign: -1, ids: this.holdings[handle] });
  }

  /** The largest number of bytes held at once, not counting buffers reachable from `exclude`. */
  peak(exclude: readonly unknown[] = []): number {
    const skip = new Set<number>();
    reachableBuffers(exclude, (buf) => {
      const id = this.ids.get(buf);
      if (id !== undefined) skip.add(id);
    });
    const refs = new Int32Array(this.sizes.length);
    let cur = 0;
    let best = 0;
    for (const { sign, ids } of this.events) {
      for (const id of ids) {
        if (skip.has(id)) continue;
        refs[id] += sign;
        if (sign === 1 && refs[id] === 1) cur += this.sizes[id];
        else if (sign === -1 && refs[id] === 0) cur -= this.sizes[id];
      }
      if (cur > best) best = cur;
    }
    return best;
  }
}

export class Tape {
  private readonly records: TapeRecord[] = [];

  /**
   * `account`: where the records' held bytes are counted (none: no accounting). `add`: how two
   * gradients of one buffer are summed into the first (the backend's addInto where it has one).
   */
  constructor(readonly account: SavedBytes | null = null, private readonly add: (dst: F32, src: F32) => void = addInto) {}

  /** A fresh tape counting into the same accountant, summing the same way. */
  child(): Tape {
    return new Tape(this.account, this.add);
  }

  /**
   * Record one op: `backward` gets d(outputs) (zeros where nothing flowed) and returns d(inputs).
   * `saved`: what the backward closure keeps besides inputs and outputs (for the accounting).
   */
  record(
    inputs: readonly F32[], outputs: readonly F32[], backward: (dOutputs: F32[]) => Promise<readonly (F32 | null)[]>,
    saved: readonly unknown[] = [],
  ): void {
    const held = this.account ? this.account.hold([inputs, outputs, saved]) : -1;
    this.records.push({ inputs, outputs, backward, held });
  }

  get length(): number {
    return this.records.length;
  }

  /**
   * Replay in reverse from the given output gradients. Returns the gradient reached for every
   * buffer (leaves included). The records are consumed: a tape is replayed once.
   */
  async backward(seeds: ReadonlyArray<readonly [F32, F32]>): Promise<Map<F32, F32>> {
    const grads = new Map<F32, F32>();
    const accumulate = (buf: F32, g: F32): void => {
      const have = grads.get(buf);
      if (!have) {
        if (g.length !== buf.length) throw new Error(`tape: gradient of length ${g.length} for a buffer of ${buf.length}`);
        grads.set(buf, g);
        return;
      }
      this.add(have, g);
    };
    for (const [buf, g] of seeds) accumulate(buf, Float32Array.from(g));
    while (this.records.length > 0) {
      const rec = this.records.pop() as TapeRecord;
      let any = false;
      const dOut = rec.outputs.map((o) => {
        const g = grads.get(o);
        if (g) any = true;
        return g ?? new Float32Array(o.length);
      });
      if (any) {
        const dIn = await rec.backward(dOut);
        rec.inputs.forEach((inp, i) => {
          const g = dIn[i];
          if (g) accumulate(inp, g);
        });
        for (const o of rec.outputs) grads.delete(o);
      }
      if (rec.held >= 0) this.account?.release(rec.held);
    }
    return grads;
  }
}
