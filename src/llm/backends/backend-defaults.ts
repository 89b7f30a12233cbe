/**
 * Defaults of the LLM backends, written once: the backends (and the openai backend's request pacer and hosted
 * fine-tuning) fall back to them, and the config schema (src/cli/config.ts, `llm.gguf`, `llm.openai`) takes its
 * defaults from here. A leaf module, so the config does not load the backends to read them.
 */
/** Defaults of `freshrec llm serve`, the OpenAI-compatible server (`llm.serve`). */
export const LLM_SERVE_DEFAULTS = { host: "127.0.0.1", port: 8081 } as const;

/** Defaults of the gguf backend (`llm.gguf`). */
export const GGUF_DEFAULTS = { contextSize: 1024 } as const;

/** Defaults of the OpenAI-compatible backend (`llm.openai`). */
export const OPENAI_DEFAULTS = {
  answer: "json_schema",
  ranking: "auto",
  echoTemplate: { prompt: "{prompt}", answer: " {answer}" },
  topLogprobs: 20,
  concurrency: 4,
  maxRetries: 5,
  timeoutMs: 60_000,
  maxTokens: 64,
  seed: 1,
  fineTunePollMs: 10_000,
  batch: { minPrompts: 1000, pollIntervalMs: 30_000, maxRequestsPerBatch: 50_000, priceFactor: 0.5 },
} as const;
