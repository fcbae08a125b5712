// Corpus sources: the recipe's entries → files (globs expanded, each file hashed by streaming it)
// → records (src/data/records.ts) → documents. Record formats:
//   text      a text file is one document
//   jsonl     a record's `text_field` (default "text") is one document
//   chat      {"messages": [{"role": system|user|assistant, "content", "reasoning_content"?}]}
//   sharegpt  {"conversations": [{"from": system|human|user|gpt|assistant, "value"}], "system"?}
//   alpaca    {"instruction", "input"?, "output", "system"?} → user: instruction (+ blank line +
//             input), assistant: output
// `auto` takes text files as text and decides a file of records by its first readable record:
// `messages` → chat, `conversations` → sharegpt, `instruction` + `output` → alpaca, else jsonl.
// A record that does not fit its format throws a RecordError (the caller counts it as bad).
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { InputError } from '../errors.js';
import { chatRefusal } from '../chat/template.js';
import type { ChatMessage, ChatRole, Document } from './documents.js';
import { expandGlob, hasGlobMagic } from './glob.js';
import { containerOf, type Container } from './records.js';

export type SourceFormat = 'auto' | 'text' | 'jsonl' | 'chat' | 'sharegpt' | 'alpaca';
export type RecordFormat = Exclude<SourceFormat, 'auto'>;

/** One entry of the recipe's `data.sources` (path absolute). */
export interface SourceSpec {
  /** Absolute file path or glob. */
  path: string;
  format: SourceFormat;
  text_field: string;
  /** Name in the manifest, the `source_ids` column and `inspect --source` (default: the path as written). */
  name?: string;
  /** Documents of this source used per epoch of the dataset, in expectation (default 1). */
  weight?: number;
  /** Stop taking documents from this source before its tokens exceed this. */
  max_tokens?: number;
  /** Take at most this many documents (repeats included) from this source. */
  max_documents?: number;
}

export interface SourceFile {
  path: string;
  container: Container;
  bytes: number;
  sha256: string;
}

export interface ResolvedSource {
  name: string;
  spec: SourceSpec;
  files: SourceFile[];
}

