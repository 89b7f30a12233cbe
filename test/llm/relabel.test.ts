/**
 * Relabelled context samples (src/llm/relabel.ts): what the renaming keeps, and that a model trained with them reads
 * a context that contradicts what it memorised, where the same training without them does not. Real training of
 * the tiny shape, as test/update/finetune-forgetting.test.ts does.
 */
import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { EmbeddedLanguageModel } from "../../src/llm/backends/embedded.js";
import type { TrainingSample } from "../../src/llm/contracts.js";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { relabelContextSamples } from "../../src/llm/relabel.js";
import { PAIR_WORLD, TINY_SHAPE } from "./fixtures.js";
import { tempDir } from "../temp-dir.js";

const { clusters: CLUSTERS, ids, successor, pairs } = PAIR_WORLD;

/**
 * A log without drift: each pair's users go on to its successor; the retrieved context (the top successor of the
 * week before, a small sample) names it in 3 of 5 samples and another cluster otherwise. Inside one regime of a real
 * log memory is the better guide, so a model trained on it learns to answer from memory whatever the context says.
 */
function samples(): TrainingSample[] {
  const out: TrainingSample[] = [];
  for (let r = 0; r < 5; r++) {
    for (const [a, b] of pairs) {
      const next = ids[successor(a, b)];
      const retrieved = r < 3 ? next : ids[successor(a, b, r)];
      out.push({ prompt: { history: { c1: ids[a], c2: ids[b] } }, answer: next });
      out.push({ prompt: { history: { c1: ids[a], c2: ids[b] }, context: { successors: [retrieved] } }, answer: next });
    }
  }
  return out;
}

describe("relabelled context samples", () => {
  it("rename every cluster of a sample with a context by one map and leave the others as they are", () => {
    const set = samples();
    expect(relabelContextSamples(set, ids, { share: 0, seed: 1 })).toEqual(set);
    const all = relabelContextSamples(set, ids, { share: 1, seed: 7 });
    expect(all).toHaveLength(set.length);
    let renamedHistories = 0;
    all.forEach((s, i) => {
      const before = set[i];
      if (!before.prompt.context) {
        expect(s).toEqual(before);
        return;
      }
      const named = [s.prompt.history.c1, s.prompt.history.c2, s.answer];
      // One injective map: the answer is the context's successor exactly as before, history clusters stay distinct
      // from each other and from the answer, every name is a catalog cluster.
      expect(s.prompt.context!.successors[0] === s.answer).toBe(before.prompt.context.successors[0] === before.answer);
      expect(new Set(named).size).toBe(3);
      for (const id of named) expect(ids).toContain(id);
      if (s.prompt.history.c1 !== before.prompt.history.c1 || s.prompt.history.c2 !== before.prompt.history.c2) renamedHistories++;
    });
    // Each sample draws its own map: nearly every history is renamed, and the same history maps to many.
    expect(renamedHistories).toBeGreaterThan(0.9 * (set.length / 2));
    const half = relabelContextSamples(set, ids, { share: 0.5, seed: 7 });
    const changed = half.filter((s, i) => JSON.stringify(s) !== JSON.stringify(set[i])).length;
    expect(changed / (set.length / 2)).toBeGreaterThan(0.4);
    expect(changed / (set.length / 2)).toBeLessThan(0.6);
    expect(relabelContextSamples(set, ids, { share: 0.5, seed: 7 })).toEqual(half);
    expect(() => relabelContextSamples(set, ids, { share: 1.5, seed: 7 })).toThrow(/relabelShare/);
    expect(() => relabelContextSamples(set, ids.slice(0, 2), { share: 1, seed: 7 })).toThrow(/catalog/);
  });

  it("teach a model to follow a context that contradicts its memory, which the same samples unrelabelled do not", async () => {
    const ws = tempDir("freshrec-relabel-");
    const trainer = new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } });
    const set = samples();
    const train = async (name: string, list: readonly TrainingSample[]) =>
      (await trainer.train(list, { outputPath: join(ws, `${name}.gguf`), epochs: 10, patience: 99, learningRate: 3e-3 })).modelPath;
    // After a drift: every pair's context names another successor than the one memorised.
    const drifted = pairs.map(([a, b]) => ({ history: { c1: ids[a], c2: ids[b] }, context: { successors: [ids[successor(a, b, 5)]] } }));
    const measure = async (path: string) => {
      const model = await EmbeddedLanguageModel.open(path);
      try {
        const withContext = (await model.score(drifted, 1)).map((r) => r[0].cluster);
        const without = (await model.score(drifted.map((p) => ({ history: p.history })), 1)).map((r) => r[0].cluster);
        return {
          follows: withContext.filter((c, i) => c === drifted[i].context.successors[0]).length / pairs.length,
          memory: without.filter((c, i) => c === ids[successor(pairs[i][0], pairs[i][1])]).length / pairs.length,
        };
      } finally {
        await model.close();
      }
    };
    const plain = await measure(await train("plain", set));
    // Every context sample relabelled: the context is then the only evidence a context prompt has.
    const relabelled = await measure(await train("relabelled", relabelContextSamples(set, ids, { share: 1, seed: 11 })));
    // Without a context both answer from memory (relabelling every context sample costs it a little); with a
    // drifted context only the relabelled training follows it.
    expect(plain.memory).toBeGreaterThanOrEqual(0.8);
    expect(relabelled.memory).toBeGreaterThanOrEqual(0.65);
    expect(plain.follows).toBeLessThanOrEqual(0.35);
    expect(relabelled.follows).toBeGreaterThanOrEqual(0.65);
  }, 600_000);
});
