// One output file written at byte positions in any order: through the page cache (a file
// descriptor; copies file to file in the kernel with copy_file_range), or with direct I/O
// (O_DIRECT through the native addon, native/direct_io.h: no page cache, bytes straight to the
// device). A checkpoint's shards are written once and not read back by the writer; through the
// page cache every byte first takes a fresh cache page, which on this project's VMs cost more
// than the disk write itself (bench/LOG.md, 2026-12-08), and a checkpoint larger than memory is
// held to the disk's speed anyway.
import { closeSync, openSync, write, writeSync } from 'node:fs';
import { promisify } from 'node:util';
import { tryLoadAddon } from '../backend/native/addon.js';

const writeAsync = promisify(write);

/** a file copied from: its descriptor, and where it is read with direct I/O, that descriptor too */
export interface CopySource {
  fd: number;
  directFd: number | null;
}

export interface OutFile {
  readonly path: string;
  /** true when writes bypass the page cache */
  readonly direct: boolean;
  writeSync(data: Uint8Array, pos: number): void;
  /** write off the JS thread; `data` must stay unchanged until it resolves */
  write(data: Uint8Array, pos: number): Promise<void>;
  /**
   * the `len` bytes at `offIn` of the open source file to `pos`, off the JS thread, never through
   * JS memory; false where that needs the addon and it is not built. `src.directFd`, where not
   * null, is the same file opened for direct reads, which a direct-I/O output reads it through.
   */
  copyFrom(src: CopySource, offIn: number, len: number, pos: number): Promise<boolean>;
  /** finish the file (direct: its last block, its size) and close it */
  close(): void;
  /** close without finishing (the caller removes the file) */
  abort(): void;
}

/**
 * Create (or truncate) `path` for a file of `size` bytes: with direct I/O where `direct` is asked,
 * the addon is built and the file system takes O_DIRECT at 4096-byte alignment; else buffered.
 */
export function openOutFile(path: string, size: number, direct: boolean): OutFile {
  const addon = direct ? tryLoadAddon() : null;
  const h = addon ? addon.directOpen(path, size) : -1;
  if (addon && h >= 0) {
    return {
      path, direct: true,
      writeSync: (data, pos) => addon.directWriteSync(h, data, pos),
      write: (data, pos) => addon.directWrite(h, data, pos),
      copyFrom: async (src, offIn, len, pos) => {
        if (src.directFd !== null) await addon.directCopy(h, src.directFd, offIn, pos, len, true);
        else await addon.directCopy(h, src.fd, offIn, pos, len);
        return true;
      },
      close: () => addon.directClose(h),
      abort: () => addon.directAbort(h),
    };
  }
  return bufferedOutFile(openSync(path, 'w'), path);
}

/** An OutFile over the open file descriptor `fd` (written through the page cache; closed by close() and abort()). */
export function bufferedOutFile(fd: number, path: string): OutFile {
  return {
    path, direct: false,
    writeSync: (data, pos) => {
      for (let done = 0; done < data.length;) done += writeSync(fd, data, done, data.length - done, pos + done);
    },
    write: async (data, pos) => {
      for (let done = 0; done < data.length;) done += (await writeAsync(fd, data, done, data.length - done, pos + done)).bytesWritten;
    },
    copyFrom: async (src, offIn, len, pos) => {
      const a = tryLoadAddon();
      if (!a) return false;
      await a.copyRange(src.fd, offIn, fd, pos, len);
      return true;
    },
    close: () => closeSync(fd),
    abort: () => closeSync(fd),
  };
}
