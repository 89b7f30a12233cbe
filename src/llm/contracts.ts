/**
 * The two contracts of the LLM layer. Every backend (embedded llama.cpp engine, any GGUF through node-llama-cpp,
 * an OpenAI-compatible server) implements `LanguageModel`; backends that can change weights implement `Trainer`.
 * test/llm/conformance.ts is the one suite every backend runs.
 *
 * @example
 * const model = await EmbeddedLanguageModel.open("/ws/models/m000001.gguf");
 * const [ranked] = await model.score([{ history: { c1: "baking", c2: "hiking" } }], 10);
 * const answer = await model.generate({ history: { c1: "baking", c2: "hiking" } });
 * await model.close();
 */
import type { Cluster, ScoredCluster, Transition } from "../domain/types.js";
import type { PromptInput } from "./prompt.js";

export type { PromptInput, PromptContext } from "./prompt.js";

/** What a loaded model says about itself; recorded with every table made with it. */
export interface LanguageModelInfo {
  /** The backend's kind: "embedded", "gguf", "openai". */
  readonly backend: string;
  /** File path or server model name. */
  readonly source: string;
  /** The clusters the model may answer with (its answer vocabulary), in the model's own order. */
  readonly clusters: readonly Cluster[];
  /** Hash of the prompt template the model's prompts are rendered with. */
  readonly templateHash: string;
  /** Hash of the vocabulary, when the backend has its own (embedded models). */
  readonly vocabularyHash?: string;
  /**
   * How `generate` answers. "constrained": the answer is a cluster by construction (an argmax over cluster tokens, a
   * grammar or a JSON-schema enum of the descriptions), so the exact-match gate cannot fail and is not measured.
   * "free-text": the model writes text that names a cluster only if it matches a description exactly; the gate
   * measures it. Absent is treated as free text (measured).
   */
  readonly answers?: AnswerConstraint;
}

/** What constrains a model's generated answers (`LanguageModelInfo.answers`). */
export interface AnswerConstraint {
  readonly kind: "constrained" | "free-text";
  /** How, in words: what constrains the answer, or how free text is mapped to a cluster. */
  readonly how: string;
}

/** One constrained generation: the text the model produced and the cluster it names, if any. */
export interface GeneratedAnswer {
  /** The generated text, trimmed. */
  readonly text: string;
  /** The cluster whose description equals `text` exactly, or null (an exact-match failure). */
  readonly cluster: string | null;
}

export interface ScoreOptions {
  /**
   * Leave the history's own clusters out of the ranking (the task asks for a *novel* interest).
   * @defaultValue true
   */
  readonly excludeHistory?: boolean;
  /** Hears how many of the call's prompts are done (long calls: a remote batch job). */
  readonly onProgress?: (done: number) => void;
}

/** What scoring some prompts would cost, before any is sent (`refresh --dry-run`). */
export interface CostEstimate {
  readonly prompts: number;
  /** Prompts that cost nothing: answered in a response cache, or repeats of an earlier prompt of the same call. */
  readonly cached: number;
  /** Tokens estimated at 4 characters each (OpenAI's rule of thumb). */
  readonly promptTokens: number;
  readonly completionTokens: number;
  /** null when no price is configured (local backends have none). */
  readonly usd: number | null;
  /** How the prompts would be sent, e.g. "batch API (1 batch(es) or more, price x 0.5)" or "chat completions, 4 at a time". */
  readonly via: string;
}

export interface LanguageModel {
  readonly info: LanguageModelInfo;
  /**
   * For each prompt, the allowed answers (clusters) ranked best first with their probability (softmax over the
   * allowed answers only), at most `topN`. Deterministic run to run. Same shape as the table build's scorer.
   */
  score(prompts: readonly PromptInput[], topN: number, signal?: AbortSignal, options?: ScoreOptions): Promise<ScoredCluster[][]>;
  /** Prompts a table build should hand over per `score` call (generate.ts PromptScorer). @defaultValue 1024 */
  readonly promptsPerCall?: number;
  /** Prices scoring these prompts before it runs; absent for backends that are not paid per token. */
  estimateCost?(prompts: readonly PromptInput[]): Promise<CostEstimate>;
  /** One answer generated under a grammar that only admits cluster descriptions (greedy, deterministic). */
  generate(prompt: PromptInput, signal?: AbortSignal): Promise<GeneratedAnswer>;
  close(): Promise<void>;
}

/** One supervised example: the prompt and the cluster id that followed. */
export interface TrainingSample {
  readonly prompt: PromptInput;
  readonly answer: string;
}

/** Builds the training sample of a transition, optionally with its RAG context. */
export function sampleOf(t: Transition, successors?: readonly string[]): TrainingSample {
  return {
    prompt: successors && successors.length > 0 ? { history: { c1: t.c1, c2: t.c2 }, context: { successors } } : { history: { c1: t.c1, c2: t.c2 } },
    answer: t.next,
  };
}

/** Free text followed by the cluster it belongs to (catalog lines: item titles, descriptions). */
export interface CatalogLine {
  readonly text: string;
  readonly cluster: string;
}

