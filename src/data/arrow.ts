// Arrow IPC (file format) shards: columns input_ids list<int32>, loss_mask list<uint8>,
// segment_ids list<uint16>, one row per packed row, and (datasets from format version 2)
// source_ids list<uint16>, doc_ids list<uint32> per document segment. Readable by pyarrow,
// polars, arrow-rs. prepare writes them with src/data/writer.ts; shardToIPC writes the first
// three columns (tests and tools that build a dataset by hand).
import { Field, Int32, List, Table, Uint16, Uint8, makeData, makeVector, tableFromIPC, tableToIPC, type Int, type Vector } from 'apache-arrow';
import { segmentLengths } from './pack.js';
import { V4tuneError } from '../errors.js';

type Values = Int32Array | Uint8Array | Uint16Array | Uint32Array;

/** A list column of `rows` lists, each `seqLen` long, over one flat value array. */
function listColumn<T extends Int>(type: T, values: T['TArray'], rows: number, seqLen: number): Vector<List<T>> {
  const offsets = new Int32Array(rows + 1);
  for (let r = 0; r <= rows; r++) offsets[r] = r * seqLen;
  const child = makeData({ type, length: values.length, nullCount: 0, data: values });
  const listType = new List<T>(new Field('item', type, false));
  const data = makeData({ type: listType, length: rows, nullCount: 0, valueOffsets: offsets, child });
  return makeVector(data);
}

/** Arrow IPC file bytes of rows [from, to) of packed arrays (row-major, `seqLen` per row). */
export function shardToIPC(ids: Int32Array, mask: Uint8Array, segmentIds: Uint16Array, seqLen: number, from: number, to: number): Uint8Array {
  const a = from * seqLen;
  const b = to * seqLen;
  const rows = to - from;
  const table = new Table({
    input_ids: listColumn(new Int32(), ids.subarray(a, b), rows, seqLen),
    loss_mask: listColumn(new Uint8(), mask.subarray(a, b), rows, seqLen),
    segment_ids: listColumn(new Uint16(), segmentIds.subarray(a, b), rows, seqLen),
  });
  return tableToIPC(table, 'file');
}

/** One row as read back: the model API's inputs. */
export interface DatasetRow {
  input_ids: Int32Array;
  loss_mask: Uint8Array;
  /** Run lengths of segment_ids (the `segments` argument of the model API). */
  segments: number[];
  segment_ids: Uint16Array;
  /** Per document segment: its source (an index into the manifest's sources); absent in older datasets. */
  source_ids?: Uint16Array;
  /** Per document segment: its document's record index within its source; absent in older datasets. */
  doc_ids?: Uint32Array;
}

interface FlatList<T extends Values> { values: T; offsets: Int32Array }

/** The flat values and offsets of a list column in one record batch. */
function flatList<T extends Values>(file: string, table: Table, name: string, batch: number, ctor: new (n: number) => T): FlatList<T> {
  const col = table.getChild(name);
  if (!col) throw new V4tuneError(`${file}: no column ${name}`);
  const data = col.data[batch];
  const child = data?.children[0];
  if (!data || !child || !(child.values instanceof ctor.prototype.constructor)) {
    throw new V4tuneError(`${file}: column ${name} is not a list of ${ctor.name.replace('Array', '').toLowerCase()}`);
  }
  const base = child.offset;
  const offsets = (data.valueOffsets as Int32Array).subarray(data.offset, data.offset + data.length + 1);
  return { values: (child.values as T).subarray(base) as T, offsets };
}

/** Read one shard's rows (copies, so rows outlive the file buffer). */
export function readShard(file: string, bytes: Uint8Array): DatasetRow[] {
  const table = tableFromIPC(bytes);
  const out: DatasetRow[] = [];
  for (let b = 0; b < table.batches.length; b++) {
    const ids = flatList(file, table, 'input_ids', b, Int32Array);
    const mask = flatList(file, table, 'loss_mask', b, Uint8Array);
    const seg = flatList(file, table, 'segment_ids', b, Uint16Array);
    const provenance = table.getChild('source_ids') !== null;
    const src = provenance ? flatList(file, table, 'source_ids', b, Uint16Array) : null;
    const doc = provenance ? flatList(file, table, 'doc_ids', b, Uint32Array) : null;
    const n = ids.offsets.length - 1;
    for (let r = 0; r < n; r++) {
      const s = ids.offsets[r]!;
      const e = ids.offsets[r + 1]!;
      const segment_ids = seg.values.slice(seg.offsets[r]!, seg.offsets[r + 1]!);
      out.push({
        input_ids: ids.values.slice(s, e),
        loss_mask: mask.values.slice(mask.offsets[r]!, mask.offsets[r + 1]!),
        segment_ids,
        segments: segmentLengths(segment_ids),
        ...(src && doc ? {
          source_ids: src.values.slice(src.offsets[r]!, src.offsets[r + 1]!),
          doc_ids: doc.values.slice(doc.offsets[r]!, doc.offsets[r + 1]!),
        } : {}),
      });
    }
  }
  return out;
}
