/**
 * The strategies of replay evaluation, each one a set of production jobs on the scheduler (arXiv 2510.20260 §4):
 *
 * - `static`: the start model, one table without RAG, never updated;
 * - `finetune-monthly`: monthly fine-tunes (behind the gates), each followed by a table without RAG;
 * - `rag`: the start model, the paper's in-prompt RAG refresh every N days;
 * - `hybrid`: the product's hybrid: monthly fine-tunes plus a fusion refresh every N days (the live model's prior
 *   and the fresh evidence as a posterior, src/update/fusion.ts);
 * - `hybrid-drift`: the fusion hybrid whose fine-tunes start when the live model's prior stops earning weight
 *   against fresh evidence (`finetune.trigger: drift`), checked after every refresh, instead of monthly;
 * - `paper-hybrid`: the paper's hybrid: monthly fine-tunes plus in-prompt RAG every N days;
 * - `fusion-static`: the start model's prior fused with fresh evidence every N days, never fine-tuned;
 * - `rag-day1-frozen`: one in-prompt RAG table on the first day, then frozen (the paper's variant);
 * - `counts-backoff`: the fusion posterior without an LLM prior (pair, second cluster, popularity), fitted the
 *   same way: the strongest counting baseline, which the LLM must beat to earn its place;
 * - `successor-top1`, `popular-novel`: the simple non-LLM baselines, recomputed every N days from the RAG window;
 * - `oracle` (synthetic platform only, ./oracle.ts): the world's true kernel's answers, a table at the start and at
 *   every month boundary. Not a product strategy: the ceiling every other strategy is shown as a share of;
 * - `oracle-prior` (synthetic platform only, ./oracle.ts): the hybrid with a perfect model, a fusion refresh every N
 *   days whose prior is the true kernel of the month the last fine-tune's data (on the hybrid's cadence) ended in.
 *   Not a product strategy: the most that better fine-tunes on that cadence could add to the hybrid.
 *
 * Every LLM strategy starts from the same start model (trained only on data before the period), registered live in
 * its own registry and table store under the replay's work directory, so strategies never see each other's state.
 *
 * @example
 * const setups = strategySetups(["static", "hybrid", "successor-top1"], env);
 * const result = await replay({ events, window, strategies: setups });
 */
import { mkdirSync, rmSync } from "node:fs";
import { basename, join } from "node:path";
import type { EventStoreContract } from "../data/event-store.js";
import { DAY_MS, type VirtualClock } from "../domain/clock.js";
import { BadInputError } from "../domain/errors.js";
import type { ProgressSink, TimeWindow } from "../domain/types.js";
import type { LanguageModel, Trainer, TrainingEvent } from "../llm/contracts.js";
import { ModelRegistry, placeModelFile } from "../llm/registry.js";
import { SqliteTableStore } from "../tables/index.js";
import { baselineRefreshJob, type BaselineName } from "../update/jobs.js";
import { finetuneCuration, UpdateLoop, inSequence, type DriftTrigger, type LoopSettings } from "../update/loop.js";
import type { FinetuneMemo } from "../update/finetune.js";
import type { SnapshotCache } from "../update/rag.js";
import type { EvidenceCache } from "../update/fusion.js";
import { parseCadence, type JobDefinition } from "../update/schedule/index.js";
import type { SyntheticWorld } from "../data/synthetic/index.js";
import { ORACLE_PRIOR_STRATEGY, oraclePriorRefreshJob, oracleRefreshJob } from "./oracle.js";
import type { StrategySetup } from "./replay.js";

export const LLM_STRATEGIES = ["static", "finetune-monthly", "rag", "hybrid", "hybrid-drift", "paper-hybrid", "fusion-static", "rag-day1-frozen"] as const;
export const BASELINE_STRATEGIES = ["counts-backoff", "successor-top1", "popular-novel"] as const;
/** The strategies a product could run (what `evaluate replay` compares by default). */
export const ALL_STRATEGIES = [...LLM_STRATEGIES, ...BASELINE_STRATEGIES] as const;
/** Reads the synthetic world's truth: replayable only on a workspace made by `freshrec synth` or `demo`. */
export const ORACLE_STRATEGY = "oracle";
/** Strategies that read the synthetic world's true kernel: they exist only on the synthetic platform. */
export const WORLD_STRATEGIES = [ORACLE_STRATEGY, ORACLE_PRIOR_STRATEGY] as const;
export const KNOWN_STRATEGIES = [...ALL_STRATEGIES, ...WORLD_STRATEGIES] as const;
export type StrategyName = (typeof KNOWN_STRATEGIES)[number];

