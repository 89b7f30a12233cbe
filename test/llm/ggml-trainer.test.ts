/**
 * Proofs for engine v2 (src/llm/engine/ggml-trainer.ts, ggml-graph.ts: the llama training graph built directly on
 * ggml, many samples per optimizer step), below the product's trainer (embedded*.test.ts and learning.test.ts train
 * through EmbeddedTrainer):
 * - isolation: a packed window's loss equals the mean of the same samples' losses computed one at a time, both in
 *   the forward graph and as the loss of a training step before its update; changing one sample of a window does
 *   not change another sample's logits;
 * - gradients: one optimizer step changes every weight, attn_k, attn_v and token_embd included (the removed
 *   llama_opt_epoch path left those frozen), and leaves the embedding rows of tokens the window does not contain untouched;
 * - learning: a tiny model learns a deterministic mapping and answers held-out history pairs by it, scored through
 *   the product's scorer (EmbeddedLanguageModel) from the file written with the existing GGUF writer;
 * - serving: that file's top-1 through the llama.cpp scorer equals the ggml forward pass's, and the logits agree;
 * - the hand-written backward pass (ggml-backward.ts, the trainer's default) computes autograd's gradients.
 */
import koffi from "koffi";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EmbeddedLanguageModel } from "../../src/llm/backends/embedded.js";
import { GGML_EXPECTED_STRUCT_SIZES, ggmlInitParams, ggmlOptParams } from "../../src/llm/engine/ggml-api.js";
import { GgmlStep, llamaTensorNames, packWindows } from "../../src/llm/engine/ggml-graph.js";
import { GgmlManualStep } from "../../src/llm/engine/ggml-backward.js";
import { GgmlModel, answerLogits, trainGgml } from "../../src/llm/engine/ggml-trainer.js";
import { allocOptimizerParams, loadLlamaApi } from "../../src/llm/engine/llama-api.js";
import { createModelFile } from "../../src/llm/engine/model-file.js";
import { BatchScorer } from "../../src/llm/engine/scorer.js";
import { promptTokens, sampleTokens } from "../../src/llm/engine/trainer.js";
import { CLUSTER_BASE, EOS_ID, buildVocabulary } from "../../src/llm/engine/vocabulary.js";
import { CLUSTERS as TOY_CLUSTERS, TINY_SHAPE, toySamples } from "./fixtures.js";
import { MAPPING_CLUSTERS as CLUSTERS, N, heldOut, ids, mappingSample, pairs, successor, trainPairs } from "./mapping.js";
import { tempDir } from "../temp-dir.js";

const ws = tempDir("freshrec-ggml-");

/** Prompts of different lengths (real prompts cut or padded with their own words), so positions and blocks differ. */
function unevenSequences(vocab: ReturnType<typeof buildVocabulary>): number[][] {
  return toySamples(40).map((s, i) => {
    const full = sampleTokens(vocab, s);
    const prompt = full.slice(0, -1);
    const extra = (i * 5) % 9;
    const cut = i % 2 === 0 ? prompt.slice(0, Math.max(2, prompt.length - extra)) : [...prompt, ...prompt.slice(1, 1 + extra)];
    return [...cut, full[full.length - 1]];
  });
}

/** A window of `n` tokens holding exactly the samples `idx`, in that order. */
function windowOf(seqs: readonly (readonly number[])[], idx: readonly number[], tokens: number, maxSamples = idx.length) {
  const windows = packWindows(seqs, idx, tokens, maxSamples, EOS_ID);
  expect(windows).toHaveLength(1);
  return windows[0];
}

describe("ggml bindings", () => {
  it("declare the structs passed by value with the sizes of the v0.4.0 headers", () => {
    expect(koffi.sizeof(ggmlInitParams)).toBe(GGML_EXPECTED_STRUCT_SIZES.ggml_init_params);
    expect(koffi.sizeof(ggmlOptParams)).toBe(GGML_EXPECTED_STRUCT_SIZES.ggml_opt_params);
  });
});

