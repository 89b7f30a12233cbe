/**
 * What the update commands (pretrain, finetune, review, refresh, schedule) share: the stores the config names (the
 * workspace's, or a deployment's database) opened together, the loop settings from the config, and the as-of time rule.
 */
import type { EventStoreContract } from "../data/event-store.js";
import { BadInputError } from "../domain/errors.js";
import { placeModelFile, type ModelRegistryContract, type ModelVersion } from "../llm/registry.js";
import { pretrainBaseModel, type PretrainResult } from "../llm/pretrain.js";
import { REFERENCE_SHAPE } from "../llm/engine/model-file.js";
import { readGgufFile } from "../llm/engine/gguf.js";
import { futureExamples, timedTransitions } from "../mining/transitions.js";
import { contextFor, retrieveContexts, withRetrievedContexts } from "../update/rag.js";
import { EmbeddedLanguageModel } from "../llm/backends/embedded.js";
import { hostedModelName, languageModelBackend, writeHostedModelFile, type LlmBackend } from "../llm/backends/index.js";
import type { Trainer } from "../llm/contracts.js";
import { FreshrecError } from "../domain/errors.js";
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { dirname, extname, join } from "node:path";
import { measureGates } from "../update/finetune.js";
import type { GateOptions, GateResult } from "../update/gates.js";
import { DAY_MS } from "../domain/clock.js";
import type { Cluster, TimeWindow } from "../domain/types.js";
import type { TableStoreContract } from "../tables/index.js";
import { UpdateLoop, type LoopSettings } from "../update/loop.js";
import type { FreshrecConfig } from "./config.js";
import type { CommandContext } from "./context.js";
import { trainingProgress } from "./progress.js";
import { timeOption } from "./run.js";
import { iso } from "./format.js";

export function loopSettings(config: FreshrecConfig, positiveMin: number | null): LoopSettings {
  const f = config.finetune;
  return {
    rag: config.rag,
    curation: {
      windowDays: f.windowDays,
      testDays: f.testDays,
      testUsers: f.testUsers,
      minTestUsers: f.minTestUsers,
      maxSamples: f.maxSamples,
      maxPerPair: f.maxPerPair,
      maxTargetShare: f.maxTargetShare,
      maxPerTriple: f.maxPerTriple,
      contextShare: f.contextShare,
      contextPeriod: f.contextPeriod,
      relabelShare: f.relabelShare,
      rehearsalShare: f.rehearsalShare,
      rehearsalDays: f.rehearsalDays,
    },
    gates: gateOptions(config),
    drift: f.trigger === "drift" ? { minGain: f.driftMinGain, minDays: f.driftMinDays } : null,
    training: { epochs: f.epochs, learningRate: f.learningRate ?? undefined, keepCheckpoints: f.keepCheckpoints },
    tables: config.tables,
    positiveMin,
  };
}

/** The gates' thresholds from the config's `finetune` section. */
export function gateOptions(config: FreshrecConfig): GateOptions {
  const f = config.finetune;
  return { minExactMatchRate: f.minExactMatchRate, minTestRecall: f.minTestRecall, maxRegression: f.maxRegression };
}

/**
 * The as-of time of a command: `--as-of` when given, else "now", but never later than just after the newest event
 * (a workspace of past data, like the synthetic platform, is then treated as if it ran at its end).
 */
export async function resolveAsOf(ctx: CommandContext, events: EventStoreContract, value: string | undefined): Promise<number> {
  const given = timeOption("as-of", value);
  if (given !== undefined) return given;
  const counts = await events.counts();
  if (counts.lastTs === null) throw new BadInputError("the event store is empty: run freshrec ingest, synth or demo first");
  return Math.min(ctx.clock.now(), counts.lastTs + 1);
}

/**
 * Trains a base model on the transitions of the `pretrain.windowDays` before `asOf` (the last `heldOutDays` held out
 * to compare its top-1 with the most-popular-next baseline when `heldOut`), registered in `options.registry` (a
 * deployment's) or else in `workspace`'s registry file; the model file goes under `workspace`'s models folder either way.
 */
