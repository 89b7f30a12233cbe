/**
 * Replay with the LLM strategies on a small synthetic world and a tiny real model: every strategy runs through the
 * scheduler, and no table depends on events at or after its as-of time (the same replay on a store cut at T gives
 * byte-identical tables up to T).
 */
import { copyFileSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld, SYNTHETIC_QUICK } from "../../src/data/synthetic/index.js";
import { DAY_MS, VirtualClock } from "../../src/domain/clock.js";
import { replay } from "../../src/evaluation/replay.js";
import { strategySetups, type StrategyEnvironment, type StrategyName } from "../../src/evaluation/strategies.js";
import { pretrainBaseModel } from "../../src/llm/pretrain.js";
import { timedTransitions } from "../../src/mining/transitions.js";
import { SqliteTableStore } from "../../src/tables/index.js";
import { tinyLoopSettings } from "./fixtures.js";
import { FinetuneMemo } from "../../src/update/finetune.js";
import { SnapshotCache } from "../../src/update/rag.js";
import { EvidenceCache } from "../../src/update/fusion.js";
import { CachingTrainer } from "../../src/llm/training-cache.js";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { tempDir } from "../temp-dir.js";

const TINY = { embedding: 32, layers: 1, heads: 2, feedForward: 64, contextLength: 256 } as const;
const from = Date.UTC(2025, 1, 1);
const to = Date.UTC(2025, 2, 8);
const cut = Date.UTC(2025, 1, 14);

