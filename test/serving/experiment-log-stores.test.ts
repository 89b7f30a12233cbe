/**
 * The experiment log on both event stores (the workspace's DuckDB file, PostgreSQL on a real throwaway server): the
 * same lifecycle rules, the same attribution of outcomes to exposures, and the same analysis of the same exposures.
 */
import { describe, expect, it } from "vitest";
import { EventStore, type EventStoreContract } from "../../src/data/event-store.js";
import { PostgresEventStore } from "../../src/data/postgres-event-store.js";
import { analyzeExperiment } from "../../src/serving/experiments/analysis.js";
import { parseExperimentDefinition } from "../../src/serving/experiments/definition.js";
import { openExperimentLog, type AttributableEvent } from "../../src/serving/experiments/log.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";

const database = usePostgresCluster();
const HOUR = 3_600_000;
const def = (name: string) => parseExperimentDefinition({ name, arms: [{ name: "a", table: "live" }, { name: "b", table: "t000002" }] });

const stores: [string, () => Promise<EventStoreContract>][] = [
  ["duckdb", () => EventStore.open(":memory:")],
  ["postgres", async () => PostgresEventStore.open(await database())],
];

/** Exposures of 40 users (ids chosen so code point and linguistic order differ), outcomes from their events. */
async function scenario(store: EventStoreContract) {
  const log = await openExperimentLog(store);
  const experiment = await log.create(def("ab"), 1000);
  const users = Array.from({ length: 40 }, (_, k) => (k % 3 === 0 ? `User-${k}` : k % 3 === 1 ? `user-${k}` : `_u${k}`));
  const events: AttributableEvent[] = [];
  users.forEach((userId, k) => {
    const arm = k % 2 ? "a" : "b";
    for (let e = 0; e < 1 + (k % 3); e++) {
      const ts = 10 * HOUR * (e + 1);
      log.logExposure({
        exposureId: `x-${k}-${e}`,
        experiment: "ab",
        arm,
        userId,
        ts,
        tableVersion: arm === "a" ? "t000001" : "t000002",
        coldStart: false,
        slots: [
          { rank: 0, cluster: "baking", items: ["i1", "i2"] },
          { rank: 1, cluster: "hiking", items: ["i3"] },
        ],
      });
      // Within the window: a positive (or weak, or negative) event on the first slot's cluster, and a later one that
      // must not replace it; one outside the window on the second slot's.
      const kind = (k + e) % 3;
      events.push({ userId, itemId: "i2", clusterId: "baking", ts: ts + HOUR, engagement: kind === 1 ? 0.1 : 1, negative: kind === 2 });
      events.push({ userId, itemId: "i1", clusterId: "baking", ts: ts + 2 * HOUR, engagement: 1, negative: false });
      events.push({ userId, itemId: "i3", clusterId: "hiking", ts: ts + 30 * HOUR, engagement: 1, negative: false });
    }
  });
  expect(log.buffered).toBeGreaterThan(0);
  const written = await log.flush();
  expect(log.buffered).toBe(0);
  const attributed = await log.attributeOutcomes("ab", events, 24 * HOUR, 0.5);
  // Again: every slot that has an outcome keeps it.
  expect(await log.attributeOutcomes("ab", events, 24 * HOUR, 0.5)).toBe(0);
  const analysis = await analyzeExperiment(store, experiment, { resamples: 200 });
  return { written, attributed, analysis };
}

describe("the experiment log on both stores", () => {
  for (const [name, open] of stores) {
    it(`${name}: keeps one experiment active; names are never reused`, async () => {
      const store = await open();
      try {
        const log = await openExperimentLog(store);
        await log.create(def("one"), 1000);
        await expect(log.create(def("two"), 2000)).rejects.toThrow(/"one" is active/);
        await expect(log.create(def("one"), 2000, { replace: true })).rejects.toThrow(/already exists/);
        const two = await log.create(def("two"), 3000, { replace: true });
        expect(two).toMatchObject({ name: "two", status: "active", createdAt: 3000 });
        expect((await log.get("one")).status).toBe("stopped");
        expect((await log.active())?.name).toBe("two");
        expect((await log.stop("two", 4000)).stoppedAt).toBe(4000);
        expect(await log.active()).toBeNull();
        expect((await log.list()).map((e) => e.name)).toEqual(["one", "two"]);
        await expect(log.get("three")).rejects.toThrow(/does not exist/);
      } finally {
        await store.close();
      }
    });
  }

  it("attributes the same outcomes and gives the same analysis on both stores", async () => {
    const results = [];
    for (const [, open] of stores) {
      const store = await open();
      try {
        results.push(await scenario(store));
      } finally {
        await store.close();
      }
    }
    const [duck, pg] = results;
    expect(duck.written).toBeGreaterThan(100);
    expect(duck.attributed).toBeGreaterThan(40);
    expect(pg).toEqual(duck);
    expect(Object.keys(duck.analysis.arms).sort()).toEqual(["a", "b"]);
  });
});
