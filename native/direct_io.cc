// Direct-I/O output files (direct_io.h).
#include "direct_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace v4io {
namespace {

constexpr long kBlock = 4096;
// the staging buffer whole blocks go through: large enough that one write call moves a lot
constexpr long kChunk = 8L << 20;

struct Edge {
  uint8_t* buf;
  long filled;
};

struct DirectFile {
  int fd;
  long size;
  std::string path;
  std::mutex mu;
  // blocks written in part so far, by block index
  std::map<long, Edge> edges;
  // staging buffers not in use (kept until close: no fresh pages per call)
  std::vector<uint8_t*> chunks;
  // the descriptor and the buffers go with the last holder (a write still running keeps them)
  ~DirectFile() {
    for (auto& e : edges) std::free(e.second.buf);
    for (uint8_t* c : chunks) std::free(c);
    if (fd >= 0) ::close(fd);
  }
};

std::mutex registry_mu;
// shared: a write still running holds its file, so a close or abort meanwhile cannot free it
// under the write (the write then fails on the closed descriptor)
std::map<int, std::shared_ptr<DirectFile>> registry;
int next_handle = 0;

uint8_t* aligned_bytes(long n) {
  void* p = nullptr;
  if (posix_memalign(&p, kBlock, size_t(n)) != 0) throw std::runtime_error("out of memory for a direct-I/O buffer");
  return static_cast<uint8_t*>(p);
}

[[noreturn]] void fail(const DirectFile& f, const char* what) {
  throw std::runtime_error(std::string(what) + " " + f.path + ": " + strerror(errno));
}

std::shared_ptr<DirectFile> file_of(int h) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto it = registry.find(h);
  if (it == registry.end()) throw std::runtime_error("direct-I/O handle " + std::to_string(h) + " is not open");
  return it->second;
}

// every byte of buf (block-aligned address, offset and length) at pos
void write_blocks(DirectFile& f, const uint8_t* buf, long n, long pos) {
  while (n > 0) {
    ssize_t m = pwrite(f.fd, buf, size_t(n), pos);
    if (m < 0 && errno == EINTR) continue;
    if (m < 0) fail(f, "write");
    if (m == 0 || m % kBlock) {
      errno = EIO;
      fail(f, "short direct write to");
    }
    buf += m;
    pos += m;
    n -= m;
  }
}

void read_all(int fd, uint8_t* buf, long n, long off) {
  while (n > 0) {
    ssize_t m = pread(fd, buf, size_t(n), off);
    if (m < 0 && errno == EINTR) continue;
    if (m < 0) throw std::runtime_error(std::string("read: ") + strerror(errno));
    if (m == 0) throw std::runtime_error("the source ends " + std::to_string(n) + " bytes short");
    buf += m;
    off += m;
    n -= m;
  }
}

uint8_t* take_chunk(DirectFile& f) {
  std::lock_guard<std::mutex> lock(f.mu);
  if (f.chunks.empty()) return aligned_bytes(kChunk);
  uint8_t* c = f.chunks.back();
  f.chunks.pop_back();
  return c;
}

void give_chunk(DirectFile& f, uint8_t* c) {
  std::lock_guard<std::mutex> lock(f.mu);
  f.chunks.push_back(c);
}

// the bytes of block b that lie below the file's size
long block_want(const DirectFile& f, long b) { return std::min(kBlock, f.size - b * kBlock); }

// n bytes into block b at offset `at`; the block is written once every byte of it below the
// size has arrived
void put_edge(DirectFile& f, long b, long at, const uint8_t* src, long n) {
  uint8_t* full = nullptr;
  {
    std::lock_guard<std::mutex> lock(f.mu);
    auto it = f.edges.find(b);
    if (it == f.edges.end()) {
      uint8_t* buf = aligned_bytes(kBlock);
      std::memset(buf, 0, size_t(kBlock));
      it = f.edges.emplace(b, Edge{buf, 0}).first;
    }
    std::memcpy(it->second.buf + at, src, size_t(n));
    it->second.filled += n;
    if (it->second.filled >= block_want(f, b)) {
      full = it->second.buf;
      f.edges.erase(it);
    }
  }
  if (!full) return;
  std::unique_ptr<uint8_t, decltype(&std::free)> own(full, &std::free);
  write_blocks(f, full, kBlock, b * kBlock);
}

