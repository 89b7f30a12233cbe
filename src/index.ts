/**
 * freshrec as a library (`import { ... } from "freshrec"`): the parts a program embedding the recommender needs,
 * named as the CLI uses them, so what a program runs is what `freshrec refresh`, `schedule run` and `evaluate replay`
 * run. Curated on purpose: internal modules are not re-exported wholesale, so what is listed here is the surface
 * kept stable. docs/architecture.md places each part; README.md is the user contract.
 *
 * - **Event store and ingestion**: `EventStoreContract` with `EventStore` (DuckDB, the workspace) and
 *   `PostgresEventStore` (a deployment's shared database), `ingestFiles` (generic CSV/JSONL/Parquet), `ingestMovieLens`,
 *   `ingestSynthetic` with `SyntheticWorld` (the synthetic platform, for trying things without data).
 * - **Mining**: novel-interest transitions per window, successor lists, drift.
 * - **Update loop**: `runRefresh` (one refresh: fusion by default, `model.prior: null` for the counts-backoff
 *   baseline), `runFinetune` (behind the gates), `UpdateLoop` (both over a workspace's stores and its live model),
 *   the job adapters, and the `Scheduler` that runs them on cadences, live or on a virtual clock.
 * - **Tables**: the versioned table store: build, publish, rollback, lookup. `TableStoreContract` with
 *   `EmbeddedTableStore` (over the workspace's `SqliteTableStore`) and `PostgresTableStore`.
 * - **Serving**: `startServer` (the HTTP API over a workspace) and the item policies.
 * - **Evaluation**: `replay` of strategies on a virtual clock, bootstrap intervals.
 * - **LLM contracts**: `LanguageModel`, `Trainer`, the prompt template, the three backends and the model registry
 *   (`ModelRegistryContract` with `EmbeddedModelRegistry` and `PostgresModelRegistry`).
 *
 * @example
 * // A counts-backoff refresh (no LLM) over a small synthetic world, run by the scheduler on a virtual clock.
 * import { DAY_MS, EventStore, Scheduler, SqliteScheduleStore, SqliteTableStore, SyntheticWorld, SYNTHETIC_QUICK,
 *   VirtualClock, baselineRefreshJob, ingestSynthetic, tableStorePath } from "freshrec";
 * const world = new SyntheticWorld({ ...SYNTHETIC_QUICK, users: 300, targetEvents: 20_000, months: 2, clustersPerDomain: 3 });
 * const events = await EventStore.open("ws/events.duckdb");
 * await ingestSynthetic(events, world);
 * const asOf = Date.parse("2025-02-20T00:00:00Z");
 * const clock = new VirtualClock(asOf);
 * const tables = SqliteTableStore.open(tableStorePath("ws"), clock);
 * const clusters = (await events.clusters()).map((c) => c.id);
 * const refresh = baselineRefreshJob("counts-backoff", { events, tables, clusters, templateHash: "counts", rag: {} });
 * const scheduler = new Scheduler({ jobs: [{ name: "refresh", cadence: "every 2 days", run: refresh }], store: SqliteScheduleStore.open(":memory:"), clock });
 * await scheduler.simulate({ from: asOf, to: asOf + 2 * DAY_MS });
 * console.log(tables.lookup(tables.live()!.version, clusters[0], clusters[1])?.answers);
 */

// ---- domain: plain types, time, errors ----
export type {
  Cluster,
  EngagementEvent,
  History,
  Item,
  ProgressSink,
  ScoredCluster,
  TableRow,
  TimeWindow,
  Transition,
  TransitionCount,
} from "./domain/types.js";
export { type Clock, DAY_MS, SystemClock, VirtualClock, parseTime } from "./domain/clock.js";
export { BadInputError, ConfigError, type ErrorCode, FreshrecError } from "./domain/errors.js";

