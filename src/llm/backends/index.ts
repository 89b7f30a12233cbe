/**
 * The backend factory: the config's `llm` section turned into what the update loop needs, `openModel(path)` for a
 * model version's file and the `Trainer` that makes new versions. Switching backends is a config change only.
 *
 * What a model version's file means per backend:
 * - embedded: a freshrec model file (trained here).
 * - gguf: a GGUF whose `general.type` is "adapter" is a LoRA adapter applied on top of `llm.gguf.modelPath`
 *   (a fine-tune delivered as an adapter); any other GGUF is opened as the model itself; `llm.gguf.modelPath` alone
 *   when no version exists yet.
 * - openai: a hosted-model file (written by hosted fine-tuning, or by `pretrain` for the configured model) names the
 *   model on the server; a missing file or any other file is an error naming it (HostedModelFileError). Only
 *   `openModel(null)` means the configured `llm.openai.model`.
 *
 * @example
 * const backend = languageModelBackend(config.llm, { clusters, workspace: paths.root });
 * const model = await backend.openModel(registry.live()?.filePath ?? null);
 */
import { join } from "node:path";
import { SystemClock, type Clock } from "../../domain/clock.js";
import { FreshrecError } from "../../domain/errors.js";
import type { Cluster } from "../../domain/types.js";
import type { LanguageModel, Trainer } from "../contracts.js";
import { ggufValue, readGgufFile } from "../engine/gguf.js";
import { EmbeddedTrainer, type EmbeddedTrainerOptions } from "../engine/trainer.js";
import { EmbeddedLanguageModel } from "./embedded.js";
import { GgufLanguageModel } from "./gguf.js";
import { type AnswerMode, type EchoTemplate, OpenAiLanguageModel, type RankingOption, readHostedModelFile } from "./openai.js";
import { OpenAiTrainer } from "./openai-trainer.js";
import { sqliteResponseCache, type ResponseCacheOpener } from "./response-cache.js";

export { EmbeddedLanguageModel } from "./embedded.js";
export { GgufLanguageModel, type GgufModelOptions } from "./gguf.js";
export {
  OpenAiLanguageModel,
  type OpenAiModelOptions,
  type OpenAiConnectionOptions,
  type BatchSettings,
  type CostEstimate,
  type AnswerMode,
  type RankingMethod,
  type RankingOption,
  type RankingInfo,
  type EchoTemplate,
  RankingUnsupportedError,
  hostedModelName,
  readHostedModelFile,
  writeHostedModelFile,
  openAiClient,
  resolveApiKey,
  resolveRanking,
  remoteError,
  MissingApiKeyError,
  HostedModelFileError,
} from "./openai.js";
export { OpenAiTrainer, type OpenAiTrainerOptions } from "./openai-trainer.js";
export { PostgresResponseCache } from "./postgres-response-cache.js";
export { type ResponseCacheContract, type ResponseCacheOpener, SqliteResponseCache, sqliteResponseCache, responseCacheKey } from "./response-cache.js";
export { RequestPacer, type RequestPacerOptions } from "./request-pacer.js";

export type BackendKind = "embedded" | "gguf" | "openai";

/** The config's `llm` section (src/cli/config.ts documents each field). */
export interface LlmBackendSettings {
  readonly backend: BackendKind;
  readonly gguf: {
    readonly modelPath: string | null;
    readonly loraAdapters: readonly { readonly path: string; readonly scale: number }[];
    readonly contextSize: number;
  };
  readonly openai: {
    readonly baseURL: string;
    readonly model: string | null;
    /** Variable holding the API key, which must then be set; null declares a server that takes no key. */
    readonly apiKeyEnv: string | null;
    readonly answer: AnswerMode;
    readonly topLogprobs: number;
    readonly concurrency: number;
    readonly requestsPerMinute: number | null;
    readonly tokensPerMinute: number | null;
    readonly maxRetries: number;
    readonly timeoutMs: number;
    readonly maxTokens: number;
    readonly seed: number;
    readonly cache: boolean;
    readonly inputPricePerMTok: number | null;
    readonly outputPricePerMTok: number | null;
    readonly fineTuneModel: string | null;
    readonly fineTunePollMs: number;
    readonly batch: { readonly enabled: boolean; readonly minPrompts: number; readonly pollIntervalMs: number; readonly maxRequestsPerBatch: number; readonly priceFactor: number };
    /** How scores are computed (OpenAiModelOptions.ranking); absent is "auto" (echo except on OpenAI's own API). */
    readonly ranking?: RankingOption;
    /** The texts "echo" ranking scores answers in (OpenAiModelOptions.echoTemplate). */
    readonly echoTemplate?: EchoTemplate;
  };
}

