/**
 * Reports for people: Markdown and a self-contained HTML page (inline CSS and SVG, no scripts, no network), plus
 * the JSON for machines. Every report is written under `<workspace>/reports/`.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface LineSeries {
  readonly name: string;
  readonly points: readonly { readonly x: string; readonly y: number }[];
}

export interface ReportSection {
  readonly heading: string;
  readonly paragraphs?: readonly string[];
  readonly table?: { readonly columns: readonly string[]; readonly rows: readonly (readonly (string | number)[])[] };
  readonly chart?: { readonly title: string; readonly yLabel: string; readonly series: readonly LineSeries[]; readonly reference?: { readonly y: number; readonly label: string } };
  /** Labelled points (e.g. cost vs quality per strategy). */
  readonly scatter?: { readonly title: string; readonly xLabel: string; readonly yLabel: string; readonly points: readonly { readonly label: string; readonly x: number; readonly y: number }[] };
  /** One bar per label. */
  readonly bars?: { readonly title: string; readonly yLabel: string; readonly bars: readonly { readonly label: string; readonly value: number }[] };
}

export interface Report {
  readonly name: string;
  readonly title: string;
  readonly sections: readonly ReportSection[];
  readonly json: unknown;
}

export interface WrittenReport {
  readonly json: string;
  readonly md: string;
  readonly html: string;
}

export function writeReport(reportsDir: string, report: Report): WrittenReport {
  mkdirSync(reportsDir, { recursive: true });
  const paths = {
    json: join(reportsDir, `${report.name}.json`),
    md: join(reportsDir, `${report.name}.md`),
    html: join(reportsDir, `${report.name}.html`),
  };
  writeFileSync(paths.json, JSON.stringify(report.json, null, 2) + "\n");
  writeFileSync(paths.md, renderMarkdown(report));
  writeFileSync(paths.html, renderHtml(report));
  return paths;
}

function formatCell(v: string | number): string {
  return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(4)) : v;
}

export function renderMarkdown(report: Report): string {
  const out = [`# ${report.title}`, ""];
  for (const s of report.sections) {
    out.push(`## ${s.heading}`, "");
    for (const p of s.paragraphs ?? []) out.push(p, "");
    if (s.table) {
      out.push(`| ${s.table.columns.join(" | ")} |`, `|${s.table.columns.map(() => "---").join("|")}|`);
      for (const row of s.table.rows) out.push(`| ${row.map(formatCell).join(" | ")} |`);
      out.push("");
    }
    for (const chart of [s.chart, s.scatter, s.bars]) if (chart) out.push(`_${chart.title}: see the HTML report for the chart._`, "");
  }
  return out.join("\n");
}

const escapeHtml = (text: string): string =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