// ---- data: the event store, ingestion, the synthetic platform ----
export {
  type AppendRequest,
  type AppendResult,
  EventStore,
  type EventStoreContract,
  type StoreCounts,
  eventBatchFromEvents,
} from "./data/event-store.js";
export { PostgresEventStore } from "./data/postgres-event-store.js";
export { type GenericFiles, type IngestOptions, type IngestReport, ingestFiles } from "./data/ingest/ingest.js";
export { type MovieLensOptions, ingestMovieLens } from "./data/ingest/movielens.js";
export { type SyntheticIngestReport, ingestSynthetic } from "./data/ingest/synthetic.js";
export { SYNTHETIC_DEFAULTS, SYNTHETIC_QUICK, type SyntheticOptions, SyntheticWorld } from "./data/synthetic/world.js";

// ---- mining ----
export { type MiningOptions, countTransitions, timedTransitions } from "./mining/transitions.js";
export { successorLists } from "./mining/successors.js";
export { type DriftOptions, type DriftResult, analyzeDrift } from "./mining/drift.js";

// ---- the update loop: refresh, fine-tuning, gates, scheduler ----
export { type RefreshOptions, type RefreshPlan, type RefreshResult, planRefresh, runRefresh } from "./update/refresh.js";
export { type BaselineName, baselineRefreshJob, refreshJob } from "./update/jobs.js";
export type { PromptScorer } from "./update/generate.js";
export { RAG_DEFAULTS, type RagOptions } from "./update/rag.js";
export { FUSION_DEFAULTS, type FusionOptions } from "./update/fusion.js";
export { type FinetuneOptions, type FinetuneResult, runFinetune } from "./update/finetune.js";
export { GATE_DEFAULTS, type GateOptions, type GateResult } from "./update/gates.js";
export { type LoopSettings, UpdateLoop, type UpdateLoopOptions } from "./update/loop.js";
export {
  DEFAULT_FINETUNE_CADENCE,
  DEFAULT_REFRESH_CADENCE,
  type JobContext,
  type JobDefinition,
  type JobOutcome,
  type JobRun,
  type RunRecord,
  Scheduler,
  type SchedulerConfig,
  SqliteScheduleStore,
  hybridJobs,
  parseCadence,
  scheduleStorePath,
} from "./update/schedule/index.js";

// ---- tables ----
export {
  EmbeddedTableStore,
  PostgresTableStore,
  type PublishOptions,
  SqliteTableStore,
  type StoredTableRow,
  type TableInfo,
  type TableStore,
  type TableStoreContract,
  tableStorePath,
} from "./tables/index.js";

// ---- serving ----
export { type RunningServer, type ServeOptions, startServer } from "./serving/server.js";
export { CoVisitationPolicy, type ItemPolicy, PopularityPolicy } from "./serving/grounding/index.js";

// ---- evaluation ----
export { type ReplayOptions, type ReplayResult, type StrategySetup, replay } from "./evaluation/replay.js";
export { type StrategyEnvironment, type StrategyName, parseStrategies, strategySetups } from "./evaluation/strategies.js";
export { bootstrapRatioDelta } from "./evaluation/bootstrap.js";

// ---- LLM contracts, backends, registry ----
export type {
  GeneratedAnswer,
  LanguageModel,
  LanguageModelInfo,
  PromptContext,
  PromptInput,
  TrainOptions,
  TrainResult,
  Trainer,
  TrainingSample,
} from "./llm/contracts.js";
export { PROMPT_TEMPLATE_HASH, renderPrompt } from "./llm/prompt.js";
export {
  EmbeddedLanguageModel,
  EmbeddedTrainer,
  GgufLanguageModel,
  ModelRegistry,
  type ModelVersion,
  OpenAiLanguageModel,
  OpenAiTrainer,
  languageModelBackend,
  pretrainBaseModel,
} from "./llm/index.js";
export { EmbeddedModelRegistry, type ModelRegistryContract } from "./llm/registry.js";
export { PostgresModelRegistry } from "./llm/postgres-registry.js";

// ---- a workspace's layout (where the CLI keeps each store) ----
export { DEFAULT_WORKSPACE, type WorkspacePaths, workspacePaths } from "./cli/workspace.js";
