// Exact-duplicate detection in bounded memory per document: an open-addressing hash map from a
// document's 64-bit fingerprint (the first 8 bytes of its sha256) to where it was first seen.
// 16 bytes a slot at a load of at most 1/2: 16–32 bytes per unique document. Two different
// documents share a fingerprint with probability about n²/2⁶⁵ (1e-6 at 6 million documents).

export class FingerprintMap {
  private hi = new Uint32Array(1024);
  private lo = new Uint32Array(1024);
  private val = new Float64Array(1024);
  size = 0;

  /** Bytes held by the table. */
  get bytes(): number {
    return this.hi.byteLength + this.lo.byteLength + this.val.byteLength;
  }

  private slot(hi: number, lo: number): number {
    const mask = this.hi.length - 1;
    let i = (Math.imul(lo ^ hi, 0x9e3779b1) >>> 0) & mask;
    while (this.hi[i] !== 0 || this.lo[i] !== 0) {
      if (this.hi[i] === hi && this.lo[i] === lo) return i;
      i = (i + 1) & mask;
    }
    return i;
  }

  /** The value stored for a fingerprint, or undefined. (0, 0) is stored as (0, 1). */
  get(hi: number, lo: number): number | undefined {
    if (hi === 0 && lo === 0) lo = 1;
    const i = this.slot(hi, lo);
    return this.hi[i] === 0 && this.lo[i] === 0 ? undefined : this.val[i];
  }

  /** Store a value for a fingerprint that is not in the map yet. */
  add(hi: number, lo: number, value: number): void {
    if (hi === 0 && lo === 0) lo = 1;
    if ((this.size + 1) * 2 > this.hi.length) this.grow();
    const i = this.slot(hi, lo);
    if (this.hi[i] === 0 && this.lo[i] === 0) this.size++;
    this.hi[i] = hi;
    this.lo[i] = lo;
    this.val[i] = value;
  }

  private grow(): void {
    const { hi, lo, val } = this;
    this.hi = new Uint32Array(hi.length * 2);
    this.lo = new Uint32Array(hi.length * 2);
    this.val = new Float64Array(hi.length * 2);
    for (let i = 0; i < hi.length; i++) {
      if (hi[i] === 0 && lo[i] === 0) continue;
      const j = this.slot(hi[i]!, lo[i]!);
      this.hi[j] = hi[i]!;
      this.lo[j] = lo[i]!;
      this.val[j] = val[i]!;
    }
  }
}

/** A uniform draw in [0, 1) from a 32-bit word of a document hash, the seed and a purpose. */
export function seededUniform(word: number, seed: number, salt: number): number {
  let h = (word ^ Math.imul(seed, 0x9e3779b9) ^ Math.imul(salt + 1, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 2 ** 32;
}
