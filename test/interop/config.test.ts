// Every config.json v4tune writes, in transformers 5.18 (its DeepseekV4Config is a strict
// dataclass: a float field written as an integer is refused), and the GPTQ folder read the way
// GPTQModel reads it:
// - AutoConfig opens the init-model presets (tiny and small, FP8 as shipped and BF16), a merged
//   folder as shipped (FP8/FP4: quantization_config exactly as DeepSeek ships it) and merged to
//   BF16, and the gptq folder; AutoModelForCausalLM opens the BF16 ones (transformers cannot run
//   the FP8 layout on CPU) and its logits equal v4tune's;
// - the gptq folder under GPTQModel's deepseek_v4 names: a reader following GPTQModel's
//   dequantize_weight (v1 checkpoint: qzeros + 1) reproduces the merged weights within the INT4
//   step, o_a_proj is kept unquantised, quantize_config.json matches.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mergeAdapter } from '../../src/export/merge.js';
import { quantizeCheckpoint } from '../../src/export/quantize.js';
import { createAdapter } from '../../src/lora/adapter.js';
import { saveAdapter } from '../../src/lora/peft.js';
import { Checkpoint } from '../../src/model/checkpoint.js';
import { configJsonText } from '../../src/model/config-json.js';
import { initModel, presetConfigJson } from '../../src/model/init.js';
import { loadModel } from '../../src/model/load.js';
import { runPython, skipPython } from './python.js';

const DEEPSEEK_QUANT = { activation_scheme: 'dynamic', fmt: 'e4m3', quant_method: 'fp8', scale_fmt: 'ue8m0', weight_block_size: [128, 128] };

const PY_CONFIGS = String.raw`
import sys, json, torch
from transformers import AutoConfig, AutoModelForCausalLM
out = {}
for d in sys.argv[2:]:
    c = AutoConfig.from_pretrained(d)
    out[d] = {'swiglu_limit': c.swiglu_limit, 'rope_theta': c.rope_theta, 'quantization_config': getattr(c, 'quantization_config', None), 'layers': c.num_hidden_layers}
models = {}
ids = json.loads(sys.argv[1])
for d in [x for x in sys.argv[2:] if x.endswith('-bf16')]:
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        l = m(torch.tensor([ids])).logits[0].float()
    l.numpy().astype('<f4').tofile(d + '/hf.f32')
    models[d] = True
print(json.dumps({'configs': out, 'models': models}, default=str))
`;

// GPTQModel's dequantize (gptqmodel/nn_modules/qlinear: dequantize_weight with a v1 checkpoint
// converted to v2 by adding 1 to every zero, 0x11111111 per int32), per module it looks up
const PY_GPTQ = String.raw`
import sys, json, torch
from safetensors import safe_open
import glob
folder, merged = sys.argv[1:3]
def tensors(d):
    t = {}
    for f in glob.glob(d + '/*.safetensors'):
        with safe_open(f, 'pt') as h:
            for k in h.keys(): t[k] = h.get_tensor(k)
    return t
q = tensors(folder)
qc = json.load(open(folder + '/quantize_config.json'))
bits = qc['bits']
def dequant(prefix):
    qweight, qzeros, scales, g_idx = (q[prefix + s] for s in ('.qweight', '.qzeros', '.scales', '.g_idx'))
    wf = torch.arange(0, 32, bits, dtype=torch.int32).unsqueeze(0)
    zeros = torch.bitwise_right_shift(torch.unsqueeze(qzeros, 2).expand(-1, -1, 32 // bits), wf.unsqueeze(0)).to(torch.int16)
    zeros = torch.bitwise_and(zeros, (2 ** bits) - 1).reshape(scales.shape)
    if qc['checkpoint_format'] == 'gptq':
        zeros = zeros + 1   # v1 -> v2
    weight = torch.bitwise_and(torch.bitwise_right_shift(torch.unsqueeze(qweight, 1).expand(-1, 32 // bits, -1), wf.unsqueeze(-1)).to(torch.int16), (2 ** bits) - 1)
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])
    w = scales[g_idx.long()].float() * (weight - zeros[g_idx.long()]).float()
    return w.t(), scales.float()
m = tensors(merged)
cfg = json.load(open(folder + '/config.json'))
I = cfg['moe_intermediate_size']
worst = 0.0; checked = 0
for L in range(cfg['num_hidden_layers']):
    p = f'model.layers.{L}'
    names = [f'{p}.self_attn.{x}' for x in ('q_a_proj', 'q_b_proj', 'kv_proj', 'o_b_proj')] + [f'{p}.mlp.shared_experts.{x}' for x in ('gate_proj', 'up_proj', 'down_proj')]
    names += [f'{p}.mlp.experts.{e}.{x}' for e in range(cfg['n_routed_experts']) for x in ('gate_proj', 'up_proj', 'down_proj')]
    for n in names:
        w, s = dequant(n)
        # the merged weight, from the merged (official layout) folder
        off = n.replace('model.layers.', 'layers.').replace('self_attn.q_a_proj', 'attn.wq_a').replace('self_attn.q_b_proj', 'attn.wq_b').replace('self_attn.kv_proj', 'attn.wkv').replace('self_attn.o_b_proj', 'attn.wo_b')
        off = off.replace('mlp.shared_experts.gate_proj', 'ffn.shared_experts.w1').replace('mlp.shared_experts.up_proj', 'ffn.shared_experts.w3').replace('mlp.shared_experts.down_proj', 'ffn.shared_experts.w2')
        off = off.replace('mlp.experts.', 'ffn.experts.').replace('.gate_proj', '.w1').replace('.up_proj', '.w3').replace('.down_proj', '.w2')
        ref = m[off + '.weight'].float()
        step = s.t().repeat_interleave(qc['group_size'], dim=1)
        err = ((w - ref).abs() / step).max().item()
        worst = max(worst, err); checked += 1
    assert f'{p}.self_attn.o_a_proj.weight' in q and f'{p}.self_attn.o_a_proj.qweight' not in q
print(json.dumps({'checked': checked, 'worst_steps': worst, 'qc': qc}))
`;