describe("ggml trainer: isolation of packed samples", () => {
  const vocab = buildVocabulary({ clusters: TOY_CLUSTERS });
  const path = join(ws, "iso.gguf");
  createModelFile(path, vocab, { ...TINY_SHAPE, layers: 2 }, { seed: 7 });
  const seqs = unevenSequences(vocab);
  const idx = [0, 1, 2, 3, 4, 5, 6, 7];
  const T = 160;
  let model: GgmlModel;
  beforeAll(() => {
    model = GgmlModel.load(path);
  });
  afterAll(() => model.free());

  function singleLosses(): number[] {
    return idx.map((i) => {
      const step = new GgmlStep(model.weights, { windowTokens: seqs[i].length - 1, maxSamples: 1, train: false });
      try {
        return step.run(windowOf(seqs, [i], seqs[i].length - 1)).loss;
      } finally {
        step.free();
      }
    });
  }

  it("a packed window's loss equals the mean of its samples' losses computed one at a time", () => {
    expect(new Set(idx.map((i) => seqs[i].length)).size).toBeGreaterThan(1);
    const singles = singleLosses();
    const mean = singles.reduce((a, b) => a + b, 0) / singles.length;
    // More answer rows than samples: the unused rows must not count.
    const step = new GgmlStep(model.weights, { windowTokens: T, maxSamples: 12, train: false });
    const window = windowOf(seqs, idx, T, 12);
    expect(window.realTokens).toBeLessThan(T); // padding at the end too
    const packed = step.run(window);
    step.free();
    expect(packed.samples).toBe(8);
    expect(Math.abs(packed.loss - mean)).toBeLessThan(1e-4);
    // Each sample alone differs from the mean: equal means are not a coincidence of equal losses.
    expect(Math.max(...singles) - Math.min(...singles)).toBeGreaterThan(1e-3);
  });

  it("changing one sample of a window leaves the other samples' logits unchanged", () => {
    const step = new GgmlStep(model.weights, { windowTokens: T, maxSamples: 8, train: false });
    try {
      step.run(windowOf(seqs, idx, T));
      const a = step.logits();
      // Sample 3 replaced by a sample of the same length with other tokens.
      const other = seqs.findIndex((s, i) => i > 7 && s.length === seqs[3].length && s.slice(0, -1).join() !== seqs[3].slice(0, -1).join());
      expect(other).toBeGreaterThan(7);
      const swapped = [...idx];
      swapped[3] = other;
      step.run(windowOf(seqs, swapped, T));
      const b = step.logits();
      const V = vocab.size;
      for (let s = 0; s < 8; s++) {
        const diff = Math.max(...Array.from({ length: V }, (_, j) => Math.abs(a[s * V + j] - b[s * V + j])));
        if (s === 3) expect(diff).toBeGreaterThan(1e-3);
        else expect(diff).toBeLessThan(1e-5);
      }
    } finally {
      step.free();
    }
  });

  it("a training step's loss (before its update) equals the mean of the one-at-a-time losses, and one step changes every weight", () => {
    const singles = singleLosses();
    const mean = singles.reduce((a, b) => a + b, 0) / singles.length;
    const names = llamaTensorNames(2);
    const before = new Map(names.map((n) => [n, model.weights.read(n)]));
    const optimizer = allocOptimizerParams();
    optimizer.set({ adamw_alpha: 1e-3, adamw_beta1: 0.9, adamw_beta2: 0.999, adamw_eps: 1e-8, adamw_wd: 0, sgd_alpha: 1e-3, sgd_wd: 0 });
    const step = new GgmlStep(model.weights, { windowTokens: T, maxSamples: 12, train: true, optimizerParams: optimizer.ptr });
    const window = windowOf(seqs, idx, T, 12);
    const r = step.run(window);
    step.free();
    expect(Math.abs(r.loss - mean)).toBeLessThan(1e-4);
    for (const n of names) {
      const a = before.get(n) as Float32Array;
      const b = model.weights.read(n);
      let changed = 0;
      for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) changed++;
      // The removed llama_opt_epoch path never trained attn_k, attn_v or token_embd (docs/engine.md fault 2); here every tensor moves.
      expect(changed, n).toBeGreaterThan(0);
    }
    // Embedding rows: the rows of tokens in the window move, the others get no gradient and stay exactly as they were.
    const d = TINY_SHAPE.embedding;
    // (padding tokens are read but reach no answer, so their rows get no gradient either)
    const used = new Set(Array.from(window.tokens).filter((_, j) => window.segment[j] >= 0));
    const a = before.get("token_embd.weight") as Float32Array;
    const b = model.weights.read("token_embd.weight");
    for (let t = 0; t < vocab.size; t++) {
      let moved = false;
      for (let j = 0; j < d; j++) if (a[t * d + j] !== b[t * d + j]) moved = true;
      expect(moved, `token ${t}`).toBe(used.has(t));
    }
    // After the step the same window's loss is lower.
    const fwd = new GgmlStep(model.weights, { windowTokens: T, maxSamples: 12, train: false });
    expect(fwd.run(window).loss).toBeLessThan(r.loss);
    fwd.free();
  });
});