export async function trainBaseModel(
  ctx: CommandContext,
  events: EventStoreContract,
  asOf: number,
  workspace: string,
  options: { epochs: number; heldOut: boolean; maxSamples?: number; signal?: AbortSignal; registry?: ModelRegistryContract },
): Promise<{ result: PretrainResult; window: TimeWindow; gates: GateResult | null }> {
  const { windowDays, heldOutDays } = ctx.config.pretrain;
  const maxSamples = Math.min(ctx.config.pretrain.maxSamples, options.maxSamples ?? Infinity);
  if (options.heldOut && heldOutDays >= windowDays) {
    throw new BadInputError(`pretrain.heldOutDays (${heldOutDays}) must be smaller than pretrain.windowDays (${windowDays})`);
  }
  const positiveMin = await ctx.positiveMin(events);
  const split = options.heldOut ? asOf - heldOutDays * DAY_MS : asOf;
  const window = { from: asOf - windowDays * DAY_MS, to: split };
  const mined = (await timedTransitions(events, window, { positiveMin, horizon: 1 })).slice(-maxSamples);
  const transitions = await withRetrievedContexts(events, mined, window, { ...ctx.config.rag, positiveMin }, ctx.config.pretrain.contextShare, asOf);
  if (transitions.length === 0) throw new BadInputError(`no novel transitions between ${iso(window.from)} and ${iso(window.to)} to pretrain on`);
  const heldOut = options.heldOut ? await timedTransitions(events, { from: split, to: asOf }, { positiveMin, horizon: 1 }) : [];
  // The held-out days as a refresh at their start would serve them: one snapshot, nothing from the days themselves.
  const heldOutSnapshot = options.heldOut ? await retrieveContexts(events, split, { ...ctx.config.rag, positiveMin }) : null;
  const clusters = await events.clusters();
  const items = await events.titledItems(20_000);
  ctx.log(
    `pretraining on ${transitions.length} transitions (${transitions.filter((t) => t.context).length} with a retrieved RAG context) of ${iso(window.from).slice(0, 10)}..${iso(window.to).slice(0, 10)}, ${clusters.length} clusters, ${items.length} titled items` +
      (options.heldOut ? `; ${heldOut.length} held-out transitions` : "") +
      `; training engine ${ctx.config.training.engine} (${ctx.config.training.precision} products)`,
  );
  const result = await pretrainBaseModel({
    workspace,
    registry: options.registry,
    clock: ctx.clock,
    clusters,
    items,
    transitions,
    heldOut,
    heldOutContexts: heldOutSnapshot ? (c1, c2) => contextFor(heldOutSnapshot, c1, c2)?.successors : undefined,
    window,
    relabelShare: ctx.config.pretrain.relabelShare,
    epochs: options.epochs,
    keepCheckpoints: ctx.config.pretrain.keepCheckpoints,
    shape: { ...REFERENCE_SHAPE, ...ctx.config.model },
    training: ctx.config.training,
    signal: options.signal ?? ctx.signal,
    onProgress: trainingProgress(ctx.progress, ctx.log, "pretraining"),
  });
  // The base model faces the same gates a fine-tune does, on the held-out days: it goes live anyway (there is
  // nothing to fall back to), but the user sees at once whether the next fine-tune has a bar it can pass.
  let gates: GateResult | null = null;
  if (options.heldOut) {
    const test = await futureExamples(events, { from: split, to: asOf }, { positiveMin });
    if (test.length > 0) {
      gates = await measureGates(await EmbeddedLanguageModel.open(result.modelPath), { test }, { gates: gateOptions(ctx.config), signal: ctx.signal });
    }
  }
  return { result, window, gates };
}

