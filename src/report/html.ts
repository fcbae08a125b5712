// report.html: report.md's content as a page people look at, with the charts (charts.ts) inline
// as SVG under their sections; one self-contained file (no script, no external style, font or
// image), so it opens offline and can be mailed or attached as it is.
import type { Chart } from './charts.js';

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Inline Markdown of report.md: `code`, _emphasis_, **strong**. */
function inline(s: string): string {
  return s.split(/(`[^`]*`)/).map((part) => {
    if (part.startsWith('`') && part.endsWith('`') && part.length >= 2) return `<code>${esc(part.slice(1, -1))}</code>`;
    return esc(part).replace(/\*\*([^*]+)\*\*/g, '<strong>$1</strong>').replace(/(^|[\s(])_([^_]+)_(?=$|[\s.,;:)])/g, '$1<em>$2</em>');
  }).join('');
}

function cells(line: string): string[] {
  const inner = line.trim().replace(/^\|/, '').replace(/\|$/, '');
  return inner.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, '|'));
}

/** The subset of Markdown report.md is written in (headings, lists, tables, paragraphs) as HTML. */
export function markdownToHtml(md: string, after: (heading: string) => string = () => ''): string {
  const lines = md.split('\n');
  const out: string[] = [];
  let i = 0;
  while (i < lines.length) {
    const l = lines[i]!;
    const h = /^(#{1,3}) (.*)$/.exec(l);
    if (h) {
      const level = h[1]!.length;
      const text = h[2]!;
      const id = text.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
      out.push(`<h${level} id="${id}">${inline(text)}</h${level}>`);
      out.push(after(text));
      i++;
    } else if (l.startsWith('|')) {
      const head = cells(l);
      i += 2; // the header and its |---| line
      const body: string[][] = [];
      while (i < lines.length && lines[i]!.startsWith('|')) body.push(cells(lines[i++]!));
      out.push(`<table><thead><tr>${head.map((c) => `<th>${inline(c)}</th>`).join('')}</tr></thead><tbody>${body.map((r) => `<tr>${r.map((c) => `<td>${inline(c)}</td>`).join('')}</tr>`).join('')}</tbody></table>`);
    } else if (l.startsWith('- ')) {
      const items: string[] = [];
      while (i < lines.length && lines[i]!.startsWith('- ')) items.push(lines[i++]!.slice(2));
      out.push(`<ul>${items.map((x) => `<li>${inline(x)}</li>`).join('')}</ul>`);
    } else if (l.trim() === '') {
      i++;
    } else {
      const para: string[] = [];
      while (i < lines.length && lines[i]!.trim() !== '' && !/^(#|\||- )/.test(lines[i]!)) para.push(lines[i++]!);
      out.push(`<p>${inline(para.join(' '))}</p>`);
    }
  }
  return out.filter((x) => x !== '').join('\n');
}

const STYLE = `
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; background: #f6f7f9; margin: 0; }
main { max-width: 980px; margin: 0 auto; padding: 24px 32px 64px; background: white; box-shadow: 0 0 0 1px #e3e5e8; min-height: 100vh; }
h1 { font-size: 26px; margin: 8px 0 4px; } h2 { font-size: 20px; margin: 32px 0 8px; padding-top: 8px; border-top: 1px solid #e3e5e8; } h3 { font-size: 16px; margin: 20px 0 6px; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f0f1f3; padding: 1px 4px; border-radius: 3px; word-break: break-all; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; } th, td { border: 1px solid #e3e5e8; padding: 4px 10px; text-align: left; vertical-align: top; } th { background: #f6f7f9; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 16px; } figure { margin: 0; } figure svg { max-width: 100%; height: auto; }
nav { font-size: 14px; margin: 8px 0 16px; } nav a { margin-right: 12px; color: #4c78a8; text-decoration: none; }
`;

/** The whole page: report.md's Markdown with the charts under their sections. */
export function renderReportHtml(md: string, charts: readonly Chart[], title: string): string {
  const bySection = new Map<string, Chart[]>();
  for (const c of charts) bySection.set(c.section, [...(bySection.get(c.section) ?? []), c]);
  const body = markdownToHtml(md, (heading) => {
    const cs = bySection.get(heading);
    return cs ? `<div class="charts">${cs.map((c) => `<figure aria-label="${esc(c.title)}">${c.svg}</figure>`).join('')}</div>` : '';
  });
  const sections = [...md.matchAll(/^## (.*)$/gm)].map((m) => m[1]!);
  const nav = sections.map((s) => `<a href="#${s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '')}">${esc(s)}</a>`).join('');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<main>
<nav>${nav}</nav>
${body}
</main>
</body>
</html>
`;
}
