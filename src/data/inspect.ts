// `inspect <dataset dir>`: the manifest summary, a histogram of segment lengths, and rows
// decoded back to text with the loss mask visible: the first N, one by index, a seeded sample,
// any of them restricted to rows holding a given source; each segment names its source and
// document (file and line where the manifest can tell).
import { InputError } from '../errors.js';
import { mulberry32 } from '../random.js';
import { openDataset, type DatasetRow, type Split } from './dataset.js';
import type { DatasetManifest, SourceManifest } from './manifest.js';
import type { TextTokenizer } from './tokenizer.js';

export interface HistogramBin { from: number; to: number; count: number }

/** A decoded span of a row: consecutive tokens with the same loss mask. */
export interface DecodedSpan { text: string; loss: boolean; tokens: number }

export interface DecodedSegment {
  spans: DecodedSpan[];
  padding: boolean;
  tokens: number;
  /** The segment's source name and document id (datasets with provenance columns). */
  source?: string;
  doc_id?: number;
  /** Where the document is: `file:line`, `file: row N`, `file: record N` or `file`. */
  location?: string;
}

export interface DecodedRow {
  split: Split;
  index: number;
  segments: DecodedSegment[];
}

/** Which rows `inspect` decodes. */
export interface InspectOptions {
  /** The first N rows (train, then eval). */
  rows?: number;
  /** Row N of `split`. */
  row?: number;
  /** The split `row` (and `rows` / `sample`, when given) read; default train for `row`, both otherwise. */
  split?: Split;
  /** Only rows holding a segment of the source with this name. */
  source?: string;
  /** K rows drawn uniformly (seeded) from the matching rows. */
  sample?: number;
  seed?: number;
}

export interface DatasetSummary {
  dir: string;
  manifest: DatasetManifest;
  /** Document segment lengths (padding excluded) in power-of-two bins [from, to]. */
  histogram: HistogramBin[];
  rows: DecodedRow[];
  /** Rows that matched the selection (split, row, source) before `sample` or `rows` took some. */
  matched: number;
}

/** Whether a row's segment [s, e) is its padding: the last segment, all eos, no loss. */
function isPadding(row: DatasetRow, s: number, e: number, last: boolean, eosId: number): boolean {
  if (!last) return false;
  for (let i = s; i < e; i++) if (row.input_ids[i] !== eosId || row.loss_mask[i] !== 0) return false;
  return true;
}

/** Power-of-two bins [2^k, 2^(k+1) - 1] up to seqLen. */
function emptyHistogram(seqLen: number): HistogramBin[] {
  const bins: HistogramBin[] = [];
  for (let from = 1; from <= seqLen; from *= 2) bins.push({ from, to: Math.min(from * 2 - 1, seqLen), count: 0 });
  return bins;
}

/** Where document `doc` of source `src` is, from the manifest's per-file doc id ranges. */
export function documentLocation(src: SourceManifest | undefined, doc: number): string | undefined {
  const f = src?.files?.find((x) => x.first_doc_id >= 0 && doc >= x.first_doc_id && doc < x.first_doc_id + x.records);
  if (!f) return undefined;
  const k = doc - f.first_doc_id;
  if (f.container === 'jsonl') return `${f.path}:${k + 1}`;
  if (f.container === 'parquet') return `${f.path}: row ${k}`;
  if (f.container === 'json') return `${f.path}: record ${k}`;
  return f.path;
}

