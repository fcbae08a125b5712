// Reading corpus files record by record, in bounded memory: the file kinds (containers) a source
// can hold and a streaming reader for each.
//   text     one record: the whole file (a .txt is one document; it is read whole)
//   jsonl    one JSON value per line, read in 1 MiB chunks
//   json     one JSON array of records, cut into elements by a streaming scanner (each element
//            parsed on its own, so the array is never held whole)
//   parquet  rows through hyparquet, one row group at a time
// A record that cannot be read (malformed JSON, invalid UTF-8 in a line) comes back with `error`
// set, so the caller can count it as a bad record; a file that cannot be read at all is an
// InputError naming it.
import { closeSync, openSync, readSync } from 'node:fs';
import { extname } from 'node:path';
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from 'hyparquet';
import { InputError } from '../errors.js';
import { decodeUtf8, firstInvalidUtf8 } from './utf8.js';

export type Container = 'text' | 'jsonl' | 'json' | 'parquet';

/** One record of a file: `index` counts from 0 in file order (a JSONL line number minus one). */
export interface RawRecord {
  index: number;
  /** Where it is, for messages: `file:line` (JSONL, JSON), `file: row N` (Parquet), `file` (text). */
  where: string;
  /** The parsed JSON value or Parquet row. */
  value?: unknown;
  /** The text of a text file. */
  text?: string;
  /** Why the record cannot be read (the caller counts it as bad). */
  error?: string;
}

const TEXT_EXT = new Set(['.txt', '.text', '.md']);
const JSONL_EXT = new Set(['.jsonl', '.ndjson']);
const CHUNK = 1 << 20;

