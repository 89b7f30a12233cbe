/**
 * The embedded `Trainer`: full-weight training of a small llama model through engine v2 (ggml-trainer.ts: the llama
 * graph built on ggml, many samples per optimizer step isolated by a block-diagonal causal mask, the loss on the
 * answer token, every weight trained by AdamW), in a child process (train-worker.ts) so the caller's event loop
 * stays free and a cancel stops it mid-epoch. It replaced llama.cpp's `llama_opt_epoch` path (one sample per step,
 * keys, values and input embeddings frozen; docs/engine.md), which was removed once engine v2 beat it.
 *
 * Recipe: prompts are rendered and tokenized here (`sampleTokens`), packed into windows of `ggmlWindow` tokens by
 * the worker, trained at a peak rate of `ENGINE_LEARNING_RATE` (or `ENGINE_CONTINUED_LEARNING_RATE` when continuing
 * from a model file) with a short linear warm-up and cosine decay; after each epoch the checkpoint is scored on the
 * validation samples (answer-token loss and top-1 over the allowed answers) by the llama.cpp scorer, and the best
 * validation epoch becomes the model.
 *
 * @example
 * const trainer = new EmbeddedTrainer({ init: { clusters } });
 * const result = await trainer.train(samples, { outputPath: "/ws/models/m1.gguf", epochs: 6, onProgress: console.log });
 */
