/**
 * The RAG refresh job (the fast path): recount the recent window before the as-of time, retrieve each pair's
 * context, rebuild the table with the *current* model (incrementally), publish it, and garbage-collect old
 * versions. No weights change. `schedule run`, `refresh` and replay all call this one function.
 *
 * @example
 * const result = await runRefresh(asOf, { events, tables, clusters, model: { version, scorer }, templateHash });
 */
import type { EventStoreContract } from "../data/event-store.js";
import { FreshrecError } from "../domain/errors.js";
import type { ProgressSink } from "../domain/types.js";
import { TABLE_DEFAULTS } from "../tables/contract.js";
import { tableStoreContract, type UpdateTableStore } from "../tables/embedded-store.js";
import type { CostEstimate } from "../llm/contracts.js";
import { buildTable, planTable, type BuildTableResult, type PromptScorer } from "./generate.js";
import { EvidenceLog } from "../mining/evidence.js";
import { FusionThread } from "./fusion-thread.js";
import { chooseWindow, EvidenceCache, FUSION_TEMPLATE, fitFusion, FusionScorer, fusionSpanDays, priorPrompts, resolveFusionOptions, scopePrior, type FusionFit, type LlmPrior } from "./fusion.js";
import { resolveRagOptions, retrieveContexts, type RagMethod, type RagOptions, type RagSnapshot, type SnapshotCache } from "./rag.js";

export interface RefreshOptions {
  /** The event store the window is counted in: DuckDB (the workspace) or PostgreSQL (`store.url`). */
  readonly events: EventStoreContract;
  /** Any table store adapter, or the workspace's synchronous SQLite store (replay keeps that one). */
  readonly tables: UpdateTableStore;
  readonly clusters: readonly string[];
  /**
   * The model (or baseline) that scores the prompts, with the version recorded in the table. `prior` gives a fusion
   * refresh the model's prior (computed once per version; `promptsScored` is what this call paid for it); null
   * fuses the evidence alone (the counts-backoff baseline).
   */
  readonly model: {
    readonly version: string;
    readonly scorer: PromptScorer;
    readonly prior?: (() => Promise<{ prior: LlmPrior; promptsScored: number }>) | null;
    /** The prior is already computed (a fusion refresh then scores no prompt); for the dry-run price. */
    readonly priorReady?: boolean;
    /** Names the prior across stores (the model file's hash): refreshes sharing an evidence cache share its fits. */
    readonly priorKey?: string;
    /**
     * End of the model's training data (its registered window): clusters first seen at or after it are outside
     * what its prior knows, and keep the mass the fresh counts give them. Absent (a model registered without a
     * window): the prior speaks for every cluster, and the fit's `priorClusters` says so.
     */
    readonly dataEnd?: number;
  };
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
  /** Shared evidence logs for fusion refreshes over an unchanging store (replay); absent reads at every refresh. */
  readonly evidence?: EvidenceCache;
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
  /** Seconds before the build's own `seconds`: retrieving the contexts, or for fusion the prior, counting and fitting. */
  readonly retrieveSeconds: number;
  readonly phases: BuildTableResult["phases"];
  /** The fusion fit (strengths, window, likelihoods); null for an in-prompt refresh. */
  readonly fusion: FusionFit | null;
  /**
   * Where a fusion refresh's seconds went: reading the log and counting windows, fitting (window choice and
   * strengths), computing the model's prior (once per version), building and writing the table up to its finished
   * version (rows committed durably; publishing and collecting old versions follow); and the CPU seconds
   * of the fit and the build (the process's, every thread's: on a shared host, wall seconds say more about the host).
   * Null otherwise.
   */
  readonly fusionPhases: {
    readonly countSeconds: number;
    readonly fitSeconds: number;
    readonly priorSeconds: number;
    readonly buildSeconds: number;
    readonly fitCpuSeconds: number;
    readonly buildCpuSeconds: number;
  } | null;
  /**
   * The scorer's price of the prompts this refresh sent, by the same estimate as the dry run (taken before they
   * were sent); null for scorers not paid per token (the embedded model, baselines) or when no prompt was sent.
   */
  readonly cost: CostEstimate | null;
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
  /** `fusion`: the prompts are the model's prior, scored once per model version (0 when already computed). */
  readonly method: RagMethod;
}

async function retrieve(asOf: number, options: RefreshOptions): Promise<RagSnapshot | null> {
  const rag = options.rag ?? {};
  if (options.rag === null) return null;
  return options.snapshots ? options.snapshots.retrieve(options.events, asOf, rag) : retrieveContexts(options.events, asOf, rag);
}

/** Whether a refresh with these options fuses evidence with the prior (the default) or prompts with contexts. */
export function refreshMethod(options: Pick<RefreshOptions, "rag">): RagMethod {
  return options.rag === null ? "prompt" : resolveRagOptions(options.rag ?? {}).method;
}

