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

/** Assign chunks to rows: lists of piece indices per row, in row order. */
function assignRows(pieces: Piece[], seqLen: number, packing: boolean): number[][] {
  if (!packing) return pieces.map((_, i) => [i]);
  const order = pieces.map((_, i) => i).sort((a, b) => (pieces[b]!.end - pieces[b]!.start) - (pieces[a]!.end - pieces[a]!.start));
  const rows: number[][] = [];
  const free: number[] = [];
  // rowsByFree[r]: rows with exactly r free tokens (0 < r < seqLen) that can take another segment.
  const rowsByFree: number[][] = Array.from({ length: seqLen }, () => []);
  for (const p of order) {
    const len = pieces[p]!.end - pieces[p]!.start;
    let row = -1;
    for (let r = len; r < seqLen; r++) {
      const bucket = rowsByFree[r]!;
      if (bucket.length > 0) { row = bucket.pop()!; break; }
    }
    if (row < 0) { row = rows.length; rows.push([]); free.push(seqLen); }
    rows[row]!.push(p);
    free[row] = free[row]! - len;
    if (free[row]! > 0 && rows[row]!.length < MAX_SEGMENTS) rowsByFree[free[row]!]!.push(row);
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
