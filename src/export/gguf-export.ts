// The GGUF outputs of the quantize stage: llama.cpp `deepseek4` files (llama-deepseek4.ts), one
// per format, streamed tensor by tensor (the writer holds one stacked expert tensor at a time).
//
// Tensor types by format (the quantised linears: linears.ts):
//   gguf-f32   every tensor F32
//   gguf-f16   matrices F16, 1-D and F32-stored tensors F32   (what llama.cpp users feed to
//   gguf-bf16  matrices BF16, 1-D and F32-stored tensors F32    llama-quantize for other types)
//   gguf-q8_0  quantised linears Q8_0; other matrices F16, 1-D and F32-stored tensors F32
//   gguf-q4_0  quantised linears Q4_0; the rest as gguf-q8_0
//   gguf-q4_k  quantised linears Q4_K; where the input size is not a multiple of 256, Q5_0 (the
//              fallback of llama.cpp's own quantizer, llama-quant.cpp tensor_type_fallback); the
//              rest as gguf-q8_0
// A quantised type whose block does not divide the input size falls back to F16 (as llama.cpp's).
// tid2eid is I32. A hash layer's gate bias, if the checkpoint has one, is not written (llama.cpp
// reads none; the converter drops it).
//
// The main file holds the trunk; a checkpoint with an MTP block also gets `mtp-<file>` beside it
// (the converter's `--mtp` output, see llama-deepseek4.ts).
import { mkdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { f32ToF16Native } from '../backend/native/formats.js';
import { readJsonFile } from '../fsutil.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { f32ToBf16Bytes, f32ToBytes, f32ToF16Bytes } from '../model/formats.js';
import { GgmlType, GgufWriter, type GgmlTypeId, type GgufTensorInfo } from './gguf.js';
import { dequantizeQ5_0, quantizeQ5_0 } from './ggml-quants.js';
import { deepseek4Metadata, deepseek4Vocab, ggufName, MTP_EH_PARTS, type GgufPart } from './llama-deepseek4.js';
import { keptBf16AsF16, keptF32 } from './kept.js';
import { blockOrder, decodeBuffer, linearKind, yieldLoop, type LinearKind } from './linears.js';
import { Q4_K_BLOCK } from './q4k.js';
import type { GgufFormat, QuantizeOptions, WriteResult } from './quantize-types.js';
import type { Rounder } from './rounders.js';

export type { GgufFormat } from './quantize-types.js';

/** each format: the file label (`model-<label>.gguf`) and llama.cpp's general.file_type (llama_ftype) */
export const GGUF_FORMATS: Readonly<Record<GgufFormat, { label: string; fileType: number }>> = {
  'gguf-f32': { label: 'F32', fileType: 0 },
  'gguf-f16': { label: 'F16', fileType: 1 },
  'gguf-bf16': { label: 'BF16', fileType: 32 },
  'gguf-q8_0': { label: 'Q8_0', fileType: 7 },
  'gguf-q4_0': { label: 'Q4_0', fileType: 2 },
  'gguf-q4_k': { label: 'Q4_K', fileType: 14 },
};

export function isGgufFormat(f: string): f is GgufFormat {
  return Object.hasOwn(GGUF_FORMATS, f);
}

/** the MTP file beside a main GGUF file */
export function mtpGgufPath(main: string): string {
  return join(dirname(main), `mtp-${basename(main)}`);
}

/** the ggml type of a quantised linear with `inF` inputs in a format */
function linearType(format: GgufFormat, inF: number): GgmlTypeId {
  switch (format) {
    case 'gguf-f32': return GgmlType.F32;
    case 'gguf-f16': return GgmlType.F16;
    case 'gguf-bf16': return GgmlType.BF16;
    case 'gguf-q8_0': return inF % 32 === 0 ? GgmlType.Q8_0 : GgmlType.F16;
    case 'gguf-q4_0': return inF % 32 === 0 ? GgmlType.Q4_0 : GgmlType.F16;
    case 'gguf-q4_k': return inF % Q4_K_BLOCK === 0 ? GgmlType.Q4_K : inF % 32 === 0 ? GgmlType.Q5_0 : GgmlType.F16;
  }
}

/** the ggml type of a kept tensor */
function keptType(format: GgufFormat, stored: string, dims: number): GgmlTypeId {
  if (stored === 'int') return GgmlType.I32;
  if (format === 'gguf-f32' || stored === 'f32' || dims === 1) return GgmlType.F32;
  return format === 'gguf-bf16' ? GgmlType.BF16 : GgmlType.F16;
}

const QUANTISED_TYPES: ReadonlySet<number> = new Set([GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q5_0]);

interface Item {
  info: GgufTensorInfo;
  /** official tensors it is made of: stacked experts in expert order, or [e_proj, h_proj] */
  parts: string[];
  /** the kind of a quantised linear (block types) */
  quant: LinearKind | null;
  /** nextn.eh_proj: the parts concatenated along the input */
  concatInputs: boolean;
}

function plan(ckpt: Checkpoint, format: GgufFormat, part: GgufPart, fallback: string[]): Item[] {
  const c = ckpt.config;
  const items = new Map<string, Item>();
  // block order, as llama.cpp's converter writes them; calibration goes through the blocks once
  for (const n of blockOrder(ckpt.names())) {
    const hashBias = /^layers\.(\d+)\.ffn\.gate\.bias$/.exec(n);
    if (hashBias && Number(hashBias[1]) < c.num_hash_layers) continue;
    const g = ggufName(n, part, c.num_hidden_layers);
    if (g === null) continue;
    const m = ckpt.meta(n);
    const shape = m.logicalShape;
    const kind = linearKind(n);
    const type = kind !== null ? linearType(format, shape[shape.length - 1]!) : keptType(format, m.format, shape.length);
    if (kind !== null && format !== 'gguf-f32' && format !== 'gguf-f16' && format !== 'gguf-bf16' && !QUANTISED_TYPES.has(type)) fallback.push(n);
    if (kind !== null && type === GgmlType.Q5_0 && format === 'gguf-q4_k') fallback.push(n);
    const dims = [...shape].reverse();
    const have = items.get(g);
    if (have) {
      have.parts.push(n);
      if (have.concatInputs) have.info.dims[0] = have.info.dims[0]! + dims[0]!;
      else have.info.dims[2] = have.parts.length;
      continue;
    }
    const stacked = /\.ffn\.experts\.\d+\./.test(n);
    const eh = (MTP_EH_PARTS as readonly string[]).some((s) => n.endsWith(`.${s}`));
    items.set(g, { info: { name: g, dims: stacked ? [...dims, 1] : dims, type }, parts: [n], quant: QUANTISED_TYPES.has(type) ? kind : null, concatInputs: eh });
  }
  const expertIdx = (n: string): number => Number(/\.experts\.(\d+)\./.exec(n)?.[1] ?? 0);
  for (const it of items.values()) {
    if (it.concatInputs) it.parts.sort((a, b) => Number(a.endsWith('.h_proj.weight')) - Number(b.endsWith('.h_proj.weight')));
    else it.parts.sort((a, b) => expertIdx(a) - expertIdx(b));
  }
  return [...items.values()];
}

/** floats a kept BF16 tensor converts at a time (16 MB): larger tensors go by rows (keptBf16AsF16) */
const KEPT_CHUNK = 1 << 22;
const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

function floatBytes(type: GgmlTypeId, w: Float32Array): Uint8Array {
  return type === GgmlType.F32 ? f32ToBytes(w) : type === GgmlType.BF16 ? f32ToBf16Bytes(w) : f32ToF16Native(w) ?? f32ToF16Bytes(w);
}

/** rows of a [rows, a] and b [rows, cb] side by side: [rows, a + cb] */
function concatColumns(x: Float32Array, ca: number, y: Float32Array, cb: number): Float32Array {
  const rows = x.length / ca;
  const out = new Float32Array(rows * (ca + cb));
  for (let r = 0; r < rows; r++) {
    out.set(x.subarray(r * ca, (r + 1) * ca), r * (ca + cb));
    out.set(y.subarray(r * cb, (r + 1) * cb), r * (ca + cb) + ca);
  }
  return out;
}

interface FileResult { quantized: number; kept: number; bytes: number; direct: boolean }

async function writeFile(ckpt: Checkpoint, opts: QuantizeOptions, format: GgufFormat, rounder: Rounder, part: GgufPart, path: string, items: Item[], progress: (name: string) => void): Promise<FileResult> {
  const cfgJson = readJsonFile(join(opts.model, 'config.json')) as { _name_or_path?: unknown; max_position_embeddings?: unknown };
  const name = typeof cfgJson._name_or_path === 'string' ? cfgJson._name_or_path : 'DeepSeek V4 (v4tune)';
  const maxPos = typeof cfgJson.max_position_embeddings === 'number' ? cfgJson.max_position_embeddings : undefined;
  const kvs = [
    ...deepseek4Metadata(ckpt.config, { name, fileType: GGUF_FORMATS[format].fileType, part, maxPositionEmbeddings: maxPos }),
    ...deepseek4Vocab(opts.model, ckpt.config.vocab_size),
  ];
  const writer = new GgufWriter(path, kvs, items.map((i) => i.info), { directIo: opts.directIo ?? true });
  let quantized = 0;
  let kept = 0;
  // a tensor's bytes are written off the JS thread while the next one is read and quantised
  let writing: Promise<unknown> = Promise.resolve();
  const room = decodeBuffer(ckpt);
  // the embedding and head (BF16 stored, F16 written) are converted in row chunks instead
  let rowChunk: Float32Array | undefined;
  try {
    for (const it of items) {
      const chunks: Uint8Array[] = [];
      if (it.concatInputs) {
        const [e, h] = it.parts as [string, string];
        const ce = ckpt.meta(e).logicalShape[1]!;
        const ch = ckpt.meta(h).logicalShape[1]!;
        chunks.push(floatBytes(it.info.type, concatColumns(await keptF32(ckpt, e), ce, await keptF32(ckpt, h), ch)));
        kept += 2;
        progress(e);
        progress(h);
      }
      for (const n of it.concatInputs ? [] : it.parts) {
        const t = it.info.type;
        if (it.quant) {
          const [out, inF] = ckpt.meta(n).logicalShape as [number, number];
          const w = await ckpt.f32(n, undefined, room(n));
          if (t === GgmlType.Q4_0) chunks.push(await rounder.q4_0(n, it.quant, w, out, inF));
          else if (t === GgmlType.Q4_K) chunks.push(await rounder.q4_k(n, it.quant, w, out, inF));
          else if (t === GgmlType.Q8_0) chunks.push(await rounder.q8_0(n, it.quant, w, out, inF));
          else chunks.push(rounder.rtnBlocks(n, it.quant, w, inF, quantizeQ5_0, dequantizeQ5_0));
          quantized++;
        } else {
          if (t === GgmlType.I32) {
            const x = await ckpt.ints(n);
            chunks.push(new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
          } else if (t === GgmlType.F16 && ckpt.meta(n).format === 'bf16' && numel(ckpt.meta(n).logicalShape) > KEPT_CHUNK) {
            chunks.push(await keptBf16AsF16(ckpt, n, rowChunk ??= new Float32Array(KEPT_CHUNK)));
          } else chunks.push(floatBytes(t, await keptF32(ckpt, n, room(n))));
          kept++;
        }
        progress(n);
        await yieldLoop();
      }
      await writing;
      writing = writer.addAsync(it.info.name, chunks);
    }
    await writing;
    const direct = writer.direct;
    return { quantized, kept, bytes: writer.finish(), direct };
  } catch (e) {
    await writing.catch(() => undefined);
    writer.abort();
    throw e;
  }
}

/** Write the GGUF file(s) of one format (see the file comment). */
export async function writeGguf(ckpt: Checkpoint, opts: QuantizeOptions, format: GgufFormat, rounder: Rounder): Promise<WriteResult & { mtpOut: string | null }> {
  const fallback: string[] = [];
  const main = plan(ckpt, format, 'main', fallback);
  const hasMtp = ckpt.names().some((n) => n.startsWith('mtp.0.'));
  const mtp = hasMtp ? plan(ckpt, format, 'mtp', fallback) : [];
  const total = [...main, ...mtp].reduce((a, it) => a + it.parts.length, 0);
  rounder.plan([...main, ...mtp].flatMap((it) => (it.quant && (it.info.type === GgmlType.Q4_0 || it.info.type === GgmlType.Q4_K) ? it.parts.map((n) => {
    const [out, inF] = ckpt.meta(n).logicalShape as [number, number];
    return { name: n, out, inF };
  }) : [])));
  let done = 0;
  const progress = (name: string): void => opts.onTensor?.(++done, total, name);
  mkdirSync(dirname(opts.out), { recursive: true });
  const a = await writeFile(ckpt, opts, format, rounder, 'main', opts.out, main, progress);
  const mtpOut = hasMtp ? mtpGgufPath(opts.out) : null;
  const b = mtpOut ? await writeFile(ckpt, opts, format, rounder, 'mtp', mtpOut, mtp, progress) : { quantized: 0, kept: 0, bytes: 0, direct: a.direct };
  const skipped = ckpt.names().length - new Set([...main, ...mtp].flatMap((it) => it.parts)).size;
  return { tensorsQuantized: a.quantized + b.quantized, tensorsKept: a.kept + b.kept, tensorsFallback: [...new Set(fallback)], tensorsSkipped: skipped, bytesOut: a.bytes + b.bytes, errors: rounder.errs.summary(), directIo: a.direct && b.direct, mtpOut };
}
