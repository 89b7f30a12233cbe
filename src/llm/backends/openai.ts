/**
 * The `openai` backend: any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, llama.cpp server,
 * `freshrec llm serve`) through the official `openai` client.
 *
 * Every chat request (answers, and first-token ranking) is the same chat: a system message that lists the cluster
 * descriptions (identical for all pairs, so servers with prefix caching reuse it) and the user message
 * `renderPrompt(prompt)`, at temperature 0 with a fixed seed, asking for `logprobs` with `topLogprobs` alternatives. The answer is constrained by `answer`:
 * - `json_schema` (default): `response_format` json_schema `{ cluster: enum of descriptions }` (OpenAI structured
 *   outputs, vLLM, Ollama); the answer is the `cluster` field.
 * - `guided_choice`: vLLM's extension, the answer is one description as plain text.
 * - `text`: no constraint. The text maps to a cluster only when it equals a description exactly (after trimming);
 *   anything else is an exact-match failure (`cluster: null`), which is what the exact-match gate measures.
 *
 * **Ranking (`score`, top-n with probabilities)** is by one of two methods; `info.ranking` says which, and whether
 * it is exact. `ranking: "auto"` (the default) picks by `baseURL`: "first-token" for OpenAI's own API (a host under
 * openai.com), which cannot echo, and "echo" for every other server. It is decided from the URL alone, once, when
 * the model opens: a server that turns out not to echo is a RankingUnsupportedError naming the fix (set "first-token"),
 * never a silent switch to the approximate method.
 * - `ranking: "echo"` (exact): for each prompt one POST /v1/completions request whose `prompt` is a list
 *   of texts, one per cluster: freshrec's prompt followed by that cluster's answer (`echoTemplate`; by default
 *   `"{prompt} {answer}"`), with `echo: true, logprobs: 1, max_tokens: 0`. The server returns every token of each
 *   text with its log-probability; a cluster's score is the sum over the tokens of its answer, as the server's own
 *   tokenizer splits it, so descriptions of several tokens, and descriptions sharing their first tokens, each get the
 *   probability of their whole text. The history's clusters are left out and the rest softmaxed: the model's
 *   probability of each answer given that it answers with one of them. Where a tokenizer merges across the answer's
 *   start, or texts' tokenizations differ earlier, the sums start at the first token that differs, which keeps them
 *   exact. A description that begins another ("drama" / "drama history") would also collect the longer one's
 *   probability, so such a cluster set needs a terminator after `{answer}` (the model's end-of-turn token) and is
 *   refused without one. Servers: vLLM serves echo with prompt log-probabilities (since 0.2.4), and so does
 *   `freshrec llm serve`; OpenAI's hosted models do not (chat models have no completions route, and its completion
 *   model refuses echo with logprobs), nor do Ollama or llama.cpp's server (which refuses echo, or in some builds
 *   returns log-probabilities of generated tokens only). A server that answers without the echoed answers'
 *   log-probabilities is a RankingUnsupportedError, never a ranking. The texts are read without a chat template
 *   unless `echoTemplate` supplies one, and each request bills the prompt once per cluster.
 * - `ranking: "first-token"` (approximate, for servers without echo): the chat request's log-probabilities of the
 *   first token of the answer (found in the content after any JSON prefix). Each alternative token at that position
 *   is credited to the candidate descriptions that begin with its text (split evenly when several do), the
 *   history's clusters are left out, and the masses are renormalised over the candidates found. Exact only when
 *   every description begins with a distinct token (`freshrec llm serve`, whose model sees one token per cluster);
 *   descriptions sharing their first token share its mass, and only `topLogprobs` (at most 20) alternatives come
 *   back, so a ranking has at most that many answers. A server that returns no logprobs is a
 *   RankingUnsupportedError (a ranking of the answer alone would look like a certain model).
 * `generate` always asks the chat route under the answer constraint.
 *
 * API keys: the key comes from the environment variable `apiKeyEnv` names, and an unset variable is an error
 * (MissingApiKeyError) when the model or trainer is opened; a server that takes no key is declared with
 * `apiKeyEnv: null`, and then no Authorization header is sent. There is no placeholder key.
 *
 * Costs: one request per prompt, kept in a response cache keyed by the request's hash (the workspace's SQLite file
 * or the deployment's database, whichever `openCache` opens: ./response-cache.ts), so an unchanged pair is
 * never paid twice (and with first-token ranking, `generate` after `score` on the same prompt is free: it is the same
 * request). `estimateCost` prices a build before it runs. Requests are paced (`RequestPacer`)
 * and retried by the client on 408/409/429/5xx and connection errors with exponential backoff (0.5 s doubling to
 * 8 s, or the server's retry-after).
 *
 * **Batch API** (`batch`): a table build then hands over all its uncached prompts in one call, and when there are at
 * least `minPrompts` of them they go as JSONL files through `/v1/files` + `/v1/batches` (half price on OpenAI,
 * answers within 24 h) instead of one request each, to the ranking's endpoint; the same cache receives the answers,
 * so the ranking is the same as request by request (`askInBatches` says how interruptions, failed lines and
 * cancellation are handled).
 *
 * @example
 * const model = await OpenAiLanguageModel.open({ baseURL: "http://127.0.0.1:8081/v1", model: "m000001", clusters, apiKeyEnv: null });
 * model.info.ranking; // { method: "echo", configured: "auto", exact: true, ... }
 * const [ranked] = await model.score([{ history: { c1: "baking", c2: "hiking" } }], 10);
 * await model.close();
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import OpenAI, { toFile } from "openai";
import { SystemClock, type Clock } from "../../domain/clock.js";
import { FreshrecError } from "../../domain/errors.js";
import { OPENAI_DEFAULTS } from "./backend-defaults.js";
import type { Cluster, ScoredCluster } from "../../domain/types.js";
import type { AnswerConstraint, CostEstimate, GeneratedAnswer, LanguageModel, LanguageModelInfo, PromptInput, ScoreOptions } from "../contracts.js";

export type { CostEstimate } from "../contracts.js";
import { PROMPT_TEMPLATE_HASH, renderPrompt } from "../prompt.js";
import { RequestPacer } from "./request-pacer.js";
import { type ResponseCacheContract, type ResponseCacheOpener, responseCacheKey } from "./response-cache.js";

export type AnswerMode = "json_schema" | "guided_choice" | "text";

/** What each answer mode does to `generate`'s answers (`info.answers`): only plain text can miss every cluster. */
const ANSWER_CONSTRAINTS: Readonly<Record<AnswerMode, AnswerConstraint>> = {
  json_schema: { kind: "constrained", how: "structured output: a JSON schema whose cluster field is an enum of the descriptions" },
  guided_choice: { kind: "constrained", how: "vLLM guided_choice over the descriptions" },
  text: { kind: "free-text", how: "plain text, a cluster only when it equals a description exactly" },
};

