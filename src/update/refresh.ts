/**
 * The RAG refresh job (the fast path): recount the recent window before the as-of time, retrieve each pair's
 * context, rebuild the table with the *current* model (incrementally), publish it, and garbage-collect old
 * versions. No weights change. `schedule run`, `refresh` and replay all call this one function.
 *
 * @example
 * const result = await runRefresh(asOf, { events, tables, clusters, model: { version, scorer }, templateHash });
 */
import type { EventStore } from "../data/event-store.js";
import type { ProgressSink } from "../domain/types.js";
import type { TableStore } from "../tables/index.js";
import type { CostEstimate } from "../llm/contracts.js";
import { buildTable, planTable, type BuildTableResult, type PromptScorer } from "./generate.js";
import { retrieveContexts, type RagOptions, type RagSnapshot, type SnapshotCache } from "./rag.js";

export interface RefreshOptions {
  readonly events: EventStore;
  readonly tables: TableStore;
  readonly clusters: readonly string[];
  /** The model (or baseline) that scores the prompts, with the version recorded in the table. */
  readonly model: { readonly version: string; readonly scorer: PromptScorer };
  readonly templateHash: string;
  /** Retrieval options; null builds a table without RAG context (the fine-tuned model alone). */
  readonly rag?: (RagOptions & { positiveMin?: number | null }) | null;
  /** @defaultValue false */
  readonly full?: boolean;
  /** @defaultValue 10 */
  readonly topN?: number;
  /** Publish the new table when it is built. @defaultValue true */
  readonly publish?: boolean;
  /** Table versions to keep after publishing (gc). @defaultValue 20 */
  readonly keep?: number;
  readonly strategy?: string | null;
  /** Shared snapshots for runs over an unchanging store (replay); absent retrieves every time. */
  readonly snapshots?: SnapshotCache;
  readonly progress?: ProgressSink;
  readonly signal?: AbortSignal;
}

export interface RefreshResult {
  readonly tableVersion: string;
  readonly modelVersion: string;
  readonly pairs: number;
  readonly rescored: number;
  readonly copied: number;
  readonly seconds: number;
  readonly promptsPerSecond: number;
  readonly published: boolean;
  readonly asOf: number;
  readonly pairsWithContext: number;
  readonly transitionsInWindow: number;
  /** Seconds spent retrieving the contexts (recounting the window), before the build's own `seconds`. */
  readonly retrieveSeconds: number;
  readonly phases: BuildTableResult["phases"];
}

/** What a refresh would do and cost, found without building or sending anything (`refresh --dry-run`). */
export interface RefreshPlan {
  readonly asOf: number;
  readonly modelVersion: string;
  readonly pairs: number;
  readonly rescore: number;
  readonly copy: number;
  /** The table unchanged rows would be copied from. */
  readonly copiedFrom: string | null;
  readonly pairsWithContext: number;
  readonly transitionsInWindow: number;
  /** The scorer's price of the prompts to score; null for scorers not paid per token (the embedded model, baselines). */
  readonly cost: CostEstimate | null;
}

async function retrieve(asOf: number, options: RefreshOptions): Promise<RagSnapshot | null> {
  const rag = options.rag ?? {};
  if (options.rag === null) return null;
  return options.snapshots ? options.snapshots.retrieve(options.events, asOf, rag) : retrieveContexts(options.events, asOf, rag);
}

export async function planRefresh(asOf: number, options: RefreshOptions): Promise<RefreshPlan> {
  const snapshot = await retrieve(asOf, options);
  const plan = planTable({ store: options.tables, clusters: options.clusters, modelVersion: options.model.version, templateHash: options.templateHash, rag: snapshot, full: options.full });
  const scorer = options.model.scorer;
  return {
    asOf,
    modelVersion: options.model.version,
    pairs: plan.copy.length + plan.rescore.length,
    rescore: plan.rescore.length,
    copy: plan.copy.length,
    copiedFrom: plan.copy.length ? (plan.previous?.version ?? null) : null,
    pairsWithContext: snapshot ? (snapshot.global ? plan.copy.length + plan.rescore.length : snapshot.contexts.size) : 0,
    transitionsInWindow: snapshot?.transitions ?? 0,
    cost: scorer.estimateCost ? scorer.estimateCost(plan.rescore.map((r) => r.input)) : null,
  };
}

export async function runRefresh(asOf: number, options: RefreshOptions): Promise<RefreshResult> {
  const retrieveStarted = process.hrtime.bigint();
  const snapshot = await retrieve(asOf, options);
  const retrieveSeconds = Number(process.hrtime.bigint() - retrieveStarted) / 1e9;
  const built = await buildTable({
    store: options.tables,
    clusters: options.clusters,
    scorer: options.model.scorer,
    modelVersion: options.model.version,
    templateHash: options.templateHash,
    rag: snapshot,
    full: options.full,
    topN: options.topN,
    strategy: options.strategy,
    progress: options.progress,
    signal: options.signal,
  });
  const publish = options.publish ?? true;
  if (publish) {
    options.tables.publish(built.table.version, { actor: "refresh", reason: `refresh as of ${new Date(asOf).toISOString()}` });
    options.tables.gc(options.keep ?? 20);
  }
  return {
    tableVersion: built.table.version,
    modelVersion: options.model.version,
    pairs: built.pairs,
    rescored: built.rescored,
    copied: built.copied,
    seconds: built.seconds,
    promptsPerSecond: built.promptsPerSecond,
    published: publish,
    asOf,
    pairsWithContext: snapshot ? (snapshot.global ? built.pairs : snapshot.contexts.size) : 0,
    transitionsInWindow: snapshot?.transitions ?? 0,
    retrieveSeconds,
    phases: built.phases,
  };
}
