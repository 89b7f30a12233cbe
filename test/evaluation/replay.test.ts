import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld, SYNTHETIC_QUICK } from "../../src/data/synthetic/index.js";
import { VirtualClock } from "../../src/domain/clock.js";
import { replay, type StrategySetup } from "../../src/evaluation/replay.js";
import { SqliteTableStore } from "../../src/tables/index.js";
import { baselineRefreshJob, type BaselineName } from "../../src/update/jobs.js";
import { countTransitions } from "../../src/mining/transitions.js";
import { writeReplayReport } from "../../src/evaluation/replay-report.js";
import { EvidenceCache } from "../../src/update/fusion.js";
import { readFileSync } from "node:fs";
import { tempDir } from "../temp-dir.js";

describe("replay evaluation", () => {
  it("replays baseline strategies through the scheduler and scores against the live table", async () => {
    const world = new SyntheticWorld({ ...SYNTHETIC_QUICK, users: 1500, targetEvents: 150_000, months: 4 });
    const events = await EventStore.open(":memory:");
    await ingestSynthetic(events, world);
    const clusters = (await events.clusters()).map((c) => c.id);
    const from = Date.UTC(2025, 2, 1);
    const to = Date.UTC(2025, 3, 1);
    // As `evaluate replay` does: one evidence log of the period for the fusion refreshes.
    const evidence = new EvidenceCache({ from, to });
    const setup = (name: string, kind: BaselineName, cadence: string): StrategySetup => ({
      name,
      async create() {
        const tables = SqliteTableStore.open(":memory:", new VirtualClock(from));
        const job = baselineRefreshJob(kind, { events, tables, clusters, templateHash: "baseline", topN: 5, evidence, rag: { windowDays: 7, positiveMin: 0.5 } });
        return { jobs: [{ name: "refresh", cadence, run: job }], tables, close: () => tables.close() };
      },
    });
    const result = await replay({
      events,
      window: { from, to },
      positiveMin: 0.5,
      resamples: 200,
      strategies: [
        setup("popular-novel", "popular-novel", "every 2 days from 2025-03-01"),
        setup("successor-top1", "successor-top1", "every 2 days from 2025-03-01"),
        setup("successor-frozen", "successor-top1", "every 3650 days from 2025-03-01"),
        setup("counts-backoff", "counts-backoff", "every 2 days from 2025-03-01"),
      ],
      clusters,
    });
    const truth = await countTransitions(events, { from, to }, { positiveMin: 0.5 });
    expect(result.transitions).toBeGreaterThanOrEqual(truth.length);
    expect(result.timelines["successor-top1"]).toHaveLength(16); // Mar 1, 3, ..., 31
    expect(result.timelines["successor-frozen"]).toHaveLength(1);
    const s = result.strategies;
    for (const name of Object.keys(s)) {
      expect(s[name].hit1).toBeGreaterThan(0);
      expect(s[name].hit5).toBeGreaterThanOrEqual(s[name].hit1);
      expect(s[name].unserved).toBe(0);
    }
    // Fresh retrieved successors beat one global popularity ranking on this world's pair-specific dynamics.
    expect(s["successor-top1"].hit1).toBeGreaterThan(s["popular-novel"].hit1);
    expect(s["popular-novel"].coverage).toBeLessThan(s["successor-top1"].coverage);
    expect(s["successor-top1"].stalenessDays).toBeLessThan(s["successor-frozen"].stalenessDays);
    // The fitted backoff of every successor count beats serving the top retrieved successor.
    expect(s["counts-backoff"].hit1).toBeGreaterThan(s["successor-top1"].hit1);
    // Counting baselines compute their rows: they pay for no prompt (their scorers say so).
    for (const name of ["counts-backoff", "successor-top1", "popular-novel"]) expect(s[name].cost.promptsScored).toBe(0);
    // What the jobs did is part of the result: every refresh succeeded.
    expect(s["counts-backoff"].outcomes.refresh).toMatchObject({ succeeded: 16, failed: 0, halted: 0, firstFailure: null });
    // Segments partition the transitions by the pair's evidence; every strategy is scored on each.
    for (const name of Object.keys(s)) {
      const g = s[name].segments;
      expect(g["evidence:none"].transitions + g["evidence:sparse"].transitions + g["evidence:dense"].transitions).toBe(s[name].transitions);
      expect(g["evidence:dense"].transitions).toBeGreaterThan(0);
    }
    // Where a pair has dense evidence, serving it beats one popularity ranking by far.
    expect(s["successor-top1"].segments["evidence:dense"].hit1).toBeGreaterThan(s["popular-novel"].segments["evidence:dense"].hit1);
    const cmp = result.comparisons.find((c) => c.a === "popular-novel" && c.b === "successor-top1" && c.metric === "hit1")!;
    expect(cmp.delta).toBeCloseTo(s["successor-top1"].hit1 - s["popular-novel"].hit1, 10);
    expect(cmp.ci95[0]).toBeLessThanOrEqual(cmp.delta);
    expect(cmp.ci95[1]).toBeGreaterThanOrEqual(cmp.delta);
    const paths = writeReplayReport(tempDir("freshrec-replay-"), result, "synthetic");
    const html = readFileSync(paths.html, "utf8");
    expect(html.match(/<svg/g)).toHaveLength(3);
    expect(html).toContain("successor-frozen");
    expect(readFileSync(paths.md, "utf8")).toContain("| successor-top1 |");
    expect(readFileSync(paths.md, "utf8")).toContain("## Segments");
    events.close();
  });
});
