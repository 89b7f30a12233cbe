/**
 * A simulated live A/B test on the synthetic platform: the platform's users are hashed into two arms and, at each
 * session, shown an exploration slate by the serving path (`Explorer`: table lookup, co-visitation grounding,
 * cold-start fallback) from their arm's table; they respond with the platform's behaviour model (click, satisfied,
 * dissatisfied, negative), and their responses change their histories and what they do next.
 *
 * Arms (the paper's live test, arXiv 2510.20260 §1.7):
 * - `control` = finetune-monthly: the table the live (monthly fine-tuned) model builds without retrieval, fixed for
 *   the whole test (the next monthly fine-tune is not due inside a test that stays in its month; a longer test is
 *   logged as such, and both arms keep the model, so the delta stays the refreshes' contribution);
 * - `treatment` = hybrid: the same model's prior fused with fresh counts (`rag.method: fusion`, the default) or with
 *   RAG contexts in its prompts (`prompt`, the paper's), rebuilt every `refreshDays` from the recent window, which by
 *   then includes the simulated traffic of both arms, exactly as a refresh in production reads global traffic.
 *
 * The paper's four live metrics come from the platform's behaviour model (src/data/synthetic/world.ts), slot by slot:
 * a user clicks with probability 0.05 + 0.55 s (s = how well the cluster matches the kernel and the user's taste for
 * the history); a click is *satisfied* with probability 0.25 + 0.65 s and *dissatisfied* otherwise; an unclicked
 * slot is a *negative interaction* with probability 0.15 (1 - s) (these are a novel cluster's; a cluster already in
 * the history has s = 0.5 and is liked 82% of the time). So a better table raises satisfied outcomes and lowers
 * negative interactions per slot, (0.95 - 0.55 s) 0.15 (1 - s), but a slot's chance of a dissatisfied outcome,
 * (0.05 + 0.55 s)(0.75 - 0.65 s), rises with s up to s ~ 0.53 and falls after: more clicks also means more clicks
 * that disappoint, so the dissatisfaction rate can move either way (the paper's fell).
 * The platform's own outcome counts are returned beside the log's (`simulated.outcomes`), so a slot lost or
 * misattributed between the two shows.
 *
 * Both tables are built by the production refresh job (`runRefresh`) with the same model, so the delta is the
 * contribution of fresh retrieval. Nothing of the workspace or the deployment changes: the event store (the
 * workspace's file, or a deployment's database read through the store contract) is copied into `workDir`, the
 * simulated events are appended to the copy (that is what the refreshes read), and the tables live in a table store
 * of their own there. Exposures and outcomes are logged into the copy with the same log and analysed with the same
 * SQL as a live experiment. A deployment's events, tables and experiments are never written: simulated traffic in
 * its event log would reach every refresh and replica, and the simulated experiment would replace its active one.
 *
 * @example
 * const result = await runSimulatedExperiment({ events, workDir, model: { version, scorer }, templateHash, rag: {} });
 * console.log(result.table.join("\n"));
 */
import { computePrior, type LlmPrior } from "../../update/fusion.js";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { copyEvents } from "../../data/copy-events.js";
import { EventStore, eventBatchFromEvents, type EventStoreContract } from "../../data/event-store.js";
import { SyntheticWorld, type ExplorationPolicy, type Exposure, type SyntheticOptions } from "../../data/synthetic/index.js";
import { DAY_MS, VirtualClock } from "../../domain/clock.js";
import { BadInputError } from "../../domain/errors.js";
import { TABLE_DEFAULTS } from "../../tables/contract.js";
import { EXPERIMENT_DEFAULTS, SERVE_DEFAULTS } from "../defaults.js";
import type { EngagementEvent } from "../../domain/types.js";
import { SqliteTableStore, TableLookup } from "../../tables/index.js";
import type { PromptScorer } from "../../update/generate.js";
import type { RagOptions } from "../../update/rag.js";
import { runRefresh } from "../../update/refresh.js";
import { Catalog } from "../catalog.js";
import { Explorer } from "../exploration.js";
import { buildGroundingIndex, CoVisitationPolicy, type GroundingIndex } from "../grounding/index.js";
import { UserIndex } from "../users.js";
import { analyzeExperiment, renderExperimentTable, type ExperimentAnalysis } from "./analysis.js";
import { assignArm, parseExperimentDefinition } from "./definition.js";
import { ExperimentLog } from "./log.js";

