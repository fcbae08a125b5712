// Packing: no token lost or duplicated, long documents chunked (bos on the first chunk, eos on
// the last), segments numbered from 0 per row, padding as the last segment (eos, mask 0).
import { describe, expect, it } from 'vitest';
import { packDocuments, segmentLengths, StreamPacker, type PackedRow, type PackedRows } from '../../src/data/pack.js';
import type { EncodedDocument } from '../../src/data/documents.js';

const BOS = 0;
const EOS = 1;

/** A document of `n` tokens: bos, n-2 distinct body ids (tagged with the document), eos; mask varies, 1 on eos (as in real documents). */
function doc(k: number, n: number): EncodedDocument {
  const ids = new Int32Array(n);
  const mask = new Uint8Array(n);
  for (let i = 0; i < n; i++) { ids[i] = i === 0 ? BOS : i === n - 1 ? EOS : 1000 * (k + 1) + i; mask[i] = i === n - 1 || (i + k) % 3 !== 0 ? 1 : 0; }
  return { ids, mask };
}

/** Segments of the packed rows as [ids, mask] arrays, padding segments separately. */
function segmentsOf(p: PackedRows): { docs: { ids: number[]; mask: number[] }[]; pads: { ids: number[]; mask: number[] }[]; firstIds: number[] } {
  const docs: { ids: number[]; mask: number[] }[] = [];
  const pads: { ids: number[]; mask: number[] }[] = [];
  const firstIds: number[] = [];
  for (let r = 0; r < p.rows; r++) {
    const seg = p.segmentIds.subarray(r * p.seqLen, (r + 1) * p.seqLen);
    firstIds.push(seg[0]!);
    const lens = segmentLengths(seg);
    let t = r * p.seqLen;
    lens.forEach((len, k) => {
      const s = { ids: [...p.ids.subarray(t, t + len)], mask: [...p.mask.subarray(t, t + len)] };
      expect(seg[t - r * p.seqLen]).toBe(k);
      const pad = t + len === (r + 1) * p.seqLen && s.ids.every((x) => x === EOS) && s.mask.every((x) => x === 0) && k > 0;
      (pad ? pads : docs).push(s);
      t += len;
    });
  }
  return { docs, pads, firstIds };
}

/** The documents' chunks of at most seqLen tokens, as the packer must produce them. */
function expectedChunks(docs: EncodedDocument[], seqLen: number): { ids: number[]; mask: number[] }[] {
  const out: { ids: number[]; mask: number[] }[] = [];
  for (const d of docs) for (let s = 0; s < d.ids.length; s += seqLen) out.push({ ids: [...d.ids.subarray(s, s + seqLen)], mask: [...d.mask.subarray(s, s + seqLen)] });
  return out;
}

const key = (s: { ids: number[]; mask: number[] }): string => `${s.ids.join(',')}|${s.mask.join('')}`;

describe('packing', () => {
  const lengths = [5, 17, 3, 40, 9, 16, 2, 33, 7, 12, 64, 1 + 16 * 3, 11];
  const docs = lengths.map((n, k) => doc(k, n));

  it.each([[16, true], [16, false], [7, true], [64, true], [2, true]])('loses and duplicates no token (seq_len %i, packing %s)', (seqLen, packing) => {
    const p = packDocuments(docs, seqLen, packing, EOS);
    const { docs: segs, pads } = segmentsOf(p);
    expect(segs.map(key).sort()).toEqual(expectedChunks(docs, seqLen).map(key).sort());
    const total = lengths.reduce((a, b) => a + b, 0);
    expect(p.tokens).toBe(total);
    expect(p.padTokens).toBe(p.rows * seqLen - total);
    expect(pads.reduce((s, x) => s + x.ids.length, 0)).toBe(p.padTokens);
    expect(p.lossTokens).toBe(docs.reduce((s, d) => s + d.mask.reduce((a, b) => a + b, 0), 0));
    expect(p.ids.length).toBe(p.rows * seqLen);
  });

  it('cuts a long document into chunks: bos only on the first, eos only on the last', () => {
    const p = packDocuments([doc(0, 40)], 16, false, EOS);
    expect(p.rows).toBe(3);
    const row = (r: number): number[] => [...p.ids.subarray(r * 16, (r + 1) * 16)];
    expect(row(0)[0]).toBe(BOS);
    expect(row(1)[0]).not.toBe(BOS);
    expect(row(0)).not.toContain(EOS);
    expect(row(1)).not.toContain(EOS);
    expect(row(2).slice(0, 8)).toEqual([...doc(0, 40).ids.subarray(32)]);
    expect(row(2).slice(7)).toEqual(new Array(9).fill(EOS));
    expect(p.chunkedDocuments).toBe(1);
  });

  it('without packing puts one document per row, padded with eos as the last segment, loss mask 0', () => {
    const p = packDocuments([doc(0, 5), doc(1, 3)], 8, false, EOS);
    expect(p.rows).toBe(2);
    expect([...p.ids.subarray(0, 8)]).toEqual([...doc(0, 5).ids, EOS, EOS, EOS]);
    expect([...p.mask.subarray(5, 8)]).toEqual([0, 0, 0]);
    expect([...p.segmentIds.subarray(0, 8)]).toEqual([0, 0, 0, 0, 0, 1, 1, 1]);
    expect(segmentLengths(p.segmentIds.subarray(8, 16))).toEqual([3, 5]);
  });

  it('packs tighter than one document per row and numbers each row\'s segments from 0', () => {
    const packed = packDocuments(docs, 64, true, EOS);
    const single = packDocuments(docs, 64, false, EOS);
    expect(packed.rows).toBeLessThan(single.rows);
    expect(segmentsOf(packed).firstIds.every((s) => s === 0)).toBe(true);
    expect(packed.tokens / (packed.rows * 64)).toBeGreaterThan(0.8);
  });

  it('packs 3000 documents into 1M-token rows quickly and nearly as tightly as possible', () => {
    let seed = 1;
    const rand = (): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
    const many = Array.from({ length: 3000 }, (_, k) => doc(k, 2 + Math.floor(rand() * 5000)));
    const total = many.reduce((a, d) => a + d.ids.length, 0);
    const t0 = performance.now();
    const p = packDocuments(many, 1 << 20, true, EOS);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(p.tokens).toBe(total);
    expect(p.rows).toBeLessThanOrEqual(Math.ceil(total / (1 << 20)) + 1);
  });

  it('is deterministic', () => {
    const a = packDocuments(docs, 16, true, EOS);
    const b = packDocuments(docs, 16, true, EOS);
    expect(Buffer.from(a.ids.buffer).equals(Buffer.from(b.ids.buffer))).toBe(true);
  });
});

