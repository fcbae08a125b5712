// Writes a tiny SentencePiece model (a ModelProto, protobuf) for tests: a unigram model over
// lowercase letters, space and a few punctuation marks, plus <unk>, <s>, </s>.

function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) { out.push((n & 0x7f) | 0x80); n = Math.floor(n / 128); }
  out.push(n);
  return out;
}
const key = (field: number, wire: number): number[] => varint(field * 8 + wire);
const bytesField = (field: number, b: number[]): number[] => [...key(field, 2), ...varint(b.length), ...b];
const strField = (field: number, s: string): number[] => bytesField(field, [...Buffer.from(s, 'utf8')]);
const intField = (field: number, v: number): number[] => [...key(field, 0), ...varint(v)];
function floatField(field: number, v: number): number[] {
  const b = Buffer.alloc(4);
  b.writeFloatLE(v);
  return [...key(field, 5), ...b];
}

/** Piece type enum of sentencepiece_model.proto. */
const NORMAL = 1;
const UNKNOWN = 2;
const CONTROL = 3;
const USER_DEFINED = 4;

/** The pieces of the test model, in id order. */
export const SP_PIECES: string[] = ['<unk>', '<s>', '</s>', '▁', ...'abcdefghijklmnopqrstuvwxyz.,'.split(''), '▁the', '<｜User｜>'];

export function tinySentencePieceModel(): Uint8Array {
  const out: number[] = [];
  SP_PIECES.forEach((p, i) => {
    const type = i === 0 ? UNKNOWN : i <= 2 ? CONTROL : p.startsWith('<｜') ? USER_DEFINED : NORMAL;
    out.push(...bytesField(1, [...strField(1, p), ...floatField(2, i <= 2 ? 0 : -1 - i * 0.01), ...intField(3, type)]));
  });
  // trainer_spec: model_type UNIGRAM (3 = 1), vocab_size (4), unk/bos/eos ids (40/41/42).
  out.push(...bytesField(2, [...intField(3, 1), ...intField(4, SP_PIECES.length), ...intField(40, 0), ...intField(41, 1), ...intField(42, 2)]));
  // normalizer_spec: identity, add_dummy_prefix, remove_extra_whitespaces off, escape_whitespaces on.
  out.push(...bytesField(3, [...strField(1, 'identity'), ...intField(3, 1), ...intField(4, 0), ...intField(5, 1)]));
  return Uint8Array.from(out);
}
