/**
 * The same data in both event stores gives the same mining results (issue 19: "same results as DuckDB on the same
 * data"): every mining query, on a random log with ties, missing engagement values and ids whose order differs by
 * collation, and on MovieLens ml-latest-small ingested through the adapter.
 */
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { EventStore, eventBatchFromEvents, type EventStoreContract } from "../../src/data/event-store.js";
import { ingestMovieLens } from "../../src/data/ingest/movielens.js";
import { PostgresEventStore } from "../../src/data/postgres-event-store.js";
import type { EngagementEvent, TimeWindow } from "../../src/domain/types.js";
import { analyzeDrift } from "../../src/mining/drift.js";
import { EvidenceLog } from "../../src/mining/evidence.js";
import { firstSeen } from "../../src/mining/first-seen.js";
import {
  countTransitions,
  countTransitionsByMonth,
  countTransitionsForWindows,
  futureExamples,
  historiesAsOf,
  timedTransitions,
  transitionColumns,
  type MiningOptions,
  type TimedTransition,
  type TransitionColumns,
} from "../../src/mining/transitions.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { CLUSTERS, DAY, ITEMS, T0 } from "./transitions-conformance.js";

const DATASETS = join(import.meta.dirname, "../../../shared/datasets");
const database = usePostgresCluster();