/** Progress of one training run, reported after every epoch and (as `step`) while an epoch runs. */
export type TrainingEvent =
  | {
      readonly type: "step";
      readonly epoch: number;
      readonly epochs: number;
      /** Fraction of the epoch done, 0..1. */
      readonly fraction: number;
      readonly tokensPerSecond: number;
    }
  | ({ readonly type: "epoch" } & EpochReport);

export interface EpochReport {
  readonly epoch: number;
  readonly epochs: number;
  readonly learningRate: number;
  /**
   * Mean next-token loss and accuracy over the training rows (language-model loss on every position, the EOS
   * padding after each sample included, so it sits far below the answer loss). The embedded trainer's engine v2
   * ("ggml") trains the answer token only and reports its loss and top-1 over the whole vocabulary instead, each
   * window measured before its update.
   */
  readonly trainLoss: number;
  readonly trainAccuracy: number;
  /** Answer-token loss (-log p of the true next cluster, softmax over the allowed answers) on the validation set. */
  readonly validationLoss: number | null;
  /** Top-1 accuracy of the answer on the validation set. */
  readonly validationAccuracy: number | null;
  readonly tokensPerSecond: number;
  readonly seconds: number;
  /** File of this epoch's checkpoint; null once the training finished and removed it (see `keepCheckpoints`). */
  readonly checkpoint: string | null;
}

/** Defaults of TrainOptions; the config's finetune and pretrain epochs and keepCheckpoints come from here. */
export const TRAIN_DEFAULTS = { epochs: 4, keepCheckpoints: false } as const;

export interface TrainOptions {
  /**
   * Continue training this model file (fine-tuning); absent starts from the trainer's fresh initialisation.
   */
  readonly from?: string;
  /** Where the final (best) model goes. */
  readonly outputPath: string;
  /** Directory for one checkpoint per epoch. @defaultValue `${outputPath}.checkpoints` (one per output) */
  readonly checkpointDir?: string;
  /**
   * Keep the per-epoch checkpoints after the training ends. They exist so the best epoch can be kept when a later
   * one is worse; nothing resumes from them, so by default they are removed when the training ends (~4 MB each for
   * the reference shape: a monthly fine-tune would otherwise leave its epochs behind every month). @defaultValue false
   */
  readonly keepCheckpoints?: boolean;
  /** Samples held out to pick the best epoch and stop early; absent takes `validationFraction` of `samples`. */
  readonly validation?: readonly TrainingSample[];
  /** @defaultValue 0.1 (when `validation` is absent) */
  readonly validationFraction?: number;
  /** Extra catalog lines trained alongside the samples (base model pre-training). */
  readonly catalog?: readonly CatalogLine[];
  /**
   * Measured on the synthetic split (10k samples, held-out month after): 2 epochs 11.6%, 4 11.8%, 8 10.3% top-1
   * (the random validation split kept improving to epoch 6: it shares the training period and cannot see drift).
   * @defaultValue 4
   */
  readonly epochs?: number;
  /**
   * Peak AdamW learning rate per optimizer step (one step per sample): linear warm-up over the first 2% of steps
   * (at most 500), then cosine decay to 10% at the last step. @defaultValue 3e-4
   */
  readonly learningRate?: number;
  /** @defaultValue 0.01 */
  readonly weightDecay?: number;
  /** Epochs without validation improvement before stopping. @defaultValue 2 */
  readonly patience?: number;
  /** Seed of the shuffles. @defaultValue 1 */
  readonly seed?: number;
  readonly signal?: AbortSignal;
  readonly onProgress?: (event: TrainingEvent) => void;
}

export interface TrainResult {
  readonly modelPath: string;
  readonly epochs: readonly EpochReport[];
  /** Epoch whose checkpoint became the model (1-based). */
  readonly bestEpoch: number;
  readonly stoppedEarly: boolean;
  /** Tokens trained on, all epochs. */
  readonly trainTokens: number;
  readonly tokensPerSecond: number;
  readonly seconds: number;
  /**
   * CPU seconds the training used where it ran (the embedded trainer's child process), which the caller's own
   * process.cpuUsage() does not see; absent when unknown (a hosted job).
   */
  readonly cpuSeconds?: number;
  /** True when the model came from a training cache (an identical run done before); the costs are that run's. */
  readonly reused?: boolean;
  readonly trainSamples: number;
  readonly validationSamples: number;
}

export interface Trainer {
  /**
   * How the files it writes end: ".gguf" (weights) unless the trainer says otherwise (a hosted trainer writes a
   * ".json" reference to the model on its server).
   */
  readonly modelFileExtension?: string;
  /**
   * The model comes from elsewhere (`finetune --model FILE`): the samples are not trained on, the test slice only
   * gates it. @defaultValue false
   */
  readonly delivers?: boolean;
  /**
   * What decides this trainer's output besides the request and the caller's cache identity (the embedded trainer's
   * engine and precision, for one), so a training cache never hands one recipe's model to another. @defaultValue undefined
   */
  readonly recipe?: string;
  /** Trains (or continues training `options.from`) on the samples; rejects with CANCELLED when aborted. */
  train(samples: readonly TrainingSample[], options: TrainOptions): Promise<TrainResult>;
}