import { fork } from "node:child_process";
import { mkdirSync, readdirSync, rmSync, rmdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { FreshrecError } from "../../domain/errors.js";
import { seededRandom, shuffleInPlace } from "../../domain/random.js";
import type { Cluster } from "../../domain/types.js";
import { type CatalogLine, type EpochReport, TRAIN_DEFAULTS, type TrainOptions, type TrainResult, type Trainer, type TrainingSample } from "../contracts.js";
import { renderPrompt } from "../prompt.js";
import { assertPinnedEngine } from "./llama-api.js";
import { type ModelShape, REFERENCE_SHAPE, createModelFile, readModelFile } from "./model-file.js";
import type { TrainJob, ValidationPrompt, WorkerMessage } from "./train-worker.js";
import { BOS_ID, CLUSTER_BASE, type Vocabulary, buildVocabulary } from "./vocabulary.js";

export interface FreshModelOptions {
  readonly clusters: readonly Cluster[];
  /** Text whose words may enter the vocabulary (item titles). */
  readonly extraText?: readonly string[];
  /** @defaultValue 2048 */
  readonly maxVocabulary?: number;
  /** @defaultValue REFERENCE_SHAPE (d=128, 2 layers, 4 heads, ff=512, context 512) */
  readonly shape?: ModelShape;
  /** @defaultValue 1 */
  readonly seed?: number;
}

export interface EmbeddedTrainerOptions {
  /** How to create the first model when `TrainOptions.from` is absent. */
  readonly init?: FreshModelOptions;
  /**
   * CPU threads of the training graph. One: ggml's CPU backend waits in spinning barriers, and on the shared 2-core
   * reference machine a second thread stalled whenever another process held a core (docs/engine.md, "Threads").
   * @defaultValue 1
   */
  readonly threads?: number;
  /**
   * The training engine. Engine v2 ("ggml") is the only one; the option stays so the config's `training` section
   * passes through unchanged, and a caller still naming the removed "opt-epoch" engine gets an error instead of
   * another engine's results. @defaultValue "ggml"
   */
  readonly engine?: TrainingEngine;
  /**
   * Matrix-product precision ("bf16": operands rounded to bfloat16, accumulated in float32; weights, gradients and
   * optimizer state stay float32). The product's config defaults to bf16; the library keeps f32, which rounds nothing
   * and runs at full speed on any CPU (bf16 products are only fast with AVX512-BF16). @defaultValue "f32"
   */
  readonly precision?: "f32" | "bf16";
}

/** The training engines `EmbeddedTrainerOptions.engine` accepts (the config's `training.engine`). */
export type TrainingEngine = "ggml";

/**
 * Default peak learning rate of a training from scratch (up to 32 samples per step), chosen on small synthetic
 * worlds; learning.test.ts's pretrain trains at it and must beat most-popular-next (docs/engine.md, "What remains":
 * not yet tuned on the reference shape).
 */
export const ENGINE_LEARNING_RATE = 1e-3;

/**
 * Default peak learning rate of a training that continues from a model file (a fine-tune), a third of a pretrain's:
 * continuing at the pretrain's rate unlearns reading the RAG context within a month, while this rate keeps it at
 * the same finetune-monthly level (README, "In-prompt RAG", has the measurements).
 */
export const ENGINE_CONTINUED_LEARNING_RATE = 3e-4;

/** Engine v2's window for these sequences: 256 tokens, or the longest prompt rounded up to a multiple of 32. */
export function ggmlWindow(sequences: readonly (readonly number[])[]): { windowTokens: number; maxSamples: number } {
  const longest = sequences.reduce((m, s) => Math.max(m, s.length - 1), 1);
  // Multiples of 32: tinyBLAS's bf16 kernel only takes those (ggml-trainer.ts GgmlTrainOptions.windowTokens).
  const windowTokens = Math.max(256, Math.ceil(longest / 32) * 32);
  return { windowTokens, maxSamples: windowTokens / 8 };
}

/** Token sequence of one sample: BOS, the rendered prompt, the answer's cluster token. */
export function sampleTokens(vocab: Vocabulary, sample: TrainingSample): number[] {
  return [BOS_ID, ...vocab.encode(renderPrompt(sample.prompt, vocab.descriptions)), vocab.clusterToken(sample.answer)];
}

/** Prompt tokens (what the model reads before answering). */
export function promptTokens(vocab: Vocabulary, prompt: TrainingSample["prompt"]): number[] {
  return [BOS_ID, ...vocab.encode(renderPrompt(prompt, vocab.descriptions))];
}

/** Catalog line tokens, the text cut so the line fits `maxTokens` (the cluster token always stays last). */
function catalogTokens(vocab: Vocabulary, line: CatalogLine, maxTokens: number): number[] {
  // Words, not phrases: a catalog line exists to tie the words of titles and descriptions to the cluster token.
  const text = vocab.encode(`${line.text} .`, { phrases: false });
  return [BOS_ID, ...text.slice(0, Math.max(0, maxTokens - 2)), vocab.clusterToken(line.cluster)];
}

function validationPrompt(vocab: Vocabulary, s: TrainingSample): ValidationPrompt {
  const excluded = [s.prompt.history.c1, s.prompt.history.c2]
    .filter((c) => c !== s.answer)
    .map((c) => vocab.clusterToken(c) - CLUSTER_BASE);
  return { prompt: promptTokens(vocab, s.prompt), answer: vocab.clusterToken(s.answer) - CLUSTER_BASE, excluded };
}

/** Deterministic split: every k-th sample of a seeded order goes to validation. */
function splitValidation(samples: readonly TrainingSample[], fraction: number, seed: number): [TrainingSample[], TrainingSample[]] {
  if (fraction <= 0 || samples.length < 10) return [[...samples], []];
  const idx = samples.map((_, i) => i);
  shuffleInPlace(idx, seededRandom(seed >>> 0 || 1));
  const nVal = Math.max(1, Math.round(samples.length * fraction));
  const val = new Set(idx.slice(0, nVal));
  return [samples.filter((_, i) => !val.has(i)), samples.filter((_, i) => val.has(i))];
}

/**
 * V8 compiles hot JavaScript on background threads; when the worker exits while such a compile waits for a
 * collection, Node's shutdown joins that thread forever (nodejs/node#54918, open in Node 20): a replay hung for good
 * after a fine-tune had written its model. The worker's JavaScript is light (ggml does the training), so it compiles
 * on its own thread.
 */
const WORKER_V8_FLAGS = ["--no-concurrent-recompilation"];

function workerEntry(): { file: string; execArgv: string[] } {
  const self = fileURLToPath(import.meta.url);
  if (self.endsWith(".ts")) {
    // Running from source (tsx, vitest): the child needs the TypeScript loader too.
    return { file: join(dirname(self), "train-worker.ts"), execArgv: [...WORKER_V8_FLAGS, "--import", "tsx"] };
  }
  return { file: join(dirname(self), "train-worker.js"), execArgv: [...WORKER_V8_FLAGS] };
}

/**
 * How long a worker that has reported its model written may take to exit before it is killed: the model is whole
 * by then (renamed into place before "done"), so a worker stuck in its own shutdown costs nothing but a warning.
 */
export const WORKER_EXIT_GRACE_MS = 10_000;

export class EmbeddedTrainer implements Trainer {
  constructor(private readonly options: EmbeddedTrainerOptions = {}) {
    const engine: string | undefined = options.engine;
    if (engine !== undefined && engine !== "ggml") {
      throw new FreshrecError(
        "BAD_INPUT",
        `EmbeddedTrainerOptions.engine "${engine}": the llama_opt_epoch engine ("opt-epoch") was removed; engine v2 ("ggml") is the only one (leave engine out)`,
      );
    }
  }

  /**
   * What the training cache keys this trainer's recipe by (`Trainer.recipe`): the engine, precision and threads,
   * and the default rate of a continued training (a fine-tune that leaves the rate to the trainer must not be served
   * from a cache entry trained at an earlier default). Entries of the removed llama_opt_epoch engine had no recipe,
   * so none of them is ever reused.
   */
  get recipe(): string {
    return `engine=ggml;precision=${this.options.precision ?? "f32"};threads=${this.options.threads ?? 1};continued-lr=${ENGINE_CONTINUED_LEARNING_RATE}`;
  }

  async train(samples: readonly TrainingSample[], options: TrainOptions): Promise<TrainResult> {
    assertPinnedEngine();
    if (options.signal?.aborted) throw new FreshrecError("CANCELLED", "training was cancelled before it started");
    const started = process.hrtime.bigint();
    // One folder per output: fine-tunes write their models side by side into one models folder, and a shared
    // checkpoints folder let one training overwrite another's epochs (two trainings at once would mix them).
    const checkpointDir = options.checkpointDir ?? `${options.outputPath}.checkpoints`;
    mkdirSync(checkpointDir, { recursive: true });
    mkdirSync(dirname(options.outputPath), { recursive: true });
    const keep = options.keepCheckpoints ?? TRAIN_DEFAULTS.keepCheckpoints;
    try {
      const result = await this.trainInto(samples, options, checkpointDir, started);
      return keep ? result : { ...result, epochs: result.epochs.map((e) => ({ ...e, checkpoint: null })) };
    } finally {
      // Also when the training failed or was cancelled (and before it started: a bad sample, an unreadable parent).
      rmSync(`${options.outputPath}.partial`, { force: true });
      if (!keep) removeCheckpoints(checkpointDir);
    }
  }

  private async trainInto(samples: readonly TrainingSample[], options: TrainOptions, checkpointDir: string, started: bigint): Promise<TrainResult> {
    let startPath: string;
    let vocab: Vocabulary;
    if (options.from) {
      const info = readModelFile(options.from);
      startPath = options.from;
      vocab = info.vocabulary;
    } else {
      const init = this.options.init;
      if (!init) throw new FreshrecError("BAD_INPUT", "training from scratch needs EmbeddedTrainerOptions.init (clusters)");
      vocab = buildVocabulary({ clusters: init.clusters, extraText: init.extraText, maxSize: init.maxVocabulary });
      const shape = init.shape ?? REFERENCE_SHAPE;
      startPath = join(checkpointDir, "init.gguf");
      createModelFile(startPath, vocab, shape, { seed: init.seed ?? 1 });
    }

    const seed = options.seed ?? 1;
    const [trainSamples, validationSamples] = options.validation
      ? [[...samples], [...options.validation]]
      : splitValidation(samples, options.validationFraction ?? 0.1, seed);
    if (trainSamples.length === 0) throw new FreshrecError("BAD_INPUT", "no training samples");
    const sampleSequences = trainSamples.map((s) => sampleTokens(vocab, s));
    // Catalog lines are cut to the longest sample, so they never widen the window (at least 16 tokens, so short
    // prompts do not cut every title to a word or two).
    const longestSample = sampleSequences.reduce((m, s) => Math.max(m, s.length), 16);
    const sequences = [...sampleSequences, ...(options.catalog ?? []).map((l) => catalogTokens(vocab, l, longestSample))];
    const epochs = options.epochs ?? TRAIN_DEFAULTS.epochs;
    const job: TrainJob = {
      modelPath: startPath,
      outputPath: options.outputPath,
      checkpointDir,
      sequences,
      validation: validationSamples.map((s) => validationPrompt(vocab, s)),
      answerBase: CLUSTER_BASE,
      answerCount: vocab.clusterIds.length,
      epochs,
      learningRate: options.learningRate ?? (options.from ? ENGINE_CONTINUED_LEARNING_RATE : ENGINE_LEARNING_RATE),
      weightDecay: options.weightDecay ?? 0.01,
      patience: options.patience ?? 2,
      seed,
      threads: this.options.threads ?? 1,
      ggml: { ...ggmlWindow(sequences), precision: this.options.precision ?? "f32" },
    };

    const reports: EpochReport[] = [];
    let trainTokens = 0;
    let trainSeconds = 0;
    const done = await runWorker(job, options, (m) => {
      if (m.type === "step") {
        options.onProgress?.({ type: "step", epoch: m.epoch, epochs, fraction: m.fraction, tokensPerSecond: m.tokensPerSecond });
      } else if (m.type === "epoch") {
        trainTokens += m.tokens;
        trainSeconds += m.seconds;
        const report: EpochReport = {
          epoch: m.epoch,
          epochs,
          learningRate: m.learningRate,
          trainLoss: m.trainLoss,
          trainAccuracy: m.trainAccuracy,
          validationLoss: m.validationLoss,
          validationAccuracy: m.validationAccuracy,
          tokensPerSecond: m.tokensPerSecond,
          seconds: m.seconds,
          checkpoint: m.checkpoint,
        };
        reports.push(report);
        options.onProgress?.({ type: "epoch", ...report });
      }
    });
    return {
      modelPath: options.outputPath,
      epochs: reports,
      bestEpoch: done.bestEpoch,
      stoppedEarly: done.stoppedEarly,
      trainTokens,
      tokensPerSecond: trainSeconds > 0 ? trainTokens / trainSeconds : 0,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
      cpuSeconds: done.cpuSeconds,
      trainSamples: trainSamples.length,
      validationSamples: validationSamples.length,
    };
  }
}

/**
 * Removes what a training wrote into its checkpoint folder (the initial model and the epochs, an unfinished save
 * included), and the folder when nothing else is in it: the folder may be one the caller named, so only the trainer's
 * own file names are touched.
 */
function removeCheckpoints(dir: string): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) if (/^(init\.gguf|epoch-\d{3,}\.gguf)$/.test(name)) rmSync(join(dir, name), { force: true });
  try {
    rmdirSync(dir);
  } catch {
    // Not empty: the caller keeps other files there.
  }
}

