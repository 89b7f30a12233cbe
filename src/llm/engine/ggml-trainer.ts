/**
 * Engine v2 (issue 17): trains a freshrec llama model on a ggml graph built directly
 * (ggml-graph.ts) with many samples packed per optimizer step, a block-diagonal causal mask, the loss on answer
 * tokens only, and every weight trained (embeddings, Q, K, V, O, FFN, norms, output) by AdamW (ggml's
 * `ggml_opt_step_adamw`) with the existing learning-rate schedule (rows.ts `learningRateAt`). The backward pass is
 * hand-written by default (ggml-backward.ts, its gradients checked against ggml's autograd); `backward: "autograd"`
 * trains through ggml-opt instead. It reads and writes freshrec model files with the existing GGUF reader and
 * writer, so what it trains is served unchanged by the llama.cpp scorer.
 *
 * The product reaches it through `EmbeddedTrainer` (trainer.ts; engine v2 is its only engine): train-worker.ts
 * drives a `GgmlTrainingRun` a window at a time in its child process, with progress, cancellation, validation, best
 * epoch and checkpoints, and the training cache keys on the trainer's recipe. This module itself runs synchronously
 * in the calling process and has none of those; `trainGgml` serves the proof tests (test/llm/ggml-trainer.test.ts)
 * and `npm run bench -- engine`.
 *
 * @example
 * const model = GgmlModel.load("/ws/models/init.gguf");
 * const stats = trainGgml(model, sequences, { epochs: 4, learningRate: 1e-3 });
 * model.save("/ws/models/trained.gguf");
 * model.free();
 */
import { FreshrecError } from "../../domain/errors.js";
import { seededRandom, shuffleInPlace } from "../../domain/random.js";
import { type GgufKv, ggufArray, ggufValue, readGgufFile, readTensorF32, writeGguf } from "./gguf.js";
import { type GgmlLlamaShape, GgmlStep, GgmlWeights, type PackedWindow, llamaTensorDims, llamaTensorNames, packWindows } from "./ggml-graph.js";
import { GgmlManualStep } from "./ggml-backward.js";
import { allocOptimizerParams } from "./llama-api.js";
import { learningRateAt } from "./rows.js";
import { EOS_ID } from "./vocabulary.js";

/** A llama model file's weights in ggml, with the file's metadata kept for saving. */
export class GgmlModel {
  private constructor(
    readonly weights: GgmlWeights,
    private readonly kvs: readonly GgufKv[],
  ) {}

  get shape(): GgmlLlamaShape {
    return this.weights.shape;
  }

  static load(path: string, threads = 1): GgmlModel {
    const file = readGgufFile(path);
    const num = (key: string): number => {
      const kv = file.kvs.get(key);
      const v = kv?.type === "array" ? Number(kv.value[0]) : ggufValue(file, key);
      if (typeof v !== "number") throw new FreshrecError("ENGINE", `${path}: ${key} missing`);
      return v;
    };
    const d = num("llama.embedding_length");
    const heads = num("llama.attention.head_count");
    if (num("llama.attention.head_count_kv") !== heads) throw new FreshrecError("ENGINE", `${path}: grouped-query attention is not supported by the ggml trainer`);
    const tokens = ggufArray(file, "tokenizer.ggml.tokens");
    const shape: GgmlLlamaShape = {
      embedding: d,
      layers: num("llama.block_count"),
      heads,
      feedForward: num("llama.feed_forward_length"),
      vocabulary: tokens?.length ?? num("llama.vocab_size"),
      contextLength: num("llama.context_length"),
      rmsEps: (ggufValue(file, "llama.attention.layer_norm_rms_epsilon") as number | undefined) ?? 1e-5,
      ropeFreqBase: (ggufValue(file, "llama.rope.freq_base") as number | undefined) ?? 10000,
    };
    const values = new Map<string, Float32Array>();
    for (const name of llamaTensorNames(shape.layers)) values.set(name, readTensorF32(file, name));
    return new GgmlModel(new GgmlWeights(shape, values, threads), file.kvList);
  }

  /** Writes the current weights with the source file's metadata (the existing GGUF writer). */
  save(path: string): void {
    const tensors = llamaTensorNames(this.shape.layers).map((name) => ({
      name,
      dims: llamaTensorDims(this.shape, name),
      data: this.weights.read(name),
    }));
    writeGguf(path, { kvs: this.kvs, tensors });
  }

  free(): void {
    this.weights.free();
  }
}

