/**
 * The hybrid update loop assembled from its parts: the model registry of a workspace, its table store, the event
 * store and the embedded engine. `freshrec finetune`, `freshrec refresh`, `freshrec schedule run [--simulate]` and
 * replay evaluation all get their job functions from here, so the code that runs in production is the code that is
 * simulated and evaluated.
 *
 * @example
 * const loop = new UpdateLoop({ events, tables, registry, clusters, settings });
 * const jobs = hybridJobs({ finetune: loop.finetuneJob(), refresh: loop.refreshJob() });
 * await new Scheduler({ jobs, store, clock }).simulate({ from, to });
 * await loop.close();
 */
import type { EventStoreContract } from "../data/event-store.js";
import { FreshrecError } from "../domain/errors.js";
import type { ProgressSink } from "../domain/types.js";
import type { LanguageModel, Trainer, TrainingEvent } from "../llm/contracts.js";
import { EmbeddedLanguageModel } from "../llm/backends/embedded.js";
import { EmbeddedTrainer } from "../llm/engine/trainer.js";
import { modelRegistryContract, type ModelRegistryContract, type UpdateModelRegistry } from "../llm/registry.js";
import { PROMPT_TEMPLATE_HASH } from "../llm/prompt.js";
import type { TableInfo, TableStoreContract } from "../tables/contract.js";
import { tableStoreContract, type UpdateTableStore } from "../tables/embedded-store.js";
import type { CurationOptions } from "./curation.js";
import { runFinetune, type FinetuneMemo, type FinetuneRegistry, type FinetuneResult } from "./finetune.js";
import type { GateOptions } from "./gates.js";
import type { PromptScorer } from "./generate.js";
import { refreshJob } from "./jobs.js";
import type { RagOptions, SnapshotCache } from "./rag.js";
import { computePrior, loadPrior, priorFileReady, resolveFusionOptions, savePrior, type EvidenceCache, type FusionFit, type LlmPrior } from "./fusion.js";
import { DAY_MS } from "../domain/clock.js";
import { remembered } from "../domain/memo.js";
import { join } from "node:path";
import type { JobOutcome, JobRun } from "./schedule/index.js";

/** The knobs of the loop, as the config file's `rag`, `finetune` and `tables` sections give them. */
export interface LoopSettings {
  readonly rag: RagOptions;
  readonly curation: CurationOptions;
  readonly gates: GateOptions;
  readonly training: { readonly epochs?: number; readonly learningRate?: number; readonly keepCheckpoints?: boolean };
  readonly tables: { readonly topN: number; readonly keep: number };
  /** Engagement threshold of a positive event (null: every event counts). */
  readonly positiveMin: number | null;
  /** Fine-tune when the prior stops earning weight (`finetune.trigger: drift`); absent: on the cadence. */
  readonly drift?: DriftTrigger | null;
}

export interface UpdateLoopOptions {
  /** DuckDB (the workspace) or PostgreSQL (`store.url`). */
  readonly events: EventStoreContract;
  /** Any table store adapter, or the workspace's synchronous SQLite store (replay keeps that one). */
  readonly tables: UpdateTableStore;
  /** Any registry adapter, or the workspace's synchronous registry (replay keeps that one). */
  readonly registry: UpdateModelRegistry;
  /** Cluster ids; every ordered pair of them gets a table row. */
  readonly clusters: readonly string[];
  readonly settings: LoopSettings;
  /** @defaultValue the embedded trainer */
  readonly trainer?: Trainer;
  /** @defaultValue EmbeddedLanguageModel.open */
  readonly openModel?: (path: string) => Promise<LanguageModel>;
  /** Strategy name recorded on the tables (replay). */
  readonly strategy?: string | null;
  /** Snapshots shared with other loops over the same unchanging store (replay). */
  readonly snapshots?: SnapshotCache;
  /** Evidence logs shared with other loops over the same unchanging store (replay). */
  readonly evidence?: EvidenceCache;
  /** Curated sets and gate results shared with other loops over the same unchanging store (replay). */
  readonly finetuneMemo?: FinetuneMemo;
  readonly progress?: ProgressSink;
  readonly onTraining?: (event: TrainingEvent) => void;
}

/** The registry as the fine-tuning job sees it: live model, candidates, gate decisions. */
export function finetuneRegistryOf(models: UpdateModelRegistry): FinetuneRegistry {
  const registry = modelRegistryContract(models);
  return {
    live: async () => {
      const live = await registry.live();
      // The file the fine-tune continues from, checked against its registered sha256.
      return live ? { version: live.version, path: await registry.modelFile(live), dataEnd: live.window?.to ?? null } : null;
    },
    registerCandidate: async (entry) =>
      (
        await registry.register({
          kind: entry.kind,
          parent: entry.parent,
          filePath: entry.path,
          window: entry.dataWindow,
          trainSamples: entry.trainSamples,
          metrics: { ...entry.metrics },
          templateHash: PROMPT_TEMPLATE_HASH,
          reason: "fine-tuned candidate",
        })
      ).version,
    decide: async (version, decision, reason, metrics) => {
      await registry.updateMetrics(version, { ...metrics });
      if (decision === "live") await registry.makeLive(version, reason);
      else await registry.setStatus(version, "halted", reason);
    },
  };
}

