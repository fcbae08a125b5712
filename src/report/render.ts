// report.md: the run report as Markdown, one section per stage, "not run" where a stage left nothing.
import type { KindStats, LinearKind } from '../export/quantize.js';
import type { NotRun, PerplexityRow, RunReport, Section } from './types.js';

const int = (n: number): string => n.toLocaleString('en-US');
const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;
const loss = (x: number): string => x.toFixed(4);
const ppl = (x: number): string => (!Number.isFinite(x) ? String(x) : x >= 1e6 ? x.toExponential(4) : x.toFixed(2));
const MiB = 1024 ** 2;
const bytes = (b: number): string => (b >= 1024 ** 3 ? `${(b / 1024 ** 3).toFixed(2)} GiB` : `${(b / MiB).toFixed(2)} MiB`);
const sci = (x: number): string => x.toExponential(3);

function table(head: string[], rows: string[][]): string[] {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)];
}

function notRun<T>(s: Section<T>): s is NotRun {
  return s.status === 'not run';
}

const notRunLine = (s: NotRun): string => `_Not run: ${s.reason}._`;

function errorRows(errors: Partial<Record<LinearKind, KindStats>>): string[][] {
  return (Object.entries(errors) as Array<[LinearKind, KindStats]>).map(([k, e]) => [k, int(e.tensors), int(e.weights), sci(e.maxAbsError), sci(e.meanAbsError), pct(e.relRmsError)]);
}

function perplexityCells(r: PerplexityRow, ref: PerplexityRow | undefined): string[] {
  if (r.status === 'not run') return [r.label, 'not run', '—', '—', '—', '—', r.reason];
  const change = 100 * (r.perplexity / (ref?.status === 'ok' ? ref.perplexity : NaN) - 1);
  const delta = ref && ref.status === 'ok' ? `${change >= 0 ? '+' : ''}${change.toFixed(2)}% vs ${ref.stage}` : '—';
  return [r.label, loss(r.loss), ppl(r.perplexity), delta, int(r.tokens), int(r.rows), r.from];
}

