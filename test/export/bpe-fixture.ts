// A byte-level BPE tokenizer small enough for the shared tiny reference checkpoint (vocab 1000):
// bos / eos as special added tokens 0 / 1, the 256 byte symbols (GPT-2's byte-to-unicode map)
// as ids 2..257, a few merges. The GGUF writer embeds the model folder's tokenizer, and a model
// folder without one is refused (llama.cpp cannot load a GGUF without a vocabulary).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

function byteSymbols(): string[] {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const out: string[] = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCodePoint(keep.includes(b) ? b : 256 + n++);
  return out;
}

/** Write tokenizer.json and tokenizer_config.json of that tokenizer into `dir`. */
export function writeSmallBpeTokenizer(dir: string): void {
  const vocab: Record<string, number> = {};
  byteSymbols().forEach((s, b) => { vocab[s] = 2 + b; });
  const merges = [['Ġ', 't'], ['Ġ', 'a'], ['h', 'e']];
  merges.forEach(([a, b], i) => { vocab[a! + b!] = 258 + i; });
  const added = ['<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>'].map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const tok = {
    version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null, decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: merges.map(([a, b]) => `${a} ${b}`) },
  };
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: added[0]!.content, eos_token: added[1]!.content, add_bos_token: true, add_eos_token: false }));
}
