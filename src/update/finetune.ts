/**
 * The fine-tuning job (the slow path, monthly by default): curate samples from the fine-tuning window, continue
 * training the live model (or the base model), register the candidate, then run the gates (gates.ts: exact-match and
 * test recall from the paper, and a regression gate against the live model on the same test slice). Pass: the
 * candidate goes live. Fail: it is `halted` with the failed gates and their numbers in its record, the previous model
 * stays live, and `freshrec review` shows why and decides.
 *
 * @example
 * const outcome = await runFinetune(asOf, { events, registry, trainer, openModel, clusters, modelsDir });
 */
import { join } from "node:path";
import type { EventStoreContract } from "../data/event-store.js";
import { DAY_MS } from "../domain/clock.js";
import { FreshrecError } from "../domain/errors.js";
import { remembered } from "../domain/memo.js";
import type { LanguageModel, TrainOptions, Trainer, TrainResult } from "../llm/contracts.js";
import { fileSha256 } from "../llm/registry.js";
import { curateFineTuningSet, type CurationOptions, type FineTuningSet } from "./curation.js";
import { evaluateGates, type ExactMatchEvidence, type GateOptions, type GateResult, type LivePredictions } from "./gates.js";

/** The model versions the job reads and writes: what it needs of the model registry. */
export interface FinetuneRegistry {
  /**
   * The live model, or null before any model went live; `dataEnd` is the end of the data it was trained on (null
   * when unknown), where a fine-tune of it starts learning.
   */
  live(): Promise<{ readonly version: string; readonly path: string; readonly dataEnd: number | null } | null>;
  /** Registers a new candidate and returns its version. */
  registerCandidate(entry: {
    readonly parent: string | null;
    readonly path: string;
    readonly kind: "base" | "fine-tuned";
    readonly dataWindow: { readonly from: number; readonly to: number };
    readonly trainSamples: number;
    readonly metrics: Readonly<Record<string, unknown>>;
  }): Promise<string>;
  /** Moves a candidate to live (the previous live model retires) or to halted, with the reason. */
  decide(version: string, decision: "live" | "halted", reason: string, metrics: Readonly<Record<string, unknown>>): Promise<void>;
}

export interface FinetuneOptions {
  readonly events: EventStoreContract;
  readonly registry: FinetuneRegistry;
  readonly trainer: Trainer;
  /** Opens a model file for the gates' scoring and generation. */
  readonly openModel: (path: string) => Promise<LanguageModel>;
  /** Where model files go; each run writes `<modelsDir>/<name>.gguf` (or the trainer's own file ending). */
  readonly modelsDir: string;
  readonly curation?: CurationOptions;
  readonly gates?: GateOptions;
  readonly train?: Omit<TrainOptions, "from" | "outputPath" | "signal" | "onProgress">;
  /** Generation probes for the exact-match gate (histories of the test slice). @defaultValue 200 */
  readonly generationProbes?: number;
  readonly onProgress?: TrainOptions["onProgress"];
  readonly signal?: AbortSignal;
  /** Curated sets and gate results shared with other jobs over the same unchanging store (replay). */
  readonly memo?: FinetuneMemo;
}

/**
 * What fine-tuning jobs over one unchanging event store can share: the curated set of an as-of time, and the gates of
 * a model (by its bytes) on that set. Replay uses one: finetune-monthly and the hybrid fine-tune at the same instants
 * with the same settings, and with the training cache their candidates are the same bytes, so the hybrid's 11
 * curations (~2.5 s of DuckDB each on the replay bench) and gates (~1.7 s) were repeats. A set or a gate comes from
 * the same inputs either way, so results do not change with a deterministic backend (the embedded one); a shared
 * gate measurement runs under the first caller's abort signal. A failure is not remembered.
 *
 * @example
 * const memo = new FinetuneMemo(events);
 * await runFinetune(asOf, { ...options, memo }); // a second job at the same asOf reuses the set and the gates
 */
export class FinetuneMemo {
  private readonly sets = new Map<string, Promise<FineTuningSet>>();
  private readonly gates = new Map<string, Promise<GateResult>>();

  /** @param events the store every set and gate of this memo comes from (it must not change while the memo lives) */
  constructor(readonly events: EventStoreContract) {}

  curate(asOf: number, options: CurationOptions = {}): Promise<FineTuningSet> {
    return remembered(this.sets, JSON.stringify([asOf, options]), () => curateFineTuningSet(this.events, asOf, options));
  }

  /**
   * The gates of the model at `modelPath` on the set of `asOf` and `curation`, compared with the live model at
   * `livePath` (the regression gate; null when nothing is live); `measure` runs them when new.
   */
  async gate(
    modelPath: string,
    livePath: string | null,
    asOf: number,
    curation: CurationOptions,
    options: Pick<FinetuneOptions, "gates" | "generationProbes">,
    measure: () => Promise<GateResult>,
  ): Promise<GateResult> {
    const live = livePath === null ? null : await fileSha256(livePath);
    const key = JSON.stringify([await fileSha256(modelPath), live, asOf, curation, options.gates ?? {}, options.generationProbes ?? null]);
    return remembered(this.gates, key, measure);
  }

  /** Sets and gate results remembered (a replay's fine-tuning strategies: one of each per fine-tune). */
  get size(): { readonly sets: number; readonly gates: number } {
    return { sets: this.sets.size, gates: this.gates.size };
  }
}