export interface BackendContext {
  /** The clusters answers are chosen from (the event store's); the embedded backend reads them from its file. */
  readonly clusters: readonly Cluster[];
  /** The workspace folder (the openai response cache lives there unless `responseCache` says otherwise). */
  readonly workspace: string;
  /** Opens the openai backend's response cache (the deployment's database with store.url); absent: the workspace's file. */
  readonly responseCache?: ResponseCacheOpener;
  readonly clock?: Clock;
  /** How the embedded backend trains (the config's `training` section). @defaultValue engine v2, f32 products */
  readonly training?: Pick<EmbeddedTrainerOptions, "engine" | "precision">;
}

export interface LlmBackend {
  readonly kind: BackendKind;
  /** Opens a model version's file (module comment); null = the backend's configured base model. */
  openModel(path: string | null): Promise<LanguageModel>;
  /** The trainer that makes new versions; null when the backend cannot train (gguf: deliver adapters instead). */
  trainer(): Trainer | null;
  /** One line saying what the backend talks to. */
  readonly description: string;
}

/** The response cache file of the openai backend in a workspace. */
export function responseCachePath(workspace: string): string {
  return join(workspace, "llm-cache.sqlite");
}

export function languageModelBackend(settings: LlmBackendSettings, context: BackendContext): LlmBackend {
  switch (settings.backend) {
    case "embedded":
      return {
        kind: "embedded",
        description: "embedded freshrec model (llama.cpp through FFI)",
        openModel: async (path) => {
          if (path === null) throw new FreshrecError("NOT_FOUND", "no model yet: run freshrec pretrain (or demo) first");
          return EmbeddedLanguageModel.open(path);
        },
        trainer: () => new EmbeddedTrainer({ engine: context.training?.engine, precision: context.training?.precision }),
      };
    case "gguf": {
      const g = settings.gguf;
      const base = g.modelPath;
      if (base === null) throw new FreshrecError("BAD_CONFIG", 'field "llm.gguf.modelPath": got null; expected the GGUF file of the gguf backend');
      return {
        kind: "gguf",
        description: `gguf ${base}${g.loraAdapters.length ? ` + ${g.loraAdapters.length} LoRA adapter(s)` : ""} (node-llama-cpp)`,
        openModel: async (path) => {
          const adapters = g.loraAdapters.map((a) => ({ path: a.path, scale: a.scale }));
          let modelPath = base;
          if (path !== null && path !== base) {
            if (ggufValue(readGgufFile(path), "general.type") === "adapter") adapters.push({ path, scale: 1 });
            else modelPath = path;
          }
          return GgufLanguageModel.open({ modelPath, clusters: context.clusters, loraAdapters: adapters, contextSize: g.contextSize });
        },
        trainer: () => null,
      };
    }
    case "openai": {
      const o = settings.openai;
      const model = o.model;
      if (model === null) throw new FreshrecError("BAD_CONFIG", 'field "llm.openai.model": got null; expected the model name on the server');
      const connection = { baseURL: o.baseURL, apiKeyEnv: o.apiKeyEnv, maxRetries: o.maxRetries, timeoutMs: o.timeoutMs };
      return {
        kind: "openai",
        description: `openai-compatible ${o.baseURL} model ${model} (${o.answer})`,
        openModel: async (path) => {
          // A version's file must name a model on the server; anything else is an error naming the file, never the
          // configured model served in its place (tables and gates would measure a model the registry does not list).
          const name = path === null ? model : readHostedModelFile(path).model;
          return OpenAiLanguageModel.open({
            ...connection,
            model: name,
            clusters: context.clusters,
            answer: o.answer,
            topLogprobs: o.topLogprobs,
            concurrency: o.concurrency,
            requestsPerMinute: o.requestsPerMinute,
            tokensPerMinute: o.tokensPerMinute,
            maxTokens: o.maxTokens,
            seed: o.seed,
            openCache: o.cache ? (context.responseCache ?? sqliteResponseCache(responseCachePath(context.workspace), context.clock ?? new SystemClock())) : null,
            inputPricePerMTok: o.inputPricePerMTok,
            outputPricePerMTok: o.outputPricePerMTok,
            batch: o.batch.enabled ? o.batch : null,
            ranking: o.ranking,
            echoTemplate: o.echoTemplate,
            clock: context.clock,
          });
        },
        trainer: () =>
          new OpenAiTrainer({ ...connection, model: o.fineTuneModel ?? model, clusters: context.clusters, answer: o.answer, pollIntervalMs: o.fineTunePollMs }),
      };
    }
  }
}