/** Strategies whose cadence includes a RAG refresh every N days (the ones a refresh-days ablation varies). */
const REFRESHING: ReadonlySet<string> = new Set(["rag", "hybrid", "hybrid-drift", "paper-hybrid", "fusion-static", "counts-backoff", "successor-top1", "popular-novel", ORACLE_PRIOR_STRATEGY]);
const BASELINES: ReadonlySet<string> = new Set(BASELINE_STRATEGIES);

export interface StartModel {
  readonly path: string;
  readonly window: TimeWindow | null;
  readonly version: string;
}

export interface StrategyEnvironment {
  readonly events: EventStoreContract;
  readonly window: TimeWindow;
  readonly clusters: readonly string[];
  readonly settings: LoopSettings;
  /**
   * The model every LLM strategy starts from (trained on data before `window.from` only). A promise lets the
   * strategies that need no model (the baselines) replay while it trains.
   */
  readonly startModel: StartModel | Promise<StartModel>;
  /** Where each strategy keeps its registry and tables (one folder per strategy, wiped first). */
  readonly workDir: string;
  /** @defaultValue "0 0 1 * *" */
  readonly finetuneCadence?: string;
  /** Trainer of the fine-tunes; a CachingTrainer lets strategies share identical runs. @defaultValue the embedded one */
  readonly trainer?: Trainer;
  /** RAG snapshots shared by the strategies (they retrieve at the same instants from the same store). */
  readonly snapshots?: SnapshotCache;
  /** Evidence logs and window choices shared by the fusion strategies (same instants, same store). */
  readonly evidence?: EvidenceCache;
  /** The drift trigger of `hybrid-drift` (the config's finetune.driftMinGain and driftMinDays); required by it. */
  readonly drift?: DriftTrigger;
  /** Curated sets and gate results shared by the fine-tuning strategies (same instants, same store). */
  readonly finetuneMemo?: FinetuneMemo;
  /** Opens model versions (the configured LLM backend). @defaultValue the embedded backend */
  readonly openModel?: (path: string) => Promise<LanguageModel>;
  /**
   * The synthetic world the events came from (src/data/synthetic/recorded.ts); required by `oracle` and
   * `oracle-prior`, which read its true kernel. Absent for other data.
   */
  readonly world?: SyntheticWorld | null;
  /** Why there is no world (said when `oracle` or `oracle-prior` is asked for without one). */
  readonly noWorldReason?: string;
  readonly progress?: ProgressSink;
  readonly onTraining?: (strategy: string, event: TrainingEvent) => void;
}

function driftOf(env: StrategyEnvironment): DriftTrigger {
  if (!env.drift) throw new BadInputError("hybrid-drift: the replay environment has no drift trigger (finetune.driftMinGain, driftMinDays)");
  return env.drift;
}

function worldOf(env: StrategyEnvironment, strategy: string): SyntheticWorld {
  if (!env.world) throw new BadInputError(`${strategy}: ${env.noWorldReason ?? "the replay environment has no synthetic world"}; it exists only on the synthetic platform`);
  return env.world;
}

/** Parses a comma-separated strategy list, refusing unknown names. */
export function parseStrategies(list: string): StrategyName[] {
  const names = list.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (names.length === 0) throw new BadInputError("--strategies: empty list");
  for (const n of names) {
    if (!(KNOWN_STRATEGIES as readonly string[]).includes(n)) {
      throw new BadInputError(`--strategies: unknown strategy ${JSON.stringify(n)} (known: ${KNOWN_STRATEGIES.join(", ")})`);
    }
  }
  return [...new Set(names)] as StrategyName[];
}

/**
 * What a replay compares when no list is given: every product strategy, and on the synthetic platform the oracle
 * and the oracle prior too: they cost no prompt and no training, the oracle gives every other row its share of the
 * ceiling, and the oracle prior says how much of the hybrid's distance to it better fine-tunes could close.
 */
export function defaultStrategies(synthetic: boolean): StrategyName[] {
  return synthetic ? [...ALL_STRATEGIES, ...WORLD_STRATEGIES] : [...ALL_STRATEGIES];
}

/**
 * The setups for the named strategies. With several refresh cadences (an ablation), each refreshing strategy is
 * expanded into one per cadence, named `hybrid@4d` and so on.
 */
