// The HCCL engine of the Collective interface, for runs on Ascend NPUs: CANN's collective library
// (libhccl.so, loaded at run time by the native addon's native/ascend_hccl.cc) over one
// communicator. Each collective uploads the host buffer on the communicator's ACL stream, runs the
// HCCL operator after it in stream order, copies the result back and waits for the stream, on a
// worker thread (the JS thread stays free); errors reject with the HCCL code's name and meaning.
//
// The world comes from the environment an Ascend launch sets in each process:
//   RANK_TABLE_FILE           the rank table (JSON, as hccl_tools.py writes it), for HcclCommInitClusterInfo
//   RANK_ID                   this process's rank in it
//   RANK_SIZE                 optional; where set it must equal the table's rank count
//   V4TUNE_ASCEND_DEVICE_ID   the NPU of this process (the ascend backend's; default 0)
// HCCL has no job-wide abort: abort() ends this process, and the other ranks' next collective
// fails when HCCL_EXEC_TIMEOUT runs out (the launcher usually ends them first).
import { ascendKernelLibrary } from '../backend/ascend/index.js';
import { nativeUnavailableReason, tryLoadAddon } from '../backend/native/addon.js';
import type { BackendName } from '../backend/ops.js';
import { V4tuneError } from '../errors.js';
import { offsetsOf, sameKind, type Collective, type HostBuffer, type Traffic } from './collective.js';

interface HcclAddon {
  hcclProbe(kernelLib: string): { available: boolean; reason: string; library: string };
  hcclOpen(kernelLib: string, device: number, rankTable: string, rank: number): { rank: number; size: number };
  hcclClose(): void;
  hcclAllreduceSum(buf: Float32Array | Int32Array): Promise<void>;
  hcclAllgather(send: HostBuffer, recv: HostBuffer, count: number): Promise<void>;
  hcclBroadcast(buf: HostBuffer, root: number): Promise<void>;
  hcclAlltoallv(send: HostBuffer, sendCounts: Int32Array, recv: HostBuffer, recvCounts: Int32Array): Promise<void>;
  hcclBarrier(): Promise<void>;
  hcclErrorText(code: number): string;
}

/** An Ascend launch's world: the rank table and this rank (RANK_TABLE_FILE, RANK_ID, RANK_SIZE). */
export interface AscendWorld {
  rankTable: string;
  rank: number;
  /** RANK_SIZE where the launch set it */
  size: number | null;
}

/** The Ascend launch this process is part of, from its environment; null when none set it. */
export function ascendWorld(env: NodeJS.ProcessEnv = process.env): AscendWorld | null {
  const rankTable = env.RANK_TABLE_FILE;
  if (!rankTable || env.RANK_ID === undefined) return null;
  const rank = Number(env.RANK_ID);
  if (!Number.isInteger(rank) || rank < 0) throw new V4tuneError(`RANK_ID must be a rank number (got "${env.RANK_ID}")`);
  if (env.RANK_SIZE === undefined) return { rankTable, rank, size: null };
  const size = Number(env.RANK_SIZE);
  if (!Number.isInteger(size) || size < 1 || rank >= size) throw new V4tuneError(`RANK_SIZE must be a rank count above RANK_ID ${rank} (got "${env.RANK_SIZE}")`);
  return { rankTable, rank, size };
}

function addon(): HcclAddon | null {
  const a = tryLoadAddon() as (HcclAddon & object) | null;
  return a && typeof a.hcclProbe === 'function' ? a : null;
}

/** Why HCCL cannot be used here, in one sentence; '' when it can. */
export function hcclUnavailableReason(): string {
  const a = addon();
  if (!a) return tryLoadAddon() ? 'the native addon was built without the HCCL host code (run `npm run build:native`)' : nativeUnavailableReason();
  return a.hcclProbe(ascendKernelLibrary()).reason;
}