/** The trainer of a backend that cannot change weights: a fine-tune says what to do instead. */
export function cannotTrain(kind: string): Trainer {
  return {
    train: async () => {
      throw new FreshrecError(
        "BAD_CONFIG",
        `llm.backend "${kind}" cannot fine-tune here: fine-tune elsewhere and gate the result with freshrec finetune --model FILE (a LoRA adapter or a GGUF)`,
      );
    },
  };
}

/**
 * The "trainer" of `finetune --model`: a model fine-tuned elsewhere (a LoRA adapter for llm.gguf.modelPath, a GGUF, a
 * freshrec model file, or for the openai backend a model name on the server) becomes the candidate, so it goes
 * through the same curation (for the test slice), gates and registration as a model trained here.
 */
export function deliveredModel(model: string, llm: FreshrecConfig["llm"]): Trainer {
  const isFile = existsSync(model);
  if (!isFile && llm.backend !== "openai") throw new BadInputError(`--model: ${model} does not exist (a model file: a GGUF, a LoRA adapter, a freshrec model)`);
  // The file must be what the configured backend opens, or the gates would silently measure another model.
  if (isFile && llm.backend === "openai") {
    try {
      hostedModelName(model);
    } catch {
      throw new BadInputError(`--model: ${model} is not a hosted-model file (llm.backend openai takes a model name on the server, or the .json file a hosted fine-tune writes)`);
    }
  }
  if (isFile && llm.backend !== "openai") {
    try {
      readGgufFile(model);
    } catch (error) {
      throw new BadInputError(`--model: ${model} is not a GGUF file (llm.backend ${llm.backend} takes a GGUF model${llm.backend === "gguf" ? " or LoRA adapter" : " written by freshrec"}): ${(error as Error).message}`);
    }
  }

  return {
    modelFileExtension: isFile ? (extname(model) || ".gguf") : ".json",
    delivers: true,
    train: async (_samples, options) => {
      mkdirSync(dirname(options.outputPath), { recursive: true });
      if (isFile) copyFileSync(model, options.outputPath);
      else writeHostedModelFile(options.outputPath, { baseURL: llm.openai.baseURL, model });
      return { modelPath: options.outputPath, epochs: [], bestEpoch: 0, stoppedEarly: false, trainTokens: 0, tokensPerSecond: 0, seconds: 0, trainSamples: 0, validationSamples: 0 };
    },
  };
}

/**
 * `pretrain` for a backend that is not the embedded one: the configured model (a GGUF file, or a model on an
 * OpenAI-compatible server) becomes the base version, registered like a trained one, live when nothing is.
 */
export async function registerConfiguredBase(ctx: CommandContext): Promise<{ version: string; status: string; filePath: string; backend: string }> {
  // The registry the config names: the workspace's, or with store.url the deployment's database (the model-reference
  // file of a server model goes under this workspace's models folder, which the database records relative to it).
  const registry = await ctx.openRegistry();
  try {
    const version = await registry.nextVersion();
    let filePath = configuredModelFile(ctx, registry.modelsDir, version);
    if (ctx.config.store.url !== null && ctx.config.llm.backend === "gguf") {
      // A shared registry records files relative to the models folder every host has (postgres-registry.ts), so the
      // user's GGUF is placed there, linked when the filesystem allows and copied otherwise.
      if (!existsSync(filePath)) throw new BadInputError(`field "llm.gguf.modelPath": ${filePath} does not exist`);
      filePath = placeModelFile(filePath, join(registry.modelsDir, version, "model.gguf"));
    }
    const registered = await registry.register({ kind: "base", filePath, reason: `the configured ${ctx.config.llm.backend} model` });
    const final = (await registry.live()) ? registered : await registry.makeLive(registered.version, "first model");
    return { version: final.version, status: final.status, filePath, backend: ctx.config.llm.backend };
  } finally {
    await registry.close();
  }
}

/**
 * The file that stands for the configured model of a non-embedded backend in a registry: the GGUF itself, or for a
 * server model a small model-reference file written into `dir` (what hosted fine-tunes produce too).
 */
