/**
 * What the replay tests share: loop settings sized for tiny worlds and models (one epoch, a 30-day window), and the
 * environment of strategies that run no model.
 */
import type { EventStore } from "../../src/data/event-store.js";
import type { SyntheticWorld } from "../../src/data/synthetic/index.js";
import type { TimeWindow } from "../../src/domain/types.js";
import type { StrategyEnvironment } from "../../src/evaluation/strategies.js";
import { EvidenceCache } from "../../src/update/fusion.js";
import type { LoopSettings } from "../../src/update/loop.js";
import { SnapshotCache } from "../../src/update/rag.js";
import { tempDir } from "../temp-dir.js";

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

/**
 * A replay environment for strategies that run no model (the counting baselines, the oracle, the oracle prior):
 * nothing reads its start model. `world` null: a store the synthetic platform did not make, for `reason`.
 */
export const modelFreeEnvironment = (events: EventStore, clusters: string[], window: TimeWindow, world: SyntheticWorld | null, reason?: string): StrategyEnvironment => ({
  events,
  window,
  clusters,
  settings: tinyLoopSettings(0.5),
  startModel: { path: "", window: null, version: "-" },
  workDir: tempDir("freshrec-replay-"),
  world,
  noWorldReason: reason,
  snapshots: new SnapshotCache(),
  evidence: new EvidenceCache(window),
});
