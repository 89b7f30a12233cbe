import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { TrainOptions, TrainResult, Trainer, TrainingSample } from "../../src/llm/contracts.js";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { CachingTrainer } from "../../src/llm/training-cache.js";
import { CLUSTERS, TINY_SHAPE, toySamples } from "./fixtures.js";
import { tempDir } from "../temp-dir.js";

/** The real embedded trainer, counting the runs it actually does. */
class CountingTrainer implements Trainer {
  runs = 0;
  constructor(private readonly inner: Trainer) {}
  train(samples: readonly TrainingSample[], options: TrainOptions): Promise<TrainResult> {
    this.runs++;
    return this.inner.train(samples, options);
  }
}

describe("training cache (real tiny training runs)", () => {
  it("reuses an identical fine-tune, charging the original run's costs, and trains again when anything differs", async () => {
    const ws = tempDir("freshrec-llm-");
    const base = await new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } }).train(toySamples(200), {
      outputPath: join(ws, "base.gguf"),
      epochs: 1,
    });
    const counting = new CountingTrainer(new EmbeddedTrainer());
    const cache = join(ws, "cache");
    const trainer = new CachingTrainer(counting, cache, "embedded");
    const samples = toySamples(150, 3);
    const first = await trainer.train(samples, { from: base.modelPath, outputPath: join(ws, "a", "model.gguf"), epochs: 1 });
    expect(first.reused).toBeUndefined();
    expect(first.cpuSeconds).toBeGreaterThan(0);
    // A second strategy asks for the same fine-tune into its own folder: no new run, the same bytes, the same costs.
    const second = await new CachingTrainer(counting, cache, "embedded").train(samples, { from: base.modelPath, outputPath: join(ws, "b", "model.gguf"), epochs: 1 });
    expect(counting.runs).toBe(1);
    expect(second.reused).toBe(true);
    expect(second.modelPath).toBe(join(ws, "b", "model.gguf"));
    expect(readFileSync(second.modelPath).equals(readFileSync(first.modelPath))).toBe(true);
    expect(second.trainTokens).toBe(first.trainTokens);
    expect(second.cpuSeconds).toBe(first.cpuSeconds);
    // The entry names no path of the run that wrote it: a workspace copied or moved keeps a cache that says nothing
    // of where it was.
    const entries = readdirSync(cache);
    expect(entries).toHaveLength(1);
    const stored = readFileSync(join(cache, entries[0], "result.json"), "utf8");
    expect(stored).not.toContain(ws);
    expect(JSON.parse(stored).modelPath).toBe("model.gguf");
    // Other samples, other hyper-parameters, another parent or another trainer identity: trained for real.
    await trainer.train(toySamples(150, 4), { from: base.modelPath, outputPath: join(ws, "c.gguf"), epochs: 1 });
    await trainer.train(samples, { from: base.modelPath, outputPath: join(ws, "d.gguf"), epochs: 1, learningRate: 1e-4 });
    await trainer.train(samples, { from: first.modelPath, outputPath: join(ws, "e.gguf"), epochs: 1 });
    await new CachingTrainer(counting, cache, "embedded/threads=2").train(samples, { from: base.modelPath, outputPath: join(ws, "f.gguf"), epochs: 1 });
    expect(counting.runs).toBe(5);
    // From scratch the output also depends on the trainer's initialisation, which the request does not name: never reused.
    const fresh = new CountingTrainer(new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } }));
    const scratch = new CachingTrainer(fresh, cache, "embedded");
    await scratch.train(samples, { outputPath: join(ws, "g.gguf"), epochs: 1 });
    const again = await scratch.train(samples, { outputPath: join(ws, "h.gguf"), epochs: 1 });
    expect(fresh.runs).toBe(2);
    expect(again.reused).toBeUndefined();
  });

  it("runs an identical request made while the first is still training once (strategies replayed side by side)", async () => {
    const ws = tempDir("freshrec-llm-");
    const base = await new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } }).train(toySamples(200), { outputPath: join(ws, "base.gguf"), epochs: 1 });
    const counting = new CountingTrainer(new EmbeddedTrainer());
    const trainer = new CachingTrainer(counting, join(ws, "cache"), "embedded");
    const samples = toySamples(150, 5);
    const [a, b] = await Promise.all([
      trainer.train(samples, { from: base.modelPath, outputPath: join(ws, "a.gguf"), epochs: 1 }),
      trainer.train(samples, { from: base.modelPath, outputPath: join(ws, "b.gguf"), epochs: 1 }),
    ]);
    expect(counting.runs).toBe(1);
    // Whichever request finishes hashing its inputs first trains (both hash the parent file asynchronously); the
    // other waits for it and takes its model.
    expect([a.reused, b.reused].filter((r) => r === true)).toHaveLength(1);
    expect(readFileSync(b.modelPath).equals(readFileSync(a.modelPath))).toBe(true);
  });
});