/** Sorted within one (time, user): the random log's parity is checked as a set there; ml-latest-small's below in order. */
function canonicalTimed(list: TimedTransition[]): TimedTransition[] {
  const key = (t: TimedTransition) => JSON.stringify([t.c1, t.c2, t.next, t.horizon]);
  return [...list].sort((a, b) => a.ts - b.ts || (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0) || (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

function canonicalColumns(c: TransitionColumns): { clusters: readonly string[]; rows: string[] } {
  const rows = Array.from(c.ts, (ts, r) => `${ts}|${c.users[r]}|${c.clusters[c.c1[r]]}|${c.clusters[c.c2[r]]}|${c.clusters[c.next[r]]}`);
  // Sorted within each (ts, user) group only: the groups' own order is compared as it comes.
  const groups = new Map<string, string[]>();
  for (const row of rows) {
    const group = row.split("|").slice(0, 2).join("|");
    groups.set(group, [...(groups.get(group) ?? []), row]);
  }
  return { clusters: c.clusters, rows: [...groups.values()].flatMap((g) => g.sort()) };
}

async function expectSameMining(duck: EventStoreContract, pg: EventStoreContract, window: TimeWindow, options: MiningOptions): Promise<void> {
  expect(await pg.counts()).toEqual(await duck.counts());
  const counts = await countTransitions(duck, window, options);
  expect(counts.length).toBeGreaterThan(10);
  expect(await countTransitions(pg, window, options)).toEqual(counts);
  const byMonth = await countTransitionsByMonth(duck, window, options);
  expect([...(await countTransitionsByMonth(pg, window, options))]).toEqual([...byMonth]);
  const ends = [window.to - 20 * DAY, window.to - 9 * DAY, window.to];
  expect([...(await countTransitionsForWindows(pg, ends, 14 * DAY, options))]).toEqual([...(await countTransitionsForWindows(duck, ends, 14 * DAY, options))]);
  const mid = (window.from + window.to) / 2;
  const histories = await historiesAsOf(duck, mid, options);
  expect(histories.size).toBeGreaterThan(5);
  expect([...(await historiesAsOf(pg, mid, options))].sort()).toEqual([...histories].sort());
  const some = [...histories.keys()].slice(0, 3).concat(["nobody"]);
  expect([...(await historiesAsOf(pg, mid, { ...options, userIds: some }))].sort()).toEqual([...(await historiesAsOf(duck, mid, { ...options, userIds: some }))].sort());
  expect(await futureExamples(pg, window, options)).toEqual(await futureExamples(duck, window, options));
  expect(canonicalTimed(await timedTransitions(pg, window, { ...options, horizon: 3 }))).toEqual(canonicalTimed(await timedTransitions(duck, window, { ...options, horizon: 3 })));
  const columns = await transitionColumns(duck, window, options);
  expect(canonicalColumns(await transitionColumns(pg, window, options))).toEqual(canonicalColumns(columns));
  const clusters = (await duck.clusters()).map((c) => c.id);
  const recent = { from: window.to - 30 * DAY, to: window.to };
  const [a, b] = [await EvidenceLog.load(duck, window, clusters, options), await EvidenceLog.load(pg, window, clusters, options)];
  expect(b.counts(recent)).toEqual(a.counts(recent));
  for (const by of ["cluster", "user"] as const) expect([...(await firstSeen(pg, by, options))].sort()).toEqual([...(await firstSeen(duck, by, options))].sort());
  expect(await analyzeDrift(pg, window, { ...options, minSupport: 1 })).toEqual(await analyzeDrift(duck, window, { ...options, minSupport: 1 }));
}

describe("mining parity: DuckDB and PostgreSQL on the same data", () => {
  const opened: EventStoreContract[] = [];
  async function both(): Promise<[EventStoreContract, EventStoreContract]> {
    const pair: [EventStoreContract, EventStoreContract] = [await EventStore.open(":memory:"), await PostgresEventStore.open(await database())];
    opened.push(...pair);
    return pair;
  }
  afterAll(async () => {
    for (const store of opened) await store.close();
  });

  it("gives the same results on a random log with ties, missing engagements and collation-sensitive ids", async () => {
    let seed = 11;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const names = ["alice", "Bob", "bob", "_x", "Zoë", "émile", "10", "9", "user b", "user-a"];
    const events: EngagementEvent[] = [];
    for (let u = 0; u < 60; u++) {
      const userId = `${names[u % names.length]}${Math.floor(u / names.length)}`;
      for (let k = 0; k < 40; k++) {
        // Whole hours over ~100 days: equal timestamps within a user happen.
        const ts = T0 + Math.floor(random() * 100 * 24) * 3_600_000;
        const engagement = random() < 0.2 ? undefined : Math.round(random() * 50) / 10;
        events.push({ userId, itemId: ITEMS[Math.floor(random() * ITEMS.length)].id, ts, engagement });
      }
    }
    const [duck, pg] = await both();
    for (const store of [duck, pg]) await store.append({ clusters: CLUSTERS, items: ITEMS, events: eventBatchFromEvents(events) });
    const window = { from: T0 + 30 * DAY, to: T0 + 90 * DAY };
    await expectSameMining(duck, pg, window, {});
    await expectSameMining(duck, pg, window, { positiveMin: 2.5 });
  }, 120_000);

  const small = join(DATASETS, "movielens-latest-small");
  it("gives the same results on MovieLens ml-latest-small", async () => {
    const [duck, pg] = await both();
    const [a, b] = [await ingestMovieLens(duck, small), await ingestMovieLens(pg, small)];
    expect(b).toEqual(a);
    const positiveMin = Number(await duck.getMeta("positive_min"));
    const { firstTs, lastTs } = await duck.counts();
    const window = { from: firstTs! + (lastTs! - firstTs!) / 2, to: lastTs! + 1 };
    await expectSameMining(duck, pg, window, { positiveMin });
    // MovieLens rates many items in the same second: the transitions come in the same order every time, on both
    // stores (a model trained on them must repeat), not only as the same set.
    const whole = { from: firstTs!, to: lastTs! + 1 };
    const timed = await timedTransitions(duck, whole, { positiveMin, horizon: 1 });
    for (let k = 0; k < 3; k++) expect(await timedTransitions(duck, whole, { positiveMin, horizon: 1 })).toEqual(timed);
    expect(await timedTransitions(pg, whole, { positiveMin, horizon: 1 })).toEqual(timed);
    const columns = await transitionColumns(duck, whole, { positiveMin });
    expect(await transitionColumns(duck, whole, { positiveMin })).toEqual(columns);
  }, 300_000);
});