export async function planRefresh(asOf: number, options: RefreshOptions): Promise<RefreshPlan> {
  if (refreshMethod(options) === "fusion") return planFusionRefresh(asOf, options);
  const snapshot = await retrieve(asOf, options);
  const plan = await planTable({ store: options.tables, clusters: options.clusters, modelVersion: options.model.version, templateHash: options.templateHash, rag: snapshot, full: options.full });
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
    cost: scorer.estimateCost ? await scorer.estimateCost(plan.rescore.inputs()) : null,
    method: "prompt",
  };
}

export async function runRefresh(asOf: number, options: RefreshOptions): Promise<RefreshResult> {
  if (refreshMethod(options) === "fusion") return runFusionRefresh(asOf, options);
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
  if (publish) await publishBuilt(options, built.table.version, `refresh as of ${new Date(asOf).toISOString()}`);
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
    fusion: null,
    fusionPhases: null,
    cost: built.rescored > 0 ? built.cost : null,
  };
}

/** Makes a refresh's table live and collects old versions beyond `keep`. */
async function publishBuilt(options: RefreshOptions, version: string, reason: string): Promise<void> {
  const tables = tableStoreContract(options.tables);
  await tables.publish(version, { actor: "refresh", reason });
  await tables.gc(options.keep ?? TABLE_DEFAULTS.keep);
}

