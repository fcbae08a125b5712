// safetensors reader/writer: round trips, lazy byte-range reads, and each kind of bad file
// ending in one InputError that names the file and the tensor.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { InputError, V4tuneError } from '../../src/errors.js';
import { tryLoadAddon } from '../../src/backend/native/addon.js';
import { MAX_HEADER, SafetensorsFile, SafetensorsSet, SafetensorsWriter, writeSafetensorsFile, type ByteSource } from '../../src/model/safetensors.js';
import { bufferedOutFile } from '../../src/model/out-file.js';

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'v4tune-st-'));
  dirs.push(d);
  return d;
}
afterEach(() => { for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }); });

const bytes = (n: number, k: number) => new Uint8Array(n).map((_, i) => (i * 31 + k) & 0xff);

// a raw safetensors file from a header object and a data length
function rawFile(path: string, header: object, dataLen: number): void {
  const h = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  writeFileSync(path, Buffer.concat([len, h, Buffer.alloc(dataLen)]));
}

function expectInputError(fn: () => unknown, ...parts: string[]): void {
  let err: unknown;
  try { fn(); } catch (e) { err = e; }
  expect(err).toBeInstanceOf(InputError);
  for (const p of parts) expect((err as Error).message).toContain(p);
}

describe('safetensors writer and reader', () => {
  it('streams tensors into shards of bounded size and reads every one back by byte range', () => {
    const d = tmp();
    const specs = [
      { name: 'a', dtype: 'F32' as const, shape: [4, 8] },
      { name: 'b', dtype: 'BF16' as const, shape: [16] },
      { name: 'c', dtype: 'I64' as const, shape: [3, 2] },
      { name: 'd', dtype: 'F8_E4M3' as const, shape: [100] },
      { name: 'e', dtype: 'U8' as const, shape: [0] },
    ];
    const data = specs.map((s, k) => bytes(s.shape.reduce((a, b) => a * b, 1) * { F32: 4, BF16: 2, I64: 8, F8_E4M3: 1, U8: 1 }[s.dtype], k));
    const w = new SafetensorsWriter(d, specs, { maxShardBytes: 200 });
    specs.forEach((s, k) => w.add(s.name, data[k]!));
    const shards = w.finish();
    expect(shards).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    expect(readdirSync(d).filter((n) => n.startsWith('.tmp'))).toEqual([]);
    const index = JSON.parse(readFileSync(join(d, 'model.safetensors.index.json'), 'utf8'));
    expect(index.weight_map).toEqual({ a: shards[0], b: shards[0], c: shards[1], d: shards[1], e: shards[1] });
    expect(index.metadata.total_size).toBe(128 + 32 + 48 + 100);
    const set = SafetensorsSet.open(d);
    specs.forEach((s, k) => {
      expect(set.entry(s.name).shape).toEqual(s.shape);
      expect(set.read(s.name)).toEqual(data[k]);
    });
    expect(set.readSlice('d', 10, 20)).toEqual(data[3]!.slice(10, 20));
    set.close();
    // data starts 8-byte aligned after the header
    const f = readFileSync(join(d, shards[0]!));
    expect((8 + Number(f.readBigUInt64LE(0))) % 8).toBe(0);
  });

  it('refuses tensors out of order or missing, and leaves no file behind', () => {
    const d = tmp();
    const w = new SafetensorsWriter(d, [{ name: 'x', dtype: 'U8', shape: [2] }, { name: 'y', dtype: 'U8', shape: [2] }]);
    expect(() => w.add('y', bytes(2, 0))).toThrow(/expected tensor x/);
    w.add('x', bytes(2, 0));
    expect(() => w.finish()).toThrow(/y was never added/);
    w.abort();
    expect(readdirSync(d)).toEqual([]);
  });

  it('writeAt: tensors written in any order, in pieces, give the same files as add() in order; a tensor written in part is refused', () => {
    const specs = [
      { name: 'a', dtype: 'F32' as const, shape: [4, 8] },
      { name: 'b', dtype: 'BF16' as const, shape: [16] },
      { name: 'c', dtype: 'U8' as const, shape: [100] },
      { name: 'e', dtype: 'U8' as const, shape: [0] },
    ];
    const data = specs.map((s, k) => bytes(s.shape.reduce((a, b) => a * b, 1) * { F32: 4, BF16: 2, U8: 1 }[s.dtype], k));
    const inOrder = tmp();
    const w1 = new SafetensorsWriter(inOrder, specs, { maxShardBytes: 150 });
    specs.forEach((s, k) => w1.add(s.name, data[k]!));
    const shards = w1.finish();
    const anyOrder = tmp();
    const w2 = new SafetensorsWriter(anyOrder, specs, { maxShardBytes: 150 });
    w2.writeAt('c', 60, data[2]!.subarray(60));
    w2.writeAt('e', 0, new Uint8Array(0));
    w2.writeAt('b', 0, data[1]!);
    w2.writeAt('c', 0, data[2]!.subarray(0, 60));
    w2.writeAt('a', 0, data[0]!);
    expect(w2.finish()).toEqual(shards);
    for (const f of [...shards, 'model.safetensors.index.json']) expect(readFileSync(join(anyOrder, f)).equals(readFileSync(join(inOrder, f))), f).toBe(true);
    const part = tmp();
    const w3 = new SafetensorsWriter(part, specs);
    for (const [k, s] of specs.entries()) w3.writeAt(s.name, 0, s.name === 'c' ? data[k]!.subarray(0, 99) : data[k]!);
    expect(() => w3.finish()).toThrow(/tensor c got 99 of its 100 bytes/);
    expect(() => w3.writeAt('c', 99, bytes(2, 0))).toThrow(/lie outside c/);
    w3.abort();
    expect(readdirSync(part)).toEqual([]);
  });

  it('readAsync and writeAtAsync read and write off the JS thread: the same bytes as read and writeAt; a short source names the file and the tensor', async () => {
    const src = tmp();
    const payload = bytes(1024 * 1024 + 3, 7);
    writeSafetensorsFile(join(src, 'model.safetensors'), [{ name: 'w', dtype: 'U8', shape: [payload.length], data: payload }]);
    const set = SafetensorsSet.open(src);
    const got = new Uint8Array(payload.length - 100);
    await set.source('w', 0, payload.length).readAsync!(got, 100);
    expect(Buffer.from(got).equals(Buffer.from(payload.subarray(100)))).toBe(true);
    const out = tmp();
    const w = new SafetensorsWriter(out, [{ name: 'w', dtype: 'U8', shape: [payload.length] }]);
    await Promise.all([w.writeAtAsync('w', 0, payload.subarray(0, 100)), w.writeAtAsync('w', 100, got)]);
    w.finish();
    const back = SafetensorsSet.open(out);
    expect(Buffer.from(back.read('w')).equals(Buffer.from(payload))).toBe(true);
    back.close();
    truncateSync(join(src, 'model.safetensors'), 1000);
    const err = await set.source('w', 0, payload.length).readAsync!(new Uint8Array(payload.length), 0).catch((e: unknown) => e);
    set.close();
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toContain(join(src, 'model.safetensors'));
    expect((err as Error).message).toMatch(/tensor w.*truncated/);
  });

  it('streamAt copies a file range file to file (copy_file_range where the addon is built, a buffer otherwise, across file systems too); a short source names the file', async () => {
    const src = tmp();
    const payload = bytes(3 * 1024 * 1024 + 17, 5);
    writeSafetensorsFile(join(src, 'model.safetensors'), [{ name: 'w', dtype: 'U8', shape: [payload.length], data: payload }]);
    // /dev/shm is another file system (tmpfs): copy_file_range refuses, the buffer copy takes over
    const outs = [tmp(), ...(existsSync('/dev/shm') ? [mkdtempSync('/dev/shm/v4tune-st-')] : [])];
    for (const out of outs.slice(1)) dirs.push(out);
    for (const out of outs) {
      const set = SafetensorsSet.open(src);
      const w = new SafetensorsWriter(out, [{ name: 'x', dtype: 'U8', shape: [5] }, { name: 'w', dtype: 'U8', shape: [payload.length + 10] }]);
      await w.streamAt('w', 10, set.source('w', 0, payload.length));
      w.writeAt('w', 0, bytes(10, 9));
      w.writeAt('x', 0, bytes(5, 1));
      w.finish();
      set.close();
      const back = SafetensorsSet.open(out);
      expect(Buffer.from(back.read('w').subarray(10)).equals(Buffer.from(payload)), out).toBe(true);
      expect(back.read('w').subarray(0, 10)).toEqual(bytes(10, 9));
      back.close();
    }
    // a source cut short after its header was read: the copy fails naming the file and the tensor
    const set = SafetensorsSet.open(src);
    truncateSync(join(src, 'model.safetensors'), 1000);
    const w = new SafetensorsWriter(tmp(), [{ name: 'w', dtype: 'U8', shape: [payload.length] }]);
    let err: unknown;
    try {
      await w.streamAt('w', 0, set.source('w', 0, payload.length));
    } catch (e) {
      err = e;
    }
    w.abort();
    set.close();
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toContain(join(src, 'model.safetensors'));
    expect((err as Error).message).toMatch(/tensor w.*truncated/);
  });

  it('asynchronous writes into one shard run one at a time, in the order asked; a large copy goes in pieces with other writes between them', async () => {
    const out = tmp();
    const big = bytes(10_000, 3);
    const small = bytes(3000, 7);
    const other = bytes(2000, 11);
    // m, w and v share the first shard, o has the second (maxShardBytes)
    const big2 = bytes(10_000, 5);
    const w = new SafetensorsWriter(out, [
      { name: 'm', dtype: 'U8', shape: [small.length] }, { name: 'w', dtype: 'U8', shape: [big.length] }, { name: 'v', dtype: 'U8', shape: [big2.length] },
      { name: 'o', dtype: 'U8', shape: [other.length] },
    ], { maxShardBytes: 24_000, copyChunk: 1024 });
    expect(w.shardFiles).toHaveLength(2);
    const active = [0, 0];
    const most = [0, 0];
    const events: string[] = [];
    // a source in memory that "copies" into the output as the kernel copy would, slowly, counting
    // the writes in progress on each shard's file
    const source = (data: Uint8Array, shard: number, tag: string): ByteSource => ({
      length: data.length,
      read: (into, at) => into.set(data.subarray(at, at + into.length)),
      copyTo: async (out, pos, at = 0, len = data.length - at) => {
        active[shard]!++;
        most[shard] = Math.max(most[shard]!, active[shard]!);
        events.push(`${tag}${at}`);
        if (len > 1024) throw new Error(`a piece of ${len} bytes, more than copyChunk`);
        await new Promise((res) => setTimeout(res, 2));
        out.writeSync(data.subarray(at, at + len), pos);
        active[shard]!--;
        return true;
      },
    });
    // two copies into the first shard at once: their pieces take turns
    const copy = w.streamAt('w', 0, source(big, 0, 'w'));
    const again = w.streamAt('v', 0, source(big2, 0, 'v'));
    const copyOther = w.streamAt('o', 0, source(other, 1, 'o'));
    await new Promise((res) => setTimeout(res, 5)); // the first piece or two of w are under way
    let copyDone = false;
    void copy.then(() => { copyDone = true; });
    await w.writeAtAsync('m', 0, small);
    events.push('m');
    expect(copyDone).toBe(false); // m went in between two pieces of w, not after all of them
    await Promise.all([copy, again, copyOther]);
    expect(most[0]).toBe(1); // never two writes on one shard at once
    const pieces = events.filter((e) => /^[vw]/.test(e));
    expect(pieces.slice(0, 6)).toEqual(['w0', 'v0', 'w1024', 'v1024', 'w2048', 'v2048']);
    expect(pieces.filter((e) => e.startsWith('w'))).toEqual(Array.from({ length: 10 }, (_, i) => `w${i * 1024}`));
    expect(events.indexOf('o0')).toBeLessThan(events.indexOf('m')); // another shard's copy did not wait
    w.finish();
    const back = SafetensorsSet.open(out);
    expect(back.read('w')).toEqual(big);
    expect(back.read('v')).toEqual(big2);
    expect(back.read('m')).toEqual(small);
    expect(back.read('o')).toEqual(other);
    back.close();
  });

  it.skipIf(!tryLoadAddon() || !existsSync('/dev/full'))('a kernel copy into a full output fails naming the tensor and the output, not as bad input', async () => {
    const src = tmp();
    writeSafetensorsFile(join(src, 'model.safetensors'), [{ name: 'w', dtype: 'U8', shape: [1 << 20], data: bytes(1 << 20, 3) }]);
    const f = SafetensorsFile.open(join(src, 'model.safetensors'));
    const full = openSync('/dev/full', 'w');
    let err: unknown;
    try {
      await f.copyRangeTo(f.entries.get('w')!.begin, 1 << 20, bufferedOutFile(full, '/dev/full'), 0, 'w');
    } catch (e) {
      err = e;
    } finally {
      closeSync(full);
      f.close();
    }
    expect(err).toBeInstanceOf(V4tuneError);
    expect(err).not.toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(/tensor w into the output failed: .*No space left on device/);
  });

  it.skipIf(!tryLoadAddon())('a kernel copy into an output opened for appending fails and writes nothing (pwrite there would ignore the offset)', async () => {
    const src = tmp();
    writeSafetensorsFile(join(src, 'model.safetensors'), [{ name: 'w', dtype: 'U8', shape: [4096], data: bytes(4096, 3) }]);
    const f = SafetensorsFile.open(join(src, 'model.safetensors'));
    const dst = join(tmp(), 'out');
    writeFileSync(dst, Buffer.alloc(100));
    const fd = openSync(dst, 'a');
    let err: unknown;
    try {
      await f.copyRangeTo(f.entries.get('w')!.begin, 4096, bufferedOutFile(fd, dst), 0, 'w');
    } catch (e) {
      err = e;
    } finally {
      closeSync(fd);
      f.close();
    }
    expect(err).toBeInstanceOf(V4tuneError);
    expect((err as Error).message).toMatch(/tensor w into the output failed: Bad file descriptor/);
    expect(readFileSync(dst).length).toBe(100);
  });

  it('reads a single-file checkpoint written by writeSafetensorsFile', () => {
    const d = tmp();
    writeSafetensorsFile(join(d, 'model.safetensors'), [{ name: 't', dtype: 'F16', shape: [3], data: bytes(6, 1) }]);
    const set = SafetensorsSet.open(d);
    expect(set.read('t')).toEqual(bytes(6, 1));
    set.close();
  });
});

