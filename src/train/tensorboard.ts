// TensorBoard event files, written by hand: TFRecord framing (length, masked CRC-32C of the
// length, data, masked CRC-32C of the data) around Event protobufs, encoded field by field.
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//             SessionLog session_log = 6 }
//   Summary { repeated Value value = 1 }
//   Value   { string tag = 1; float simple_value = 2; TensorProto tensor = 8; SummaryMetadata metadata = 9 }
//   TensorProto { DataType dtype = 1 (DT_STRING = 7); TensorShapeProto tensor_shape = 2; repeated bytes string_val = 8 }
//   SummaryMetadata { PluginData plugin_data = 1 }   PluginData { string plugin_name = 1 }
//   SessionLog { SessionStatus status = 1 (START = 1) }
// (tensorflow/core/util/event.proto, framework/summary.proto, tensor.proto; tensorboard's text
// plugin reads a DT_STRING tensor under plugin "text".) A resumed run writes a new file that opens
// with SessionLog START at its first step, so TensorBoard drops the first session's steps from
// there on (they are the steps the resume runs again).
import { appendFileSync, mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** CRC-32C (Castagnoli) of bytes. */
export function crc32c(b: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** TFRecord's masked CRC: rotate right by 15 and add a constant. */
export function maskedCrc32c(b: Uint8Array): number {
  const c = crc32c(b);
  return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord: u64 length, u32 masked crc of it, data, u32 masked crc of the data (little endian). */
export function tfRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length + 4);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, BigInt(data.length), true);
  v.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(data, 12);
  v.setUint32(12 + data.length, maskedCrc32c(data), true);
  return out;
}

/** A protobuf message under construction. */
class Proto {
  private parts: number[] = [];
  private varint(x: bigint | number): void {
    let n = BigInt.asUintN(64, BigInt(x));
    while (n >= 0x80n) {
      this.parts.push(Number(n & 0x7fn) | 0x80);
      n >>= 7n;
    }
    this.parts.push(Number(n));
  }
  private key(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }
  int(field: number, x: number): this {
    this.key(field, 0);
    this.varint(x);
    return this;
  }
  double(field: number, x: number): this {
    this.key(field, 1);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, x, true);
    this.parts.push(...b);
    return this;
  }
  float(field: number, x: number): this {
    this.key(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, x, true);
    this.parts.push(...b);
    return this;
  }
  bytes(field: number, b: Uint8Array | string | Proto): this {
    const data = typeof b === 'string' ? new TextEncoder().encode(b) : b instanceof Proto ? b.done() : b;
    this.key(field, 2);
    this.varint(data.length);
    for (const x of data) this.parts.push(x);
    return this;
  }
  done(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

const DT_STRING = 7;

/** Appends events to `<dir>/events.out.tfevents.<seconds>.<host>`, one file per writer. */
export class EventWriter {
  readonly path: string;

  /** `startStep`: first step this writer logs; > 1 marks a resume (SessionLog START there). */
  constructor(dir: string, startStep = 0, now = Date.now()) {
    mkdirSync(dir, { recursive: true });
    // TensorBoard reads a folder's files in name order: the millisecond keeps sessions in order
    this.path = join(dir, `events.out.tfevents.${Math.floor(now / 1000)}.${hostname()}.${String(Math.floor(now)).padStart(14, '0')}.${process.pid}`);
    this.write(new Proto().double(1, now / 1000).bytes(3, 'brain.Event:2'));
    if (startStep > 1) this.write(new Proto().double(1, now / 1000).int(2, startStep).bytes(6, new Proto().int(1, 1)));
  }

  private write(event: Proto): void {
    appendFileSync(this.path, tfRecord(event.done()));
  }

  /** Scalars at one step (tag → value; non-finite or null values are skipped). */
  scalars(step: number, values: Record<string, number | null>, wallTime = Date.now() / 1000): void {
    const summary = new Proto();
    let n = 0;
    for (const [tag, v] of Object.entries(values)) {
      if (v === null || !Number.isFinite(v)) continue;
      summary.bytes(1, new Proto().bytes(1, tag).float(2, v));
      n++;
    }
    if (n > 0) this.write(new Proto().double(1, wallTime).int(2, step).bytes(5, summary));
  }

  /** A text summary (TensorBoard's Text tab; markdown) at one step. */
  text(step: number, tag: string, text: string, wallTime = Date.now() / 1000): void {
    const tensor = new Proto().int(1, DT_STRING).bytes(2, new Proto()).bytes(8, text);
    const metadata = new Proto().bytes(1, new Proto().bytes(1, 'text'));
    const value = new Proto().bytes(1, tag).bytes(8, tensor).bytes(9, metadata);
    this.write(new Proto().double(1, wallTime).int(2, step).bytes(5, new Proto().bytes(1, value)));
  }
}