/** The message v4tune gives for an HcclResult code (the addon's table). */
export function hcclErrorText(code: number): string {
  const a = addon();
  if (!a) throw new V4tuneError(`v4tune: ${hcclUnavailableReason()}`);
  return a.hcclErrorText(code);
}

export class HcclCollective implements Collective {
  readonly rank: number;
  readonly size: number;
  readonly engine: string;
  readonly traffic: Traffic = { bytes: 0, calls: 0 };
  /**
   * Seconds one collective may wait for the other ranks before this rank decides one of them
   * hangs and exits with a line saying so (distributed.timeout_s); 0: wait for HCCL's own limit.
   */
  timeoutS = 0;
  private closed = false;

  private constructor(private readonly hccl: HcclAddon, world: AscendWorld, library: string) {
    const device = Number(process.env.V4TUNE_ASCEND_DEVICE_ID ?? 0);
    if (!Number.isInteger(device) || device < 0) throw new V4tuneError(`V4TUNE_ASCEND_DEVICE_ID must be a device number (got "${process.env.V4TUNE_ASCEND_DEVICE_ID}")`);
    const w = hccl.hcclOpen(ascendKernelLibrary(), device, world.rankTable, world.rank);
    if (world.size !== null && w.size !== world.size) {
      hccl.hcclClose();
      throw new V4tuneError(`RANK_SIZE is ${world.size} but the rank table ${world.rankTable} holds ${w.size} ranks`);
    }
    this.rank = w.rank;
    this.size = w.size;
    this.engine = `HCCL (${library}, rank table ${world.rankTable}, NPU ${device})`;
  }

  /** The communicator of `world` (HcclCommInitClusterInfo); throws when HCCL cannot be used. */
  static init(world: AscendWorld): HcclCollective {
    const a = addon();
    if (!a) throw new V4tuneError(`v4tune: ${hcclUnavailableReason()}`);
    const probe = a.hcclProbe(ascendKernelLibrary());
    if (!probe.available) throw new V4tuneError(`v4tune: ${probe.reason}`);
    return new HcclCollective(a, world, probe.library);
  }

