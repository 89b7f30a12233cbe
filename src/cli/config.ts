/**
 * freshrec.config.json: one zod schema is the single source of the options, their defaults and their
 * documentation (`freshrec config --print-defaults` and `--describe` are generated from it). Config loading is
 * kept apart from the jobs: the CLI turns the validated config into each job's `XxxOptions`.
 */
import { existsSync, readFileSync } from "node:fs";
import { z } from "zod";
import { DAY_MS } from "../domain/clock.js";
import { BadInputError, ConfigError } from "../domain/errors.js";
import { INGEST_DEFAULTS } from "../data/ingest/ingest.js";
import { MOVIELENS_DEFAULTS } from "../data/ingest/movielens.js";
import { SYNTHETIC_DEFAULTS } from "../data/synthetic/world.js";
import { DRIFT_DEFAULTS } from "../mining/drift.js";
import { GGUF_DEFAULTS, LLM_SERVE_DEFAULTS, OPENAI_DEFAULTS } from "../llm/backends/backend-defaults.js";
import { TRAIN_DEFAULTS } from "../llm/contracts.js";
import { DEFAULT_RELABEL_SHARE } from "../llm/relabel.js";
import { REFERENCE_SHAPE } from "../llm/engine/model-file.js";
import { TABLE_DEFAULTS } from "../tables/contract.js";
import { EXPERIMENT_DEFAULTS, SERVE_DEFAULTS } from "../serving/defaults.js";
import { CURATION_DEFAULTS } from "../update/curation.js";
import { FUSION_DEFAULTS, resolveFusionOptions } from "../update/fusion.js";
import { GATE_DEFAULTS } from "../update/gates.js";
import { RAG_DEFAULTS } from "../update/rag.js";
import { DEFAULT_FINETUNE_CADENCE, DEFAULT_REFRESH_CADENCE } from "../update/schedule/cadence.js";
import { SCHEDULER_DEFAULTS } from "../update/schedule/scheduler.js";

const positiveInt = () => z.number().int().positive();
/** Node's timers take at most 2^31 - 1 ms; a longer delay is not refused but fires after 1 ms, over and over. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** A period the server waits on a timer, in milliseconds or minutes. */
const timerMs = () => positiveInt().max(MAX_TIMER_MS, `at most ${MAX_TIMER_MS} ms (about 24.8 days), the longest a timer can wait`);
const timerMinutes = () => positiveInt().max(Math.floor(MAX_TIMER_MS / 60_000), `at most ${Math.floor(MAX_TIMER_MS / 60_000)} minutes (about 24.8 days), the longest a timer can wait`);