describe('streaming packer', () => {
  /** Rows of a StreamPacker over `docs` as one PackedRows (row order as emitted), with its stats and provenance. */
  function streamPack(docs: EncodedDocument[], seqLen: number, packing: boolean, windowTokens: number): { p: PackedRows; stats: StreamPacker['stats']; prov: [number, number][] } {
    const rows: PackedRow[] = [];
    const packer = new StreamPacker(seqLen, packing, EOS, windowTokens, (r) => rows.push(r));
    docs.forEach((d, i) => packer.add({ ...d, source: i % 2, doc: i }));
    packer.finish();
    const p: PackedRows = {
      seqLen, rows: rows.length, ids: new Int32Array(rows.length * seqLen), mask: new Uint8Array(rows.length * seqLen), segmentIds: new Uint16Array(rows.length * seqLen),
      tokens: 0, lossTokens: 0, padTokens: 0, segments: 0, chunkedDocuments: 0,
    };
    rows.forEach((r, i) => { p.ids.set(r.ids, i * seqLen); p.mask.set(r.mask, i * seqLen); p.segmentIds.set(r.segmentIds, i * seqLen); });
    const prov = rows.flatMap((r) => [...r.sourceIds].map((s, k) => [s, r.docIds[k]!] as [number, number]));
    return { p, stats: packer.stats, prov };
  }

  it('emits every chunk exactly once with its source and document, whatever the window; a small window packs nearly as tightly as packing all at once', () => {
    let seed = 5;
    const rand = (): number => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed / 2 ** 32; };
    const docs = Array.from({ length: 600 }, (_, k) => doc(k, 2 + Math.floor(rand() * 120)));
    const whole = packDocuments(docs, 64, true, EOS);
    for (const window of [64, 1024, 1 << 20]) {
      const { p, stats, prov } = streamPack(docs, 64, true, window);
      const got = segmentsOf(p);
      expect(got.docs.map(key).sort()).toEqual(expectedChunks(docs, 64).map(key).sort());
      expect(got.firstIds.every((x) => x === 0)).toBe(true);
      expect(stats.tokens).toBe(whole.tokens);
      expect(stats.lossTokens).toBe(whole.lossTokens);
      expect(stats.rows).toBe(p.rows);
      // each segment's provenance is its document: body ids carry the document's number
      got.docs.forEach((s, i) => {
        const body = s.ids.find((x) => x >= 1000);
        if (body !== undefined) expect(prov[i]![1]).toBe(Math.floor(body / 1000) - 1);
        expect(prov[i]![0]).toBe(prov[i]![1] % 2);
      });
      expect(p.rows).toBeLessThanOrEqual(Math.ceil(whole.rows * 1.1));
    }
  });

  it('without packing each chunk is its own row, in document order', () => {
    const docs = [doc(0, 5), doc(1, 20), doc(2, 3)];
    const { p, prov } = streamPack(docs, 8, false, 1 << 20);
    expect(p.rows).toBe(1 + 3 + 1);
    expect(prov.map(([, d]) => d)).toEqual([0, 1, 1, 1, 2]);
  });
});
