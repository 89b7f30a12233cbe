/**
 * The replay's `oracle` on the synthetic platform: tables that rank, for every history pair, the novel clusters by
 * the world's true successor kernel P_m(next | c1, c2) of the calendar month m of the moment. No table built from
 * logs can know more about the population's dynamics, so its hit rates are the ceiling the other strategies are
 * shown as a share of.
 *
 * The kernel is constant within a UTC calendar month and changes at 00:00 UTC on the 1st (src/data/synthetic/
 * kernel.ts), so a table published at the replay's start and one at each month boundary is the kernel's answer at
 * every moment. It is a ceiling of the kernel, not of the log: users also return to older interests and follow
 * their own taste, neither of which is in the kernel, so a strategy can exceed it on some segment by catching those.
 * Costs: it scores no prompt and trains nothing; it reads the truth, which no product can.
 *
 * @example
 * const run = oracleRefreshJob(world, { tables, clusters, topN: 10 });
 * const jobs = [{ name: "start-table", cadence: "every 36500 days from 2025-11-01", run }, { name: "month", cadence: "0 0 1 * *", run }];
 */
import { BadInputError, FreshrecError } from "../domain/errors.js";
import type { ScoredCluster } from "../domain/types.js";
import type { SyntheticWorld } from "../data/synthetic/index.js";
import type { PromptInput } from "../llm/prompt.js";
import type { TableStore } from "../tables/index.js";
import { TABLE_DEFAULTS, type TableBuildRow } from "../tables/contract.js";
import { computePrior, resolveFusionOptions, type LlmPrior } from "../update/fusion.js";
import type { PromptScorer } from "../update/generate.js";
import { refreshJob } from "../update/jobs.js";
import type { RefreshOptions } from "../update/refresh.js";
import { parseCadence, type JobRun } from "../update/schedule/index.js";
import { fineTuningDataEnd, type CurationOptions } from "../update/curation.js";
import { remembered } from "../domain/memo.js";

/** The oracle prior's strategy name (src/evaluation/strategies.ts), also in its messages. */
export const ORACLE_PRIOR_STRATEGY = "oracle-prior";

export interface OracleOptions {
  readonly tables: TableStore;
  /** The store's clusters: every ordered pair of them gets a row. */
  readonly clusters: readonly string[];
  /** Answers per row. */
  readonly topN: number;
  /** Strategy label recorded with the table. @defaultValue "oracle" */
  readonly strategy?: string;
  /** Table versions kept after publishing. @defaultValue 20 */
  readonly keep?: number;
}

/** The kernel's month a table of this job serves, as its model version names it (the month's first day). */
function monthLabel(world: SyntheticWorld, month: number): string {
  return new Date(world.monthStarts[month]).toISOString().slice(0, 7);
}

/**
 * A refresh job publishing the true kernel's table of the month of its as-of time. A run whose live table is
 * already that month's publishes nothing (reported as nothing to do), so the replay start falling on a month
 * boundary gives one table, not two.
 */
export function oracleRefreshJob(world: SyntheticWorld, options: OracleOptions): JobRun {
  const index = worldIndex(world, options.clusters, "oracle");
  const modelOf = (month: number) => `world kernel ${monthLabel(world, month)}`;
  return async ({ asOf }) => {
    const month = world.monthIndexAt(asOf);
    const model = modelOf(month);
    if (options.tables.live()?.modelVersion === model) {
      return { status: "succeeded", cost: { promptsScored: 0 }, detail: { skipped: `the live table is already the kernel of ${monthLabel(world, month)}` } };
    }
    const started = process.hrtime.bigint();
    const builder = options.tables.beginBuild({ modelVersion: model, templateHash: "oracle", strategy: options.strategy ?? "oracle" });
    try {
      const answers = kernelAnswers(world, month, options.clusters, index);
      const rows: TableBuildRow[] = [];
      for (let a = 0; a < options.clusters.length; a++) {
        for (let b = 0; b < options.clusters.length; b++) {
          if (a !== b) rows.push({ c1: options.clusters[a], c2: options.clusters[b], answers: answers(a, b, options.topN), contextKey: null });
        }
      }
      builder.append(rows);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const table = builder.finish({ pairs: rows.length, rescored: 0, copied: 0, seconds });
      options.tables.publish(table.version, { actor: "oracle", reason: `the true kernel of ${monthLabel(world, month)}` });
      options.tables.gc(options.keep ?? TABLE_DEFAULTS.keep);
      return {
        status: "succeeded",
        cost: { promptsScored: 0 },
        // The table holds the truth of its month as of now: its data is as fresh as the moment.
        detail: { publishedTable: table.version, tableVersion: table.version, modelVersion: model, kernelMonth: monthLabel(world, month), dataAsOf: asOf },
      };
    } catch (error) {
      builder.fail(error instanceof Error ? error.message : String(error));
      throw error;
    }
  };
}

/** Each of `clusters`' index in the world, or the refusal naming those the world does not have. */
function worldIndex(world: SyntheticWorld, clusters: readonly string[], strategy: string): number[] {
  const index = clusters.map((id) => world.clusterIndex(id));
  const unknown = clusters.filter((_, k) => index[k] < 0);
  if (unknown.length > 0) {
    throw new BadInputError(`${strategy}: clusters ${unknown.slice(0, 3).join(", ")} are not the synthetic world's: its kernel says nothing about them`);
  }
  return index;
}