describe("ggml trainer: the hand-written backward pass", () => {
  it("computes the gradients ggml's autograd computes, for every weight", () => {
    const vocab = buildVocabulary({ clusters: TOY_CLUSTERS });
    const path = join(ws, "grad.gguf");
    createModelFile(path, vocab, { ...TINY_SHAPE, layers: 2 }, { seed: 3 });
    const seqs = unevenSequences(vocab);
    const window = windowOf(seqs, [0, 1, 2, 3, 4, 5, 6, 7], 160, 12);
    const auto = GgmlModel.load(path);
    const manual = GgmlModel.load(path);
    const names = llamaTensorNames(2);
    const before = new Map(names.map((n) => [n, auto.weights.read(n)]));
    // SGD at rate 1 without decay: a weight's change is minus its gradient.
    const optimizer = allocOptimizerParams();
    optimizer.set({ adamw_alpha: 1, adamw_beta1: 0.9, adamw_beta2: 0.999, adamw_eps: 1e-8, adamw_wd: 0, sgd_alpha: 1, sgd_wd: 0 });
    const autoStep = new GgmlStep(auto.weights, { windowTokens: 160, maxSamples: 12, train: true, optimizerParams: optimizer.ptr, optimizer: "sgd" });
    const manualStep = new GgmlManualStep(manual.weights, { windowTokens: 160, maxSamples: 12, optimizer: "sgd" });
    try {
      const ra = autoStep.run(window);
      const rm = manualStep.run(window, { learningRate: 1 });
      expect(Math.abs(ra.loss - rm.loss)).toBeLessThan(1e-6);
      for (const n of names) {
        const b0 = before.get(n) as Float32Array;
        const a1 = auto.weights.read(n);
        const m1 = manual.weights.read(n);
        let largest = 0;
        let worst = 0;
        for (let i = 0; i < b0.length; i++) {
          largest = Math.max(largest, Math.abs(b0[i] - a1[i]));
          worst = Math.max(worst, Math.abs(a1[i] - m1[i]));
        }
        // Measured: differences of 1e-11 to 1.2e-7 for gradients up to 3.5e-1.
        expect(largest, n).toBeGreaterThan(0);
        expect(worst, n).toBeLessThan(1e-6 + 1e-4 * largest);
      }
    } finally {
      autoStep.free();
      manualStep.free();
      auto.free();
      manual.free();
    }
  });
});

