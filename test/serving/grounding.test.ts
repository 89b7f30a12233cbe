/**
 * Item grounding and the user index on data with known answers, and the item policy conformance suite run by both
 * embedded adapters over a synthetic platform.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";
import { DAY_MS } from "../../src/domain/clock.js";
import type { EngagementEvent } from "../../src/domain/types.js";
import { historiesAsOf } from "../../src/mining/transitions.js";
import { Catalog, CoVisitationPolicy, PopularityPolicy, UserIndex, buildGroundingIndex, type GroundingIndex } from "../../src/serving/index.js";
import { itemPolicyConformance, type ConformanceSetup } from "./item-policy-conformance.js";
import { servingWorkspace } from "./fixtures.js";

const END = Date.parse("2025-06-30T00:00:00Z");

/** Three clusters of five items; co-visits and popularity arranged so the right answers are known. */
async function knownStore(): Promise<EventStore> {
  const store = await EventStore.open(":memory:");
  const clusters = ["A", "B", "C"].map((id) => ({ id, description: `cluster ${id}` }));
  const items = clusters.flatMap((c) => Array.from({ length: 5 }, (_, k) => ({ id: `${c.id.toLowerCase()}${k}`, clusterId: c.id, title: `${c.id} ${k}` })));
  const events: EngagementEvent[] = [];
  const visit = (user: string, day: number, ...ids: string[]) => ids.forEach((itemId, k) => events.push({ userId: user, itemId, ts: END - day * DAY_MS + k * 60_000, engagement: 1 }));
  for (let u = 0; u < 5; u++) visit(`p${u}`, 3, "a0", "b1");
  for (let u = 0; u < 2; u++) visit(`q${u}`, 3, "a0", "b2");
  visit("r0", 3, "a1", "b3");
  for (let u = 0; u < 10; u++) visit(`w${u}`, 2, "b4");
  // Old co-visits, outside the 30-day window: they count for all-time popularity only.
  for (let u = 0; u < 20; u++) visit(`o${u}`, 60, "a0", "b0");
  // A user whose sequence is A, B, A, C (histories and recency).
  visit("h", 1, "a2", "b2", "a3", "c1");
  // A dissatisfied event: seen, but not positive.
  events.push({ userId: "h", itemId: "c4", ts: END - 1000, engagement: 0.1 });
  await store.append({ clusters, items, events: eventBatchFromEvents(events) });
  return store;
}