export interface OpenAiConnectionOptions {
  /** Base URL with /v1, e.g. http://127.0.0.1:8000/v1. */
  readonly baseURL: string;
  /** The API key itself (scripts and tests); configs name an environment variable instead (`apiKeyEnv`). */
  readonly apiKey?: string;
  /**
   * Environment variable holding the API key. It must be set (non-empty) unless this is null, which declares a
   * server that takes no key (a local vLLM, Ollama or `freshrec llm serve`): then no Authorization header is sent at
   * all. There is no implicit keyless mode: an unset variable is a MissingApiKeyError, never a placeholder key.
   * @defaultValue "OPENAI_API_KEY"
   */
  readonly apiKeyEnv?: string | null;
  /** Retries on 408/409/429/5xx and connection errors (exponential backoff). @defaultValue 5 */
  readonly maxRetries?: number;
  /** @defaultValue 60_000 */
  readonly timeoutMs?: number;
}

export interface OpenAiModelOptions extends OpenAiConnectionOptions {
  /** Model name, or a hosted-model file written by OpenAiTrainer (see `hostedModelName`). */
  readonly model: string;
  /** The clusters the model answers with (the event store's). */
  readonly clusters: readonly Cluster[];
  /** @defaultValue "json_schema" */
  readonly answer?: AnswerMode;
  /** Alternatives per answer token (OpenAI allows 1..20). @defaultValue 20 */
  readonly topLogprobs?: number;
  /** @defaultValue 4 */
  readonly concurrency?: number;
  /** @defaultValue null (no limit) */
  readonly requestsPerMinute?: number | null;
  /** @defaultValue null (no limit) */
  readonly tokensPerMinute?: number | null;
  /** Answer budget per request. @defaultValue 64 */
  readonly maxTokens?: number;
  /** Sampling temperature; anything but 0 makes answers vary and is for experiments only. @defaultValue 0 */
  readonly temperature?: number;
  /** @defaultValue 1 */
  readonly seed?: number;
  /**
   * Opens the response cache: a SQLite file (`sqliteResponseCache`) or the deployment's database with store.url;
   * null disables it. @defaultValue null
   */
  readonly openCache?: ResponseCacheOpener | null;
  /** Prices per million tokens, for `estimateCost`. @defaultValue null (unknown) */
  readonly inputPricePerMTok?: number | null;
  readonly outputPricePerMTok?: number | null;
  /** Table builds through the OpenAI Batch API (module comment); null sends every prompt as its own request. @defaultValue null */
  readonly batch?: BatchSettings | null;
  /**
   * How `score` ranks clusters (module comment): "echo", each description's whole-answer probability through
   * POST /v1/completions (exact; vLLM, freshrec llm serve), or "first-token", the first answer token's chat
   * `top_logprobs` (approximate; for servers without prompt log-probabilities: OpenAI's hosted models, Ollama,
   * llama.cpp's server), or "auto": "first-token" when `baseURL` is OpenAI's own API, "echo" otherwise
   * (`resolveRanking`). @defaultValue "auto"
   */
  readonly ranking?: RankingOption;
  /** The text an answer is scored in under "echo" (unused by "first-token"). @defaultValue { prompt: "{prompt}", answer: " {answer}" } */
  readonly echoTemplate?: EchoTemplate;
  /** @defaultValue the system clock */
  readonly clock?: Clock;
}

/** The method a model ranks with (`info.ranking.method`). */
export type RankingMethod = "echo" | "first-token";
/** What a configuration may ask for: a method, or "auto" (`resolveRanking`). */
export type RankingOption = RankingMethod | "auto";

/**
 * What "echo" ranking sends for a prompt and a candidate: `prompt` + `answer`, and the answer's tokens are scored.
 * A chat model served by vLLM can be given its chat template here, e.g. for ChatML
 * `{ prompt: "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
 * answer: "{answer}<|im_end|>" }`: where the server's tokenizer reads special tokens written in text (Hugging Face
 * tokenizers, which vLLM uses, do), the answer is then scored as the model writes it in a chat turn, its end-of-turn
 * token included.
 */
export interface EchoTemplate {
  /** Text before the answer: `{prompt}` is freshrec's prompt, `{system}` the instructions chat requests carry. */
  readonly prompt?: string;
  /**
   * The answer as written after it: `{answer}` is the description. Text after `{answer}` (an end-of-turn token)
   * terminates the answer; without it a description that begins another ("drama", "drama history") would also
   * collect the longer one's probability, so such cluster sets are refused.
   */
  readonly answer?: string;
}

/** Which method ranked a model's clusters, as `info.ranking` reports it. */
export interface RankingInfo {
  readonly method: RankingMethod;
  /** What the options asked for: the method itself, or "auto" (which chose `method` from the base URL). */
  readonly configured: RankingOption;
  /** True when each score is the whole answer's probability, normalised over the allowed clusters. */
  readonly exact: boolean;
  readonly detail: string;
}

/** The server cannot rank the way the model was configured to (no prompt log-probabilities, no logprobs at all). */
export class RankingUnsupportedError extends FreshrecError {
  override name = "RankingUnsupportedError";
  constructor(
    readonly baseURL: string,
    readonly method: RankingMethod,
    why: string,
  ) {
    super(
      "ENGINE",
      method === "echo"
        ? `${baseURL} cannot rank by whole answers: ${why}. Ranking "echo" needs POST /v1/completions with echo and prompt log-probabilities (vLLM, freshrec llm serve); for servers without them (OpenAI's hosted models, Ollama, llama.cpp's server) set ranking "first-token", which is approximate when descriptions share their first token`
        : `${baseURL} cannot rank by first tokens: ${why}`,
    );
  }
}

/** The Batch API option: asynchronous, at half the price on OpenAI, results within `completion_window`. */
export interface BatchSettings {
  /** Calls with fewer uncached prompts than this go as ordinary requests (gates, small refreshes). @defaultValue 1000 */
  readonly minPrompts?: number;
  /** How often a running batch is polled. @defaultValue 30_000 */
  readonly pollIntervalMs?: number;
  /** OpenAI's limit is 50,000 requests (and 200 MB) per batch; larger builds are split. @defaultValue 50_000 */
  readonly maxRequestsPerBatch?: number;
  /** The batch price relative to the per-request price, for `estimateCost`. @defaultValue 0.5 (OpenAI's batch discount) */
  readonly priceFactor?: number;
}

/** Bytes of one batch input file: OpenAI accepts up to 200 MB. */
const MAX_BATCH_BYTES = 190_000_000;

/** The cached part of a chat answer. */
interface RawAnswer {
  readonly content: string;
  readonly logprobs: { token: string; logprob: number; top_logprobs: { token: string; logprob: number }[] }[] | null;
  readonly promptTokens: number;
  readonly completionTokens: number;
}

