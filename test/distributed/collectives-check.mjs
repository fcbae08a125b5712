// Run under `mpirun -np P`: every collective of the MPI engine on uneven buffers; each rank
// prints one JSON line of what it received (collective.test.ts checks them).
import { MpiCollective } from '../../dist/distributed/mpi.js';

const c = MpiCollective.init();
const { rank: r, size: P } = c;
const out = { rank: r, size: P, engine: c.engine };

const f32 = Float32Array.from({ length: 5 }, (_, i) => r * 10 + i + 0.5);
await c.allreduceSum(f32);
out.allreduceF32 = Array.from(f32);
const f64 = Float64Array.of(1e-17 * (r + 1), 2 ** 40 + r);
await c.allreduceSum(f64);
out.allreduceF64 = Array.from(f64);

// rank q sends q + 1 values
const counts = Array.from({ length: P }, (_, q) => q + 1);
out.allgatherv = Array.from(await c.allgatherv(Int32Array.from({ length: r + 1 }, (_, i) => 100 * r + i), counts));

// rank r sends (r + q) % 3 values to rank q: 100·r + 10·q + i
const sendCounts = Array.from({ length: P }, (_, q) => (r + q) % 3);
const send = new Float64Array(sendCounts.reduce((a, b) => a + b, 0));
let o = 0;
for (let q = 0; q < P; q++) for (let i = 0; i < sendCounts[q]; i++) send[o++] = 100 * r + 10 * q + i;
const got = await c.alltoallv(send, sendCounts);
out.alltoallv = Array.from(got.recv);
out.alltoallvCounts = Array.from(got.recvCounts);

const b = r === P - 1 ? Uint8Array.of(7, 8, 9) : new Uint8Array(3);
await c.broadcast(b, P - 1);
out.broadcast = Array.from(b);
await c.barrier();
try {
  await c.alltoallv(new Float32Array(1), new Array(P + 1).fill(0));
  out.badCounts = 'accepted';
} catch (e) {
  out.badCounts = e.message;
}
out.traffic = c.traffic;
console.log(JSON.stringify(out));
c.finalize();
