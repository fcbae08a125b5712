// Reading a prepared dataset folder: the manifest, its tokenizer, and its rows per split.
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { Message, RecordBatchReader, type AsyncRecordBatchFileReader } from 'apache-arrow';
import { InputError } from '../errors.js';
import { readJsonFile } from '../fsutil.js';
import { readShard, type DatasetRow } from './arrow.js';
import { DATASET_FORMAT, type DatasetManifest } from './manifest.js';
import { segmentLengths } from './pack.js';
import { loadTokenizer, type TextTokenizer } from './tokenizer.js';

export type { DatasetRow } from './arrow.js';
export type Split = 'train' | 'eval';

export interface Dataset {
  dir: string;
  manifest: DatasetManifest;
  /** Path of the dataset's own copy of its tokenizer. */
  tokenizerPath: string;
  /** Rows of a split, shard by shard, in order. */
  rows(split: Split): Iterable<DatasetRow>;
  rowCount(split: Split): number;
  /** The dataset's tokenizer (loaded on first use). */
  tokenizer(): Promise<TextTokenizer>;
}

/** Open a dataset folder written by `prepare`; a folder that is not one is an InputError. */
export function openDataset(dir: string): Dataset {
  const mpath = join(dir, 'manifest.json');
  if (!existsSync(mpath)) throw new InputError(`${dir}: not a v4tune dataset (no manifest.json)`);
  const manifest = readJsonFile(mpath) as DatasetManifest;
  if (manifest.format !== DATASET_FORMAT) throw new InputError(`${mpath}: format is ${JSON.stringify(manifest.format)}, expected "${DATASET_FORMAT}"`);
  for (const f of [...manifest.splits.train.shards, ...manifest.splits.eval.shards]) {
    if (!existsSync(join(dir, f))) throw new InputError(`${join(dir, f)}: shard listed in the manifest is missing`);
  }
  const tokenizerPath = join(dir, manifest.tokenizer.file);
  let tok: Promise<TextTokenizer> | null = null;
  return {
    dir,
    manifest,
    tokenizerPath,
    rowCount: (split) => manifest.splits[split].rows,
    *rows(split) {
      for (const shard of manifest.splits[split].shards) {
        const path = join(dir, shard);
        yield* readShard(path, readFileSync(path));
      }
    },
    tokenizer: () => (tok ??= loadTokenizer(tokenizerPath)),
  };
}

/** A split's rows by index, each read from its shard only when asked for (openRowReader). */
export interface RowReader {
  readonly length: number;
  get(i: number): DatasetRow;
  /** rows read so far (a row read twice counts twice) and the bytes read for them */
  readonly stats: { rows: number; bytes: number };
  close(): void;
}

/** One record batch of a shard: where its body starts, its rows, its buffers' places in the body. */
interface BatchPlace {
  fd: number;
  file: string;
  first: number;
  rows: number;
  body: number;
  buffers: { offset: number; length: number }[];
}

const COLUMNS = [
  ['input_ids', Int32Array],
  ['loss_mask', Uint8Array],
  ['segment_ids', Uint16Array],
  ['source_ids', Uint16Array],
  ['doc_ids', Uint32Array],
] as const;

/**
 * The rows of a split, read one by one from the Arrow IPC files: opening reads each shard's
 * footer and its record batches' headers (row counts, buffer places); `get(i)` then reads row
 * i's slices of its columns (two offsets and the values of each) and nothing else, so a reader
 * that asks for a subset of the rows (a rank of a distributed run) reads only those.
 */
