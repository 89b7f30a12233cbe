/**
 * The base model (`freshrec pretrain [--as-of T]`): the first model, trained from the catalog (cluster
 * descriptions, item titles) and generic transition prompts mined before T, so a model exists before the first
 * fine-tune. The caller mines the transitions (nothing here reads the event store) and wires the CLI.
 *
 * @example
 * const result = await pretrainBaseModel({ workspace, clock, clusters, items, transitions, heldOut, window });
 * console.log(result.modelVersion, result.evaluation.modelTop1, result.evaluation.mostPopularTop1);
 */
import { join } from "node:path";
import type { Clock } from "../domain/clock.js";
import { FreshrecError } from "../domain/errors.js";
import type { Cluster, Item, TimeWindow, Transition } from "../domain/types.js";
import type { CatalogLine, LanguageModel, TrainResult, TrainingEvent } from "./contracts.js";
import { TRAIN_DEFAULTS, sampleOf } from "./contracts.js";
import { EmbeddedLanguageModel } from "./backends/embedded.js";
import { type ModelShape, readModelFile } from "./engine/model-file.js";
import { EmbeddedTrainer, type EmbeddedTrainerOptions } from "./engine/trainer.js";
import { EmbeddedModelRegistry, type ModelRegistryContract, type ModelVersion } from "./registry.js";
import { DEFAULT_RELABEL_SHARE, relabelContextSamples } from "./relabel.js";

export interface PretrainOptions {
  /** Workspace directory (registry.sqlite and models/ live there). */
  readonly workspace: string;
  /**
   * The registry the base model is registered in (the caller closes it), for a deployment's shared one (`store.url`).
   * @defaultValue the workspace's registry.sqlite, opened and closed here
   */
  readonly registry?: ModelRegistryContract;
  readonly clock: Clock;
  readonly clusters: readonly Cluster[];
  /** Items with titles: their words enter the vocabulary and catalog lines tie them to their cluster. */
  readonly items?: readonly Item[];
  /**
   * Training transitions, all strictly before the as-of time (the caller's responsibility); `context`, when present,
   * is the retrieved successors the transition's prompt carries (RAG form of the template).
   */
  readonly transitions: readonly (Transition & { readonly context?: readonly string[] })[];
  /**
   * Share of the transitions with a context that are trained relabelled (relabel.ts), so the model learns to read a
   * context that contradicts what it memorised. @defaultValue 1
   */
  readonly relabelShare?: number;
  /** Held-out transitions (later than the training ones) for the accuracy report; absent skips it. */
  readonly heldOut?: readonly Transition[];
  /** Retrieved successors per held-out pair, to report the model's top-1 with RAG contexts as well. */
  readonly heldOutContexts?: (c1: string, c2: string) => readonly string[] | undefined;
  /** Data window of `transitions`, recorded in the registry. */
  readonly window?: TimeWindow | null;
  /** @defaultValue REFERENCE_SHAPE */
  readonly shape?: ModelShape;
  /** Training engine and precision (the config's `training` section). @defaultValue engine v2, f32 products */
  readonly training?: Pick<EmbeddedTrainerOptions, "engine" | "precision">;
  /** @defaultValue 4 (see TrainOptions.epochs) */
  readonly epochs?: number;
  /** @defaultValue false (see TrainOptions.keepCheckpoints) */
  readonly keepCheckpoints?: boolean;
  /** @defaultValue the trainer's (ENGINE_LEARNING_RATE, 1e-3) */
  readonly learningRate?: number;
  /** Upper bound on catalog lines from item titles. @defaultValue 5000 */
  readonly maxCatalogLines?: number;
  /** Make the new base model live when there is no live model yet. @defaultValue true */
  readonly makeLiveIfNone?: boolean;
  readonly signal?: AbortSignal;
  readonly onProgress?: (event: TrainingEvent) => void;
}

export interface HeldOutEvaluation {
  readonly transitions: number;
  /** Share of held-out transitions whose next cluster is the model's top-1 answer. */
  readonly modelTop1: number;
  /** Same for the most-popular-next baseline (the most frequent next cluster in training, not in the history). */
  readonly mostPopularTop1: number;
  /** With `contexts`: the model's top-1 when each prompt carries its retrieved context (the RAG form). */
  readonly modelTop1WithContext?: number;
  /** With `contexts`: serving the first retrieved successor itself (most popular novel cluster where none). */
  readonly successorTop1?: number;
}

export interface PretrainResult {
  readonly modelVersion: string;
  readonly status: ModelVersion["status"];
  readonly modelPath: string;
  readonly training: TrainResult;
  readonly evaluation: HeldOutEvaluation | null;
  readonly trainTokens: number;
  readonly seconds: number;
}

