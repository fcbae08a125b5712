// The order rows are drawn in: epoch after epoch over the train split, each epoch a seeded
// shuffle. The permutation of epoch e depends only on (seed, e), so the whole state of the order
// (and of its random numbers) is the position {epoch, cursor}: a resumed run draws the same rows.
import { tensorRng } from '../random.js';

/** Where the order stands: the next row is permutation(epoch)[cursor]. */
export interface OrderState {
  epoch: number;
  cursor: number;
}

/** Fisher–Yates shuffle of 0 … n−1 from the uniform stream `rng`. */
export function shuffled(n: number, rng: () => number): Uint32Array {
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const t = p[i]!;
    p[i] = p[j]!;
    p[j] = t;
  }
  return p;
}

/** The row order of epoch `epoch` of a split of n rows under `seed`. */
export function epochPermutation(n: number, seed: number, epoch: number): Uint32Array {
  return shuffled(n, tensorRng(seed, `train-order:epoch-${epoch}`));
}

export class DataOrder {
  private perm: Uint32Array;
  private state: OrderState;

  constructor(readonly rows: number, readonly seed: number, start: OrderState = { epoch: 0, cursor: 0 }) {
    if (rows < 1) throw new RangeError('DataOrder: the split has no rows');
    this.state = { ...start };
    this.perm = epochPermutation(rows, seed, start.epoch);
  }

  /** The next n row indices (crossing into the next epoch, reshuffled, when one ends). */
  take(n: number): number[] {
    const out: number[] = [];
    while (out.length < n) {
      if (this.state.cursor >= this.rows) {
        this.state = { epoch: this.state.epoch + 1, cursor: 0 };
        this.perm = epochPermutation(this.rows, this.seed, this.state.epoch);
      }
      out.push(this.perm[this.state.cursor++]!);
    }
    return out;
  }

  position(): OrderState {
    return { ...this.state };
  }
}
