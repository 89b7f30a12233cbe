/** The drift report: the paper's Jaccard analysis as JSON, Markdown and HTML with an SVG chart of the series. */
import type { DriftResult } from "../mining/drift.js";
import { writeReport, type WrittenReport } from "./report.js";

/** The paper's measurement (arXiv 2510.20260 §2): mean month-over-month Jaccard of top-5 successors. */
export const PAPER_MEAN_JACCARD = 0.17;

export function writeDriftReport(reportsDir: string, drift: DriftResult, source: string): WrittenReport {
  return writeReport(reportsDir, {
    name: "drift",
    title: `Interest drift: month-over-month Jaccard of top-${drift.topK} successors (${source})`,
    json: { ...drift, source, paperMeanJaccard: PAPER_MEAN_JACCARD },
    sections: [
      {
        heading: "Summary",
        paragraphs: [
          `For every history pair (c1, c2) with at least ${drift.minSupport} novel transitions in a month, the top-${drift.topK} successor clusters are compared with the same pair's top-${drift.topK} of the previous month.`,
          Number.isFinite(drift.meanJaccard)
            ? `Mean Jaccard ${drift.meanJaccard.toFixed(3)} (variance ${drift.varianceJaccard.toFixed(3)}) over ${drift.pairsCompared} pair-months; the paper measured ${PAPER_MEAN_JACCARD} on its platform. Lower means the popular transitions change more from month to month, so a frozen table goes stale faster.`
            : "No pair had enough support in two consecutive months; lower drift.minSupport or use more data.",
        ],
        table: {
          columns: ["metric", "value"],
          rows: [
            // "-" rather than NaN when nothing was compared (the summary says why).
            ["mean Jaccard", Number.isFinite(drift.meanJaccard) ? drift.meanJaccard : "-"],
            ["variance", Number.isFinite(drift.varianceJaccard) ? drift.varianceJaccard : "-"],
            ["pair-months compared", drift.pairsCompared],
            ["paper's mean Jaccard", PAPER_MEAN_JACCARD],
          ],
        },
      },
      {
        heading: "Per month",
        chart: {
          title: "Mean Jaccard of top successors vs previous month",
          yLabel: "Jaccard",
          series: [{ name: "this data", points: drift.months.map((m) => ({ x: m.month, y: m.meanJaccard })) }],
          reference: { y: PAPER_MEAN_JACCARD, label: `paper ${PAPER_MEAN_JACCARD}` },
        },
        table: { columns: ["month", "mean Jaccard", "pairs"], rows: drift.months.map((m) => [m.month, m.meanJaccard, m.pairs]) },
      },
    ],
  });
}
