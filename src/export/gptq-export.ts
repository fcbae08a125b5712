// The `gptq` output: a safetensors folder in GPTQModel's deepseek_v4 layout (names and which
// linears are quantised: gptq-names.ts) with the AutoGPTQ / GPTQModel packing (int4.ts groups):
// for `X.weight` [out, in]: `X.qweight` I32 [in/8, out] (8 codes per int32 along the input, code k
// of a word in bits 4k..4k+3), `X.qzeros` I32 [groups, out/8] (zero − 1, 8 per int32 along the
// output), `X.scales` F16 [groups, out], `X.g_idx` I32 [in] (= c div group_size); kept tensors as
// BF16 (F32 where they are F32, integers as they are). config.json gets `quantization_config`
// {quant_method: gptq, bits: 4, group_size, desc_act: false, sym: false, checkpoint_format: gptq},
// and quantize_config.json holds the same (what GPTQModel's and AutoGPTQ's loaders read).
import { copyFileSync, existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packGptqNative } from '../backend/native/gptq.js';
import { InputError } from '../errors.js';
import { stampChatTemplate } from '../chat/config.js';
import { readJsonFile, writeDirAtomic } from '../fsutil.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { configJsonText } from '../model/config-json.js';
import { f32ToBf16Bytes } from '../model/formats.js';
import { SafetensorsWriter, type TensorSpec } from '../model/safetensors.js';
import { gptqModelName, gptqQuantises } from './gptq-names.js';
import { checkGroupable, type Int4Weight } from './int4.js';
import { checkKeptBytes, keptF32 } from './kept.js';
import { blockOrder, decodeBuffer, linearKind, yieldLoop } from './linears.js';
import type { QuantizeOptions, WriteResult } from './quantize-types.js';
import type { Rounder } from './rounders.js';

// ---------------------------------------------------------------- GPTQ safetensors

/** AutoGPTQ packing of an INT4 weight: qweight [in/8, out], qzeros [groups, out/8] (zero − 1), scales [groups, out], g_idx [in] */
export function packGptq(x: Int4Weight): { qweight: Int32Array; qzeros: Int32Array; scales: Uint16Array; gIdx: Int32Array } {
  const { out, inF, groupSize } = x;
  const G = inF / groupSize;
  // qweight[i/8, j] holds codes q[j, i..i+7], code k in bits 4k..4k+3
  const qweight = new Int32Array((inF / 8) * out);
  for (let j = 0; j < out; j++) {
    for (let i = 0; i < inF; i++) qweight[(i >> 3) * out + j]! |= x.q[j * inF + i]! << (4 * (i & 7));
  }
  const qzeros = new Int32Array(G * (out / 8));
  const scales = new Uint16Array(G * out);
  for (let g = 0; g < G; g++) {
    for (let j = 0; j < out; j++) {
      qzeros[g * (out / 8) + (j >> 3)]! |= (x.zeros[j * G + g]! - 1) << (4 * (j & 7));
      scales[g * out + j] = x.scaleBits[j * G + g]!;
    }
  }
  const gIdx = new Int32Array(inF);
  for (let i = 0; i < inF; i++) gIdx[i] = Math.floor(i / groupSize);
  return { qweight, qzeros, scales, gIdx };
}

