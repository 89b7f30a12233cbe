/**
 * `freshrec llm serve`: the embedded model behind the OpenAI-compatible routes the `openai` backend uses, so the
 * backend (and anything else that speaks the OpenAI API: scripts, notebooks, other services) can be tested and used
 * over real HTTP without a hosted account. It is also the way to share one embedded model between processes: the
 * model is loaded once here, and every process that needs it is an `openai` backend pointed at this server.
 *
 * Routes (request and response shapes follow the OpenAI API; errors use its `{ "error": { message, type, param,
 * code } }` body so OpenAI clients report them as they would a hosted error):
 * - `GET /v1/models`, `GET /v1/models/{id}`: the served model and every fine-tune made through this server.
 * - `POST /v1/chat/completions`: the last user message is the prompt text (freshrec's template; system messages are
 *   ignored: the model knows one task). Answers:
 *   - `response_format: { type: "json_schema", json_schema: { schema } }` whose schema is a string enum, or an object
 *     with one string-enum property: the answer is the best enum member (greedy under the constraint), written as
 *     JSON of that shape. Enum members must be cluster descriptions of the model.
 *   - vLLM's `guided_choice: [..]`: the best choice, as plain text.
 *   - neither: unconstrained generation over the whole vocabulary (greedy, or sampled when `temperature` > 0, seeded
 *     by `seed`) up to `max_tokens` or end of sequence. This is where answers can miss the cluster list.
 *   - `logprobs` / `top_logprobs` (at most 20, as OpenAI): per generated token; under a constraint the probabilities
 *     are those of the constrained distribution (softmax over the allowed answers, like vLLM's processed logprobs),
 *     and the fixed JSON around an enum answer is reported as tokens of probability 1.
 * - `POST /v1/completions` (the legacy text route, as vLLM serves it): `prompt` a string or a list of strings, each
 *   read as plain text; `echo`, `logprobs: k` (0..20) and `max_tokens` (0 with `echo` scores the prompt without
 *   generating). With `echo` and `logprobs`, every token of the prompt comes back with its log-probability
 *   (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`): the probability of a whole answer written after a
 *   prompt is the sum over its tokens, which is how the `openai` backend ranks clusters exactly.
 * - `POST /v1/files` (multipart, purpose "fine-tune" or "batch"), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`.
 * - The Batch API: `POST /v1/batches` (endpoint `/v1/chat/completions` or `/v1/completions`, window "24h"), `GET /v1/batches[/{id}]`,
 *   `POST /v1/batches/{id}/cancel`. Each line of the input file is answered as a chat completion, one batch at a
 *   time in the background; answers go to an output file and failed lines to an error file (both downloadable),
 *   with the same line format as OpenAI's (`{ id, custom_id, response: { status_code, request_id, body }, error }`).
 * - `POST /v1/fine_tuning/jobs`, `GET /v1/fine_tuning/jobs[/{id}]`, `GET /v1/fine_tuning/jobs/{id}/events`,
 *   `POST /v1/fine_tuning/jobs/{id}/cancel`: continued training of the named model (the served one or an earlier
 *   fine-tune) by the embedded trainer, one job at a time; the result is served as `ft:<model>:<suffix>:<job id>`.
 *   Training lines are chat examples `{ "messages": [..., { role: "user", content: PROMPT }, { role: "assistant",
 *   content: DESCRIPTION or {"cluster": DESCRIPTION} }] }` whose prompt follows freshrec's template.
 *
 * Tokens: the model's own vocabulary reads each cluster description as one token, so a first-token log-probability
 * is already a whole answer's. `descriptionTokens: "words"` makes the server read and answer descriptions as their
 * word tokens instead, as real tokenizers split them, for testing clients against multi-token answers.
 *
 * @example
 * const server = await startLlmServer({ modelPath: "/ws/models/m000001.gguf", dataDir: "/ws/llm-server", port: 0 });
 * const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" });
 * await server.close();
 */
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import Fastify, { type FastifyInstance, type FastifyReply } from "fastify";
import { z } from "zod";
import { DAY_MS, SystemClock, type Clock } from "../domain/clock.js";
import { FreshrecError, HTTP_STATUS_OF_CODE } from "../domain/errors.js";
import { LLM_SERVE_DEFAULTS } from "./backends/backend-defaults.js";
import { seededRandom } from "../domain/random.js";
import type { TrainingSample } from "./contracts.js";
import { loadLlamaApi } from "./engine/llama-api.js";
import { type ModelFileInfo, readModelFile } from "./engine/model-file.js";
import { BatchScorer } from "./engine/scorer.js";
import { ENGINE_CONTINUED_LEARNING_RATE, EmbeddedTrainer, type EmbeddedTrainerOptions } from "./engine/trainer.js";
import { BOS_ID, BYTE_BASE, CLUSTER_BASE, EOS_ID, type Vocabulary, WORD_PREFIX } from "./engine/vocabulary.js";
import { parsePrompt } from "./prompt.js";

export interface LlmServerOptions {
  /** The freshrec model file to serve. */
  readonly modelPath: string;
  /** Name clients use for it. @defaultValue the file name without extension */
  readonly modelName?: string;
  /** Where uploaded files, fine-tuned models and their index are kept. */
  readonly dataDir: string;
  /** @defaultValue "127.0.0.1" */
  readonly host?: string;
  /** 0 picks a free port. @defaultValue 8081 */
  readonly port?: number;
  /** Models kept loaded at once (least recently used is closed first). @defaultValue 2 */
  readonly loadedModels?: number;
  /** pino level. @defaultValue "info" */
  readonly logLevel?: string;
  /** Where logs go. @defaultValue process.stderr */
  readonly logStream?: { write(line: string): void };
  /** Body limit of every route but the file upload. @defaultValue 8 MiB */
  readonly bodyLimitBytes?: number;
  /** Body limit of POST /v1/files (training and batch files). @defaultValue 200 MiB, OpenAI's batch file limit */
  readonly fileLimitBytes?: number;
  /**
   * How text is read into tokens. "cluster": each cluster description is its model's one answer token, as the model
   * was trained. "words": descriptions are read and answered as their separate word tokens, the way a general-purpose
   * tokenizer splits them ("comedy, drama" and "comedy, horror" share their first token), so a client's ranking can
   * be tested against multi-token answers with shared prefixes over real HTTP. Fine-tuning is the same in both.
   * @defaultValue "cluster"
   */
  readonly descriptionTokens?: DescriptionTokens;
  /** @defaultValue the system clock */
  readonly clock?: Clock;
  /**
   * How fine-tuning jobs train (the config's `training` section); a job's learning_rate_multiplier scales the
   * trainer's default rate of a continued training (`ENGINE_CONTINUED_LEARNING_RATE`). @defaultValue f32 products
   */
  readonly training?: Pick<EmbeddedTrainerOptions, "engine" | "precision">;
}

export type DescriptionTokens = "cluster" | "words";

export interface RunningLlmServer {
  readonly url: string;
  readonly port: number;
  readonly app: FastifyInstance;
  /** Counters: chat completions answered, by kind. */
  readonly stats: { completions: number; constrained: number; unconstrained: number; textCompletions: number };
  /** Waits for running fine-tuning jobs to be cancelled, closes the models and the HTTP server. */
  close(): Promise<void>;
}