/** The cached part of an echo answer: per cluster (option order), its answer's summed token log-probability. */
interface EchoAnswer {
  readonly kind: "echo";
  readonly logprobs: readonly number[];
  /** Tokens summed per cluster (the answer's, plus any before it where the texts' tokenizations differ). */
  readonly tokens: readonly number[];
  readonly promptTokens: number;
  readonly completionTokens: number;
}

/** The two requests the backend makes: chat completions (answers, first-token ranking) and echo (exact ranking). */
type Route = "chat" | "echo";
const ENDPOINT: Record<Route, "/v1/chat/completions" | "/v1/completions"> = { chat: "/v1/chat/completions", echo: "/v1/completions" };
type Answer<R extends Route> = R extends "echo" ? EchoAnswer : RawAnswer;

/** The instructions every request carries; also the system message of hosted fine-tuning examples. */
export function systemMessage(clusters: readonly Cluster[]): string {
  return [
    "You predict a user's next novel interest from the two interest clusters they engaged with most recently.",
    "Answer with exactly one of these interest clusters, copied verbatim, and nothing else; never one of the user's two:",
    ...clusters.map((c) => `- ${c.description}`),
  ].join("\n");
}

/** The chat messages of a prompt (and of a fine-tuning example, with the answer appended). */
export function chatMessages(prompt: PromptInput, clusters: readonly Cluster[], descriptions: ReadonlyMap<string, string>): { role: "system" | "user"; content: string }[] {
  return [
    { role: "system", content: systemMessage(clusters) },
    { role: "user", content: renderPrompt(prompt, descriptions) },
  ];
}

/** How an answer is written in each mode (what a fine-tuned model is trained to produce). */
export function answerContent(mode: AnswerMode, description: string): string {
  return mode === "json_schema" ? JSON.stringify({ cluster: description }) : description;
}

const HOSTED_FORMAT = "freshrec-hosted-model";

/**
 * A hosted model has no weights here, so the model registry (which records a file and its sha256 per version)
 * gets a small JSON file naming it: OpenAiTrainer writes one at the requested output path.
 */
export function writeHostedModelFile(path: string, hosted: { baseURL: string; model: string; job?: string }): void {
  writeFileSync(path, `${JSON.stringify({ format: HOSTED_FORMAT, backend: "openai", ...hosted }, null, 2)}\n`);
}

/** A model version's file that the openai backend cannot serve: missing, unreadable, or not a hosted-model file. */
export class HostedModelFileError extends FreshrecError {
  override name = "HostedModelFileError";
  constructor(
    readonly path: string,
    why: string,
    code: "NOT_FOUND" | "BAD_INPUT",
    options?: { cause?: unknown },
  ) {
    super(code, `the openai backend cannot serve the model version file ${path}: ${why}`, options);
  }
}

/**
 * The server model a model version's file names. Strict where `hostedModelName` is lenient: the file must exist and
 * be a hosted-model file, because serving some other model in its place would make every table and gate measure a
 * model the registry does not say is live.
 */
export function readHostedModelFile(path: string): { model: string; baseURL: string | null } {
  if (!existsSync(path)) {
    throw new HostedModelFileError(path, "the file does not exist (moved or deleted? the model registry records it as this version's file)", "NOT_FOUND");
  }
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new HostedModelFileError(path, `the file cannot be read (${(error as Error).message})`, "BAD_INPUT", { cause: error });
  }
  type HostedFile = { format?: unknown; model?: unknown; baseURL?: unknown };
  let parsed: HostedFile | null;
  try {
    parsed = JSON.parse(text) as HostedFile | null;
  } catch {
    parsed = null;
  }
  if (parsed === null || typeof parsed !== "object" || parsed.format !== HOSTED_FORMAT || typeof parsed.model !== "string" || parsed.model === "") {
    throw new HostedModelFileError(
      path,
      "it is not a hosted-model file (a model of another backend? with llm.backend openai a version is a model on the server; register the configured one with freshrec pretrain)",
      "BAD_INPUT",
    );
  }
  return { model: parsed.model, baseURL: typeof parsed.baseURL === "string" ? parsed.baseURL : null };
}

/** The model name a string stands for: the name inside a hosted-model file, or the string itself. */
export function hostedModelName(pathOrName: string): string {
  if (!pathOrName.includes("/") && !pathOrName.endsWith(".json") && !pathOrName.endsWith(".gguf")) return pathOrName;
  if (!existsSync(pathOrName)) return pathOrName;
  try {
    const parsed = JSON.parse(readFileSync(pathOrName, "utf8")) as { format?: string; model?: string };
    if (parsed.format === HOSTED_FORMAT && typeof parsed.model === "string") return parsed.model;
  } catch {
    // not a hosted-model file
  }
  throw new FreshrecError("BAD_INPUT", `${pathOrName} is a file but not a hosted-model file (an openai backend needs a model name)`);
}

/** The API key's environment variable is unset or empty, and the configuration did not declare a keyless server. */
export class MissingApiKeyError extends FreshrecError {
  override name = "MissingApiKeyError";
  constructor(
    /** The variable that should hold the key, or null when a keyless server was declared where a key is required. */
    readonly variable: string | null,
    readonly baseURL: string,
  ) {
    super(
      "BAD_CONFIG",
      variable === null
        ? `llm.openai.apiKeyEnv is null (a server without API keys), but ${baseURL} is OpenAI's API, which always needs a key: name the environment variable holding it`
        : `the environment variable ${variable} (llm.openai.apiKeyEnv) holding the API key for ${baseURL} is not set; set it, or set llm.openai.apiKeyEnv to null if this server takes no key`,
    );
  }
}

/** OpenAI's own API: it has no keyless mode, so declaring one there is a configuration mistake. */
const isOpenAiHost = (baseURL: string): boolean => {
  try {
    return /(^|\.)openai\.com$/i.test(new URL(baseURL).hostname);
  } catch {
    return false;
  }
};

/**
 * The method `ranking` stands for at `baseURL`. "auto" is "first-token" for OpenAI's own API, whose models cannot
 * echo prompt log-probabilities (chat models have no completions route; its completion model refuses echo with
 * logprobs), and "echo" for any other server, where the exact method is worth trying first: vLLM and
 * `freshrec llm serve` support it, and a server that does not (Ollama, llama.cpp's server) fails the first ranking
 * with a RankingUnsupportedError saying to set "first-token".
 */
export function resolveRanking(ranking: RankingOption | undefined, baseURL: string): RankingMethod {
  const option = ranking ?? OPENAI_DEFAULTS.ranking;
  if (option !== "auto") return option;
  return isOpenAiHost(baseURL) ? "first-token" : "echo";
}

/**
 * The API key requests carry: `apiKey`, else the variable `apiKeyEnv` names; null for a declared keyless server
 * (`apiKeyEnv: null`). Anything else is a MissingApiKeyError, raised before any request is made.
 */