export function configuredModelFile(ctx: CommandContext, dir: string, name: string): string {
  const llm = ctx.config.llm;
  if (llm.backend === "gguf") {
    if (!llm.gguf.modelPath) throw new BadInputError('field "llm.gguf.modelPath": got null; expected the GGUF file of the gguf backend');
    return llm.gguf.modelPath;
  }
  if (!llm.openai.model) throw new BadInputError('field "llm.openai.model": got null; expected the model name on the server');
  const file = join(dir, `${name}-hosted.json`);
  mkdirSync(dir, { recursive: true });
  writeHostedModelFile(file, { baseURL: llm.openai.baseURL, model: llm.openai.model });
  return file;
}

/**
 * The live model version of the registry the config names and its file (checked against its registered sha256), or
 * null when no model is live; the registry is closed again.
 */
export async function liveModelFile(ctx: CommandContext): Promise<{ readonly live: ModelVersion; readonly file: string } | null> {
  const registry = await ctx.openRegistry();
  try {
    const live = await registry.live();
    return live ? { live, file: await registry.modelFile(live) } : null;
  } finally {
    await registry.close();
  }
}

/**
 * The language-model backend the config names (`llm.backend`: embedded, gguf or openai), answering with `clusters`
 * (the event store's): what every command opens model versions with and trains through, so that no command
 * silently scores with another backend than the configured one.
 */
export function configuredBackend(ctx: CommandContext, clusters: readonly Cluster[]): LlmBackend {
  return languageModelBackend(ctx.config.llm, { clusters, workspace: ctx.paths.root, responseCache: ctx.openResponseCache, clock: ctx.clock, training: ctx.config.training });
}

export interface OpenLoop {
  readonly events: EventStoreContract;
  readonly tables: TableStoreContract;
  readonly registry: ModelRegistryContract;
  readonly loop: UpdateLoop;
  readonly positiveMin: number | null;
  readonly clusters: readonly string[];
  close(): Promise<void>;
}

/**
 * Opens the event store, table store and model registry the config names (the workspace's files, or with `store.url`
 * the deployment's database) and the loop over them.
 */
export async function openLoop(ctx: CommandContext, overrides: { trainer?: Trainer } = {}): Promise<OpenLoop> {
  const opened: { close(): unknown }[] = [];
  try {
    const events = await ctx.openEventStore();
    opened.push(events);
    const tables = await ctx.openTableStore();
    opened.push(tables);
    const registry = await ctx.openRegistry();
    opened.push(registry);
    return await loopOver(ctx, overrides, events, tables, registry);
  } catch (error) {
    // A failure here (an unreachable database, a bad backend setting) leaves no store open: an open PostgreSQL pool
    // would keep the command's process from exiting.
    for (const store of opened.reverse()) await store.close();
    throw error;
  }
}

async function loopOver(ctx: CommandContext, overrides: { trainer?: Trainer }, events: EventStoreContract, tables: TableStoreContract, registry: ModelRegistryContract): Promise<OpenLoop> {
  const positiveMin = await ctx.positiveMin(events);
  const catalog = await events.clusters();
  const clusters = catalog.map((c) => c.id);
  // The configured backend opens model versions and trains new ones: the loop is the same for every backend.
  const backend = configuredBackend(ctx, catalog);
  const loop = new UpdateLoop({
    events,
    tables,
    registry,
    clusters,
    openModel: (path) => backend.openModel(path),
    trainer: overrides.trainer ?? backend.trainer() ?? cannotTrain(backend.kind),
    settings: loopSettings(ctx.config, positiveMin),
    progress: ctx.progress,
    onTraining: trainingProgress(ctx.progress, ctx.log, "fine-tuning"),
  });
  return {
    events,
    tables,
    registry,
    loop,
    positiveMin,
    clusters,
    close: async () => {
      await loop.close();
      await registry.close();
      await tables.close();
      await events.close();
    },
  };
}