export interface GgmlTrainOptions {
  /** @defaultValue 1 */
  readonly epochs?: number;
  /** Peak AdamW rate (linear warm-up, cosine decay to 10%: rows.ts `learningRateAt`). @defaultValue 1e-3 */
  readonly learningRate?: number;
  /** @defaultValue 0 */
  readonly weightDecay?: number;
  /**
   * Tokens per packed window (one optimizer step). Keep it and `maxSamples` multiples of 32: they are contraction
   * lengths of gradient products, and tinyBLAS's bf16 kernel only takes multiples of 32 (others fall back to
   * ggml_vec_dot_bf16, 18% of a 128-token/16-sample step in perf). Reference shape, bf16, 1 thread, tokens per
   * CPU-second: 128 ~7k, 256 ~9-10k, 512 ~9k (single runs). @defaultValue 256
   */
  readonly windowTokens?: number;
  /** Most samples per window (answer rows of the graph). @defaultValue windowTokens / 8 */
  readonly maxSamples?: number;
  /** Seed of the per-epoch shuffles. @defaultValue 1 */
  readonly seed?: number;
  /** Warm-up steps. @defaultValue 2% of the steps, at most 500 */
  readonly warmup?: number;
  /** CPU threads of the graph computation. @defaultValue the model's (1) */
  readonly threads?: number;
  /**
   * Backward pass: "manual" (ggml-backward.ts: matrix-product gradients as MUL_MATs, checked against autograd) or
   * "autograd" (ggml_build_backward_expand through ggml-opt, whose OUT_PROD kernels dominate the step).
   * @defaultValue "manual"
   */
  readonly backward?: "manual" | "autograd";
  /** Matrix-product precision of the manual backward pass (ggml-backward.ts `ManualStepOptions.precision`). @defaultValue "f32" */
  readonly precision?: "f32" | "bf16";
  /** Called after every optimizer step. */
  readonly onStep?: (step: GgmlStepReport) => void;
}

export interface GgmlTrainStats {
  readonly steps: number;
  /** Real tokens of the samples trained (each sample's prompt and answer, padding excluded), over all epochs. */
  readonly tokens: number;
  readonly samples: number;
  readonly seconds: number;
  readonly tokensPerSecond: number;
  /** Mean answer loss of each epoch's steps (before each step's update). */
  readonly epochLoss: readonly number[];
  readonly windowTokens: number;
  readonly maxSamples: number;
}

/** What one optimizer step of a `GgmlTrainingRun` did. */
export interface GgmlStepReport {
  /** 1-based, over all epochs. */
  readonly step: number;
  readonly steps: number;
  readonly epoch: number;
  /** Mean answer loss of the window's samples, before the update. */
  readonly loss: number;
  readonly samples: number;
  /** Samples whose answer was the vocabulary's argmax before the update (manual backward only; else 0). */
  readonly correct: number;
  /** Real tokens of the window's samples, answers included. */
  readonly tokens: number;
  readonly learningRate: number;
}

/**
 * One training of `model` on token sequences (BOS, prompt tokens, answer token: trainer.ts `sampleTokens`), many
 * samples per step, driven a window at a time by its caller (the training worker validates and checkpoints between
 * epochs, and yields to its event loop between windows). Each epoch's order is a seeded shuffle drawn up front (the
 * schedule needs the total step count); its windows are packed when the caller asks for them, so only one epoch's
 * windows are held at a time.
 */
export class GgmlTrainingRun {
  readonly steps: number;
  readonly warmup: number;
  readonly windowTokens: number;
  readonly maxSamples: number;
  private readonly orders: number[][] = [];
  private readonly peak: number;
  private readonly weightDecay: number;
  private readonly optimizer = allocOptimizerParams();
  private readonly step: GgmlManualStep | GgmlStep;
  private done = 0;