  private async wait<T>(what: string, call: Promise<T>): Promise<T> {
    if (!(this.timeoutS > 0)) return call;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>(() => {
      timer = setTimeout(() => {
        process.stderr.write(`v4tune: rank ${this.rank} of ${this.size}: HCCL ${what} waited ${this.timeoutS} s for the other ranks (distributed.timeout_s): a rank hangs or is far slower; ending this rank\n`);
        this.abort(1);
      }, this.timeoutS * 1000);
    });
    try {
      return await Promise.race([call, expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  private count(bytes: number): void {
    this.traffic.bytes += bytes;
    this.traffic.calls++;
  }

  /** float32 and int32 through HcclAllReduce; float64 (which it does not take) gathered and summed in rank order. */
  async allreduceSum(buf: Float32Array | Float64Array | Int32Array): Promise<void> {
    this.count(buf.byteLength);
    if (buf.length === 0) return;
    if (!(buf instanceof Float64Array)) {
      await this.wait('allreduce', this.hccl.hcclAllreduceSum(buf));
      return;
    }
    const all = new Float64Array(buf.length * this.size);
    await this.wait('allreduce (float64, by allgather)', this.hccl.hcclAllgather(buf, all, buf.length));
    for (let i = 0; i < buf.length; i++) {
      let s = 0;
      for (let q = 0; q < this.size; q++) s += all[q * buf.length + i]!;
      buf[i] = s;
    }
  }

  /** HcclAllGather of equal blocks (every send padded to the longest), then the blocks cut to their counts. */
  async allgatherv<T extends HostBuffer>(send: T, counts: ArrayLike<number>): Promise<T> {
    if (counts.length !== this.size) throw new V4tuneError(`HCCL allgatherv: ${counts.length} counts for ${this.size} ranks`);
    const c = Int32Array.from(counts);
    const { offsets, total } = offsetsOf(c);
    const recv = sameKind(send, total);
    this.count(send.BYTES_PER_ELEMENT * c[this.rank]! * (this.size - 1));
    const most = Math.max(...c);
    if (most === 0) return recv;
    if (send.length < c[this.rank]!) throw new V4tuneError(`HCCL allgatherv: send holds ${send.length} elements, counts[${this.rank}] is ${c[this.rank]}`);
    const padded = sameKind(send, most);
    padded.set(send.subarray(0, c[this.rank]!) as never);
    const all = sameKind(send, most * this.size);
    await this.wait('allgatherv', this.hccl.hcclAllgather(padded, all, most));
    for (let q = 0; q < this.size; q++) recv.set(all.subarray(q * most, q * most + c[q]!) as never, offsets[q]!);
    return recv;
  }

  async alltoallv<T extends HostBuffer>(send: T, sendCounts: ArrayLike<number>): Promise<{ recv: T; recvCounts: Int32Array }> {
    const P = this.size;
    if (sendCounts.length !== P) throw new V4tuneError(`HCCL alltoallv: ${sendCounts.length} send counts for ${P} ranks`);
    const sc = Int32Array.from(sendCounts);
    if (offsetsOf(sc).total > send.length) throw new V4tuneError(`HCCL alltoallv: the send counts add up to ${offsetsOf(sc).total}, send holds ${send.length}`);
    // every rank's send counts (P × P): rank q sends matrix[q·P + r] elements to rank r
    const matrix = new Int32Array(P * P);
    await this.wait('alltoallv (counts)', this.hccl.hcclAllgather(sc, matrix, P));
    const recvCounts = Int32Array.from({ length: P }, (_, q) => matrix[q * P + this.rank]!);
    const recv = sameKind(send, offsetsOf(recvCounts).total);
    let out = 0;
    for (let q = 0; q < P; q++) if (q !== this.rank) out += sc[q]!;
    this.count(send.BYTES_PER_ELEMENT * out + 4 * P);
    if (matrix.some((n) => n > 0)) await this.wait('alltoallv', this.hccl.hcclAlltoallv(send, sc, recv, recvCounts));
    return { recv, recvCounts };
  }

  async broadcast(buf: HostBuffer, root: number): Promise<void> {
    if (this.rank === root) this.count(buf.byteLength * (this.size - 1));
    if (buf.length > 0) await this.wait('broadcast', this.hccl.hcclBroadcast(buf, root));
  }

  async barrier(): Promise<void> {
    await this.wait('barrier', this.hccl.hcclBarrier());
  }

  abort(code: number): never {
    process.exit(code);
  }

  finalize(): void {
    if (this.closed) return;
    this.closed = true;
    this.hccl.hcclClose();
  }
}

/**
 * The HCCL communicator of a distributed run, where it applies: `train.backend: ascend` under an
 * Ascend launch (RANK_TABLE_FILE and RANK_ID set) with HCCL loadable. Otherwise collective is null
 * and `why` says in one line why HCCL is not used ('' when nothing asked for it). An Ascend launch
 * of several ranks that HCCL cannot serve and no MPI launcher started (`mpiWorld` false) is an
 * error: its processes would each train alone into the same output.
 */
export function joinHccl(backend: BackendName, mpiWorld: boolean, env: NodeJS.ProcessEnv = process.env): { collective: HcclCollective | null; why: string } {
  if (backend !== 'ascend') return { collective: null, why: '' };
  const world = ascendWorld(env);
  if (!world) return { collective: null, why: 'train.backend is ascend but no Ascend launch set RANK_TABLE_FILE and RANK_ID; collectives over MPI' };
  const why = hcclUnavailableReason();
  if (!why) return { collective: HcclCollective.init(world), why: '' };
  if (!mpiWorld && world.size !== 1) {
    throw new V4tuneError(`v4tune: rank ${world.rank} of the Ascend launch in ${world.rankTable}: ${why}; HCCL is needed (or start the ranks with mpirun)`);
  }
  return { collective: null, why: `train.backend is ascend but ${why}; collectives over MPI` };
}
