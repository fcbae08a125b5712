// Packing tokenized documents into rows of seq_len (design.md, "Segments"):
// - a document longer than seq_len is cut into chunks of seq_len (the last one shorter); bos
//   stays on the first chunk and eos on the last only, because the cut is on the token list;
// - packing: chunks go into rows by best-fit decreasing (longest first, each into the row whose
//   free space fits it most tightly), each chunk one segment; segment ids count from 0 per row;
// - no packing: one chunk per row;
// - every row is filled to seq_len with eos tokens as its last segment, loss mask 0.
import type { EncodedDocument } from './documents.js';

/** `rows` rows of `seqLen` tokens, row-major: ids, loss mask and segment ids. */
export interface PackedRows {
  seqLen: number;
  rows: number;
  ids: Int32Array;
  mask: Uint8Array;
  segmentIds: Uint16Array;
  /** Tokens of documents (not padding). */
  tokens: number;
  lossTokens: number;
  padTokens: number;
  /** Document segments (padding segments not counted). */
  segments: number;
  /** Documents that were cut into more than one chunk. */
  chunkedDocuments: number;
}

/** A chunk of a document: document index and token range [start, end). */
interface Piece { doc: number; start: number; end: number }

/** The largest segment count a row may hold, leaving one id for its padding (segment ids are uint16). */
const MAX_SEGMENTS = 65535;

/** Cut every document into chunks of at most seqLen tokens, in document order. */
export function chunkDocuments(docs: EncodedDocument[], seqLen: number): Piece[] {
  const pieces: Piece[] = [];
  docs.forEach((d, doc) => {
    for (let start = 0; start < d.ids.length; start += seqLen) pieces.push({ doc, start, end: Math.min(start + seqLen, d.ids.length) });
  });
  return pieces;
}

/**
 * Counts per free-space value r in [0, size), with "smallest r >= x whose count is non-zero" in
 * O(log size): a segment tree of counts over a power-of-two leaf range.
 */
class FreeSpaceIndex {
  private readonly leaves: number;
  private readonly tree: Int32Array;
  constructor(size: number) {
    let leaves = 1;
    while (leaves < size) leaves *= 2;
    this.leaves = leaves;
    this.tree = new Int32Array(2 * leaves);
  }
  add(r: number, delta: number): void {
    for (let i = r + this.leaves; i >= 1; i >>= 1) this.tree[i]! += delta;
  }
  /** Smallest r >= x with a non-zero count, or -1. */
  firstAtLeast(x: number): number {
    if (x >= this.leaves) return -1;
    // Walk up from leaf x to find the first subtree to the right (or x itself) holding a count.
    let i = x + this.leaves;
    if (this.tree[i]! > 0) return x;
    while (i > 1) {
      if ((i & 1) === 0 && this.tree[i + 1]! > 0) { i = i + 1; break; }
      i >>= 1;
    }
    if (i === 1) return -1;
    while (i < this.leaves) i = this.tree[2 * i]! > 0 ? 2 * i : 2 * i + 1;
    return i - this.leaves;
  }
}

/** Assign chunks to rows: lists of piece indices per row, in row order. */
function assignRows(pieces: Piece[], seqLen: number, packing: boolean): number[][] {
  if (!packing) return pieces.map((_, i) => [i]);
  const order = pieces.map((_, i) => i).sort((a, b) => (pieces[b]!.end - pieces[b]!.start) - (pieces[a]!.end - pieces[a]!.start));
  const rows: number[][] = [];
  const free: number[] = [];
  // rowsByFree.get(r): rows with exactly r free tokens (0 < r < seqLen) that can take another segment.
  const rowsByFree = new Map<number, number[]>();
  const index = new FreeSpaceIndex(seqLen);
  for (const p of order) {
    const len = pieces[p]!.end - pieces[p]!.start;
    const r = index.firstAtLeast(len);
    let row: number;
    if (r < 0) {
      row = rows.length;
      rows.push([]);
      free.push(seqLen);
    } else {
      const bucket = rowsByFree.get(r)!;
      row = bucket.pop()!;
      index.add(r, -1);
    }
    rows[row]!.push(p);
    free[row] = free[row]! - len;
    const left = free[row]!;
    if (left > 0 && rows[row]!.length < MAX_SEGMENTS) {
      let bucket = rowsByFree.get(left);
      if (!bucket) { bucket = []; rowsByFree.set(left, bucket); }
      bucket.push(row);
      index.add(left, 1);
    }
  }
  return rows;
}

/** Pack documents into rows; see the file header for the rules. */
export function packDocuments(docs: EncodedDocument[], seqLen: number, packing: boolean, eosId: number): PackedRows {
  if (seqLen < 2) throw new RangeError(`seq_len must be at least 2 (got ${seqLen})`);
  const pieces = chunkDocuments(docs, seqLen);
  const assignment = assignRows(pieces, seqLen, packing);
  const rows = assignment.length;
  const ids = new Int32Array(rows * seqLen);
  const mask = new Uint8Array(rows * seqLen);
  const segmentIds = new Uint16Array(rows * seqLen);
  let tokens = 0;
  let lossTokens = 0;
  assignment.forEach((row, r) => {
    let t = r * seqLen;
    row.forEach((p, s) => {
      const { doc, start, end } = pieces[p]!;
      const d = docs[doc]!;
      ids.set(d.ids.subarray(start, end), t);
      mask.set(d.mask.subarray(start, end), t);
      segmentIds.fill(s, t, t + end - start);
      for (let i = start; i < end; i++) lossTokens += d.mask[i]!;
      tokens += end - start;
      t += end - start;
    });
    const rowEnd = (r + 1) * seqLen;
    ids.fill(eosId, t, rowEnd);
    segmentIds.fill(row.length, t, rowEnd);
  });
  let chunkedDocuments = 0;
  for (const d of docs) if (d.ids.length > seqLen) chunkedDocuments++;
  return { seqLen, rows, ids, mask, segmentIds, tokens, lossTokens, padTokens: rows * seqLen - tokens, segments: pieces.length, chunkedDocuments };
}

/** Run lengths of one row's segment ids: the `segments` argument of the model API. */
export function segmentLengths(segmentIds: ArrayLike<number>): number[] {
  const out: number[] = [];
  let run = 0;
  for (let i = 0; i < segmentIds.length; i++) {
    if (i > 0 && segmentIds[i] !== segmentIds[i - 1]) { out.push(run); run = 0; }
    run++;
  }
  if (run > 0) out.push(run);
  return out;
}
