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

/** A tokenized document with where it came from (the `source_ids` / `doc_ids` of its segments). */
export interface SourcedEncoding extends EncodedDocument {
  source: number;
  doc: number;
}

/** One packed row: `seqLen` tokens, and the source and document of each document segment. */
export interface PackedRow {
  ids: Int32Array;
  mask: Uint8Array;
  segmentIds: Uint16Array;
  /** Per document segment (padding has none). */
  sourceIds: Uint16Array;
  docIds: Uint32Array;
}

/** Counts of what a packer has emitted (the manifest's per-split numbers). */
export interface PackStats {
  rows: number;
  tokens: number;
  lossTokens: number;
  padTokens: number;
  segments: number;
  chunkedDocuments: number;
}

interface StreamPiece { d: SourcedEncoding; start: number; end: number; order: number }
interface OpenRow { pieces: StreamPiece[]; free: number }

/**
 * Packing a stream of documents in bounded memory: chunks gather in a pending buffer; when it
 * holds `windowTokens / 2` tokens they are placed best-fit decreasing into the open rows (a new
 * row when none fits); full rows leave at once, and while more than `windowTokens / seqLen` rows
 * are open the fullest leave first. `finish()` places the rest and emits every open row. Rows
 * are emitted through `emit`, in an order that depends only on the documents' order.
 * Without packing each chunk is a row of its own.
 */
export class StreamPacker {
  readonly stats: PackStats = { rows: 0, tokens: 0, lossTokens: 0, padTokens: 0, segments: 0, chunkedDocuments: 0 };
  private pending: StreamPiece[] = [];
  private pendingTokens = 0;
  private order = 0;
  private readonly index: FreeSpaceIndex;
  private readonly byFree = new Map<number, OpenRow[]>();
  private open = 0;
  private readonly maxOpen: number;
  private readonly flushAt: number;

  constructor(private readonly seqLen: number, private readonly packing: boolean, private readonly eosId: number, windowTokens: number, private readonly emit: (row: PackedRow) => void) {
    if (seqLen < 2) throw new RangeError(`seq_len must be at least 2 (got ${seqLen})`);
    this.index = new FreeSpaceIndex(seqLen);
    this.maxOpen = Math.max(16, Math.floor(windowTokens / seqLen));
    this.flushAt = Math.max(seqLen, Math.floor(windowTokens / 2));
  }

  add(d: SourcedEncoding): void {
    const n = d.ids.length;
    if (n === 0) return;
    if (n > this.seqLen) this.stats.chunkedDocuments++;
    for (let start = 0; start < n; start += this.seqLen) {
      const piece = { d, start, end: Math.min(start + this.seqLen, n), order: this.order++ };
      if (!this.packing) { this.close({ pieces: [piece], free: this.seqLen - (piece.end - piece.start) }); continue; }
      this.pending.push(piece);
      this.pendingTokens += piece.end - piece.start;
    }
    if (this.pendingTokens >= this.flushAt) this.place();
  }

  finish(): void {
    this.place();
    const rows: OpenRow[] = [];
    for (const bucket of this.byFree.values()) rows.push(...bucket);
    rows.sort((a, b) => a.pieces[0]!.order - b.pieces[0]!.order);
    for (const r of rows) this.close(r);
    this.byFree.clear();
    this.open = 0;
  }

  private take(free: number): OpenRow {
    const bucket = this.byFree.get(free)!;
    const row = bucket.pop()!;
    if (bucket.length === 0) this.byFree.delete(free);
    this.index.add(free, -1);
    this.open--;
    return row;
  }

  private keep(row: OpenRow): void {
    if (row.free === 0 || row.pieces.length >= MAX_SEGMENTS) { this.close(row); return; }
    let bucket = this.byFree.get(row.free);
    if (!bucket) { bucket = []; this.byFree.set(row.free, bucket); }
    bucket.push(row);
    this.index.add(row.free, 1);
    this.open++;
  }

  private place(): void {
    const pieces = this.pending;
    this.pending = [];
    this.pendingTokens = 0;
    pieces.sort((a, b) => (b.end - b.start) - (a.end - a.start) || a.order - b.order);
    for (const p of pieces) {
      const len = p.end - p.start;
      const r = this.index.firstAtLeast(len);
      const row = r < 0 ? { pieces: [], free: this.seqLen } : this.take(r);
      row.pieces.push(p);
      row.free -= len;
      this.keep(row);
      while (this.open > this.maxOpen) this.close(this.take(this.index.firstAtLeast(1)));
    }
  }

  private close(row: OpenRow): void {
    const L = this.seqLen;
    const ids = new Int32Array(L);
    const mask = new Uint8Array(L);
    const segmentIds = new Uint16Array(L);
    const k = row.pieces.length;
    const sourceIds = new Uint16Array(k);
    const docIds = new Uint32Array(k);
    let t = 0;
    row.pieces.forEach((p, s) => {
      ids.set(p.d.ids.subarray(p.start, p.end), t);
      mask.set(p.d.mask.subarray(p.start, p.end), t);
      segmentIds.fill(s, t, t + p.end - p.start);
      for (let i = p.start; i < p.end; i++) this.stats.lossTokens += p.d.mask[i]!;
      sourceIds[s] = p.d.source;
      docIds[s] = p.d.doc;
      t += p.end - p.start;
    });
    ids.fill(this.eosId, t);
    segmentIds.fill(k, t);
    this.stats.rows++;
    this.stats.tokens += t;
    this.stats.padTokens += L - t;
    this.stats.segments += k;
    this.emit({ ids, mask, segmentIds, sourceIds, docIds });
  }
}
