/**
 * The training process. Engine v2's optimizer steps (ggml-trainer.ts) are synchronous native calls and an epoch takes
 * seconds to minutes, so they run in a child process (forked by trainer.ts): the caller's event loop stays free, a
 * cancel is a kill that stops mid-epoch, and an abort inside ggml or llama.cpp (they assert instead of returning
 * errors) ends this process, not the caller.
 *
 * Input: one IPC message with a `TrainJob`. Output: JSON lines on fd 3 (a pipe, written synchronously, because the
 * IPC channel only flushes when the event loop runs, which it does not during an epoch).
 */
import { copyFileSync, renameSync, writeSync } from "node:fs";
import { join } from "node:path";
import { GgmlModel, GgmlTrainingRun } from "./ggml-trainer.js";
import { readModelFile } from "./model-file.js";
import { type LlamaApi, loadLlamaApi } from "./llama-api.js";
import { BatchScorer } from "./scorer.js";

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
  readonly epochs: number;
  readonly learningRate: number;
  readonly weightDecay: number;
  readonly patience: number;
  readonly seed: number;
  readonly threads: number;
  /** Window size, samples per window and matrix-product precision (GgmlTrainOptions). */
  readonly ggml: { readonly windowTokens: number; readonly maxSamples: number; readonly precision: "f32" | "bf16" };
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
  | { type: "done"; bestEpoch: number; stoppedEarly: boolean; cpuSeconds: number }
  | { type: "error"; message: string };

const EVENT_FD = 3;

function emit(message: WorkerMessage): void {
  writeSync(EVENT_FD, JSON.stringify(message) + "\n");
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
 * The best epoch and early stopping: the checkpoint with the lowest validation loss is the output (without
 * validation, the latest epoch), and `patience` epochs in a row without a better one end the run before its last
 * epoch.
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
 * Engine v2 in this process: a `GgmlTrainingRun` driven a window at a time, with per-epoch checkpoints, validation,
 * the best epoch, early stopping and progress events. Validation scores each epoch's checkpoint through the
 * llama.cpp scorer, so it measures the file that is served. The epoch's train loss and accuracy are the answer
 * token's (whole vocabulary, each window measured before its update).
 */
async function train(job: TrainJob): Promise<void> {
  const api: LlamaApi = loadLlamaApi();
  const info = readModelFile(job.modelPath);
  const settings = job.ggml;
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

// The IPC channel closes when the parent dies (a crash, a test runner's timeout, a second Ctrl-C): training for
// nobody would hold both cores for minutes, so the worker ends with it.
process.once("disconnect", () => process.exit(1));

process.once("message", (job: TrainJob) => {
  train(job).then(
    () => process.exit(0),
    (e: unknown) => {
      emit({ type: "error", message: e instanceof Error ? e.message : String(e) });
      process.exit(1);
    },
  );
});