export function resolveApiKey(options: OpenAiConnectionOptions): string | null {
  if (options.apiKey !== undefined && options.apiKey !== "") return options.apiKey;
  const variable = options.apiKeyEnv === undefined ? "OPENAI_API_KEY" : options.apiKeyEnv;
  if (variable === null) {
    if (isOpenAiHost(options.baseURL)) throw new MissingApiKeyError(null, options.baseURL);
    return null;
  }
  const value = process.env[variable];
  if (value === undefined || value.trim() === "") throw new MissingApiKeyError(variable, options.baseURL);
  return value;
}

/** The openai client for freshrec: the key `resolveApiKey` finds (none for a declared keyless server). */
export function openAiClient(options: OpenAiConnectionOptions, onHttpRequest?: () => void): OpenAI {
  const apiKey = resolveApiKey(options);
  return new OpenAI({
    baseURL: options.baseURL,
    // The client insists on a credential; for a keyless server the Authorization header is then removed below, so
    // this placeholder never leaves the process.
    apiKey: apiKey ?? "keyless",
    // Never pick up an admin key from the environment and send it to whatever server baseURL names.
    adminAPIKey: null,
    ...(apiKey === null ? { defaultHeaders: { Authorization: null } } : {}),
    maxRetries: options.maxRetries ?? OPENAI_DEFAULTS.maxRetries,
    timeout: options.timeoutMs ?? OPENAI_DEFAULTS.timeoutMs,
    // Counting the HTTP requests the client really sends (retries included) is how retries become visible.
    fetch: (url: string | URL | Request, init?: RequestInit) => {
      onHttpRequest?.();
      return fetch(url, init);
    },
  });
}

/** Waits `ms`, or rejects with CANCELLED as soon as the signal aborts. */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new FreshrecError("CANCELLED", "cancelled"));
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new FreshrecError("CANCELLED", "cancelled"));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** An error of the remote API in freshrec's terms, naming the server and what it said. */
export function remoteError(error: unknown, baseURL: string, what: string): FreshrecError {
  if (error instanceof FreshrecError) return error;
  if (error instanceof OpenAI.APIUserAbortError) return new FreshrecError("CANCELLED", `${what} was cancelled`, { cause: error });
  if (error instanceof OpenAI.APIConnectionError) {
    return new FreshrecError("ENGINE", `${what}: cannot reach ${baseURL} (${(error.cause as Error | undefined)?.message ?? error.message})`, { cause: error });
  }
  if (error instanceof OpenAI.APIError) {
    const hint = error.status === 401 ? " (check the API key's environment variable, llm.openai.apiKeyEnv)" : error.status === 404 ? " (check llm.openai.model and baseURL)" : "";
    return new FreshrecError("ENGINE", `${what}: ${baseURL} answered ${error.status ?? "an error"}: ${error.message}${hint}`, { cause: error });
  }
  return new FreshrecError("ENGINE", `${what}: ${(error as Error)?.message ?? String(error)}`, { cause: error });
}

const estimateTokens = (chars: number) => Math.ceil(chars / 4);

/**
 * An echo template must place the prompt and the answer once each. Without text after the answer, a description
 * that begins another would also be credited with the longer one's probability (its answer text is a prefix of the
 * other's), so that cluster set needs a terminator.
 */
function checkEchoTemplate(template: EchoTemplate | undefined, clusters: readonly Cluster[]): void {
  const prompt = template?.prompt ?? OPENAI_DEFAULTS.echoTemplate.prompt;
  const answer = template?.answer ?? OPENAI_DEFAULTS.echoTemplate.answer;
  const once = (text: string, slot: string) => text.split(slot).length === 2;
  if (!once(prompt, "{prompt}")) throw new FreshrecError("BAD_CONFIG", `echoTemplate.prompt: expected "{prompt}" exactly once, got ${JSON.stringify(prompt)}`);
  if (!once(answer, "{answer}")) throw new FreshrecError("BAD_CONFIG", `echoTemplate.answer: expected "{answer}" exactly once, got ${JSON.stringify(answer)}`);
  if (!answer.endsWith("{answer}")) return;
  const sorted = clusters.map((c) => c.description).sort();
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].startsWith(sorted[i - 1])) {
      throw new FreshrecError(
        "BAD_CONFIG",
        `descriptions ${JSON.stringify(sorted[i - 1])} and ${JSON.stringify(sorted[i])}: the first begins the second, so ranking "echo" would credit the shorter with the longer one's probability; end echoTemplate.answer with what the model writes after an answer (its end-of-turn token) or make the descriptions distinct`,
      );
    }
  }
}

export class OpenAiLanguageModel implements LanguageModel {
  readonly info: LanguageModelInfo & { readonly ranking: RankingInfo };
  /** Requests answered (from the cache or the server), HTTP requests sent (retries included), tokens billed. */
  readonly stats = { requests: 0, cacheHits: 0, httpRequests: 0, promptTokens: 0, completionTokens: 0, batches: 0, batchedRequests: 0 };
  private readonly client: OpenAI;
  private readonly pacer: RequestPacer;
  private readonly cache: ResponseCacheContract | null;
  private readonly descriptions: ReadonlyMap<string, string>;
  private readonly idOf: ReadonlyMap<string, string>;
  private readonly model: string;
  private readonly mode: AnswerMode;
  private readonly system: string;
  /** The answer constraint, the same object in every request body (a build holds many bodies at once). */
  private readonly constraint: unknown;
  private readonly ranking: RankingMethod;
  private readonly echoPrompt: string;
  /** Each cluster's answer text under "echo", in option order. */
  private readonly echoAnswers: readonly string[];

