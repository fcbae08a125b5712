// Writing one split's packed rows as they come, in record batches of about a million tokens:
//   <split>-NNNNN.arrow                     Arrow IPC *file* format, `shard_rows` rows each
//                                           (pyarrow.ipc.open_file, polars.read_ipc, v4tune)
//   <split>/data-NNNNN-of-MMMMM.arrow       the same rows as an Arrow IPC *stream* with HF
//                                           datasets' schema metadata (datasets.load_from_disk)
// Columns: input_ids list<int32>, loss_mask list<uint8>, segment_ids list<uint16> (seq_len per
// row), source_ids list<uint16> and doc_ids list<uint32> (one per document segment).
import { closeSync, mkdirSync, openSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import {
  Field, Int32, List, RecordBatch, RecordBatchFileWriter, RecordBatchStreamWriter, Schema, Struct, Uint16, Uint32, Uint8,
  makeData, type RecordBatchWriter,
} from 'apache-arrow';
import { V4tuneError } from '../errors.js';
import { withPath } from '../fsutil.js';
import type { PackedRow } from './pack.js';

export const COLUMNS = ['input_ids', 'loss_mask', 'segment_ids', 'source_ids', 'doc_ids'] as const;

const COLUMN_TYPES: Record<(typeof COLUMNS)[number], { arrow: () => Int32 | Uint8 | Uint16 | Uint32; dtype: string }> = {
  input_ids: { arrow: () => new Int32(), dtype: 'int32' },
  loss_mask: { arrow: () => new Uint8(), dtype: 'uint8' },
  segment_ids: { arrow: () => new Uint16(), dtype: 'uint16' },
  source_ids: { arrow: () => new Uint16(), dtype: 'uint16' },
  doc_ids: { arrow: () => new Uint32(), dtype: 'uint32' },
};

/** HF datasets' `features` of the columns (dataset_info.json and the schema's `huggingface` metadata). */
export function hfFeatures(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const c of COLUMNS) out[c] = { feature: { dtype: COLUMN_TYPES[c].dtype, _type: 'Value' }, _type: 'List' };
  return out;
}

/** The schema: fields non-nullable in the v4tune files, nullable (as HF writes them) in the HF ones. */
function schemaOf(hf: boolean): Schema {
  const fields = COLUMNS.map((c) => new Field(c, new List(new Field('item', COLUMN_TYPES[c].arrow(), hf)), hf));
  const metadata = hf ? new Map([['huggingface', JSON.stringify({ info: { features: hfFeatures() } })]]) : new Map<string, string>();
  return new Schema(fields, metadata);
}

type Values = Int32Array | Uint8Array | Uint16Array | Uint32Array;

function listData(field: Field, values: Values, offsets: Int32Array, rows: number) {
  const listType = field.type as List;
  const child = makeData({ type: listType.children[0]!.type as Int32, length: values.length, nullCount: 0, data: values as Int32Array });
  return makeData({ type: listType, length: rows, nullCount: 0, valueOffsets: offsets, child });
}

/** A record batch of `schema` over the given column values and offsets. */
function batchOf(schema: Schema, cols: { values: Values; offsets: Int32Array }[], rows: number): RecordBatch {
  const children = schema.fields.map((f, i) => listData(f, cols[i]!.values, cols[i]!.offsets, rows));
  const data = makeData({ type: new Struct(schema.fields), length: rows, nullCount: 0, children });
  return new RecordBatch(schema, data);
}

/** Bytes the writer has produced so far, taken out of its queue (apache-arrow keeps them in `_sink._values`). */
function drain(w: RecordBatchWriter): Uint8Array[] {
  const sink = (w as unknown as { _sink?: { _values?: Uint8Array[] } })._sink;
  if (!sink || !Array.isArray(sink._values)) throw new V4tuneError('apache-arrow\'s RecordBatchWriter changed: cannot stream its output');
  return sink._values.splice(0);
}

/** One output file written batch by batch. */
class IpcOut {
  private readonly fd: number;
  private readonly writer: RecordBatchWriter;
  constructor(readonly path: string, kind: 'file' | 'stream') {
    try { this.fd = openSync(path, 'w'); } catch (e) { throw withPath(e, path); }
    this.writer = kind === 'file' ? new RecordBatchFileWriter() : new RecordBatchStreamWriter();
  }
  private flush(): void {
    for (const chunk of drain(this.writer)) {
      try { writeSync(this.fd, chunk); } catch (e) { throw withPath(e, this.path); }
    }
  }
  write(batch: RecordBatch): void {
    this.writer.write(batch);
    this.flush();
  }
  close(): void {
    this.writer.finish();
    this.flush();
    closeSync(this.fd);
  }
}

const BATCH_TOKENS = 1 << 20;

export interface SplitFiles {
  /** The v4tune shards (IPC file format), relative to the dataset folder. */
  shards: string[];
  /** The HF stream files, relative to the split's HF folder. */
  hfFiles: string[];
  rows: number;
}

