// Output files written with direct I/O (O_DIRECT): bytes go from user memory to the device
// without passing through the page cache. A merged or initialised checkpoint is written once and
// not read back by the process that writes it; through the page cache every byte of it first
// takes a fresh cache page (on a VM whose balloon reports free pages, the host maps each one in
// again: 535 MB/s for a 2.1 GB shard where direct writes ran at 1.6 GB/s, bench/LOG.md), and a
// checkpoint larger than memory is throttled to the disk's speed anyway.
//
// O_DIRECT takes whole blocks at aligned file offsets from aligned memory. A DirectFile takes any
// byte range at any offset, each byte once, in any order: the whole blocks of a range go to the
// device from an aligned staging buffer; a block the range only partly covers is gathered in
// memory until the other ranges fill it, then written. The last block is written padded with
// zeros and the file truncated to its size at close.
#pragma once
#include <cstdint>
#include <string>

namespace v4io {

/**
 * Create (or truncate) `path` for direct writes of a file of `size` bytes; returns a handle, or −1
 * where the file system does not take O_DIRECT with 4096-byte alignment (the caller writes
 * through the page cache instead). Other failures throw with errno's text.
 */
int direct_open(const std::string& path, long size);
/** write `len` bytes of `data` at file offset `pos` */
void direct_write(int h, const uint8_t* data, long len, long pos);
/** write the `len` bytes at offset `off_in` of the open file `fd_in` at file offset `pos` */
void direct_copy(int h, int fd_in, long off_in, long len, long pos);
/** write the last partial block, truncate to the size, close; throws if a byte below the size was never written */
void direct_close(int h);
/** close without checking or flushing (the caller removes the file) */
void direct_abort(int h);

/** open `path` for direct reads (O_RDONLY | O_DIRECT); −1 where the file system refuses them */
int direct_read_open(const std::string& path);
/**
 * `len` bytes at `pos` of `fd` (opened by direct_read_open) into `into`: the aligned blocks around
 * them read through a staging buffer, then copied out; throws "the source ends N bytes short" at
 * an early end of file
 */
void direct_read(int fd, uint8_t* into, long len, long pos);
/** the fraction of the file's pages in the page cache (mincore over a mapping of it); 1 for an empty file */
double resident_fraction(int fd);
/** direct_copy from `fd_in` opened by direct_read_open (its reads aligned as direct_read's) */
void direct_copy_from_direct(int h, int fd_in, long off_in, long len, long pos);

}  // namespace v4io