  private constructor(
    private readonly options: OpenAiModelOptions,
    cache: ResponseCacheContract | null,
  ) {
    this.model = hostedModelName(options.model);
    this.mode = options.answer ?? OPENAI_DEFAULTS.answer;
    this.descriptions = new Map(options.clusters.map((c) => [c.id, c.description]));
    const idOf = new Map<string, string>();
    for (const c of options.clusters) {
      const existing = idOf.get(c.description);
      if (existing !== undefined) {
        throw new FreshrecError("BAD_INPUT", `clusters ${JSON.stringify(existing)} and ${JSON.stringify(c.id)} share the description ${JSON.stringify(c.description)}: answers could not be mapped back by exact match`);
      }
      idOf.set(c.description, c.id);
    }
    this.idOf = idOf;
    this.system = systemMessage(options.clusters);
    const all = options.clusters.map((c) => c.description);
    this.constraint =
      this.mode === "guided_choice"
        ? all
        : {
            type: "json_schema",
            json_schema: {
              name: "next_interest",
              strict: true,
              schema: { type: "object", properties: { cluster: { type: "string", enum: all } }, required: ["cluster"], additionalProperties: false },
            },
          };
    this.client = openAiClient(options, () => this.stats.httpRequests++);
    const clock = options.clock ?? new SystemClock();
    this.pacer = new RequestPacer({ concurrency: options.concurrency, requestsPerMinute: options.requestsPerMinute, tokensPerMinute: options.tokensPerMinute }, clock);
    this.cache = cache;
    this.ranking = resolveRanking(options.ranking, options.baseURL);
    this.echoPrompt = options.echoTemplate?.prompt ?? OPENAI_DEFAULTS.echoTemplate.prompt;
    const answerTemplate = options.echoTemplate?.answer ?? OPENAI_DEFAULTS.echoTemplate.answer;
    this.echoAnswers = options.clusters.map((c) => answerTemplate.replace("{answer}", () => c.description));
    this.info = {
      backend: "openai",
      source: `${options.baseURL.replace(/\/+$/, "")}#${this.model}`,
      clusters: [...options.clusters],
      templateHash: PROMPT_TEMPLATE_HASH,
      answers: ANSWER_CONSTRAINTS[this.mode],
      ranking:
        this.ranking === "echo"
          ? {
              method: "echo",
              configured: options.ranking ?? OPENAI_DEFAULTS.ranking,
              exact: true,
              detail:
                "each cluster's answer written after the prompt and echoed by POST /v1/completions with prompt log-probabilities; its tokens' log-probabilities summed, softmax over the allowed clusters",
            }
          : {
              method: "first-token",
              configured: options.ranking ?? OPENAI_DEFAULTS.ranking,
              exact: false,
              detail:
                "the first answer token's top_logprobs of a chat completion, each credited to the descriptions beginning with it (split evenly); exact only when every description is one token of the server's model",
            },
    };
  }

  static async open(options: OpenAiModelOptions): Promise<OpenAiLanguageModel> {
    if (options.clusters.length < 2) throw new FreshrecError("BAD_INPUT", "an openai backend needs at least two clusters");
    const topLogprobs = options.topLogprobs ?? OPENAI_DEFAULTS.topLogprobs;
    if (!Number.isInteger(topLogprobs) || topLogprobs < 1 || topLogprobs > 20) throw new FreshrecError("BAD_INPUT", `topLogprobs: expected an integer 1..20, got ${topLogprobs}`);
    if (resolveRanking(options.ranking, options.baseURL) === "echo") checkEchoTemplate(options.echoTemplate, options.clusters);
    const cache = options.openCache ? await options.openCache() : null;
    try {
      return new OpenAiLanguageModel(options, cache);
    } catch (error) {
      await cache?.close();
      throw error;
    }
  }

  /** With the Batch API a table build hands over all its prompts at once: one batch (or a few) per build. */
  get promptsPerCall(): number | undefined {
    return this.options.batch ? Number.POSITIVE_INFINITY : undefined;
  }

  /** Hit and miss counts of the response cache (zeros without one). */
  get cacheStats(): { hits: number; misses: number } {
    return this.cache ? { ...this.cache.stats } : { hits: 0, misses: 0 };
  }

  /** The request body of a prompt; its hash is the cache key. */
  requestBody(prompt: PromptInput): Record<string, unknown> {
    const body: Record<string, unknown> = {
      model: this.model,
      messages: [
        { role: "system", content: this.system },
        { role: "user", content: renderPrompt(prompt, this.descriptions) },
      ],
      temperature: this.options.temperature ?? 0,
      seed: this.options.seed ?? OPENAI_DEFAULTS.seed,
      max_tokens: this.options.maxTokens ?? OPENAI_DEFAULTS.maxTokens,
      logprobs: true,
      top_logprobs: this.options.topLogprobs ?? OPENAI_DEFAULTS.topLogprobs,
    };
    if (this.mode === "json_schema") body.response_format = this.constraint;
    else if (this.mode === "guided_choice") body.guided_choice = this.constraint;
    return body;
  }

  /**
   * The echo request of a prompt (ranking "echo"): one text per cluster, the prompt then that cluster's answer, all
   * in one request so the server scores the shared prompt once; `max_tokens` 0 asks for no generation.
   */
  echoBody(prompt: PromptInput): Record<string, unknown> {
    const text = this.echoPrompt.replace("{system}", () => this.system).replace("{prompt}", () => renderPrompt(prompt, this.descriptions));
    return {
      model: this.model,
      prompt: this.echoAnswers.map((answer) => text + answer),
      echo: true,
      // 1, not 0: some servers read logprobs 0 as "none".
      logprobs: 1,
      max_tokens: 0,
      temperature: 0,
    };
  }

  /** Prices a build of these prompts before it runs (the requests `score` sends); cached prompts are free. */
  async estimateCost(prompts: readonly PromptInput[]): Promise<CostEstimate> {
    const route: Route = this.ranking === "echo" ? "echo" : "chat";
    let cached = 0;
    let promptTokens = 0;
    let completionTokens = 0;
    const longest = Math.max(...[...this.descriptions.values()].map((d) => d.length));
    const answerTokens = Math.min(this.options.maxTokens ?? OPENAI_DEFAULTS.maxTokens, estimateTokens(answerContent(this.mode, "x".repeat(longest)).length));
    // The constraint is the same object in every body: its size is measured once, not per prompt.
    const constraintChars = this.mode === "json_schema" ? JSON.stringify(this.constraint).length : 0;
    // Free as askAll sends them: prompts already in the cache, and repeats of an earlier prompt of the same call.
    const requests = prompts.map((p) => {
      const body = route === "echo" ? this.echoBody(p) : this.requestBody(p);
      return { body, key: this.keyOf(route, body) };
    });
    const stored = (await this.cache?.hasMany(requests.map((r) => r.key))) ?? new Set<string>();
    const seen = new Set<string>();
    for (const { body, key } of requests) {
      if (seen.has(key) || stored.has(key)) {
        cached++;
        continue;
      }
      seen.add(key);
      if (route === "echo") {
        // Every cluster's text is billed in full: the prompt is repeated once per cluster.
        promptTokens += (body.prompt as string[]).reduce((n, text) => n + estimateTokens(text.length), 0);
      } else {
        promptTokens += estimateTokens((body.messages as { content: string }[]).reduce((n, m) => n + m.content.length, 0) + constraintChars);
        completionTokens += answerTokens;
      }
    }
    const inPrice = this.options.inputPricePerMTok ?? null;
    const outPrice = this.options.outputPricePerMTok ?? null;
    const uncached = prompts.length - cached;
    const batched = this.usesBatch(uncached);
    const factor = batched ? (this.options.batch?.priceFactor ?? OPENAI_DEFAULTS.batch.priceFactor) : 1;
    const usd = inPrice === null || outPrice === null ? null : (factor * (promptTokens * inPrice + completionTokens * outPrice)) / 1e6;
    const sent = route === "echo" ? `completions with echo (${this.echoAnswers.length} texts per prompt)` : "chat completions";
    const via = batched
      ? `batch API, ${sent} (${Math.ceil(uncached / (this.options.batch?.maxRequestsPerBatch ?? OPENAI_DEFAULTS.batch.maxRequestsPerBatch))} batch(es) or more, price x ${factor})`
      : `${sent}, ${this.options.concurrency ?? OPENAI_DEFAULTS.concurrency} at a time`;
    return { prompts: prompts.length, cached, promptTokens, completionTokens, usd, via };
  }