export interface SimulatedExperimentOptions {
  /**
   * The event store made by `freshrec synth`/`demo` whose users the test runs on, read only and copied through the
   * contract: a deployment's database (`store.url`), the workspace's file, or the file read through the process that
   * holds it (a running `freshrec serve`), so the copy never reads a file another process is writing.
   */
  readonly events: EventStoreContract;
  /** Scratch folder, wiped first: the copied event store with the simulated traffic and the arms' tables. */
  readonly workDir: string;
  /** The model both arms' tables are built with (the live fine-tuned model, or a baseline scorer). */
  readonly model: { readonly version: string; readonly scorer: PromptScorer };
  /** Prompt template hash recorded on the tables (PROMPT_TEMPLATE_HASH for an LLM). */
  readonly templateHash: string;
  /** Retrieval options of the treatment's refreshes. */
  readonly rag: RagOptions;
  /** Positive engagement threshold. @defaultValue the platform's threshold */
  readonly positiveMin?: number | null;
  /** @defaultValue 10 */
  readonly topN?: number;
  /** Simulated days. @defaultValue 14 */
  readonly days?: number;
  /** Days between the treatment's RAG refreshes. @defaultValue 2 */
  readonly refreshDays?: number;
  /** The first N users of the platform take part. @defaultValue all */
  readonly users?: number | null;
  /** Clusters per slate. @defaultValue 3 */
  readonly slateSize?: number;
  /** @defaultValue 3 */
  readonly itemsPerCluster?: number;
  /** @defaultValue "simulated-hybrid-vs-finetune-monthly" */
  readonly name?: string;
  /** Assignment salt: a new salt is a new random split of the same users, the way to repeat the A/B. @defaultValue the name */
  readonly salt?: string;
  /** @defaultValue 1000 */
  readonly resamples?: number;
  /** Grounding window (days). @defaultValue 30 */
  readonly groundingWindowDays?: number;
  readonly log?: (line: string) => void;
  readonly signal?: AbortSignal;
}

export interface SimulatedRefresh {
  readonly day: number;
  readonly arm: string;
  readonly tableVersion: string;
  readonly rescored: number;
  readonly copied: number;
  readonly pairsWithContext: number;
  readonly seconds: number;
}

export interface SimulatedExperimentResult extends ExperimentAnalysis {
  readonly simulated: {
    readonly from: string;
    readonly to: string;
    readonly days: number;
    readonly refreshDays: number;
    readonly users: number;
    readonly slates: number;
    readonly clicks: number;
    readonly events: number;
    readonly model: string;
    readonly salt: string;
    /** Slots shown and the platform's responses to them, counted by the world (not read back from the log). */
    readonly outcomes: { readonly slots: number; readonly satisfied: number; readonly dissatisfied: number; readonly negative: number; readonly ignored: number };
  };
  readonly tables: { readonly control: string; readonly treatment: readonly string[] };
  readonly refreshes: readonly SimulatedRefresh[];
  /** The paper-style table as Markdown lines. */
  readonly table: readonly string[];
  readonly workDir: string;
}

/** The synthetic platform a workspace was generated from, as recorded at ingestion; BAD_INPUT for other data. */
export async function recordedSyntheticOptions(store: EventStoreContract): Promise<SyntheticOptions> {
  const raw = await store.getMeta("synthetic_options");
  if (raw === null) {
    throw new BadInputError("a simulated A/B needs the synthetic platform's users: this event store was not made by `freshrec synth` or `freshrec demo`");
  }
  return JSON.parse(raw) as SyntheticOptions;
}