/** An OpenAI-style API error. */
class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly type = status === 404 ? "not_found_error" : status >= 500 ? "server_error" : "invalid_request_error",
  ) {
    super(message);
  }
}

// Requests are parsed leniently (OpenAI clients send many optional fields); only what the server uses is checked.
const contentSchema = z.union([z.string(), z.array(z.looseObject({ type: z.string(), text: z.string().optional() }))]).nullable().optional();
const chatBodySchema = z.looseObject({
  model: z.string().min(1),
  messages: z.array(z.looseObject({ role: z.string(), content: contentSchema })).min(1),
  response_format: z.looseObject({ type: z.enum(["text", "json_object", "json_schema"]), json_schema: z.looseObject({ schema: z.unknown() }).optional() }).optional(),
  guided_choice: z.array(z.string()).min(1).optional(),
  logprobs: z.boolean().nullable().optional(),
  top_logprobs: z.number().int().min(0).max(20).nullable().optional(),
  max_tokens: z.number().int().positive().nullable().optional(),
  max_completion_tokens: z.number().int().positive().nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  seed: z.number().int().nullable().optional(),
  n: z.number().int().nullable().optional(),
  stream: z.boolean().nullable().optional(),
});
type ChatBody = z.infer<typeof chatBodySchema>;

const jobBodySchema = z.looseObject({
  model: z.string().min(1),
  training_file: z.string().min(1),
  validation_file: z.string().min(1).nullable().optional(),
  suffix: z.string().max(64).nullable().optional(),
  seed: z.number().int().nullable().optional(),
  hyperparameters: z
    .looseObject({
      n_epochs: z.union([z.number().int().positive().max(100), z.literal("auto")]).optional(),
      learning_rate_multiplier: z.union([z.number().positive(), z.literal("auto")]).optional(),
    })
    .optional(),
  method: z
    .looseObject({
      type: z.string(),
      supervised: z.looseObject({ hyperparameters: z.looseObject({ n_epochs: z.union([z.number().int().positive().max(100), z.literal("auto")]).optional() }).optional() }).optional(),
    })
    .optional(),
});

function parseBody<S extends z.ZodType>(schema: S, value: unknown): z.infer<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const param = issue.path.map(String).join(".") || null;
  throw new ApiError(400, `${param ?? "body"}: ${issue.message}`, param);
}

/** A model the server can answer with: its file, and (while loaded) a scorer reading full-vocabulary logits. */
interface ServedModel {
  readonly id: string;
  readonly path: string;
  readonly created: number;
  readonly ownedBy: string;
  info?: ModelFileInfo;
  scorer?: BatchScorer;
  lastUsed: number;
}

interface FileRecord {
  readonly id: string;
  readonly bytes: number;
  readonly created_at: number;
  readonly filename: string;
  readonly purpose: string;
  readonly path: string;
}

interface JobEvent {
  readonly id: string;
  readonly object: "fine_tuning.job.event";
  readonly created_at: number;
  readonly level: "info" | "warn" | "error";
  readonly message: string;
  readonly type: "message" | "metrics";
  readonly data: Record<string, unknown> | null;
}

interface Job {
  readonly id: string;
  readonly model: string;
  readonly created_at: number;
  readonly training_file: string;
  readonly validation_file: string | null;
  readonly suffix: string | null;
  readonly epochs: number;
  readonly learningRateMultiplier: number;
  readonly seed: number;
  status: "validating_files" | "queued" | "running" | "succeeded" | "failed" | "cancelled";
  fine_tuned_model: string | null;
  finished_at: number | null;
  trained_tokens: number | null;
  error: { code: string; message: string; param: string | null } | null;
  readonly events: JobEvent[];
  readonly abort: AbortController;
  samples: TrainingSample[];
  validation: TrainingSample[] | undefined;
}

const batchBodySchema = z.looseObject({
  input_file_id: z.string().min(1),
  endpoint: z.enum(["/v1/chat/completions", "/v1/completions"]),
  completion_window: z.literal("24h"),
  metadata: z.record(z.string(), z.string()).nullable().optional(),
});

interface BatchError {
  readonly code: string;
  readonly message: string;
  readonly param: string | null;
  readonly line: number | null;
}

interface Batch {
  readonly id: string;
  readonly endpoint: string;
  readonly input_file_id: string;
  readonly completion_window: string;
  status: "validating" | "failed" | "in_progress" | "finalizing" | "completed" | "cancelling" | "cancelled";
  readonly errors: BatchError[];
  output_file_id: string | null;
  error_file_id: string | null;
  readonly created_at: number;
  in_progress_at: number | null;
  finalizing_at: number | null;
  completed_at: number | null;
  failed_at: number | null;
  cancelling_at: number | null;
  cancelled_at: number | null;
  readonly request_counts: { total: number; completed: number; failed: number };
  readonly metadata: Record<string, string> | null;
}

interface BatchLine {
  readonly custom_id: string;
  readonly body: unknown;
}

/** A cancel arrives while the batch runs (a property TypeScript would otherwise narrow away). */
const cancelRequested = (b: Batch): boolean => b.status === "cancelling";

const batchLineSchema = z.looseObject({ custom_id: z.string().min(1), method: z.literal("POST"), url: z.string(), body: z.looseObject({}) });

/** The request lines of a batch input file; problems go to `errors` with their line numbers (1-based). */
export function parseBatchFile(text: string, endpoint: string, errors: BatchError[]): BatchLine[] {
  const lines: BatchLine[] = [];
  const seen = new Set<string>();
  text.split("\n").forEach((raw, i) => {
    if (raw.trim() === "") return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      errors.push({ code: "invalid_json_line", message: `line ${i + 1} is not JSON`, param: null, line: i + 1 });
      return;
    }
    const result = batchLineSchema.safeParse(parsed);
    if (!result.success) {
      const issue = result.error.issues[0];
      errors.push({ code: "invalid_request", message: `line ${i + 1}: ${issue.path.map(String).join(".") || "line"}: ${issue.message}`, param: issue.path.map(String).join(".") || null, line: i + 1 });
      return;
    }
    if (result.data.url !== endpoint) {
      errors.push({ code: "mismatched_url", message: `line ${i + 1}: url ${result.data.url} is not the batch's endpoint ${endpoint}`, param: "url", line: i + 1 });
      return;
    }
    if (seen.has(result.data.custom_id)) {
      errors.push({ code: "duplicate_custom_id", message: `line ${i + 1}: custom_id ${result.data.custom_id} appears twice`, param: "custom_id", line: i + 1 });
      return;
    }
    seen.add(result.data.custom_id);
    lines.push({ custom_id: result.data.custom_id, body: result.data.body });
  });
  if (lines.length === 0 && errors.length === 0) errors.push({ code: "empty_file", message: "the input file has no request lines", param: null, line: null });
  return lines;
}

/** The longest prompt the server reads, in tokens (freshrec prompts are ~10-40). */
const MAX_PROMPT_TOKENS = 96;
const MAX_NEW_TOKENS = 32;