export interface FinetuneResult {
  readonly modelVersion: string;
  readonly status: "live" | "halted";
  readonly gates: GateResult;
  readonly trainTokens: number;
  readonly seconds: number;
  readonly parent: string | null;
  readonly set: Pick<FineTuningSet, "trainWindow" | "testWindow" | "available" | "rehearsed"> & { trainSamples: number; testExamples: number };
  readonly training: Pick<TrainResult, "bestEpoch" | "stoppedEarly" | "tokensPerSecond" | "epochs" | "cpuSeconds" | "reused">;
}

export async function runFinetune(asOf: number, options: FinetuneOptions): Promise<FinetuneResult> {
  const started = process.hrtime.bigint();
  const parent = await options.registry.live();
  if (options.memo && options.memo.events !== options.events) throw new Error("FinetuneMemo: the memo belongs to another event store");
  // The training part starts where the parent's data ended (within the window): what it has not seen is learnt,
  // what it has is rehearsed (curation's rehearsalShare), not trained on again as if new. A model delivered from
  // elsewhere is not trained here: its set is the window as configured, for the test slice that gates it.
  const since = options.trainer.delivers ? undefined : (parent?.dataEnd ?? undefined);
  const curation: CurationOptions = { ...options.curation, since: options.curation?.since ?? since };
  const set = await (options.memo ? options.memo.curate(asOf, curation) : curateFineTuningSet(options.events, asOf, curation));
  if (set.train.length === 0 && curation.since !== undefined && curation.since >= set.testWindow.from) {
    throw new FreshrecError(
      "BAD_INPUT",
      `nothing new to fine-tune on: the live model ${parent?.version ?? ""} was trained on data up to ${new Date(curation.since).toISOString()}, at or after this run's test slice (from ${new Date(set.testWindow.from).toISOString()}); fine-tune later`,
    );
  }
  if (set.train.length === 0) {
    throw new FreshrecError("BAD_INPUT", `no novel transitions to fine-tune on in the ${(set.trainWindow.to - set.trainWindow.from) / DAY_MS} days before ${new Date(set.trainWindow.to).toISOString()}`);
  }
  const outputPath = join(options.modelsDir, `finetune-${new Date(asOf).toISOString().slice(0, 10)}-${process.pid}-${Number(process.hrtime.bigint() % 1_000_000n)}${options.trainer.modelFileExtension ?? ".gguf"}`);
  const training = await options.trainer.train(set.train, {
    ...options.train,
    from: parent?.path,
    outputPath,
    signal: options.signal,
    onProgress: options.onProgress,
  });
  // The regression gate scores the live model on the same held-out users as the candidate.
  const live = parent ? { version: parent.version, open: () => options.openModel(parent.path) } : null;
  const measure = async () => measureGates(await options.openModel(training.modelPath), set, options, live);
  const gates = await (options.memo ? options.memo.gate(training.modelPath, parent?.path ?? null, asOf, curation, options, measure) : measure());
  const metrics = { ...gates, bestEpoch: training.bestEpoch, trainTokens: training.trainTokens };
  const version = await options.registry.registerCandidate({
    parent: parent?.version ?? null,
    path: training.modelPath,
    kind: "fine-tuned",
    dataWindow: set.trainWindow,
    trainSamples: set.train.length,
    metrics,
  });
  const status = gates.passed ? "live" : "halted";
  await options.registry.decide(version, status, gates.passed ? "gates passed" : gates.reasons.join("; "), metrics);
  return {
    modelVersion: version,
    status,
    gates,
    trainTokens: training.trainTokens,
    seconds: Number(process.hrtime.bigint() - started) / 1e9,
    parent: parent?.version ?? null,
    set: { trainWindow: set.trainWindow, testWindow: set.testWindow, available: set.available, rehearsed: set.rehearsed, trainSamples: set.train.length, testExamples: set.test.length },
    training: {
      bestEpoch: training.bestEpoch,
      stoppedEarly: training.stoppedEarly,
      tokensPerSecond: training.tokensPerSecond,
      epochs: training.epochs,
      cpuSeconds: training.cpuSeconds,
      reused: training.reused,
    },
  };
}

/**
 * The gates on a candidate: test recall from its top-1 answer for each held-out history; the exact-match rate from
 * generations on a sample of those histories when the model answers in free text (constrained answers are clusters
 * by construction: reported, not measured); with `live`, the live model's test recall on the same histories for the
 * regression gate. Closes the models it is given or opens.
 */
export async function measureGates(
  model: LanguageModel,
  set: Pick<FineTuningSet, "test">,
  options: Pick<FinetuneOptions, "gates" | "generationProbes" | "signal">,
  live: { readonly version: string; readonly open: () => Promise<LanguageModel> } | null = null,
): Promise<GateResult> {
  try {
    const prompts = set.test.map((e) => ({ history: { c1: e.c1, c2: e.c2 } }));
    const top1 = async (m: LanguageModel) => (prompts.length ? await m.score(prompts, 1, options.signal) : []).map((r) => r[0]?.cluster ?? null);
    const predictions = await top1(model);
    let generated: ExactMatchEvidence;
    const answers = model.info.answers;
    if (answers?.kind === "constrained") generated = { byConstruction: answers.how };
    else {
      const probes = prompts.slice(0, options.generationProbes ?? 200);
      const measured: (string | null)[] = [];
      for (const p of probes) measured.push((await model.generate(p, options.signal)).cluster);
      generated = measured;
    }
    let livePredictions: LivePredictions | null = null;
    if (live) {
      const liveModel = await live.open();
      try {
        livePredictions = { version: live.version, predictions: await top1(liveModel) };
      } finally {
        await liveModel.close();
      }
    }
    return evaluateGates(generated, set.test, predictions, options.gates, livePredictions);
  } finally {
    await model.close();
  }
}
