/**
 * A server on a shared PostgreSQL store follows what another writer appends (./src/serving/store-follower.ts), and
 * what it ends with is what a server started afterwards would read: after batches in any time order, with events
 * it holds already (other engagement values), events below the positive threshold, new users, a new cluster and new
 * items, every user's history, recent items and seen items, and the catalog, equal a fresh load from the store.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventBatchFromEvents } from "../../src/data/event-store.js";
import { PostgresEventStore } from "../../src/data/postgres-event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld } from "../../src/data/synthetic/index.js";
import type { EngagementEvent } from "../../src/domain/types.js";
import { Catalog, startServer, UserIndex, type RunningServer } from "../../src/serving/index.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const database = usePostgresCluster();
let url: string;
let world: SyntheticWorld;
let server: RunningServer;
let writer: PostgresEventStore;

beforeAll(async () => {
  url = await database();
  world = new SyntheticWorld({ seed: 11, months: 1, users: 120, targetEvents: 6000, clustersPerDomain: 3, itemsPerCluster: 8 });
  writer = await PostgresEventStore.open(url);
  await ingestSynthetic(writer, world);
  // Polls an hour apart: what the server gets here comes through the notifications.
  server = await startServer({ workspace: mkdtempSync(join(tmpdir(), "freshrec-follow-")), storeUrl: url, port: 0, logLevel: "silent", reloadIntervalMs: 3_600_000 });
}, 120_000);

afterAll(async () => {
  await server?.close();
  await writer?.close();
});

/** A deterministic stream of numbers in [0, 1). */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe("a server follows another writer's appends", () => {
  it("ends with the users and catalog a fresh load gives", async () => {
    const next = random(7);
    const items = [...(await writer.itemClusters()).keys()];
    const users = Array.from({ length: 150 }, (_, k) => world.userId(k));
    const span = world.endMs - world.startMs;
    const stored = await writer.query<{ user_id: string; item_id: string; ts: Date }>(
      "SELECT user_id, item_id, ts FROM events JOIN users USING (user_key) JOIN items USING (item_key) ORDER BY user_key, ts LIMIT 200",
    );
    const randomEvents = (n: number, pool: readonly string[]): EngagementEvent[] =>
      Array.from({ length: n }, () => ({
        userId: users[Math.floor(next() * users.length)],
        itemId: pool[Math.floor(next() * pool.length)],
        // Any time of the world, so most land before the users' newest events (out of order).
        ts: world.startMs + Math.floor(next() * span / 1000) * 1000,
        engagement: next() < 0.3 ? 0.1 : 0.9,
      }));
    const before = server.state.users.size;
    await writer.append({ events: eventBatchFromEvents(randomEvents(400, items)) });
    // Events the store holds already, sent again with another engagement value: the stored one stays.
    await writer.append({ events: eventBatchFromEvents(stored.map((r) => ({ userId: r.user_id, itemId: r.item_id, ts: r.ts.getTime(), engagement: 0.01 }))) });
    await writer.append({
      clusters: [{ id: "followed-cluster", description: "a cluster added while serving" }],
      items: [
        { id: "followed-a", clusterId: "followed-cluster", title: "A" },
        { id: "followed-b", clusterId: "followed-cluster" },
        { id: "followed-c", clusterId: world.clusters[0].id, title: "C" },
      ],
    });
    await writer.append({ events: eventBatchFromEvents(randomEvents(300, [...items, "followed-a", "followed-b", "followed-c"])) });
    const latest = await writer.lastAppend();
    expect(latest).toBeGreaterThanOrEqual(4);

    for (let attempt = 0; attempt < 600 && server.state.storeFollow()!.appliedThrough < latest; attempt++) await new Promise((r) => setTimeout(r, 100));
    const follow = server.state.storeFollow()!;
    expect(follow).toMatchObject({ appliedThrough: latest, failing: 0, clustersAdded: 1, itemsAdded: 3, listening: true });
    expect(server.state.users.size).toBeGreaterThan(before);

    const positiveMin = Number(await writer.getMeta("positive_min"));
    const catalog = await Catalog.load(writer);
    const fresh = await UserIndex.load(writer, catalog, { positiveMin, recentItems: 10 });
    const served = server.state.catalog;
    expect(served.clusterIds).toEqual(catalog.clusterIds);
    expect(served.itemIds).toEqual(catalog.itemIds);
    expect([...served.itemCluster]).toEqual([...catalog.itemCluster]);
    expect(server.state.users.size).toBe(fresh.size);
    const view = (c: Catalog, state: ReturnType<UserIndex["get"]>) =>
      state && {
        history: state.history && [c.clusterIds[state.history.c1], c.clusterIds[state.history.c2]],
        lastCluster: state.lastCluster < 0 ? null : c.clusterIds[state.lastCluster],
        recent: state.recent.map((i) => c.itemIds[i]),
        recentTs: state.recentTs,
        seen: state.seen.map((i, k) => `${c.itemIds[i]}@${state.seenTs[k]}`).sort(),
      };
    const ids = (await writer.query<{ user_id: string }>("SELECT user_id FROM users")).map((r) => r.user_id);
    let changed = 0;
    for (const id of ids) {
      const expected = view(catalog, fresh.get(id));
      expect(view(served, server.state.users.get(id)), id).toEqual(expected);
      if (expected?.seen.some((s) => s.startsWith("followed-"))) changed++;
    }
    // The new items were met by some users, so the comparison covers them.
    expect(changed).toBeGreaterThan(0);
  }, 180_000);

  it("upgrades a database from before append numbers: its events are read at start, and appends after are followed", async () => {
    const old = await database();
    const store = await PostgresEventStore.open(old);
    let upgraded: RunningServer | null = null;
    try {
      await ingestSynthetic(store, world);
      // What a database written by the previous version looks like: no counter, no column.
      await store.query("DROP TABLE event_appends");
      await store.query("ALTER TABLE events DROP COLUMN append_seq");
    } finally {
      await store.close();
    }
    const reopened = await PostgresEventStore.open(old);
    try {
      const [{ n }] = await reopened.query<{ n: bigint }>("SELECT count(*) AS n FROM events WHERE append_seq IS NULL");
      expect(Number(n)).toBeGreaterThan(1000);
      expect(await reopened.lastAppend()).toBe(0);
      upgraded = await startServer({ workspace: mkdtempSync(join(tmpdir(), "freshrec-follow-")), storeUrl: old, port: 0, logLevel: "silent", reloadIntervalMs: 3_600_000 });
      const user = world.userId(3);
      const before = upgraded.state.users.get(user)!;
      const seen = before.seen.length;
      const itemId = [...(await reopened.itemClusters()).keys()].find((id) => !UserIndex.hasSeen(before, upgraded!.state.catalog.itemIndex.get(id)!))!;
      await reopened.append({ events: eventBatchFromEvents([{ userId: user, itemId, ts: world.endMs + 60_000, engagement: 1 }]) });
      expect(await reopened.lastAppend()).toBe(1);
      for (let attempt = 0; attempt < 600 && upgraded.state.storeFollow()!.appliedThrough < 1; attempt++) await new Promise((r) => setTimeout(r, 100));
      expect(upgraded.state.users.get(user)!.seen.length).toBe(seen + 1);
      const fresh = await UserIndex.load(reopened, await Catalog.load(reopened), { positiveMin: Number(await reopened.getMeta("positive_min")), recentItems: 10 });
      expect(upgraded.state.users.get(user)!.history).toEqual(fresh.get(user)!.history);
    } finally {
      await upgraded?.close();
      await reopened.close();
    }
  }, 180_000);
});