// the bytes [pos, pos + len) from `fill(dst, n, at)` (at: the offset within the range)
template <class Fill>
void write_range(DirectFile& f, long len, long pos, Fill fill) {
  if (len < 0 || pos < 0 || pos + len > f.size)
    throw std::runtime_error("bytes " + std::to_string(pos) + ".." + std::to_string(pos + len) + " lie outside " + f.path + " (" + std::to_string(f.size) + " bytes)");
  const long end = pos + len;
  long at = pos;
  uint8_t tmp[kBlock];
  // the first block, where the range starts inside it or ends before its end
  if (at < end && (at % kBlock != 0 || end - at < kBlock)) {
    long b = at / kBlock, n = std::min(end, (b + 1) * kBlock) - at;
    fill(tmp, n, at - pos);
    put_edge(f, b, at - b * kBlock, tmp, n);
    at += n;
  }
  // whole blocks, through two staging buffers: the next one is filled (read from the source, or
  // copied) while the device takes the last (a direct write returns when the device has the bytes)
  if (end - at >= kBlock) {
    uint8_t* chunk[2] = {take_chunk(f), take_chunk(f)};
    std::future<void> writing;
    try {
      for (int k = 0; end - at >= kBlock; k ^= 1) {
        long n = std::min(kChunk, (end - at) / kBlock * kBlock);
        fill(chunk[k], n, at - pos);
        if (writing.valid()) writing.get();
        if (end - at - n >= kBlock) {
          writing = std::async(std::launch::async, [&f, c = chunk[k], n, at] { write_blocks(f, c, n, at); });
        } else {
          write_blocks(f, chunk[k], n, at);  // the last: no thread to start
        }
        at += n;
      }
    } catch (...) {
      if (writing.valid()) writing.wait();
      give_chunk(f, chunk[0]);
      give_chunk(f, chunk[1]);
      throw;
    }
    give_chunk(f, chunk[0]);
    give_chunk(f, chunk[1]);
  }
  // the last block, begun but not filled
  if (at < end) {
    fill(tmp, end - at, at - pos);
    put_edge(f, at / kBlock, 0, tmp, end - at);
  }
}

// `path` opened with O_DIRECT and `flags`; −1 where the file system refuses O_DIRECT, or where
// the kernel says which alignment it needs (statx; 0: none) and 4096 does not satisfy it
int open_direct(const std::string& path, int flags) {
  int fd = open(path.c_str(), flags | O_DIRECT | O_CLOEXEC, 0666);
  if (fd < 0 && errno == EINVAL) return -1;
  if (fd < 0) throw std::runtime_error(std::string("open ") + path + ": " + strerror(errno));
#ifdef STATX_DIOALIGN
  struct statx sx;
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
    if (sx.stx_dio_mem_align == 0 || kBlock % sx.stx_dio_mem_align || sx.stx_dio_offset_align == 0 || kBlock % sx.stx_dio_offset_align) {
      close(fd);
      return -1;
    }
  }
#endif
  return fd;
}

}  // namespace

int direct_open(const std::string& path, long size) {
  if (size < 0) throw std::runtime_error("direct_open: negative size");
  int fd = open_direct(path, O_WRONLY | O_CREAT | O_TRUNC);
  if (fd < 0) return -1;
  auto f = std::make_shared<DirectFile>();
  f->fd = fd;
  f->size = size;
  f->path = path;
  std::lock_guard<std::mutex> lock(registry_mu);
  int h = next_handle++;
  registry.emplace(h, std::move(f));
  return h;
}

void direct_write(int h, const uint8_t* data, long len, long pos) {
  std::shared_ptr<DirectFile> f = file_of(h);
  write_range(*f, len, pos, [&](uint8_t* dst, long n, long at) { std::memcpy(dst, data + at, size_t(n)); });
}

void direct_copy(int h, int fd_in, long off_in, long len, long pos) {
  std::shared_ptr<DirectFile> f = file_of(h);
  write_range(*f, len, pos, [&](uint8_t* dst, long n, long at) { read_all(fd_in, dst, n, off_in + at); });
}