/** sha256 of a file, read in 1 MiB chunks. */
function hashFile(path: string): { bytes: number; sha256: string } {
  let fd: number;
  try {
    if (statSync(path).isDirectory()) throw new InputError(`${path}: is a folder, expected a corpus file`);
    fd = openSync(path, 'r');
  } catch (e) {
    if (e instanceof InputError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new InputError(`${path}: ${code === 'ENOENT' ? 'no such corpus file' : `cannot read the corpus file (${code ?? String(e)})`}`);
  }
  try {
    const h = createHash('sha256');
    const buf = Buffer.alloc(1 << 20);
    let bytes = 0;
    for (;;) {
      let got: number;
      try { got = readSync(fd, buf, 0, buf.length, null); } catch (e) {
        throw new InputError(`${path}: cannot read the corpus file (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
      }
      if (got === 0) break;
      h.update(buf.subarray(0, got));
      bytes += got;
    }
    return { bytes, sha256: h.digest('hex') };
  } finally {
    closeSync(fd);
  }
}

/**
 * Expand every source's glob, hash each file once (a file matched by two sources belongs to the
 * first), and name the sources (`label(spec)` gives the default name; names must be unique).
 */
export function resolveSources(specs: SourceSpec[], label: (spec: SourceSpec) => string = (s) => s.path): ResolvedSource[] {
  const seen = new Set<string>();
  const names = new Set<string>();
  return specs.map((spec, i) => {
    const name = spec.name ?? label(spec);
    if (names.has(name)) throw new InputError(`data.sources[${i}]: the source name "${name}" is used twice (give each source its own \`name\`)`);
    names.add(name);
    const paths = expandGlob(spec.path);
    if (paths.length === 0) throw new InputError(`${spec.path}: the glob matches no files`);
    const files: SourceFile[] = [];
    for (const path of paths) {
      if (seen.has(path)) continue;
      seen.add(path);
      try {
        if (statSync(path).isDirectory()) throw new InputError(`${path}: is a folder, expected a corpus file${hasGlobMagic(spec.path) ? '' : ' (use a glob such as dir/*.txt)'}`);
      } catch (e) {
        if (e instanceof InputError) throw e;
      }
      const { bytes, sha256 } = hashFile(path);
      files.push({ path, container: containerOf(path, spec.format), bytes, sha256 });
    }
    return { name, spec, files };
  });
}

/** A record that does not fit its format: counted as bad, reported as `where: message`. */
export class RecordError extends Error {}

const ROLES: ReadonlySet<string> = new Set(['system', 'user', 'assistant']);

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Validated chat messages (roles, string contents, an assistant turn, a chat the template renders). */
export function parseChat(messages: unknown): ChatMessage[] {
  if (!Array.isArray(messages) || messages.length === 0) throw new RecordError('"messages" must be a non-empty array of {role, content}');
  const out: ChatMessage[] = [];
  messages.forEach((m: unknown, i) => {
    if (!isRecord(m)) throw new RecordError(`messages[${i}] must be an object with role and content`);
    const { role, content, reasoning_content: reasoning } = m;
    if (typeof role !== 'string' || !ROLES.has(role)) throw new RecordError(`messages[${i}].role ${JSON.stringify(role)} is not one of system, user, assistant`);
    if (typeof content !== 'string') throw new RecordError(`messages[${i}].content must be a string (got ${JSON.stringify(content) ?? 'nothing'})`);
    if (reasoning !== undefined && reasoning !== null && typeof reasoning !== 'string') throw new RecordError(`messages[${i}].reasoning_content must be a string`);
    const msg: ChatMessage = { role: role as ChatRole, content };
    if (typeof reasoning === 'string' && role === 'assistant') msg.reasoning_content = reasoning;
    out.push(msg);
  });
  if (!out.some((m) => m.role === 'assistant')) throw new RecordError('the conversation has no assistant turn (nothing to train on)');
  const refused = chatRefusal(out);
  if (refused) throw new RecordError(refused);
  return out;
}

const SHAREGPT_ROLES: Record<string, ChatRole> = { system: 'system', human: 'user', user: 'user', gpt: 'assistant', assistant: 'assistant' };

function shareGptMessages(rec: Record<string, unknown>): unknown[] {
  const conv = rec.conversations;
  if (!Array.isArray(conv) || conv.length === 0) throw new RecordError('"conversations" must be a non-empty array of {from, value}');
  const out: unknown[] = [];
  if (typeof rec.system === 'string' && rec.system.trim() !== '') out.push({ role: 'system', content: rec.system });
  conv.forEach((t: unknown, i) => {
    if (!isRecord(t)) throw new RecordError(`conversations[${i}] must be an object with from and value`);
    const role = typeof t.from === 'string' ? SHAREGPT_ROLES[t.from] : undefined;
    if (role === undefined) throw new RecordError(`conversations[${i}].from ${JSON.stringify(t.from)} is not one of system, human, user, gpt, assistant`);
    if (typeof t.value !== 'string') throw new RecordError(`conversations[${i}].value must be a string (got ${JSON.stringify(t.value) ?? 'nothing'})`);
    out.push({ role, content: t.value });
  });
  return out;
}

function alpacaMessages(rec: Record<string, unknown>): unknown[] {
  const { instruction, input, output, system } = rec;
  if (typeof instruction !== 'string') throw new RecordError(`"instruction" must be a string (got ${JSON.stringify(instruction) ?? 'nothing'})`);
  if (input !== undefined && input !== null && typeof input !== 'string') throw new RecordError('"input" must be a string');
  if (typeof output !== 'string') throw new RecordError(`"output" must be a string (got ${JSON.stringify(output) ?? 'nothing'})`);
  if (system !== undefined && system !== null && typeof system !== 'string') throw new RecordError('"system" must be a string');
  const user = typeof input === 'string' && input.trim() !== '' ? `${instruction}\n\n${input}` : instruction;
  return [
    ...(typeof system === 'string' && system.trim() !== '' ? [{ role: 'system', content: system }] : []),
    { role: 'user', content: user },
    { role: 'assistant', content: output },
  ];
}

/** The record format `auto` gives a file whose first readable record is `value`. */
export function detectFormat(value: unknown): RecordFormat {
  if (!isRecord(value)) return 'jsonl';
  if ('messages' in value) return 'chat';
  if ('conversations' in value) return 'sharegpt';
  if ('instruction' in value && 'output' in value) return 'alpaca';
  return 'jsonl';
}

/** A record as a document; null when it is empty (whitespace only). Throws RecordError when it does not fit. */
export function recordToDocument(format: RecordFormat, value: unknown, textField: string): Document | null {
  if (format === 'text') {
    if (typeof value !== 'string') throw new RecordError('a text record must be a string');
    return value.trim() === '' ? null : { kind: 'text', text: value };
  }
  if (!isRecord(value)) throw new RecordError(`a record must be a JSON object (got ${Array.isArray(value) ? 'an array' : JSON.stringify(value)})`);
  if (format === 'jsonl') {
    const v = value[textField];
    if (typeof v !== 'string') throw new RecordError(`field "${textField}" must be a string (got ${JSON.stringify(v) ?? 'nothing'})`);
    return v.trim() === '' ? null : { kind: 'text', text: v };
  }
  const raw = format === 'chat' ? value.messages : format === 'sharegpt' ? shareGptMessages(value) : alpacaMessages(value);
  return { kind: 'chat', messages: parseChat(raw) };
}
