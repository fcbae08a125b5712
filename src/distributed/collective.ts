// The collectives a distributed run needs, on host buffers, behind one small interface: MPI
// implements it (mpi.ts, the system's Open MPI or MPICH through native/mpi), one process
// implements it trivially (below), and another engine (HCCL on Ascend) can take MPI's place.
// Every collective is called by every rank, in the same order, with buffers of the same type.

/** A host buffer a collective reads or writes. */
export type HostBuffer = Float32Array | Float64Array | Int32Array | Uint8Array;

/** What a rank has sent through collectives so far (for the per-step log and the benchmark). */
export interface Traffic {
  /**
   * Payload bytes: an allreduce counts its buffer once (what a ring allreduce moves per rank is
   * 2(P−1)/P of it); alltoallv/allgatherv/broadcast count what this rank sends to other ranks.
   */
  bytes: number;
  calls: number;
}

export interface Collective {
  /** this process's rank, 0 … size−1 */
  readonly rank: number;
  readonly size: number;
  /** 'single process', 'MPI (Open MPI v4.1.4 …)' */
  readonly engine: string;
  readonly traffic: Traffic;
  /** buf ← Σ over ranks of buf, in place, on every rank */
  allreduceSum(buf: Float32Array | Float64Array | Int32Array): Promise<void>;
  /** rank 0's send, then rank 1's, …; counts[r]: rank r's send length */
  allgatherv<T extends HostBuffer>(send: T, counts: ArrayLike<number>): Promise<T>;
  /**
   * The block of sendCounts[q] elements at its offset in `send` goes to rank q; returns rank 0's
   * block to this rank, then rank 1's, … and their lengths (exchanged first with an alltoall).
   */
  alltoallv<T extends HostBuffer>(send: T, sendCounts: ArrayLike<number>): Promise<{ recv: T; recvCounts: Int32Array }>;
  /** every rank's buf ← root's */
  broadcast(buf: HostBuffer, root: number): Promise<void>;
  barrier(): Promise<void>;
  /** End every rank of the job now with exit code `code` (never returns). */
  abort(code: number): never;
  /** Leave the job cleanly (after the last collective, on success). */
  finalize(): void;
}

/** A zeroed buffer of `like`'s element type and n elements. */
export function sameKind<T extends HostBuffer>(like: T, n: number): T {
  return new (like.constructor as new (n: number) => T)(n);
}

/** The world of one process: every collective is the identity. */
export class SingleProcess implements Collective {
  readonly rank = 0;
  readonly size = 1;
  readonly engine = 'single process';
  readonly traffic: Traffic = { bytes: 0, calls: 0 };

  async allreduceSum(): Promise<void> {}

  async allgatherv<T extends HostBuffer>(send: T, counts: ArrayLike<number>): Promise<T> {
    return send.slice(0, counts[0]!) as T;
  }

  async alltoallv<T extends HostBuffer>(send: T, sendCounts: ArrayLike<number>): Promise<{ recv: T; recvCounts: Int32Array }> {
    const n = sendCounts[0]!;
    return { recv: send.slice(0, n) as T, recvCounts: Int32Array.of(n) };
  }

  async broadcast(): Promise<void> {}
  async barrier(): Promise<void> {}

  abort(code: number): never {
    process.exit(code);
  }

  finalize(): void {}
}

/** Element counts → their offsets (exclusive prefix sums) and the total. */
export function offsetsOf(counts: ArrayLike<number>): { offsets: Int32Array; total: number } {
  const offsets = new Int32Array(counts.length);
  let t = 0;
  for (let i = 0; i < counts.length; i++) {
    offsets[i] = t;
    t += counts[i]!;
  }
  return { offsets, total: t };
}
