// Corpus sources: globs → files (read once, hashed) → documents. Every problem is an InputError
// naming the file, and the line and field for JSONL.
import { readFileSync, statSync } from 'node:fs';
import { extname } from 'node:path';
import { InputError } from '../errors.js';
import { chatRefusal } from '../chat/template.js';
import type { ChatMessage, ChatRole, Document } from './documents.js';
import { expandGlob, hasGlobMagic } from './glob.js';
import { sha256Hex } from './tokenizer.js';
import { decodeUtf8, firstInvalidUtf8 } from './utf8.js';

export type SourceFormat = 'auto' | 'text' | 'jsonl' | 'chat';

export interface SourceSpec {
  /** Absolute file path or glob. */
  path: string;
  format: SourceFormat;
  text_field: string;
}

export interface SourceFile {
  path: string;
  /** The source pattern that matched this file. */
  pattern: string;
  format: SourceFormat;
  text_field: string;
  bytes: number;
  sha256: string;
  content: Buffer;
}

/** Expand the sources' globs and read every file once. */
export function readSourceFiles(specs: SourceSpec[]): SourceFile[] {
  const files: SourceFile[] = [];
  const seen = new Set<string>();
  for (const spec of specs) {
    const paths = expandGlob(spec.path);
    if (paths.length === 0) throw new InputError(`${spec.path}: the glob matches no files`);
    for (const path of paths) {
      if (seen.has(path)) continue;
      seen.add(path);
      let content: Buffer;
      try {
        if (statSync(path).isDirectory()) throw new InputError(`${path}: is a folder, expected a corpus file${hasGlobMagic(spec.path) ? '' : ' (use a glob such as dir/*.txt)'}`);
        content = readFileSync(path);
      } catch (e) {
        if (e instanceof InputError) throw e;
        const code = (e as NodeJS.ErrnoException).code;
        throw new InputError(`${path}: ${code === 'ENOENT' ? 'no such corpus file' : `cannot read the corpus file (${code ?? String(e)})`}`);
      }
      files.push({ path, pattern: spec.path, format: spec.format, text_field: spec.text_field, bytes: content.length, sha256: sha256Hex(content), content });
    }
  }
  return files;
}

/** A document with where it came from. */
export interface SourcedDocument {
  doc: Document;
  file: number;
  line: number;
}

function decodeFile(f: SourceFile): string {
  const text = decodeUtf8(f.content);
  if (text !== undefined) return text;
  const at = firstInvalidUtf8(f.content);
  let line = 1;
  for (let i = 0; i < at; i++) if (f.content[i] === 0x0a) line++;
  throw new InputError(`${f.path}: not valid UTF-8 at byte ${at} (line ${line})`);
}

const ROLES: ReadonlySet<string> = new Set(['system', 'user', 'assistant']);

function parseChat(where: string, rec: Record<string, unknown>): ChatMessage[] {
  const messages = rec.messages;
  if (!Array.isArray(messages) || messages.length === 0) throw new InputError(`${where}: "messages" must be a non-empty array of {role, content}`);
  const out: ChatMessage[] = [];
  messages.forEach((m: unknown, i) => {
    if (!m || typeof m !== 'object' || Array.isArray(m)) throw new InputError(`${where}: messages[${i}] must be an object with role and content`);
    const { role, content, reasoning_content: reasoning } = m as Record<string, unknown>;
    if (typeof role !== 'string' || !ROLES.has(role)) {
      throw new InputError(`${where}: messages[${i}].role ${JSON.stringify(role)} is not one of system, user, assistant`);
    }
    if (typeof content !== 'string') throw new InputError(`${where}: messages[${i}].content must be a string (got ${JSON.stringify(content) ?? 'nothing'})`);
    if (reasoning !== undefined && reasoning !== null && typeof reasoning !== 'string') {
      throw new InputError(`${where}: messages[${i}].reasoning_content must be a string`);
    }
    const msg: ChatMessage = { role: role as ChatRole, content };
    if (typeof reasoning === 'string' && role === 'assistant') msg.reasoning_content = reasoning;
    out.push(msg);
  });
  if (!out.some((m) => m.role === 'assistant')) throw new InputError(`${where}: the conversation has no assistant turn (nothing to train on)`);
  const refused = chatRefusal(out);
  if (refused) throw new InputError(`${where}: ${refused}`);
  return out;
}

/** The format a file is read as: `auto` → .jsonl/.ndjson is chat when its first record has `messages`, else jsonl; anything else is text. */
function resolveFormat(f: SourceFile, firstRecord: () => Record<string, unknown> | undefined): 'text' | 'jsonl' | 'chat' {
  if (f.format !== 'auto') return f.format;
  const ext = extname(f.path).toLowerCase();
  if (ext !== '.jsonl' && ext !== '.ndjson') return 'text';
  const first = firstRecord();
  return first && 'messages' in first ? 'chat' : 'jsonl';
}

/** Parse one file into documents (whitespace-only documents are counted in `empty`, not returned). */
export function readDocuments(f: SourceFile, fileIndex: number): { docs: SourcedDocument[]; empty: number; format: 'text' | 'jsonl' | 'chat' } {
  const text = decodeFile(f);
  const lines = text.split('\n');
  const parseLine = (i: number): Record<string, unknown> | undefined => {
    const line = lines[i]!;
    if (line.trim() === '') return undefined;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (e) {
      throw new InputError(`${f.path}:${i + 1}: malformed JSONL (${(e as Error).message})`);
    }
    if (!rec || typeof rec !== 'object' || Array.isArray(rec)) throw new InputError(`${f.path}:${i + 1}: a JSONL record must be a JSON object`);
    return rec as Record<string, unknown>;
  };
  const format = resolveFormat(f, () => {
    for (let i = 0; i < lines.length; i++) { const r = parseLine(i); if (r) return r; }
    return undefined;
  });
  const docs: SourcedDocument[] = [];
  let empty = 0;
  if (format === 'text') {
    if (text.trim() === '') empty++;
    else docs.push({ doc: { kind: 'text', text }, file: fileIndex, line: 1 });
    return { docs, empty, format };
  }
  for (let i = 0; i < lines.length; i++) {
    const rec = parseLine(i);
    if (!rec) continue;
    const where = `${f.path}:${i + 1}`;
    if (format === 'chat') {
      docs.push({ doc: { kind: 'chat', messages: parseChat(where, rec) }, file: fileIndex, line: i + 1 });
    } else {
      const v = rec[f.text_field];
      if (typeof v !== 'string') throw new InputError(`${where}: field "${f.text_field}" must be a string (got ${JSON.stringify(v) ?? 'nothing'})`);
      if (v.trim() === '') empty++;
      else docs.push({ doc: { kind: 'text', text: v }, file: fileIndex, line: i + 1 });
    }
  }
  return { docs, empty, format };
}
