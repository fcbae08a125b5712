// The chat template in a model folder's tokenizer_config.json (`chat_template`, the field
// transformers' apply_chat_template and GGUF converters read). Every model, merged and quantized
// folder v4tune writes carries V4_CHAT_TEMPLATE, the template training renders through.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { readJsonFile, writeFileAtomic } from '../fsutil.js';
import { V4_CHAT_TEMPLATE } from './template.js';

export const TOKENIZER_CONFIG = 'tokenizer_config.json';

/** tokenizer_config.json's content with V4_CHAT_TEMPLATE as its chat_template. */
export function withChatTemplate(config: Record<string, unknown>): Record<string, unknown> {
  return { ...config, chat_template: V4_CHAT_TEMPLATE };
}

/**
 * Set `chat_template` in `<dir>/tokenizer_config.json` (kept otherwise as it is); a folder with a
 * tokenizer.json and no tokenizer_config.json gets one holding the template. A folder without a
 * tokenizer is left alone. Returns whether the template was written.
 */
export function stampChatTemplate(dir: string): boolean {
  const path = join(dir, TOKENIZER_CONFIG);
  let config: Record<string, unknown> = {};
  if (existsSync(path)) {
    config = readJsonFile(path) as Record<string, unknown>;
    if (config === null || typeof config !== 'object' || Array.isArray(config)) throw new InputError(`${path}: not a JSON object`);
  } else if (!existsSync(join(dir, 'tokenizer.json'))) {
    return false;
  }
  writeFileAtomic(path, `${JSON.stringify(withChatTemplate(config), null, 2)}\n`);
  return true;
}

/** The chat template of a model folder's tokenizer_config.json, or null when it has none. */
export function readChatTemplate(dir: string): string | null {
  const path = join(dir, TOKENIZER_CONFIG);
  if (!existsSync(path)) return null;
  const t = (readJsonFile(path) as { chat_template?: unknown }).chat_template;
  return typeof t === 'string' ? t : null;
}