export async function runSimulatedExperiment(options: SimulatedExperimentOptions): Promise<SimulatedExperimentResult> {
  const log = options.log ?? (() => {});
  const days = options.days ?? EXPERIMENT_DEFAULTS.days;
  const refreshDays = options.refreshDays ?? EXPERIMENT_DEFAULTS.refreshDays;
  if (!(days > 0) || !(refreshDays > 0)) throw new BadInputError("days and refreshDays must be positive");
  // Other data than the synthetic platform's is refused before anything is copied.
  await recordedSyntheticOptions(options.events);
  rmSync(options.workDir, { recursive: true, force: true });
  mkdirSync(options.workDir, { recursive: true });
  const eventsCopy = join(options.workDir, "events.duckdb");

  const store = await EventStore.open(eventsCopy);
  let tables: SqliteTableStore | null = null;
  try {
    log(`copying the events of ${options.events.location} into ${eventsCopy}`);
    await copyEvents(options.events, store);
    const world = new SyntheticWorld(await recordedSyntheticOptions(store));
    const start = world.endMs;
    const clock = new VirtualClock(start);
    const at = new Date(start);
    const nextMonth = Date.UTC(at.getUTCFullYear(), at.getUTCMonth() + 1, 1);
    if (start + days * DAY_MS > nextMonth) {
      log(`the test runs past ${new Date(nextMonth).toISOString().slice(0, 10)}, when a monthly fine-tune would be due: both arms keep model ${options.model.version}`);
    }
    tables = SqliteTableStore.open(join(options.workDir, "tables.sqlite"), clock);
    const clusters = (await store.clusters()).map((c) => c.id);
    const positiveMin = options.positiveMin !== undefined ? options.positiveMin : world.options.positiveThreshold;
    const topN = options.topN ?? TABLE_DEFAULTS.topN;
    // The treatment is the hybrid: with the fusion method (the default) its tables fuse this model's prior, scored
    // once here, with the fresh counts; the control's table is the same model without retrieval.
    let prior: Promise<LlmPrior> | null = null;
    const model = {
      ...options.model,
      prior: async () => {
        const fresh = prior === null;
        prior ??= computePrior(options.model.scorer, clusters);
        return { prior: await prior, promptsScored: fresh ? clusters.length * (clusters.length - 1) : 0 };
      },
      // Once scored, the prior is not priced again (a hosted backend's refresh would estimate every pair for nothing).
      get priorReady() {
        return prior !== null;
      },
    };
    const base = { events: store, tables, clusters, model, templateHash: options.templateHash, topN, publish: false, signal: options.signal };
    const rag = { ...options.rag, positiveMin };
    const refreshes: SimulatedRefresh[] = [];
    const record = (day: number, arm: string, r: Awaited<ReturnType<typeof runRefresh>>) => {
      refreshes.push({ day, arm, tableVersion: r.tableVersion, rescored: r.rescored, copied: r.copied, pairsWithContext: r.pairsWithContext, seconds: r.seconds });
      log(`day ${day}: ${arm} table ${r.tableVersion} (model ${r.modelVersion}): ${r.rescored} pairs scored, ${r.copied} copied, ${r.pairsWithContext} with RAG context, ${r.seconds.toFixed(1)} s`);
    };
    log(`building the control table (finetune-monthly: model ${options.model.version}, no retrieval) as of ${new Date(start).toISOString()}`);
    const control = await runRefresh(start, { ...base, rag: null, strategy: "finetune-monthly" });
    record(0, "control", control);
    log(`building the treatment table (hybrid: the same model with ${rag.method === "prompt" ? "its RAG contexts in the prompts" : "its prior fused with the fresh counts"})`);
    let treatment = await runRefresh(start, { ...base, rag, strategy: "hybrid" });
    record(0, "treatment", treatment);
    const treatmentVersions = [treatment.tableVersion];

    const catalog = await Catalog.load(store);
    const users = await UserIndex.load(store, catalog, { positiveMin });
    const groundingOptions = { windowDays: options.groundingWindowDays ?? SERVE_DEFAULTS.groundingWindowDays, positiveMin };
    let grounding: GroundingIndex = await buildGroundingIndex(store, catalog, groundingOptions);
    const explorer = new Explorer(catalog, users, () => grounding, new CoVisitationPolicy(() => grounding));
    const experiments = await ExperimentLog.open(store);
    const definition = parseExperimentDefinition({
      name: options.name ?? "simulated-hybrid-vs-finetune-monthly",
      salt: options.salt,
      arms: [
        { name: "control", table: control.tableVersion },
        { name: "treatment", table: treatment.tableVersion },
      ],
    });
    await experiments.create(definition, start, { replace: true });
    const lookups: Record<string, TableLookup> = {
      control: TableLookup.load(tables, control.tableVersion),
      treatment: TableLookup.load(tables, treatment.tableVersion),
    };

    const count = Math.min(options.users ?? world.userCount, world.userCount);
    const participants = Array.from({ length: count }, (_, i) => i);
    log(`advancing ${count} simulated users to ${new Date(start).toISOString().slice(0, 10)}`);
    const environment = world.createLiveEnvironment(start, participants);
    const slateSize = options.slateSize ?? EXPERIMENT_DEFAULTS.slateSize;
    const itemsPerCluster = options.itemsPerCluster ?? SERVE_DEFAULTS.itemsPerCluster;
    const current = new Map<string, { exposureId: string; arm: string }>();
    let slates = 0;
    let clicks = 0;
    let generated = 0;
    let pending: EngagementEvent[] = [];
    const outcomes = { slots: 0, satisfied: 0, dissatisfied: 0, negative: 0, ignored: 0 };
    const policy: ExplorationPolicy = {
      async recommend(userId, history, at) {
        const arm = assignArm(definition, userId);
        const answer = await explorer.explore({ userId, lookup: lookups[arm.name], n: slateSize, itemsPerCluster, history });
        const exposureId = `${userId}@${Math.round(at)}`;
        experiments.logExposure({
          exposureId,
          experiment: definition.name,
          arm: arm.name,
          userId,
          ts: at,
          tableVersion: answer.table?.version ?? null,
          coldStart: answer.coldStart,
          slots: answer.recommendations.map((r) => ({ rank: r.rank, cluster: r.cluster, items: r.items.map((i) => i.itemId) })),
        });
        current.set(userId, { exposureId, arm: arm.name });
        slates++;
        return answer.recommendations.map((r) => ({ clusterId: r.cluster, itemIds: r.items.map((i) => i.itemId) }));
      },
    };
    const hooks = {
      onExposure: (e: Exposure) => {
        if (e.clicked) clicks++;
        if (e.outcome === "ignored") return;
        const exposure = current.get(e.userId)!;
        experiments.logOutcome({
          exposureId: exposure.exposureId,
          experiment: definition.name,
          arm: exposure.arm,
          userId: e.userId,
          rank: e.rank,
          cluster: e.clusterId,
          itemId: e.itemId,
          ts: e.at,
          outcome: e.outcome,
          engagement: e.engagement,
        });
      },
      onEvent: (event: EngagementEvent) => {
        pending.push(event);
        users.observe(event);
      },
    };

    for (let day = 0; day < days; day += refreshDays) {
      options.signal?.throwIfAborted();
      const span = Math.min(refreshDays, days - day);
      const result = await environment.simulateDays(span, policy, hooks);
      log(`days ${day}-${day + span}: ${result.exposures} slots shown, ${result.clicks} clicks, ${result.outcomes.satisfied} satisfied, ${result.events} events`);
      outcomes.slots += result.exposures;
      for (const k of ["satisfied", "dissatisfied", "negative", "ignored"] as const) outcomes[k] += result.outcomes[k];
      generated += pending.length;
      if (pending.length) await store.append({ events: eventBatchFromEvents(pending) });
      pending = [];
      await experiments.flush();
      if (day + span < days) {
        clock.set(environment.at);
        treatment = await runRefresh(environment.at, { ...base, rag, strategy: "hybrid" });
        record(day + span, "treatment", treatment);
        treatmentVersions.push(treatment.tableVersion);
        lookups.treatment = TableLookup.load(tables, treatment.tableVersion);
        grounding = await buildGroundingIndex(store, catalog, groundingOptions);
      }
    }
    const analysis = await analyzeExperiment(store, await experiments.get(definition.name), { resamples: options.resamples ?? EXPERIMENT_DEFAULTS.resamples });
    return {
      ...analysis,
      simulated: {
        from: new Date(start).toISOString(),
        to: new Date(start + days * DAY_MS).toISOString(),
        days,
        refreshDays,
        users: count,
        slates,
        clicks,
        events: generated,
        model: options.model.version,
        salt: definition.salt,
        outcomes,
      },
      tables: { control: control.tableVersion, treatment: treatmentVersions },
      refreshes,
      table: renderExperimentTable(analysis),
      workDir: options.workDir,
    };
  } finally {
    tables?.close();
    store.close();
  }
}
