/**
 * `measureContextUse` (freshrec evaluate context) on a hand-made log whose successors moved after the models learnt
 * them: which transitions have a context, how often the retrieved successor is right, and, with real tiny models,
 * how often a model follows the context: one trained on relabelled context samples does, one trained without
 * contexts does not.
 */
import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { DAY_MS } from "../../src/domain/clock.js";
import { measureContextUse } from "../../src/evaluation/context-use.js";
import { EmbeddedLanguageModel } from "../../src/llm/backends/embedded.js";
import type { TrainingSample } from "../../src/llm/contracts.js";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { relabelContextSamples } from "../../src/llm/relabel.js";
import { PAIR_WORLD, TINY_SHAPE, pairWorldLog } from "../llm/fixtures.js";
import { tempDir } from "../temp-dir.js";

const { clusters: CLUSTERS, ids, successor, pairs } = PAIR_WORLD;
const at = Date.UTC(2025, 9, 9);
/** The pairs with a context at `at`: 40 of them, seen by two users each in the week before. */
const retrieved = pairs.slice(0, 40);

/** What users after `at` choose: the first 10 retrieved pairs the retrieved successor, the others another one. */
const after = (i: number, [a, b]: [number, number]) => successor(a, b, i < 10 ? 2 : 4);

/** The log, in an in-memory event store. */
function openLog() {
  const { visit, open } = pairWorldLog();
  // The week before: each retrieved pair's successor has moved away from the one the models learnt (shift 2), two
  // users each (the support minimum).
  retrieved.forEach(([a, b], i) => [0, 1].forEach((r) => visit(a, b, successor(a, b, 2), at - 6 * DAY_MS + (2 * i + r) * 3_600_000)));
  // The two days after: one user per retrieved pair, and 20 transitions of pairs without a context.
  retrieved.forEach((p, i) => visit(p[0], p[1], after(i, p), at + i * 600_000));
  pairs.slice(60, 80).forEach(([a, b], i) => visit(a, b, successor(a, b), at + DAY_MS + i * 600_000));
  return open();
}

describe("measureContextUse", () => {
  it("counts the transitions with a context and the successor's hits, and measures how often a model follows it", async () => {
    const store = await openLog();
    const ws = tempDir("freshrec-context-use-");
    const trainer = new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } });
    // Every pair's successor, with and without a context that names it in 3 of 5 samples.
    const samples: TrainingSample[] = [];
    for (let r = 0; r < 5; r++) {
      for (const [a, b] of pairs) {
        const next = ids[successor(a, b)];
        samples.push({ prompt: { history: { c1: ids[a], c2: ids[b] } }, answer: next });
        samples.push({ prompt: { history: { c1: ids[a], c2: ids[b] }, context: { successors: [r < 3 ? next : ids[successor(a, b, r)]] } }, answer: next });
      }
    }
    const train = async (name: string, list: readonly TrainingSample[]) =>
      EmbeddedLanguageModel.open((await trainer.train(list, { outputPath: join(ws, `${name}.gguf`), epochs: 10, patience: 99, learningRate: 3e-3 })).modelPath);
    const reader = await train("reader", relabelContextSamples(samples, ids, { share: 1, seed: 11 }));
    const memoryOnly = await train("memory", samples.filter((s) => !s.prompt.context));
    try {
      const read = await measureContextUse(store, reader, at, { days: 2, rag: { positiveMin: null } });
      expect(read.transitions).toBe(60);
      expect(read.withContext).toBe(40);
      expect(read.successorHit1).toBe(retrieved.filter((p, i) => after(i, p) === successor(p[0], p[1], 2)).length / 40);
      // Memory names the successor the models learnt, which no user chooses any more.
      expect(read.modelHit1).toBeLessThanOrEqual(0.15);
      expect(read.followsContext).toBeGreaterThanOrEqual(0.65);
      expect(read.modelWithContextHit1).toBeGreaterThanOrEqual(read.modelHit1! + 0.1);
      const ignored = await measureContextUse(store, memoryOnly, at, { days: 2, rag: { positiveMin: null } });
      expect(ignored.withContext).toBe(40);
      expect(ignored.followsContext).toBeLessThanOrEqual(0.35);
      // Nothing retrieved: the rates are not measured, not zero.
      const empty = await measureContextUse(store, reader, at - 30 * DAY_MS, { days: 2, rag: { positiveMin: null } });
      expect(empty).toMatchObject({ transitions: 0, withContext: 0, followsContext: null, successorHit1: null });
      await expect(measureContextUse(store, reader, at, { days: 0, rag: {} })).rejects.toThrow(/days/);
    } finally {
      await reader.close();
      await memoryOnly.close();
      store.close();
    }
  }, 600_000);
});