export function strategySetups(names: readonly StrategyName[], env: StrategyEnvironment, refreshDays: readonly number[] = [2]): StrategySetup[] {
  const out: StrategySetup[] = [];
  for (const name of names) {
    if (REFRESHING.has(name) && refreshDays.length > 1) {
      for (const d of refreshDays) out.push(setupOf(name, `${name}@${d}d`, d, env));
    } else out.push(setupOf(name, name, refreshDays[0] ?? 2, env));
  }
  return out;
}

/**
 * Counts, in one query, the RAG windows every refreshing strategy of `strategySetups(names, env, refreshDays)` will
 * retrieve (the refresh instants of each cadence), into `env.snapshots`: the refreshes then only read them. The
 * snapshots are the ones a refresh would retrieve alone (test/update/rag.test.ts).
 */
export async function primeSnapshots(names: readonly StrategyName[], env: StrategyEnvironment, refreshDays: readonly number[] = [2]): Promise<void> {
  if (!env.snapshots || !names.some((n) => REFRESHING.has(n))) return;
  const asOfs = new Set<number>();
  for (const d of refreshDays) for (let t = env.window.from; t < env.window.to; t += d * DAY_MS) asOfs.add(t);
  await env.snapshots.prime(env.events, [...asOfs], { ...env.settings.rag, positiveMin: env.settings.positiveMin });
}

/** A strategy's own folder under the replay's work directory, made anew, and its table store there. */
function strategyStores(env: StrategyEnvironment, label: string, clock: VirtualClock): { dir: string; tables: SqliteTableStore } {
  const dir = join(env.workDir, label.replace(/[^a-zA-Z0-9@._-]/g, "_"));
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return { dir, tables: SqliteTableStore.open(join(dir, "tables.sqlite"), clock) };
}

/** The start model's file placed once under a replay's work folder, by replay environment. */
const startModelsInReplay = new WeakMap<StrategyEnvironment, string>();

/**
 * The start model under the replay's work folder: linked there once (or, from another filesystem, copied once) so
 * that each strategy links its own from it rather than copying a configured model file of gigabytes again.
 */
function startModelInReplay(env: StrategyEnvironment, path: string): string {
  let placed = startModelsInReplay.get(env);
  if (placed === undefined) {
    placed = placeModelFile(path, join(env.workDir, "start-model", basename(path)));
    startModelsInReplay.set(env, placed);
  }
  return placed;
}

/** The refresh options of a strategy whose rows are computed, not prompted (the counting baselines, the oracle prior). */
function computedRefreshOptions(env: StrategyEnvironment, tables: SqliteTableStore, label: string) {
  return {
    events: env.events,
    tables,
    clusters: env.clusters,
    topN: env.settings.tables.topN,
    keep: env.settings.tables.keep,
    strategy: label,
    snapshots: env.snapshots,
    evidence: env.evidence,
    rag: { ...env.settings.rag, positiveMin: env.settings.positiveMin },
  };
}