/**
 * The kernel's successors of the pair (clusters[a], clusters[b]) in `month`, most probable first (ties by the
 * store's order), at most `n`, each with its probability.
 */
function kernelAnswers(world: SyntheticWorld, month: number, clusters: readonly string[], index: readonly number[]): (a: number, b: number, n: number) => ScoredCluster[] {
  const weights = new Float64Array(world.kernel.size);
  const order: number[] = [];
  return (a, b, n) => {
    const sum = world.kernel.weightsInto(month, index[a], index[b], weights);
    order.length = 0;
    // Only the store's clusters can be answered; weight 0 marks c1, c2 and clusters absent this month.
    for (let k = 0; k < index.length; k++) if (weights[index[k]] > 0) order.push(k);
    order.sort((x, y) => weights[index[y]] - weights[index[x]] || x - y);
    return order.slice(0, n).map((k) => ({ cluster: clusters[k], score: weights[index[k]] / sum }));
  };
}

/** The kernel of one month as a model's prior: each pair's answers are the kernel's (`computePrior` keeps its top-M). */
class KernelScorer implements PromptScorer {
  readonly computed = true;
  readonly promptsPerCall = 100_000;
  private readonly position: Map<string, number>;
  private readonly answers: (a: number, b: number, n: number) => ScoredCluster[];

  constructor(world: SyntheticWorld, month: number, clusters: readonly string[], index: readonly number[]) {
    this.position = new Map(clusters.map((c, k) => [c, k]));
    this.answers = kernelAnswers(world, month, clusters, index);
  }

  async score(prompts: readonly PromptInput[], topN: number): Promise<ScoredCluster[][]> {
    return prompts.map((p) => this.answers(this.position.get(p.history.c1)!, this.position.get(p.history.c2)!, topN));
  }
}

/** What `oraclePriorRefreshJob` needs beyond a fusion refresh's options. */
export interface OraclePriorOptions extends Omit<RefreshOptions, "model" | "signal"> {
  /** When the perfect model is fine-tuned (the hybrid's cadence: `schedule.finetuneCadence`). */
  readonly finetuneCadence: string;
  /** The hybrid's fine-tuning curation (its test slice says where a fine-tune's data ends). */
  readonly curation: CurationOptions;
  /** When the replay starts: the start model's data ends there. */
  readonly start: number;
}

/**
 * The fusion refresh of a perfect model: its prior is the true kernel as a model fine-tuned on the hybrid's cadence
 * could at best know it, the kernel of the month its data ended in. Its data ends where the hybrid's would at the
 * last fine-tune instant at or before the refresh (the start of that fine-tune's test slice, `fineTuningDataEnd`;
 * the replay's start before the first), and the fresh evidence is fused with it through the hybrid's refresh, the
 * prior weighed from that data end on. So the hybrid's distance to it is what better fine-tunes could still add, and
 * its distance to `fusion-static` all that fine-tuning on that cadence can add. Unlike the hybrid, it changes its
 * model at every fine-tune instant: a fine-tune the gates halt, or one that `finetune.trigger: drift` skips, is not
 * mirrored. Not a product strategy: it reads the truth, which no model has.
 *
 * @example
 * const run = oraclePriorRefreshJob(world, { events, tables, clusters, templateHash: "oracle-prior", rag, curation, finetuneCadence: "0 0 1 * *", start });
 */
export function oraclePriorRefreshJob(world: SyntheticWorld, options: OraclePriorOptions): JobRun {
  const index = worldIndex(world, options.clusters, ORACLE_PRIOR_STRATEGY);
  const cadence = parseCadence(options.finetuneCadence);
  // As many answers a pair as a model's prior keeps (rag.fusion.priorTopM).
  const topM = resolveFusionOptions(options.rag?.fusion).priorTopM;
  // Only the live model's prior is kept, as the update loop keeps only the live model's.
  let live: { readonly month: number; readonly prior: Promise<LlmPrior> } | null = null;
  const priorOf = (month: number) => {
    if (live?.month !== month) live = { month, prior: computePrior(new KernelScorer(world, month, options.clusters, index), options.clusters, { topM }) };
    return live.prior;
  };
  const dataEnds = new Map<string, Promise<number>>();
  const dataEndAt = (tuned: number) =>
    tuned === options.start ? Promise.resolve(tuned) : remembered(dataEnds, String(tuned), () => fineTuningDataEnd(options.events, tuned, options.curation));
  return async (context) => {
    if (context.asOf < options.start) throw new FreshrecError("INTERNAL", `${ORACLE_PRIOR_STRATEGY}: a refresh at ${new Date(context.asOf).toISOString()} before the replay's start`);
    let tuned = options.start;
    for (let next = cadence.next(tuned); next !== null && next <= context.asOf; next = cadence.next(next)) tuned = next;
    const dataEnd = await dataEndAt(tuned);
    // The month of the last instant before the data's end: what a model whose data ends there has seen last.
    const month = world.monthIndexAt(dataEnd - 1);
    return refreshJob({ ...options, rag: { ...options.rag, method: "fusion" } }, async () => ({
      version: `world kernel ${monthLabel(world, month)}`,
      scorer: new KernelScorer(world, month, options.clusters, index),
      prior: async () => ({ prior: await priorOf(month), promptsScored: 0 }),
      priorKey: `world kernel ${monthLabel(world, month)}`,
      dataEnd,
      dataAsOf: dataEnd,
    }))(context);
  };
}