  constructor(
    model: GgmlModel,
    private readonly sequences: readonly (readonly number[])[],
    private readonly options: GgmlTrainOptions = {},
  ) {
    if (sequences.length === 0) throw new FreshrecError("BAD_INPUT", "nothing to train on");
    const epochs = options.epochs ?? 1;
    this.windowTokens = options.windowTokens ?? 256;
    this.maxSamples = options.maxSamples ?? Math.max(1, Math.floor(this.windowTokens / 8));
    this.peak = options.learningRate ?? 1e-3;
    this.weightDecay = options.weightDecay ?? 0;
    const random = seededRandom(options.seed ?? 1);
    if (options.threads !== undefined) model.weights.setThreads(options.threads);
    let steps = 0;
    for (let e = 0; e < epochs; e++) {
      const order = shuffleInPlace(sequences.map((_, i) => i), random);
      this.orders.push(order);
      steps += packWindows(sequences, order, this.windowTokens, this.maxSamples, EOS_ID).length;
    }
    this.steps = steps;
    this.warmup = options.warmup ?? Math.min(Math.round(steps * 0.02), 500);
    this.setRate(learningRateAt(0, steps, this.peak, this.warmup));
    const manual = (options.backward ?? "manual") === "manual";
    this.step = manual
      ? new GgmlManualStep(model.weights, { windowTokens: this.windowTokens, maxSamples: this.maxSamples, precision: options.precision })
      : new GgmlStep(model.weights, { windowTokens: this.windowTokens, maxSamples: this.maxSamples, train: true, optimizerParams: this.optimizer.ptr });
  }

  get epochs(): number {
    return this.orders.length;
  }

  /** The windows of epoch `epoch` (0-based), in training order. */
  windows(epoch: number): PackedWindow[] {
    return packWindows(this.sequences, this.orders[epoch], this.windowTokens, this.maxSamples, EOS_ID);
  }

  /** One optimizer step on `window` at the schedule's next learning rate. */
  train(window: PackedWindow, epoch: number): GgmlStepReport {
    const lr = learningRateAt(this.done, this.steps, this.peak, this.warmup);
    this.setRate(lr);
    const r = this.step instanceof GgmlManualStep ? this.step.run(window, { learningRate: lr, weightDecay: this.weightDecay }) : this.step.run(window);
    this.done++;
    const report: GgmlStepReport = {
      step: this.done,
      steps: this.steps,
      epoch,
      loss: r.loss,
      samples: r.samples,
      correct: r.correct ?? 0,
      tokens: window.realTokens + r.samples, // + each sample's answer token (predicted, not read)
      learningRate: lr,
    };
    this.options.onStep?.(report);
    return report;
  }

  free(): void {
    this.step.free();
  }

  private setRate(lr: number): void {
    this.optimizer.set({ adamw_alpha: lr, adamw_beta1: 0.9, adamw_beta2: 0.999, adamw_eps: 1e-8, adamw_wd: this.weightDecay, sgd_alpha: lr, sgd_wd: 0 });
  }
}

/**
 * Trains `model` in place on token sequences (BOS, prompt tokens, answer token: trainer.ts `sampleTokens`), many
 * samples per step, all epochs at once (`GgmlTrainingRun` a window at a time). Each epoch shuffles the samples
 * (seeded) and packs them in that order.
 */
export function trainGgml(model: GgmlModel, sequences: readonly (readonly number[])[], options: GgmlTrainOptions = {}): GgmlTrainStats {
  const run = new GgmlTrainingRun(model, sequences, options);
  let tokens = 0;
  let samples = 0;
  const epochLoss: number[] = [];
  const t0 = process.hrtime.bigint();
  try {
    for (let e = 0; e < run.epochs; e++) {
      let lossSum = 0;
      let lossSamples = 0;
      for (const window of run.windows(e)) {
        const r = run.train(window, e);
        lossSum += r.loss * r.samples;
        lossSamples += r.samples;
        samples += r.samples;
        tokens += r.tokens;
      }
      epochLoss.push(lossSum / lossSamples);
    }
  } finally {
    run.free();
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { steps: run.steps, tokens, samples, seconds, tokensPerSecond: tokens / seconds, epochLoss, windowTokens: run.windowTokens, maxSamples: run.maxSamples };
}

/** Answer logits of each sequence's prompt (the last token is the answer and is not read), with forward graphs. */
export function answerLogits(model: GgmlModel, sequences: readonly (readonly number[])[], windowTokens = 256, maxSamples = 32): Float32Array[] {
  const V = model.shape.vocabulary;
  const step = new GgmlStep(model.weights, { windowTokens, maxSamples, train: false });
  const out: Float32Array[] = [];
  try {
    const windows = packWindows(sequences, sequences.map((_, i) => i), windowTokens, maxSamples, EOS_ID);
    for (const w of windows) {
      step.run(w);
      const logits = step.logits();
      for (let s = 0; s < w.answers.length; s++) out.push(logits.slice(s * V, (s + 1) * V));
    }
  } finally {
    step.free();
  }
  return out;
}