function readChunk(fd: number, buf: Buffer, path: string): number {
  try {
    return readSync(fd, buf, 0, buf.length, null);
  } catch (e) {
    throw new InputError(`${path}: cannot read the corpus file (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
}

function openFile(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new InputError(`${path}: ${code === 'ENOENT' ? 'no such corpus file' : `cannot read the corpus file (${code ?? String(e)})`}`);
  }
}

/** The first bytes of a file (for content detection). */
function head(path: string, n: number): Buffer {
  const fd = openFile(path);
  try {
    const buf = Buffer.alloc(n);
    const got = readChunk(fd, buf, path);
    return buf.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

/** The container of a file of JSON records by its first bytes: Parquet magic, `[` an array, else lines. */
function sniffRecords(path: string): Container {
  const b = head(path, 4096);
  if (b.length >= 4 && b.toString('latin1', 0, 4) === 'PAR1') return 'parquet';
  let i = b.length >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf ? 3 : 0;
  while (i < b.length && (b[i] === 0x20 || b[i] === 0x0a || b[i] === 0x0d || b[i] === 0x09)) i++;
  return b[i] === 0x5b ? 'json' : 'jsonl';
}

/**
 * The container of `path`: by extension (.txt/.text/.md text, .jsonl/.ndjson JSON lines, .json a
 * JSON array, or JSON lines when it starts with `{`, .parquet Parquet); any other extension is
 * read as text when the source declares `format: text`, by content when it declares a record
 * format, and refused under `auto`.
 */
export function containerOf(path: string, declared: string): Container {
  const ext = extname(path).toLowerCase();
  if (ext === '.parquet') return 'parquet';
  if (JSONL_EXT.has(ext)) return 'jsonl';
  if (ext === '.json') return sniffRecords(path) === 'json' ? 'json' : 'jsonl';
  if (TEXT_EXT.has(ext)) return declared === 'auto' || declared === 'text' ? 'text' : sniffRecords(path);
  if (declared === 'text') return 'text';
  if (declared !== 'auto') return sniffRecords(path);
  throw new InputError(`${path}: unknown corpus file extension "${ext || '(none)'}": v4tune reads .txt/.text/.md (text), .jsonl/.ndjson, .json and .parquet; declare the source's \`format\` (text, jsonl, chat, sharegpt, alpaca) to read it anyway`);
}

function parseJson(text: string, where: string, index: number, what: string): RawRecord {
  try {
    return { index, where, value: JSON.parse(text) as unknown };
  } catch (e) {
    return { index, where, error: `malformed ${what} (${(e as Error).message})` };
  }
}

/** Lines of a file as byte buffers, without their newline (and a trailing \r kept for JSON to ignore). */
function* lines(path: string): Generator<Buffer> {
  const fd = openFile(path);
  try {
    const buf = Buffer.alloc(CHUNK);
    let carry: Buffer[] = [];
    for (;;) {
      const got = readChunk(fd, buf, path);
      if (got === 0) break;
      let start = 0;
      for (;;) {
        const nl = buf.indexOf(0x0a, start);
        if (nl < 0 || nl >= got) break;
        const piece = buf.subarray(start, nl);
        yield carry.length > 0 ? Buffer.concat([...carry, piece]) : Buffer.from(piece);
        carry = [];
        start = nl + 1;
      }
      if (start < got) carry.push(Buffer.from(buf.subarray(start, got)));
    }
    if (carry.length > 0) yield Buffer.concat(carry);
  } finally {
    closeSync(fd);
  }
}

function* jsonlRecords(path: string): Generator<RawRecord> {
  let index = 0;
  for (const line of lines(path)) {
    const i = index++;
    const where = `${path}:${i + 1}`;
    const text = decodeUtf8(line);
    if (text === undefined) { yield { index: i, where, error: `not valid UTF-8 at byte ${firstInvalidUtf8(line)} of the line` }; continue; }
    if (text.trim() === '') continue;
    const rec = parseJson(text, where, i, 'JSONL');
    yield rec;
  }
}

/**
 * A JSON array's elements, each parsed on its own: a scanner tracks strings, escapes and depth,
 * so an element's bytes are cut out without parsing the whole file.
 */
function* jsonArrayRecords(path: string): Generator<RawRecord> {
  const fd = openFile(path);
  try {
    const buf = Buffer.alloc(CHUNK);
    let state: 'before' | 'between' | 'element' | 'after' = 'before';
    let depth = 0;
    let inString = false;
    let escape = false;
    let line = 1;
    let startLine = 1;
    let parts: Buffer[] = [];
    let partStart = 0;
    let index = 0;
    let offset = 0;
    const bad = (what: string): never => { throw new InputError(`${path}:${line}: not a JSON array of records (${what})`); };
    const finish = function* (b: Buffer, end: number): Generator<RawRecord> {
      parts.push(b.subarray(partStart, end));
      const bytes = Buffer.concat(parts);
      parts = [];
      const where = `${path}:${startLine}`;
      const text = decodeUtf8(bytes);
      if (text === undefined) yield { index, where, error: `not valid UTF-8 at byte ${firstInvalidUtf8(bytes)} of the record` };
      else yield parseJson(text, where, index, 'JSON record');
      index++;
    };
    for (;;) {
      const got = readChunk(fd, buf, path);
      if (got === 0) break;
      let i = offset === 0 && got >= 3 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf ? 3 : 0;
      offset += got;
      partStart = 0;
      for (; i < got; i++) {
        const c = buf[i]!;
        if (c === 0x0a) line++;
        if (state === 'element') {
          if (inString) {
            if (escape) escape = false;
            else if (c === 0x5c) escape = true;
            else if (c === 0x22) inString = false;
            continue;
          }
          if (c === 0x22) inString = true;
          else if (c === 0x5b || c === 0x7b) depth++;
          else if (c === 0x5d || c === 0x7d) {
            if (depth === 0) { yield* finish(buf, i); state = 'after'; continue; }
            depth--;
          } else if (c === 0x2c && depth === 0) { yield* finish(buf, i); state = 'between'; }
          continue;
        }
        if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) continue;
        if (state === 'before') { if (c !== 0x5b) bad(c === 0x7b ? 'the file is one object; expected [ {...}, {...} ]' : `it starts with "${String.fromCharCode(c)}"`); state = 'between'; continue; }
        if (state === 'after') bad('text after the closing ]');
        if (c === 0x5d) { if (index === 0) { state = 'after'; continue; } bad('a trailing comma'); }
        if (c === 0x2c) bad('an empty element');
        state = 'element';
        depth = 0;
        startLine = line;
        partStart = i;
        if (c === 0x22) inString = true;
        else if (c === 0x5b || c === 0x7b) depth = 1;
      }
      if (state === 'element') { parts.push(Buffer.from(buf.subarray(partStart, got))); }
    }
    const end = state as string;
    if (end !== 'after') bad(end === 'before' ? 'the file is empty' : 'the array is not closed');
  } finally {
    closeSync(fd);
  }
}

function* textRecord(path: string): Generator<RawRecord> {
  const fd = openFile(path);
  const parts: Buffer[] = [];
  try {
    const buf = Buffer.alloc(CHUNK);
    for (;;) {
      const got = readChunk(fd, buf, path);
      if (got === 0) break;
      parts.push(Buffer.from(buf.subarray(0, got)));
    }
  } finally {
    closeSync(fd);
  }
  const bytes = Buffer.concat(parts);
  const text = decodeUtf8(bytes);
  if (text === undefined) {
    const at = firstInvalidUtf8(bytes);
    let line = 1;
    for (let i = 0; i < at; i++) if (bytes[i] === 0x0a) line++;
    throw new InputError(`${path}: not valid UTF-8 at byte ${at} (line ${line})`);
  }
  yield { index: 0, where: path, text };
}

/** Parquet values JSON cannot hold (bigint counts, byte arrays) as plain values. */
function plain(v: unknown): unknown {
  if (typeof v === 'bigint') return Number(v);
  if (Array.isArray(v)) return v.map(plain);
  if (v instanceof Uint8Array) return Buffer.from(v).toString('utf8');
  if (v && typeof v === 'object' && !(v instanceof Date)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = plain(x);
    return out;
  }
  return v;
}

async function* parquetRecords(path: string): AsyncGenerator<RawRecord> {
  let file: Awaited<ReturnType<typeof asyncBufferFromFile>>;
  let metadata: Awaited<ReturnType<typeof parquetMetadataAsync>>;
  try {
    file = await asyncBufferFromFile(path);
    metadata = await parquetMetadataAsync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code) throw new InputError(`${path}: cannot read the corpus file (${(e as NodeJS.ErrnoException).code})`);
    throw new InputError(`${path}: not a Parquet file (${(e as Error).message})`);
  }
  let rowStart = 0;
  for (const group of metadata.row_groups) {
    const rowEnd = rowStart + Number(group.num_rows);
    let rows: Record<string, unknown>[];
    try {
      rows = await parquetReadObjects({ file, metadata, rowStart, rowEnd });
    } catch (e) {
      throw new InputError(`${path}: cannot read Parquet rows ${rowStart}–${rowEnd - 1} (${(e as Error).message})`);
    }
    for (let k = 0; k < rows.length; k++) {
      const index = rowStart + k;
      yield { index, where: `${path}: row ${index}`, value: plain(rows[k]) };
    }
    rowStart = rowEnd;
  }
}

/** The records of one file, in order. */
export async function* readRecords(path: string, container: Container): AsyncGenerator<RawRecord> {
  switch (container) {
    case 'text': yield* textRecord(path); break;
    case 'jsonl': yield* jsonlRecords(path); break;
    case 'json': yield* jsonArrayRecords(path); break;
    case 'parquet': yield* parquetRecords(path); break;
  }
}