describe('bad safetensors input', () => {
  it('a truncated shard names the file and the tensor that runs past its end', () => {
    const d = tmp();
    const p = join(d, 'model.safetensors');
    writeSafetensorsFile(p, [{ name: 'first', dtype: 'F32' as const, shape: [4] }, { name: 'layers.0.big', dtype: 'F32' as const, shape: [64] }].map((s, k) => ({ ...s, data: bytes(s.shape[0]! * 4, k) })));
    truncateSync(p, readFileSync(p).length - 10);
    expectInputError(() => SafetensorsSet.open(d), p, 'layers.0.big', 'truncated');
  });

  it('a file shorter than its header length is refused', () => {
    const d = tmp();
    const p = join(d, 'model.safetensors');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(1000n);
    writeFileSync(p, Buffer.concat([len, Buffer.from('{"a":')]));
    expectInputError(() => SafetensorsFile.open(p), p, 'header length');
  });

  it('a header over the size limit is refused before it is read (a sparse file: no disk is used)', () => {
    const d = tmp();
    const p = join(d, 'model.safetensors');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(MAX_HEADER + 1));
    writeFileSync(p, len);
    truncateSync(p, MAX_HEADER + 64);
    expectInputError(() => SafetensorsFile.open(p), p, `exceeds the ${MAX_HEADER}-byte limit`);
  });

  it('__metadata__ that is not a map of strings is refused', () => {
    const d = tmp();
    const p = join(d, 'model.safetensors');
    const h = Buffer.from(JSON.stringify({ __metadata__: { format: 3 } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(h.length));
    writeFileSync(p, Buffer.concat([len, h]));
    expectInputError(() => SafetensorsFile.open(p), p, '__metadata__ must map names to strings');
  });

  it('a header whose offsets disagree with dtype x shape names the tensor', () => {
    const d = tmp();
    const p = join(d, 'model.safetensors');
    rawFile(p, { w: { dtype: 'BF16', shape: [4, 4], data_offsets: [0, 16] } }, 32);
    expectInputError(() => SafetensorsFile.open(p), p, 'tensor w', 'needs 32 bytes', 'give 16');
  });

  it('overlapping tensors are refused', () => {
    const d = tmp();
    const p = join(d, 'model.safetensors');
    rawFile(p, { a: { dtype: 'U8', shape: [8], data_offsets: [0, 8] }, b: { dtype: 'U8', shape: [8], data_offsets: [4, 12] } }, 16);
    expectInputError(() => SafetensorsFile.open(p), p, 'a and b overlap');
  });

  it('an unknown dtype and a non-JSON header are refused', () => {
    const d = tmp();
    const p = join(d, 'x.safetensors');
    rawFile(p, { a: { dtype: 'Q4', shape: [8], data_offsets: [0, 8] } }, 8);
    expectInputError(() => SafetensorsFile.open(p), 'tensor a', 'unsupported dtype');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(3n);
    writeFileSync(p, Buffer.concat([len, Buffer.from('{{{')]));
    expectInputError(() => SafetensorsFile.open(p), p, 'not valid JSON');
  });

  it('an index that points at a missing shard names the index and the shard', () => {
    const d = tmp();
    writeSafetensorsFile(join(d, 'model-00001-of-00002.safetensors'), [{ name: 'a', dtype: 'U8', shape: [2], data: bytes(2, 0) }]);
    writeFileSync(join(d, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } }));
    expectInputError(() => SafetensorsSet.open(d), 'model.safetensors.index.json', 'model-00002-of-00002.safetensors', 'missing');
  });

  it('an index that lists a tensor its shard does not hold names both', () => {
    const d = tmp();
    writeSafetensorsFile(join(d, 's.safetensors'), [{ name: 'a', dtype: 'U8', shape: [2], data: bytes(2, 0) }]);
    writeFileSync(join(d, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: 's.safetensors', ghost: 's.safetensors' } }));
    expectInputError(() => SafetensorsSet.open(d), 'ghost', 's.safetensors');
  });

  it('a folder without safetensors files says so', () => {
    const d = tmp();
    expect(existsSync(d)).toBe(true);
    expectInputError(() => SafetensorsSet.open(d), d, 'no model.safetensors.index.json');
  });
});