export async function startLlmServer(options: LlmServerOptions): Promise<RunningLlmServer> {
  const clock = options.clock ?? new SystemClock();
  const nowSeconds = () => Math.floor(clock.now() / 1000);
  mkdirSync(join(options.dataDir, "files"), { recursive: true });
  mkdirSync(join(options.dataDir, "models"), { recursive: true });
  const baseInfo = readModelFile(options.modelPath);
  const baseId = options.modelName ?? basename(options.modelPath).replace(/\.gguf$/i, "");
  const models = new Map<string, ServedModel>();
  models.set(baseId, { id: baseId, path: options.modelPath, created: nowSeconds(), ownedBy: "freshrec", info: baseInfo, lastUsed: 0 });
  // Fine-tunes made by earlier runs of this server stay served.
  const indexPath = join(options.dataDir, "fine-tunes.json");
  if (existsSync(indexPath)) {
    for (const m of JSON.parse(readFileSync(indexPath, "utf8")) as { id: string; path: string; created: number }[]) {
      if (existsSync(m.path)) models.set(m.id, { id: m.id, path: m.path, created: m.created, ownedBy: "freshrec-fine-tune", lastUsed: 0 });
    }
  }
  const saveIndex = () => {
    const list = [...models.values()].filter((m) => m.ownedBy === "freshrec-fine-tune").map((m) => ({ id: m.id, path: m.path, created: m.created }));
    writeFileSync(`${indexPath}.tmp`, JSON.stringify(list, null, 2));
    renameSync(`${indexPath}.tmp`, indexPath);
  };
  const files = new Map<string, FileRecord>();
  const jobs = new Map<string, Job>();
  const stats = { completions: 0, constrained: 0, unconstrained: 0, textCompletions: 0 };
  const descriptionTokens = options.descriptionTokens ?? "cluster";
  const maxLoaded = options.loadedModels ?? 2;
  let useCounter = 0;
  // Scoring calls are serialised per scorer (BatchScorer does it); loading and closing go through this chain so a
  // model is never closed while a request still uses it.
  let modelChain: Promise<unknown> = Promise.resolve();

  const modelNamed = (id: string): ServedModel => {
    const m = models.get(id);
    if (!m) throw new ApiError(404, `The model '${id}' does not exist (GET /v1/models lists ${[...models.keys()].join(", ")})`, "model");
    return m;
  };

  /** Runs `use` with the model loaded; at most `maxLoaded` stay loaded. */
  const withModel = <T>(id: string, use: (m: ServedModel & { info: ModelFileInfo; scorer: BatchScorer }) => Promise<T>): Promise<T> => {
    const m = modelNamed(id);
    const run = modelChain.then(async () => {
      m.lastUsed = ++useCounter;
      if (!m.scorer) {
        const loaded = [...models.values()].filter((x) => x.scorer).sort((a, b) => a.lastUsed - b.lastUsed);
        while (loaded.length >= maxLoaded) {
          const victim = loaded.shift()!;
          await victim.scorer!.close();
          victim.scorer = undefined;
        }
        m.info ??= readModelFile(m.path);
        m.scorer = BatchScorer.open(loadLlamaApi(), m.path, {
          answerBase: 0,
          answerCount: m.info.vocabulary.size,
          sequences: 4,
          maxPromptTokens: MAX_PROMPT_TOKENS + MAX_NEW_TOKENS,
          threads: 1,
        });
      }
      return use(m as ServedModel & { info: ModelFileInfo; scorer: BatchScorer });
    });
    modelChain = run.catch(() => undefined);
    return run;
  };

  const app = Fastify({
    logger: {
      level: options.logLevel ?? "info",
      stream: options.logStream ?? process.stderr,
      serializers: { req: (req: { method: string; url: string }) => ({ method: req.method, url: req.url }) },
      // An OpenAI client always sends its key; it is never logged.
      redact: { paths: ["req.headers.authorization"], censor: "[redacted]" },
    },
    bodyLimit: options.bodyLimitBytes ?? 8 * 1024 * 1024,
  });
  app.addContentTypeParser("multipart/form-data", { parseAs: "buffer" }, (_req, body, done) => done(null, body));
  app.setErrorHandler((error: unknown, request, reply: FastifyReply) => {
    const e = error as { statusCode?: number; message?: string; code?: string };
    const api =
      error instanceof ApiError
        ? error
        : error instanceof FreshrecError
          ? new ApiError(HTTP_STATUS_OF_CODE[error.code], error.message)
          : e.statusCode && e.statusCode < 500
            ? new ApiError(e.statusCode, e.message ?? "bad request")
            : new ApiError(500, "internal error (see the server log)");
    if (api.status >= 500) request.log.error({ err: error }, "request failed");
    void reply.status(api.status).send({ error: { message: api.message, type: api.type, param: api.param, code: null } });
  });

  app.get("/healthz", async () => ({ status: "ok", models: models.size }));

  const modelObject = (m: ServedModel) => ({ id: m.id, object: "model", created: m.created, owned_by: m.ownedBy });
  app.get("/v1/models", async () => ({ object: "list", data: [...models.values()].map(modelObject) }));
  app.get<{ Params: { id: string } }>("/v1/models/:id", async (request) => modelObject(modelNamed(request.params.id)));

  /** One chat completion: the route's answer, and each line of a batch. */
  const chatCompletion = async (raw: unknown) => {
    const body = parseBody(chatBodySchema, raw);
    if (body.stream) throw new ApiError(400, "stream: streaming is not supported by this server", "stream");
    if (body.n !== undefined && body.n !== null && body.n !== 1) throw new ApiError(400, "n: only n = 1 is supported", "n");
    const prompt = promptText(body);
    return withModel(body.model, async (m) => {
      const answer = await complete(m.info, m.scorer, body, prompt, descriptionTokens);
      stats.completions++;
      if (answer.constrained) stats.constrained++;
      else stats.unconstrained++;
      return {
        id: `chatcmpl-${randomUUID()}`,
        object: "chat.completion",
        created: nowSeconds(),
        model: m.id,
        system_fingerprint: `freshrec-${m.info.vocabularyHash}`,
        choices: [
          {
            index: 0,
            message: { role: "assistant", content: answer.content, refusal: null },
            logprobs: body.logprobs ? { content: answer.logprobs, refusal: null } : null,
            finish_reason: answer.finish,
          },
        ],
        usage: { prompt_tokens: answer.promptTokens, completion_tokens: answer.completionTokens, total_tokens: answer.promptTokens + answer.completionTokens },
      };
    });
  };
  app.post("/v1/chat/completions", async (request) => chatCompletion(request.body));

  /** One legacy text completion (`completeText` says what it computes): the route's answer, and a batch line's. */
  const textCompletion = async (raw: unknown) => {
    const body = parseBody(completionBodySchema, raw);
    if (body.stream) throw new ApiError(400, "stream: streaming is not supported by this server", "stream");
    if (body.n !== undefined && body.n !== null && body.n !== 1) throw new ApiError(400, "n: only n = 1 is supported", "n");
    if (body.best_of !== undefined && body.best_of !== null && body.best_of !== 1) throw new ApiError(400, "best_of: only best_of = 1 is supported", "best_of");
    if (body.suffix) throw new ApiError(400, "suffix: insertion is not supported", "suffix");
    if (body.stop !== undefined && body.stop !== null && body.stop.length > 0) throw new ApiError(400, "stop: stop sequences are not supported (generation ends at end of sequence or max_tokens)", "stop");
    return withModel(body.model, async (m) => {
      const choices = await completeText(m.info, m.scorer, body, descriptionTokens);
      stats.textCompletions++;
      const promptTokens = choices.reduce((n, c) => n + c.promptTokens, 0);
      const completionTokens = choices.reduce((n, c) => n + c.completionTokens, 0);
      return {
        id: `cmpl-${randomUUID()}`,
        object: "text_completion",
        created: nowSeconds(),
        model: m.id,
        system_fingerprint: `freshrec-${m.info.vocabularyHash}`,
        choices: choices.map((c, index) => ({ index, text: c.text, logprobs: c.logprobs, finish_reason: c.finish })),
        usage: { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens },
      };
    });
  };
  app.post("/v1/completions", async (request) => textCompletion(request.body));

  const fileObject = (f: FileRecord) => ({ id: f.id, object: "file", bytes: f.bytes, created_at: f.created_at, filename: f.filename, purpose: f.purpose, status: "processed" });
  // Batch input files run to hundreds of MB (OpenAI takes up to 200 MB): this route has its own body limit.
  app.post("/v1/files", { bodyLimit: options.fileLimitBytes ?? 200 * 1024 * 1024 }, async (request) => {
    const contentType = request.headers["content-type"] ?? "";
    if (!contentType.startsWith("multipart/form-data")) throw new ApiError(415, "POST /v1/files takes multipart/form-data with fields purpose and file");
    // undici (Node's fetch) parses multipart bodies; no extra dependency for one route.
    const form = await new Request("http://local/", { method: "POST", headers: { "content-type": contentType }, body: request.body as Buffer }).formData();
    const file = form.get("file");
    const purpose = form.get("purpose");
    if (typeof purpose !== "string" || purpose === "") throw new ApiError(400, "purpose: missing", "purpose");
    if (file === null || typeof file === "string") throw new ApiError(400, "file: missing (a file part)", "file");
    const id = `file-${randomUUID().replace(/-/g, "").slice(0, 24)}`;
    const path = join(options.dataDir, "files", `${id}.jsonl`);
    const bytes = Buffer.from(await file.arrayBuffer());
    writeFileSync(path, bytes);
    const record: FileRecord = { id, bytes: bytes.length, created_at: nowSeconds(), filename: file.name || "upload.jsonl", purpose, path };
    files.set(id, record);
    return fileObject(record);
  });
  app.get<{ Params: { id: string } }>("/v1/files/:id", async (request) => {
    const f = files.get(request.params.id);
    if (!f) throw new ApiError(404, `No such File object: ${request.params.id}`, "id");
    return fileObject(f);
  });

  app.get<{ Params: { id: string } }>("/v1/files/:id/content", async (request, reply) => {
    const f = files.get(request.params.id);
    if (!f) throw new ApiError(404, `No such File object: ${request.params.id}`, "id");
    return reply.type("application/octet-stream").send(readFileSync(f.path));
  });
  /** A file the server writes itself (batch output and errors). */
  const storeFile = (purpose: string, filename: string, text: string): FileRecord => {
    const id = `file-${randomUUID().replace(/-/g, "").slice(0, 24)}`;
    const path = join(options.dataDir, "files", `${id}.jsonl`);
    writeFileSync(path, text);
    const record: FileRecord = { id, bytes: Buffer.byteLength(text), created_at: nowSeconds(), filename, purpose, path };
    files.set(id, record);
    return record;
  };

  // The Batch API: the lines of an uploaded JSONL file answered like POST /v1/chat/completions, in the background,
  // one batch at a time (the model is the limit, as for fine-tuning), results in an output file and failed lines in
  // an error file, as OpenAI's batches do.
  const batches = new Map<string, Batch>();
  let batchChain: Promise<unknown> = Promise.resolve();
  const batchObject = (b: Batch) => ({
    id: b.id,
    object: "batch",
    endpoint: b.endpoint,
    errors: b.errors.length ? { object: "list", data: b.errors } : null,
    input_file_id: b.input_file_id,
    completion_window: b.completion_window,
    status: b.status,
    output_file_id: b.output_file_id,
    error_file_id: b.error_file_id,
    created_at: b.created_at,
    in_progress_at: b.in_progress_at,
    expires_at: b.created_at + DAY_MS / 1000,
    finalizing_at: b.finalizing_at,
    completed_at: b.completed_at,
    failed_at: b.failed_at,
    expired_at: null,
    cancelling_at: b.cancelling_at,
    cancelled_at: b.cancelled_at,
    request_counts: { ...b.request_counts },
    metadata: b.metadata,
  });
  const runBatch = async (b: Batch, lines: BatchLine[]): Promise<void> => {
    if (b.status === "cancelling") {
      b.status = "cancelled";
      b.cancelled_at = nowSeconds();
      return;
    }
    b.status = "in_progress";
    b.in_progress_at = nowSeconds();
    const output: string[] = [];
    const failed: string[] = [];
    for (const line of lines) {
      if (cancelRequested(b)) break;
      const id = `batch_req_${randomUUID().replace(/-/g, "").slice(0, 24)}`;
      try {
        const response = await (b.endpoint === "/v1/completions" ? textCompletion(line.body) : chatCompletion(line.body));
        output.push(JSON.stringify({ id, custom_id: line.custom_id, response: { status_code: 200, request_id: id, body: response }, error: null }));
        b.request_counts.completed++;
      } catch (error) {
        const api = error instanceof ApiError ? error : new ApiError(500, error instanceof Error ? error.message : String(error));
        failed.push(
          JSON.stringify({
            id,
            custom_id: line.custom_id,
            response: { status_code: api.status, request_id: id, body: { error: { message: api.message, type: api.type, param: api.param, code: null } } },
            error: null,
          }),
        );
        b.request_counts.failed++;
      }
    }
    const cancelling = cancelRequested(b);
    if (!cancelling) b.status = "finalizing";
    b.finalizing_at = nowSeconds();
    if (output.length) b.output_file_id = storeFile("batch_output", `${b.id}_output.jsonl`, `${output.join("\n")}\n`).id;
    if (failed.length) b.error_file_id = storeFile("batch_output", `${b.id}_error.jsonl`, `${failed.join("\n")}\n`).id;
    if (cancelling) {
      b.status = "cancelled";
      b.cancelled_at = nowSeconds();
    } else {
      b.status = "completed";
      b.completed_at = nowSeconds();
    }
  };
  app.post("/v1/batches", async (request) => {
    const body = parseBody(batchBodySchema, request.body);
    const f = files.get(body.input_file_id);
    if (!f) throw new ApiError(400, `input_file_id: no file ${body.input_file_id} (upload it with POST /v1/files, purpose "batch")`, "input_file_id");
    if (f.purpose !== "batch") throw new ApiError(400, `input_file_id: file ${f.id} was uploaded with purpose "${f.purpose}", not "batch"`, "input_file_id");
    const b: Batch = {
      id: `batch_${randomUUID().replace(/-/g, "").slice(0, 24)}`,
      endpoint: body.endpoint,
      input_file_id: f.id,
      completion_window: body.completion_window,
      status: "validating",
      errors: [],
      output_file_id: null,
      error_file_id: null,
      created_at: nowSeconds(),
      in_progress_at: null,
      finalizing_at: null,
      completed_at: null,
      failed_at: null,
      cancelling_at: null,
      cancelled_at: null,
      request_counts: { total: 0, completed: 0, failed: 0 },
      metadata: body.metadata ?? null,
    };
    batches.set(b.id, b);
    // Like OpenAI, a file that does not parse fails the whole batch (status "failed" with line errors), not the request.
    const lines = parseBatchFile(readFileSync(f.path, "utf8"), body.endpoint, b.errors);
    if (b.errors.length) {
      b.status = "failed";
      b.failed_at = nowSeconds();
      return batchObject(b);
    }
    b.request_counts.total = lines.length;
    batchChain = batchChain.then(() => runBatch(b, lines)).catch((error: unknown) => {
      b.status = "failed";
      b.failed_at = nowSeconds();
      b.errors.push({ code: "server_error", message: error instanceof Error ? error.message : String(error), param: null, line: null });
    });
    return batchObject(b);
  });
  const batchNamed = (id: string): Batch => {
    const b = batches.get(id);
    if (!b) throw new ApiError(404, `No such batch: ${id}`, "batch_id");
    return b;
  };
  app.get("/v1/batches", async () => ({ object: "list", data: [...batches.values()].reverse().map(batchObject), has_more: false }));
  app.get<{ Params: { id: string } }>("/v1/batches/:id", async (request) => batchObject(batchNamed(request.params.id)));
  app.post<{ Params: { id: string } }>("/v1/batches/:id/cancel", async (request) => {
    const b = batchNamed(request.params.id);
    if (b.status === "validating" || b.status === "in_progress") {
      b.status = "cancelling";
      b.cancelling_at = nowSeconds();
    }
    return batchObject(b);
  });

  const jobObject = (j: Job) => ({
    id: j.id,
    object: "fine_tuning.job",
    model: j.model,
    created_at: j.created_at,
    finished_at: j.finished_at,
    fine_tuned_model: j.fine_tuned_model,
    organization_id: "freshrec",
    result_files: [],
    status: j.status,
    validation_file: j.validation_file,
    training_file: j.training_file,
    hyperparameters: { n_epochs: j.epochs, learning_rate_multiplier: j.learningRateMultiplier, batch_size: 1 },
    trained_tokens: j.trained_tokens,
    error: j.error,
    seed: j.seed,
    estimated_finish: null,
    integrations: null,
    method: { type: "supervised", supervised: { hyperparameters: { n_epochs: j.epochs, learning_rate_multiplier: j.learningRateMultiplier, batch_size: 1 } } },
  });
  const event = (j: Job, message: string, type: JobEvent["type"] = "message", data: Record<string, unknown> | null = null, level: JobEvent["level"] = "info") => {
    j.events.push({ id: `ftevent-${j.id.slice(6)}-${j.events.length + 1}`, object: "fine_tuning.job.event", created_at: nowSeconds(), level, message, type, data });
  };
  const samplesOf = (fileId: string, param: string, info: ModelFileInfo): TrainingSample[] => {
    const f = files.get(fileId);
    if (!f) throw new ApiError(400, `${param}: no file ${fileId} (upload it with POST /v1/files)`, param);
    return parseTrainingFile(readFileSync(f.path, "utf8"), info, param);
  };

  // One training at a time: the machine's cores are the limit, and jobs queue like hosted ones do.
  let trainingChain: Promise<unknown> = Promise.resolve();
  const runJob = async (j: Job): Promise<void> => {
    if (j.abort.signal.aborted) return;
    j.status = "running";
    event(j, "Fine-tuning job started");
    const from = modelNamed(j.model);
    const fineTuned = `ft:${j.model.replace(/^ft:/, "").split(":")[0]}:${j.suffix ?? "freshrec"}:${j.id.slice(6)}`;
    const outputPath = join(options.dataDir, "models", `${j.id}.gguf`);
    try {
      const training = { engine: options.training?.engine, precision: options.training?.precision };
      const result = await new EmbeddedTrainer(training).train(j.samples, {
        from: from.path,
        outputPath,
        validation: j.validation,
        epochs: j.epochs,
        learningRate: ENGINE_CONTINUED_LEARNING_RATE * j.learningRateMultiplier,
        seed: j.seed,
        signal: j.abort.signal,
        onProgress: (e) => {
          if (e.type === "epoch") {
            event(j, `Epoch ${e.epoch}/${e.epochs}: train loss ${e.trainLoss.toFixed(4)}`, "metrics", {
              step: e.epoch,
              total_steps: e.epochs,
              epoch: e.epoch,
              train_loss: e.trainLoss,
              valid_loss: e.validationLoss,
              valid_mean_token_accuracy: e.validationAccuracy,
            });
          }
        },
      });
      models.set(fineTuned, { id: fineTuned, path: result.modelPath, created: nowSeconds(), ownedBy: "freshrec-fine-tune", lastUsed: 0 });
      saveIndex();
      j.fine_tuned_model = fineTuned;
      j.trained_tokens = result.trainTokens;
      j.status = "succeeded";
      event(j, `New fine-tuned model created: ${fineTuned}`);
    } catch (error) {
      if (j.abort.signal.aborted) {
        j.status = "cancelled";
        event(j, "Fine-tuning job cancelled");
      } else {
        j.status = "failed";
        const message = error instanceof Error ? error.message : String(error);
        j.error = { code: "training_failed", message, param: null };
        event(j, `Fine-tuning job failed: ${message}`, "message", null, "error");
      }
    } finally {
      j.finished_at = nowSeconds();
      j.samples = [];
      j.validation = undefined;
    }
  };

  app.post("/v1/fine_tuning/jobs", async (request) => {
    const body = parseBody(jobBodySchema, request.body);
    const from = modelNamed(body.model);
    const info = from.info ?? (from.info = readModelFile(from.path));
    const samples = samplesOf(body.training_file, "training_file", info);
    const validation = body.validation_file ? samplesOf(body.validation_file, "validation_file", info) : undefined;
    const epochsAsked = body.method?.supervised?.hyperparameters?.n_epochs ?? body.hyperparameters?.n_epochs;
    const lr = body.hyperparameters?.learning_rate_multiplier;
    const j: Job = {
      id: `ftjob-${randomUUID().replace(/-/g, "").slice(0, 24)}`,
      model: body.model,
      created_at: nowSeconds(),
      training_file: body.training_file,
      validation_file: body.validation_file ?? null,
      suffix: body.suffix ?? null,
      epochs: typeof epochsAsked === "number" ? epochsAsked : 4,
      learningRateMultiplier: typeof lr === "number" ? lr : 1,
      seed: body.seed ?? 1,
      status: "queued",
      fine_tuned_model: null,
      finished_at: null,
      trained_tokens: null,
      error: null,
      events: [],
      abort: new AbortController(),
      samples,
      validation,
    };
    jobs.set(j.id, j);
    event(j, `Validated training file: ${samples.length} examples`);
    trainingChain = trainingChain.then(() => runJob(j)).catch(() => undefined);
    return jobObject(j);
  });
  app.get("/v1/fine_tuning/jobs", async () => ({ object: "list", data: [...jobs.values()].reverse().map(jobObject), has_more: false }));
  const jobNamed = (id: string): Job => {
    const j = jobs.get(id);
    if (!j) throw new ApiError(404, `No such fine-tuning job: ${id}`, "fine_tuning_job_id");
    return j;
  };
  app.get<{ Params: { id: string } }>("/v1/fine_tuning/jobs/:id", async (request) => jobObject(jobNamed(request.params.id)));
  app.get<{ Params: { id: string } }>("/v1/fine_tuning/jobs/:id/events", async (request) => ({
    object: "list",
    data: [...jobNamed(request.params.id).events].reverse(),
    has_more: false,
  }));
  app.post<{ Params: { id: string } }>("/v1/fine_tuning/jobs/:id/cancel", async (request) => {
    const j = jobNamed(request.params.id);
    if (j.status === "succeeded" || j.status === "failed" || j.status === "cancelled") {
      throw new ApiError(400, `job ${j.id} has already ${j.status === "cancelled" ? "been cancelled" : j.status}`);
    }
    j.abort.abort();
    if (j.status === "queued") {
      j.status = "cancelled";
      j.finished_at = nowSeconds();
      event(j, "Fine-tuning job cancelled");
    }
    return jobObject(j);
  });

  await app.listen({ host: options.host ?? LLM_SERVE_DEFAULTS.host, port: options.port ?? LLM_SERVE_DEFAULTS.port });
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : (options.port ?? LLM_SERVE_DEFAULTS.port);
  const host = options.host ?? LLM_SERVE_DEFAULTS.host;
  const url = `http://${host.includes(":") ? `[${host}]` : host === "0.0.0.0" ? "127.0.0.1" : host}:${port}`;
  app.log.info({ url, model: baseId, clusters: baseInfo.clusters.length }, "freshrec llm server listening");

  let closing: Promise<void> | null = null;
  return {
    url,
    port,
    app,
    stats,
    close: () =>
      (closing ??= (async () => {
        for (const j of jobs.values()) j.abort.abort();
        for (const b of batches.values()) if (b.status === "validating" || b.status === "in_progress") b.status = "cancelling";
        await app.close();
        await trainingChain;
        await batchChain;
        await modelChain;
        for (const m of models.values()) {
          if (m.scorer) await m.scorer.close();
          m.scorer = undefined;
        }
      })()),
  };
}