describe.skipIf(skipPython)('transformers opens every folder v4tune writes; GPTQModel-style dequantisation of the gptq folder', { timeout: 600_000 }, () => {
  let dir = '';
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'v4tune-config-'));
    await initModel({ preset: 'tiny', out: join(dir, 'tiny-fp8'), format: 'fp8' });
    await initModel({ preset: 'tiny', out: join(dir, 'tiny-bf16'), format: 'bf16' });
    for (const f of ['fp8', 'bf16'] as const) {
      // the small preset's config.json as init-model writes it (its weights take minutes in JS)
      mkdirSync(join(dir, `small-${f}-config`));
      writeFileSync(join(dir, `small-${f}-config`, 'config.json'), configJsonText(presetConfigJson('small', f)));
    }
    const ck = await Checkpoint.open(join(dir, 'tiny-fp8'));
    const a = createAdapter({ config: ck.config, dir: join(dir, 'tiny-fp8') }, { r: 4, alpha: 8, seed: 2 });
    await ck.close();
    for (const m of a.modules()) a.factors(m)!.B.forEach((_, i, B) => { B[i] = 0.02 * Math.cos(i); });
    await saveAdapter(a, join(dir, 'adapter'));
    await mergeAdapter({ base: join(dir, 'tiny-fp8'), adapter: join(dir, 'adapter'), out: join(dir, 'merged-fp8'), warn: () => {} });
    await mergeAdapter({ base: join(dir, 'tiny-fp8'), adapter: join(dir, 'adapter'), out: join(dir, 'merged-bf16'), dtype: 'bf16', warn: () => {} });
    await quantizeCheckpoint({ model: join(dir, 'merged-bf16'), out: join(dir, 'gptq'), format: 'gptq', method: 'rtn', groupSize: 32 });
  }, 300_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('AutoConfig opens every config.json (floats as floats, release fields kept; FP8 merge with DeepSeek\'s quantization_config); AutoModelForCausalLM opens the BF16 ones with v4tune\'s logits', async () => {
    const folders = ['tiny-fp8', 'tiny-bf16', 'small-fp8-config', 'small-bf16-config', 'merged-fp8', 'merged-bf16', 'gptq'].map((f) => join(dir, f));
    const ids = [0, 671, 13806, 9466, 2912, 28, 21003, 223, 21, 10725, 509, 223, 3398, 28, 504, 16];
    const r = JSON.parse(runPython(PY_CONFIGS, [JSON.stringify(ids), ...folders]).trim().split('\n').pop()!) as { configs: Record<string, { swiglu_limit: number; quantization_config: unknown; layers: number }>; models: Record<string, boolean> };
    for (const f of folders) expect(r.configs[f], f).toBeDefined();
    expect(r.configs[join(dir, 'small-fp8-config')]!.swiglu_limit).toBe(10);
    expect(r.configs[join(dir, 'merged-fp8')]!.quantization_config).toEqual(DEEPSEEK_QUANT);
    expect(r.configs[join(dir, 'tiny-fp8')]!.quantization_config).toEqual(DEEPSEEK_QUANT);
    expect(r.configs[join(dir, 'merged-bf16')]!.quantization_config).toBeNull();
    expect(Object.keys(r.models).sort()).toEqual([join(dir, 'merged-bf16'), join(dir, 'tiny-bf16')].sort());
    for (const f of ['tiny-bf16', 'merged-bf16']) {
      const m = await loadModel(join(dir, f), { backend: 'auto', note: () => {} });
      const mine = await m.logits(Int32Array.from(ids));
      m.dispose();
      const b = (await import('node:fs')).readFileSync(join(dir, f, 'hf.f32'));
      const hf = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
      let mx = 0;
      let d = 0;
      for (let i = 0; i < mine.length; i++) {
        mx = Math.max(mx, Math.abs(mine[i]!));
        d = Math.max(d, Math.abs(mine[i]! - hf[i]!));
      }
      expect(d / mx, f).toBeLessThan(1e-4);
    }
  });

  it('a reader following GPTQModel\'s dequantisation reproduces the merged weights within half an INT4 step, under its deepseek_v4 names', () => {
    const r = JSON.parse(runPython(PY_GPTQ, [join(dir, 'gptq'), join(dir, 'merged-bf16')]).trim().split('\n').pop()!) as { checked: number; worst_steps: number; qc: Record<string, unknown> };
    expect(r.checked).toBe(4 * (4 + 3 + 3 * 8));
    // round to nearest: within half a step (+ the F16 rounding of the scale and BF16 of the reference)
    expect(r.worst_steps).toBeLessThan(0.51);
    expect(r.qc).toMatchObject({ quant_method: 'gptq', bits: 4, group_size: 32, desc_act: false, sym: false, checkpoint_format: 'gptq' });
  });
});