function decodeRow(tok: TextTokenizer, m: DatasetManifest, row: DatasetRow, split: Split, index: number, eosId: number): DecodedRow {
  const segments: DecodedSegment[] = [];
  let s = 0;
  row.segments.forEach((len, k) => {
    const e = s + len;
    const padding = isPadding(row, s, e, k === row.segments.length - 1, eosId);
    const spans: DecodedSpan[] = [];
    if (padding) {
      spans.push({ text: `${tok.decode([eosId])} × ${len}`, loss: false, tokens: len });
    } else {
      let a = s;
      for (let i = s + 1; i <= e; i++) {
        if (i === e || row.loss_mask[i] !== row.loss_mask[a]) {
          spans.push({ text: tok.decode(row.input_ids.subarray(a, i)), loss: row.loss_mask[a] === 1, tokens: i - a });
          a = i;
        }
      }
    }
    const seg: DecodedSegment = { spans, padding, tokens: len };
    if (!padding && row.source_ids && row.doc_ids && k < row.source_ids.length) {
      const src = m.sources[row.source_ids[k]!];
      seg.source = src?.name ?? `#${row.source_ids[k]}`;
      seg.doc_id = row.doc_ids[k]!;
      const where = documentLocation(src, seg.doc_id);
      if (where) seg.location = where;
    }
    segments.push(seg);
    s = e;
  });
  return { split, index, segments };
}

/**
 * Summarise a dataset folder and decode the rows `opts` selects: `row` (one row of `split`,
 * train by default), `sample` (K rows drawn with `seed` by reservoir sampling) or `rows` (the
 * first N), each among the rows holding a segment of `source` when that is given.
 */
export async function inspectDataset(dir: string, opts: InspectOptions = {}): Promise<DatasetSummary> {
  const ds = openDataset(dir);
  const m = ds.manifest;
  const histogram = emptyHistogram(m.seq_len);
  let sourceId: number | null = null;
  if (opts.source !== undefined) {
    if (!m.columns?.includes('source_ids')) throw new InputError(`--source: ${dir} has no source_ids column (prepared by v4tune ${m.v4tune_version}; prepare it again)`);
    sourceId = m.sources.findIndex((s) => s.name === opts.source);
    if (sourceId < 0) throw new InputError(`--source ${opts.source}: ${dir} has no source of that name (its sources: ${m.sources.map((s) => s.name).join(', ')})`);
  }
  const splitOf = opts.row !== undefined ? (opts.split ?? 'train') : opts.split;
  if (opts.row !== undefined) {
    const n = m.splits[splitOf!].rows;
    if (!Number.isInteger(opts.row) || opts.row < 0 || opts.row >= n) throw new InputError(`--row ${opts.row}: the ${splitOf} split of ${dir} has ${n} rows (0 to ${n - 1})`);
  }
  const want = opts.row !== undefined ? 1 : opts.sample ?? opts.rows ?? 0;
  const rand = mulberry32(opts.seed ?? 0);
  const picked: { split: Split; index: number; row: DatasetRow }[] = [];
  let matched = 0;
  for (const split of ['train', 'eval'] as const) {
    let index = 0;
    for (const row of ds.rows(split)) {
      let s = 0;
      row.segments.forEach((len, k) => {
        if (!isPadding(row, s, s + len, k === row.segments.length - 1, m.tokenizer.eos_id)) {
          histogram[Math.floor(Math.log2(len))]!.count++;
        }
        s += len;
      });
      const eligible = (splitOf === undefined || split === splitOf)
        && (opts.row === undefined || index === opts.row)
        && (sourceId === null || (row.source_ids?.includes(sourceId) ?? false));
      if (eligible && want > 0) {
        if (opts.sample !== undefined) {
          // reservoir sampling: after n matches each is kept with probability K/n
          if (picked.length < want) picked.push({ split, index, row });
          else {
            const j = Math.floor(rand() * (matched + 1));
            if (j < want) picked[j] = { split, index, row };
          }
        } else if (picked.length < want) picked.push({ split, index, row });
        matched++;
      }
      index++;
    }
  }
  const order = (x: { split: Split; index: number }): number => (x.split === 'train' ? 0 : 2 ** 40) + x.index;
  picked.sort((a, b) => order(a) - order(b));
  const tok = picked.length > 0 ? await ds.tokenizer() : null;
  const decoded = tok ? picked.map((p) => decodeRow(tok, m, p.row, p.split, p.index, m.tokenizer.eos_id)) : [];
  return { dir, manifest: m, histogram, rows: decoded, matched };
}

