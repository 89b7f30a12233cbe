/**
 * The training process. llama.cpp's training calls are synchronous and take seconds to minutes, so they run in a
 * child process (forked by trainer.ts): the caller's event loop stays free, a cancel is a kill that stops mid-epoch,
 * and an abort inside llama.cpp (it asserts instead of returning errors) ends this process, not the caller.
 *
 * Input: one IPC message with a `TrainJob`. Output: JSON lines on fd 3 (a pipe, written synchronously, because the
 * IPC channel only flushes when the event loop runs, which it does not during an epoch).
 */
import { renameSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import koffi from "koffi";
import { readModelFile, restampModelFile } from "./model-file.js";
import {
  type LlamaApi,
  type NativePointer,
  allocBatch,
  allocOptimizerParams,
  createContext,
  freeBatch,
  int32View,
  loadLlamaApi,
  loadModel,
} from "./llama-api.js";
import { BatchScorer } from "./scorer.js";
import { BOS_ID, EOS_ID } from "./vocabulary.js";

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
  readonly window: number;
  readonly epochs: number;
  readonly learningRate: number;
  readonly weightDecay: number;
  readonly patience: number;
  readonly seed: number;
  readonly threads: number;
}

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
  | { type: "done"; bestEpoch: number; stoppedEarly: boolean }
  | { type: "error"; message: string };

const EVENT_FD = 3;

const epochCallbackProto = koffi.proto(
  "void freshrec_opt_epoch_cb(bool train, void *opt_ctx, void *dataset, void *result, int64_t ibatch, int64_t ibatch_max, int64_t t_start_us)",
);

function emit(message: WorkerMessage): void {
  writeSync(EVENT_FD, JSON.stringify(message) + "\n");
}

/** Seeded Fisher-Yates shuffle (mulberry32). */
function shuffle<T>(items: T[], seed: number): T[] {
  let a = seed >>> 0 || 1;
  for (let i = items.length - 1; i > 0; i--) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const j = Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items;
}

/**
 * Packs samples into windows of `window` tokens: each sample is followed by EOS, samples never straddle windows,
 * the tail of a window is EOS padding. Labels are the next token (EOS after the last).
 */
export function packWindows(sequences: readonly (readonly number[])[], window: number): { tokens: Int32Array; labels: Int32Array; count: number } {
  const rows: number[][] = [];
  let row: number[] = [];
  for (const s of sequences) {
    if (s.length + 1 > window) continue; // cannot happen with the template's prompts; kept safe
    if (row.length + s.length + 1 > window) {
      rows.push(row);
      row = [];
    }
    row.push(...s, EOS_ID);
  }
  if (row.length > 0) rows.push(row);
  const tokens = new Int32Array(rows.length * window).fill(EOS_ID);
  const labels = new Int32Array(rows.length * window).fill(EOS_ID);
  rows.forEach((r, w) => {
    const base = w * window;
    for (let i = 0; i < r.length; i++) {
      tokens[base + i] = r[i];
      labels[base + i] = i + 1 < r.length ? r[i + 1] : EOS_ID;
    }
  });
  return { tokens, labels, count: rows.length };
}

/** Learning rate of an epoch: linear warm-up over the first epoch, cosine decay to 10% of the peak. */
export function learningRateAt(epoch: number, epochs: number, peak: number): number {
  if (epochs <= 1) return peak;
  const progress = (epoch - 1) / (epochs - 1);
  return peak * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * progress)));
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

