/** What the replay tests share: loop settings sized for tiny worlds and models (one epoch, a 30-day window). */
import type { LoopSettings } from "../../src/update/loop.js";

export const tinyLoopSettings = (positiveMin: number): LoopSettings => ({
  rag: { windowDays: 7, topN: 1, minSupport: 1, mode: "frequency", globalPairs: 100 },
  // The former default caps: a one-epoch 32-wide model fine-tuned once on 300 uncapped samples of these worlds is
  // halted by the regression gate (the replay test needs its fine-tune live to count the prompts of a second model
  // version); the default's effect on real data is measured by the replays in README, not here.
  curation: { windowDays: 30, testDays: 7, maxSamples: 300, maxPerPair: 24, maxPerTriple: 8, maxTargetShare: 0.04 },
  gates: { minExactMatchRate: 0.5, minTestRecall: 0 },
  training: { epochs: 1 },
  tables: { topN: 5, keep: 100 },
  positiveMin,
});
