// Types of what the tests import from bench/prepare.mjs (test/data/streaming.test.ts).
/**
 * Write a JSONL corpus of at least `bytes` bytes to `file` from the seeded `rand` (documents drawn
 * from a pool of `pool` generated ones); returns the bytes and documents written.
 */
export function writeCorpus(file: string, rand: () => number, bytes: number, pool?: number): { bytes: number; documents: number };