async function run(job: TrainJob): Promise<void> {
  const api: LlamaApi = loadLlamaApi();
  const info = readModelFile(job.modelPath);
  const model = loadModel(api, job.modelPath, { writable: true });
  const ctx = createContext(api, model, {
    nCtx: job.window,
    nBatch: job.window,
    nUbatch: job.window,
    nSeqMax: 1,
    threads: job.threads,
    kvUnified: true,
  });
  // Thread fix: ggml_opt_eval never passes n_threads to the CPU backend (default 4, 17-44x slower on 2 cores);
  // one ordinary decode pushes the context's thread count into the backend, and it sticks.
  {
    const batch = allocBatch(api, 1);
    batch.token[0] = BOS_ID;
    batch.pos[0] = 0;
    batch.nSeqId[0] = 1;
    batch.seqId[0][0] = 0;
    batch.logits[0] = 1;
    batch.value.n_tokens = 1;
    api.fn.llama_decode(ctx, batch.value);
    freeBatch(api, batch);
  }
  const optimizer = allocOptimizerParams();
  const setRate = (lr: number) =>
    optimizer.set({ adamw_alpha: lr, adamw_beta1: 0.9, adamw_beta2: 0.999, adamw_eps: 1e-8, adamw_wd: job.weightDecay, sgd_alpha: lr, sgd_wd: 0 });
  setRate(learningRateAt(1, job.epochs, job.learningRate));
  api.fn.llama_opt_init(ctx, model, {
    n_ctx_train: 0,
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
  let epochTokens = 0;
  let lastStepReport = 0n;
  const stepCallback = koffi.register(
    (_train: boolean, _opt: NativePointer, _ds: NativePointer, _res: NativePointer, ibatchRaw: number | bigint, ibatchMaxRaw: number | bigint) => {
      const ibatch = Number(ibatchRaw);
      const ibatchMax = Number(ibatchMaxRaw);
      const now = process.hrtime.bigint();
      if (now - lastStepReport < 250_000_000n && ibatch !== ibatchMax) return;
      lastStepReport = now;
      const seconds = Number(now - epochStart) / 1e9;
      const fraction = ibatchMax > 0 ? ibatch / ibatchMax : 0;
      emit({ type: "step", epoch: epochNow, fraction, tokensPerSecond: seconds > 0 ? (fraction * epochTokens) / seconds : 0 });
    },
    koffi.pointer(epochCallbackProto),
  );

  let best = { epoch: 0, loss: Infinity, path: "" };
  let sinceBest = 0;
  let stoppedEarly = false;
  const order = job.sequences.map((_, i) => i);
  for (let epoch = 1; epoch <= job.epochs; epoch++) {
    epochNow = epoch;
    const lr = learningRateAt(epoch, job.epochs, job.learningRate);
    setRate(lr);
    // llama_opt_epoch walks the dataset in order; reshuffling the samples and repacking the windows each epoch
    // gives every epoch a new order and new window neighbours.
    shuffle(order, job.seed * 1000 + epoch);
    const packed = packWindows(order.map((i) => job.sequences[i]), job.window);
    const dataset = api.fn.ggml_opt_dataset_init(26, 26, job.window, job.window, packed.count, 1);
    int32View(api.fn.ggml_get_data(api.fn.ggml_opt_dataset_data(dataset)), packed.tokens.length).set(packed.tokens);
    int32View(api.fn.ggml_get_data(api.fn.ggml_opt_dataset_labels(dataset)), packed.labels.length).set(packed.labels);
    epochTokens = packed.tokens.length;
    epochStart = process.hrtime.bigint();
    api.fn.ggml_opt_result_reset(resultTrain);
    api.fn.llama_opt_epoch(ctx, dataset, resultTrain, null, packed.count, stepCallback, null);
    const seconds = Number(process.hrtime.bigint() - epochStart) / 1e9;
    api.fn.ggml_opt_dataset_free(dataset);
    const loss = [0];
    const accuracy = [0];
    const unc = [0];
    api.fn.ggml_opt_result_loss(resultTrain, loss, unc);
    api.fn.ggml_opt_result_accuracy(resultTrain, accuracy, unc);

    const val = scorer ? await evaluate(scorer, job.validation, job.answerCount) : null;
    const checkpoint = join(job.checkpointDir, `epoch-${String(epoch).padStart(3, "0")}.gguf`);
    const raw = `${checkpoint}.llama`;
    api.fn.llama_model_save_to_file(model, raw);
    restampModelFile(raw, checkpoint, info.vocabulary);
    rmSync(raw, { force: true });
    emit({
      type: "epoch",
      epoch,
      learningRate: lr,
      trainLoss: loss[0],
      trainAccuracy: accuracy[0],
      validationLoss: val?.loss ?? null,
      validationAccuracy: val?.accuracy ?? null,
      tokensPerSecond: epochTokens / seconds,
      seconds,
      tokens: epochTokens,
      checkpoint,
    });
    const score = val ? val.loss : -epoch; // without validation the latest epoch is the best
    if (score < best.loss) {
      best = { epoch, loss: score, path: checkpoint };
      sinceBest = 0;
    } else if (++sinceBest >= job.patience && epoch < job.epochs) {
      stoppedEarly = true;
      break;
    }
  }
  if (scorer) await scorer.close();
  api.fn.ggml_opt_result_free(resultTrain);
  // The output appears whole or not at all: copy to a temporary name, then rename.
  const tmp = `${job.outputPath}.partial`;
  restampModelFile(best.path, tmp, info.vocabulary);
  renameSync(tmp, job.outputPath);
  emit({ type: "done", bestEpoch: best.epoch, stoppedEarly });
  koffi.unregister(stepCallback);
  api.fn.llama_free(ctx);
  api.fn.llama_model_free(model);
}

process.once("message", (job: TrainJob) => {
  run(job).then(
    () => process.exit(0),
    (e: unknown) => {
      emit({ type: "error", message: e instanceof Error ? e.message : String(e) });
      process.exit(1);
    },
  );
});