/** Top-1 accuracy of a model and of the most-popular-next baseline on held-out transitions. */
export async function evaluateHeldOut(
  model: LanguageModel,
  training: readonly Transition[],
  heldOut: readonly Transition[],
  signal?: AbortSignal,
  /** The retrieved successors each held-out pair's prompt would carry (a refresh at the start of the held-out days). */
  contexts?: (c1: string, c2: string) => readonly string[] | undefined,
): Promise<HeldOutEvaluation> {
  const known = new Set(model.info.clusters.map((c) => c.id));
  const usable = heldOut.filter((t) => known.has(t.c1) && known.has(t.c2) && known.has(t.next));
  const counts = new Map<string, number>();
  for (const t of training) counts.set(t.next, (counts.get(t.next) ?? 0) + 1);
  const popular = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([c]) => c);
  let baselineHits = 0;
  for (const t of usable) {
    const guess = popular.find((c) => c !== t.c1 && c !== t.c2);
    if (guess === t.next) baselineHits++;
  }
  const ranked = await model.score(
    usable.map((t) => ({ history: { c1: t.c1, c2: t.c2 } })),
    1,
    signal,
  );
  const modelHits = ranked.filter((r, i) => r[0]?.cluster === usable[i].next).length;
  const n = Math.max(usable.length, 1);
  const result = { transitions: usable.length, modelTop1: modelHits / n, mostPopularTop1: baselineHits / n };
  if (!contexts) return result;
  const retrieved = usable.map((t) => contexts(t.c1, t.c2)?.filter((c) => c !== t.c1 && c !== t.c2));
  const withContext = await model.score(
    usable.map((t, i) => (retrieved[i]?.length ? { history: { c1: t.c1, c2: t.c2 }, context: { successors: retrieved[i]! } } : { history: { c1: t.c1, c2: t.c2 } })),
    1,
    signal,
  );
  let contextHits = 0;
  let successorHits = 0;
  usable.forEach((t, i) => {
    if (withContext[i][0]?.cluster === t.next) contextHits++;
    const served = retrieved[i]?.[0] ?? popular.find((c) => c !== t.c1 && c !== t.c2);
    if (served === t.next) successorHits++;
  });
  return { ...result, modelTop1WithContext: contextHits / n, successorTop1: successorHits / n };
}

export async function pretrainBaseModel(options: PretrainOptions): Promise<PretrainResult> {
  const started = process.hrtime.bigint();
  if (options.transitions.length === 0) throw new FreshrecError("BAD_INPUT", "pretraining needs transitions mined before the as-of time");
  const registry = options.registry ?? EmbeddedModelRegistry.open(options.workspace, options.clock);
  try {
    const version = await registry.nextVersion();
    const dir = join(registry.modelsDir, version);
    const titles = (options.items ?? []).filter((i) => i.title && i.title.trim() !== "");
    const catalog: CatalogLine[] = [
      ...options.clusters.map((c) => ({ text: c.description, cluster: c.id })),
      ...titles.slice(0, options.maxCatalogLines ?? 5000).map((i) => ({ text: i.title!, cluster: i.clusterId })),
    ].filter((l) => options.clusters.some((c) => c.id === l.cluster));
    const trainer = new EmbeddedTrainer({
      init: { clusters: options.clusters, extraText: titles.map((i) => i.title!), shape: options.shape },
      engine: options.training?.engine,
      precision: options.training?.precision,
    });
    const modelPath = join(dir, "model.gguf");
    const training = await trainer.train(
      relabelContextSamples(
        options.transitions.map((t) => sampleOf(t, t.context)),
        options.clusters.map((c) => c.id),
        { share: options.relabelShare ?? DEFAULT_RELABEL_SHARE, seed: options.window?.to ?? 0 },
      ),
      {
        outputPath: modelPath,
        checkpointDir: join(dir, "checkpoints"),
        catalog,
        epochs: options.epochs ?? TRAIN_DEFAULTS.epochs,
        keepCheckpoints: options.keepCheckpoints ?? TRAIN_DEFAULTS.keepCheckpoints,
        learningRate: options.learningRate,
        signal: options.signal,
        onProgress: options.onProgress,
      },
    );
    let evaluation: HeldOutEvaluation | null = null;
    if (options.heldOut && options.heldOut.length > 0) {
      const model = await EmbeddedLanguageModel.open(modelPath);
      try {
        evaluation = await evaluateHeldOut(model, options.transitions, options.heldOut, options.signal, options.heldOutContexts);
      } finally {
        await model.close();
      }
    }
    const info = readModelFile(modelPath);
    const registered = await registry.register({
      kind: "base",
      filePath: modelPath,
      window: options.window ?? null,
      trainSamples: training.trainSamples,
      validationSamples: training.validationSamples,
      templateHash: info.templateHash,
      vocabularyHash: info.vocabularyHash,
      metrics: { ...(evaluation ?? {}), bestEpoch: training.bestEpoch, epochs: training.epochs, trainTokens: training.trainTokens },
      reason: "pretrained base model",
    });
    const final =
      (options.makeLiveIfNone ?? true) && !(await registry.live()) ? await registry.makeLive(registered.version, "first model") : registered;
    return {
      modelVersion: final.version,
      status: final.status,
      modelPath,
      training,
      evaluation,
      trainTokens: training.trainTokens,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } finally {
    if (!options.registry) await registry.close();
  }
}
