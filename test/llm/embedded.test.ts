import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EmbeddedLanguageModel } from "../../src/llm/backends/embedded.js";
import type { TrainingEvent } from "../../src/llm/contracts.js";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { readModelFile } from "../../src/llm/engine/model-file.js";
import { languageModelConformance } from "./conformance.js";
import { CLUSTERS, expectCancelledCleanly, TINY_SHAPE, toySamples } from "./fixtures.js";
import { tempDir } from "../temp-dir.js";

const ws = tempDir("freshrec-llm-");
let trainedPath = "";

async function trainTiny(epochs = 2): Promise<string> {
  if (trainedPath) return trainedPath;
  const trainer = new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } });
  const result = await trainer.train(toySamples(400), { outputPath: join(ws, "models", "tiny.gguf"), epochs, patience: 99 });
  trainedPath = result.modelPath;
  return trainedPath;
}

describe("embedded trainer (real engine v2 training, tiny model)", () => {
  it("trains in a child process with per-epoch progress, checkpoints and a loadable output", async () => {
    const events: TrainingEvent[] = [];
    const trainer = new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } });
    const out = join(ws, "models", "smoke.gguf");
    const result = await trainer.train(toySamples(400), { outputPath: out, epochs: 2, patience: 99, keepCheckpoints: true, onProgress: (e) => events.push(e) });
    expect(existsSync(out)).toBe(true);
    expect(result.epochs).toHaveLength(2);
    expect(result.trainTokens).toBeGreaterThan(0);
    expect(result.validationSamples).toBe(40);
    const epochs = events.filter((e) => e.type === "epoch");
    expect(epochs.map((e) => e.epoch)).toEqual([1, 2]);
    for (const e of result.epochs) {
      expect(Number.isFinite(e.trainLoss)).toBe(true);
      expect(e.validationAccuracy).toBeGreaterThanOrEqual(0);
      expect(existsSync(e.checkpoint!)).toBe(true);
      const info = readModelFile(e.checkpoint!);
      expect(info.clusters).toHaveLength(CLUSTERS.length);
      // Training windows are not the model's context: every checkpoint keeps the file's own context length.
      expect(info.shape.contextLength).toBe(TINY_SHAPE.contextLength);
    }
    // The learning-rate schedule decays from the peak.
    expect(result.epochs[1].learningRate).toBeLessThan(result.epochs[0].learningRate);
    trainedPath = out;
  });

  it("continues training from an existing model (fine-tuning) and keeps its vocabulary", async () => {
    const from = await trainTiny();
    const out = join(ws, "models", "tuned.gguf");
    const result = await new EmbeddedTrainer().train(toySamples(200, 9), { from, outputPath: out, epochs: 1, keepCheckpoints: true });
    expect(result.epochs).toHaveLength(1);
    expect(readModelFile(out).vocabularyHash).toBe(readModelFile(from).vocabularyHash);
    // Its checkpoints are its own: a model written beside another in one folder never overwrites the other's epochs.
    expect(result.epochs[0].checkpoint).toBe(join(`${out}.checkpoints`, "epoch-001.gguf"));
    const other = await new EmbeddedTrainer().train(toySamples(200, 11), { from, outputPath: join(ws, "models", "tuned-2.gguf"), epochs: 1, keepCheckpoints: true });
    expect(other.epochs[0].checkpoint).not.toBe(result.epochs[0].checkpoint);
    expect(readFileSync(result.epochs[0].checkpoint!).equals(readFileSync(other.epochs[0].checkpoint!))).toBe(false);
  });

  it("removes its checkpoints when it ends, unless asked to keep them, and leaves other files in a named folder", async () => {
    const from = await trainTiny();
    // The default folder: gone with its epochs; the reports say the files are gone.
    const out = join(ws, "models", "tidy.gguf");
    const seen: string[] = [];
    const result = await new EmbeddedTrainer().train(toySamples(200, 13), {
      from,
      outputPath: out,
      epochs: 2,
      patience: 99,
      onProgress: (e) => {
        if (e.type === "epoch" && e.checkpoint && existsSync(e.checkpoint)) seen.push(e.checkpoint);
      },
    });
    expect(seen).toHaveLength(2); // they existed while the training ran (the best epoch is copied from one)
    expect(result.epochs.map((e) => e.checkpoint)).toEqual([null, null]);
    expect(existsSync(`${out}.checkpoints`)).toBe(false);
    expect(readModelFile(out).vocabularyHash).toBe(readModelFile(from).vocabularyHash);
    // A folder the caller named (pretraining's models/<version>/checkpoints, say) keeps what the trainer did not write.
    const named = join(ws, "models", "named-checkpoints");
    mkdirSync(named, { recursive: true });
    writeFileSync(join(named, "notes.txt"), "mine");
    await new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } }).train(toySamples(200, 17), { outputPath: join(ws, "models", "scratch.gguf"), checkpointDir: named, epochs: 1 });
    expect(readdirSync(named)).toEqual(["notes.txt"]);
    // A training that fails before its worker starts (an unreadable parent model) leaves no folder either.
    const broken = join(ws, "models", "broken.gguf");
    writeFileSync(join(ws, "models", "not-a-model.gguf"), "x");
    await expect(new EmbeddedTrainer().train(toySamples(20), { from: join(ws, "models", "not-a-model.gguf"), outputPath: broken, epochs: 1 })).rejects.toThrow();
    expect(existsSync(`${broken}.checkpoints`)).toBe(false);
  });

  it("is cancellable: an abort rejects with CANCELLED and leaves no output", async () => {
    const trainer = new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } });
    await expectCancelledCleanly(trainer, toySamples(2000), join(ws, "models", "cancelled.gguf"), 50);
  });
});

languageModelConformance("embedded", async () => ({ model: await EmbeddedLanguageModel.open(await trainTiny()) }));