/** CPU seconds of the process so far (user and system, every thread). */
function cpuSeconds(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

/**
 * The evidence of a fusion refresh at `asOf`: the log (shared in a replay) and the fitted posterior, the window
 * choice shared with the refresh's second thread (`thread`, started before the log is read; null for a small table).
 */
async function fuse(asOf: number, options: RefreshOptions, prior: LlmPrior | null, threadStarting: Promise<FusionThread> | null) {
  const rag = resolveRagOptions(options.rag ?? {});
  const fusionOptions = resolveFusionOptions(rag.fusion);
  const positiveMin = options.rag?.positiveMin ?? null;
  const cache = options.evidence ?? new EvidenceCache();
  const key = `${positiveMin}|${options.clusters.join("\u0001")}`;
  const started = process.hrtime.bigint();
  const log = await cache.log(asOf, (span) => EvidenceLog.load(options.events, span, options.clusters, { positiveMin }), fusionSpanDays(fusionOptions), key);
  const dataEnd = options.model.dataEnd;
  if (prior && dataEnd !== undefined) {
    const first = await cache.firstSeen(options.events, positiveMin, key);
    // Only what happened before the model's data ended (at or before asOf) is read: no later knowledge leaks in.
    prior = scopePrior(prior, Uint8Array.from(options.clusters, (c) => ((first.get(c) ?? Number.POSITIVE_INFINITY) < Math.min(dataEnd, asOf) ? 1 : 0)), dataEnd);
  }
  const loaded = process.hrtime.bigint();
  const loadedCpu = cpuSeconds();
  const counting = log.countingSeconds;
  const countingCpu = log.countingCpuSeconds;
  // Version names repeat across a replay's strategies (each has its own registry): the file's hash names the prior,
  // and a prior without one is never shared.
  const priorKey = prior ? (options.model.priorKey === undefined ? undefined : `${options.model.priorKey}@${dataEnd ?? ""}`) : "";
  // Waiting for the thread, if it is not up yet, is the fit's time.
  const thread = threadStarting ? await threadStarting : null;
  const windowChoice = await (priorKey === undefined ? chooseWindow(log, asOf, fusionOptions, prior, thread) : cache.windowChoice(log, asOf, fusionOptions, key, prior, priorKey, thread));
  const fitted = await fitFusion({ log, asOf, prior, options: fusionOptions, windowChoice, thread });
  const counted = log.countingSeconds - counting;
  const fitCpuSeconds = cpuSeconds() - loadedCpu - (log.countingCpuSeconds - countingCpu);
  const total = Number(process.hrtime.bigint() - started) / 1e9;
  const loadSeconds = Number(loaded - started) / 1e9;
  return { ...fitted, prior, thread, countSeconds: loadSeconds + counted, fitSeconds: total - loadSeconds - counted, fitCpuSeconds };
}

/**
 * A fusion refresh: the model's prior (scored once per model version), the fresh evidence before `asOf`, the
 * strengths fitted on the transitions just before it, one posterior row per pair. Tables are built in full (every
 * row moves with the evidence) through the same build, publish and gc as every other table.
 */
async function runFusionRefresh(asOf: number, options: RefreshOptions): Promise<RefreshResult> {
  if (options.model.prior === undefined) {
    // null is the counts-backoff baseline on purpose; absent is a caller that forgot the model's prior, whose table
    // would be labelled with the model but hold counts alone.
    throw new FreshrecError("INTERNAL", `fusion refresh with model ${options.model.version}: no prior given (pass the model's prior, or null for counts alone)`);
  }
  return withFusionThread(options.clusters.length, (threadStarting) => fusionRefreshWith(asOf, options, threadStarting));
}

/**
 * Runs `work` with the second thread of a table of `clusters` clusters (`FusionThread.forTable`, the process's
 * shared one) starting, so that it is up (started while the prior is loaded and the log read) when the fit needs it.
 */
async function withFusionThread<T>(clusters: number, work: (threadStarting: Promise<FusionThread> | null) => Promise<T>): Promise<T> {
  const threadStarting = FusionThread.forTable(clusters);
  // Handled where it is awaited (fuse); until then a failed start must not count as unhandled.
  threadStarting?.catch(() => undefined);
  return work(threadStarting);
}

async function fusionRefreshWith(asOf: number, options: RefreshOptions, threadStarting: Promise<FusionThread> | null): Promise<RefreshResult> {
  const started = process.hrtime.bigint();
  // A prior not computed yet is priced before it is scored (afterwards a response cache answers it for free).
  const scorer = options.model.scorer;
  const priorCost = options.model.prior && options.model.priorReady !== true && scorer.estimateCost ? await scorer.estimateCost(priorPrompts(options.clusters)) : null;
  const computed = options.model.prior ? await options.model.prior() : null;
  const priorSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  const fitted = await fuse(asOf, options, computed?.prior ?? null, threadStarting);
  if (!computed && fitted.evidence.transitions === 0) {
    // Without a prior and without evidence every row would be the smoothing's uniform order: say so instead.
    throw new FreshrecError("NOT_FOUND", `fusion: no novel transitions in ${fitted.fit.windowDays} days before ${new Date(asOf).toISOString()} and no LLM prior: nothing to rank by`);
  }
  const retrieveSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  const buildStarted = process.hrtime.bigint();
  const buildCpu = cpuSeconds();
  // Pairs listed in the store's own order: each row is written after the last in its key order (but for clusters the
  // dictionary numbers during this build). Asked before the rows are set up on the second thread, which only the
  // build's end releases.
  const inStoreOrder = await tableStoreContract(options.tables).clusterOrder(options.clusters);
  const rows = new FusionScorer(fitted.evidence, fitted.prior, fitted.params, fitted.thread);
  const built = await buildTable({
    store: options.tables,
    clusters: inStoreOrder,
    scorer: rows,
    modelVersion: options.model.version,
    templateHash: FUSION_TEMPLATE,
    full: true,
    topN: options.topN,
    strategy: options.strategy,
    evidenceMeta: { asOf, windowDays: fitted.fit.windowDays, options: { method: "fusion", prior: computed ? options.model.version : null, fit: fitted.fit } },
    progress: options.progress,
    signal: options.signal,
  }).finally(() => rows.release());
  const buildCpuSeconds = cpuSeconds() - buildCpu;
  // Up to the finished table (its rows durable in the store), which the build's own seconds stop short of.
  const buildSeconds = Number(process.hrtime.bigint() - buildStarted) / 1e9;
  const publish = options.publish ?? true;
  if (publish) await publishBuilt(options, built.table.version, `fusion refresh as of ${new Date(asOf).toISOString()}`);
  return {
    tableVersion: built.table.version,
    modelVersion: options.model.version,
    pairs: built.pairs,
    // What was paid in prompts: the prior, once per model version; the rows themselves are computed.
    rescored: computed?.promptsScored ?? 0,
    copied: 0,
    seconds: built.seconds,
    promptsPerSecond: (computed?.promptsScored ?? 0) / Math.max(built.seconds + retrieveSeconds, 1e-9),
    published: publish,
    asOf,
    pairsWithContext: fitted.evidence.pairs.size,
    transitionsInWindow: fitted.evidence.transitions,
    retrieveSeconds,
    phases: built.phases,
    fusion: fitted.fit,
    fusionPhases: {
      countSeconds: fitted.countSeconds,
      fitSeconds: fitted.fitSeconds,
      priorSeconds,
      buildSeconds,
      fitCpuSeconds: fitted.fitCpuSeconds,
      buildCpuSeconds,
    },
    cost: computed && computed.promptsScored > 0 ? priorCost : null,
  };
}

/** A fusion refresh's dry run: counting costs nothing to price; prompts are paid only for a prior not yet computed. */
async function planFusionRefresh(asOf: number, options: RefreshOptions): Promise<RefreshPlan> {
  const fitted = await withFusionThread(options.clusters.length, (threadStarting) => fuse(asOf, options, null, threadStarting));
  const pairs = options.clusters.length * (options.clusters.length - 1);
  const prompts = options.model.prior && !options.model.priorReady ? priorPrompts(options.clusters) : [];
  const scorer = options.model.scorer;
  return {
    asOf,
    modelVersion: options.model.version,
    pairs,
    rescore: prompts.length,
    copy: 0,
    copiedFrom: null,
    pairsWithContext: fitted.evidence.pairs.size,
    transitionsInWindow: fitted.evidence.transitions,
    cost: scorer.estimateCost ? await scorer.estimateCost(prompts) : null,
    method: "fusion",
  };
}
