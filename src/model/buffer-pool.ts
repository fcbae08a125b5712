// Freed typed arrays kept for reuse by exact element count: a tensor of a shape seen before is
// read or drawn into pages already faulted in (a fresh multi-MB buffer costs its page faults and,
// in the merge, garbage collections). Used by the merge (byte buffers) and init-model (float32).

type Typed = Uint8Array | Float32Array;

/** At most `keepBytes` of free buffers, the oldest dropped first; a larger one is never kept. */
export class BufferPool<T extends Typed> {
  private readonly free: T[] = [];
  private bytes = 0;
  constructor(private readonly make: (n: number) => T, private readonly keepBytes: number) {}
  /** a buffer of n elements: a kept one (its old contents) or a fresh one (zeros) */
  take = (n: number): T => {
    const i = this.free.findIndex((b) => b.length === n);
    if (i < 0) return this.make(n);
    this.bytes -= this.free[i]!.byteLength;
    return this.free.splice(i, 1)[0]!;
  };
  /** `b` is no longer used by the caller */
  give = (b: T): void => {
    if (b.byteLength > this.keepBytes) return;
    this.free.push(b);
    this.bytes += b.byteLength;
    while (this.bytes > this.keepBytes) this.bytes -= this.free.shift()!.byteLength;
  };
}