/** The last user message's text: the prompt. */
function promptText(body: ChatBody): string {
  for (let i = body.messages.length - 1; i >= 0; i--) {
    const m = body.messages[i];
    if (m.role !== "user") continue;
    const c = m.content;
    if (typeof c === "string") return c;
    if (Array.isArray(c)) return c.map((p) => (p.type === "text" ? (p.text ?? "") : "")).join("");
  }
  throw new ApiError(400, "messages: no user message (the prompt is the last user message)", "messages");
}

/** What an enum constraint asks for: the allowed texts and how to wrap the chosen one. */
interface Constraint {
  readonly choices: readonly string[];
  readonly prefix: string;
  readonly suffix: string;
}

function constraintOf(body: ChatBody): Constraint | null {
  if (body.guided_choice) return { choices: body.guided_choice, prefix: "", suffix: "" };
  const format = body.response_format;
  if (!format || format.type === "text") return null;
  if (format.type === "json_object") throw new ApiError(400, "response_format: json_object is not supported; use json_schema with an enum", "response_format");
  const schema = format.json_schema?.schema as Record<string, unknown> | undefined;
  const isEnum = (s: unknown): s is { enum: string[] } =>
    typeof s === "object" && s !== null && Array.isArray((s as { enum?: unknown }).enum) && (s as { enum: unknown[] }).enum.every((x) => typeof x === "string");
  if (isEnum(schema)) return { choices: schema.enum, prefix: '"', suffix: '"' };
  const properties = schema?.properties as Record<string, unknown> | undefined;
  const keys = properties ? Object.keys(properties) : [];
  if (keys.length === 1 && isEnum(properties![keys[0]])) {
    return { choices: (properties![keys[0]] as { enum: string[] }).enum, prefix: `{${JSON.stringify(keys[0])}:"`, suffix: '"}' };
  }
  throw new ApiError(
    400,
    "response_format.json_schema.schema: this server constrains answers to a string enum, or an object with one string-enum property",
    "response_format",
  );
}

