// Run as one rank of a fake-HCCL world (RANK_TABLE_FILE, RANK_ID, RANK_SIZE; ASCEND_HOME_PATH
// holding the fake libascendcl.so and libhccl.so): every collective of the HCCL engine on uneven
// buffers; prints one JSON line of what this rank received (hccl.test.ts checks them).
import { ascendWorld, HcclCollective } from '../../../dist/distributed/hccl.js';

const c = HcclCollective.init(ascendWorld());
const { rank: r, size: P } = c;
const out = { rank: r, size: P, engine: c.engine };

const f32 = Float32Array.from({ length: 5 }, (_, i) => r * 10 + i + 0.5);
await c.allreduceSum(f32);
out.allreduceF32 = Array.from(f32);
const f64 = Float64Array.of(1e-17 * (r + 1), 2 ** 40 + r);
await c.allreduceSum(f64);
out.allreduceF64 = Array.from(f64);
const i32 = Int32Array.of(r, -2 * r, 1 << 20);
await c.allreduceSum(i32);
out.allreduceI32 = Array.from(i32);
// a buffer past the first staging size: the device buffers grow
const big = new Float32Array(100_000).fill(r + 1);
await c.allreduceSum(big);
out.allreduceBig = [big[0], big[99_999]];

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
const none = await c.alltoallv(new Float32Array(0), new Array(P).fill(0));
out.alltoallvEmpty = [none.recv.length, ...none.recvCounts];

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
