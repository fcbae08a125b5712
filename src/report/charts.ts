// The report page's charts: Vega-Lite specs compiled to Vega and rendered to SVG in Node
// (no browser, no canvas: renderer "none" and vega's own text metrics). Each chart is built from
// the RunReport only, so report.html shows what report.md states.
import type * as vl from 'vega-lite';
import type { RunReport } from './types.js';

export interface Chart {
  /** the section it belongs under (report.md's heading text) */
  section: 'Training' | 'Experts' | 'Quantized' | 'Perplexity before and after';
  title: string;
  svg: string;
}

type Spec = vl.TopLevelSpec;

const FONT = 'system-ui, -apple-system, "Segoe UI", sans-serif';
const base = (title: string, width = 400, height = 170): Partial<Spec> & object => ({
  $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
  title: { text: title, font: FONT, fontSize: 14, anchor: 'start' },
  width,
  height,
  config: { font: FONT, axis: { labelFont: FONT, titleFont: FONT, gridColor: '#eee' }, legend: { labelFont: FONT, titleFont: FONT }, view: { stroke: null } },
  background: 'white',
});

/** SVG of a Vega-Lite spec. */
export async function renderSvg(spec: Spec): Promise<string> {
  // loaded on first use: the other commands start without them
  const [vega, vegaLite] = await Promise.all([import('vega'), import('vega-lite')]);
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

function lineSpec(title: string, values: Array<Record<string, unknown>>, y: string, yTitle: string, opts: { color?: string; log?: boolean } = {}): Spec {
  return {
    ...base(title),
    data: { values },
    mark: { type: 'line', point: values.length <= 60, interpolate: 'linear' },
    encoding: {
      x: { field: 'step', type: 'quantitative', title: 'step', axis: { tickMinStep: 1 } },
      y: { field: y, type: 'quantitative', title: yTitle, scale: { zero: false, ...(opts.log ? { type: 'log' } : {}) } },
      ...(opts.color ? { color: { field: opts.color, type: 'nominal', title: null, scale: { range: ['#4c78a8', '#f58518', '#54a24b'] } } } : {}),
      tooltip: [{ field: 'step' }, { field: y }],
    },
  } as Spec;
}

/** Every chart the report's content supports (sections without data give none). */
export async function reportCharts(r: RunReport): Promise<Chart[]> {
  const specs: Array<Omit<Chart, 'svg'> & { spec: Spec }> = [];
  if (r.training.status === 'ok') {
    const t = r.training;
    const loss = [
      ...t.curve.filter((p) => p.loss !== null).map((p) => ({ step: p.step, loss: p.loss, series: 'train loss' })),
      ...t.evals.map((e) => ({ step: e.step, loss: e.loss, series: 'eval loss' })),
    ];
    if (loss.length > 0) specs.push({ section: 'Training', title: 'Loss', spec: lineSpec('Train and eval loss', loss, 'loss', 'loss (nats/token)', { color: 'series' }) });
    if (t.curve.length > 0) {
      specs.push({ section: 'Training', title: 'Learning rate', spec: lineSpec('Learning rate', t.curve.map((p) => ({ step: p.step, lr: p.lr })), 'lr', 'learning rate') });
      const tps = t.curve.filter((p) => p.tokensPerSecond !== null).map((p) => ({ step: p.step, tokens_per_s: p.tokensPerSecond }));
      if (tps.length > 0) specs.push({ section: 'Training', title: 'Tokens/s', spec: lineSpec('Throughput', tps, 'tokens_per_s', 'tokens/s') });
      specs.push({ section: 'Training', title: 'Gradient norm', spec: lineSpec('Gradient norm (before clipping)', t.curve.map((p) => ({ step: p.step, grad_norm: p.gradNorm })), 'grad_norm', 'global L2 norm') });
    }
  }
  if (r.experts.status === 'ok' && r.experts.blocks.some((b) => b.share !== null)) {
    const x = r.experts;
    const cells = x.blocks.flatMap((b) => Array.from({ length: x.experts }, (_, e) => ({
      block: b.block, expert: e, share: b.share ? b.share[e]! : 0, adapted: b.adapted.includes(e) ? 'adapted' : 'frozen',
    })));
    const spec = {
      ...base(`Gate mass share per expert (${x.rows} profiled rows); ● adapted`, Math.max(240, Math.min(900, 18 * x.experts)), 22 * x.blocks.length),
      data: { values: cells },
      encoding: {
        x: { field: 'expert', type: 'ordinal', title: 'routed expert' },
        y: { field: 'block', type: 'ordinal', title: null, sort: x.blocks.map((b) => b.block) },
      },
      layer: [
        { mark: 'rect', encoding: { color: { field: 'share', type: 'quantitative', title: 'share', scale: { scheme: 'blues' } }, tooltip: [{ field: 'block' }, { field: 'expert' }, { field: 'share', format: '.1%' }, { field: 'adapted' }] } },
        { transform: [{ filter: "datum.adapted === 'adapted'" }], mark: { type: 'point', filled: true, color: '#e45756', size: 40 } },
      ],
    } as unknown as Spec;
    specs.push({ section: 'Experts', title: 'Expert profile', spec });
  }
  const quant = r.export.quantized.filter((q) => q.status === 'ok');
  const errs = quant.flatMap((q) => (q.status === 'ok' ? Object.entries(q.errors).map(([kind, e]) => ({ format: q.format, kind, rel_rms: e!.relRmsError })) : []));
  if (errs.length > 0) {
    specs.push({
      section: 'Quantized',
      title: 'INT4 error',
      spec: {
        ...base('Relative RMS weight error by linear kind'),
        data: { values: errs },
        mark: 'bar',
        encoding: {
          x: { field: 'kind', type: 'nominal', title: null, axis: { labelAngle: -30 } },
          xOffset: { field: 'format' },
          y: { field: 'rel_rms', type: 'quantitative', title: '‖W − Ŵ‖ / ‖W‖', axis: { format: '.1%' } },
          color: { field: 'format', type: 'nominal', title: 'output' },
          tooltip: [{ field: 'format' }, { field: 'kind' }, { field: 'rel_rms', format: '.3%' }],
        },
      } as Spec,
    });
  }
  const layers = quant.flatMap((q) => (q.status === 'ok' && q.layers ? q.layers.map((l) => ({ block: l.block, kind: l.kind, rel_rms: l.relRmsError })) : []));
  if (layers.length > 0) {
    specs.push({
      section: 'Quantized',
      title: 'INT4 error per layer',
      spec: {
        ...base('GPTQ output read back: relative RMS error per layer'),
        data: { values: layers },
        mark: 'bar',
        encoding: {
          x: { field: 'block', type: 'nominal', title: null, sort: null, axis: { labelAngle: -30 } },
          xOffset: { field: 'kind' },
          y: { field: 'rel_rms', type: 'quantitative', title: '‖W − Ŵ‖ / ‖W‖', axis: { format: '.1%' } },
          color: { field: 'kind', type: 'nominal', title: 'linear' },
          tooltip: [{ field: 'block' }, { field: 'kind' }, { field: 'rel_rms', format: '.3%' }],
        },
      } as Spec,
    });
  }
  const ppl = r.perplexity.rows.flatMap((p) => (p.status === 'ok' ? [{ stage: p.label, perplexity: p.perplexity }] : []));
  if (ppl.length > 0) {
    specs.push({
      section: 'Perplexity before and after',
      title: 'Perplexity',
      spec: {
        ...base('Eval perplexity by stage', 400, 28 * ppl.length),
        data: { values: ppl },
        mark: 'bar',
        encoding: {
          y: { field: 'stage', type: 'nominal', title: null, sort: null },
          x: { field: 'perplexity', type: 'quantitative', title: 'perplexity' },
          tooltip: [{ field: 'stage' }, { field: 'perplexity', format: '.2f' }],
        },
      } as Spec,
    });
  }
  const out: Chart[] = [];
  for (const s of specs) out.push({ section: s.section, title: s.title, svg: await renderSvg(s.spec) });
  return out;
}
