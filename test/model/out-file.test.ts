// Output files written with direct I/O (native/direct_io.cc through model/out-file.ts): any byte
// ranges, in any order, each byte once, give exactly those bytes, whether they come from memory
// (on or off the JS thread) or from another file; what O_DIRECT needs (whole 4096-byte blocks at
// aligned offsets from aligned memory) is the writer's business, not the caller's.
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, openSync, closeSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tryLoadAddon } from '../../src/backend/native/addon.js';
import { InputError } from '../../src/errors.js';
import { openOutFile, type OutFile } from '../../src/model/out-file.js';
import { SafetensorsFile, writeSafetensorsFile } from '../../src/model/safetensors.js';

const root = mkdtempSync(join(tmpdir(), 'v4tune-outfile-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const addon = tryLoadAddon();
// whether this folder's file system takes O_DIRECT (the writer falls back to the page cache where not)
const directHere = ((): boolean => {
  if (!addon) return false;
  const probe = join(root, 'probe');
  const h = addon.directOpen(probe, 0);
  if (h >= 0) addon.directClose(h);
  return h >= 0;
})();
if (!directHere) console.log(`out-file.test: direct I/O not tested: ${addon ? `the file system of ${root} does not take O_DIRECT` : 'the native addon is not built (npm run build:native)'}`);

// a seeded generator (xorshift32), so a failure can be replayed from its seed
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

function randomBytes(n: number, r: () => number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

const STAGING = 8 * 1024 * 1024; // native/direct_io.cc kChunk

// [0, size) cut into ranges: mostly short ones around block edges, some spanning many blocks, and
// where the size allows one longer than two staging buffers
function cut(size: number, r: () => number): Array<[number, number]> {
  const points = new Set<number>([0, size]);
  let n = Math.max(1, Math.floor(size / 30_000)) + 6;
  if (size > 2 * STAGING + 8192) {
    const a = Math.floor(r() * (size - 2 * STAGING - 8192));
    const b = a + 2 * STAGING + 4097;
    points.add(a).add(b);
    for (let i = 0; i < 40; i++) {
      const p = Math.floor(r() * size);
      if (p < a || p > b) points.add(p);
    }
    n = 0;
  }
  for (let i = 0; i < n; i++) {
    const p = r() < 0.5 ? Math.floor(r() * size) : Math.min(size, Math.max(0, Math.round((r() * size) / 4096) * 4096 + Math.floor(r() * 9) - 4));
    points.add(p);
  }
  const sorted = [...points].sort((a, b) => a - b);
  const ranges: Array<[number, number]> = [];
  for (let i = 1; i < sorted.length; i++) if (sorted[i]! > sorted[i - 1]!) ranges.push([sorted[i - 1]!, sorted[i]!]);
  return ranges;
}

function shuffle<T>(xs: T[], r: () => number): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

describe.skipIf(!directHere)('direct I/O output files', () => {
  // sizes: empty, inside one block, one block exactly and either side of it, several blocks, and
  // more than two 8 MiB staging buffers (the double-buffered path)
  it.each([0, 1, 100, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 5, 1_000_003, 20 * 1024 * 1024 + 777])('%i bytes written as ranges in random order, from memory and from a file, hold exactly those bytes', async (size) => {
    const seed = (Date.now() ^ (size * 2654435761)) >>> 0;
    const r = rng(seed);
    const want = randomBytes(size, r);
    // the source file holds the same bytes at an odd offset, so copies read unaligned ranges
    const srcOff = 777;
    const srcPath = join(root, `src-${size}`);
    writeFileSync(srcPath, Buffer.concat([Buffer.alloc(srcOff, 1), Buffer.from(want), Buffer.alloc(3, 2)]));
    const src = openSync(srcPath, 'r');
    const srcDirect = addon!.directReadOpen(srcPath); // the same file read past the page cache
    const path = join(root, `out-${size}`);
    const out = openOutFile(path, size, true);
    expect(out.direct).toBe(true);
    try {
      const ranges = shuffle(cut(size, r), r);
      // up to four ranges at a time: blocks shared by two ranges are filled from two threads
      for (let i = 0; i < ranges.length; i += 4) {
        await Promise.all(ranges.slice(i, i + 4).map(async ([a, b]) => {
          const how = r();
          if (how < 0.4) await out.write(want.slice(a, b), a);
          else if (how < 0.6) out.writeSync(want.slice(a, b), a);
          else expect(await out.copyFrom({ fd: src, directFd: how < 0.8 ? null : srcDirect }, srcOff + a, b - a, a)).toBe(true);
        }));
      }
      out.close();
    } finally {
      closeSync(src);
      if (srcDirect >= 0) closeSync(srcDirect);
    }
    expect(statSync(path).size, `seed ${seed}`).toBe(size);
    expect(Buffer.from(readFileSync(path)).equals(Buffer.from(want)), `seed ${seed}`).toBe(true);
  });

  it('closing with a byte never written fails naming the file and the block; the handle is gone', async () => {
    const path = join(root, 'gap');
    const out = openOutFile(path, 3 * 4096, true);
    await out.write(new Uint8Array(4096 + 10).fill(5), 0);
    await out.write(new Uint8Array(4096 * 2 - 11).fill(6), 4096 + 11); // byte 4096 + 10 is missing
    expect(() => out.close()).toThrow(new RegExp(`${path}: bytes of block 1 \\(file offset 4096\\) were never written`));
    expect(() => out.abort()).toThrow(/not open/);
  });

  it('a range past the file\'s size is refused before anything is written', async () => {
    const out = openOutFile(join(root, 'past'), 5000, true);
    await expect(out.write(new Uint8Array(10), 4995)).rejects.toThrow(/bytes 4995\.\.5005 lie outside .*past \(5000 bytes\)/);
    out.abort();
  });

  it('a copy from a source shorter than asked is bad input naming the source file and the tensor', async () => {
    const dir = mkdtempSync(join(root, 'short-'));
    const file = join(dir, 'model.safetensors');
    writeSafetensorsFile(file, [{ name: 'w', dtype: 'U8', shape: [10000], data: new Uint8Array(10000).fill(9) }]);
    const f = SafetensorsFile.open(file);
    const begin = f.entries.get('w')!.begin;
    const out: OutFile = openOutFile(join(dir, 'out'), 20000, true);
    let err: unknown;
    try {
      await f.copyRangeTo(begin, 20000, out, 0, 'w'); // 10000 bytes past the file's end
    } catch (e) {
      err = e;
    } finally {
      out.abort();
      f.close();
    }
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(new RegExp(`${file}: copying tensor w: the source ends \\d+ bytes short \\(file truncated\\?\\)`));
    expect(existsSync(join(dir, 'out'))).toBe(true); // the caller (SafetensorsWriter.abort) removes its temp file
  });
});

describe.skipIf(!directHere)('direct reads', () => {
  it('a file read with direct I/O gives the bytes a buffered read gives, at any offset; past its end is bad input', async () => {
    const dir = mkdtempSync(join(root, 'reads-'));
    const file = join(dir, 'model.safetensors');
    const r = rng(7);
    const data = randomBytes(3 * 1024 * 1024 + 1234, r);
    writeSafetensorsFile(file, [{ name: 'w', dtype: 'U8', shape: [data.length], data }]);
    const f = SafetensorsFile.open(file);
    try {
      // just written, so in the page cache: not uncached at the default threshold
      expect(f.readDirectIfUncached()).toBe(false);
      expect(f.readDirectIfUncached(1.01)).toBe(true);
      const begin = f.entries.get('w')!.begin;
      for (const [a, n] of [[0, data.length], [1, 4095], [4095, 2], [12345, 9 * 1024 * 1024 / 4], [data.length - 7, 7]] as const) {
        const into = new Uint8Array(n);
        await f.readIntoAsync(begin + a, into, 'w');
        expect(Buffer.from(into).equals(Buffer.from(data.subarray(a, a + n))), `${a} + ${n}`).toBe(true);
      }
      await expect(f.readIntoAsync(begin + data.length - 10, new Uint8Array(20), 'w')).rejects.toThrow(new RegExp(`${file}: file ends inside tensor w \\(truncated\\?\\)`));
    } finally {
      f.close();
    }
    const fd = openSync(file, 'r');
    try {
      expect(addon!.residentFraction(fd)).toBeGreaterThan(0.5);
    } finally {
      closeSync(fd);
    }
  });
});

describe('buffered output files', () => {
  it('without direct I/O asked, the file goes through the page cache and holds the bytes written', async () => {
    const path = join(root, 'buffered');
    const out = openOutFile(path, 6000, false);
    expect(out.direct).toBe(false);
    await out.write(new Uint8Array(3000).fill(1), 3000);
    out.writeSync(new Uint8Array(3000).fill(2), 0);
    out.close();
    const back = readFileSync(path);
    expect(back.length).toBe(6000);
    expect(back[0]).toBe(2);
    expect(back[5999]).toBe(1);
  });
});