  async score(prompts: readonly PromptInput[], topN: number, signal?: AbortSignal, options: ScoreOptions = {}): Promise<ScoredCluster[][]> {
    const excludeHistory = options.excludeHistory ?? true;
    const excludedOf = (i: number) => (excludeHistory ? new Set([prompts[i].history.c1, prompts[i].history.c2]) : new Set<string>());
    // Bad cluster ids fail before any request is paid for.
    if (this.ranking === "echo") {
      const answers = await this.askAll("echo", prompts.map((p) => this.echoBody(p)), signal, options.onProgress);
      return answers.map((answer, i) => this.rankByAnswers(answer, excludedOf(i)).slice(0, topN));
    }
    const answers = await this.askAll("chat", prompts.map((p) => this.requestBody(p)), signal, options.onProgress);
    return answers.map((raw, i) => this.rankByFirstToken(raw, excludedOf(i)).slice(0, topN));
  }

  async generate(prompt: PromptInput, signal?: AbortSignal): Promise<GeneratedAnswer> {
    const [raw] = await this.askAll("chat", [this.requestBody(prompt)], signal);
    const text = this.answerText(raw.content);
    return { text, cluster: this.idOf.get(text) ?? null };
  }

  async close(): Promise<void> {
    await this.cache?.close();
  }

  private keyOf(route: Route, body: Record<string, unknown>): string {
    const baseURL = this.options.baseURL.replace(/\/+$/, "");
    // Chat keys keep their original form, so response caches written before echo ranking existed stay valid.
    return responseCacheKey(route === "chat" ? { baseURL, body } : { baseURL, endpoint: ENDPOINT[route], body });
  }

  private usesBatch(uncached: number): boolean {
    return this.options.batch != null && uncached > 0 && uncached >= (this.options.batch.minPrompts ?? OPENAI_DEFAULTS.batch.minPrompts);
  }

  /**
   * All requests, answers in input order: cached ones first, then the rest either through the Batch API (when
   * configured and enough are missing) or `concurrency` at a time.
   */
  private async askAll<R extends Route>(route: R, bodies: readonly Record<string, unknown>[], signal?: AbortSignal, onProgress?: (done: number) => void): Promise<Answer<R>[]> {
    // Equal requests (many held-out users share a history) are asked once: paid once, and one batch line each.
    const byKey = new Map<string, { body: Record<string, unknown>; at: number[] }>();
    bodies.forEach((body, i) => {
      const key = this.keyOf(route, body);
      const entry = byKey.get(key);
      if (entry) entry.at.push(i);
      else byKey.set(key, { body, at: [i] });
    });
    const out: Answer<R>[] = new Array(bodies.length);
    const missing: { key: string; body: Record<string, unknown>; at: number[] }[] = [];
    let done = 0;
    // One lookup for the whole call (a table build hands over thousands of prompts), not one per prompt.
    const hits = (await this.cache?.getMany<Answer<R>>([...byKey.keys()])) ?? new Map<string, Answer<R>>();
    for (const [key, entry] of byKey) {
      const hit = hits.get(key);
      if (!hit) {
        missing.push({ key, ...entry });
        continue;
      }
      this.stats.requests++;
      this.stats.cacheHits++;
      for (const i of entry.at) out[i] = hit;
      done += entry.at.length;
    }
    if (done > 0) onProgress?.(done);
    const answered = this.usesBatch(missing.length)
      ? await this.askInBatches(
          route,
          missing.map((m) => m.body),
          missing.map((m) => m.key),
          signal,
          (k) => onProgress?.(done + k),
        )
      : await this.askEach(route, missing.map((m) => m.body), signal, (n) => onProgress?.(done + n));
    missing.forEach((m, k) => {
      for (const i of m.at) out[i] = answered[k];
    });
    onProgress?.(bodies.length);
    return out;
  }

