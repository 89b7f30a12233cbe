/**
 * Experiment analysis in the form of the paper's live-results table (arXiv 2510.20260, Table "Live A/B"): per arm the
 * engagement metrics, and for each treatment arm the relative difference from the control with a 95% confidence
 * interval from a bootstrap over users (a user's slots are not independent of each other, a user is).
 *
 * Metrics, each a ratio of sums (numerator / denominator summed over the arm's exposed users):
 * - `satisfiedUserOutcomes`: satisfied outcomes per exposed user (the paper's top-tier metric);
 * - `satisfactionRate`: satisfied outcomes per exposed slot;
 * - `dissatisfactionRate`: dissatisfied outcomes per exposed slot;
 * - `negativeInteractionRate`: negative interactions ("not interested") per exposed slot;
 * - `engagementRate`: slots that got any engagement (satisfied or dissatisfied) per exposed slot.
 * Outcomes are defined by the engagement signal: positive engagement (>= the positive threshold) is satisfied, below
 * it dissatisfied (see ./log.ts).
 *
 * @example
 * const analysis = await analyzeExperiment(events, "rag-vs-monthly", { resamples: 1000 });
 * console.log(renderExperimentTable(analysis).join("\n"));
 */
import type { EventStoreContract } from "../../data/event-store.js";
import { FreshrecError } from "../../domain/errors.js";
import { EXPERIMENT_DEFAULTS } from "../defaults.js";
import { bootstrapRatioDelta, type PairedUnit } from "../../evaluation/bootstrap.js";
import type { Experiment } from "./definition.js";

export const EXPERIMENT_METRICS = ["satisfiedUserOutcomes", "satisfactionRate", "dissatisfactionRate", "negativeInteractionRate", "engagementRate"] as const;
export type ExperimentMetric = (typeof EXPERIMENT_METRICS)[number];

export const METRIC_LABELS: Readonly<Record<ExperimentMetric, string>> = {
  satisfiedUserOutcomes: "Satisfied user outcomes (per user)",
  satisfactionRate: "Satisfaction rate",
  dissatisfactionRate: "Dissatisfaction rate",
  negativeInteractionRate: "Negative interaction rate",
  engagementRate: "Engagement rate",
};

/** One user's counts in an arm. */
export interface UserOutcomes {
  readonly arm: string;
  readonly slots: number;
  readonly exposures: number;
  readonly satisfied: number;
  readonly dissatisfied: number;
  readonly negative: number;
}

export interface ArmResult {
  readonly users: number;
  readonly exposures: number;
  readonly slots: number;
  readonly satisfied: number;
  readonly dissatisfied: number;
  readonly negative: number;
  readonly metrics: Readonly<Record<ExperimentMetric, number>>;
}

export interface MetricDelta {
  readonly metric: ExperimentMetric;
  readonly arm: string;
  readonly control: string;
  /** (arm - control) / control on the full sample. */
  readonly relative: number;
  readonly ci95: readonly [number, number];
  /** Whether the interval excludes 0. */
  readonly significant: boolean;
}

export interface ExperimentAnalysis {
  readonly experiment: string;
  readonly control: string;
  readonly arms: Record<string, ArmResult>;
  readonly deltas: MetricDelta[];
  readonly users: number;
  readonly resamples: number;
}

export interface AnalysisOptions {
  /** @defaultValue 1000 */
  readonly resamples?: number;
  /** @defaultValue 1 */
  readonly seed?: number;
}

/** Numerator and denominator of a metric for one user. */
export function metricRatio(metric: ExperimentMetric, u: UserOutcomes): readonly [number, number] {
  switch (metric) {
    case "satisfiedUserOutcomes":
      return [u.satisfied, 1];
    case "satisfactionRate":
      return [u.satisfied, u.slots];
    case "dissatisfactionRate":
      return [u.dissatisfied, u.slots];
    case "negativeInteractionRate":
      return [u.negative, u.slots];
    case "engagementRate":
      return [u.satisfied + u.dissatisfied, u.slots];
  }
}