const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;

/**
 * Text report of a summary. Loss-masked-out spans (no loss) are dimmed with `color`, else
 * wrapped in ⟦ ⟧; tokens with loss are shown plain.
 */
export function renderDatasetSummary(s: DatasetSummary, opts: { color: boolean }): string {
  const m = s.manifest;
  const out: string[] = [];
  out.push(`dataset ${s.dir} (v4tune ${m.v4tune_version}, ${m.created_at})`);
  out.push(`tokenizer: ${m.tokenizer.kind} ${m.tokenizer.file}, vocab ${m.tokenizer.vocab_size}, sha256 ${m.tokenizer.sha256.slice(0, 16)}…`);
  out.push(`seq_len ${m.seq_len}, packing ${m.packing ? 'on' : 'off'}, eval_fraction ${m.eval_fraction}, seed ${m.seed}`);
  out.push(`documents: ${m.documents.read} read, ${m.documents.empty} empty skipped, ${m.documents.duplicates} duplicates dropped, ${m.documents.kept} kept`);
  m.sources.forEach((src, i) => {
    const old = src as unknown as { path?: string; bytes?: number; sha256?: string };
    if (src.files === undefined) { out.push(`  source ${old.path} (${src.format}, ${old.bytes} bytes, ${src.documents} docs)`); return; }
    const bytes = src.files.reduce((a, f) => a + f.bytes, 0);
    out.push(`  source ${i} "${src.name}" (${src.pattern}): ${src.files.length} file(s), ${bytes} bytes, weight ${src.weight}; ${src.documents} docs (${src.train_documents} train incl. ${src.repeats} repeats, ${src.eval_documents} eval), ${src.tokens} tokens (${pct(src.token_share)}), ${src.bad} bad, ${src.empty} empty, ${src.duplicates} duplicates, ${src.dropped} dropped${src.cap_reached ? ` (${src.cap_reached} reached)` : ''}`);
    for (const ex of src.bad_examples.slice(0, 3)) out.push(`    bad: ${ex}`);
  });
  for (const split of ['train', 'eval'] as const) {
    const sp = m.splits[split];
    out.push(`${split}: ${sp.documents} docs, ${sp.rows} rows in ${sp.shards.length} shard(s), ${sp.tokens} tokens, ${sp.loss_tokens} with loss, ${sp.segments} segments (${sp.chunked_documents} docs chunked), packing efficiency ${pct(sp.packing_efficiency)}`);
  }
  out.push('segment lengths (tokens):');
  const max = Math.max(1, ...s.histogram.map((b) => b.count));
  const width = String(m.seq_len).length;
  for (const b of s.histogram) {
    const label = `${String(b.from).padStart(width)}–${String(b.to).padEnd(width)}`;
    out.push(`  ${label} ${'█'.repeat(Math.round((b.count / max) * 40)).padEnd(40)} ${b.count}`);
  }
  if (s.rows.length > 0) {
    out.push(opts.color ? 'rows (dim: no loss):' : 'rows (⟦…⟧: no loss):');
    for (const r of s.rows) {
      out.push(`── ${r.split} row ${r.index} ──`);
      r.segments.forEach((seg, k) => {
        const body = seg.spans.map((sp) => (sp.loss ? sp.text : opts.color ? `\x1b[2m${sp.text}\x1b[22m` : `⟦${sp.text}⟧`)).join('');
        const from = seg.source !== undefined ? `, source "${seg.source}" doc ${seg.doc_id}${seg.location ? ` (${seg.location})` : ''}` : '';
        out.push(`[segment ${k}${seg.padding ? ', padding' : ''}, ${seg.tokens} tokens${from}] ${body}`);
      });
    }
  }
  return out.join('\n');
}