  /** Requests one by one, `concurrency` in flight; `onProgress` hears how many are answered. */
  private async askEach<R extends Route>(route: R, bodies: readonly Record<string, unknown>[], signal: AbortSignal | undefined, onProgress: (done: number) => void): Promise<Answer<R>[]> {
    const out: Answer<R>[] = new Array(bodies.length);
    let next = 0;
    let answered = 0;
    const worker = async () => {
      while (next < bodies.length) {
        const i = next++;
        out[i] = await this.ask(route, bodies[i], signal);
        onProgress(++answered);
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.options.concurrency ?? OPENAI_DEFAULTS.concurrency, bodies.length) }, worker));
    return out;
  }

  /**
   * The Batch API path: the requests as JSONL lines (custom_id = the cache key), split into files of at most
   * `maxRequestsPerBatch` lines and 190 MB, uploaded and submitted together, polled until they end. Each batch is
   * recorded in the response cache under the hash of its lines, so a build that is interrupted (or whose
   * process dies) picks up the batches already running instead of paying for them again. Lines that fail inside a
   * batch, and lines of a batch that expired, are sent again as ordinary requests; a batch that fails as a whole
   * (its file rejected) fails the build with the server's reasons. Cancelling the build cancels its batches.
   */
  private async askInBatches<R extends Route>(
    route: R,
    bodies: readonly Record<string, unknown>[],
    keys: readonly string[],
    signal: AbortSignal | undefined,
    onProgress: (done: number) => void,
  ): Promise<Answer<R>[]> {
    const settings = this.options.batch!;
    const perBatch = settings.maxRequestsPerBatch ?? OPENAI_DEFAULTS.batch.maxRequestsPerBatch;
    const where = `the openai backend's batch (model ${this.model})`;
    const endpoint = ENDPOINT[route];
    const bodyOf = new Map(keys.map((k, i) => [k, bodies[i]]));
    const results = new Map<string, Answer<R>>();
    const running: { id: string; chunk: string; start: number; end: number; done: number }[] = [];
    const retry: number[] = [];
    let finishedBeforeRetry = 0;
    try {
      // Each file's lines are written only when it is submitted: a build's JSONL can be far larger than memory.
      for (let start = 0; start < bodies.length; ) {
        const lines: string[] = [];
        let bytes = 0;
        let end = start;
        while (end < bodies.length && end - start < perBatch) {
          const line = JSON.stringify({ custom_id: keys[end], method: "POST", url: endpoint, body: bodies[end] });
          // Bytes, not characters: descriptions in other scripts take 2-3 bytes a character in the UTF-8 file.
          const size = Buffer.byteLength(line) + 1;
          if (end > start && bytes + size > MAX_BATCH_BYTES) break;
          lines.push(line);
          bytes += size;
          end++;
        }
        const chunk = responseCacheKey(keys.slice(start, end));
        let id = (await this.cache?.batchOf(chunk)) ?? null;
        if (id !== null) {
          // A batch the server no longer knows (deleted, or a restarted local server) is submitted again.
          const earlier = await this.client.batches.retrieve(id, { signal }).catch((error: unknown) => {
            if (error instanceof OpenAI.NotFoundError) return null;
            throw error;
          });
          if (earlier === null || earlier.status === "failed" || earlier.status === "cancelling" || earlier.status === "cancelled") {
            await this.cache?.forgetBatch(chunk);
            id = null;
          }
        }
        if (id === null) {
          const jsonl = Buffer.from(`${lines.join("\n")}\n`);
          const file = await this.client.files.create({ file: await toFile(jsonl, "freshrec-batch.jsonl"), purpose: "batch" }, { signal });
          const batch = await this.client.batches.create(
            { input_file_id: file.id, endpoint, completion_window: "24h", metadata: { freshrec: "table build", requests: String(end - start) } },
            { signal },
          );
          id = batch.id;
          await this.cache?.recordBatch(chunk, id);
          this.stats.batches++;
        }
        running.push({ id, chunk, start, end, done: 0 });
        start = end;
      }
      let finished = 0;
      while (running.length > 0) {
        for (let k = 0; k < running.length; ) {
          const r = running[k];
          const batch = await this.client.batches.retrieve(r.id, { signal });
          r.done = batch.request_counts?.completed ?? 0;
          if (batch.status === "failed" || batch.status === "cancelling" || batch.status === "cancelled") {
            await this.cache?.forgetBatch(r.chunk);
            running.splice(k, 1);
            const reasons = batch.errors?.data?.map((e) => `${e.line ? `line ${e.line}: ` : ""}${e.message ?? e.code ?? ""}`).join("; ");
            throw new FreshrecError("ENGINE", `${where}: batch ${r.id} ${batch.status}${reasons ? `: ${reasons}` : ""}`);
          }
          if (batch.status === "completed" || batch.status === "expired") {
            for (const fileId of [batch.output_file_id, batch.error_file_id]) {
              if (!fileId) continue;
              const text = await (await this.client.files.content(fileId, { signal })).text();
              for (const line of text.split("\n")) if (line.trim() !== "") await this.takeBatchLine(route, line, bodyOf, results);
            }
            for (let i = r.start; i < r.end; i++) {
              if (results.has(keys[i])) finished++;
              else retry.push(i);
            }
            await this.cache?.forgetBatch(r.chunk);
            running.splice(k, 1);
            continue;
          }
          k++;
        }
        onProgress(finished + running.reduce((s, r) => s + r.done, 0));
        if (running.length > 0) await abortableSleep(settings.pollIntervalMs ?? OPENAI_DEFAULTS.batch.pollIntervalMs, signal);
      }
      finishedBeforeRetry = finished;
    } catch (error) {
      if (signal?.aborted) {
        for (const r of running) {
          await this.client.batches.cancel(r.id).catch(() => undefined);
          await this.cache?.forgetBatch(r.chunk).catch(() => undefined);
        }
        throw new FreshrecError("CANCELLED", "the table build's batches were cancelled", { cause: error });
      }
      throw remoteError(error, this.options.baseURL, where);
    }
    // Lines that failed or expired inside a batch go again as ordinary requests (not a second wait for a batch).
    const again = await this.askEach(
      route,
      retry.map((i) => bodies[i]),
      signal,
      (n) => onProgress(finishedBeforeRetry + n),
    );
    retry.forEach((i, k) => results.set(keys[i], again[k]));
    return keys.map((k) => results.get(k)!);
  }

  /** One line of a batch's output or error file: a successful answer is kept (and cached); a failure is left for a retry. */
  private async takeBatchLine<R extends Route>(route: R, line: string, bodyOf: ReadonlyMap<string, Record<string, unknown>>, results: Map<string, Answer<R>>): Promise<void> {
    const parsed = JSON.parse(line) as { custom_id?: string; response?: { status_code?: number; body?: OpenAI.Chat.ChatCompletion | OpenAI.Completions.Completion } | null };
    const body = parsed.response?.body;
    const request = parsed.custom_id === undefined ? undefined : bodyOf.get(parsed.custom_id);
    if (!parsed.custom_id || !request || parsed.response?.status_code !== 200 || !body?.choices?.[0]) return;
    this.stats.requests++;
    this.stats.batchedRequests++;
    const answer = (route === "echo" ? this.echoAnswer(request, body as OpenAI.Completions.Completion) : this.rawAnswer(body as OpenAI.Chat.ChatCompletion)) as Answer<R>;
    await this.cache?.put(parsed.custom_id, answer);
    results.set(parsed.custom_id, answer);
  }

  private rawAnswer(response: OpenAI.Chat.ChatCompletion): RawAnswer {
    const choice = response.choices[0];
    if (!choice) throw new FreshrecError("ENGINE", `${this.options.baseURL} answered without a choice`);
    const raw: RawAnswer = {
      content: choice.message.content ?? "",
      logprobs:
        choice.logprobs?.content?.map((t) => ({ token: t.token, logprob: t.logprob, top_logprobs: (t.top_logprobs ?? []).map((a) => ({ token: a.token, logprob: a.logprob })) })) ?? null,
      promptTokens: response.usage?.prompt_tokens ?? 0,
      completionTokens: response.usage?.completion_tokens ?? 0,
    };
    this.stats.promptTokens += raw.promptTokens;
    this.stats.completionTokens += raw.completionTokens;
    return raw;
  }

  /** One request to the server (askAll has already looked in the cache); the answer is cached. */
  private async ask<R extends Route>(route: R, body: Record<string, unknown>, signal?: AbortSignal): Promise<Answer<R>> {
    if (signal?.aborted) throw new FreshrecError("CANCELLED", "the request was cancelled");
    this.stats.requests++;
    const key = this.keyOf(route, body);
    const where = `the openai backend (model ${this.model})`;
    let answer: Answer<R>;
    if (route === "echo") {
      const estimate = (body.prompt as string[]).reduce((n, text) => n + estimateTokens(text.length), 0);
      let response: OpenAI.Completions.Completion;
      try {
        response = await this.pacer.run(estimate, () => this.client.completions.create(body as unknown as OpenAI.Completions.CompletionCreateParamsNonStreaming, { signal }), signal);
      } catch (error) {
        // A server without the route, or one that refuses echo (llama.cpp's: "Only no echo is supported"), says so.
        if (error instanceof OpenAI.APIError && (error.status === 400 || error.status === 404 || error.status === 422 || error.status === 501) && !/model/i.test(error.message)) {
          throw new RankingUnsupportedError(this.options.baseURL, "echo", `POST /v1/completions answered ${error.status}: ${error.message}`);
        }
        throw remoteError(error, this.options.baseURL, where);
      }
      answer = this.echoAnswer(body, response) as Answer<R>;
    } else {
      const estimate = estimateTokens(JSON.stringify(body.messages).length) + (this.options.maxTokens ?? OPENAI_DEFAULTS.maxTokens);
      let response: OpenAI.Chat.ChatCompletion;
      try {
        response = await this.pacer.run(
          estimate,
          () => this.client.chat.completions.create(body as unknown as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming, { signal }),
          signal,
        );
      } catch (error) {
        throw remoteError(error, this.options.baseURL, where);
      }
      answer = this.rawAnswer(response) as Answer<R>;
    }
    await this.cache?.put(key, answer);
    return answer;
  }

  /**
   * The answers' log-probabilities in an echo response (module comment). Per text, the tokens up to the end of the
   * text are the echoed ones (a server may append generated tokens); summing starts at the first token that reaches
   * into the answer, or earlier where the texts' tokenizations differ, so every text's sum starts after the same
   * tokens and the sums differ exactly by the log-probabilities of what differs. A response without log-
   * probabilities for those tokens (a server that returns them only for generated text) is refused, never ranked.
   */
  private echoAnswer(body: Record<string, unknown>, response: OpenAI.Completions.Completion): EchoAnswer {
    const texts = body.prompt as string[];
    const unsupported = (why: string) => new RankingUnsupportedError(this.options.baseURL, "echo", why);
    const byIndex = new Map(response.choices.map((c) => [c.index, c]));
    const parsed = texts.map((text, i) => {
      const lp = byIndex.get(i)?.logprobs;
      if (!lp?.tokens || !lp.token_logprobs || !lp.text_offset) throw unsupported(`the answer to text ${i} has no token log-probabilities (${byIndex.has(i) ? "logprobs missing" : "no such choice"})`);
      const offsets = lp.text_offset;
      let echoed = 0;
      while (echoed < offsets.length && offsets[echoed] < text.length) echoed++;
      if (echoed === 0) throw unsupported("no prompt tokens came back (log-probabilities of generated tokens only)");
      const boundary = text.length - this.echoAnswers[i].length;
      let start = 0;
      while (start < echoed && (start + 1 < echoed ? offsets[start + 1] : text.length) <= boundary) start++;
      if (start === echoed) throw unsupported(`the echoed tokens of text ${i} do not reach its answer`);
      return { tokens: lp.tokens.slice(0, echoed), logprobs: lp.token_logprobs.slice(0, echoed), start };
    });
    let from = Math.min(...parsed.map((p) => p.start));
    const first = parsed[0].tokens;
    for (const p of parsed) {
      let k = 0;
      while (k < from && p.tokens[k] === first[k]) k++;
      from = k;
    }
    const logprobs = parsed.map((p, i) => {
      let sum = 0;
      for (let k = from; k < p.logprobs.length; k++) {
        const x = p.logprobs[k];
        if (typeof x !== "number" || !Number.isFinite(x)) throw unsupported(`token ${k} of text ${i} (${JSON.stringify(p.tokens[k])}) came back without a log-probability`);
        sum += x;
      }
      return sum;
    });
    const answer: EchoAnswer = {
      kind: "echo",
      logprobs,
      tokens: parsed.map((p) => p.logprobs.length - from),
      promptTokens: response.usage?.prompt_tokens ?? 0,
      completionTokens: response.usage?.completion_tokens ?? 0,
    };
    this.stats.promptTokens += answer.promptTokens;
    this.stats.completionTokens += answer.completionTokens;
    return answer;
  }

  /** The answer's text: the `cluster` field under json_schema (the raw text when it is not that JSON), else the text. */
  private answerText(content: string): string {
    const text = content.trim();
    if (this.mode !== "json_schema") return text;
    try {
      const parsed = JSON.parse(text) as { cluster?: unknown };
      if (typeof parsed?.cluster === "string") return parsed.cluster.trim();
    } catch {
      // not JSON: an exact-match failure unless the text itself is a description
    }
    return text;
  }

  /** Clusters ranked by their whole answers' probabilities (softmax over the allowed ones), ties by cluster order. */
  private rankByAnswers(answer: EchoAnswer, excluded: ReadonlySet<string>): ScoredCluster[] {
    const clusters = this.options.clusters;
    const allowed = clusters.map((c, k) => ({ cluster: c.id, logprob: answer.logprobs[k], k })).filter((c) => !excluded.has(c.cluster));
    const max = Math.max(...allowed.map((c) => c.logprob));
    const weights = allowed.map((c) => Math.exp(c.logprob - max));
    const sum = weights.reduce((a, w) => a + w, 0);
    return allowed
      .map((c, j) => ({ cluster: c.cluster, score: weights[j] / sum, k: c.k }))
      .filter((c) => c.score > 0)
      .sort((a, b) => b.score - a.score || a.k - b.k)
      .map(({ cluster, score }) => ({ cluster, score }));
  }

  /** Candidates ranked by the first answer token's alternatives (module comment), best first, ties by cluster order. */
  private rankByFirstToken(raw: RawAnswer, excluded: ReadonlySet<string>): ScoredCluster[] {
    const clusters = this.options.clusters;
    const mass = new Map<string, number>();
    const text = this.answerText(raw.content);
    // A ranking from the answer alone would look like a confident model; a server without logprobs cannot rank.
    if (raw.logprobs === null) throw new RankingUnsupportedError(this.options.baseURL, "first-token", "the chat completion came back without logprobs (does the server support logprobs and top_logprobs?)");
    const tokens = raw.logprobs;
    let start = text === "" ? -1 : raw.content.indexOf(this.mode === "json_schema" ? JSON.stringify(text).slice(1, -1) : text);
    if (start < 0) start = 0;
    let pos = 0;
    let k = 0;
    while (k < tokens.length && pos + tokens[k].token.length <= start) pos += tokens[k++].token.length;
    if (k < tokens.length) {
      const offset = start - pos;
      for (const alt of tokens[k].top_logprobs) {
        const piece = alt.token.slice(offset).replace(/^\s+/, "");
        if (piece === "") continue;
        const matches = clusters.filter((c) => c.description.startsWith(piece) || (piece.length > c.description.length && piece.startsWith(c.description)));
        for (const c of matches) mass.set(c.id, (mass.get(c.id) ?? 0) + Math.exp(alt.logprob) / matches.length);
      }
    }
    const answered = this.idOf.get(text);
    if (mass.size === 0 && answered !== undefined) mass.set(answered, 1);
    const order = new Map(clusters.map((c, i) => [c.id, i]));
    const kept = [...mass].filter(([id, p]) => !excluded.has(id) && p > 0);
    const sum = kept.reduce((s, [, p]) => s + p, 0);
    return kept
      .sort((a, b) => b[1] - a[1] || order.get(a[0])! - order.get(b[0])!)
      .map(([cluster, p]) => ({ cluster, score: p / sum }));
  }
}