interface Completion {
  readonly content: string;
  readonly constrained: boolean;
  readonly finish: "stop" | "length";
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly logprobs: TokenLogprob[];
}

interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

const bytesOf = (s: string) => [...Buffer.from(s, "utf8")];
const fixedToken = (text: string): TokenLogprob => ({ token: text, logprob: 0, bytes: bytesOf(text), top_logprobs: [{ token: text, logprob: 0, bytes: bytesOf(text) }] });

/** Log-softmax over the given token ids of one logits row. */
function logSoftmax(row: Float32Array, ids: readonly number[], temperature = 1): Float64Array {
  const out = new Float64Array(ids.length);
  let max = -Infinity;
  for (const id of ids) max = Math.max(max, row[id] / temperature);
  let sum = 0;
  for (const id of ids) sum += Math.exp(row[id] / temperature - max);
  const log = Math.log(sum) + max;
  ids.forEach((id, k) => (out[k] = row[id] / temperature - log));
  return out;
}

/** Indices of the best `n` entries, best first (ties by position, so answers are deterministic). */
function topIndices(values: Float64Array, n: number): number[] {
  return [...values.keys()].sort((a, b) => values[b] - values[a] || a - b).slice(0, n);
}

/**
 * The tokens the server can emit, end of sequence first: every token but `<unk>` and `<s>`. Unconstrained
 * generation samples from the softmax over these, and the log-probabilities of echoed text are taken over the same
 * set, so both routes report one distribution.
 */
