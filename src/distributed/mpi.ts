// The MPI engine of the Collective interface: native/mpi (a separate addon, built only where the
// system MPI exists) over MPI_COMM_WORLD. Each collective runs on a worker thread (the JS thread
// stays free to report a signal); errors return from MPI and reject with MPI's own message.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { V4tuneError } from '../errors.js';
import { offsetsOf, sameKind, type Collective, type HostBuffer, type Traffic } from './collective.js';

interface MpiAddon {
  init(): { rank: number; size: number; threadLevel: number; serializedOk: boolean; library: string };
  finalize(): void;
  abort(code: number): void;
  allreduceSum(buf: Float32Array | Float64Array | Int32Array): Promise<void>;
  allgatherv(send: HostBuffer, recv: HostBuffer, counts: Int32Array): Promise<void>;
  alltoallv(send: HostBuffer, sendCounts: Int32Array, recv: HostBuffer, recvCounts: Int32Array): Promise<void>;
  alltoall(send: HostBuffer, recv: HostBuffer, n: number): Promise<void>;
  broadcast(buf: HostBuffer, root: number): Promise<void>;
  barrier(): Promise<void>;
}

const here = path.dirname(fileURLToPath(import.meta.url));
// src/distributed and dist/distributed both sit two levels below the package root
export const MPI_ADDON_PATH = path.join(here, '..', '..', 'native', 'mpi', 'build', 'Release', 'v4tune_mpi.node');

let loaded: { addon: MpiAddon | null; reason: string } | null = null;

function load(): { addon: MpiAddon | null; reason: string } {
  if (loaded) return loaded;
  if (!existsSync(MPI_ADDON_PATH)) {
    let why = 'it was not built (needs mpicc and mpi.h — Debian: apt-get install openmpi-bin libopenmpi-dev — then `node native/mpi/build.mjs`)';
    const status = path.join(path.dirname(MPI_ADDON_PATH), '..', 'build-status.json');
    if (existsSync(status)) {
      try {
        const s = JSON.parse(readFileSync(status, 'utf8')) as { error?: string | null };
        if (s.error) why = `${s.error}; then \`node native/mpi/build.mjs\``;
      } catch {
        // an unreadable status says no more than a missing one
      }
    }
    loaded = { addon: null, reason: `the MPI binding is unavailable: ${why}` };
    return loaded;
  }
  try {
    loaded = { addon: createRequire(import.meta.url)(MPI_ADDON_PATH) as MpiAddon, reason: '' };
  } catch (e) {
    loaded = { addon: null, reason: `the MPI binding failed to load: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}` };
  }
  return loaded;
}

/** Why MPI cannot be used here, in one sentence; '' when it can. */
export function mpiUnavailableReason(): string {
  return load().reason;
}

export class MpiCollective implements Collective {
  readonly rank: number;
  readonly size: number;
  readonly engine: string;
  readonly traffic: Traffic = { bytes: 0, calls: 0 };
  /**
   * Seconds one collective may wait for the other ranks before this rank decides one of them
   * hangs and ends the job (MPI_Abort) with a line saying so; 0: wait forever. A rank that dies
   * needs no timeout: the launcher ends the others.
   */
  timeoutS = 0;
  private finalized = false;

  private constructor(private readonly mpi: MpiAddon) {
    const w = mpi.init();
    if (!w.serializedOk) throw new V4tuneError(`MPI: ${w.library} gives thread level ${w.threadLevel}; v4tune needs MPI_THREAD_SERIALIZED`);
    this.rank = w.rank;
    this.size = w.size;
    this.engine = `MPI (${w.library.split(',')[0]})`;
  }

  /** MPI_Init (once per process) and the world; throws when the binding is unavailable. */
  static init(): MpiCollective {
    const { addon, reason } = load();
    if (!addon) throw new V4tuneError(`v4tune: ${reason}`);
    return new MpiCollective(addon);
  }

  private async wait<T>(what: string, call: Promise<T>): Promise<T> {
    if (!(this.timeoutS > 0)) return call;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>(() => {
      timer = setTimeout(() => {
        process.stderr.write(`v4tune: rank ${this.rank} of ${this.size}: ${what} waited ${this.timeoutS} s for the other ranks (distributed.timeout_s): a rank hangs or is far slower; ending the job\n`);
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

  async allreduceSum(buf: Float32Array | Float64Array | Int32Array): Promise<void> {
    this.count(buf.byteLength);
    await this.wait('allreduce', this.mpi.allreduceSum(buf));
  }

  async allgatherv<T extends HostBuffer>(send: T, counts: ArrayLike<number>): Promise<T> {
    const c = Int32Array.from(counts);
    const recv = sameKind(send, offsetsOf(c).total);
    this.count(send.BYTES_PER_ELEMENT * c[this.rank]! * (this.size - 1));
    await this.wait('allgatherv', this.mpi.allgatherv(send, recv, c));
    return recv;
  }

  async alltoallv<T extends HostBuffer>(send: T, sendCounts: ArrayLike<number>): Promise<{ recv: T; recvCounts: Int32Array }> {
    const sc = Int32Array.from(sendCounts);
    const recvCounts = new Int32Array(this.size);
    await this.wait('alltoall', this.mpi.alltoall(sc, recvCounts, 1));
    const recv = sameKind(send, offsetsOf(recvCounts).total);
    let out = 0;
    for (let q = 0; q < this.size; q++) if (q !== this.rank) out += sc[q]!;
    this.count(send.BYTES_PER_ELEMENT * out + 4 * this.size);
    await this.wait('alltoallv', this.mpi.alltoallv(send, sc, recv, recvCounts));
    return { recv, recvCounts };
  }

  async broadcast(buf: HostBuffer, root: number): Promise<void> {
    if (this.rank === root) this.count(buf.byteLength * (this.size - 1));
    await this.wait('broadcast', this.mpi.broadcast(buf, root));
  }

  async barrier(): Promise<void> {
    await this.wait('barrier', this.mpi.barrier());
  }

  abort(code: number): never {
    this.mpi.abort(code);
    process.exit(code);
  }

  finalize(): void {
    if (this.finalized) return;
    this.finalized = true;
    this.mpi.finalize();
  }
}