/** Rows of one split → shards (and HF stream files when `hf`), written as they come. */
export class SplitWriter {
  private readonly batchRows: number;
  private readonly schema = schemaOf(false);
  private readonly hfSchema = schemaOf(true);
  private rowsInBatch = 0;
  private rowsInShard = 0;
  private rows = 0;
  private ids: Int32Array;
  private mask: Uint8Array;
  private seg: Uint16Array;
  private src: number[] = [];
  private doc: number[] = [];
  private provOffsets: number[] = [0];
  private shard: IpcOut | null = null;
  private hfShard: IpcOut | null = null;
  private readonly shards: string[] = [];
  private readonly hfTemp: string[] = [];

  constructor(private readonly dir: string, private readonly split: string, private readonly seqLen: number, private readonly shardRows: number, private readonly hf: boolean) {
    this.batchRows = Math.max(1, Math.min(shardRows, Math.floor(BATCH_TOKENS / seqLen)));
    this.ids = new Int32Array(this.batchRows * seqLen);
    this.mask = new Uint8Array(this.batchRows * seqLen);
    this.seg = new Uint16Array(this.batchRows * seqLen);
    if (hf) mkdirSync(join(dir, split), { recursive: true });
  }

  add(row: PackedRow): void {
    const at = this.rowsInBatch * this.seqLen;
    this.ids.set(row.ids, at);
    this.mask.set(row.mask, at);
    this.seg.set(row.segmentIds, at);
    for (let i = 0; i < row.sourceIds.length; i++) { this.src.push(row.sourceIds[i]!); this.doc.push(row.docIds[i]!); }
    this.provOffsets.push(this.src.length);
    this.rowsInBatch++;
    if (this.rowsInBatch === this.batchRows || this.rowsInShard + this.rowsInBatch === this.shardRows) this.flushBatch();
  }

  private flushBatch(): void {
    const n = this.rowsInBatch;
    if (n === 0) return;
    if (this.shard === null) {
      const name = `${this.split}-${String(this.shards.length).padStart(5, '0')}.arrow`;
      this.shards.push(name);
      this.shard = new IpcOut(join(this.dir, name), 'file');
      if (this.hf) {
        const tmp = `data-${String(this.hfTemp.length).padStart(5, '0')}.arrow`;
        this.hfTemp.push(tmp);
        this.hfShard = new IpcOut(join(this.dir, this.split, tmp), 'stream');
      }
    }
    const L = this.seqLen;
    const fixed = new Int32Array(n + 1);
    for (let r = 0; r <= n; r++) fixed[r] = r * L;
    const prov = Int32Array.from(this.provOffsets);
    const cols = [
      { values: this.ids.subarray(0, n * L), offsets: fixed },
      { values: this.mask.subarray(0, n * L), offsets: fixed },
      { values: this.seg.subarray(0, n * L), offsets: fixed },
      { values: Uint16Array.from(this.src), offsets: prov },
      { values: Uint32Array.from(this.doc), offsets: prov },
    ];
    this.shard.write(batchOf(this.schema, cols, n));
    this.hfShard?.write(batchOf(this.hfSchema, cols, n));
    this.rows += n;
    this.rowsInShard += n;
    this.rowsInBatch = 0;
    // fresh buffers: the batch just written may still be referenced by the writer's queue
    this.ids = new Int32Array(this.batchRows * L);
    this.mask = new Uint8Array(this.batchRows * L);
    this.seg = new Uint16Array(this.batchRows * L);
    this.src = [];
    this.doc = [];
    this.provOffsets = [0];
    if (this.rowsInShard === this.shardRows) this.closeShard();
  }

  private closeShard(): void {
    this.shard?.close();
    this.hfShard?.close();
    this.shard = null;
    this.hfShard = null;
    this.rowsInShard = 0;
  }

  /** Write what is left, close the files, give the HF files their `-of-M` names. */
  finish(): SplitFiles {
    this.flushBatch();
    this.closeShard();
    const hfFiles: string[] = [];
    if (this.hf) {
      const total = Math.max(1, this.hfTemp.length);
      const name = (i: number): string => `data-${String(i).padStart(5, '0')}-of-${String(total).padStart(5, '0')}.arrow`;
      this.hfTemp.forEach((tmp, i) => renameSync(join(this.dir, this.split, tmp), join(this.dir, this.split, name(i))));
      if (this.hfTemp.length === 0) {
        // HF datasets cannot open a split without a file, nor a file without a batch: one empty batch
        const out = new IpcOut(join(this.dir, this.split, name(0)), 'stream');
        const none = { values: new Int32Array(0), offsets: new Int32Array(1) };
        out.write(batchOf(this.hfSchema, [none, { ...none, values: new Uint8Array(0) }, { ...none, values: new Uint16Array(0) }, { ...none, values: new Uint16Array(0) }, { ...none, values: new Uint32Array(0) }], 0));
        out.close();
      }
      for (let i = 0; i < total; i++) hfFiles.push(name(i));
    }
    return { shards: this.shards, hfFiles, rows: this.rows };
  }
}