function emittable(vocab: Vocabulary): number[] {
  const ids: number[] = [EOS_ID];
  for (let t = BYTE_BASE; t < vocab.size; t++) ids.push(t);
  return ids;
}
/** Position of a token in `emittable`'s list. */
const emittableIndex = (token: number): number => (token === EOS_ID ? 0 : token >= BYTE_BASE ? token - BYTE_BASE + 1 : -1);

/** How text becomes tokens: descriptions as their cluster token, or (descriptionTokens "words") as their words. */
const encodeText = (vocab: Vocabulary, text: string, mode: DescriptionTokens): number[] => vocab.encode(text, { phrases: mode === "cluster" });

/**
 * Each token of `ids` (vocab.encode of `text`, word-level) with the stretch of `text` it stands for, the whitespace
 * before it included, so the pieces concatenate to the text and `offset` is where each begins (OpenAI's
 * `text_offset`). A word spelled in byte tokens is given whole to its first byte token; the others are empty.
 */
function tokenSpans(vocab: Vocabulary, text: string, ids: readonly number[]): { text: string; offset: number }[] {
  const words = [...text.matchAll(/\S+/g)].map((m) => ({ word: m[0], end: m.index + m[0].length }));
  const out: { text: string; offset: number }[] = [];
  let w = 0;
  let at = 0;
  const take = (count: number) => {
    const last = words[Math.min(w + count, words.length) - 1];
    w += count;
    const span = { text: text.slice(at, last.end), offset: at };
    at = last.end;
    return span;
  };
  for (let i = 0; i < ids.length; ) {
    const id = ids[i];
    if (id >= BYTE_BASE && id < CLUSTER_BASE) {
      const bytes = Buffer.byteLength(WORD_PREFIX + words[w].word);
      out.push(take(1));
      for (let k = 1; k < bytes; k++) out.push({ text: "", offset: at });
      i += bytes;
      continue;
    }
    const cluster = vocab.clusterOfToken(id);
    out.push(take(cluster === undefined ? 1 : (vocab.descriptions.get(cluster) ?? "").trim().split(/\s+/).length));
    i++;
  }
  return out;
}

