/**
 * A `Trainer` that remembers its runs: a request identical to an earlier one (same starting model bytes, samples,
 * validation set, catalog and hyper-parameters, same trainer) gets the model trained then instead of a new run.
 *
 * Replay evaluation uses one per workspace: `finetune-monthly` and `hybrid` run the very same monthly fine-tune (same
 * curated set, same parent model while their gates agree), and re-running a replay with another refresh cadence or
 * RAG ablation repeats all of them. Training is deterministic here (one thread, seeded shuffles), so the cached model
 * is the one a new run would produce. The result keeps the original run's costs (tokens, CPU seconds), so each
 * strategy is charged what it would pay alone; `reused: true` says the wall time was not spent again.
 *
 * @example
 * const trainer = new CachingTrainer(new EmbeddedTrainer(), join(workspace, "replay", "training-cache"), "embedded");
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import type { TrainOptions, TrainResult, Trainer, TrainingSample } from "./contracts.js";
import { freshrecVersion } from "./engine/model-file.js";
import { fileSha256, placeModelFile } from "./registry.js";

export class CachingTrainer implements Trainer {
  /** Runs in progress by key: an identical request waits for the run instead of training the same model twice. */
  private readonly running = new Map<string, Promise<unknown>>();

  /**
   * @param identity what else decides the output besides the request: the trainer kind and its options (the
   *   freshrec version is added, so a new release never reuses an older recipe's models; so is the inner trainer's
   *   `recipe`, the embedded trainer's engine and precision).
   */
  constructor(
    private readonly inner: Trainer,
    private readonly dir: string,
    private readonly identity: string,
  ) {}

  get modelFileExtension(): string | undefined {
    return this.inner.modelFileExtension;
  }

  get recipe(): string | undefined {
    return this.inner.recipe;
  }

  async train(samples: readonly TrainingSample[], options: TrainOptions): Promise<TrainResult> {
    // Only continued training is remembered: a model from scratch also depends on the trainer's initialisation
    // (clusters, vocabulary, shape), which the request does not carry.
    if (!options.from) return this.inner.train(samples, options);
    const key = await this.key(samples, options);
    // Strategies replayed side by side ask for the same fine-tune at nearly the same time: the second waits for the
    // first run and then takes its model from the cache (or trains itself if that run failed).
    for (let pending = this.running.get(key); pending; pending = this.running.get(key)) await pending.catch(() => undefined);
    const entry = join(this.dir, key);
    const model = join(entry, `model${this.inner.modelFileExtension ?? ".gguf"}`);
    const meta = join(entry, "result.json");
    if (existsSync(model) && existsSync(meta)) {
      const earlier = JSON.parse(readFileSync(meta, "utf8")) as TrainResult;
      placeModelFile(model, options.outputPath);
      // The earlier run's epoch checkpoints were its own (and are removed unless it kept them): none for this output.
      return { ...earlier, epochs: earlier.epochs.map((e) => ({ ...e, checkpoint: null })), modelPath: options.outputPath, reused: true };
    }
    // The run counts as in progress until its entry is written, so a waiter always finds it.
    const run = (async () => {
      const result = await this.inner.train(samples, options);
      mkdirSync(entry, { recursive: true });
      // The result first, the model last: an entry counts only when its model exists, so a crash in between leaves
      // a result without a model, which is ignored and overwritten.
      // Without the run's own file paths (its output, its checkpoints): the entry's model is the file beside it, and
      // workspace state holds no absolute path of the machine that wrote it.
      const kept: TrainResult = { ...result, modelPath: basename(model), epochs: result.epochs.map((e) => ({ ...e, checkpoint: null })) };
      writeFileSync(`${meta}.partial`, JSON.stringify(kept));
      renameSync(`${meta}.partial`, meta);
      placeModelFile(result.modelPath, model);
      return result;
    })();
    this.running.set(key, run);
    try {
      return await run;
    } finally {
      this.running.delete(key);
    }
  }

  private async key(samples: readonly TrainingSample[], o: TrainOptions): Promise<string> {
    const hash = createHash("sha256");
    // The inner trainer's recipe is left out of the JSON when undefined (trainers without one keep the keys written
    // before recipes existed); the embedded trainer always has one, so entries of its removed first engine, which
    // had none, are never reused.
    hash.update(
      JSON.stringify({ identity: this.identity, freshrec: freshrecVersion(), from: o.from ? await fileSha256(o.from) : null, recipe: this.inner.recipe }),
    );
    hash.update(JSON.stringify(samples));
    hash.update(
      JSON.stringify({
        validation: o.validation ?? null,
        validationFraction: o.validationFraction ?? null,
        catalog: o.catalog ?? null,
        epochs: o.epochs ?? null,
        learningRate: o.learningRate ?? null,
        weightDecay: o.weightDecay ?? null,
        patience: o.patience ?? null,
        seed: o.seed ?? null,
      }),
    );
    return hash.digest("hex").slice(0, 32);
  }
}
