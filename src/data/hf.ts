// The HF datasets layout beside the shards, so `datasets.load_from_disk(<dataset folder>)` opens
// a DatasetDict (train, eval) with the same columns and types: dataset_dict.json at the top, and
// per split a folder of Arrow stream files (src/data/writer.ts) with state.json and
// dataset_info.json, as Dataset.save_to_disk writes them. Plus the dataset card (README.md).
import { join } from 'node:path';
import { writeFileAtomic } from '../fsutil.js';
import { sha256Hex } from './tokenizer.js';
import type { DatasetManifest } from './manifest.js';
import { COLUMNS, hfFeatures } from './writer.js';

const json = (v: unknown): string => `${JSON.stringify(v, null, 2)}\n`;

/** dataset_dict.json and each split's state.json and dataset_info.json. */
export function writeHfMetadata(dir: string, m: DatasetManifest, description: string): void {
  const splits = ['train', 'eval'] as const;
  writeFileAtomic(join(dir, 'dataset_dict.json'), json({ splits }));
  for (const split of splits) {
    writeFileAtomic(join(dir, split, 'state.json'), json({
      _data_files: (m.splits[split].hf_files ?? []).map((filename) => ({ filename })),
      _fingerprint: sha256Hex(`${m.cache_key}:${split}`).slice(0, 16),
      _format_columns: null,
      _format_kwargs: {},
      _format_type: null,
      _output_all_columns: false,
      _split: split,
    }));
    writeFileAtomic(join(dir, split, 'dataset_info.json'), json({
      citation: '',
      description,
      features: hfFeatures(),
      homepage: '',
      license: '',
    }));
  }
}

const cell = (s: string | number): string => String(s).replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** The dataset card: sources, counts, tokenizer, columns and the recipe. */
export function datasetCard(m: DatasetManifest, recipe?: { file: string; text: string }): string {
  const out: string[] = [];
  out.push('---');
  out.push('tags: [v4tune, tokenized, packed]');
  if (m.hf_datasets) {
    out.push('configs:', '- config_name: default', '  data_files:');
    for (const split of ['train', 'eval'] as const) out.push(`  - split: ${split}`, `    path: ${split}/data-*.arrow`);
  }
  out.push('---', '');
  out.push(`# Tokenized dataset (v4tune ${m.v4tune_version})`, '');
  out.push(`Prepared by \`v4tune prepare\` on ${m.created_at}: rows of ${m.seq_len} tokens, ${m.packing ? 'documents packed as independent segments' : 'one document per row'}, split by document (eval fraction ${m.eval_fraction}, seed ${m.seed})${m.dedup ? ', exact duplicates dropped' : ''}.`, '');
  out.push('## Loading', '');
  out.push('```python');
  if (m.hf_datasets) out.push('import datasets', 'ds = datasets.load_from_disk("<this folder>")   # DatasetDict: train, eval');
  out.push('import pyarrow as pa', `t = pa.ipc.open_file("<this folder>/${m.splits.train.shards[0] ?? 'train-00000.arrow'}").read_all()`);
  out.push('```', '');
  out.push('## Columns', '');
  out.push('| column | type | meaning |', '|---|---|---|');
  const meaning: Record<string, string> = {
    input_ids: 'token ids, seq_len per row',
    loss_mask: '1 where the token is a training target',
    segment_ids: 'the segment of each token, from 0 per row; the padding (eos, loss 0) is the last segment',
    source_ids: 'per document segment: its source, an index into the sources below',
    doc_ids: 'per document segment: its document, the record index within its source (files in the order below)',
  };
  const types: Record<string, string> = { input_ids: 'list<int32>', loss_mask: 'list<uint8>', segment_ids: 'list<uint16>', source_ids: 'list<uint16>', doc_ids: 'list<uint32>' };
  for (const c of COLUMNS) out.push(`| \`${c}\` | ${types[c]} | ${meaning[c]} |`);
  out.push('');
  out.push('## Counts', '');
  out.push('| split | documents | rows | tokens | loss tokens | packing efficiency |', '|---|---|---|---|---|---|');
  for (const split of ['train', 'eval'] as const) {
    const s = m.splits[split];
    out.push(`| ${split} | ${s.documents} | ${s.rows} | ${s.tokens} | ${s.loss_tokens} | ${(s.packing_efficiency * 100).toFixed(1)}% |`);
  }
  out.push('');
  out.push('## Sources', '');
  out.push('| id | name | files | format | weight | documents (train + eval) | tokens | share | bad | duplicates | dropped |', '|---|---|---|---|---|---|---|---|---|---|---|');
  m.sources.forEach((s, i) => {
    const formats = [...new Set(s.files.map((f) => f.format))].join(', ');
    out.push(`| ${i} | ${cell(s.name)} | ${s.files.length} (\`${cell(s.pattern)}\`) | ${formats} | ${s.weight} | ${s.documents} (${s.train_documents} + ${s.eval_documents}) | ${s.tokens} | ${(s.token_share * 100).toFixed(1)}% | ${s.bad} | ${s.duplicates} | ${s.dropped}${s.cap_reached ? ` (${s.cap_reached})` : ''} |`);
  });
  out.push('');
  out.push('## Tokenizer', '');
  out.push(`${m.tokenizer.kind === 'hf' ? 'HF tokenizer.json' : 'SentencePiece model'} \`${m.tokenizer.file}\` (a copy of \`${m.tokenizer.source}\`), vocab ${m.tokenizer.vocab_size}, bos ${m.tokenizer.bos_id}, eos ${m.tokenizer.eos_id}, sha256 \`${m.tokenizer.sha256}\`.`, '');
  if (recipe) {
    out.push('## Recipe', '', `\`${recipe.file}\`:`, '', '```yaml', recipe.text.trimEnd(), '```', '');
  }
  return out.join('\n');
}