namespace {
std::shared_ptr<DirectFile> release(int h) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto it = registry.find(h);
  if (it == registry.end()) throw std::runtime_error("direct-I/O handle " + std::to_string(h) + " is not open");
  std::shared_ptr<DirectFile> f = std::move(it->second);
  registry.erase(it);
  return f;
}
}  // namespace

void direct_close(int h) {
  std::shared_ptr<DirectFile> f = release(h);
  std::string missing;
  {
    std::lock_guard<std::mutex> lock(f->mu);
    if (!f->edges.empty()) {
      const auto& e = *f->edges.begin();
      missing = f->path + ": bytes of block " + std::to_string(e.first) + " (file offset " + std::to_string(e.first * kBlock) + ") were never written";
    }
  }
  if (!missing.empty()) throw std::runtime_error(missing);
  int err = 0;
  if (ftruncate(f->fd, f->size) != 0) err = errno;
  // the only holder left (no write can take it once released): close here, with its error
  if (f.use_count() == 1) {
    int fd = f->fd;
    f->fd = -1;
    if (close(fd) != 0 && err == 0) err = errno;
  }
  if (err) throw std::runtime_error(std::string("closing ") + f->path + ": " + strerror(err));
}

void direct_abort(int h) { release(h); }

namespace {
// staging buffers of direct reads, kept for the next read (no fresh pages per call); at most one
// per thread reading at a time
std::mutex read_bufs_mu;
std::vector<uint8_t*> read_bufs;
constexpr long kReadBuf = kChunk + kBlock;

struct ReadBuf {
  uint8_t* p;
  ReadBuf() {
    std::lock_guard<std::mutex> lock(read_bufs_mu);
    if (read_bufs.empty()) {
      p = aligned_bytes(kReadBuf);
    } else {
      p = read_bufs.back();
      read_bufs.pop_back();
    }
  }
  ~ReadBuf() {
    std::lock_guard<std::mutex> lock(read_bufs_mu);
    read_bufs.push_back(p);
  }
};
}  // namespace

int direct_read_open(const std::string& path) { return open_direct(path, O_RDONLY); }

void direct_read(int fd, uint8_t* into, long len, long pos) {
  ReadBuf buf;
  const long end = pos + len;
  long at = pos;
  while (at < end) {
    const long a0 = at / kBlock * kBlock;
    const long a1 = std::min((end + kBlock - 1) / kBlock * kBlock, a0 + kChunk);
    const long want = std::min(a1, end) - a0;  // bytes of [a0, a1) that are needed
    long got = 0;
    while (got < want) {
      ssize_t m = pread(fd, buf.p + got, size_t(a1 - a0 - got), a0 + got);
      if (m < 0 && errno == EINTR) continue;
      if (m < 0) throw std::runtime_error(std::string("read: ") + strerror(errno));
      if (m == 0) break;
      got += m;
      if (got % kBlock) break;  // a short block: the end of the file
    }
    if (got < want) throw std::runtime_error("the source ends " + std::to_string(end - std::max(at, a0 + got)) + " bytes short");
    std::memcpy(into + (at - pos), buf.p + (at - a0), size_t(std::min(a1, end) - at));
    at = std::min(a1, end);
  }
}

double resident_fraction(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) throw std::runtime_error(std::string("fstat: ") + strerror(errno));
  if (st.st_size == 0) return 1;
  const long page = sysconf(_SC_PAGESIZE);
  const size_t len = size_t(st.st_size);
  void* m = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) throw std::runtime_error(std::string("mmap: ") + strerror(errno));
  std::vector<unsigned char> v((len + size_t(page) - 1) / size_t(page));
  int r = mincore(m, len, v.data());
  int err = errno;
  munmap(m, len);
  if (r != 0) throw std::runtime_error(std::string("mincore: ") + strerror(err));
  size_t in = 0;
  for (unsigned char c : v) in += c & 1;
  return double(in) / double(v.size());
}

void direct_copy_from_direct(int h, int fd_in, long off_in, long len, long pos) {
  std::shared_ptr<DirectFile> f = file_of(h);
  write_range(*f, len, pos, [&](uint8_t* dst, long n, long at) { direct_read(fd_in, dst, n, off_in + at); });
}

}  // namespace v4io