describe("ggml trainer: learning, and serving the trained file through llama.cpp", () => {
  const vocab = buildVocabulary({ clusters: CLUSTERS });
  const trainedPath = join(ws, "mapping.gguf");

  it.each(["f32", "bf16"] as const)("learns a deterministic mapping and answers held-out history pairs by it through the product's scorer (%s products)", async (precision) => {
    const initPath = join(ws, `mapping-init-${precision}.gguf`);
    createModelFile(initPath, vocab, TINY_SHAPE, { seed: 1 });
    const model = GgmlModel.load(initPath);
    const seqs = trainPairs.map((p) => sampleTokens(vocab, mappingSample(p)));
    const stats = trainGgml(model, seqs, { epochs: 30, learningRate: 3e-3, windowTokens: 128, maxSamples: 16, seed: 2, precision });
    const outPath = precision === "f32" ? trainedPath : join(ws, "mapping-bf16.gguf");
    model.save(outPath);
    model.free();
    expect(stats.epochLoss[stats.epochLoss.length - 1]).toBeLessThan(stats.epochLoss[0] / 4);
    const served = await EmbeddedLanguageModel.open(outPath);
    try {
      const ranked = await served.score(heldOut.map(([a, b]) => ({ history: { c1: ids[a], c2: ids[b] } })), 3);
      const accuracy = ranked.filter((r, i) => r[0].cluster === ids[successor(...heldOut[i])]).length / heldOut.length;
      // Measured: f32 0.80 (answer loss 4.79 -> 0.35 over 30 epochs, 1,020 steps of up to 16 samples), the same
      // with the autograd step; bf16 products 0.84 (loss 4.79 -> 0.34); with the
      // step disabled (learning rate 1e-30) the loss stays at 5.76 and the assertion above fails. The best constant
      // answer is below 0.1 (learning.test.ts).
      expect(accuracy).toBeGreaterThanOrEqual(0.6);
    } finally {
      await served.close();
    }
  }, 60_000);

  it("the written file scores through llama.cpp with the same top-1 and logits as the ggml forward pass", async () => {
    const model = GgmlModel.load(trainedPath);
    const prompts = pairs.filter((_, i) => i % 3 === 0);
    // A dummy answer token closes each sequence: answerLogits reads the prompt and predicts the last token.
    const seqs = prompts.map(([a, b]) => [...promptTokens(vocab, { history: { c1: ids[a], c2: ids[b] } }), EOS_ID]);
    const ggmlLogits = answerLogits(model, seqs, 128, 16);
    model.free();
    const scorer = BatchScorer.open(loadLlamaApi(), trainedPath, { answerBase: CLUSTER_BASE, answerCount: N });
    const llamaLogits = await scorer.score(seqs.map((s) => s.slice(0, -1)));
    await scorer.close();
    let maxDiff = 0;
    let sameTop = 0;
    prompts.forEach(([a, b], i) => {
      const g = ggmlLogits[i].slice(CLUSTER_BASE, CLUSTER_BASE + N);
      const l = llamaLogits.slice(i * N, (i + 1) * N);
      for (let j = 0; j < N; j++) maxDiff = Math.max(maxDiff, Math.abs(g[j] - l[j]));
      const best = (x: Float32Array) => {
        let k = -1;
        for (let j = 0; j < N; j++) if (j !== a && j !== b && (k < 0 || x[j] > x[k])) k = j;
        return k;
      };
      if (best(g) === best(l)) sameTop++;
    });
    // Measured: largest logit difference 1.9e-6, 127 of 127 top-1 equal.
    expect(maxDiff).toBeLessThan(1e-3);
    expect(sameTop).toBe(prompts.length);
    // And through the product's backend (allowed answers exclude the history's clusters).
    const served = await EmbeddedLanguageModel.open(trainedPath);
    try {
      const ranked = await served.score(prompts.map(([a, b]) => ({ history: { c1: ids[a], c2: ids[b] } })), 1);
      ranked.forEach((r, i) => {
        const g = ggmlLogits[i].slice(CLUSTER_BASE, CLUSTER_BASE + N);
        const [a, b] = prompts[i];
        let k = -1;
        for (let j = 0; j < N; j++) if (j !== a && j !== b && (k < 0 || g[j] > g[k])) k = j;
        expect(r[0].cluster).toBe(ids[k]);
      });
    } finally {
      await served.close();
    }
  }, 60_000);
});
