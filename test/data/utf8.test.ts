// UTF-8 validation finds the first offending byte: stray continuation bytes, truncated
// sequences, overlong forms, surrogates and code points above U+10FFFF.
import { describe, expect, it } from 'vitest';
import { decodeUtf8, firstInvalidUtf8 } from '../../src/data/utf8.js';

const b = (...xs: number[]): Uint8Array => Uint8Array.from(xs);

describe('firstInvalidUtf8', () => {
  it('returns -1 for valid text of every sequence length', () => {
    expect(firstInvalidUtf8(Buffer.from('a é 日 🤖'))).toBe(-1);
  });
  it.each([
    ['a stray continuation byte', b(0x61, 0x80), 1],
    ['a truncated 3-byte sequence at the end', b(0x61, 0x62, 0xe6, 0x97), 2],
    ['a lead byte followed by ASCII', b(0xc3, 0x28), 0],
    ['an overlong 2-byte form', b(0x41, 0xc0, 0x80), 1],
    ['an overlong 3-byte form', b(0xe0, 0x80, 0xaf), 0],
    ['a UTF-16 surrogate', b(0x20, 0xed, 0xa0, 0x80), 1],
    ['a code point above U+10FFFF', b(0xf4, 0x90, 0x80, 0x80), 0],
    ['0xff', b(0x30, 0x31, 0xff), 2],
  ])('finds %s', (_what, bytes, at) => {
    expect(firstInvalidUtf8(bytes)).toBe(at);
    expect(decodeUtf8(bytes)).toBeUndefined();
  });
  it('decodeUtf8 drops a leading byte-order mark', () => {
    expect(decodeUtf8(b(0xef, 0xbb, 0xbf, 0x68, 0x69))).toBe('hi');
  });
});
