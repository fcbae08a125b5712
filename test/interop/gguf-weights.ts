// The weights a GGUF file holds, read back into a checkpoint folder v4tune runs: every tensor of
// the source checkpoint's trunk dequantised from its GGUF type (F32, F16, BF16, Q8_0, Q5_0, Q4_0,
// Q4_K) and written F32 under its official name (a stacked expert tensor split per expert). v4tune
// on this folder computes with exactly the weights llama.cpp computes with.
import { copyFileSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GgmlType, readGgufHeader, readGgufTensor, dequantizeQ4_0, type GgufTensorEntry } from '../../src/export/gguf.js';
import { dequantizeQ5_0, dequantizeQ8_0 } from '../../src/export/ggml-quants.js';
import { ggufName } from '../../src/export/llama-deepseek4.js';
import { dequantizeQ4_K } from '../../src/export/q4k.js';
import { Checkpoint } from '../../src/model/checkpoint.js';
import { bf16BytesToF32, f16BytesToF32, f32BytesToF32, f32ToBytes } from '../../src/model/formats.js';
import { writeSafetensorsFile, type TensorSpec } from '../../src/model/safetensors.js';

function dequant(t: GgufTensorEntry, b: Buffer): Float32Array {
  const n = t.dims.reduce((a, x) => a * x, 1);
  const u = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  switch (t.type) {
    case GgmlType.F32: return f32BytesToF32(u);
    case GgmlType.F16: return f16BytesToF32(u);
    case GgmlType.BF16: return bf16BytesToF32(u);
    case GgmlType.Q8_0: return dequantizeQ8_0(u, n);
    case GgmlType.Q5_0: return dequantizeQ5_0(u, n);
    case GgmlType.Q4_0: return dequantizeQ4_0(u, n);
    case GgmlType.Q4_K: return dequantizeQ4_K(u, n);
    default: throw new Error(`${t.name}: ggml type ${t.type} is not a float type`);
  }
}

/** the ggml types of the file's tensors, by GGUF name */
export function ggufTypes(path: string): Map<string, number> {
  return new Map(readGgufHeader(path).tensors.map((t) => [t.name, t.type]));
}

/** Write `out`: the source checkpoint's config and tokenizer, its trunk's weights as the GGUF file holds them (F32). */
export async function ggufWeightsAsCheckpoint(ggufPath: string, source: string, out: string): Promise<void> {
  const f = readGgufHeader(ggufPath);
  const byName = new Map(f.tensors.map((t) => [t.name, t]));
  const cache = new Map<string, Float32Array>();
  const ck = await Checkpoint.open(source);
  const tensors: Array<TensorSpec & { data: Uint8Array }> = [];
  try {
    for (const n of ck.names()) {
      const m = ck.meta(n);
      if (m.format === 'int' || n.startsWith('mtp.')) {
        const raw = await ck.raw(n);
        tensors.push({ name: n, dtype: m.dtype as TensorSpec['dtype'], shape: m.shape, data: raw.data });
        continue;
      }
      const g = ggufName(n, 'main', ck.config.num_hidden_layers);
      const t = g === null ? undefined : byName.get(g);
      if (!t) {
        tensors.push({ name: n, dtype: 'F32', shape: m.logicalShape, data: f32ToBytes(await ck.f32(n)) });
        continue;
      }
      let all = cache.get(t.name);
      if (!all) {
        all = dequant(t, readGgufTensor(ggufPath, f, t));
        cache.set(t.name, all);
      }
      const e = /\.ffn\.experts\.(\d+)\./.exec(n);
      const size = m.logicalShape.reduce((a, x) => a * x, 1);
      const part = e ? all.subarray(Number(e[1]) * size, (Number(e[1]) + 1) * size) : all;
      tensors.push({ name: n, dtype: 'F32', shape: m.logicalShape, data: f32ToBytes(part) });
    }
  } finally {
    await ck.close();
  }
  mkdirSync(out, { recursive: true });
  writeSafetensorsFile(join(out, 'model.safetensors'), tensors);
  const cfg = JSON.parse(readFileSync(join(source, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(out, 'config.json'), JSON.stringify(cfg, null, 2));
  for (const file of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(source, file), join(out, file));
}