export const configSchema = z
  .object({
    store: z
      .object({
        url: z
          .string()
          .regex(/^postgres(ql)?:\/\/\S+$/, "a postgres://user@host:port/database URL")
          .nullable()
          .default(null)
          .describe(
            "PostgreSQL URL of a deployment's shared database (postgres://user:password@host:5432/db): events, tables, the model registry, experiments, the schedule and the openai backend's response cache live there (model files stay under <workspace>/models on every host). null = the embedded workspace (events.duckdb, tables.sqlite, registry.sqlite, schedule.sqlite). Every command runs on it; the simulations (schedule run --simulate, experiment simulate, the demo's A/B) read it and run on a copy under <workspace>, writing nothing to it but the openai backend's cached answers.",
          ),
      })
      .strict()
      .prefault({}),
    data: z
      .object({
        positiveMin: z
          .number()
          .nullable()
          .default(null)
          .describe(
            "Minimum engagement value that counts as positive. null = the dataset's own default recorded at ingestion (MovieLens: movielens.positiveRating; synthetic: 0.5; generic files: any event, engagement or not, is positive unless this is set).",
          ),
        badRowThreshold: z
          .number()
          .min(0)
          .max(1)
          .default(INGEST_DEFAULTS.badRowThreshold)
          .describe("Largest share of bad rows a file may have; above it the ingest fails with exit code 2 and writes nothing."),
        reportedBadRows: positiveInt().default(INGEST_DEFAULTS.reportedBadRows).describe("How many bad rows are listed (file, line, field) in an ingest report."),
      })
      .strict()
      .prefault({}),
    movielens: z
      .object({
        positiveRating: z.number().min(0).max(5).default(MOVIELENS_DEFAULTS.positiveRating).describe("A rating at or above this is positive engagement."),
        minClusterItems: z
          .number()
          .int()
          .min(1)
          .nullable()
          .default(null)
          .describe(
            "Smallest genre combination kept as its own cluster; smaller ones merge into their nearest parent. null = max(5, round(movies / 400)).",
          ),
      })
      .strict()
      .prefault({}),
    drift: z
      .object({
        topK: positiveInt().default(DRIFT_DEFAULTS.topK).describe("How many top successors of a pair are compared month over month (the paper: 5)."),
        minSupport: positiveInt()
          .default(DRIFT_DEFAULTS.minSupport)
          .describe("Transitions (distinct users per triple) a pair needs in a month for its top successors to be compared."),
      })
      .strict()
      .prefault({}),
    synth: z
      .object({
        seed: z.number().int().default(SYNTHETIC_DEFAULTS.seed).describe("Seed of the synthetic platform; the same seed gives the same events."),
        start: z.iso.date().default(SYNTHETIC_DEFAULTS.start).describe("First day of the synthetic period (UTC)."),
        months: positiveInt().max(60).default(SYNTHETIC_DEFAULTS.months).describe("Length of the synthetic period in calendar months."),
        users: positiveInt().nullable().default(null).describe("Simulated users. null = the scale's default (20,000; --quick 3,000)."),
        targetEvents: positiveInt()
          .nullable()
          .default(null)
          .describe("Expected number of generated events. null = the scale's default (3,000,000; --quick 300,000)."),
        targetJaccard: z
          .number()
          .gt(0)
          .lt(1)
          .default(SYNTHETIC_DEFAULTS.targetJaccard)
          .describe("Month-over-month Jaccard of top-5 successors the drift is calibrated to (the paper measured 0.17)."),
      })
      .strict()
      .prefault({}),
    rag: z
      .object({
        windowDays: z.number().positive().default(RAG_DEFAULTS.windowDays).describe("Days of recent events recounted at each RAG refresh."),
        topN: positiveInt().default(RAG_DEFAULTS.topN).describe("Retrieved successors put into each prompt (the paper found top-1 sufficient)."),
        minSupport: positiveInt().default(RAG_DEFAULTS.minSupport).describe("Distinct users a successor needs in the window to be retrieved (one account alone never sets a context)."),
        mode: z.enum(["frequency", "trend", "global"]).default(RAG_DEFAULTS.mode).describe("frequency (the paper's choice), trend (largest rise vs the previous window) or global (one context from the top pairs)."),
        globalPairs: positiveInt().default(RAG_DEFAULTS.globalPairs).describe("Global mode: how many of the most frequent transitions build the shared context."),
        method: z
          .enum(["fusion", "prompt"])
          .default(RAG_DEFAULTS.method)
          .describe("How a refresh uses fresh transitions: fusion (the product's hybrid: each row is the posterior of the LLM's prior for the pair and the fresh counts, backed off to the second cluster and to popularity, with strengths fitted just before the refresh; no prompt re-runs while the model is unchanged) or prompt (the paper's in-prompt RAG: the retrieved successors go into the prompt, rag.mode chooses which)."),
        fusion: z
          .object({
            windowsDays: z.array(z.number().positive()).min(1).default([...FUSION_DEFAULTS.windowsDays]).describe("Evidence window lengths (days) compared at each fusion refresh; the one that best predicts the transitions just before the refresh serves."),
            fitMinTransitions: positiveInt().default(FUSION_DEFAULTS.fitMinTransitions).describe("Transitions (distinct users per triple) the fit slice before a refresh must hold; it grows back from 1 day, doubling, until it does."),
            fitMaxDays: z.number().positive().default(FUSION_DEFAULTS.fitMaxDays).describe("Longest fit slice in days."),
            fitFloor: positiveInt().default(FUSION_DEFAULTS.fitFloor).describe("With fewer transitions than this before the refresh nothing is fitted: default strengths serve and the table records why."),
            priorTopM: positiveInt().default(FUSION_DEFAULTS.priorTopM).describe("Answers of the LLM prior kept per pair (top-M with probabilities; the rest of its mass is spread evenly). An OpenAI-compatible backend gives at most llm.openai.topLogprobs."),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    finetune: z
      .object({
        windowDays: positiveInt().default(CURATION_DEFAULTS.windowDays).describe("Days of events before the as-of time that fine-tuning samples come from at most; a fine-tune learns from the end of the live model's data when that is later (what came before is rehearsed: rehearsalShare)."),
        testDays: positiveInt().default(CURATION_DEFAULTS.testDays).describe("The longest test slice: the most recent days of that window, held out for test recall and never trained on."),
        testUsers: positiveInt().default(CURATION_DEFAULTS.testUsers).describe("Held-out users that make the test slice long enough: it is the shortest of 1, 2, 4... days (up to testDays) holding them, so a fine-tune on a busy platform learns up to the day before it."),
        trigger: z
          .enum(["schedule", "drift"])
          .default("schedule")
          .describe("When fine-tuning runs: schedule (on schedule.finetuneCadence, monthly by default) or drift (checked after every refresh: when the live model's prior adds less than finetune.driftMinGain nats per transition to the freshest transitions' likelihood, fine-tune)."),
        driftMinGain: z.number().min(0).default(0.01).describe("Drift trigger: nats per transition the live model's prior must add over the counts alone; below it the model is fine-tuned."),
        driftMinDays: z.number().min(0).default(14).describe("Drift trigger: days after the live model's training data ends before it may be replaced."),
        minTestUsers: positiveInt().default(CURATION_DEFAULTS.minTestUsers).describe("Held-out users the test slice needs; with fewer (a sparse log, coarse timestamps) it doubles back in time until it has them, at most half the window."),
        maxSamples: positiveInt().default(CURATION_DEFAULTS.maxSamples).describe("Training samples per run from the fine-tuning window (the paper: thousands); rehearsal adds rehearsalShare / (1 - rehearsalShare) times as many from before it (as many again at 0.5)."),
        maxPerPair: positiveInt().nullable().default(CURATION_DEFAULTS.maxPerPair).describe("Cap of samples per history pair; null (the default): no cap, so pairs keep their share of distinct users."),
        maxTargetShare: z.number().gt(0).max(1).default(CURATION_DEFAULTS.maxTargetShare).describe("Largest share of samples one target cluster may take; 1 (the default): no cap, so the model learns how often each cluster is the answer (a cap teaches a popular answer as a rare one)."),
        maxPerTriple: positiveInt().nullable().default(CURATION_DEFAULTS.maxPerTriple).describe("Cap of samples per (c1, c2, next) triple and week; null (the default): one per distinct user, so a pair's successors keep their shares."),
        contextShare: z.number().min(0).max(1).default(CURATION_DEFAULTS.contextShare).describe("Share of samples that carry the RAG context a refresh would have retrieved just before them (the model learns both prompt forms)."),
        relabelShare: z.number().min(0).max(1).default(CURATION_DEFAULTS.relabelShare).describe("Share of the samples with a context whose clusters are renamed by one random map (history, context and answer alike), so memory cannot answer them and the context can: the model learns to read a context that contradicts what it learnt."),
        rehearsalShare: z
          .number()
          .min(0)
          .lt(1)
          .default(CURATION_DEFAULTS.rehearsalShare)
          .describe("Share of a fine-tune's training set drawn from the transitions before its window (rehearsal, in proportion to their distinct users), so the model keeps what it learnt there; 0 trains on the window only, which on sparse logs unlearns the rest (README, fine-tuning)."),
        rehearsalDays: positiveInt().default(CURATION_DEFAULTS.rehearsalDays).describe("Days before the fine-tuning window that rehearsal samples come from."),
        contextPeriod: z.enum(["previous", "same"]).default("previous").describe("Week a sample's context comes from: previous (as a refresh served it) or same (its own week without its own user; an experiment to teach the model to follow contexts that contradict what it learnt)."),
        epochs: positiveInt().default(TRAIN_DEFAULTS.epochs).describe("Training epochs of a fine-tune (the best validation epoch is kept; early stop on no improvement)."),
        learningRate: z.number().positive().nullable().default(null).describe("Peak AdamW learning rate of a fine-tune. null = the trainer's default for a continued training, 3e-4 (a pretrain's is 1e-3)."),
        keepCheckpoints: z.boolean().default(TRAIN_DEFAULTS.keepCheckpoints).describe("Keep a fine-tune's per-epoch checkpoints (<model>.checkpoints/) after it ends; by default they are removed (nothing resumes from them)."),
        minExactMatchRate: z.number().min(0).max(1).default(GATE_DEFAULTS.minExactMatchRate).describe("Gate: share of generated answers that exactly name a cluster."),
        minTestRecall: z.number().min(0).max(1).default(GATE_DEFAULTS.minTestRecall).describe("Gate: share of held-out users whose predicted cluster appears in their later clusters."),
        maxRegression: z
          .number()
          .min(0)
          .max(1)
          .default(GATE_DEFAULTS.maxRegression)
          .describe("Regression gate: largest drop of the candidate's test recall below the live model's on the same test slice (absolute, 0.02 = 2 points); a larger drop halts the candidate when its 95% bootstrap interval over users excludes 0 (a drop the slice can tell from noise). 1 turns the gate off."),
      })
      .strict()
      .prefault({}),
    model: z
      .object({
        embedding: positiveInt().default(REFERENCE_SHAPE.embedding).describe("Embedding width of the embedded model created by pretrain (must divide by heads)."),
        layers: positiveInt().max(32).default(REFERENCE_SHAPE.layers).describe("Transformer blocks of the embedded model."),
        heads: positiveInt().default(REFERENCE_SHAPE.heads).describe("Attention heads per block."),
        feedForward: positiveInt().default(REFERENCE_SHAPE.feedForward).describe("Feed-forward width per block."),
      })
      .strict()
      .refine((m) => m.embedding % m.heads === 0, { message: "model.embedding must be a multiple of model.heads", path: ["embedding"] })
      .prefault({}),
    pretrain: z
      .object({
        windowDays: positiveInt().default(90).describe("Days of events before the as-of time the base model is trained on."),
        heldOutDays: positiveInt().default(14).describe("The most recent of those days, held out to compare the model's top-1 with the most-popular-next baseline."),
        epochs: positiveInt().default(TRAIN_DEFAULTS.epochs).describe("Training epochs of the base model (4 scored best on held-out data: 11.8% top-1 vs 10.3% at 8)."),
        maxSamples: positiveInt().default(60000).describe("Most recent transitions used for pretraining at most."),
        contextShare: z.number().min(0).max(1).default(0.5).describe("Share of transitions that carry the RAG context a refresh would have retrieved just before them, so the base model already reads contexts."),
        relabelShare: z.number().min(0).max(1).default(DEFAULT_RELABEL_SHARE).describe("Share of the transitions with a context whose clusters are renamed by one random map (history, context and answer alike), so the base model learns to read a context that contradicts what it memorised."),
        keepCheckpoints: z.boolean().default(TRAIN_DEFAULTS.keepCheckpoints).describe("Keep the base model's per-epoch checkpoints (models/<version>/checkpoints/) after it is trained; by default they are removed."),
      })
      .strict()
      .prefault({}),
    training: z
      .object({
        engine: z
          .enum(["ggml"], {
            // The first engine's name gets its own answer: a config written for it must say what to use instead.
            error: (issue) =>
              issue.input === "opt-epoch"
                ? 'expected "ggml": the "opt-epoch" engine (llama.cpp\'s llama_opt_epoch) was removed; engine v2 ("ggml") replaced it (set "ggml" or leave training.engine out)'
                : undefined,
          })
          .default("ggml")
          .describe(
            "How the embedded backend trains (pretrain and fine-tunes): ggml, engine v2, the only engine: the llama graph built on ggml, many samples per step isolated by a block-diagonal mask, the loss on the answer token, every weight trained, in a child process with progress, cancellation, validation, best epoch and checkpoints; default peak learning rate 1e-3 (3e-4 when continuing a model). The first engine, opt-epoch (llama.cpp's llama_opt_epoch), was removed once engine v2 beat it (README, Benchmarks).",
          ),
        precision: z
          .enum(["f32", "bf16"])
          .default("bf16")
          .describe("Precision of the matrix products: bf16 (the default: operands rounded to bfloat16 and accumulated in float32, weights, gradients and optimizer state stay float32; fastest on CPUs with AVX512-BF16) or f32."),
      })
      .strict()
      .prefault({}),
    llm: z
      .object({
        backend: z
          .enum(["embedded", "gguf", "openai"])
          .default("embedded")
          .describe("Which language model answers prompts: embedded (freshrec's own trained model), gguf (any llama.cpp GGUF file through node-llama-cpp) or openai (any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp server, freshrec llm serve)."),
        gguf: z
          .object({
            modelPath: z.string().min(1).nullable().default(null).describe("The GGUF file of the gguf backend (Llama, Qwen, Gemma...). Required when llm.backend is gguf."),
            loraAdapters: z
              .array(z.object({ path: z.string().min(1), scale: z.number().positive().default(1) }).strict())
              .default([])
              .describe("LoRA adapter GGUF files applied on top of the model (a fine-tune delivered as an adapter), with their scale."),
            contextSize: positiveInt().default(GGUF_DEFAULTS.contextSize).describe("Context length of the gguf backend's llama.cpp context, in tokens (prompt plus answer)."),
          })
          .strict()
          .prefault({}),
        openai: z
          .object({
            baseURL: z.url({ error: "expected an http(s) URL like http://127.0.0.1:8000/v1" }).default("https://api.openai.com/v1").describe("Base URL of the OpenAI-compatible API (with /v1), e.g. http://127.0.0.1:8000/v1 for vLLM or http://127.0.0.1:8081/v1 for freshrec llm serve."),
            model: z.string().min(1).nullable().default(null).describe("Model name on that server. Required when llm.backend is openai."),
            apiKeyEnv: z
              .string()
              .min(1)
              .nullable()
              .default("OPENAI_API_KEY")
              .describe(
                "Environment variable holding the API key (never put the key itself in the config); it must be set when freshrec talks to the server (an unset one is an error naming it). null declares a server that takes no key (a local vLLM, Ollama, llama.cpp server or freshrec llm serve): no Authorization header is sent. null is refused for OpenAI's own API.",
              ),
            answer: z
              .enum(["json_schema", "guided_choice", "text"])
              .default(OPENAI_DEFAULTS.answer)
              .describe("How answers are constrained: json_schema (structured output with an enum of cluster descriptions; OpenAI, vLLM, Ollama), guided_choice (vLLM's extension) or text (unconstrained; answers map to clusters by exact match only, which the exact-match gate measures)."),
            topLogprobs: z.number().int().min(1).max(20).default(OPENAI_DEFAULTS.topLogprobs).describe("Alternatives asked per answer token when scoring (OpenAI allows at most 20); ranked answers beyond them are not seen."),
            ranking: z
              .enum(["auto", "echo", "first-token"])
              .default(OPENAI_DEFAULTS.ranking)
              .describe(
                'How clusters are ranked with probabilities. echo: each description\'s whole-answer probability, from POST /v1/completions with echo and prompt log-probabilities (exact for descriptions of several tokens; vLLM and freshrec llm serve support it; the prompt is billed once per cluster). first-token: the first answer token\'s top_logprobs of a chat completion (approximate: descriptions sharing a first token share its probability, at most llm.openai.topLogprobs answers; for OpenAI\'s hosted models, Ollama and llama.cpp\'s server, which cannot echo). auto: first-token when baseURL is OpenAI\'s own API (openai.com), echo for any other server; a server that cannot echo fails the ranking with an error saying to set first-token.',
              ),
            echoTemplate: z
              .object({
                prompt: z
                  .string()
                  .refine((t) => t.split("{prompt}").length === 2, { error: 'expected a text with "{prompt}" exactly once' })
                  .default(OPENAI_DEFAULTS.echoTemplate.prompt)
                  .describe("Text before the answer under ranking echo: {prompt} is freshrec's prompt (exactly once), {system} the instructions chat requests carry. With vLLM, the model's chat template written out (e.g. ChatML up to the assistant turn) scores answers as the model writes them in a chat."),
                answer: z
                  .string()
                  .refine((t) => t.split("{answer}").length === 2, { error: 'expected a text with "{answer}" exactly once' })
                  .default(OPENAI_DEFAULTS.echoTemplate.answer)
                  .describe("The answer after it under ranking echo: {answer} is the description (exactly once). Text after {answer} (the model's end-of-turn token, e.g. <|im_end|>) ends the answer; without it a cluster set where one description begins another (\"drama\", \"drama history\") is refused."),
              })
              .strict()
              .prefault({}),
            concurrency: positiveInt().default(OPENAI_DEFAULTS.concurrency).describe("Requests in flight at once."),
            requestsPerMinute: positiveInt().nullable().default(null).describe("Client-side request rate limit. null = none."),
            tokensPerMinute: positiveInt().nullable().default(null).describe("Client-side token rate limit (prompt estimate plus the answer budget). null = none."),
            maxRetries: z.number().int().min(0).max(20).default(OPENAI_DEFAULTS.maxRetries).describe("Retries of a request answered 408, 409, 429 or 5xx, or that failed to connect, with exponential backoff (0.5 s doubling to 8 s, or the server's retry-after)."),
            timeoutMs: positiveInt().default(OPENAI_DEFAULTS.timeoutMs).describe("Timeout of one request."),
            maxTokens: positiveInt().default(OPENAI_DEFAULTS.maxTokens).describe("Answer budget per request, in tokens."),
            seed: z.number().int().default(OPENAI_DEFAULTS.seed).describe("Seed sent with every request (temperature is 0), for answers as repeatable as the server allows."),
            cache: z.boolean().default(true).describe("Keep every answer in <workspace>/llm-cache.sqlite keyed by a hash of the request, so an unchanged prompt is never paid for twice."),
            inputPricePerMTok: z.number().min(0).nullable().default(null).describe("Price of one million prompt tokens, for the dry-run cost estimate. null = unknown."),
            outputPricePerMTok: z.number().min(0).nullable().default(null).describe("Price of one million answer tokens, for the dry-run cost estimate. null = unknown."),
            fineTuneModel: z.string().min(1).nullable().default(null).describe("Model hosted fine-tuning starts from when there is no fine-tuned model yet. null = llm.openai.model."),
            fineTunePollMs: positiveInt().default(OPENAI_DEFAULTS.fineTunePollMs).describe("How often a hosted fine-tuning job is polled for progress."),
            batch: z
              .object({
                enabled: z.boolean().default(false).describe("Send table builds through the OpenAI Batch API (/v1/batches): half the price on OpenAI, answers within 24 h instead of at once."),
                minPrompts: positiveInt().default(OPENAI_DEFAULTS.batch.minPrompts).describe("Calls with fewer distinct uncached prompts than this go as ordinary requests (small incremental refreshes, gates with few test histories)."),
                pollIntervalMs: timerMs().default(OPENAI_DEFAULTS.batch.pollIntervalMs).describe("How often a running batch is polled."),
                maxRequestsPerBatch: z.number().int().min(1).max(50_000).default(OPENAI_DEFAULTS.batch.maxRequestsPerBatch).describe("Requests per batch file (OpenAI's limit is 50,000 and 200 MB); larger builds are split into several batches."),
                priceFactor: z.number().min(0).max(1).default(OPENAI_DEFAULTS.batch.priceFactor).describe("Batch price relative to llm.openai.*PricePerMTok, for the dry-run cost estimate (OpenAI: 0.5)."),
              })
              .strict()
              .prefault({}),
          })
          .strict()
          .prefault({}),
        serve: z
          .object({
            port: z.number().int().min(0).max(65535).default(LLM_SERVE_DEFAULTS.port).describe("TCP port of `freshrec llm serve` (0 = any free port)."),
            host: z.string().min(1).default(LLM_SERVE_DEFAULTS.host).describe("Interface of `freshrec llm serve`; 0.0.0.0 exposes the model beyond this machine."),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    tables: z
      .object({
        topN: positiveInt().max(50).default(TABLE_DEFAULTS.topN).describe("Ranked novel clusters kept per pair."),
        keep: positiveInt().default(TABLE_DEFAULTS.keep).describe("Table versions kept; older ones are garbage-collected (never the live one or its rollback target)."),
      })
      .strict()
      .prefault({}),
    schedule: z
      .object({
        finetuneCadence: z.string().min(1).default(DEFAULT_FINETUNE_CADENCE).describe("When fine-tuning runs: a UTC cron pattern or 'every N days [from ISO]' (default: monthly)."),
        refreshCadence: z.string().min(1).default(DEFAULT_REFRESH_CADENCE).describe("When the RAG refresh runs (default: every 2 days, the paper's sub-weekly cadence)."),
        overlap: z.enum(["skip", "buffer-one"]).default(SCHEDULER_DEFAULTS.overlap).describe("A job due while another runs is skipped (counted) or run right after."),
        catchupWindowDays: z.number().min(0).default(SCHEDULER_DEFAULTS.catchupWindowMs / DAY_MS).describe("Missed runs within this window run once (coalesced) at start-up; older ones count as missed."),
        maxConsecutiveFailures: positiveInt().default(SCHEDULER_DEFAULTS.maxConsecutiveFailures).describe("Failures in a row that pause a job."),
      })
      .strict()
      .prefault({}),
    serve: z
      .object({
        port: z.number().int().min(0).max(65535).default(SERVE_DEFAULTS.port).describe("TCP port of `freshrec serve` (0 = any free port)."),
        host: z.string().min(1).default(SERVE_DEFAULTS.host).describe("Interface to listen on; 0.0.0.0 exposes the API beyond this machine."),
        adminToken: z
          .string()
          .min(16)
          .nullable()
          .default(null)
          .describe("Bearer token of the admin routes (publish, rollback, model review, schedule status, experiments); the environment variable FRESHREC_ADMIN_TOKEN wins. null = admin routes answer 403. At least 16 characters."),
        bodyLimitBytes: positiveInt().default(SERVE_DEFAULTS.bodyLimitBytes).describe("Largest request body; a bigger one gets 413."),
        maxBatchEvents: positiveInt().default(SERVE_DEFAULTS.maxBatchEvents).describe("Most events one POST /v1/events may carry; more gets 413."),
        futureToleranceMs: z
          .number()
          .int()
          .min(0)
          .default(SERVE_DEFAULTS.futureToleranceMs)
          .describe("How far after the server's now an event's ts may be (client clock skew); a later one makes POST /v1/events answer 400, so one stray future time cannot become the data's newest event (every window counted back from it would be empty)."),
        unknownItems: z
          .enum(["reject", "skip"])
          .default(SERVE_DEFAULTS.unknownItems)
          .describe("Events naming an item that is not in the catalog: reject the whole batch with 400 (naming the index), or skip those events and count them."),
        reloadIntervalMs: timerMs().default(SERVE_DEFAULTS.reloadIntervalMs).describe("How often the server looks at the table store's live pointer and the model registry, and on store.url at the events, items and clusters other processes appended (a publish or an append by another process shows within this when its notification is lost)."),
        defaultN: positiveInt().max(50).default(SERVE_DEFAULTS.defaultN).describe("Exploration clusters returned when a request has no n."),
        maxN: positiveInt().max(50).default(SERVE_DEFAULTS.maxN).describe("Largest n a request may ask for."),
        itemsPerCluster: positiveInt().max(100).default(SERVE_DEFAULTS.itemsPerCluster).describe("Items grounded into each recommended cluster."),
        logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default(SERVE_DEFAULTS.logLevel).describe("Level of the server's structured (pino) logs on stderr."),
        groundingWindowDays: positiveInt().default(SERVE_DEFAULTS.groundingWindowDays).describe("Days of recent events the item grounding (co-visitation, popularity) and the cold-start answer are computed from."),
        groundingRebuildMinutes: timerMinutes().default(SERVE_DEFAULTS.groundingRebuildMinutes).describe("How often the grounding index is rebuilt from the event store."),
        covisitationSpan: positiveInt().max(50).default(SERVE_DEFAULTS.covisitationSpan).describe("Two positive events of one user at most this many positive events apart count as a co-visit."),
        recentItems: positiveInt().max(100).default(SERVE_DEFAULTS.recentItems).describe("The user's most recent positively engaged items that co-visitation starts from."),
      })
      .strict()
      .prefault({}),
    experiment: z
      .object({
        attributionHours: z.number().positive().default(EXPERIMENT_DEFAULTS.attributionHours).describe("An event on a recommended cluster within this many hours after the exposure is that exposure's outcome."),
        slateSize: positiveInt().max(50).default(EXPERIMENT_DEFAULTS.slateSize).describe("Clusters shown per exploration slate in `experiment simulate`."),
        days: positiveInt().max(120).default(EXPERIMENT_DEFAULTS.days).describe("Simulated days of `experiment simulate`."),
        refreshDays: positiveInt().default(EXPERIMENT_DEFAULTS.refreshDays).describe("Days between the treatment's RAG refreshes in `experiment simulate`."),
        users: positiveInt().nullable().default(null).describe("Simulated users of `experiment simulate` (the first N of the synthetic platform). null = all."),
        resamples: positiveInt().default(EXPERIMENT_DEFAULTS.resamples).describe("Bootstrap resamples (over users) behind the 95% confidence intervals."),
        flushIntervalMs: timerMs().default(EXPERIMENT_DEFAULTS.flushIntervalMs).describe("How often the server writes buffered exposures to the event store."),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .superRefine((config, context) => {
    // The drift trigger reads the prior weight a fusion refresh fits; prompted refreshes fit none, so with them no
    // fine-tune would ever start.
    if (config.finetune.trigger === "drift" && config.rag.method === "prompt") {
      context.addIssue({
        code: "custom",
        path: ["finetune", "trigger"],
        input: config.finetune.trigger,
        message: 'expected "schedule" with rag.method "prompt" (the drift trigger reads the prior weight that only fusion refreshes fit, so it would never fine-tune)',
      });
    }
    // The fusion options' rules across fields are the refresh's own: the file is judged as a refresh would judge it.
    try {
      resolveFusionOptions(config.rag.fusion);
    } catch (error) {
      if (!(error instanceof BadInputError)) throw error;
      const [, field, message] = /^rag\.fusion\.(\w+): (.*)$/s.exec(error.message) ?? [undefined, undefined, error.message];
      context.addIssue({ code: "custom", path: ["rag", "fusion", ...(field ? [field] : [])], input: field ? config.rag.fusion[field as keyof typeof config.rag.fusion] : config.rag.fusion, message });
    }
  });

export type FreshrecConfig = z.infer<typeof configSchema>;

export const DEFAULT_CONFIG_FILE = "freshrec.config.json";

/** The defaults, as a valid config file. */
export function defaultConfig(): FreshrecConfig {
  return configSchema.parse({});
}

/** One line per option: path, default and meaning, generated from the schema. */
export function describeConfig(): { path: string; default: unknown; description: string }[] {
  const schema = z.toJSONSchema(configSchema, { io: "input" }) as JsonSchemaNode;
  const rows: { path: string; default: unknown; description: string }[] = [];
  const walk = (node: JsonSchemaNode, path: string): void => {
    if (node.type === "object" && node.properties) {
      for (const [key, child] of Object.entries(node.properties)) walk(child, path ? `${path}.${key}` : key);
      return;
    }
    rows.push({ path, default: node.default, description: node.description ?? "" });
  };
  walk(schema, "");
  return rows;
}

interface JsonSchemaNode {
  type?: string;
  properties?: Record<string, JsonSchemaNode>;
  default?: unknown;
  description?: string;
}

/**
 * Loads and validates a config file. An explicitly named file must exist; the default file name is optional.
 * Errors name the field, the value found and what was expected.
 */
export function loadConfig(file: string | undefined): { config: FreshrecConfig; source: string | null } {
  const path = file ?? DEFAULT_CONFIG_FILE;
  if (!existsSync(path)) {
    if (file !== undefined) throw new ConfigError(`config file ${path} does not exist`);
    return { config: defaultConfig(), source: null };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    throw new ConfigError(`${path}: not valid JSON (${(error as Error).message})`);
  }
  return { config: parseConfig(raw, path), source: path };
}

export function parseConfig(raw: unknown, source = "config"): FreshrecConfig {
  const result = configSchema.safeParse(raw);
  if (result.success) return result.data;
  const issues = result.error.issues.flatMap((issue) => {
    if (issue.code === "unrecognized_keys") {
      return issue.keys.map((key) => {
        const path = [...issue.path.map(String), key].join(".");
        return { path, message: `field "${path}" is not an option (see freshrec config --describe)` };
      });
    }
    const path = issue.path.map(String).join(".") || "(root)";
    const value = valueAt(raw, issue.path);
    const found = value === undefined ? "nothing" : SECRET_FIELDS.has(path) ? secretShape(value) : JSON.stringify(value);
    const said = issue.message.replace(/^Invalid input: /, "");
    const expected = /^expected/i.test(said) ? said : `expected ${said}`;
    return [{ path, message: `field "${path}": got ${found}; ${expected}` }];
  });
  throw new ConfigError(`${source}: ${issues.map((i) => i.message).join("; ")}`, issues);
}

/** Fields whose value an error must never print (it would land in logs and terminals); it says their shape instead. */
const SECRET_FIELDS: ReadonlySet<string> = new Set(["serve.adminToken"]);

function secretShape(value: unknown): string {
  if (typeof value === "string") return `a string of ${value.length} characters (not shown)`;
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array (not shown)";
  return `${typeof value === "object" ? "an object" : `a ${typeof value}`} (not shown)`;
}

function valueAt(raw: unknown, path: readonly PropertyKey[]): unknown {
  let node: unknown = raw;
  for (const key of path) {
    if (node === null || typeof node !== "object") return undefined;
    node = (node as Record<PropertyKey, unknown>)[key];
  }
  return node;
}