/**
 * `finetune.trigger: drift`: fine-tune when the live model's prior stops earning its place against fresh evidence
 * (the paper's future work: choose the fine-tuning frequency from detected drift), checked at each due time.
 */
export interface DriftTrigger {
  /** Nats per transition the prior must add to the fit slice's likelihood; below it the model is refreshed. */
  readonly minGain: number;
  /** Days after the live model's data ends before it may be replaced. */
  readonly minDays: number;
}

/**
 * Why a drift-triggered fine-tune need not run yet, or null when it should: the live fusion table's fit says what
 * the live model's prior adds to the likelihood of the freshest transitions; below `minGain` nats per transition
 * the model has gone stale. Never sooner than `minDays` after the live model's data ends.
 */
export function driftWait(live: { version: string; dataEnd: number }, table: TableInfo | null, asOf: number, drift: DriftTrigger): string | null {
  if (asOf - live.dataEnd < drift.minDays * DAY_MS) return `model ${live.version} is younger than ${drift.minDays} days`;
  const fit = table?.ragOptions?.fit as FusionFit | undefined;
  if (!table || table.modelVersion !== live.version || !fit || fit.status !== "fitted" || fit.countsOnlyPerTransition === null) {
    return `no fitted fusion table of model ${live.version} yet`;
  }
  const gain = fit.perTransition - fit.countsOnlyPerTransition;
  return gain >= drift.minGain ? `prior of ${live.version} still earns ${gain.toFixed(4)} nats/transition (>= ${drift.minGain})` : null;
}

/**
 * The curation options of the loop's fine-tunes: the transitions the tables serve and the replay scores, through
 * positive events only (as the base model's training), with contexts retrieved as the refreshes retrieve them.
 */
export function finetuneCuration(settings: LoopSettings): CurationOptions {
  return { ...settings.curation, positiveMin: settings.positiveMin, rag: { ...settings.rag, positiveMin: settings.positiveMin } };
}

/** A model opened for scoring, with what a table records about it. */
export interface ServingModel {
  readonly version: string;
  readonly scorer: PromptScorer;
  /** End of the training data of the model (what a table without RAG knows up to). */
  readonly dataAsOf: number;
  /** End of the model's training data when its window is registered (the prior's known clusters; a fine-tune's start). */
  readonly dataEnd?: number;
  /** The model's prior over every pair, for fusion refreshes (computed once per version). */
  readonly prior: () => Promise<{ prior: LlmPrior; promptsScored: number }>;
  /** The prior is computed already (in memory or on disk). */
  readonly priorReady: boolean;
  /** The model file's sha256: names the prior in evidence caches shared across strategies. */
  readonly priorKey: string;
}

export class UpdateLoop {
  private open: { version: string; model: LanguageModel } | null = null;
  /** Priors by model version: computed once, kept on disk beside the models (`<version>.prior`). */
  private readonly priors = new Map<string, Promise<LlmPrior>>();
  private readonly tables: TableStoreContract;
  private readonly registry: ModelRegistryContract;

  constructor(private readonly options: UpdateLoopOptions) {
    this.tables = tableStoreContract(options.tables);
    this.registry = modelRegistryContract(options.registry);
  }

  /** The registry's live model, opened once per version (a refresh after a fine-tune picks up the new one). */
  async liveModel(): Promise<ServingModel> {
    const live = await this.registry.live();
    if (!live) throw new FreshrecError("BAD_INPUT", "no live model yet: run `freshrec pretrain` first");
    if (this.open?.version !== live.version) {
      await this.open?.model.close();
      this.open = null;
      const modelPath = await this.registry.modelFile(live); // checked against its registered sha256
      const model = await (this.options.openModel ?? ((p: string) => EmbeddedLanguageModel.open(p)))(modelPath);
      this.open = { version: live.version, model };
    }
    const { version } = live;
    const model = this.open.model;
    const topM = resolveFusionOptions(this.options.settings.rag.fusion).priorTopM;
    const file = join(this.registry.modelsDir, `${version}.prior`);
    return {
      version,
      scorer: model,
      dataAsOf: live.window?.to ?? live.createdAt,
      ...(live.window ? { dataEnd: live.window.to } : {}),
      priorReady: this.priors.has(version) || priorFileReady(file, this.options.clusters, topM, live.sha256),
      priorKey: live.sha256,
      prior: async () => {
        let promptsScored = 0;
        // Only the live version's prior is kept in memory (a schedule that runs for months goes through many).
        for (const held of this.priors.keys()) if (held !== version) this.priors.delete(held);
        const prior = await remembered(this.priors, version, async () => {
          const saved = loadPrior(file, this.options.clusters, topM, live.sha256);
          if (saved) return saved;
          const computed = await computePrior(model, this.options.clusters, { topM });
          promptsScored = this.options.clusters.length * (this.options.clusters.length - 1);
          savePrior(file, computed, live.sha256);
          return computed;
        });
        return { prior, promptsScored };
      },
    };
  }

