/** What the replay tests share: loop settings sized for tiny worlds and models (one epoch, a 30-day window). */
import type { LoopSettings } from "../../src/update/loop.js";

export const tinyLoopSettings = (positiveMin: number): LoopSettings => ({
  rag: { windowDays: 7, topN: 1, minSupport: 1, mode: "frequency", globalPairs: 100 },
  curation: { windowDays: 30, testDays: 7, maxSamples: 300 },
  gates: { minExactMatchRate: 0.5, minTestRecall: 0 },
  training: { epochs: 1 },
  tables: { topN: 5, keep: 100 },
  positiveMin,
});
