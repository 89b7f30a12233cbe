/**
 * The shared conformance suite of the event store contract (src/data/event-store.ts). Every adapter runs it:
 * `eventStoreConformance("duckdb", async () => { const path = ...; return () => EventStore.open(path); })`.
 * `place` allocates a new, empty store location and returns a function that opens it (again and again: reopening
 * must find what was committed).
 */
import { describe, expect, it } from "vitest";
import { eventBatchFromEvents, type EventStoreContract } from "../../src/data/event-store.js";
import { BadInputError, FreshrecError } from "../../src/domain/errors.js";

export type StorePlace = () => Promise<() => Promise<EventStoreContract>>;

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

export function eventStoreConformance(adapter: string, place: StorePlace): void {
  describe(`event store conformance: ${adapter}`, () => {
    async function fresh(): Promise<EventStoreContract> {
      return (await place())();
    }

    it("appends idempotently and persists across reopen", async () => {
      const open = await place();
      let store = await open();
      const first = await store.append({ clusters, items, events: eventBatchFromEvents(events) });
      expect(first).toEqual({ clustersAdded: 2, itemsAdded: 2, eventsAdded: 3, skippedDuplicates: 0 });
      const again = await store.append({ clusters, items, events: eventBatchFromEvents([...events, events[0]]) });
      expect(again).toEqual({ clustersAdded: 0, itemsAdded: 0, eventsAdded: 0, skippedDuplicates: 4 });
      await store.close();

      store = await open();
      const counts = await store.counts();
      expect(counts).toMatchObject({ events: 3, items: 2, clusters: 2, users: 2 });
      expect(counts.firstTs).toBe(Date.UTC(2025, 0, 1));
      expect(counts.lastTs).toBe(Date.UTC(2025, 0, 3));
      const rows = await store.query<{ engagement: number | null }>("SELECT engagement FROM events ORDER BY ts");
      expect(rows.map((r) => r.engagement)).toEqual([1, null, Math.fround(0.2)]);
      await store.close();
    });

    it("writes nothing when any part of an append fails", async () => {
      const store = await fresh();
      await store.append({ clusters, items });
      await expect(
        store.append({
          items: [{ id: "i3", clusterId: "baking" }],
          events: eventBatchFromEvents([{ userId: "carol", itemId: "nope", ts: 0 }]),
        }),
      ).rejects.toThrow(/item nope/);
      expect(await store.counts()).toMatchObject({ events: 0, items: 2, users: 0 });
      await store.close();
    });

    it("rejects items of unknown clusters", async () => {
      const store = await fresh();
      const error = await store.append({ clusters, items: [{ id: "x", clusterId: "ghost" }] }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(FreshrecError);
      expect((error as FreshrecError).code).toBe("BAD_INPUT");
      expect((error as Error).message).toMatch(/cluster ghost/);
      expect((await store.counts()).clusters).toBe(0);
      await store.close();
    });

    it("reports an empty store with null times", async () => {
      const store = await fresh();
      expect(await store.counts()).toEqual({ events: 0, items: 0, clusters: 0, users: 0, firstTs: null, lastTs: null });
      expect(await store.clusters()).toEqual([]);
      expect(await store.getMeta("positiveMin")).toBeNull();
      await store.close();
    });

    it("upserts the catalog by id, keeps dense keys in order and keeps one engagement of an event repeated in a batch", async () => {
      const store = await fresh();
      await store.append({ clusters, items });
      const added = await store.append({
        clusters: [{ id: "baking", description: "bread, cakes" }, { id: "chess", description: "chess, openings" }],
        items: [{ id: "i2", clusterId: "chess", title: "Openings" }, { id: "i3", clusterId: "baking" }],
        events: eventBatchFromEvents([
          { userId: "dan", itemId: "i3", ts: Date.UTC(2025, 1, 1), engagement: 0.5 },
          { userId: "dan", itemId: "i3", ts: Date.UTC(2025, 1, 1), engagement: 0.9 },
          { userId: "eve", itemId: "i1", ts: Date.UTC(2025, 1, 2) },
        ]),
        meta: { positiveMin: "0.5" },
      });
      expect(added).toEqual({ clustersAdded: 1, itemsAdded: 1, eventsAdded: 2, skippedDuplicates: 1 });
      expect(await store.clusters()).toEqual([
        { id: "baking", description: "bread, cakes" },
        { id: "hiking", description: "hiking, trails, mountains" },
        { id: "chess", description: "chess, openings" },
      ]);
      expect(await store.itemClusters()).toEqual(new Map([["i1", "baking"], ["i2", "chess"], ["i3", "baking"]]));
      expect(await store.titledItems(10)).toEqual([
        { id: "i1", clusterId: "baking", title: "Sourdough" },
        { id: "i2", clusterId: "chess", title: "Openings" },
      ]);
      expect(await store.titledItems(1)).toEqual([{ id: "i1", clusterId: "baking", title: "Sourdough" }]);
      const keys = await store.query<{ user_id: string; user_key: number }>("SELECT user_id, user_key FROM users ORDER BY user_key");
      expect(keys).toEqual([{ user_id: "dan", user_key: 1 }, { user_id: "eve", user_key: 2 }]);
      // One of the batch's values: DuckDB's first() over a GROUP BY does not follow the batch's order (PostgreSQL's does).
      const repeated = await store.query<{ engagement: number }>("SELECT engagement FROM events WHERE user_key = 1");
      expect(repeated).toHaveLength(1);
      expect([0.5, Math.fround(0.9)]).toContain(repeated[0].engagement);
      const [row] = await store.query<{ ts: Date; n: bigint }>("SELECT min(ts) AS ts, count(*) AS n FROM events");
      expect(row.ts).toEqual(new Date(Date.UTC(2025, 1, 1)));
      expect(row.n).toBe(2n);
      expect(await store.getMeta("positiveMin")).toBe("0.5");
      await store.close();
    });

    it("holds one dataset: an append naming another identity is refused before anything is written", async () => {
      const store = await fresh();
      await store.append({ clusters, items, events: eventBatchFromEvents(events), identity: { dataset: "movielens", variant: "small" } });
      await expect(store.checkIdentity({ dataset: "movielens", variant: "small" })).resolves.toBeUndefined();
      const error = await store
        .append({ clusters, items, events: eventBatchFromEvents([{ userId: "zed", itemId: "i1", ts: 5 }]), identity: { dataset: "synthetic" } })
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(BadInputError);
      expect((error as Error).message).toContain(store.location);
      expect((error as Error).message).toMatch(/of another dataset than synthetic: dataset "movielens" here, "synthetic" requested/);
      expect((await store.counts()).events).toBe(3);
      await store.close();
    });

    it("binds named parameters, repeated and as string lists, and reads columns", async () => {
      const store = await fresh();
      await store.append({ clusters, items, events: eventBatchFromEvents(events) });
      const users = await store.query<{ user_id: string }>(
        "SELECT user_id FROM users WHERE user_key >= $min AND user_key >= $min ORDER BY user_key",
        { min: 1 },
      );
      expect(users).toEqual([{ user_id: "alice" }, { user_id: "bob" }]);
      const list = store.dialect === "postgres" ? "user_id = ANY($ids::TEXT[])" : "list_contains($ids::VARCHAR[], user_id)";
      expect(await store.query(`SELECT user_id FROM users WHERE ${list}`, { ids: ["bob", "nobody"] })).toEqual([{ user_id: "bob" }]);
      const result = await store.queryColumns("SELECT user_key, epoch_ms(ts) AS ts FROM events WHERE ts < epoch_ms($to::BIGINT) ORDER BY ts", {
        to: BigInt(Date.UTC(2025, 0, 3)),
      });
      expect(result).toEqual({ rowCount: 2, columns: [[1, 1], [BigInt(Date.UTC(2025, 0, 1)), BigInt(Date.UTC(2025, 0, 2))]] });
      expect(await store.queryColumns("SELECT user_key FROM events WHERE false")).toEqual({ rowCount: 0, columns: [] });
      await expect(store.query("SELECT nonsense FROM nowhere")).rejects.toThrow(/event store query failed.*\n.*nowhere/s);
      await store.close();
    });
  });
}