  /** Fine-tune at the as-of time; the outcome is `halted` when a gate fails (the scheduler then pauses the job). */
  async finetune(asOf: number, signal?: AbortSignal): Promise<FinetuneResult> {
    const { settings } = this.options;
    return runFinetune(asOf, {
      events: this.options.events,
      registry: finetuneRegistryOf(this.registry),
      trainer: this.options.trainer ?? new EmbeddedTrainer(),
      openModel: this.options.openModel ?? ((p) => EmbeddedLanguageModel.open(p)),
      modelsDir: this.registry.modelsDir,
      curation: finetuneCuration(settings),
      gates: settings.gates,
      train: settings.training,
      onProgress: this.options.onTraining,
      signal,
      memo: this.options.finetuneMemo,
    });
  }

  /**
   * The fine-tuning job. `startModelAt`: the live model at that instant already is that month's fine-tune (a base
   * model trained on the window just before it), so a run due then or earlier has nothing to do; later ones
   * continue training it.
   */
  finetuneJob(options: { startModelAt?: number; drift?: DriftTrigger } = {}): JobRun {
    return async ({ asOf, signal }) => {
      if (options.startModelAt !== undefined && asOf <= options.startModelAt) {
        return { status: "succeeded", detail: { modelVersion: (await this.registry.live())?.version ?? null, skipped: "start model" } };
      }
      const drift = options.drift ?? this.options.settings.drift ?? null;
      if (drift) {
        const waiting = await this.driftWait(asOf, drift);
        if (waiting) return { status: "succeeded", detail: { modelVersion: (await this.registry.live())?.version ?? null, skipped: waiting } };
      }
      return finetuneOutcome(await this.finetune(asOf, signal));
    };
  }

  private async driftWait(asOf: number, drift: DriftTrigger): Promise<string | null> {
    const live = await this.registry.live();
    if (!live) return null;
    return driftWait({ version: live.version, dataEnd: live.window?.to ?? live.createdAt }, (await this.tables.live()) ?? null, asOf, drift);
  }

  /** The RAG refresh job (rag null: the table of the model alone, as the fine-tuning-only strategies serve). */
  refreshJob(overrides: { rag?: Partial<RagOptions> | null; full?: boolean } = {}): JobRun {
    const { settings } = this.options;
    const rag = overrides.rag === null ? null : { ...settings.rag, ...(overrides.rag ?? {}), positiveMin: settings.positiveMin };
    return refreshJob(
      {
        events: this.options.events,
        tables: this.tables,
        clusters: this.options.clusters,
        templateHash: PROMPT_TEMPLATE_HASH,
        rag,
        full: overrides.full,
        topN: settings.tables.topN,
        keep: settings.tables.keep,
        strategy: this.options.strategy ?? null,
        snapshots: this.options.snapshots,
        evidence: this.options.evidence,
        progress: this.options.progress,
      },
      () => this.liveModel(),
    );
  }

  async close(): Promise<void> {
    await this.open?.model.close();
    this.open = null;
  }
}

/** A fine-tuning result as a run of the scheduler: halted gates pause the job until a human reviews. */
export function finetuneOutcome(result: FinetuneResult): JobOutcome {
  return {
    status: result.status === "live" ? "succeeded" : "halted",
    cost: { tokensTrained: result.trainTokens, childCpuSeconds: result.training.cpuSeconds ?? 0 },
    detail: {
      modelVersion: result.modelVersion,
      modelStatus: result.status,
      parent: result.parent,
      exactMatchRate: result.gates.exactMatchRate,
      testRecall: result.gates.testRecall,
      trainSamples: result.set.trainSamples,
      testExamples: result.set.testExamples,
      ...(result.training.reused ? { reusedTraining: true } : {}),
    },
    error: result.status === "halted" ? `gates failed: ${result.gates.reasons.join("; ")}` : undefined,
  };
}

/** Runs jobs one after the other as one run (a fine-tune followed by its table build); stops at the first non-success. */
export function inSequence(...runs: JobRun[]): JobRun {
  return async (context) => {
    let merged: JobOutcome = { status: "succeeded" };
    for (const run of runs) {
      const outcome = await run(context);
      merged = {
        ...outcome,
        cost: {
          tokensTrained: (merged.cost?.tokensTrained ?? 0) + (outcome.cost?.tokensTrained ?? 0),
          promptsScored: (merged.cost?.promptsScored ?? 0) + (outcome.cost?.promptsScored ?? 0),
          childCpuSeconds: (merged.cost?.childCpuSeconds ?? 0) + (outcome.cost?.childCpuSeconds ?? 0),
        },
        detail: { ...merged.detail, ...outcome.detail },
      };
      if (outcome.status !== "succeeded") break;
    }
    return merged;
  };
}