/**
 * Unconstrained generation over `emittable` tokens: greedy at temperature 0, else sampled with `seed`, until end of
 * sequence or `maxNew` tokens. `piece(token, index)` is how token `index` of the answer is written.
 */
async function generateFree(
  vocab: Vocabulary,
  scorer: BatchScorer,
  prompt: readonly number[],
  options: { maxNew: number; temperature: number; seed: number; topK: number; piece: (token: number, index: number) => string },
): Promise<{ tokens: number[]; logprobs: TokenLogprob[]; finish: "stop" | "length" }> {
  const random = seededRandom(options.seed >>> 0 || 1);
  const allowed = emittable(vocab);
  const generated: number[] = [];
  const logprobs: TokenLogprob[] = [];
  let finish: "stop" | "length" = "length";
  while (generated.length < options.maxNew) {
    const row = await scorer.score([[...prompt, ...generated]]);
    const logps = logSoftmax(row, allowed);
    let pick: number;
    if (options.temperature === 0) pick = topIndices(logps, 1)[0];
    else {
      const scaled = logSoftmax(row, allowed, options.temperature);
      let u = random();
      pick = scaled.length - 1;
      for (let k = 0; k < scaled.length; k++) {
        u -= Math.exp(scaled[k]);
        if (u <= 0) {
          pick = k;
          break;
        }
      }
    }
    const token = allowed[pick];
    if (token === EOS_ID) {
      finish = "stop";
      break;
    }
    const index = generated.length;
    generated.push(token);
    const piece = options.piece(token, index);
    logprobs.push({
      token: piece,
      logprob: logps[pick],
      bytes: bytesOf(piece),
      top_logprobs: topIndices(logps, options.topK).map((k) => {
        const alt = allowed[k] === EOS_ID ? "" : options.piece(allowed[k], index);
        return { token: alt, logprob: logps[k], bytes: bytesOf(alt) };
      }),
    });
  }
  return { tokens: generated, logprobs, finish };
}

interface TrieNode {
  readonly children: Map<number, TrieNode>;
  /** The choice whose tokens end here, if any. */
  end: number | null;
}

async function complete(info: ModelFileInfo, scorer: BatchScorer, body: ChatBody, text: string, mode: DescriptionTokens): Promise<Completion> {
  const vocab = info.vocabulary;
  const prompt = [BOS_ID, ...encodeText(vocab, text, mode)];
  if (prompt.length > MAX_PROMPT_TOKENS) throw new ApiError(400, `messages: the prompt has ${prompt.length} tokens, more than this server's ${MAX_PROMPT_TOKENS}`, "messages");
  const topK = body.logprobs ? (body.top_logprobs ?? 0) : 0;
  const constraint = constraintOf(body);
  const pieceOf = (token: number) => vocab.decode([token]);
  if (constraint) {
    const idOf = new Map([...vocab.descriptions].map(([id, d]) => [d, id]));
    constraint.choices.forEach((choice, k) => {
      if (!idOf.has(choice)) throw new ApiError(400, `enum member ${k} (${JSON.stringify(choice)}) is not a cluster description of this model`, "response_format");
    });
    const escape = (piece: string) => (constraint.prefix ? JSON.stringify(piece).slice(1, -1) : piece);
    const wrap = (answer: string, logprobs: TokenLogprob[]): Completion => {
      const all = [...(constraint.prefix ? [fixedToken(constraint.prefix)] : []), ...logprobs, ...(constraint.suffix ? [fixedToken(constraint.suffix)] : [])];
      return { content: `${constraint.prefix}${escape(answer)}${constraint.suffix}`, constrained: true, finish: "stop", promptTokens: prompt.length, completionTokens: all.length, logprobs: all };
    };
    if (mode === "cluster") {
      // Each cluster is one answer token, so greedy decoding under an enum of descriptions is the best allowed token.
      const tokens = constraint.choices.map((choice) => vocab.clusterToken(idOf.get(choice)!));
      const row = await scorer.score([prompt]);
      const logps = logSoftmax(row, tokens);
      const order = topIndices(logps, Math.max(1, topK));
      const best = order[0];
      const answer = constraint.choices[best];
      return wrap(answer, [
        {
          token: escape(answer),
          logprob: logps[best],
          bytes: bytesOf(escape(answer)),
          top_logprobs: order.slice(0, topK).map((k) => ({ token: escape(constraint.choices[k]), logprob: logps[k], bytes: bytesOf(escape(constraint.choices[k])) })),
        },
      ]);
    }
    // Descriptions as words: greedy decoding through the trie of the choices' word tokens, each step a softmax over
    // the tokens that continue some choice (and end of sequence where a choice is complete), like a grammar-
    // constrained server's processed logprobs. Choices sharing first words share those steps.
    const root: TrieNode = { children: new Map(), end: null };
    constraint.choices.forEach((choice, k) => {
      let node = root;
      for (const t of vocab.encode(choice, { phrases: false })) {
        let child = node.children.get(t);
        if (!child) node.children.set(t, (child = { children: new Map(), end: null }));
        node = child;
      }
      node.end ??= k;
    });
    const generated: number[] = [];
    const logprobs: TokenLogprob[] = [];
    let node = root;
    for (;;) {
      const options = [...node.children.keys()];
      if (node.end !== null) options.push(EOS_ID);
      const row = await scorer.score([[...prompt, ...generated]]);
      const logps = logSoftmax(row, options);
      const order = topIndices(logps, Math.max(1, topK));
      const piece = (token: number) => (token === EOS_ID ? "" : escape((generated.length > 0 ? " " : "") + pieceOf(token)));
      const best = options[order[0]];
      if (best === EOS_ID) break;
      logprobs.push({
        token: piece(best),
        logprob: logps[order[0]],
        bytes: bytesOf(piece(best)),
        top_logprobs: order.slice(0, topK).map((k) => ({ token: piece(options[k]), logprob: logps[k], bytes: bytesOf(piece(options[k])) })),
      });
      generated.push(best);
      node = node.children.get(best)!;
      if (node.children.size === 0) break;
    }
    return wrap(constraint.choices[node.end!], logprobs);
  }
  // Unconstrained: token by token over the whole vocabulary (specials other than end of sequence left out).
  const free = await generateFree(vocab, scorer, prompt, {
    maxNew: Math.min(body.max_completion_tokens ?? body.max_tokens ?? 16, MAX_NEW_TOKENS),
    temperature: body.temperature ?? 1,
    seed: body.seed ?? 0,
    topK,
    piece: (token, index) => (index > 0 ? " " : "") + pieceOf(token),
  });
  return {
    content: vocab.decode(free.tokens),
    constrained: false,
    finish: free.finish,
    promptTokens: prompt.length,
    completionTokens: free.tokens.length,
    logprobs: free.logprobs,
  };
}

