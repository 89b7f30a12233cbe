/**
 * Hosted fine-tuning: a `Trainer` for OpenAI-compatible fine-tuning APIs (OpenAI, `freshrec llm serve`). It writes
 * the curated samples as chat JSONL (the same system and user messages the `openai` backend sends at inference, the
 * answer written as that backend's answer mode expects), uploads them, creates a supervised job that continues
 * `TrainOptions.from` (a hosted-model file or name; else the configured start model), polls it with progress, and
 * writes a hosted-model file naming the resulting model at `outputPath`, so the model registry records it as a new
 * model version like any other and the same gates run on it.
 *
 * Not forwarded: `learningRate`, `weightDecay`, `patience` and `catalog` (hosted APIs choose their own schedule;
 * catalog lines are not chat examples). `epochs` becomes `n_epochs`; validation samples become a validation file.
 *
 * @example
 * const trainer = new OpenAiTrainer({ baseURL: "http://127.0.0.1:8081/v1", model: "m000001", clusters });
 * const result = await trainer.train(samples, { outputPath: "/ws/models/m000002.json", epochs: 2 });
 * const tuned = await OpenAiLanguageModel.open({ baseURL, model: result.modelPath, clusters });
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { toFile } from "openai";
import type OpenAI from "openai";
import { FreshrecError } from "../../domain/errors.js";
import { OPENAI_DEFAULTS } from "./backend-defaults.js";
import type { Cluster } from "../../domain/types.js";
import type { TrainOptions, TrainResult, Trainer, TrainingSample } from "../contracts.js";
import { type AnswerMode, type OpenAiConnectionOptions, abortableSleep, answerContent, chatMessages, hostedModelName, openAiClient, remoteError, writeHostedModelFile } from "./openai.js";

export interface OpenAiTrainerOptions extends OpenAiConnectionOptions {
  /** Model the first fine-tune starts from (later ones continue `TrainOptions.from`). */
  readonly model: string;
  readonly clusters: readonly Cluster[];
  /** Must match the backend's answer mode, so the model learns the form it will be asked for. @defaultValue "json_schema" */
  readonly answer?: AnswerMode;
  /** @defaultValue 10_000 */
  readonly pollIntervalMs?: number;
  /** Suffix of the fine-tuned model's name. @defaultValue "freshrec" */
  readonly suffix?: string;
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export class OpenAiTrainer implements Trainer {
  /** The weights stay on the server: what this trainer writes is a small JSON file naming the new model. */
  readonly modelFileExtension = ".json";
  private readonly client: OpenAI;

  constructor(private readonly options: OpenAiTrainerOptions) {
    this.client = openAiClient(options);
  }

  /** The chat JSONL of samples (one example per line). */
  jsonl(samples: readonly TrainingSample[]): string {
    const descriptions = new Map(this.options.clusters.map((c) => [c.id, c.description]));
    const mode = this.options.answer ?? OPENAI_DEFAULTS.answer;
    return samples
      .map((s) => {
        const answer = descriptions.get(s.answer);
        if (answer === undefined) throw new FreshrecError("BAD_INPUT", `a training sample answers an unknown cluster id ${JSON.stringify(s.answer)}`);
        return JSON.stringify({ messages: [...chatMessages(s.prompt, this.options.clusters, descriptions), { role: "assistant", content: answerContent(mode, answer) }] });
      })
      .join("\n");
  }

  async train(samples: readonly TrainingSample[], options: TrainOptions): Promise<TrainResult> {
    if (samples.length === 0) throw new FreshrecError("BAD_INPUT", "no training samples");
    if (options.signal?.aborted) throw new FreshrecError("CANCELLED", "training was cancelled before it started");
    const started = process.hrtime.bigint();
    const base = options.from ? hostedModelName(options.from) : this.options.model;
    const where = `hosted fine-tuning of ${base}`;
    let jobId: string | null = null;
    try {
      const upload = async (rows: readonly TrainingSample[], name: string) =>
        (await this.client.files.create({ file: await toFile(Buffer.from(this.jsonl(rows)), name), purpose: "fine-tune" }, { signal: options.signal })).id;
      const trainingFile = await upload(samples, "freshrec-train.jsonl");
      const validationFile = options.validation && options.validation.length > 0 ? await upload(options.validation, "freshrec-validation.jsonl") : undefined;
      const epochs = options.epochs;
      let job = await this.client.fineTuning.jobs.create(
        {
          model: base,
          training_file: trainingFile,
          ...(validationFile ? { validation_file: validationFile } : {}),
          suffix: this.options.suffix ?? "freshrec",
          seed: options.seed ?? 1,
          method: { type: "supervised", supervised: { hyperparameters: { n_epochs: epochs ?? "auto" } } },
        },
        { signal: options.signal },
      );
      jobId = job.id;
      const seen = new Set<string>();
      while (!TERMINAL.has(job.status)) {
        await abortableSleep(this.options.pollIntervalMs ?? OPENAI_DEFAULTS.fineTunePollMs, options.signal);
        job = await this.client.fineTuning.jobs.retrieve(job.id, { signal: options.signal });
        const events = await this.client.fineTuning.jobs.listEvents(job.id, { limit: 100 }, { signal: options.signal });
        for (const e of [...events.data].reverse()) {
          if (seen.has(e.id)) continue;
          seen.add(e.id);
          const data = (e.data ?? {}) as { step?: number; total_steps?: number; epoch?: number };
          if (e.type === "metrics" && typeof data.step === "number" && typeof data.total_steps === "number" && data.total_steps > 0) {
            const total = typeof job.hyperparameters?.n_epochs === "number" ? job.hyperparameters.n_epochs : (epochs ?? 1);
            options.onProgress?.({ type: "step", epoch: data.epoch ?? Math.ceil((data.step / data.total_steps) * total), epochs: total, fraction: data.step / data.total_steps, tokensPerSecond: 0 });
          }
        }
      }
      if (job.status !== "succeeded" || !job.fine_tuned_model) {
        throw new FreshrecError("ENGINE", `${where}: job ${job.id} ${job.status}${job.error?.message ? `: ${job.error.message}` : ""}`);
      }
      mkdirSync(dirname(options.outputPath), { recursive: true });
      writeHostedModelFile(options.outputPath, { baseURL: this.options.baseURL, model: job.fine_tuned_model, job: job.id });
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const trainTokens = job.trained_tokens ?? 0;
      const n = typeof job.hyperparameters?.n_epochs === "number" ? job.hyperparameters.n_epochs : (epochs ?? 1);
      return {
        modelPath: options.outputPath,
        epochs: [],
        bestEpoch: n,
        stoppedEarly: false,
        trainTokens,
        tokensPerSecond: seconds > 0 ? trainTokens / seconds : 0,
        seconds,
        trainSamples: samples.length,
        validationSamples: options.validation?.length ?? 0,
      };
    } catch (error) {
      if (options.signal?.aborted) {
        // The job keeps costing money until it is cancelled on the server.
        if (jobId) await this.client.fineTuning.jobs.cancel(jobId).catch(() => undefined);
        throw new FreshrecError("CANCELLED", `${where} was cancelled${jobId ? ` (job ${jobId} cancelled)` : ""}`, { cause: error });
      }
      throw remoteError(error, this.options.baseURL, where);
    }
  }
}
