// A GPTQ-layout checkpoint folder read back as a weight source the V4 graph can run: the INT4
// linears are dequantised from their codes, every other tensor is read as stored. This is the
// folder `quantize --format gptq` writes (src/export/quantize.ts), or any AutoGPTQ "gptq" (v1)
// / "gptq_v2" checkpoint of a V4 model in GPTQModel's deepseek_v4 names or the official ones.
//
// For a linear `X.weight` [out, in] the folder holds (AutoGPTQ packing, 8 nibbles per int32):
//   X.qweight I32 [in/8, out]      code q[j, i] = bits 4(i mod 8).. of qweight[i div 8, j]
//   X.qzeros  I32 [groups, out/8]  zero z[j, g] = bits 4(j mod 8).. of qzeros[g, j div 8] (+1 in v1)
//   X.scales  F16 [groups, out]    s[j, g] = scales[g, j]
//   X.g_idx   I32 [in]             group of input column i
// and the weight is  W[j, i] = (q[j, i] − z[j, g_idx[i]]) · s[j, g_idx[i]]  (src/export/int4.ts
// dequantizeInt4 when g_idx[i] = i div group_size).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import type { Int4Weight } from './formats.js';
import type { ModelSource } from './v4/weights.js';
import { parseConfigWithWarnings, type V4Config } from './config.js';
import { bf16BytesToF32, f16BytesToF32, f32BytesToF32 } from './formats.js';
import { expectedTensors } from './layout.js';
import { gptqModelName } from './gptq-names.js';
import { numel, SafetensorsSet, type TensorEntry } from './safetensors.js';
import { readJsonFile } from '../fsutil.js';

const GPTQ_PARTS = ['qweight', 'qzeros', 'scales', 'g_idx'] as const;

/** quantization_config of a GPTQ folder (the fields the read-back depends on) */
export interface GptqQuantConfig {
  bits: 4;
  /** columns per group; -1: one group over the whole input */
  groupSize: number;
  /** v1 ("gptq") stores zero − 1 in qzeros, v2 ("gptq_v2") the zero itself */
  checkpointFormat: 'gptq' | 'gptq_v2';
}

export interface GptqTensorMeta {
  /** official name (`X.weight` for a quantised linear) */
  name: string;
  /** `int4` for a quantised linear, else the stored format */
  format: 'int4' | 'bf16' | 'f16' | 'f32' | 'int';
  /** stored dtype (I32 for the qweight of a quantised linear) */
  dtype: string;
  /** the dequantised shape */
  logicalShape: number[];
  /** the file holding it (the qweight's for a linear) */
  file: string;
}

interface Linear {
  qweight: TensorEntry;
  qzeros: TensorEntry;
  scales: TensorEntry;
  gIdx: TensorEntry;
  out: number;
  inF: number;
  groups: number;
}

const fmtShape = (s: ReadonlyArray<number>): string => `[${s.join(', ')}]`;

/** Whether `dir/config.json` declares a GPTQ quantization_config. */
export function isGptqFolder(dir: string): boolean {
  const p = join(dir, 'config.json');
  if (!existsSync(p)) return false;
  try {
    const cfg = JSON.parse(readFileSync(p, 'utf8')) as { quantization_config?: { quant_method?: unknown } };
    return cfg.quantization_config?.quant_method === 'gptq';
  } catch {
    return false;
  }
}

function parseQuantConfig(json: unknown, file: string): GptqQuantConfig {
  const q = (json as { quantization_config?: Record<string, unknown> }).quantization_config;
  if (typeof q !== 'object' || q === null) throw new InputError(`${file}: no quantization_config (not a GPTQ checkpoint)`);
  if (q.quant_method !== 'gptq') throw new InputError(`${file}: quantization_config.quant_method is ${JSON.stringify(q.quant_method)}, expected "gptq"`);
  if (q.bits !== 4) throw new InputError(`${file}: quantization_config.bits is ${JSON.stringify(q.bits)}; v4tune reads 4-bit GPTQ only`);
  const fmt = q.checkpoint_format ?? 'gptq';
  if (fmt !== 'gptq' && fmt !== 'gptq_v2') throw new InputError(`${file}: quantization_config.checkpoint_format is ${JSON.stringify(fmt)}, expected "gptq" or "gptq_v2"`);
  const gs = q.group_size;
  if (typeof gs !== 'number' || !Number.isInteger(gs) || (gs < 1 && gs !== -1)) throw new InputError(`${file}: quantization_config.group_size must be a positive integer or -1 (got ${JSON.stringify(gs)})`);
  return { bits: 4, groupSize: gs, checkpointFormat: fmt };
}

