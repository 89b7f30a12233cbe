/**
 * The update jobs as the scheduler runs them: thin adapters from a due time (the as-of time) to the job functions
 * (`runRefresh`, later fine-tuning), reporting status, cost and what was published. `schedule run`,
 * `schedule run --simulate` and replay evaluation all schedule these same functions.
 */
import type { EventStoreContract } from "../data/event-store.js";
import { FreshrecError } from "../domain/errors.js";
import type { UpdateTableStore } from "../tables/embedded-store.js";
import { PopularNovelScorer, rankNextClusters, SuccessorScorer } from "./baselines.js";
import { SnapshotCache, type RagOptions } from "./rag.js";
import { runRefresh, type RefreshOptions } from "./refresh.js";
import type { JobRun } from "./schedule/index.js";

/** A refresh job over a model chosen at run time (the current live model of the loop). */
export function refreshJob(
  base: Omit<RefreshOptions, "model" | "signal">,
  currentModel: () => Promise<RefreshOptions["model"] & { dataAsOf: number }>,
): JobRun {
  return async ({ asOf, signal }) => {
    const model = await currentModel();
    const result = await runRefresh(asOf, { ...base, model, signal });
    const fit = result.fusion;
    return {
      status: "succeeded",
      cost: {
        promptsScored: model.scorer.computed ? 0 : result.rescored,
        ...(result.cost ? { promptTokens: result.cost.promptTokens, completionTokens: result.cost.completionTokens, usd: result.cost.usd } : {}),
      },
      detail: {
        publishedTable: result.published ? result.tableVersion : undefined,
        tableVersion: result.tableVersion,
        modelVersion: result.modelVersion,
        rescored: result.rescored,
        copied: result.copied,
        pairsWithContext: result.pairsWithContext,
        // A RAG table carries data up to its as-of time; a table without RAG only what its model was trained on.
        dataAsOf: base.rag === null ? model.dataAsOf : asOf,
        ...(fit
          ? {
              method: "fusion",
              evidenceWindowDays: fit.windowDays,
              evidenceTransitions: result.transitionsInWindow,
              fit: fit.status,
              // null while the prior is not weighed yet (the fit's reason says why): it serves with weight 0, unmeasured.
              priorWeight: model.prior && fit.priorWeighed !== false ? fit.params.tau : null,
              // How much of the prior enters as its lift over its own view of the second cluster (fusion.ts); null with priorWeight.
              priorLift: model.prior && fit.priorWeighed !== false ? (fit.params.lift ?? 0) : null,
              priorClusters: fit.priorClusters,
              alpha: fit.params.alpha,
              // Nats per transition the LLM prior adds to the fit slice's likelihood over the counts alone.
              priorGain: fit.countsOnlyPerTransition === null ? null : fit.perTransition - fit.countsOnlyPerTransition,
            }
          : {}),
      },
    };
  };
}

export type BaselineName = "successor-top1" | "popular-novel" | "counts-backoff";

/**
 * A refresh job for a non-LLM baseline: its "model" is recomputed from the same recent window RAG reads, then the
 * same table build and publish run.
 */
export function baselineRefreshJob(
  kind: BaselineName,
  base: Omit<RefreshOptions, "model" | "signal"> & { events: EventStoreContract; tables: UpdateTableStore; rag: RagOptions & { positiveMin?: number | null } },
): JobRun {
  if (kind === "counts-backoff") {
    // The fusion posterior with no LLM prior: the strongest counting baseline, fitted the way the hybrid is.
    const scorer = {
      computed: true,
      score: async () => {
        throw new FreshrecError("INTERNAL", "counts-backoff tables are computed from counts, never prompted");
      },
    };
    return (context) =>
      refreshJob({ ...base, rag: { ...base.rag, method: "fusion" } }, async () => ({
        version: `${kind}@${new Date(context.asOf).toISOString().slice(0, 10)}`,
        scorer,
        prior: null,
        dataAsOf: context.asOf,
      }))(context);
  }
  return async (context) => {
    // One retrieval gives both the popularity and the prompts' contexts: the refresh below reads the same snapshot
    // (a cache shared by every run in a replay, else one for this run).
    const snapshots = base.snapshots ?? new SnapshotCache();
    // These baselines serve the in-prompt retrieval's own contexts: the prompt method's snapshot, never a fusion.
    const rag = { ...base.rag, method: "prompt" as const };
    const snapshot = await snapshots.retrieve(base.events, context.asOf, rag);
    if (snapshot.transitions === 0) {
      // Nothing to rank by: a table in cluster-id order would pass for a popularity ranking. The run fails (counted
      // and shown by the scheduler and the replay) and the last table stays live.
      throw new FreshrecError("NOT_FOUND", `${kind}: no novel transitions in the window ${new Date(snapshot.window.from).toISOString()}..${new Date(snapshot.window.to).toISOString()}, nothing to rank by`);
    }
    const popularity = rankNextClusters(snapshot.nextUsers, base.clusters);
    const scorer = kind === "successor-top1" ? new SuccessorScorer(popularity) : new PopularNovelScorer(popularity);
    // The version names the data: a baseline's answers change with every window, so its tables are never copied.
    const version = `${kind}@${new Date(context.asOf).toISOString().slice(0, 10)}`;
    return refreshJob({ ...base, rag, snapshots }, async () => ({ version, scorer, dataAsOf: context.asOf }))(context);
  };
}
