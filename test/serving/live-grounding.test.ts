/**
 * The grounding index's rebuilds (src/serving/grounding/live-grounding.ts) over a real DuckDB store: one at a time, a
 * burst of catalog changes during a rebuild costs one more, the index swapped in last is the one built last, and a
 * rebuild after a change that failed leaves the index stale until `rebuildIfStale` succeeds. Each build is held at a
 * gate the test opens, so the order of events is the test's, not the machine's.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";
import { DAY_MS } from "../../src/domain/clock.js";
import { Catalog, LiveGrounding, buildGroundingIndex, type GroundingIndex } from "../../src/serving/index.js";

const END = Date.parse("2025-06-30T00:00:00Z");

let store: EventStore;
let catalog: Catalog;

beforeAll(async () => {
  store = await EventStore.open(":memory:");
  const clusters = ["A", "B"].map((id) => ({ id, description: `cluster ${id}` }));
  const items = clusters.flatMap((c) => Array.from({ length: 3 }, (_, k) => ({ id: `${c.id.toLowerCase()}${k}`, clusterId: c.id, title: `${c.id} ${k}` })));
  const events = Array.from({ length: 6 }, (_, u) => ({ userId: `u${u}`, itemId: u % 2 ? "a0" : "b1", ts: END - DAY_MS + u * 60_000, engagement: 1 }));
  await store.append({ clusters, items, events: eventBatchFromEvents(events) });
  catalog = await Catalog.load(store);
});
afterAll(() => store.close());

/** Builds of the real index, each waiting at a gate until the test opens it; `fail` makes the next one throw. */
function gatedBuilds() {
  const built: GroundingIndex[] = [];
  const waiting: (() => void)[] = [];
  /** Whoever waits for a build to reach the gate. */
  let arrived: (() => void) | null = null;
  let started = 0;
  let fail = false;
  return {
    build: async () => {
      started++;
      const gate = new Promise<void>((open) => waiting.push(open));
      arrived?.();
      await gate;
      if (fail) {
        fail = false;
        throw new Error("the store is unreachable");
      }
      const index = await buildGroundingIndex(store, catalog, { positiveMin: 0.5 });
      built.push(index);
      return index;
    },
    /** Opens the gate of the build waiting there, or of the next one to reach it (bounded by the test's timeout). */
    async open() {
      if (waiting.length === 0) await new Promise<void>((reached) => (arrived = reached));
      arrived = null;
      waiting.shift()!();
    },
    failNext: () => (fail = true),
    get started() {
      return started;
    },
    built,
  };
}

describe("LiveGrounding", () => {
  it("a burst of catalog changes during a rebuild makes one more rebuild, whose index is swapped in", async () => {
    const builds = gatedBuilds();
    let rebuilt = 0;
    const grounding = new LiveGrounding(await buildGroundingIndex(store, catalog, { positiveMin: 0.5 }), builds.build, { now: () => END, onRebuilt: () => rebuilt++ });
    const first = grounding.catalogChanged();
    const burst = [grounding.catalogChanged(), grounding.catalogChanged(), grounding.rebuild(), grounding.catalogChanged()];
    expect(grounding.stale).toBe(true);
    await builds.open();
    await builds.open();
    await Promise.all([first, ...burst]);
    expect(builds.started).toBe(2);
    expect(rebuilt).toBe(2);
    expect(grounding.current).toBe(builds.built[1]);
    expect(grounding.stale).toBe(false);
    await grounding.close();
  });

  it("the poll during a rebuild begun after the change asks for no other", async () => {
    const builds = gatedBuilds();
    const grounding = new LiveGrounding(await buildGroundingIndex(store, catalog, { positiveMin: 0.5 }), builds.build, { now: () => END });
    const changed = grounding.catalogChanged();
    expect(grounding.stale).toBe(true);
    const polled = grounding.rebuildIfStale();
    await builds.open();
    await Promise.all([changed, polled]);
    expect(builds.started).toBe(1);
    expect(grounding.stale).toBe(false);
    await grounding.close();
  });

  it("a rebuild after a catalog change that failed leaves the index stale, and rebuildIfStale builds it again", async () => {
    const builds = gatedBuilds();
    const initial = await buildGroundingIndex(store, catalog, { positiveMin: 0.5 });
    const grounding = new LiveGrounding(initial, builds.build, { now: () => END });
    builds.failNext();
    const failed = grounding.catalogChanged();
    await builds.open();
    await expect(failed).rejects.toThrow("the store is unreachable");
    expect(grounding.current).toBe(initial);
    expect(grounding.stale).toBe(true);
    const retried = grounding.rebuildIfStale();
    await builds.open();
    await retried;
    expect(grounding.current).toBe(builds.built[0]);
    expect(grounding.stale).toBe(false);
    // Not stale: nothing to do.
    await grounding.rebuildIfStale();
    expect(builds.started).toBe(2);
    await grounding.close();
  });

  it("a periodic rebuild that failed does not make the index stale", async () => {
    const builds = gatedBuilds();
    const grounding = new LiveGrounding(await buildGroundingIndex(store, catalog, { positiveMin: 0.5 }), builds.build, { now: () => END });
    builds.failNext();
    const failed = grounding.rebuild();
    await builds.open();
    await expect(failed).rejects.toThrow("the store is unreachable");
    expect(grounding.stale).toBe(false);
    await grounding.rebuildIfStale();
    expect(builds.started).toBe(1);
    await grounding.close();
  });
});