const bytesOf = (a: Int32Array | Uint16Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** quantization_config (config.json) = quantize_config.json */
function quantizeConfig(groupSize: number, damp: number): Record<string, unknown> {
  return {
    quant_method: 'gptq',
    bits: 4,
    group_size: groupSize,
    desc_act: false,
    sym: false,
    true_sequential: true,
    static_groups: false,
    lm_head: false,
    checkpoint_format: 'gptq',
    damp_percent: damp,
  };
}

function gptqConfigJson(src: string, groupSize: number, damp: number): string {
  const cfg = readJsonFile(join(src, 'config.json')) as Record<string, unknown>;
  delete cfg.expert_dtype;
  cfg.torch_dtype = 'bfloat16';
  cfg.quantization_config = quantizeConfig(groupSize, damp);
  return configJsonText(cfg);
}

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json'];

export async function writeGptq(ckpt: Checkpoint, opts: QuantizeOptions, rounder: Rounder): Promise<WriteResult> {
  // block order: calibration goes through the blocks once (linears.ts blockOrder)
  const names = blockOrder(ckpt.names());
  // plan every output tensor first (refusing shapes the layout cannot hold before writing anything)
  const specs: TensorSpec[] = [];
  const order: { name: string; out: number; inF: number }[] = [];
  const I = ckpt.config.moe_intermediate_size;
  const disk = (n: string): string => gptqModelName(n, I);
  for (const n of names) {
    const m = ckpt.meta(n);
    if (gptqQuantises(n) && m.logicalShape.length === 2) {
      const [out, inF] = m.logicalShape as [number, number];
      const why = checkGroupable(n, out, inF, opts.groupSize) ?? (inF % 8 !== 0 || out % 8 !== 0 ? `${n}: shape [${out}, ${inF}] is not a multiple of 8 in both dimensions (GPTQ packs 8 codes per int32)` : null);
      if (why) throw new InputError(`${opts.model}: ${why}; choose export.group_size dividing every linear's input size`);
      order.push({ name: n, out, inF });
      const base = disk(n).slice(0, -'.weight'.length);
      const G = inF / opts.groupSize;
      specs.push({ name: `${base}.qweight`, dtype: 'I32', shape: [inF / 8, out] });
      specs.push({ name: `${base}.qzeros`, dtype: 'I32', shape: [G, out / 8] });
      specs.push({ name: `${base}.scales`, dtype: 'F16', shape: [G, out] });
      specs.push({ name: `${base}.g_idx`, dtype: 'I32', shape: [inF] });
    } else if (m.format === 'int') {
      specs.push({ name: disk(n), dtype: m.dtype as TensorSpec['dtype'], shape: m.shape });
    } else {
      specs.push({ name: disk(n), dtype: m.format === 'f32' ? 'F32' : 'BF16', shape: m.logicalShape });
    }
  }
  // the Hessian plan also covers wo_a (kept here): the GGUF formats of the stage reuse this calibration
  const woA = names.filter((n) => linearKind(n) && !gptqQuantises(n)).map((n) => {
    const [out, inF] = ckpt.meta(n).logicalShape as [number, number];
    return { name: n, out, inF };
  });
  rounder.plan([...order, ...woA]);
  const errs = rounder.errs;
  let quantized = 0;
  let kept = 0;
  let bytesOut = 0;
  let direct = true;
  await writeDirAtomic(opts.out, async (tmp) => {
    writeFileSync(join(tmp, 'config.json'), gptqConfigJson(opts.model, opts.groupSize, opts.calibration?.damp ?? 0.01));
    writeFileSync(join(tmp, 'quantize_config.json'), `${JSON.stringify(quantizeConfig(opts.groupSize, opts.calibration?.damp ?? 0.01), null, 2)}\n`);
    for (const f of TOKENIZER_FILES) if (existsSync(join(opts.model, f))) copyFileSync(join(opts.model, f), join(tmp, f));
    stampChatTemplate(tmp);
    const writer = new SafetensorsWriter(tmp, specs, { maxShardBytes: opts.maxShardBytes, directIo: opts.directIo ?? true, onShardOpen: (_, d) => { direct &&= d; } });
    // a tensor's bytes are written off the JS thread while the next one is read and quantised
    // (one tensor in flight bounds the memory held for the writes)
    let writing: Promise<unknown> = Promise.resolve();
    const put = async (parts: [string, Uint8Array][]): Promise<void> => {
      await writing;
      writing = Promise.all(parts.map(([name, data]) => writer.writeAtAsync(name, 0, data)));
    };
    const room = decodeBuffer(ckpt);
    try {
      let done = 0;
      for (const n of names) {
        const m = ckpt.meta(n);
        const kind = linearKind(n);
        if (kind && gptqQuantises(n) && m.logicalShape.length === 2) {
          const [out, inF] = m.logicalShape as [number, number];
          const w = await ckpt.f32(n, undefined, room(n));
          const x = await rounder.int4(n, kind, w, out, inF, opts.groupSize);
          const p = (await packGptqNative(x)) ?? packGptq(x);
          const base = disk(n).slice(0, -'.weight'.length);
          await put([[`${base}.qweight`, bytesOf(p.qweight)], [`${base}.qzeros`, bytesOf(p.qzeros)], [`${base}.scales`, bytesOf(p.scales)], [`${base}.g_idx`, bytesOf(p.gIdx)]]);
          quantized++;
        } else {
          await put([[disk(n), await keptBytes(ckpt, n, room)]]);
          kept++;
        }
        opts.onTensor?.(++done, names.length, n);
        await yieldLoop();
      }
      await writing;
      writer.finish();
    } catch (e) {
      await writing.catch(() => undefined);
      writer.abort();
      throw e;
    }
    writeFileSync(join(tmp, 'v4tune-quantize.json'), `${JSON.stringify({ format: 'gptq', method: opts.method, group_size: opts.groupSize, source: opts.model, quantized: names.filter((n) => gptqQuantises(n)), errors: errs.summary(), calibration: rounder.calibration() }, null, 2)}\n`);
    bytesOut = writer.shardFiles.reduce((a, f) => a + statSync(join(tmp, f)).size, 0);
  }, { kind: 'quantized', overwrite: opts.overwrite, inputs: [opts.model] });
  return { tensorsQuantized: quantized, tensorsKept: kept, tensorsFallback: [], tensorsSkipped: 0, bytesOut, errors: errs.summary(), directIo: direct };
}

/** a kept tensor's bytes in the gptq output: BF16 / F32 / F16 / integers as stored, FP8/FP4 dequantised to BF16 */
async function keptBytes(ckpt: Checkpoint, n: string, room: (n: string) => Float32Array): Promise<Uint8Array> {
  const m = ckpt.meta(n);
  if (m.format === 'int' || m.format === 'bf16' || m.format === 'f32') {
    const { data } = await ckpt.raw(n);
    checkKeptBytes(ckpt, n, data);
    return data;
  }
  return f32ToBf16Bytes(await keptF32(ckpt, n, room(n)));
}