export function renderReport(r: RunReport): string {
  const L: string[] = [];
  L.push(`# Run report: ${r.recipe.name}`, '', `v4tune ${r.v4tune_version}, ${r.generated_at}.`, '');

  L.push('## Recipe', '');
  L.push(`- file: \`${r.recipe.file}\``, `- name: ${r.recipe.name}`, `- output: \`${r.recipe.output}\``);
  const s = r.recipe.seeds;
  L.push(`- seeds: model ${s.model}, data ${s.data}, lora ${s.lora}, train ${s.train}`, '');

  L.push('## Model', '');
  if (notRun(r.model)) L.push(notRunLine(r.model), '');
  else {
    const m = r.model;
    L.push(`- ${m.source}: \`${m.dir}\` (${m.layout} layout, ${bytes(m.bytes)})`);
    L.push(`- ${m.layers} layers, hidden ${m.hiddenSize}, vocab ${int(m.vocabSize)}; ${m.routedExperts} routed experts (${m.expertsPerToken} per token) + ${m.sharedExperts} shared; ${m.mtpLayers} MTP block${m.mtpLayers === 1 ? '' : 's'}`);
    L.push(`- ${int(m.totalParameters)} parameters`, '');
    L.push(...table(['part', 'parameters', 'share'], Object.entries(m.parameters).map(([k, n]) => [k, int(n), pct(n / m.totalParameters)])), '');
  }

  L.push('## Data', '');
  if (notRun(r.data)) L.push(notRunLine(r.data), '');
  else {
    const d = r.data;
    L.push(`- dataset: \`${d.dir}\`, seq_len ${d.seqLen}`);
    L.push(`- documents: ${int(d.documents.read)} read, ${int(d.documents.empty)} empty, ${int(d.documents.duplicates)} duplicates, ${int(d.documents.kept)} kept`);
    L.push(`- ${int(d.rows)} rows, ${int(d.tokens)} tokens, ${int(d.lossTokens)} loss tokens, packing efficiency ${pct(d.packingEfficiency)}`);
    L.push(`- tokenizer: ${d.tokenizer.kind} \`${d.tokenizer.file}\`, vocab ${int(d.tokenizer.vocabSize)}, encoder ${d.tokenizer.encoder ?? 'not recorded'}`, '');
    L.push(...table(['split', 'documents', 'rows', 'tokens', 'loss tokens', 'packing'], (['train', 'eval'] as const).map((k) => {
      const x = d.splits[k];
      return [k, int(x.documents), int(x.rows), int(x.tokens), int(x.lossTokens), pct(x.packingEfficiency)];
    })), '');
  }

  L.push('## Training', '');
  if (notRun(r.training)) L.push(notRunLine(r.training), '');
  else {
    const t = r.training;
    L.push(`- ${t.step} of ${t.steps} steps${t.interrupted ? ' (interrupted)' : ''} on ${t.backend}; ${int(t.trainRows)} train rows, ${int(t.evalRows)} eval rows`);
    L.push(`- ${int(t.tokens)} tokens in ${t.seconds.toFixed(1)} s (${Math.round(t.tokensPerSecond)} tokens/s)${t.lastLoss !== null ? `; last train loss ${loss(t.lastLoss)}` : ''}`);
    if (t.resumes.length > 0) L.push(`- resumed ${t.resumes.length} time${t.resumes.length === 1 ? '' : 's'} (at step${t.resumes.length === 1 ? '' : 's'} ${t.resumes.join(', ')}); the numbers are the whole run's`);
    if (t.extendedFrom !== null) L.push(`- extended from ${t.extendedFrom} to ${t.steps} steps (the schedule spans ${t.steps})`);
    if (t.best) L.push(`- best eval loss ${loss(t.best.evalLoss)} at step ${t.best.step}${t.best.checkpoint ? ` (checkpoint \`${t.best.checkpoint}\`)` : ''}${t.stoppedEarly ? `; stopped early at step ${t.step}` : ''}`);
    L.push('');
    if (t.lossCurve.length > 0) {
      L.push('Train loss:', '', ...table(['step', 'loss'], t.lossCurve.map((p) => [String(p.step), loss(p.loss)])), '');
    }
    const ev = [['before', t.evalBefore], ['after', t.evalAfter]] as const;
    const mtp = ev.some(([, e]) => e?.mtpAgreement !== undefined);
    const mtpCell = (e: { mtpAgreement?: number }) => (mtp ? [e.mtpAgreement !== undefined ? pct(e.mtpAgreement) : '—'] : []);
    L.push('Eval loss (train stage):', '', ...table(['', 'loss', 'perplexity', 'tokens', 'rows', ...(mtp ? ['MTP top-1 agreement'] : [])], ev.map(([k, e]) => (e ? [k, loss(e.loss), ppl(e.perplexity), int(e.tokens), int(e.rows), ...mtpCell(e)] : [k, 'not run', '—', '—', '—', ...(mtp ? ['—'] : [])]))), '');
    if (mtp) L.push('MTP top-1 agreement: how often the MTP block\'s prediction of token t+2 equals the main head\'s (the greedy speculative draft\'s acceptance rate).', '');
    const last = t.samples[t.samples.length - 1];
    if (last) {
      const cell = (x: string) => x.replace(/\|/g, '\\|').replace(/\n/g, ' ');
      L.push(`Eval prompts at step ${last.step} (greedy):`, '', ...table(['prompt', 'completion'], last.samples.map((x) => [cell(x.prompt), cell(x.completion)])), '');
    }
  }

  L.push('## Adapter', '');
  if (notRun(r.adapter)) L.push(notRunLine(r.adapter), '');
  else {
    const a = r.adapter;
    L.push(`- \`${a.dir}\`: ${int(a.modules)} modules, ${int(a.trainableParameters)} trainable parameters`);
    L.push(`- r ${a.r}, alpha ${a.alpha}${a.rslora ? ' (rsLoRA)' : ''}, dropout ${a.dropout}`);
    L.push(`- targets: ${a.targets.map((x) => `\`${x}\``).join(', ')}`, '');
  }

  L.push('## Experts', '');
  if (notRun(r.experts)) L.push(notRunLine(r.experts), '');
  else {
    const x = r.experts;
    L.push(x.adapted === 'all' ? `- every routed expert (${x.experts} per layer) is adapted` : x.adapted === 'none' ? '- no routed expert is adapted' : '- adapted routed experts, per block (the rest are frozen):');
    if (x.profile) L.push(`- profile: \`${x.profile}\`, ${x.rows} rows routed${x.splitRows !== null ? `, sampled across ${int(x.splitRows)} train rows` : ''}`);
    L.push('');
    if (x.adapted === 'subset') {
      L.push(...table(['block', 'adapted experts', 'their gate mass share'], x.blocks.map((b) => [b.block, b.adapted.join(', ') || '—', b.share ? pct(b.adapted.reduce((s, e) => s + b.share![e]!, 0)) : '—'])), '');
    }
  }

  L.push('## Export', '', '### Merge', '');
  const mg = r.export.merge;
  if (notRun(mg)) L.push(notRunLine(mg), '');
  else {
    const f = Object.entries(mg.formats).map(([k, v]) => `${k} ${v!.tensors} tensors (${bytes(v!.bytes)})`).join(', ');
    L.push(`- \`${mg.dir}\`: merge_dtype ${mg.dtype}; ${mg.shards} shard${mg.shards === 1 ? '' : 's'}, ${bytes(mg.bytes)}; ${f}`, '');
  }
  L.push('### Quantized', '');
  if (r.export.quantized.length === 0) L.push('_Not run: export.quantize is empty._', '');
  for (const q of r.export.quantized) {
    if (q.status === 'not run') {
      L.push(`- ${q.format}: ${notRunLine(q)}`, '');
      continue;
    }
    const comp = q.compression !== null ? `${q.compression.toFixed(2)}x (${bytes(q.bytesIn!)} → ${bytes(q.bytesOut)})` : `${bytes(q.bytesOut)} (source folder gone)`;
    const grid = q.format === 'gptq' ? (q.groupSize !== null ? `, group size ${q.groupSize}` : '') : ', blocks of 32';
    L.push(`- ${q.format} (method ${q.method}${grid}): \`${q.path}\`, ${int(q.tensorsQuantized)} tensors quantized, compression ${comp}`, '');
    L.push(...table(['kind', 'tensors', 'weights', 'max abs error', 'mean abs error', 'relative RMS'], errorRows(q.errors)), '');
    if (q.layers && q.layers.length > 0) {
      const kinds = [...new Set(q.layers.map((l) => l.kind))];
      const blocks = [...new Set(q.layers.map((l) => l.block))];
      L.push('Relative RMS error per layer (the output read back against its source):', '');
      L.push(...table(['block', ...kinds], blocks.map((b) => [b, ...kinds.map((k) => { const l = q.layers!.find((x) => x.block === b && x.kind === k); return l ? pct(l.relRmsError) : '—'; })])), '');
    }
  }

  L.push('## Perplexity before and after', '');
  const p = r.perplexity;
  if (p.evalRows !== null) L.push(`Eval split, first ${int(p.evalRows)} of ${int(p.evalRowsTotal ?? p.evalRows)} rows; perplexity = exp(mean loss over the counted tokens).`, '');
  const byStage = new Map(p.rows.map((x) => [x.stage, x]));
  const refOf = (x: PerplexityRow): PerplexityRow | undefined => (x.stage === 'adapter' ? byStage.get('base') : x.stage === 'merged' ? byStage.get('adapter') : x.stage === 'gptq' ? byStage.get('merged') : undefined);
  L.push(...table(['stage', 'loss', 'perplexity', 'change', 'tokens', 'rows', 'from'], p.rows.map((x) => perplexityCells(x, refOf(x)))), '');
  for (const n of p.notes) L.push(`- ${n}`);
  if (p.notes.length > 0) L.push('');
  return `${L.join('\n').trimEnd()}\n`;
}
