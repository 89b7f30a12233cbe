/**
 * The fine-tuning memo of replay: two loops fine-tuning at the same instant over the same store share the curated
 * set and the gates of their identical candidate (same bytes through the training cache), and get what a loop
 * without the memo gets.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld, SYNTHETIC_QUICK } from "../../src/data/synthetic/index.js";
import { DAY_MS, VirtualClock } from "../../src/domain/clock.js";
import { EmbeddedLanguageModel } from "../../src/llm/backends/embedded.js";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { pretrainBaseModel } from "../../src/llm/pretrain.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import { CachingTrainer } from "../../src/llm/training-cache.js";
import { timedTransitions } from "../../src/mining/transitions.js";
import { SqliteTableStore } from "../../src/tables/index.js";
import { curateFineTuningSet } from "../../src/update/curation.js";
import { FinetuneMemo } from "../../src/update/finetune.js";
import { UpdateLoop, type LoopSettings } from "../../src/update/loop.js";
import { tempDir } from "../temp-dir.js";

const TINY = { embedding: 32, layers: 1, heads: 2, feedForward: 64, contextLength: 256 } as const;

describe("fine-tuning memo", () => {
  it("shares the curated set and the gates of an identical fine-tune, with the results of a run without it", async () => {
    const dir = tempDir("freshrec-finetune-memo-");
    const world = new SyntheticWorld({ ...SYNTHETIC_QUICK, clustersPerDomain: 3, users: 800, targetEvents: 80_000, months: 3 });
    const events = await EventStore.open(join(dir, "events.duckdb"));
    await ingestSynthetic(events, world);
    const positiveMin = world.options.positiveThreshold;
    const clusters = await events.clusters();
    const asOf = Date.UTC(2025, 2, 1);
    // The start model's data ends 20 days before the fine-tune, inside its 30-day window.
    const startWindow = { from: asOf - 60 * DAY_MS, to: asOf - 20 * DAY_MS };
    const start = await pretrainBaseModel({
      workspace: join(dir, "start"),
      clock: new VirtualClock(startWindow.to),
      clusters,
      transitions: await timedTransitions(events, startWindow, { positiveMin, horizon: 1 }),
      window: startWindow,
      shape: TINY,
      epochs: 1,
    });
    const settings: LoopSettings = {
      rag: { windowDays: 7, topN: 1, minSupport: 1, mode: "frequency" },
      curation: { windowDays: 30, testDays: 7, maxSamples: 300 },
      gates: { minExactMatchRate: 0, minTestRecall: 0 },
      training: { epochs: 1 },
      tables: { topN: 5, keep: 10 },
      positiveMin,
    };
    const opened: string[] = [];
    const openModel = (path: string) => (opened.push(path), EmbeddedLanguageModel.open(path));
    const memo = new FinetuneMemo(events);
    const trainer = new CachingTrainer(new EmbeddedTrainer(), join(dir, "training-cache"), "embedded");
    const finetuneIn = async (name: string, shared: { memo?: FinetuneMemo; trainer: CachingTrainer }) => {
      const clock = new VirtualClock(asOf);
      const registry = new ModelRegistry(join(dir, name), clock);
      const base = await registry.register({ kind: "base", filePath: start.modelPath, window: startWindow, reason: "start" });
      registry.makeLive(base.version, "start");
      const tables = SqliteTableStore.open(join(dir, name, "tables.sqlite"), clock);
      const loop = new UpdateLoop({ events, tables, registry, clusters: clusters.map((c) => c.id), settings, openModel, trainer: shared.trainer, finetuneMemo: shared.memo });
      try {
        return await loop.finetune(asOf);
      } finally {
        await loop.close();
        registry.close();
        tables.close();
      }
    };

    // Side by side, as two strategies of a replay: one training, one curation, one gate measurement.
    const [a, b] = await Promise.all([finetuneIn("a", { memo, trainer }), finetuneIn("b", { memo, trainer })]);
    // The candidate, and the live model it is compared with on the same test slice (the regression gate).
    expect(opened).toHaveLength(2);
    expect(opened[1]).toBe(start.modelPath);
    expect(a.gates.regression).toMatchObject({ live: "m000001", users: a.set.testExamples });
    // Both loops asked for one key each: one curated set, one gate measurement.
    expect(memo.size).toEqual({ sets: 1, gates: 1 });
    expect(b.gates).toEqual(a.gates);
    expect(b.set).toEqual(a.set);
    // It learns from where its parent's data ended, not from the window's start, and rehearses what came before.
    expect(a.set.trainWindow.from).toBe(startWindow.to);
    expect(a.set.rehearsed).toBeGreaterThan(0);
    expect([a.training.reused, b.training.reused].filter(Boolean)).toHaveLength(1);
    // It learns and is tested on the transitions the tables serve and the replay scores: through positive events only
    // (the loop's positiveMin), not every engagement.
    const curated = (minimum: number | null) => curateFineTuningSet(events, asOf, { ...settings.curation, positiveMin: minimum, since: startWindow.to });
    const [positive, every] = await Promise.all([curated(positiveMin), curated(null)]);
    expect(every.available).toBeGreaterThan(positive.available);
    expect(a.set.available).toBe(positive.available);
    expect(a.set.testExamples).toBe(positive.test.length);
    // A third, later: the set and gates come from the memo, no model is opened.
    const c = await finetuneIn("c", { memo, trainer });
    expect(opened).toHaveLength(2);
    expect(memo.size).toEqual({ sets: 1, gates: 1 });
    expect(c.gates).toEqual(a.gates);
    // Without the memo (and with a training cache of its own): trained, curated and gated afresh, the same outcome.
    const alone = await finetuneIn("alone", { trainer: new CachingTrainer(new EmbeddedTrainer(), join(dir, "training-cache-2"), "embedded") });
    expect(opened).toHaveLength(4);
    expect(alone.gates).toEqual(a.gates);
    expect(alone.set).toEqual(a.set);
    expect(alone.trainTokens).toBe(a.trainTokens);
    // A memo serves one store only.
    const other = await EventStore.open(":memory:");
    await expect(finetuneIn("d", { memo: new FinetuneMemo(other), trainer })).rejects.toThrow(/another event store/);
    other.close();
    events.close();
  }, 300_000);
});
