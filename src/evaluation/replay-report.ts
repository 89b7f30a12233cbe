/** The replay report: strategies side by side (quality, cost, staleness), differences with 95% CIs, charts. */
import { ORACLE_PRIOR_STRATEGY } from "./oracle.js";
import type { ReplayResult } from "./replay.js";
import { writeReport, type WrittenReport } from "./report.js";
import { SEGMENT_EVIDENCE_DAYS, SEGMENT_NEW_DAYS } from "./segments.js";

const pct = (v: number) => (Number.isFinite(v) ? `${(100 * v).toFixed(2)}%` : "-");
const share = (v: number | null | undefined) => (v === null || v === undefined ? "-" : `${(100 * v).toFixed(1)}%`);

/** `json` is what the report's JSON file holds (the CLI gives the result's wire form, times as ISO); default the result. */
export function writeReplayReport(reportsDir: string, result: ReplayResult, source: string, json: object = result): WrittenReport {
  const names = Object.keys(result.strategies);
  const s = result.strategies;
  const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);
  const ceiling = result.ceiling ?? null;
  const segmentNames = names.length ? Object.keys(s[names[0]].segments) : [];
  return writeReport(reportsDir, {
    name: "replay",
    title: `Replay ${day(result.window.from)} .. ${day(result.window.to)} (${source})`,
    json: { ...json, source },
    sections: [
      {
        heading: "Strategies",
        paragraphs: [
          `${result.transitions} real novel transitions of ${result.users} users, each scored against the table its strategy had live at that moment. hit@1: the table's first answer is the next novel cluster; hit@5: among its five; horizon hit: the first answer appears among the user's next clusters.`,
          "Costs are what each strategy would pay alone: training tokens and CPU seconds include the training worker's; a fine-tune that two strategies run identically (finetune-monthly and hybrid share them) is trained once and charged to both. The hosted estimate prices the prompts scored at the given price per million prompt tokens.",
          ...(ceiling
            ? [
                `${ceiling}: the synthetic world's true kernel ranks every pair's successors, one table at the start and one at each month boundary (when the kernel changes). It is the ceiling a table learnt from the population can reach, not a product strategy; "of ${ceiling}" is a strategy's hit rate over the ${ceiling}'s on the same transitions. Users also return to older interests and follow their own taste, which the kernel does not hold, so a share can exceed 100% on some segment.`,
              ]
            : []),
          // Under a refresh-days ablation its rows are labelled oracle-prior@2d and so on.
          ...(names.some((n) => n.split("@")[0] === ORACLE_PRIOR_STRATEGY)
            ? [
                "oracle-prior: the hybrid with a perfect model. Its fusion refreshes fuse, in place of a fine-tuned model's prior, the synthetic world's true kernel of the month in which the last fine-tune's data ended (on the fine-tune cadence), the most a model fine-tuned then could know; the hybrid's distance to it is what better fine-tunes could still add. Not a product strategy.",
              ]
            : []),
        ],
        table: {
          columns: [
            "strategy",
            "hit@1",
            "hit@5",
            ...(ceiling ? [`hit@1 of ${ceiling}`, `hit@5 of ${ceiling}`] : []),
            "horizon hit",
            "coverage",
            "popularity rank",
            "staleness (days)",
            "tables",
            "prompts scored",
            "training tokens",
            "CPU s",
            "hosted est. $",
          ],
          rows: names.map((n) => [
            n,
            pct(s[n].hit1),
            pct(s[n].hit5),
            ...(ceiling ? [share(s[n].shareOfOracle?.hit1), share(s[n].shareOfOracle?.hit5)] : []),
            pct(s[n].horizonHit),
            s[n].coverage,
            Number(s[n].popularityRank.toFixed(1)),
            Number(s[n].stalenessDays.toFixed(2)),
            s[n].tablesPublished,
            s[n].cost.promptsScored,
            s[n].cost.trainingTokens,
            Number(s[n].cost.cpuSeconds.toFixed(1)),
            Number(s[n].cost.hostedEstimateUsd.toFixed(4)),
          ]),
        },
      },
      ...(segmentNames.length
        ? [
            {
              heading: "Segments",
              paragraphs: [
                `hit@1 / hit@5 per segment. evidence: the pair's distinct users in the ${SEGMENT_EVIDENCE_DAYS} days before the transition's day (none 0-1, sparse 2-4, dense 5+); cluster:new, user:new: the next cluster, or the user, first seen within ${SEGMENT_NEW_DAYS} days before. A prior that carries knowledge the counts lack shows where the counts are thin.`,
              ],
              table: {
                columns: ["strategy", ...segmentNames.map((g) => `${g} (${s[names[0]].segments[g].transitions})`)],
                rows: names.map((n) => [n, ...segmentNames.map((g) => `${pct(s[n].segments[g].hit1)} / ${pct(s[n].segments[g].hit5)}`)]),
              },
            },
            ...(ceiling
              ? [
                  {
                    heading: `Segments as a share of the ${ceiling}`,
                    paragraphs: [
                      `hit@1 / hit@5 of each strategy over the ${ceiling}'s on the segment's transitions: how much of what the truth allows each strategy reaches where the evidence is thin or dense, for new clusters and new users.`,
                    ],
                    table: {
                      columns: ["strategy", ...segmentNames.map((g) => `${g} (${s[names[0]].segments[g].transitions})`)],
                      rows: names.map((n) => [n, ...segmentNames.map((g) => `${share(s[n].segments[g].shareOfOracle?.hit1)} / ${share(s[n].segments[g].shareOfOracle?.hit5)}`)]),
                    },
                  },
                ]
              : []),
          ]
        : []),
      {
        heading: "What the jobs did",
        paragraphs: [
          "Runs of each strategy's jobs by outcome (nothing to do: the run decided no work was due, as a drift check whose model still earns its weight). A halted fine-tune kept the previous model live; a failed refresh kept the previous table live; a skipped due time fell while another run was in progress. The first reason of each is listed.",
        ],
        table: {
          columns: ["strategy", "job", "succeeded", "nothing to do", "halted", "failed", "skipped", "first halt", "first failure"],
          rows: names.flatMap((n) =>
            Object.entries(s[n].outcomes).map(([job, o]) => [n, job, o.succeeded, o.idle, o.halted, o.failed, o.skipped, o.firstHalt ?? "-", o.firstFailure ?? "-"]),
          ),
        },
      },
      ...(names.some((n) => result.timelines[n]?.some((t) => t.priorWeight !== undefined && t.priorWeight !== null))
        ? [
            {
              heading: "The LLM prior's weight over time",
              paragraphs: [
                "At each fusion refresh, the fitted exponent of the LLM prior in the posterior's base measure (0: the prior earns nothing against the fresh counts). It falls as the model goes stale and rises after a fine-tune: the drift signal.",
              ],
              chart: {
                title: "Fitted prior weight per fusion refresh",
                yLabel: "prior weight",
                series: names
                  .filter((n) => result.timelines[n]?.some((t) => t.priorWeight !== undefined && t.priorWeight !== null))
                  .map((n) => ({ name: n, points: result.timelines[n].filter((t) => t.priorWeight != null).map((t) => ({ x: day(t.publishedAt), y: t.priorWeight! })) })),
              },
            },
          ]
        : []),
      {
        heading: "Hit rate over time",
        chart: {
          title: "Weekly hit@1 per strategy",
          yLabel: "hit@1",
          series: names.map((n) => ({ name: n, points: s[n].weekly.map((w) => ({ x: w.week, y: w.hit1 })) })),
        },
      },
      {
        heading: "Cost versus quality",
        scatter: { title: "Prompts scored vs hit@1", xLabel: "prompts scored over the period", yLabel: "hit@1", points: names.map((n) => ({ label: n, x: s[n].cost.promptsScored, y: s[n].hit1 })) },
      },
      {
        heading: "Churn",
        paragraphs: [
          "Agreement with the no-RAG table: the share of history pairs whose top-1 answer equals the top-1 of the reference strategy's first table (the fine-tuned model without retrieved context); the paper reports how much RAG moves the answers this way. Consecutive agreement: the share of pairs whose top-1 survives from one published table to the next.",
        ],
        table: {
          columns: ["strategy", "agreement with no-RAG table", "consecutive agreement"],
          rows: names.map((n) => [n, optPct(s[n].agreementWithNoRag), optPct(s[n].consecutiveAgreement)]),
        },
        // The chart only when some strategy has a no-RAG reference to agree with.
        ...(names.some((n) => s[n].agreementWithNoRag !== null)
          ? { bars: { title: "Share of pairs whose top-1 equals the no-RAG table's", yLabel: "share", bars: names.filter((n) => s[n].agreementWithNoRag !== null).map((n) => ({ label: n, value: s[n].agreementWithNoRag! })) } }
          : {}),
      },
      {
        heading: "Staleness",
        bars: { title: "Mean age of the newest data behind the live table (days)", yLabel: "days", bars: names.map((n) => ({ label: n, value: s[n].stalenessDays })) },
      },
      {
        heading: "Differences (b - a, 95% bootstrap CI over users)",
        table: {
          columns: ["a", "b", "metric", "delta", "95% CI"],
          rows: result.comparisons.map((c) => [c.a, c.b, c.metric, pct(c.delta), `[${pct(c.ci95[0])}, ${pct(c.ci95[1])}]`]),
        },
      },
    ],
  });
}

function optPct(x: number | null): string {
  return x === null ? "-" : `${(100 * x).toFixed(1)}%`;
}
