/**
 * Tests that fail when learning breaks: a trainer that wrote random weights, or stepped nothing, would pass every
 * other training test (they assert finite losses, files, vocabularies). Each one here trains the tiny shape of
 * tiny-model.ts for real and asserts what it learnt, on data it never saw, against a baseline:
 * - a deterministic mapping (the history's second cluster decides the next one) reaches a high accuracy on history
 *   pairs held out of training (chance is ~5%);
 * - `pretrainBaseModel` on a small synthetic world beats most-popular-next on the held-out days after its window;
 * - a fine-tune on a shifted kernel (every history's successor moved) moves the model's answers toward it.
 * With the optimizer step disabled (every AdamW step scaled by 1e-30: ggml asserts a positive rate) all three fail;
 * the measured numbers are in the comments. The mapping and the shift train above the trainer's default rate (1e-3)
 * so a few hundred steps of the tiny shape learn, which keeps each test within seconds; the pretrain uses the default.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { EmbeddedLanguageModel } from "../../src/llm/backends/embedded.js";
import type { TrainingSample } from "../../src/llm/contracts.js";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { pretrainBaseModel } from "../../src/llm/pretrain.js";
import { TINY_SHAPE } from "./fixtures.js";
import { MAPPING_CLUSTERS as CLUSTERS, N, heldOut, ids, mappingSample, successor, trainPairs, withSmallWorld } from "./mapping.js";
import { tempDir } from "../temp-dir.js";


function samplesOf(list: readonly [number, number][], repeats: number, shift = 0): TrainingSample[] {
  const out: TrainingSample[] = [];
  for (let r = 0; r < repeats; r++) for (const pair of list) out.push(mappingSample(pair, shift));
  return out;
}

/** For each held-out pair, the model's top-1 and the probability it gives each cluster. */
async function answersOn(modelPath: string): Promise<{ top1: string[]; probability: Map<string, number>[] }> {
  const model = await EmbeddedLanguageModel.open(modelPath);
  try {
    const ranked = await model.score(heldOut.map(([a, b]) => ({ history: { c1: ids[a], c2: ids[b] } })), N);
    return { top1: ranked.map((r) => r[0].cluster), probability: ranked.map((r) => new Map(r.map((x) => [x.cluster, x.score]))) };
  } finally {
    await model.close();
  }
}

const share = (xs: readonly boolean[]) => xs.filter(Boolean).length / xs.length;
const mean = (xs: readonly number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

describe("learning (tiny model, real engine v2 training)", () => {
  const ws = tempDir("freshrec-learning-");
  let mappingModel = "";

  it("learns a deterministic mapping and answers held-out history pairs by it", async () => {
    const trainer = new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } });
    const result = await trainer.train(samplesOf(trainPairs, 5), { outputPath: join(ws, "mapping.gguf"), epochs: 5, patience: 99, learningRate: 3e-3 });
    mappingModel = result.modelPath;
    const { top1 } = await answersOn(mappingModel);
    const accuracy = share(top1.map((c, i) => c === ids[successor(...heldOut[i])]));
    // The best constant answer (the most frequent successor among held-out pairs) is the baseline to clear.
    const counts = new Map<number, number>();
    for (const [a, b] of heldOut) counts.set(successor(a, b), (counts.get(successor(a, b)) ?? 0) + 1);
    const constant = Math.max(...counts.values()) / heldOut.length;
    expect(heldOut.length).toBe(80);
    expect(constant).toBeLessThan(0.1);
    // Measured: 0.95 (0.99 on the validation split of trained pairs; best constant answer 0.06); with the optimizer
    // step disabled 0.04.
    expect(accuracy).toBeGreaterThanOrEqual(0.6);
  }, 60_000);

  it("moves toward a shifted kernel when fine-tuned on it", async () => {
    expect(mappingModel, "needs the model of the mapping test").not.toBe("");
    const shift = 5;
    const newAnswer = heldOut.map(([a, b]) => ids[successor(a, b, shift)]);
    const oldAnswer = heldOut.map(([a, b]) => ids[successor(a, b)]);
    const before = await answersOn(mappingModel);
    const tuned = await new EmbeddedTrainer().train(samplesOf(trainPairs, 3, shift), {
      from: mappingModel,
      outputPath: join(ws, "shifted.gguf"),
      epochs: 3,
      patience: 99,
      learningRate: 3e-3,
    });
    const after = await answersOn(tuned.modelPath);
    const mass = (r: typeof before, target: readonly string[]) => mean(r.probability.map((p, i) => p.get(target[i]) ?? 0));
    const agree = (r: typeof before, target: readonly string[]) => share(r.top1.map((c, i) => c === target[i]));
    // Measured: mean probability of the new successor 0.01 -> 0.83, top-1 agreement with it 0.01 -> 0.95 and with
    // the old one 0.95 -> 0.03; with the optimizer step disabled nothing moves (0.01 -> 0.01, 0.95 -> 0.95).
    expect(mass(after, newAnswer)).toBeGreaterThan(mass(before, newAnswer) + 0.3);
    expect(agree(after, newAnswer)).toBeGreaterThanOrEqual(0.5);
    expect(agree(after, oldAnswer)).toBeLessThan(agree(before, oldAnswer) - 0.4);
  }, 60_000);

  it("pretrains a base model on a small synthetic world that beats most-popular-next on later days", async () => {
    await withSmallWorld(async ({ events, window, transitions, heldOutDays }) => {
      const result = await pretrainBaseModel({
        workspace: join(ws, "world"),
        clock: new VirtualClock(window.to),
        clusters: await events.clusters(),
        transitions,
        heldOut: heldOutDays,
        window,
        shape: TINY_SHAPE,
        epochs: 6,
      });
      const e = result.evaluation!;
      expect(e.transitions).toBeGreaterThan(2000);
      // Measured (36 clusters, 6.9k training and 2.5k held-out transitions; 6 epochs at the trainer's default rate):
      // model 22.8% vs most-popular-next 15.6% top-1; with the optimizer step disabled the model scores 1.0%.
      expect(e.modelTop1 - e.mostPopularTop1).toBeGreaterThan(0.05);
    });
  }, 60_000);
});
