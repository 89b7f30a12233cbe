/**
 * The LLM layer's public surface: contracts, the prompt template, the embedded engine's backend and trainer, the
 * model registry and the base-model pre-training; the gguf and openai backends, their factory from config, hosted
 * fine-tuning, and the OpenAI-compatible server over the embedded model (`freshrec llm serve`).
 */
export * from "./contracts.js";
export { PROMPT_TEMPLATE, PROMPT_TEMPLATE_HASH, renderPrompt } from "./prompt.js";
export { EmbeddedLanguageModel, type EmbeddedModelOptions } from "./backends/embedded.js";
export { EmbeddedTrainer, type EmbeddedTrainerOptions, type FreshModelOptions } from "./engine/trainer.js";
export { REFERENCE_SHAPE, type ModelShape, readModelFile } from "./engine/model-file.js";
export { assertPinnedEngine, PINNED_NODE_LLAMA_CPP_VERSION } from "./engine/llama-api.js";
export { ModelRegistry, type ModelVersion, type ModelKind, type ModelStatus, type RegisterModelInput } from "./registry.js";
export { pretrainBaseModel, evaluateHeldOut, type PretrainOptions, type PretrainResult, type HeldOutEvaluation } from "./pretrain.js";
export { parsePrompt } from "./prompt.js";
export {
  languageModelBackend,
  responseCachePath,
  type BackendKind,
  type LlmBackend,
  type LlmBackendSettings,
  GgufLanguageModel,
  OpenAiLanguageModel,
  OpenAiTrainer,
  PostgresResponseCache,
  SqliteResponseCache,
  type ResponseCacheContract,
  hostedModelName,
  writeHostedModelFile,
} from "./backends/index.js";
export { startLlmServer, type LlmServerOptions, type RunningLlmServer } from "./openai-server.js";
