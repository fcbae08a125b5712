// generate: --adapter applies a trained adapter (the same ids as generating on the folder the
// adapter is merged into), --chat renders the prompt through the folder's chat template and
// streams the answer; top-k sampling keeps to the k most likely tokens.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { sampleToken, seededRandom, textStreamer } from '../../src/model/generate.js';
import { readChatTemplate } from '../../src/chat/config.js';
import { V4_CHAT_TEMPLATE } from '../../src/chat/template.js';
import { mergeAdapter } from '../../src/export/merge.js';
import { createAdapter } from '../../src/lora/adapter.js';
import { saveAdapter } from '../../src/lora/peft.js';
import { parseConfig } from '../../src/model/config.js';
import { initModel } from '../../src/model/init.js';
import { cli } from '../cli/capture.js';
import { tempDir } from '../data/helpers.js';
import { runPython, skipPython } from '../interop/python.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 300_000 });

const tmp = tempDir('v4tune-generate-');
const base = join(tmp.dir, 'base');
const adapterDir = join(tmp.dir, 'adapter');
const merged = join(tmp.dir, 'merged');
beforeAll(async () => {
  await initModel({ preset: 'tiny', out: base, seed: 3, format: 'bf16' });
  const config = parseConfig(JSON.parse(readFileSync(join(base, 'config.json'), 'utf8')), base);
  const adapter = createAdapter({ config, dir: base }, { r: 4, alpha: 8, seed: 1 });
  // B ≠ 0 so the adapter moves the model (a fresh adapter is the identity)
  let s = 11;
  for (const l of adapter.layers.values()) for (let i = 0; i < l.B.length; i++) l.B[i] = (((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5) * 0.2;
  await saveAdapter(adapter, adapterDir);
  await mergeAdapter({ base, adapter: adapterDir, out: merged, dtype: 'bf16', warn: () => {} });
});
afterAll(() => tmp.cleanup());

const gen = async (...args: string[]) => {
  const r = await cli('--json', 'generate', '--max-new-tokens', '12', '--backend', 'tfjs', ...args);
  expect(r.code, r.err).toBe(0);
  return JSON.parse(r.out) as { completion: string; ids: number[]; tokens: number };
};

describe('generate', () => {
  it('--chat --adapter gives the ids of --chat on the merged folder (which carries the chat template)', async () => {
    expect(readChatTemplate(merged)).toBe(V4_CHAT_TEMPLATE);
    const withAdapter = await gen('--model', base, '--adapter', adapterDir, '--chat', '--system', 'Be brief.', '--prompt', 'Status of pump P-2?');
    const onMerged = await gen('--model', merged, '--chat', '--system', 'Be brief.', '--prompt', 'Status of pump P-2?');
    const plain = await gen('--model', base, '--chat', '--system', 'Be brief.', '--prompt', 'Status of pump P-2?');
    expect(withAdapter.ids).toEqual(onMerged.ids);
    expect(withAdapter.ids).not.toEqual(plain.ids);
    expect(withAdapter.tokens).toBeGreaterThan(0);
  });

  it.skipIf(skipPython)('--chat --adapter gives the ids of transformers\' greedy generate (apply_chat_template of the written template) on the merged folder', async () => {
    const ours = await gen('--model', base, '--adapter', adapterDir, '--chat', '--system', 'Be brief.', '--prompt', 'Status of pump P-2?', '--max-new-tokens', '8');
    const out = runPython(`
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Status of pump P-2?"}], tokenize=True, add_generation_prompt=True)
ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
with torch.no_grad():
    new = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
print(json.dumps(new))
`, [merged]);
    const theirs = JSON.parse(out.trim().split('\n').pop()!) as number[];
    expect(ours.ids).toEqual(theirs);
  });

  it('streams the answer to stdout as tokens come, and refuses a chat the template cannot render', async () => {
    const r = await cli('generate', '--model', base, '--chat', '--prompt', 'Hi', '--max-new-tokens', '6', '--backend', 'tfjs');
    expect(r.code, r.err).toBe(0);
    const j = await gen('--model', base, '--chat', '--prompt', 'Hi', '--max-new-tokens', '6');
    expect(r.out).toContain(`${j.completion}\n`);
    const bad = await cli('generate', '--model', base, '--chat', '--prompt', 'say <｜Assistant｜>');
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/contains "<｜Assistant｜>", a marker of V4's chat format/);
  });

  it('top-k keeps to the k most likely tokens; the streamer holds back a split character', () => {
    const l = Float32Array.from([0, 5, 4.9, 4.8, 0]);
    const seen = new Set<number>();
    for (let i = 0; i < 300; i++) seen.add(sampleToken(l, 1, 1, seededRandom(i), 2));
    expect([...seen].sort()).toEqual([1, 2]);
    const bytes = [...new TextEncoder().encode('a€')];
    const decode = (ids: readonly number[]) => new TextDecoder().decode(Uint8Array.from(ids));
    const s = textStreamer(decode);
    expect([s(bytes.slice(0, 1)), s(bytes.slice(0, 2)), s(bytes.slice(0, 3)), s(bytes)]).toEqual(['a', '', '', '€']);
  });
});
