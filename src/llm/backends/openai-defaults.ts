/**
 * Defaults of the OpenAI-compatible backend, written once: the backend, its request pacer and hosted fine-tuning
 * fall back to them, and the config schema (src/cli/config.ts, `llm.openai`) takes its defaults from here.
 */
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