export function renderHtml(report: Report): string {
  const body: string[] = [`<h1>${escapeHtml(report.title)}</h1>`];
  for (const s of report.sections) {
    body.push(`<section><h2>${escapeHtml(s.heading)}</h2>`);
    for (const p of s.paragraphs ?? []) body.push(`<p>${escapeHtml(p)}</p>`);
    if (s.chart) body.push(lineChartSvg(s.chart));
    if (s.scatter) body.push(scatterSvg(s.scatter));
    if (s.bars) body.push(barChartSvg(s.bars));
    if (s.table) {
      body.push("<table><thead><tr>", ...s.table.columns.map((c) => `<th>${escapeHtml(c)}</th>`), "</tr></thead><tbody>");
      for (const row of s.table.rows) body.push(`<tr>${row.map((v) => `<td>${escapeHtml(formatCell(v))}</td>`).join("")}</tr>`);
      body.push("</tbody></table>");
    }
    body.push("</section>");
  }
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(report.title)}</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:2rem auto;padding:0 1rem;color:#1b1f24}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}svg{max-width:100%;height:auto}
</style></head><body>
${body.join("\n")}
</body></html>
`;
}

const PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#57606a", "#e16f24"];

/** A line chart over categorical x values (months, days), as inline SVG. */
export function lineChartSvg(chart: NonNullable<ReportSection["chart"]>): string {
  const width = 760;
  const height = 320;
  const margin = { left: 56, right: 150, top: 32, bottom: 48 };
  const xs = [...new Set(chart.series.flatMap((s) => s.points.map((p) => p.x)))].sort();
  const ys = chart.series.flatMap((s) => s.points.map((p) => p.y)).filter(Number.isFinite);
  if (chart.reference) ys.push(chart.reference.y);
  const yMax = ys.length ? Math.max(...ys) : 1;
  const yTop = yMax <= 0 ? 1 : niceCeil(yMax * 1.1);
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const xPos = (x: string) => margin.left + (xs.length <= 1 ? plotW / 2 : (xs.indexOf(x) / (xs.length - 1)) * plotW);
  const yPos = (y: number) => margin.top + plotH - (y / yTop) * plotH;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeHtml(chart.title)}">`,
    `<text x="${margin.left}" y="18" font-size="14" font-weight="600">${escapeHtml(chart.title)}</text>`,
  ];
  for (let k = 0; k <= 4; k++) {
    const y = (yTop * k) / 4;
    parts.push(
      `<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${yPos(y)}" y2="${yPos(y)}" stroke="#eaeef2"/>`,
      `<text x="${margin.left - 6}" y="${yPos(y) + 4}" font-size="11" text-anchor="end">${+y.toFixed(3)}</text>`,
    );
  }
  const labelEvery = Math.max(1, Math.ceil(xs.length / 12));
  xs.forEach((x, k) => {
    if (k % labelEvery === 0) parts.push(`<text x="${xPos(x)}" y="${margin.top + plotH + 18}" font-size="11" text-anchor="middle">${escapeHtml(x)}</text>`);
  });
  parts.push(
    `<text x="14" y="${margin.top + plotH / 2}" font-size="12" transform="rotate(-90 14 ${margin.top + plotH / 2})" text-anchor="middle">${escapeHtml(chart.yLabel)}</text>`,
  );
  if (chart.reference) {
    const y = yPos(chart.reference.y);
    parts.push(
      `<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${y}" y2="${y}" stroke="#57606a" stroke-dasharray="6 4"/>`,
      `<text x="${margin.left + plotW + 6}" y="${y + 4}" font-size="11">${escapeHtml(chart.reference.label)}</text>`,
    );
  }
  chart.series.forEach((s, k) => {
    const color = PALETTE[k % PALETTE.length];
    const pts = s.points.filter((p) => Number.isFinite(p.y));
    if (pts.length) {
      parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map((p) => `${xPos(p.x).toFixed(1)},${yPos(p.y).toFixed(1)}`).join(" ")}"/>`);
      for (const p of pts) parts.push(`<circle cx="${xPos(p.x).toFixed(1)}" cy="${yPos(p.y).toFixed(1)}" r="3" fill="${color}"/>`);
    }
    parts.push(`<text x="${margin.left + plotW + 6}" y="${margin.top + 14 + k * 16}" font-size="12" fill="${color}">${escapeHtml(s.name)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n");
}

function niceCeil(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** A scatter of labelled points with linear axes from 0, as inline SVG. */
export function scatterSvg(chart: NonNullable<ReportSection["scatter"]>): string {
  const width = 760;
  const height = 340;
  const margin = { left: 64, right: 40, top: 32, bottom: 52 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const finite = chart.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const xTop = niceCeil(Math.max(1e-9, ...finite.map((p) => p.x)) * 1.1);
  const yTop = niceCeil(Math.max(1e-9, ...finite.map((p) => p.y)) * 1.1);
  const xPos = (x: number) => margin.left + (x / xTop) * plotW;
  const yPos = (y: number) => margin.top + plotH - (y / yTop) * plotH;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeHtml(chart.title)}">`,
    `<text x="${margin.left}" y="18" font-size="14" font-weight="600">${escapeHtml(chart.title)}</text>`,
    `<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${margin.top + plotH}" y2="${margin.top + plotH}" stroke="#57606a"/>`,
    `<line x1="${margin.left}" x2="${margin.left}" y1="${margin.top}" y2="${margin.top + plotH}" stroke="#57606a"/>`,
  ];
  for (let k = 0; k <= 4; k++) {
    const x = (xTop * k) / 4;
    const y = (yTop * k) / 4;
    parts.push(
      `<text x="${xPos(x)}" y="${margin.top + plotH + 16}" font-size="11" text-anchor="middle">${+x.toPrecision(3)}</text>`,
      `<text x="${margin.left - 6}" y="${yPos(y) + 4}" font-size="11" text-anchor="end">${+y.toPrecision(3)}</text>`,
    );
  }
  parts.push(
    `<text x="${margin.left + plotW / 2}" y="${height - 8}" font-size="12" text-anchor="middle">${escapeHtml(chart.xLabel)}</text>`,
    `<text x="14" y="${margin.top + plotH / 2}" font-size="12" transform="rotate(-90 14 ${margin.top + plotH / 2})" text-anchor="middle">${escapeHtml(chart.yLabel)}</text>`,
  );
  finite.forEach((p, k) => {
    const color = PALETTE[k % PALETTE.length];
    parts.push(
      `<circle cx="${xPos(p.x).toFixed(1)}" cy="${yPos(p.y).toFixed(1)}" r="5" fill="${color}"/>`,
      `<text x="${(xPos(p.x) + 8).toFixed(1)}" y="${(yPos(p.y) - 6).toFixed(1)}" font-size="11" fill="${color}">${escapeHtml(p.label)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n");
}

/** Vertical bars, one per label, as inline SVG. */
export function barChartSvg(chart: NonNullable<ReportSection["bars"]>): string {
  const width = 760;
  const height = 300;
  const margin = { left: 64, right: 20, top: 32, bottom: 64 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const values = chart.bars.map((b) => (Number.isFinite(b.value) ? b.value : 0));
  const top = niceCeil(Math.max(1e-9, ...values) * 1.1);
  const slot = plotW / Math.max(1, chart.bars.length);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeHtml(chart.title)}">`,
    `<text x="${margin.left}" y="18" font-size="14" font-weight="600">${escapeHtml(chart.title)}</text>`,
    `<text x="14" y="${margin.top + plotH / 2}" font-size="12" transform="rotate(-90 14 ${margin.top + plotH / 2})" text-anchor="middle">${escapeHtml(chart.yLabel)}</text>`,
  ];
  chart.bars.forEach((b, k) => {
    const v = values[k];
    const h = (v / top) * plotH;
    const x = margin.left + k * slot + slot * 0.15;
    parts.push(
      `<rect x="${x.toFixed(1)}" y="${(margin.top + plotH - h).toFixed(1)}" width="${(slot * 0.7).toFixed(1)}" height="${h.toFixed(1)}" fill="${PALETTE[k % PALETTE.length]}"/>`,
      `<text x="${(x + slot * 0.35).toFixed(1)}" y="${(margin.top + plotH - h - 4).toFixed(1)}" font-size="11" text-anchor="middle">${+v.toPrecision(3)}</text>`,
      `<text x="${(x + slot * 0.35).toFixed(1)}" y="${margin.top + plotH + 16}" font-size="11" text-anchor="middle">${escapeHtml(b.label)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n");
}