function setupOf(kind: StrategyName, label: string, refreshDays: number, env: StrategyEnvironment): StrategySetup {
  const start = new Date(env.window.from).toISOString();
  const every = `every ${refreshDays} days from ${start}`;
  // "Once, at the start": an interval longer than any replay period.
  const once = `every 36500 days from ${start}`;
  const finetuneCadence = env.finetuneCadence ?? "0 0 1 * *";
  if (kind === ORACLE_STRATEGY) return oracleSetup(label, env, once);
  if (kind === ORACLE_PRIOR_STRATEGY) return oraclePriorSetup(label, env, every, finetuneCadence);
  const llm = !BASELINES.has(kind);
  return {
    name: label,
    ready: llm ? Promise.resolve(env.startModel) : undefined,
    finetunes: kind === "finetune-monthly" || kind === "hybrid" || kind === "hybrid-drift" || kind === "paper-hybrid",
    async create(clock) {
      const { dir, tables } = strategyStores(env, label, clock);
      if (kind === "successor-top1" || kind === "popular-novel" || kind === "counts-backoff") {
        const run = baselineRefreshJob(kind satisfies BaselineName, { ...computedRefreshOptions(env, tables, label), templateHash: "baseline" });
        return { jobs: [{ name: "refresh", cadence: every, run }], tables, close: () => tables.close() };
      }
      const startModel = await env.startModel;
      const registry = new ModelRegistry(dir, clock);
      const registered = await registry.register({
        kind: "base",
        // Placed under this strategy's models folder (linked), so its registry records it relative to the folder.
        filePath: placeModelFile(startModelInReplay(env, startModel.path), join(registry.modelsDir, "start", basename(startModel.path))),
        window: startModel.window,
        reason: `start model ${startModel.version} of the replay`,
      });
      registry.makeLive(registered.version, "the replay's start model");
      const loop = new UpdateLoop({
        events: env.events,
        tables,
        registry,
        clusters: env.clusters,
        settings: env.settings,
        trainer: env.trainer,
        openModel: env.openModel,
        snapshots: env.snapshots,
        evidence: env.evidence,
        finetuneMemo: env.finetuneMemo,
        strategy: label,
        progress: env.progress,
        onTraining: env.onTraining ? (e) => env.onTraining!(label, e) : undefined,
      });
      const noRag = loop.refreshJob({ rag: null });
      const prompted = loop.refreshJob({ rag: { method: "prompt" } });
      const fused = loop.refreshJob({ rag: { method: "fusion" } });
      const finetune = loop.finetuneJob({ startModelAt: env.window.from });
      // Only hybrid-drift needs the trigger (the table below is built for every kind, then one entry is taken).
      const drift = kind === "hybrid-drift" ? driftOf(env) : null;
      const jobs: JobDefinition[] = {
        static: [{ name: "refresh", cadence: once, run: noRag }],
        "finetune-monthly": [
          // The scheduler runs jobs due at the same time in definition order: a fine-tune on the first day comes
          // before nothing else, and the start table exists from the first instant.
          { name: "start-table", cadence: once, run: noRag },
          { name: "finetune", cadence: finetuneCadence, run: inSequence(finetune, noRag) },
        ],
        rag: [{ name: "refresh", cadence: every, run: prompted }],
        hybrid: [
          { name: "finetune", cadence: finetuneCadence, run: finetune },
          { name: "refresh", cadence: every, run: fused },
        ],
        // The refresh first: the drift trigger reads the fit of the table published at the same instant.
        "hybrid-drift": [
          { name: "refresh", cadence: every, run: fused },
          { name: "finetune", cadence: every, run: loop.finetuneJob({ startModelAt: env.window.from, drift: drift ?? undefined }) },
        ],
        "paper-hybrid": [
          { name: "finetune", cadence: finetuneCadence, run: finetune },
          { name: "refresh", cadence: every, run: prompted },
        ],
        "fusion-static": [{ name: "refresh", cadence: every, run: fused }],
        "rag-day1-frozen": [{ name: "refresh", cadence: once, run: prompted }],
      }[kind];
      return {
        jobs,
        tables,
        close: async () => {
          await loop.close();
          registry.close();
          tables.close();
        },
      };
    },
  };
}

/** When the synthetic kernel changes: 00:00 UTC on the 1st of each month. */
const MONTH_BOUNDARY = "0 0 1 * *";

/**
 * The oracle: the true kernel's table at the start, then at every month boundary (00:00 UTC on the 1st, when the
 * kernel changes); the world is checked when the setup is made, so a replay without one fails before any strategy
 * runs.
 */
function oracleSetup(label: string, env: StrategyEnvironment, once: string): StrategySetup {
  const world = worldOf(env, label);
  return {
    name: label,
    ceiling: true,
    async create(clock) {
      const { tables } = strategyStores(env, label, clock);
      const run = oracleRefreshJob(world, { tables, clusters: env.clusters, topN: env.settings.tables.topN, keep: env.settings.tables.keep, strategy: label });
      // A replay starting on a month boundary gets its first table from the monthly job alone.
      const startsOnBoundary = parseCadence(MONTH_BOUNDARY).next(env.window.from - 1) === env.window.from;
      return {
        jobs: [...(startsOnBoundary ? [] : [{ name: "start-table", cadence: once, run }]), { name: "refresh", cadence: MONTH_BOUNDARY, run }],
        tables,
        close: () => tables.close(),
      };
    },
  };
}

/**
 * The oracle prior: a fusion refresh on the refresh cadence, whose prior is the kernel a perfect model fine-tuned on
 * the hybrid's cadence would know (./oracle.ts); the same evidence, counting and fit as the hybrid's refreshes.
 */
function oraclePriorSetup(label: string, env: StrategyEnvironment, every: string, finetuneCadence: string): StrategySetup {
  const world = worldOf(env, label);
  return {
    name: label,
    async create(clock) {
      const { tables } = strategyStores(env, label, clock);
      // The hybrid's curation: where each of its fine-tunes' data would end.
      const curation = finetuneCuration(env.settings);
      const run = oraclePriorRefreshJob(world, { ...computedRefreshOptions(env, tables, label), templateHash: "oracle-prior", finetuneCadence, curation, start: env.window.from });
      return { jobs: [{ name: "refresh", cadence: every, run }], tables, close: () => tables.close() };
    },
  };
}