export class GptqCheckpoint implements ModelSource {
  readonly dir: string;
  readonly config: V4Config;
  readonly quant: GptqQuantConfig;
  readonly warnings: string[];
  private readonly set: SafetensorsSet;
  /** official `X.weight` → its four GPTQ tensors */
  private readonly linears: Map<string, Linear>;
  /** official name → the stored tensor, for everything not quantised */
  private readonly kept: Map<string, TensorEntry>;

  private constructor(dir: string, config: V4Config, quant: GptqQuantConfig, warnings: string[], set: SafetensorsSet, linears: Map<string, Linear>, kept: Map<string, TensorEntry>) {
    this.dir = dir;
    this.config = config;
    this.quant = quant;
    this.warnings = warnings;
    this.set = set;
    this.linears = linears;
    this.kept = kept;
  }

  /** config.json (with quantization_config) + safetensors; headers and shapes checked, no weight read. */
  static async open(dir: string): Promise<GptqCheckpoint> {
    const cfgPath = join(dir, 'config.json');
    if (!existsSync(cfgPath)) throw new InputError(`${dir}: no config.json (not a model folder)`);
    const json = readJsonFile(cfgPath);
    const quant = parseQuantConfig(json, cfgPath);
    const { config, warnings } = parseConfigWithWarnings(json, cfgPath);
    const set = SafetensorsSet.open(dir);
    try {
      const linears = new Map<string, Linear>();
      const kept = new Map<string, TensorEntry>();
      const bases = new Set<string>();
      // on-disk names: GPTQModel's deepseek_v4 layout (export/gptq-names.ts) or the official ones
      const official = new Map(expectedTensors(config).map((t) => [gptqModelName(t.name, config.moe_intermediate_size), t.name]));
      const toOfficial = (n: string): string => official.get(n) ?? n;
      for (const name of set.entries.keys()) {
        const part = GPTQ_PARTS.find((p) => name.endsWith(`.${p}`));
        if (part) bases.add(name.slice(0, -(part.length + 1)));
        else kept.set(toOfficial(name), set.entry(name));
      }
      for (const base of bases) linears.set(toOfficial(`${base}.weight`), linearOf(set, base, quant));
      const ck = new GptqCheckpoint(dir, config, quant, warnings, set, linears, kept);
      ck.validate();
      return ck;
    } catch (e) {
      set.close();
      throw e;
    }
  }

  /** Every tensor config.json implies is present with its shape (an MTP block may be absent as a whole). */
  private validate(): void {
    const names = this.names();
    for (const t of expectedTensors(this.config)) {
      const block = /^mtp\.\d+\./.exec(t.name);
      if (block && !names.some((n) => n.startsWith(block[0]))) continue;
      if (!this.has(t.name)) throw new InputError(`${this.dir}: missing tensor ${t.name} (config.json implies it, shape ${fmtShape(t.shape)})`);
      const m = this.meta(t.name);
      if (m.logicalShape.length !== t.shape.length || m.logicalShape.some((x, i) => x !== t.shape[i])) {
        throw new InputError(`${m.file}: tensor ${t.name} has shape ${fmtShape(m.logicalShape)}, expected ${fmtShape(t.shape)} from config.json`);
      }
    }
  }

  /** official names (quantised linears as `X.weight`), sorted */
  names(): string[] {
    return [...this.linears.keys(), ...this.kept.keys()].sort();
  }

  /** official names of the quantised linears, sorted */
  quantizedNames(): string[] {
    return [...this.linears.keys()].sort();
  }

  has(name: string): boolean {
    return this.linears.has(name) || this.kept.has(name);
  }

