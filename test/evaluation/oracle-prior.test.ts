/**
 * The replay's oracle prior on the synthetic platform: fusion refreshes whose prior is the true kernel of the month
 * the last fine-tune's data ended in (the hybrid's cadence), fused with the fresh evidence as the hybrid fuses a
 * real model's prior: the kernel it uses moves only at a fine-tune instant, it earns weight against the counts, and it
 * is refused where there is no synthetic world.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { recordedSyntheticWorld, SyntheticWorld, SYNTHETIC_QUICK } from "../../src/data/synthetic/index.js";
import { DAY_MS, VirtualClock } from "../../src/domain/clock.js";
import { BadInputError } from "../../src/domain/errors.js";
import { oraclePriorRefreshJob } from "../../src/evaluation/oracle.js";
import { replay } from "../../src/evaluation/replay.js";
import { writeReplayReport } from "../../src/evaluation/replay-report.js";
import { defaultStrategies, strategySetups } from "../../src/evaluation/strategies.js";
import { SqliteTableStore } from "../../src/tables/index.js";
import { finetuneCuration } from "../../src/update/loop.js";
import { tempDir } from "../temp-dir.js";
import { modelFreeEnvironment, tinyLoopSettings } from "./fixtures.js";

// Mid-February to early April: the replay starts inside a month and crosses two month boundaries.
const from = Date.UTC(2025, 1, 15);
const to = Date.UTC(2025, 3, 5);

const environment = (events: EventStore, clusters: string[], world: SyntheticWorld | null, reason?: string) => modelFreeEnvironment(events, clusters, { from, to }, world, reason);

async function syntheticStore() {
  const events = await EventStore.open(":memory:");
  await ingestSynthetic(events, new SyntheticWorld({ ...SYNTHETIC_QUICK, users: 1500, targetEvents: 150_000, months: 5 }));
  const recorded = await recordedSyntheticWorld(events);
  expect(recorded.reason).toBeNull();
  return { events, world: recorded.world!, clusters: (await events.clusters()).map((c) => c.id) };
}

describe("the oracle prior", () => {
  it("fuses the kernel of the month the last fine-tune's data ended in, moving only at a fine-tune instant", async () => {
    const { events, world, clusters } = await syntheticStore();
    const tables = SqliteTableStore.open(":memory:", new VirtualClock(from));
    const settings = tinyLoopSettings(0.5);
    const run = oraclePriorRefreshJob(world, {
      events,
      tables,
      clusters,
      templateHash: "oracle-prior",
      topN: 5,
      rag: { ...settings.rag, positiveMin: 0.5 },
      finetuneCadence: "0 0 1 * *",
      curation: finetuneCuration(settings),
      start: from,
    });
    const at = (ts: number) => run({ asOf: ts, clock: new VirtualClock(ts), signal: new AbortController().signal, job: "refresh", trigger: "scheduled" });
    // From the replay's start (Feb 15) the start model's data ends in February; the fine-tune of Mar 1 has seen
    // February last, the one of Apr 1 March: the kernel moves at a fine-tune, not at the month boundary itself.
    // A fine-tune's data ends where its test slice begins (days before the fine-tune), so its prior is weighed from
    // the fine-tune on; the start model's ends at the replay's start, where no transition lies after it yet.
    const expected: [number, string, boolean][] = [
      [from, "world kernel 2025-02", false],
      [Date.UTC(2025, 1, 27), "world kernel 2025-02", true],
      [Date.UTC(2025, 2, 3), "world kernel 2025-02", true],
      [Date.UTC(2025, 2, 31), "world kernel 2025-02", true],
      [Date.UTC(2025, 3, 1), "world kernel 2025-03", true],
      [Date.UTC(2025, 3, 3), "world kernel 2025-03", true],
    ];
    for (const [ts, model, weighed] of expected) {
      const outcome = await at(ts);
      expect(outcome.detail, new Date(ts).toISOString()).toMatchObject({ modelVersion: model, method: "fusion", fit: "fitted" });
      expect(outcome.cost!.promptsScored).toBe(0);
      // A prior that knows a kernel of the world earns weight against the counts once there is data to weigh it on.
      if (weighed) expect(outcome.detail!.priorWeight as number, new Date(ts).toISOString()).toBeGreaterThan(0);
      else expect(outcome.detail!.priorWeight, new Date(ts).toISOString()).toBeNull();
    }
    // Asked before the replay's start, it refuses: it would not know which data the start model had.
    await expect(at(from - DAY_MS)).rejects.toThrow(/before the replay's start/);
    tables.close();
    events.close();
  });

  it("beats the counting posterior it is fused with, by a margin the bootstrap can tell; the report says what it is", async () => {
    const { events, world, clusters } = await syntheticStore();
    // Refreshes every 2 and every 4 days (a refresh-days ablation): the rows are labelled by cadence.
    const result = await replay({
      events,
      window: { from, to },
      positiveMin: 0.5,
      resamples: 200,
      clusters,
      strategies: strategySetups(["counts-backoff", "oracle-prior"], environment(events, clusters, world), [2, 4]),
    });
    const s = result.strategies;
    expect(Object.keys(s).sort()).toEqual(["counts-backoff@2d", "counts-backoff@4d", "oracle-prior@2d", "oracle-prior@4d"]);
    for (const days of [2, 4]) {
      expect(s[`oracle-prior@${days}d`].cost).toMatchObject({ promptsScored: 0, trainingTokens: 0 });
      expect(s[`oracle-prior@${days}d`].hit1).toBeGreaterThan(s[`counts-backoff@${days}d`].hit1);
    }
    const cmp = result.comparisons.find((c) => c.a === "counts-backoff@2d" && c.b === "oracle-prior@2d" && c.metric === "hit1")!;
    expect(cmp.ci95[0]).toBeGreaterThan(0);
    // Not a ceiling: shares are of the oracle alone.
    expect(result.ceiling).toBeNull();
    const md = readFileSync(writeReplayReport(tempDir("freshrec-oracle-prior-report-"), result, "synthetic").md, "utf8");
    expect(md).toContain("oracle-prior: the hybrid with a perfect model");
    events.close();
  });

  it("is refused without a synthetic world, naming why, and is in the default list only where it can run", async () => {
    const events = await EventStore.open(":memory:");
    const env = environment(events, ["a", "b", "c"], null, "the event store records no synthetic world");
    expect(() => strategySetups(["counts-backoff", "oracle-prior"], env)).toThrow(BadInputError);
    expect(() => strategySetups(["oracle-prior"], env)).toThrow(/oracle-prior: the event store records no synthetic world.*only on the synthetic platform/);
    expect(defaultStrategies(false)).not.toContain("oracle-prior");
    expect(defaultStrategies(true)).toContain("oracle-prior");
    events.close();
  });
});
