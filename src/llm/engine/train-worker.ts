/**
 * The training process. llama.cpp's training calls are synchronous and take seconds to minutes, so they run in a
 * child process (forked by trainer.ts): the caller's event loop stays free, a cancel is a kill that stops mid-epoch,
 * and an abort inside llama.cpp (it asserts instead of returning errors) ends this process, not the caller.
 *
 * Input: one IPC message with a `TrainJob`. Output: JSON lines on fd 3 (a pipe, written synchronously, because the
 * IPC channel only flushes when the event loop runs, which it does not during an epoch).
 */
import { copyFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import koffi from "koffi";
import { seededRandom, shuffleInPlace } from "../../domain/random.js";
import { GgmlModel, GgmlTrainingRun } from "./ggml-trainer.js";
import { readModelFile, restampModelFile } from "./model-file.js";
import {
  type LlamaApi,
  type NativePointer,
  allocOptimizerParams,
  createContext,
  int32View,
  gradientAccumulators,
  loadLlamaApi,
  loadModel,
  pushThreadCount,
  resetGradients,
} from "./llama-api.js";
import { BatchScorer } from "./scorer.js";
import { learningRateAt, writeRows } from "./rows.js";
import { BOS_ID } from "./vocabulary.js";

export interface ValidationPrompt {
  readonly prompt: readonly number[];
  /** Index of the true answer among the answer tokens. */
  readonly answer: number;
  /** Answer indices that are not allowed (the history's own clusters). */
  readonly excluded: readonly number[];
}

export interface TrainJob {
  readonly modelPath: string;
  readonly outputPath: string;
  readonly checkpointDir: string;
  /** Token sequences (BOS ... answer) of the training samples. */
  readonly sequences: readonly (readonly number[])[];
  readonly validation: readonly ValidationPrompt[];
  readonly answerBase: number;
  readonly answerCount: number;
  /**
   * Tokens per training row (llama_opt_init's n_ctx_train): one sample per row, EOS-padded; at least the longest
   * sequence.
   */
  readonly rowTokens: number;
  readonly epochs: number;
  readonly learningRate: number;
  readonly weightDecay: number;
  readonly patience: number;
  readonly seed: number;
  readonly threads: number;
  /**
   * "opt-epoch": llama.cpp's `llama_opt_epoch`, one sample per step (the default). "ggml": engine v2
   * (ggml-trainer.ts), the llama graph built on ggml, many isolated samples per step, loss on the answers, every
   * weight trained. @defaultValue "opt-epoch"
   */
  readonly engine?: TrainingEngine;
  /** Engine "ggml" only: window size, samples per window and matrix-product precision (GgmlTrainOptions). */
  readonly ggml?: { readonly windowTokens: number; readonly maxSamples: number; readonly precision: "f32" | "bf16" };
}

export type TrainingEngine = "opt-epoch" | "ggml";

export type WorkerMessage =
  | { type: "step"; epoch: number; fraction: number; tokensPerSecond: number }
  | {
      type: "epoch";
      epoch: number;
      learningRate: number;
      trainLoss: number;
      trainAccuracy: number;
      validationLoss: number | null;
      validationAccuracy: number | null;
      tokensPerSecond: number;
      seconds: number;
      tokens: number;
      checkpoint: string;
    }
  | { type: "done"; bestEpoch: number; stoppedEarly: boolean; cpuSeconds: number }
  | { type: "error"; message: string };

const EVENT_FD = 3;

const epochCallbackProto = koffi.proto(
  "void freshrec_opt_epoch_cb(bool train, void *opt_ctx, void *dataset, void *result, int64_t ibatch, int64_t ibatch_max, int64_t t_start_us)",
);

function emit(message: WorkerMessage): void {
  writeSync(EVENT_FD, JSON.stringify(message) + "\n");
}

/** Seeded Fisher-Yates shuffle (the project's mulberry32; a zero seed is read as 1). */
function shuffle<T>(items: T[], seed: number): T[] {
  return shuffleInPlace(items, seededRandom(seed >>> 0 || 1));
}

async function evaluate(scorer: BatchScorer, validation: readonly ValidationPrompt[], answerCount: number): Promise<{ loss: number; accuracy: number }> {
  const logits = await scorer.score(validation.map((v) => v.prompt));
  let loss = 0;
  let hits = 0;
  validation.forEach((v, i) => {
    const off = i * answerCount;
    const excluded = new Set(v.excluded);
    let max = -Infinity;
    let best = -1;
    for (let k = 0; k < answerCount; k++) {
      if (excluded.has(k)) continue;
      if (logits[off + k] > max) {
        max = logits[off + k];
        best = k;
      }
    }
    let sum = 0;
    for (let k = 0; k < answerCount; k++) if (!excluded.has(k)) sum += Math.exp(logits[off + k] - max);
    loss += -(logits[off + v.answer] - max - Math.log(sum));
    if (best === v.answer) hits++;
  });
  return { loss: loss / validation.length, accuracy: hits / validation.length };
}

/** Optimizer steps of engine v2 between two turns of the event loop (a "disconnect" must be able to end us). */
const GGML_STEPS_PER_TURN = 32;

/**
 * The best epoch and early stopping, the same for both engines: the checkpoint with the lowest validation loss is
 * the output (without validation, the latest epoch), and `patience` epochs in a row without a better one end the
 * run before its last epoch.
 */
class EpochSelection {
  best = { epoch: 0, loss: Infinity, path: "" };
  stoppedEarly = false;
  private sinceBest = 0;

  constructor(
    private readonly patience: number,
    private readonly epochs: number,
  ) {}

  /** Records an epoch's checkpoint; true when training should stop here. */
  record(epoch: number, validationLoss: number | null, checkpoint: string): boolean {
    const score = validationLoss ?? -epoch;
    if (score < this.best.loss) {
      this.best = { epoch, loss: score, path: checkpoint };
      this.sinceBest = 0;
      return false;
    }
    if (++this.sinceBest >= this.patience && epoch < this.epochs) {
      this.stoppedEarly = true;
      return true;
    }
    return false;
  }
}

/**
 * Engine v2 in this process: the same job, epochs, validation, checkpoints, best epoch, early stopping and events as
 * `run`, with the ggml training graph instead of llama_opt_epoch. Validation scores each epoch's checkpoint through
 * the llama.cpp scorer, so it measures the file that is served. The epoch's train loss and accuracy are the answer
 * token's (whole vocabulary, each window before its update), not llama_opt_epoch's every-position loss.
 */
async function runGgml(job: TrainJob): Promise<void> {
  const api: LlamaApi = loadLlamaApi();
  const info = readModelFile(job.modelPath);
  const settings = job.ggml ?? { windowTokens: 256, maxSamples: 32, precision: "f32" as const };
  const model = GgmlModel.load(job.modelPath, job.threads);
  const run = new GgmlTrainingRun(model, job.sequences, {
    epochs: job.epochs,
    learningRate: job.learningRate,
    weightDecay: job.weightDecay,
    windowTokens: settings.windowTokens,
    maxSamples: settings.maxSamples,
    precision: settings.precision,
    seed: job.seed,
  });
  const selection = new EpochSelection(job.patience, job.epochs);
  let lastStepReport = 0n;
  try {
    for (let epoch = 1; epoch <= job.epochs; epoch++) {
      const epochStart = process.hrtime.bigint();
      const windows = run.windows(epoch - 1);
      let tokens = 0;
      let lossSum = 0;
      let samples = 0;
      let correct = 0;
      let learningRate = 0;
      for (let i = 0; i < windows.length; i++) {
        const r = run.train(windows[i], epoch - 1);
        tokens += r.tokens;
        lossSum += r.loss * r.samples;
        samples += r.samples;
        correct += r.correct;
        learningRate = r.learningRate;
        const now = process.hrtime.bigint();
        if (now - lastStepReport >= 250_000_000n) {
          lastStepReport = now;
          const seconds = Number(now - epochStart) / 1e9;
          emit({ type: "step", epoch, fraction: (i + 1) / windows.length, tokensPerSecond: seconds > 0 ? tokens / seconds : 0 });
        }
        if ((i + 1) % GGML_STEPS_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      const seconds = Number(process.hrtime.bigint() - epochStart) / 1e9;
      const checkpoint = join(job.checkpointDir, `epoch-${String(epoch).padStart(3, "0")}.gguf`);
      model.save(checkpoint);
      let val: { loss: number; accuracy: number } | null = null;
      if (job.validation.length > 0) {
        const scorer = BatchScorer.open(api, checkpoint, { answerBase: job.answerBase, answerCount: job.answerCount, threads: job.threads });
        try {
          val = await evaluate(scorer, job.validation, job.answerCount);
        } finally {
          await scorer.close();
        }
      }
      emit({
        type: "epoch",
        epoch,
        learningRate,
        trainLoss: lossSum / Math.max(samples, 1),
        trainAccuracy: correct / Math.max(samples, 1),
        validationLoss: val?.loss ?? null,
        validationAccuracy: val?.accuracy ?? null,
        tokensPerSecond: tokens / seconds,
        seconds,
        tokens,
        checkpoint,
      });
      if (selection.record(epoch, val?.loss ?? null, checkpoint)) break;
    }
  } finally {
    run.free();
    model.free();
  }
  // The output appears whole or not at all: copy to a temporary name, then rename. The checkpoint already carries
  // the start file's freshrec metadata (GgmlModel.save keeps it); the context length is checked, not rewritten.
  if (readModelFile(selection.best.path).shape.contextLength !== info.shape.contextLength) throw new Error("engine v2 wrote a checkpoint with another context length");
  const tmp = `${job.outputPath}.partial`;
  copyFileSync(selection.best.path, tmp);
  renameSync(tmp, job.outputPath);
  const cpu = process.cpuUsage();
  emit({ type: "done", bestEpoch: selection.best.epoch, stoppedEarly: selection.stoppedEarly, cpuSeconds: (cpu.user + cpu.system) / 1e6 });
}

/** Rows per llama_opt_epoch call: bounds the dataset buffer (rows x context tokens x 8 bytes, 2 MiB at 256). */
const ROWS_PER_CALL = 1024;

async function run(job: TrainJob): Promise<void> {
  const api: LlamaApi = loadLlamaApi();
  const info = readModelFile(job.modelPath);
  const model = loadModel(api, job.modelPath, { writable: true });
  // The context only has to hold one row; llama.cpp pads contexts to multiples of 256 (smaller ones trip asserts).
  const stride = Math.ceil(job.rowTokens / 256) * 256;
  const ctx = createContext(api, model, {
    nCtx: stride,
    nBatch: stride,
    nUbatch: stride,
    nSeqMax: 1,
    threads: job.threads,
    kvUnified: true,
  });
  pushThreadCount(api, ctx, BOS_ID);
  const rowsPerEpoch = job.sequences.length;
  const totalSteps = rowsPerEpoch * job.epochs;
  const warmup = Math.min(Math.round(totalSteps * 0.02), 500);
  const optimizer = allocOptimizerParams();
  let currentRate = 0;
  const setRate = (lr: number) => {
    currentRate = lr;
    optimizer.set({ adamw_alpha: lr, adamw_beta1: 0.9, adamw_beta2: 0.999, adamw_eps: 1e-8, adamw_wd: job.weightDecay, sgd_alpha: lr, sgd_wd: 0 });
  };
  setRate(learningRateAt(0, totalSteps, job.learningRate, warmup));
  // Isolation: llama_opt_init sets the model's n_ctx_train to this value, and llama_opt_epoch then trains only the
  // first n_ctx_train tokens of every dataset row, as one sequence, with the KV cache cleared per row (n_batch and
  // n_ubatch shrink to it, so one row = one optimizer step). One sample per row means each prompt is trained
  // exactly as it is served: alone. Packing ~30 samples into one 512-token causal window instead let every prompt
  // attend to the samples before it; with frozen content-only keys (K/V get no gradient) the model cannot learn to
  // ignore them. Measured (synthetic split, 10k samples, gradients cleared in both runs): packed 7.0% held-out
  // top-1, no better than the most-popular-next baseline; isolated 11.8%.
  // Cost: a 14-token step carries fixed work (AdamW over every weight, graph build, barriers), so real tokens/s is
  // below 512-token windows: reference shape, quiet 2-core machine, 2.4-2.7k (1 thread; 2 threads no faster)
  // vs 3.6-4.4k (1 thread) and 5.8-6.0k (2 threads) for packed windows.
  api.fn.llama_opt_init(ctx, model, {
    n_ctx_train: job.rowTokens,
    param_filter: api.symbol("llama_opt_param_filter_all"),
    param_filter_ud: null,
    get_opt_pars: api.symbol("ggml_opt_get_constant_optimizer_params"),
    get_opt_pars_ud: optimizer.ptr,
    optimizer_type: 0, // AdamW
  });

  const scorer =
    job.validation.length > 0
      ? BatchScorer.onModel(api, model, { answerBase: job.answerBase, answerCount: job.answerCount, threads: job.threads })
      : null;
  const resultTrain = api.fn.ggml_opt_result_init();

  let epochNow = 0;
  let epochStart = process.hrtime.bigint();
  let stepsBefore = 0; // optimizer steps of earlier epochs and earlier calls in this epoch
  let rowsDoneInEpoch = 0;
  let realTokensPerRow = 0;
  let lastStepReport = 0n;
  let accumulators: NativePointer[] | null = null;
  let callbackError: unknown = null;
  const stepCallback = koffi.register(
    (train: boolean, optCtx: NativePointer, _ds: NativePointer, _res: NativePointer, ibatchRaw: number | bigint) => {
      try {
        const ibatch = Number(ibatchRaw); // rows done in this call (one row = one step)
        // Runs after every optimizer step: llama.cpp never clears its gradient accumulators itself (see
        // gradientAccumulators), so without this every step would add all earlier gradients.
        if (train) {
          accumulators ??= gradientAccumulators(api, optCtx);
          resetGradients(api, accumulators);
        }
        // The optimizer reads the parameters struct at every step: a per-step schedule.
        setRate(learningRateAt(stepsBefore + ibatch, totalSteps, job.learningRate, warmup));
        const now = process.hrtime.bigint();
        if (now - lastStepReport < 250_000_000n) return;
        lastStepReport = now;
        const seconds = Number(now - epochStart) / 1e9;
        const rows = rowsDoneInEpoch + ibatch;
        emit({
          type: "step",
          epoch: epochNow,
          fraction: rows / rowsPerEpoch,
          tokensPerSecond: seconds > 0 ? (rows * realTokensPerRow) / seconds : 0,
        });
      } catch (e) {
        callbackError ??= e;
      }
    },
    koffi.pointer(epochCallbackProto),
  );

  const selection = new EpochSelection(job.patience, job.epochs);
  const order = job.sequences.map((_, i) => i);
  const totalReal = job.sequences.reduce((a, s) => a + s.length, 0);
  realTokensPerRow = totalReal / Math.max(rowsPerEpoch, 1);
  for (let epoch = 1; epoch <= job.epochs; epoch++) {
    epochNow = epoch;
    // llama_opt_epoch walks the dataset in order: a new seeded order every epoch.
    shuffle(order, job.seed * 1000 + epoch);
    epochStart = process.hrtime.bigint();
    api.fn.ggml_opt_result_reset(resultTrain);
    let epochTokens = 0;
    rowsDoneInEpoch = 0;
    while (rowsDoneInEpoch < rowsPerEpoch) {
      const count = Math.min(ROWS_PER_CALL, rowsPerEpoch - rowsDoneInEpoch);
      // A dataset of exactly `count` rows: llama_opt_epoch runs a forward pass over every row past idata_split.
      const dataset = api.fn.ggml_opt_dataset_init(26, 26, stride, stride, count, 1);
      const dataTokens = int32View(api.fn.ggml_get_data(api.fn.ggml_opt_dataset_data(dataset)), count * stride);
      const dataLabels = int32View(api.fn.ggml_get_data(api.fn.ggml_opt_dataset_labels(dataset)), count * stride);
      epochTokens += writeRows(job.sequences, order, rowsDoneInEpoch, count, job.rowTokens, stride, dataTokens, dataLabels);
      api.fn.llama_opt_epoch(ctx, dataset, resultTrain, null, count, stepCallback, null);
      api.fn.ggml_opt_dataset_free(dataset);
      if (callbackError) throw callbackError;
      rowsDoneInEpoch += count;
      stepsBefore += count;
      // llama_opt_epoch blocks the event loop; a turn between chunks lets a "disconnect" (parent gone) end us.
      await new Promise((resolve) => setImmediate(resolve));
    }
    const seconds = Number(process.hrtime.bigint() - epochStart) / 1e9;
    const loss = [0];
    const accuracy = [0];
    const unc = [0];
    api.fn.ggml_opt_result_loss(resultTrain, loss, unc);
    api.fn.ggml_opt_result_accuracy(resultTrain, accuracy, unc);

    const val = scorer ? await evaluate(scorer, job.validation, job.answerCount) : null;
    const checkpoint = join(job.checkpointDir, `epoch-${String(epoch).padStart(3, "0")}.gguf`);
    const raw = `${checkpoint}.llama`;
    api.fn.llama_model_save_to_file(model, raw);
    // The saver writes the model's n_ctx_train (the row size set by llama_opt_init) as context_length: restore it.
    restampModelFile(raw, checkpoint, info.vocabulary, info.shape.contextLength);
    rmSync(raw, { force: true });
    emit({
      type: "epoch",
      epoch,
      learningRate: currentRate,
      trainLoss: loss[0],
      trainAccuracy: accuracy[0],
      validationLoss: val?.loss ?? null,
      validationAccuracy: val?.accuracy ?? null,
      tokensPerSecond: epochTokens / seconds,
      seconds,
      tokens: epochTokens,
      checkpoint,
    });
    if (selection.record(epoch, val?.loss ?? null, checkpoint)) break;
  }
  if (scorer) await scorer.close();
  api.fn.ggml_opt_result_free(resultTrain);
  // The output appears whole or not at all: copy to a temporary name, then rename.
  const tmp = `${job.outputPath}.partial`;
  restampModelFile(selection.best.path, tmp, info.vocabulary, info.shape.contextLength);
  renameSync(tmp, job.outputPath);
  const cpu = process.cpuUsage();
  emit({ type: "done", bestEpoch: selection.best.epoch, stoppedEarly: selection.stoppedEarly, cpuSeconds: (cpu.user + cpu.system) / 1e6 });
  koffi.unregister(stepCallback);
  api.fn.llama_free(ctx);
  api.fn.llama_model_free(model);
}

// The IPC channel closes when the parent dies (a crash, a test runner's timeout, a second Ctrl-C): training for
// nobody would hold both cores for minutes, so the worker ends with it.
process.once("disconnect", () => process.exit(1));

process.once("message", (job: TrainJob) => {
  (job.engine === "ggml" ? runGgml(job) : run(job)).then(
    () => process.exit(0),
    (e: unknown) => {
      emit({ type: "error", message: e instanceof Error ? e.message : String(e) });
      process.exit(1);
    },
  );
});