export async function openRowReader(ds: Dataset, split: Split): Promise<RowReader> {
  const batches: BatchPlace[] = [];
  const fds: number[] = [];
  let columns = 0;
  let total = 0;
  try {
    for (const shard of ds.manifest.splits[split].shards) {
      const file = join(ds.dir, shard);
      const fh = await open(file);
      let reader: AsyncRecordBatchFileReader;
      try {
        reader = (await RecordBatchReader.from(fh)) as AsyncRecordBatchFileReader;
        await reader.open();
      } catch (e) {
        await fh.close();
        throw new InputError(`${file}: not an Arrow IPC file (${(e as Error).message})`);
      }
      const fields = reader.schema.fields;
      const n = fields.length >= 5 && fields[3]!.name === 'source_ids' ? 5 : 3;
      for (let c = 0; c < n; c++) {
        const [name, ctor] = COLUMNS[c]!;
        const child = fields[c]?.type.children?.[0]?.type as { bitWidth?: number } | undefined;
        if (fields[c]?.name !== name || child?.bitWidth !== 8 * ctor.BYTES_PER_ELEMENT) {
          await fh.close();
          throw new InputError(`${file}: column ${c} must be ${name}, a list of ${ctor.name.replace('Array', '').toLowerCase()} (got ${fields[c]?.name ?? 'none'}: ${String(fields[c]?.type ?? '')})`);
        }
      }
      if (columns !== 0 && n !== columns) throw new InputError(`${file}: ${n} columns, the split's earlier shards have ${columns}`);
      columns = n;
      const blocks = Array.from({ length: reader.numRecordBatches }, (_, b) => reader.footer!.getRecordBatch(b)!);
      await fh.close();
      const fd = openSync(file, 'r');
      fds.push(fd);
      for (const blk of blocks) {
        const meta = Buffer.alloc(blk.metaDataLength);
        readSync(fd, meta, 0, blk.metaDataLength, Number(blk.offset));
        // an encapsulated message: 0xFFFFFFFF, its metadata length, the flatbuffer
        const msg = Message.decode(meta.subarray(meta.readInt32LE(0) === -1 ? 8 : 4));
        const h = msg.header() as { length: number; compression: unknown; buffers: { offset: bigint | number; length: bigint | number }[] } | null;
        if (!msg.isRecordBatch() || !h) throw new InputError(`${file}: record batch at byte ${blk.offset} is not a record batch message`);
        if (h.compression) throw new InputError(`${file}: compressed record batches are not read row by row (prepare writes them uncompressed)`);
        batches.push({
          fd, file, first: total, rows: Number(h.length), body: Number(blk.offset) + blk.metaDataLength,
          buffers: h.buffers.map((x) => ({ offset: Number(x.offset), length: Number(x.length) })),
        });
        total += Number(h.length);
      }
    }
  } catch (e) {
    for (const fd of fds) closeSync(fd);
    throw e;
  }
  if (total !== ds.manifest.splits[split].rows) {
    for (const fd of fds) closeSync(fd);
    throw new InputError(`${join(ds.dir, 'manifest.json')}: splits.${split}.rows is ${ds.manifest.splits[split].rows} but its shards hold ${total} rows`);
  }
  const stats = { rows: 0, bytes: 0 };
  const read = (b: BatchPlace, at: number, bytes: number): ArrayBuffer => {
    const out = new ArrayBuffer(bytes);
    if (bytes > 0 && readSync(b.fd, new Uint8Array(out), 0, bytes, b.body + at) !== bytes) throw new InputError(`${b.file}: cut short (a record batch ends past the end of the file)`);
    stats.bytes += bytes;
    return out;
  };
  const column = <T extends Uint8Array | Uint16Array | Int32Array | Uint32Array>(b: BatchPlace, c: number, r: number, ctor: { new (b: ArrayBuffer): T; BYTES_PER_ELEMENT: number }): T => {
    // a list column's buffers: validity, offsets, the child's validity, values
    const [s, e] = new Int32Array(read(b, b.buffers[4 * c + 1]!.offset + 4 * r, 8)) as unknown as [number, number];
    return new ctor(read(b, b.buffers[4 * c + 3]!.offset + s * ctor.BYTES_PER_ELEMENT, (e - s) * ctor.BYTES_PER_ELEMENT));
  };
  return {
    length: total,
    stats,
    get(i) {
      if (!Number.isInteger(i) || i < 0 || i >= total) throw new RangeError(`row ${i} of a split of ${total} rows`);
      let lo = 0;
      let hi = batches.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (batches[mid]!.first <= i) lo = mid;
        else hi = mid - 1;
      }
      const b = batches[lo]!;
      const r = i - b.first;
      const segment_ids = column(b, 2, r, Uint16Array);
      stats.rows++;
      return {
        input_ids: column(b, 0, r, Int32Array),
        loss_mask: column(b, 1, r, Uint8Array),
        segment_ids,
        segments: segmentLengths(segment_ids),
        ...(columns === 5 ? { source_ids: column(b, 3, r, Uint16Array), doc_ids: column(b, 4, r, Uint32Array) } : {}),
      };
    },
    close() {
      for (const fd of fds.splice(0)) closeSync(fd);
    },
  };
}