/** The analysis of per-user counts (pure: the SQL reading is in `analyzeExperiment`). */
export function analyzeOutcomes(
  experiment: Pick<Experiment, "name" | "control" | "arms">,
  users: readonly UserOutcomes[],
  options: AnalysisOptions = {},
): ExperimentAnalysis {
  const resamples = options.resamples ?? EXPERIMENT_DEFAULTS.resamples;
  const arms: Record<string, ArmResult> = {};
  for (const arm of experiment.arms) {
    const mine = users.filter((u) => u.arm === arm.name);
    const sum = (f: (u: UserOutcomes) => number) => mine.reduce((s, u) => s + f(u), 0);
    const metrics = {} as Record<ExperimentMetric, number>;
    for (const metric of EXPERIMENT_METRICS) {
      const num = sum((u) => metricRatio(metric, u)[0]);
      const den = sum((u) => metricRatio(metric, u)[1]);
      metrics[metric] = den === 0 ? Number.NaN : num / den;
    }
    arms[arm.name] = {
      users: mine.length,
      exposures: sum((u) => u.exposures),
      slots: sum((u) => u.slots),
      satisfied: sum((u) => u.satisfied),
      dissatisfied: sum((u) => u.dissatisfied),
      negative: sum((u) => u.negative),
      metrics,
    };
  }
  const deltas: MetricDelta[] = [];
  for (const arm of experiment.arms) {
    if (arm.name === experiment.control) continue;
    const relevant = users.filter((u) => u.arm === arm.name || u.arm === experiment.control);
    EXPERIMENT_METRICS.forEach((metric, m) => {
      // A user is in one arm only: the other side of its unit is empty, so a resample also varies the arms' sizes,
      // as random assignment does.
      const units: PairedUnit[] = relevant.map((u) =>
        u.arm === experiment.control ? { a: metricRatio(metric, u), b: [0, 0] } : { a: [0, 0], b: metricRatio(metric, u) },
      );
      const result = bootstrapRatioDelta(units, { resamples, seed: (options.seed ?? 1) + m, relative: true });
      deltas.push({
        metric,
        arm: arm.name,
        control: experiment.control,
        relative: result.delta,
        ci95: [result.ci95[0], result.ci95[1]],
        significant: result.ci95[0] > 0 || result.ci95[1] < 0,
      });
    });
  }
  return { experiment: experiment.name, control: experiment.control, arms, deltas, users: users.length, resamples };
}

/** Reads an experiment's exposures and outcomes per user from the event store and analyses them. */
export async function analyzeExperiment(store: EventStoreContract, experiment: Experiment, options: AnalysisOptions = {}): Promise<ExperimentAnalysis> {
  // Users in code point order on both stores (the bootstrap resamples them in this order), whatever the database's collation.
  const byCodePoint = store.dialect === "postgres" ? ' COLLATE "C"' : "";
  const rows = await store.query<{ arm: string; user_id: string; slots: bigint; exposures: bigint; satisfied: bigint; dissatisfied: bigint; negative: bigint }>(
    `WITH x AS (
       SELECT arm, user_id, count(*) AS slots, count(DISTINCT exposure_id) AS exposures
       FROM experiment_exposures WHERE experiment = $name GROUP BY 1, 2
     ),
     o AS (
       SELECT arm, user_id, count(*) FILTER (WHERE outcome = 'satisfied') AS satisfied,
              count(*) FILTER (WHERE outcome = 'dissatisfied') AS dissatisfied, count(*) FILTER (WHERE outcome = 'negative') AS negative
       FROM experiment_outcomes WHERE experiment = $name GROUP BY 1, 2
     )
     SELECT x.arm, x.user_id, x.slots, x.exposures, coalesce(o.satisfied, 0) AS satisfied, coalesce(o.dissatisfied, 0) AS dissatisfied,
            coalesce(o.negative, 0) AS negative
     FROM x LEFT JOIN o USING (arm, user_id) ORDER BY x.user_id${byCodePoint}`,
    { name: experiment.name },
  );
  const known = new Set(experiment.arms.map((a) => a.name));
  const users = rows.map((r) => {
    if (!known.has(r.arm)) throw new FreshrecError("INTERNAL", `experiment ${experiment.name}: exposures name arm ${r.arm}, which it does not define`);
    return {
      arm: r.arm,
      slots: Number(r.slots),
      exposures: Number(r.exposures),
      satisfied: Number(r.satisfied),
      dissatisfied: Number(r.dissatisfied),
      negative: Number(r.negative),
    };
  });
  return analyzeOutcomes(experiment, users, options);
}

const pct = (x: number, digits = 2) => (Number.isFinite(x) ? `${x >= 0 ? "+" : ""}${(100 * x).toFixed(digits)}%` : "n/a");
const value = (x: number) => (Number.isFinite(x) ? x.toFixed(4) : "n/a");

/** The paper-style live-results table, as Markdown lines. */
export function renderExperimentTable(analysis: ExperimentAnalysis): string[] {
  const arms = Object.keys(analysis.arms);
  const treatments = arms.filter((a) => a !== analysis.control);
  const lines = [
    `| metric | ${arms.join(" | ")} | ${treatments.map((t) => `${t} vs ${analysis.control}: delta | 95% CI`).join(" | ")} |`,
    `|---|${arms.map(() => "---:").join("|")}|${treatments.map(() => "---:|---").join("|")}|`,
  ];
  for (const metric of EXPERIMENT_METRICS) {
    const cells = arms.map((a) => value(analysis.arms[a].metrics[metric]));
    const deltas = treatments.map((t) => {
      const d = analysis.deltas.find((x) => x.metric === metric && x.arm === t)!;
      return `${pct(d.relative)}${d.significant ? " *" : ""} | [${pct(d.ci95[0])}, ${pct(d.ci95[1])}]`;
    });
    lines.push(`| ${METRIC_LABELS[metric]} | ${cells.join(" | ")} | ${deltas.join(" | ")} |`);
  }
  lines.push(
    `| users / slates / slots | ${arms.map((a) => `${analysis.arms[a].users} / ${analysis.arms[a].exposures} / ${analysis.arms[a].slots}`).join(" | ")} | ${treatments.map(() => " | ").join(" | ")} |`,
  );
  lines.push(`(* the 95% interval excludes 0; bootstrap over ${analysis.users} users, ${analysis.resamples} resamples)`);
  return lines;
}