describe("grounding on known data", () => {
  let store: EventStore;
  let catalog: Catalog;
  let index: GroundingIndex;
  const item = (id: string) => catalog.itemIndex.get(id)!;
  const ids = (list: { item: number }[]) => list.map((i) => catalog.itemIds[i.item]);

  beforeAll(async () => {
    store = await knownStore();
    catalog = await Catalog.load(store);
    index = await buildGroundingIndex(store, catalog, { windowDays: 30, positiveMin: 0.5, minCovisitUsers: 1 });
  });
  afterAll(() => store.close());

  it("ranks items of the cluster by co-visitation with the user's recent items, then fills with recent popularity", () => {
    const policy = new CoVisitationPolicy(() => index);
    const B = catalog.clusterIndex.get("B")!;
    const [list] = policy.ground({ userId: "x", clusters: [B], n: 5, recent: [item("a0")], isSeen: () => false });
    expect(ids(list)).toEqual(["b1", "b2", "b4", "b3", "b0"]);
    expect(list.map((i) => i.source)).toEqual(["co-visitation", "co-visitation", "popularity", "popularity", "popularity"]);
    expect(list[0].score).toBe(5);
    expect(list[1].score).toBe(2);
  });

  it("weighs recent items more (1 / (1 + position)) and excludes what the user saw", () => {
    const policy = new CoVisitationPolicy(() => index);
    const B = catalog.clusterIndex.get("B")!;
    const [list] = policy.ground({ userId: "x", clusters: [B], n: 3, recent: [item("a1"), item("a0")], isSeen: () => false });
    // b1: 0.5 x 5 = 2.5; b2: 0.5 x 2 = 1; b3: 1 x 1 = 1 (ties by catalog order).
    expect(ids(list)).toEqual(["b1", "b2", "b3"]);
    const [unseen] = policy.ground({ userId: "x", clusters: [B], n: 2, recent: [item("a0")], isSeen: (i) => i === item("b1") });
    expect(ids(unseen)).toEqual(["b2", "b4"]);
  });

  it("by default a pair needs two users to count as co-visited", async () => {
    const strict = await buildGroundingIndex(store, catalog, { windowDays: 30, positiveMin: 0.5 });
    const B = catalog.clusterIndex.get("B")!;
    const [list] = new CoVisitationPolicy(() => strict).ground({ userId: "x", clusters: [B], n: 1, recent: [item("a1")], isSeen: () => false });
    expect(list).toEqual([{ item: item("b4"), score: 10, source: "popularity" }]);
    // Left: (a0, b1) and (a0, b2), both directions; gone: (a1, b3) and user h's six pairs.
    expect(strict.pairs).toBe(4);
    expect(index.pairs).toBe(4 + 2 + 12);
  });

  it("groups each item's neighbours into one run per cluster, covering the list in order", () => {
    const { itemRuns, runCluster, runOffset, neighborStart, neighbors } = index;
    let multi = 0;
    for (let i = 0; i < catalog.itemCount; i++) {
      const runs = itemRuns[i + 1] - itemRuns[i];
      if (runs === 0) {
        expect(neighborStart[i + 1]).toBe(neighborStart[i]);
        continue;
      }
      if (runs > 1) multi++;
      expect(runOffset[itemRuns[i]]).toBe(neighborStart[i]);
      expect(runOffset[itemRuns[i + 1]]).toBe(neighborStart[i + 1]);
      for (let q = itemRuns[i]; q < itemRuns[i + 1]; q++) {
        expect(runOffset[q + 1]).toBeGreaterThan(runOffset[q]);
        for (let p = runOffset[q]; p < runOffset[q + 1]; p++) expect(catalog.itemCluster[neighbors[2 * p]]).toBe(runCluster[q]);
        if (q > itemRuns[i]) expect(runCluster[q]).not.toBe(runCluster[q - 1]);
      }
    }
    // The cluster bits name exactly the clusters of the item's runs.
    const { itemClusterBits, clusterWords } = index;
    for (let i = 0; i < catalog.itemCount; i++) {
      const named = [];
      for (let c = 0; c < catalog.clusterCount; c++) if (itemClusterBits[i * clusterWords + (c >> 5)] & (1 << (c & 31))) named.push(c);
      expect(named).toEqual(Array.from(runCluster.subarray(itemRuns[i], itemRuns[i + 1])));
    }
    // Popular entries side by side are the same entries as the separate arrays.
    for (let p = 0; p < index.popularItem.length; p++) {
      expect([index.popularEntries[2 * p], index.popularEntryWeights[2 * p + 1]]).toEqual([index.popularItem[p], index.popularWeight[p]]);
    }
    // User h's a2, b2, a3, c1 gives a2 neighbours in three clusters.
    expect(itemRuns[item("a2") + 1] - itemRuns[item("a2")]).toBe(3);
    expect(multi).toBeGreaterThan(1);
  });

  it("never crosses into another cluster, even when co-visits point there", () => {
    const policy = new CoVisitationPolicy(() => index);
    const C = catalog.clusterIndex.get("C")!;
    const [list] = policy.ground({ userId: "x", clusters: [C], n: 5, recent: [item("a0")], isSeen: () => false });
    expect(list.every((i) => catalog.itemCluster[i.item] === C)).toBe(true);
    expect(list.every((i) => i.source === "popularity")).toBe(true);
  });

  it("popularity ranks recent positive users first, all-time users second", () => {
    const policy = new PopularityPolicy(() => index);
    const [list] = policy.ground({ userId: "x", clusters: [catalog.clusterIndex.get("B")!], n: 5, recent: [], isSeen: () => false });
    expect(ids(list)).toEqual(["b4", "b1", "b2", "b3", "b0"]);
  });

  it("the user index agrees with mining's histories, and observe() gives the state a reload gives", async () => {
    const users = await UserIndex.load(store, catalog, { positiveMin: 0.5, recentItems: 3 });
    const mined = await historiesAsOf(store, END + DAY_MS, { positiveMin: 0.5 });
    for (const [user, h] of mined) {
      const state = users.get(user)!;
      expect({ c1: catalog.clusterIds[state.history!.c1], c2: catalog.clusterIds[state.history!.c2] }).toEqual(h);
    }
    const h = users.get("h")!;
    expect({ c1: catalog.clusterIds[h.history!.c1], c2: catalog.clusterIds[h.history!.c2] }).toEqual({ c1: "A", c2: "C" });
    expect([...h.recent].map((i) => catalog.itemIds[i])).toEqual(["c1", "a3", "b2"]);
    expect([...h.seen].map((i) => catalog.itemIds[i]).sort()).toEqual(["a2", "a3", "b2", "c1", "c4"]);
    expect(users.get("w0")!.history).toBeNull();
    expect(catalog.clusterIds[users.get("w0")!.lastCluster]).toBe("B");

    const replayed = UserIndex.empty(catalog, { positiveMin: 0.5, recentItems: 3 });
    const rows = await store.query<{ user_id: string; item_id: string; ts: number; engagement: number | null }>(
      "SELECT user_id, item_id, epoch_ms(ts) AS ts, engagement FROM events JOIN users USING (user_key) JOIN items USING (item_key) ORDER BY ts, item_key",
    );
    for (const r of rows) replayed.observe({ userId: r.user_id, itemId: r.item_id, ts: Number(r.ts), ...(r.engagement === null ? {} : { engagement: r.engagement }) });
    for (const user of ["h", "p0", "w3", "o7"]) {
      const a = users.get(user)!;
      const b = replayed.get(user)!;
      expect({ ...b, recent: [...b.recent], seen: [...b.seen] }).toEqual({ ...a, recent: [...a.recent], seen: [...a.seen] });
    }
  });
});

