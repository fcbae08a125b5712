// The tape: the model's forward records each op it ran (its differentiable inputs, its outputs,
// and a closure over the op's backward); `backward` replays the records in reverse, handing each
// the gradients of its outputs and accumulating what it returns into its inputs' gradients.
// Buffers are identified by object identity; a buffer no record produced is a leaf.
import type { F32 } from './ops.js';

interface TapeRecord {
  readonly inputs: readonly F32[];
  readonly outputs: readonly F32[];
  readonly backward: (dOutputs: F32[]) => Promise<readonly (F32 | null)[]>;
}

export class Tape {
  private readonly records: TapeRecord[] = [];

  /** Record one op: `backward` gets d(outputs) (zeros where nothing flowed) and returns d(inputs). */
  record(inputs: readonly F32[], outputs: readonly F32[], backward: (dOutputs: F32[]) => Promise<readonly (F32 | null)[]>): void {
    this.records.push({ inputs, outputs, backward });
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
      for (let i = 0; i < g.length; i++) have[i] += g[i];
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
      if (!any) continue;
      const dIn = await rec.backward(dOut);
      rec.inputs.forEach((inp, i) => {
        const g = dIn[i];
        if (g) accumulate(inp, g);
      });
      for (const o of rec.outputs) grads.delete(o);
    }
    return grads;
  }
}