describe("replay with LLM strategies", () => {
  it("replays static, rag, hybrid and a baseline from one start model, without reading the future", async () => {
    const dir = tempDir("freshrec-replay-llm-");
    const world = new SyntheticWorld({ ...SYNTHETIC_QUICK, clustersPerDomain: 3, users: 800, targetEvents: 80_000, months: 3 });
    const fullPath = join(dir, "full.duckdb");
    const full = await EventStore.open(fullPath);
    await ingestSynthetic(full, world);
    full.close();
    const cutPath = join(dir, "cut.duckdb");
    copyFileSync(fullPath, cutPath);
    const events = await EventStore.open(fullPath);
    const cutEvents = await EventStore.open(cutPath);
    await cutEvents.query(`DELETE FROM events WHERE ts >= epoch_ms(${cut}::BIGINT)`);
    expect((await cutEvents.counts()).lastTs).toBeLessThan(cut);

    const positiveMin = world.options.positiveThreshold;
    const clusters = await events.clusters();
    const transitions = await timedTransitions(events, { from: from - 30 * DAY_MS, to: from }, { positiveMin, horizon: 1 });
    const start = await pretrainBaseModel({
      workspace: join(dir, "start"),
      clock: new VirtualClock(from),
      clusters,
      transitions,
      window: { from: from - 30 * DAY_MS, to: from },
      shape: TINY,
      epochs: 1,
    });
    const settings = tinyLoopSettings(positiveMin);
    const env = (store: EventStore, name: string): StrategyEnvironment => ({
      events: store,
      window: { from, to },
      clusters: clusters.map((c) => c.id),
      settings,
      startModel: { path: start.modelPath, window: { from: from - 30 * DAY_MS, to: from }, version: start.modelVersion },
      workDir: join(dir, name),
    });
    const names: StrategyName[] = ["static", "rag", "hybrid", "successor-top1"];
    // As `evaluate replay` runs: snapshots shared by the strategies, fine-tunes through the training cache and the
    // fine-tuning memo, the start model still training when the replay starts (the baseline goes first).
    const snapshots = new SnapshotCache();
    const shared = {
      snapshots,
      evidence: new EvidenceCache({ from, to }),
      trainer: new CachingTrainer(new EmbeddedTrainer(), join(dir, "training-cache"), "embedded"),
      finetuneMemo: new FinetuneMemo(events),
    };
    let releaseStart!: () => void;
    const startModel = new Promise<void>((r) => (releaseStart = r)).then(() => env(events, "all").startModel);
    const started: string[] = [];
    const result0 = replay({
      events,
      window: { from, to },
      strategies: strategySetups(names, { ...env(events, "all"), ...shared, startModel }),
      positiveMin,
      resamples: 100,
      clusters: clusters.map((c) => c.id),
      parallel: 3,
      // The start model is "trained" once the baseline has published: a pool that held the baseline back until the
      // start model was there would never finish (the test times out).
      onRun: (strategy) => {
        if (!started.includes(strategy)) started.push(strategy);
        if (strategy === "successor-top1") releaseStart();
      },
    });
    const result = await result0;
    expect(started[0]).toBe("successor-top1");
    // Each strategy's registry records its models relative to its folder, the start model included: workspace state
    // holds no absolute path.
    for (const name of ["static", "rag", "hybrid"]) {
      const db = new Database(join(dir, "all", name, "registry.sqlite"), { readonly: true });
      const paths = (db.prepare("SELECT file_path FROM models").all() as { file_path: string }[]).map((r) => r.file_path);
      db.close();
      expect(paths.length, name).toBeGreaterThan(0);
      for (const path of paths) expect(isAbsolute(path), `${name}: ${path}`).toBe(false);
    }

    const refreshes = Math.ceil((to - from) / (2 * DAY_MS)); // every 2 days from Feb 1: Feb 1, 3, ..., Mar 7
    // rag and the baseline retrieved at the same instants: one snapshot each (the hybrid fuses evidence instead).
    expect(snapshots.size).toBe(refreshes);
    expect(result.timelines.static).toHaveLength(1);
    expect(result.timelines.rag).toHaveLength(refreshes);
    expect(result.timelines.hybrid).toHaveLength(refreshes);
    // Each fusion table says its prior's weight and how much of it entered as its lift (null together while the
    // prior is not weighed yet).
    for (const t of result.timelines.hybrid) {
      expect(t.priorLift === null).toBe(t.priorWeight === null);
      if (t.priorLift != null) expect(t.priorLift >= 0 && t.priorLift <= 1).toBe(true);
    }
    expect(result.timelines.hybrid.some((t) => typeof t.priorLift === "number")).toBe(true);
    expect(result.timelines["successor-top1"]).toHaveLength(refreshes);
    const s = result.strategies;
    // Only the hybrid trains during the period: its March 1st fine-tune (the start model stands for February's).
    expect(s.static.cost.trainingTokens).toBe(0);
    expect(s.rag.cost.trainingTokens).toBe(0);
    expect(s.hybrid.cost.trainingTokens).toBeGreaterThan(0);
    for (const name of names) {
      expect(s[name].transitions).toBe(result.transitions);
      expect(s[name].unserved).toBe(0);
      expect(s[name].hit5).toBeGreaterThanOrEqual(s[name].hit1);
    }
    // Churn against the start model's no-RAG table: the reference agrees with itself. (A one-epoch tiny model may
    // still ignore the contexts: RAG's agreement is measured, not asserted below 1.)
    expect(s.static.agreementWithNoRag).toBe(1);
    expect(s.static.consecutiveAgreement).toBeNull();
    expect(s.rag.agreementWithNoRag).toBeGreaterThan(0);
    expect(s.rag.consecutiveAgreement).not.toBeNull();
    expect(s.rag.stalenessDays).toBeLessThan(s.static.stalenessDays);
    // The hybrid's refreshes fuse the live model's prior with the evidence: prompts are paid once per model version
    // (the start model's prior, then the fine-tuned one's), not at every refresh.
    const pairs = clusters.length * (clusters.length - 1);
    expect(s.hybrid.cost.promptsScored).toBe(2 * pairs);
    expect(s.hybrid.stalenessDays).toBeLessThan(s.static.stalenessDays);

    // No leakage: the same replay up to the cut, on the full store (sharing snapshots, as above) and on a store
    // without the events after it (retrieving afresh): identical tables, so neither the future nor the cache shows.
    const upToCut = async (store: EventStore, name: string, strategy: StrategyName, caches: { snapshots?: SnapshotCache; evidence?: EvidenceCache } = {}) => {
      const r = await replay({ events: store, window: { from, to: cut }, strategies: strategySetups([strategy], { ...env(store, name), window: { from, to: cut }, ...caches }), positiveMin, resamples: 10 });
      const tables = SqliteTableStore.open(join(dir, name, strategy, "tables.sqlite"), new VirtualClock(cut));
      const rows = r.timelines[strategy].map((t) => [...tables.rows(t.version)]);
      const meta = r.timelines[strategy].map((t) => tables.get(t.version).ragOptions);
      tables.close();
      return { timeline: r.timelines[strategy], rows, meta, hit1: r.strategies[strategy].hit1 };
    };
    // Side by side or one after the other, with or without the shared caches: the same tables and the same scores.
    const alone = await replay({
      events,
      window: { from, to },
      strategies: strategySetups(["static", "hybrid"], { ...env(events, "alone"), trainer: new CachingTrainer(new EmbeddedTrainer(), join(dir, "training-cache-2"), "embedded") }),
      positiveMin,
      resamples: 100,
      clusters: clusters.map((c) => c.id),
    });
    for (const name of ["static", "hybrid"]) {
      const { wallSeconds: _a, cost: costAlone, ...restAlone } = alone.strategies[name];
      const { wallSeconds: _b, cost: costSide, ...restSide } = s[name];
      expect(restAlone).toEqual(restSide);
      expect(costAlone.trainingTokens).toBe(costSide.trainingTokens);
      expect(costAlone.promptsScored).toBe(costSide.promptsScored);
    }

    const a = await upToCut(events, "leak-full", "rag", { snapshots });
    const b = await upToCut(cutEvents, "leak-cut", "rag");
    expect(a.timeline.length).toBe(Math.ceil((cut - from) / (2 * DAY_MS)));
    expect(b.timeline).toEqual(a.timeline);
    expect(b.rows).toEqual(a.rows);
    expect(b.hit1).toBe(a.hit1);
    // The fusion hybrid too: its evidence log read over the whole period on the full store (each refresh counting
    // only before its time) and afresh per refresh on the cut store give the same rows, fits and explanations.
    const c = await upToCut(events, "leak-full-hybrid", "hybrid", { evidence: new EvidenceCache({ from, to }) });
    const d = await upToCut(cutEvents, "leak-cut-hybrid", "hybrid");
    expect(c.rows.flat().some((r) => r.explanation)).toBe(true);
    expect(d.timeline).toEqual(c.timeline);
    expect(d.rows).toEqual(c.rows);
    expect(d.meta).toEqual(c.meta);
    events.close();
    cutEvents.close();
  }, 600_000);
});