describe("conformance", () => {
  let setup: ConformanceSetup & { events: EventStore; index: GroundingIndex };
  beforeAll(async () => {
    const ws = await servingWorkspace({ users: 300, events: 30_000 });
    const events = await EventStore.open(join(ws.dir, "events.duckdb"));
    const catalog = await Catalog.load(events);
    const index = await buildGroundingIndex(events, catalog, { positiveMin: 0.5 });
    const users = await UserIndex.load(events, catalog, { positiveMin: 0.5 });
    const requests = Array.from({ length: 8 }, (_, k) => ws.world.userId(k * 7)).map((userId) => ({ userId, recent: users.get(userId)?.recent ?? new Int32Array(0) }));
    setup = { events, index, catalog, requests, policy: new CoVisitationPolicy(() => index) };
  });
  afterAll(() => setup.events.close());

  itemPolicyConformance("co-visitation", () => setup);

  it("co-visitation equals a plain reference ranking, with long recent lists, a repeated cluster, clusters out of range and n of 0", () => {
    const { index, catalog } = setup;
    const clusterCount = catalog.clusterCount;
    /** Every co-visit of the cluster summed per item in recent order, best first (ties: lower item), then popularity. */
    let longest = 0;
    const reference = (c: number, n: number, recent: Int32Array, isSeen: (i: number) => boolean): [number, number, string][] => {
      const scores = new Map<number, number>();
      recent.forEach((source, r) => {
        for (let p = index.neighborStart[source]; p < index.neighborStart[source + 1]; p++) {
          const item = index.neighbors[2 * p];
          if (catalog.itemCluster[item] === c) scores.set(item, (scores.get(item) ?? 0) + (1 / (1 + r)) * index.neighborWeights[2 * p + 1]);
        }
      });
      longest = Math.max(longest, scores.size);
      const out: [number, number, string][] = [...scores]
        .sort((a, b) => b[1] - a[1] || a[0] - b[0])
        .filter(([item]) => !isSeen(item))
        .slice(0, n)
        .map(([item, score]) => [item, score, "co-visitation"]);
      if (c >= 0 && c < clusterCount) {
        for (let p = index.popularStart[c]; p < index.popularStart[c + 1] && out.length < n; p++) {
          const item = index.popularItem[p];
          if (!isSeen(item) && !out.some(([i]) => i === item)) out.push([item, index.popularWeight[p], "popularity"]);
        }
      }
      return out;
    };
    const policy = new CoVisitationPolicy(() => index);
    for (let k = 0; k < 40; k++) {
      // 60 recent items drawn over the catalog: some clusters collect well over 32 candidates (the indexed path).
      const recent = Int32Array.from({ length: 60 }, (_, r) => (k * 7919 + r * 104729) % catalog.itemCount);
      const isSeen = (i: number) => i % 11 === k % 11;
      const clusters = [k % clusterCount, (k * 13) % clusterCount, k % clusterCount, -1, clusterCount + 3, (k * 29) % clusterCount];
      for (const n of [0, 3, 20]) {
        const got = policy.ground({ userId: `ref-${k}`, clusters, n, recent, isSeen });
        expect(got).toHaveLength(clusters.length);
        clusters.forEach((c, slot) => {
          const want = reference(c, n, recent, isSeen);
          expect(got[slot].map((g) => [g.item, g.score, g.source])).toEqual(want);
        });
      }
    }
    // Some cluster gathered more candidates than the policy scans without an index.
    expect(longest).toBeGreaterThan(32);
  });
  itemPolicyConformance("popularity", () => ({ ...setup, policy: new PopularityPolicy(() => setup.index) }));
});
