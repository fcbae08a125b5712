// `npm run docs`: regenerates the README's recipe reference from the zod schema (where every
// field is documented once) and its CLI reference from the commander program, between markers.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { recipeSchema } from '../recipe/schema.js';
import { writeFileAtomic } from '../fsutil.js';
import { buildProgram } from './main.js';

interface ZodLike {
  def: { type: string; innerType?: ZodLike; defaultValue?: unknown; element?: ZodLike; entries?: Record<string, string>; valueType?: ZodLike; checks?: unknown[] };
  description?: string;
  shape?: Record<string, ZodLike>;
}

function unwrapField(s: ZodLike): { inner: ZodLike; optional: boolean; def: unknown; hasDefault: boolean } {
  let cur = s;
  let optional = false;
  let def: unknown;
  let hasDefault = false;
  for (;;) {
    if (cur.def.type === 'optional') optional = true;
    else if (cur.def.type === 'default') { hasDefault = true; def = cur.def.defaultValue; }
    else break;
    cur = cur.def.innerType!;
  }
  return { inner: cur, optional, def, hasDefault };
}

function typeName(s: ZodLike): string {
  switch (s.def.type) {
    case 'enum': return Object.values(s.def.entries!).map((v) => `\`${v}\``).join(' \\| ');
    case 'array': return `list of ${typeName(unwrapField(s.def.element!).inner)}`;
    case 'record': return `map of ${typeName(unwrapField(s.def.valueType!).inner)}`;
    case 'object': return 'mapping';
    default: return s.def.type;
  }
}

/** Markdown tables, one per section, from the schema's own descriptions. */
export function recipeReference(): string {
  const out: string[] = [];
  const root = recipeSchema as unknown as ZodLike;
  const top: string[] = ['| field | type | default | meaning |', '|---|---|---|---|'];
  const sections: string[] = [];
  const describeObject = (prefix: string, obj: ZodLike, rows: string[]) => {
    for (const [key, field] of Object.entries(obj.shape!)) {
      const { inner, optional, def, hasDefault } = unwrapField(field);
      const name = `${prefix}${key}`;
      const element = inner.def.type === 'array' ? unwrapField(inner.def.element!).inner : null;
      if (inner.def.type === 'object' && prefix === '') {
        sections.push(`### \`${key}\`\n${inner.description ?? field.description ?? ''}\n`);
        const rowsOf: string[] = ['| field | type | default | meaning |', '|---|---|---|---|'];
        describeObject(`${key}.`, inner, rowsOf);
        sections.push(`${rowsOf.join('\n')}\n`);
        continue;
      }
      const shownDefault = hasDefault ? `\`${JSON.stringify(def)}\`` : optional ? '—' : '**required**';
      rows.push(`| \`${name}\` | ${element?.def.type === 'object' ? 'list of mappings' : typeName(inner)} | ${shownDefault} | ${(field.description ?? inner.description ?? '').replace(/\|/g, '\\|')} |`);
      if (element?.def.type === 'object') describeObject(`${name}[].`, element, rows);
    }
  };
  describeObject('', root, top);
  out.push('Top-level fields:\n', top.join('\n'), '', ...sections);
  return out.join('\n');
}

/** Each verb's usage and options, as commander prints them. */
export function cliReference(): string {
  const program = buildProgram();
  const parts = ['```', program.helpInformation().trim(), '```'];
  for (const cmd of program.commands) {
    parts.push('', `#### \`v4tune ${cmd.name()}\``, '```', cmd.helpInformation().trim(), '```');
  }
  return parts.join('\n');
}

export function replaceBetween(text: string, marker: string, body: string): string {
  const start = `<!-- ${marker}:start -->`;
  const end = `<!-- ${marker}:end -->`;
  const i = text.indexOf(start);
  const j = text.indexOf(end);
  if (i < 0 || j < i) throw new Error(`README.md has no ${start} … ${end} markers`);
  return `${text.slice(0, i + start.length)}\n${body}\n${text.slice(j)}`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const readme = fileURLToPath(new URL('../../README.md', import.meta.url));
  let text = readFileSync(readme, 'utf8');
  text = replaceBetween(text, 'recipe-reference', recipeReference());
  text = replaceBetween(text, 'cli-reference', cliReference());
  writeFileAtomic(readme, text);
  console.log(`updated ${readme}`);
}
