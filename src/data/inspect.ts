// `inspect <dataset dir>`: the manifest summary, a histogram of segment lengths, and rows
// decoded back to text with the loss mask visible.
import { openDataset, type DatasetRow, type Split } from './dataset.js';
import type { DatasetManifest } from './manifest.js';
import type { TextTokenizer } from './tokenizer.js';

export interface HistogramBin { from: number; to: number; count: number }

/** A decoded span of a row: consecutive tokens with the same loss mask. */
export interface DecodedSpan { text: string; loss: boolean; tokens: number }

export interface DecodedRow {
  split: Split;
  index: number;
  segments: { spans: DecodedSpan[]; padding: boolean; tokens: number }[];
}

export interface DatasetSummary {
  dir: string;
  manifest: DatasetManifest;
  /** Document segment lengths (padding excluded) in power-of-two bins [from, to]. */
  histogram: HistogramBin[];
  rows: DecodedRow[];
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

function decodeRow(tok: TextTokenizer, row: DatasetRow, split: Split, index: number, eosId: number): DecodedRow {
  const segments: DecodedRow['segments'] = [];
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
    segments.push({ spans, padding, tokens: len });
    s = e;
  });
  return { split, index, segments };
}

/** Summarise a dataset folder; `rows` > 0 decodes the first rows of train (then eval). */
export async function inspectDataset(dir: string, opts: { rows?: number } = {}): Promise<DatasetSummary> {
  const ds = openDataset(dir);
  const m = ds.manifest;
  const histogram = emptyHistogram(m.seq_len);
  const want = opts.rows ?? 0;
  const decoded: DecodedRow[] = [];
  const tok = want > 0 ? await ds.tokenizer() : null;
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
      if (tok && decoded.length < want) decoded.push(decodeRow(tok, row, split, index, m.tokenizer.eos_id));
      index++;
    }
  }
  return { dir, manifest: m, histogram, rows: decoded };
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
  for (const src of m.sources) out.push(`  source ${src.path} (${src.format}, ${src.bytes} bytes, ${src.documents} docs, sha256 ${src.sha256.slice(0, 16)}…)`);
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
        out.push(`[segment ${k}${seg.padding ? ', padding' : ''}, ${seg.tokens} tokens] ${body}`);
      });
    }
  }
  return out.join('\n');
}