  meta(name: string): GptqTensorMeta {
    const l = this.linears.get(name);
    if (l) return { name, format: 'int4', dtype: 'I32', logicalShape: [l.out, l.inF], file: l.qweight.file };
    const e = this.kept.get(name);
    if (!e) throw new InputError(`${this.dir}: missing tensor ${name}`);
    const format = e.dtype === 'BF16' ? 'bf16' : e.dtype === 'F16' ? 'f16' : e.dtype === 'F32' ? 'f32' : 'int';
    return { name, format, dtype: e.dtype, logicalShape: e.shape.slice(), file: e.file };
  }

  /**
   * The INT4 codes, zeros and scales of a quantised linear, unpacked into the form
   * src/export/int4.ts uses. Needs g_idx[i] = i div group_size (desc_act false).
   */
  int4(name: string): Int4Weight {
    const l = this.linear(name);
    const gs = l.inF / l.groups;
    const gIdx = this.readI32(l.gIdx);
    for (let i = 0; i < l.inF; i++) {
      if (gIdx[i] !== Math.floor(i / gs)) throw new InputError(`${l.gIdx.file}: tensor ${l.gIdx.name}[${i}] is ${gIdx[i]}, not ${Math.floor(i / gs)} (act-order GPTQ has no contiguous groups)`);
    }
    const { q, zeros, scales, scaleBits } = this.unpack(l);
    return { out: l.out, inF: l.inF, groupSize: gs, q, scales, scaleBits, zeros };
  }

  /** the tensor as float32: a quantised linear dequantised (see the file comment), the rest as stored */
  async f32(name: string, expectShape?: number[]): Promise<Float32Array> {
    const m = this.meta(name);
    if (expectShape && (expectShape.length !== m.logicalShape.length || expectShape.some((x, i) => x !== m.logicalShape[i]))) {
      throw new InputError(`${m.file}: tensor ${name} has shape ${fmtShape(m.logicalShape)}, expected ${fmtShape(expectShape)}`);
    }
    const l = this.linears.get(name);
    if (l) return this.dequantize(l);
    const data = this.set.read(this.kept.get(name)!.name);
    switch (m.format) {
      case 'bf16': return bf16BytesToF32(data);
      case 'f16': return f16BytesToF32(data);
      case 'f32': return f32BytesToF32(data);
      default: throw new InputError(`${m.file}: tensor ${name} is ${m.dtype} (integers), not a float weight`);
    }
  }

  /** an integer tensor (I64 within int32, I32, I16, I8, U8) as Int32Array */
  async ints(name: string): Promise<Int32Array> {
    const e = this.kept.get(name);
    if (!e) throw new InputError(`${this.dir}: missing tensor ${name}`);
    const data = this.set.read(e.name);
    const n = numel(e.shape);
    const out = new Int32Array(n);
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let i = 0; i < n; i++) {
      switch (e.dtype) {
        case 'I64': {
          const b = dv.getBigInt64(i * 8, true);
          if (b > 2147483647n || b < -2147483648n) throw new InputError(`${e.file}: tensor ${name}[${i}] = ${b} does not fit in int32`);
          out[i] = Number(b);
          break;
        }
        case 'I32': out[i] = dv.getInt32(i * 4, true); break;
        case 'I16': out[i] = dv.getInt16(i * 2, true); break;
        case 'I8': out[i] = dv.getInt8(i); break;
        case 'U8': case 'BOOL': out[i] = dv.getUint8(i); break;
        default: throw new InputError(`${e.file}: tensor ${name} is ${e.dtype}, not an integer tensor`);
      }
    }
    return out;
  }

  async close(): Promise<void> {
    this.set.close();
  }

  private linear(name: string): Linear {
    const l = this.linears.get(name);
    if (!l) throw new InputError(`${this.dir}: ${name} is not a quantised linear (no ${name.replace(/\.weight$/, '')}.qweight)`);
    return l;
  }

  private readI32(e: TensorEntry): Int32Array {
    const b = this.set.read(e.name);
    return new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  }

  // codes [out, in], zeros [out, groups], scales [out, groups] (row-major by output row, as int4.ts)
  private unpack(l: Linear): { q: Uint8Array; zeros: Uint8Array; scales: Float32Array; scaleBits: Uint16Array } {
    const { out, inF, groups: G } = l;
    const qweight = this.readI32(l.qweight);
    const qzeros = this.readI32(l.qzeros);
    const sb = this.set.read(l.scales.name);
    const sBits = new Uint16Array(sb.buffer.slice(sb.byteOffset, sb.byteOffset + sb.byteLength));
    const sVals = f16BytesToF32(sb);
    const q = new Uint8Array(out * inF);
    for (let i = 0; i < inF; i++) {
      const row = (i >> 3) * out;
      const shift = 4 * (i & 7);
      for (let j = 0; j < out; j++) q[j * inF + i] = (qweight[row + j]! >>> shift) & 15;
    }
    const zeroOffset = this.quant.checkpointFormat === 'gptq' ? 1 : 0;
    const zeros = new Uint8Array(out * G);
    const scales = new Float32Array(out * G);
    const scaleBits = new Uint16Array(out * G);
    for (let g = 0; g < G; g++) {
      for (let j = 0; j < out; j++) {
        zeros[j * G + g] = ((qzeros[g * (out / 8) + (j >> 3)]! >>> (4 * (j & 7))) & 15) + zeroOffset;
        scales[j * G + g] = sVals[g * out + j]!;
        scaleBits[j * G + g] = sBits[g * out + j]!;
      }
    }
    return { q, zeros, scales, scaleBits };
  }

  // W[j, i] = (q[j, i] − z[j, g_idx[i]]) · s[j, g_idx[i]]
  private dequantize(l: Linear): Float32Array {
    const { out, inF, groups: G } = l;
    const gIdx = this.readI32(l.gIdx);
    for (let i = 0; i < inF; i++) {
      const g = gIdx[i]!;
      if (g < 0 || g >= G) throw new InputError(`${l.gIdx.file}: tensor ${l.gIdx.name}[${i}] is ${g}, outside 0..${G - 1}`);
    }
    const { q, zeros, scales } = this.unpack(l);
    const w = new Float32Array(out * inF);
    for (let j = 0; j < out; j++) {
      for (let i = 0; i < inF; i++) {
        const g = j * G + gIdx[i]!;
        w[j * inF + i] = (q[j * inF + i]! - zeros[g]!) * scales[g]!;
      }
    }
    return w;
  }
}