const completionBodySchema = z.looseObject({
  model: z.string().min(1),
  prompt: z.union([z.string(), z.array(z.string()).min(1).max(4096)], { error: "expected a string or an array of strings (token arrays are not supported)" }),
  echo: z.boolean().nullable().optional(),
  // OpenAI allows up to 5 alternatives here; vLLM allows 20, and so does this server.
  logprobs: z.number().int().min(0).max(20).nullable().optional(),
  max_tokens: z.number().int().min(0).nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  seed: z.number().int().nullable().optional(),
  n: z.number().int().nullable().optional(),
  best_of: z.number().int().nullable().optional(),
  stream: z.boolean().nullable().optional(),
  suffix: z.string().nullable().optional(),
  stop: z.union([z.string(), z.array(z.string())]).nullable().optional(),
});
type CompletionBody = z.infer<typeof completionBodySchema>;

interface TextChoice {
  readonly text: string;
  readonly finish: "stop" | "length";
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly logprobs: { tokens: string[]; token_logprobs: number[]; top_logprobs: Record<string, number>[]; text_offset: number[] } | null;
}

/**
 * The legacy completions route over the embedded model, OpenAI's semantics: each prompt is read as plain text after
 * `<s>` (no chat template: the model knows one task), `echo` returns the prompt's tokens too, `max_tokens` 0 with
 * `echo` scores the prompt without generating, and `logprobs: k` gives every returned token's log-probability
 * (over `emittable`, the first text token conditioned on `<s>`) with the k best alternatives and the token itself.
 * The prompts of one request are scored together: their shared prefixes (the same prompt before different answers)
 * are evaluated once.
 */
async function completeText(info: ModelFileInfo, scorer: BatchScorer, body: CompletionBody, mode: DescriptionTokens): Promise<TextChoice[]> {
  const vocab = info.vocabulary;
  const texts = typeof body.prompt === "string" ? [body.prompt] : body.prompt;
  const echo = body.echo ?? false;
  const topK = body.logprobs ?? null;
  const maxNew = Math.min(body.max_tokens ?? 16, MAX_NEW_TOKENS);
  const allowed = emittable(vocab);
  const encoded = texts.map((text, i) => {
    const ids = encodeText(vocab, text, mode);
    if (ids.length === 0) throw new ApiError(400, `prompt${texts.length > 1 ? `.${i}` : ""}: empty (there is no text to complete)`, "prompt");
    if (ids.length + 1 > MAX_PROMPT_TOKENS) throw new ApiError(400, `prompt${texts.length > 1 ? `.${i}` : ""}: ${ids.length + 1} tokens, more than this server's ${MAX_PROMPT_TOKENS}`, "prompt");
    return { text, ids, full: [BOS_ID, ...ids] };
  });
  // The next-token distribution after every prefix an echo needs, each distinct prefix scored once.
  const rows = new Map<string, Float64Array>();
  if (echo && topK !== null) {
    const wanted = new Map<string, number[]>();
    for (const e of encoded) for (let i = 1; i < e.full.length; i++) wanted.set(e.full.slice(0, i).join(","), e.full.slice(0, i));
    const prefixes = [...wanted.values()];
    const logits = await scorer.score(prefixes);
    prefixes.forEach((p, k) => rows.set(p.join(","), logSoftmax(logits.subarray(k * vocab.size, (k + 1) * vocab.size), allowed)));
  }
  const pieceOf = (token: number) => vocab.decode([token]);
  const out: TextChoice[] = [];
  for (const e of encoded) {
    const tokens: string[] = [];
    const tokenLogprobs: number[] = [];
    const top: Record<string, number>[] = [];
    const offsets: number[] = [];
    if (echo && topK !== null) {
      tokenSpans(vocab, e.text, e.ids).forEach((span, i) => {
        const logps = rows.get(e.full.slice(0, i + 1).join(","))!;
        const k = emittableIndex(e.ids[i]);
        const alternatives: Record<string, number> = {};
        for (const j of topIndices(logps, topK)) alternatives[allowed[j] === EOS_ID ? "" : pieceOf(allowed[j])] = logps[j];
        alternatives[span.text] = logps[k];
        tokens.push(span.text);
        tokenLogprobs.push(logps[k]);
        top.push(alternatives);
        offsets.push(span.offset);
      });
    }
    const free =
      maxNew > 0
        ? await generateFree(vocab, scorer, e.full, { maxNew, temperature: body.temperature ?? 1, seed: body.seed ?? 0, topK: topK ?? 0, piece: (token) => ` ${pieceOf(token)}` })
        : { tokens: [], logprobs: [], finish: "length" as const };
    const head = echo ? e.text : "";
    let at = head.length;
    for (const t of free.logprobs) {
      tokens.push(t.token);
      tokenLogprobs.push(t.logprob);
      top.push(Object.fromEntries([...t.top_logprobs.map((a) => [a.token, a.logprob] as const), [t.token, t.logprob] as const]));
      offsets.push(at);
      at += t.token.length;
    }
    out.push({
      text: head + free.logprobs.map((t) => t.token).join(""),
      finish: free.finish,
      promptTokens: e.full.length,
      completionTokens: free.tokens.length,
      logprobs: topK === null ? null : { tokens, token_logprobs: tokenLogprobs, top_logprobs: top, text_offset: offsets },
    });
  }
  return out;
}

/**
 * Training examples of an OpenAI-style chat JSONL file: the last user message is the prompt (freshrec's template),
 * the last assistant message the answer (a description, or a JSON object with one string value). Errors name the line.
 */
export function parseTrainingFile(text: string, info: ModelFileInfo, param = "training_file"): TrainingSample[] {
  const idOf = new Map([...info.vocabulary.descriptions].map(([id, d]) => [d, id]));
  const samples: TrainingSample[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    const where = `${param} line ${i + 1}`;
    let row: { messages?: { role?: string; content?: unknown }[] };
    try {
      row = JSON.parse(line) as typeof row;
    } catch {
      throw new ApiError(400, `${where}: not JSON`, param);
    }
    const messages = Array.isArray(row.messages) ? row.messages : [];
    const user = [...messages].reverse().find((m) => m.role === "user");
    const assistant = [...messages].reverse().find((m) => m.role === "assistant");
    if (typeof user?.content !== "string" || typeof assistant?.content !== "string") {
      throw new ApiError(400, `${where}: needs messages with a user prompt and an assistant answer (strings)`, param);
    }
    const prompt = parsePrompt(user.content, info.vocabulary.descriptions);
    if (!prompt) throw new ApiError(400, `${where}: the user message does not follow freshrec's prompt template over this model's clusters`, param);
    let answerText = assistant.content.trim();
    if (answerText.startsWith("{")) {
      try {
        const values = Object.values(JSON.parse(answerText) as Record<string, unknown>);
        if (values.length === 1 && typeof values[0] === "string") answerText = values[0];
      } catch {
        // not JSON: the text itself is the answer
      }
    }
    const answer = idOf.get(answerText);
    if (answer === undefined) throw new ApiError(400, `${where}: the assistant answer ${JSON.stringify(answerText)} is not a cluster description of this model`, param);
    samples.push({ prompt, answer });
  });
  if (samples.length === 0) throw new ApiError(400, `${param}: no training examples`, param);
  return samples;
}
