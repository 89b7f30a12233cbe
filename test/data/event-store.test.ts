import { describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";

const clusters = [
  { id: "baking", description: "baking, desserts, pastry" },
  { id: "hiking", description: "hiking, trails, mountains" },
];
const items = [
  { id: "i1", clusterId: "baking", title: "Sourdough" },
  { id: "i2", clusterId: "hiking" },
];
const events = [
  { userId: "alice", itemId: "i1", ts: Date.UTC(2025, 0, 1), engagement: 1 },
  { userId: "alice", itemId: "i2", ts: Date.UTC(2025, 0, 2) },
  { userId: "bob", itemId: "i1", ts: Date.UTC(2025, 0, 3), engagement: 0.2 },
];

describe("EventStore", () => {
  it("appends idempotently and persists across reopen", async () => {
    const path = join(mkdtempSync(join(tmpdir(), "freshrec-store-")), "events.duckdb");
    let store = await EventStore.open(path);
    const first = await store.append({ clusters, items, events: eventBatchFromEvents(events) });
    expect(first).toEqual({ clustersAdded: 2, itemsAdded: 2, eventsAdded: 3, skippedDuplicates: 0 });
    const again = await store.append({ clusters, items, events: eventBatchFromEvents([...events, events[0]]) });
    expect(again).toEqual({ clustersAdded: 0, itemsAdded: 0, eventsAdded: 0, skippedDuplicates: 4 });
    store.close();

    store = await EventStore.open(path);
    const counts = await store.counts();
    expect(counts).toMatchObject({ events: 3, items: 2, clusters: 2, users: 2 });
    expect(counts.firstTs).toBe(Date.UTC(2025, 0, 1));
    expect(counts.lastTs).toBe(Date.UTC(2025, 0, 3));
    const rows = await store.query<{ engagement: number | null }>("SELECT engagement FROM events ORDER BY ts");
    expect(rows.map((r) => r.engagement)).toEqual([1, null, expect.closeTo(0.2, 5)]);
    store.close();
  });

  it("writes nothing when any part of an append fails", async () => {
    const store = await EventStore.open(":memory:");
    await store.append({ clusters, items });
    await expect(
      store.append({
        items: [{ id: "i3", clusterId: "baking" }],
        events: eventBatchFromEvents([{ userId: "carol", itemId: "nope", ts: 0 }]),
      }),
    ).rejects.toThrow(/item nope/);
    expect(await store.counts()).toMatchObject({ events: 0, items: 2, users: 0 });
    store.close();
  });

  it("rejects items of unknown clusters", async () => {
    const store = await EventStore.open(":memory:");
    await expect(store.append({ clusters, items: [{ id: "x", clusterId: "ghost" }] })).rejects.toThrow(/cluster ghost/);
    expect((await store.counts()).clusters).toBe(0);
    store.close();
  });
});