// the four tensors of one quantised linear, their dtypes and shapes checked against each other
function linearOf(set: SafetensorsSet, base: string, quant: GptqQuantConfig): Linear {
  const get = (part: string, dtype: string): TensorEntry => {
    const name = `${base}.${part}`;
    if (!set.has(name)) throw new InputError(`${set.dir}: ${base} has GPTQ tensors but no ${name}`);
    const e = set.entry(name);
    if (e.dtype !== dtype) throw new InputError(`${e.file}: tensor ${name} is ${e.dtype}, expected ${dtype}`);
    return e;
  };
  const qweight = get('qweight', 'I32');
  const qzeros = get('qzeros', 'I32');
  const scales = get('scales', 'F16');
  const gIdx = get('g_idx', 'I32');
  const bad = (e: TensorEntry, want: number[]): never => {
    throw new InputError(`${e.file}: tensor ${e.name} has shape ${fmtShape(e.shape)}, expected ${fmtShape(want)}`);
  };
  if (qweight.shape.length !== 2) bad(qweight, [NaN, NaN]);
  const inF = qweight.shape[0]! * 8;
  const out = qweight.shape[1]!;
  if (out % 8 !== 0) throw new InputError(`${qweight.file}: tensor ${qweight.name}: output size ${out} is not a multiple of 8 (qzeros packs 8 zeros per int32)`);
  if (scales.shape.length !== 2 || scales.shape[1] !== out) bad(scales, [NaN, out]);
  const groups = scales.shape[0]!;
  if (groups < 1 || inF % groups !== 0) throw new InputError(`${scales.file}: tensor ${scales.name} has ${groups} groups, which do not divide the input size ${inF}`);
  if (quant.groupSize > 0 && inF / groups !== quant.groupSize) {
    throw new InputError(`${scales.file}: tensor ${scales.name} has groups of ${inF / groups} columns, config.json quantization_config.group_size is ${quant.groupSize}`);
  }
  if (qzeros.shape.length !== 2 || qzeros.shape[0] !== groups || qzeros.shape[1] !== out / 8) bad(qzeros, [groups, out / 8]);
  if (gIdx.shape.length !== 1 || gIdx.shape[0] !== inF) bad(gIdx, [inF]);
  return { qweight, qzeros, scales, gIdx, out, inF, groups };
}