/**
 * Runs one training job in a worker process. `entry` is the worker's script (tests give one of their own).
 * @internal
 */
export function runWorker(
  job: TrainJob,
  options: TrainOptions,
  onMessage: (m: WorkerMessage) => void,
  entry: { file: string; execArgv: string[] } = workerEntry(),
): Promise<{ bestEpoch: number; stoppedEarly: boolean; cpuSeconds: number }> {
  return new Promise((resolve, reject) => {
    const child = fork(entry.file, [], {
      execArgv: entry.execArgv,
      // fd 3 carries progress lines (written synchronously by the worker); IPC only delivers the job.
      stdio: ["ignore", "ignore", "pipe", "pipe", "ipc"],
      serialization: "advanced",
    });
    let settled = false;
    let done: { bestEpoch: number; stoppedEarly: boolean; cpuSeconds: number } | null = null;
    let workerError: string | null = null;
    const stderr: string[] = [];
    const onAbort = () => {
      if (settled) return;
      settled = true;
      if (exitGrace) clearTimeout(exitGrace);
      child.kill("SIGKILL");
      // Rejected once the child is gone, so the caller's clean-up never races a worker still writing checkpoints.
      const cancelled = () => reject(new FreshrecError("CANCELLED", "training was cancelled"));
      if (exit) cancelled();
      else child.once("exit", cancelled);
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    child.stderr?.on("data", (d: Buffer) => {
      stderr.push(d.toString());
      if (stderr.length > 50) stderr.shift();
    });
    let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
    let eventsClosed = false;
    let killedAfterDone = false;
    let exitGrace: NodeJS.Timeout | null = null;
    const finish = () => {
      // Both the exit and the end of the event pipe: the "done" line may arrive after the exit event.
      if (!exit || !eventsClosed || settled) return;
      settled = true;
      if (exitGrace) clearTimeout(exitGrace);
      options.signal?.removeEventListener("abort", onAbort);
      const { code, signal } = exit;
      if (code === 0 && done) resolve(done);
      else if (killedAfterDone && done) {
        process.emitWarning(`the training process wrote its model and did not exit within ${WORKER_EXIT_GRACE_MS / 1000} s (a Node.js shutdown deadlock, nodejs/node#54918): killed`, { code: "FRESHREC_TRAIN_WORKER_KILLED" });
        resolve(done);
      } else {
        const tail = stderr.join("").trim().split("\n").slice(-6).join("\n");
        reject(
          new FreshrecError(
            "ENGINE",
            `training failed (${workerError ?? (signal ? `killed by ${signal}` : `exit code ${code}`)})${tail ? `: ${tail}` : ""}`,
          ),
        );
      }
    };
    const events = child.stdio[3];
    if (!events || !("on" in events)) eventsClosed = true;
    else {
      const lines = createInterface({ input: events as NodeJS.ReadableStream });
      lines.on("close", () => {
        eventsClosed = true;
        finish();
      });
      lines.on("line", (line) => {
        let m: WorkerMessage;
        try {
          m = JSON.parse(line) as WorkerMessage;
        } catch {
          return;
        }
        if (m.type === "done") {
          done = { bestEpoch: m.bestEpoch, stoppedEarly: m.stoppedEarly, cpuSeconds: m.cpuSeconds };
          exitGrace = setTimeout(() => {
            if (exit) return;
            killedAfterDone = true;
            child.kill("SIGKILL");
          }, WORKER_EXIT_GRACE_MS);
        } else if (m.type === "error") workerError = m.message;
        else if (!settled) onMessage(m);
      });
    }
    child.on("error", (e) => {
      if (settled) return;
      settled = true;
      reject(new FreshrecError("ENGINE", `the training process could not start: ${e.message}`, { cause: e }));
    });
    child.on("exit", (code, signal) => {
      exit = { code, signal };
      finish();
    });
    child.send(job);
  });
}
