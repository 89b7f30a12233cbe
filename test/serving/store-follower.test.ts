/**
 * A server on a shared PostgreSQL store follows what another writer appends (./src/serving/store-follower.ts), and
 * what it ends with is what a server started afterwards would read: after batches in any time order, with events
 * it holds already (other engagement values), events below the positive threshold, new users, a new cluster and new
 * items, every user's history, recent items and seen items, and the catalog, equal a fresh load from the store. So
 * they do after an ingest moves items to other clusters (which moves their past events too): the catalog, and the
 * histories of the users who had the moved items, equal a fresh load's.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventBatchFromEvents } from "../../src/data/event-store.js";
import { PostgresEventStore } from "../../src/data/postgres-event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld } from "../../src/data/synthetic/index.js";
import type { EngagementEvent } from "../../src/domain/types.js";
import { Catalog, startServer, UserIndex, type RunningServer } from "../../src/serving/index.js";
import { StoreFollower } from "../../src/serving/store-follower.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { tempDir } from "../temp-dir.js";

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
  server = await startServer({ workspace: tempDir("freshrec-follow-"), storeUrl: url, port: 0, logLevel: "silent", reloadIntervalMs: 3_600_000 });
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

/** A user's state in ids (indices differ between two catalogs read at different times). */
function view(c: Catalog, state: ReturnType<UserIndex["get"]>) {
  return (
    state && {
      history: state.history && [c.clusterIds[state.history.c1], c.clusterIds[state.history.c2]],
      lastCluster: state.lastCluster < 0 ? null : c.clusterIds[state.lastCluster],
      recent: state.recent.map((i) => c.itemIds[i]),
      recentTs: state.recentTs,
      seen: state.seen.map((i, k) => `${c.itemIds[i]}@${state.seenTs[k]}`).sort(),
    }
  );
}

/** Waits until the server applied the store's latest append. */
async function caughtUp(): Promise<number> {
  const latest = await writer.lastAppend();
  for (let attempt = 0; attempt < 600 && server.state.storeFollow()!.appliedThrough < latest; attempt++) await new Promise((r) => setTimeout(r, 100));
  return latest;
}

/**
 * Expects the server's catalog and every user's state to equal a fresh load of the store.
 * @returns the fresh load.
 */
async function expectFreshLoad(): Promise<{ catalog: Catalog; fresh: UserIndex; ids: string[] }> {
  const positiveMin = Number(await writer.getMeta("positive_min"));
  const catalog = await Catalog.load(writer);
  const fresh = await UserIndex.load(writer, catalog, { positiveMin, recentItems: 10 });
  const served = server.state.catalog;
  expect(served.clusterIds).toEqual(catalog.clusterIds);
  expect(served.descriptions).toEqual(catalog.descriptions);
  expect(served.itemIds).toEqual(catalog.itemIds);
  expect(served.itemTitles).toEqual(catalog.itemTitles);
  expect([...served.itemCluster]).toEqual([...catalog.itemCluster]);
  expect(server.state.users.size).toBe(fresh.size);
  const ids = (await writer.query<{ user_id: string }>("SELECT user_id FROM users")).map((r) => r.user_id);
  for (const id of ids) expect(view(served, server.state.users.get(id)), id).toEqual(view(catalog, fresh.get(id)));
  return { catalog, fresh, ids };
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
    const latest = await caughtUp();
    expect(latest).toBeGreaterThanOrEqual(4);
    const follow = server.state.storeFollow()!;
    expect(follow).toMatchObject({ appliedThrough: latest, failing: 0, clustersAdded: 1, itemsAdded: 3, listening: true });
    expect(server.state.users.size).toBeGreaterThan(before);

    const { catalog, fresh, ids } = await expectFreshLoad();
    // The new items were met by some users, so the comparison covers them.
    expect(ids.filter((id) => view(catalog, fresh.get(id))?.seen.some((s) => s.startsWith("followed-"))).length).toBeGreaterThan(0);
  }, 180_000);

  it("takes an ingest that moves items to other clusters: the catalog and the histories of the users who had them equal a fresh load", async () => {
    const served = server.state.catalog;
    const historyOf = (id: string) => {
      const h = server.state.users.get(id)?.history;
      return h ? `${served.clusterIds[h.c1]}>${served.clusterIds[h.c2]}` : null;
    };
    const ids = (await writer.query<{ user_id: string }>("SELECT user_id FROM users")).map((r) => r.user_id);
    const before = new Map(ids.map((id) => [id, historyOf(id)]));
    // The items most users had, so that many histories hold them (some as their latest runs).
    const popular = await writer.query<{ item_id: string; cluster_id: string }>(
      `SELECT i.item_id, c.cluster_id FROM events e JOIN items i USING (item_key) JOIN clusters c USING (cluster_key)
       GROUP BY i.item_id, i.item_key, c.cluster_id ORDER BY count(DISTINCT e.user_key) DESC, i.item_key LIMIT 8`,
    );
    const clusterIds = world.clusters.map((c) => c.id);
    const moves = popular.slice(0, 7).map((r, k) => {
      const others = clusterIds.filter((c) => c !== r.cluster_id);
      // The last one to a cluster that the same append adds: the catalog takes the cluster before the move.
      return { id: r.item_id, clusterId: k === 6 ? "moved-to-cluster" : others[k % others.length] };
    });
    const retitled = { id: popular[7].item_id, clusterId: popular[7].cluster_id, title: "A new title" };
    const from = server.state.storeFollow()!;
    await writer.append({
      clusters: [
        { id: "moved-to-cluster", description: "a cluster items moved to" },
        { id: world.clusters[1].id, description: "a description changed while serving" },
      ],
      items: [...moves, retitled],
    });
    // Events on the moved items after the move: applied under their new clusters.
    const next = random(13);
    const span = world.endMs - world.startMs;
    await writer.append({
      events: eventBatchFromEvents(
        Array.from({ length: 60 }, () => ({
          userId: ids[Math.floor(next() * ids.length)],
          itemId: moves[Math.floor(next() * moves.length)].id,
          ts: world.startMs + Math.floor((next() * span) / 1000) * 1000,
          engagement: next() < 0.3 ? 0.1 : 0.9,
        })),
      ),
    });
    await caughtUp();
    const follow = server.state.storeFollow()!;
    expect(follow).toMatchObject({ failing: 0, clustersAdded: from.clustersAdded + 1, clustersChanged: from.clustersChanged + 1, itemsChanged: from.itemsChanged + 8 });
    expect(follow.usersReloaded).toBeGreaterThan(from.usersReloaded);
    expect(served.clusterOfItem(moves[6].id)).toBe("moved-to-cluster");
    expect(served.clusterOfItem(moves[0].id)).toBe(moves[0].clusterId);

    const { catalog, fresh } = await expectFreshLoad();
    // The moves changed histories (not only added events): users whose history a fresh load gives differently from
    // the one served before, while they had a moved item before the move.
    const movedIds = new Set(moves.map((m) => m.id));
    const changed = ids.filter((id) => {
      const h = fresh.get(id)?.history;
      const now = h ? `${catalog.clusterIds[h.c1]}>${catalog.clusterIds[h.c2]}` : null;
      return now !== before.get(id) && view(catalog, fresh.get(id))!.seen.some((s) => movedIds.has(s.slice(0, s.lastIndexOf("@"))));
    });
    expect(changed.length).toBeGreaterThan(5);
  }, 180_000);

  it("reads again a user whose event of a moved item it applied under the old cluster before the catalog took the move", async () => {
    // This replica's intake can commit an event of an item after the snapshot of the catch-up that reads the item's
    // move, and apply it before that catch-up changes the catalog: the event is applied under the old cluster, and
    // the store gives it to the next catch-up, which must not keep that history.
    const url2 = await database();
    const store = await PostgresEventStore.open(url2);
    try {
      const day = 86_400_000;
      await store.append({
        clusters: ["a", "b", "c"].map((id) => ({ id, description: `cluster ${id}` })),
        items: [
          { id: "a1", clusterId: "a" },
          { id: "b1", clusterId: "b" },
          { id: "x", clusterId: "a" },
        ],
        events: eventBatchFromEvents([
          { userId: "u", itemId: "a1", ts: day },
          { userId: "u", itemId: "b1", ts: 2 * day },
          { userId: "v", itemId: "x", ts: day },
        ]),
      });
      const since = await store.lastAppend();
      const catalog = await Catalog.load(store);
      const users = await UserIndex.load(store, catalog, { positiveMin: null, recentItems: 10 });
      const follower = new StoreFollower(store, catalog, users, since, { now: () => 0 });
      const late = { userId: "u", itemId: "x", ts: 3 * day };
      // Applied here while x is still in cluster a, as intake applies what it stored.
      users.apply([{ userId: "u", item: catalog.itemIndex.get("x")!, ts: late.ts, engagement: null }]);
      await store.append({ items: [{ id: "x", clusterId: "c" }] });
      await follower.catchUp("poll");
      expect(catalog.clusterOfItem("x")).toBe("c");
      // The event is stored after that catch-up's snapshot.
      await store.append({ events: eventBatchFromEvents([late]) });
      await follower.catchUp("poll");
      expect(follower.status()).toMatchObject({ failing: 0, appliedThrough: await store.lastAppend() });

      const freshCatalog = await Catalog.load(store);
      const fresh = await UserIndex.load(store, freshCatalog, { positiveMin: null, recentItems: 10 });
      for (const id of ["u", "v"]) expect(view(catalog, users.get(id)), id).toEqual(view(freshCatalog, fresh.get(id)));
      expect(view(catalog, users.get("u"))!.history).toEqual(["b", "c"]);
    } finally {
      await store.close();
    }
  }, 120_000);

  it("upgrades a database from before append numbers: its events are read at start, and appends and moves after are followed", async () => {
    const old = await database();
    const store = await PostgresEventStore.open(old);
    let upgraded: RunningServer | null = null;
    try {
      await ingestSynthetic(store, world);
      // What a database written by the previous version looks like: no counter, no column.
      await store.query("DROP TABLE event_appends");
      await store.query("ALTER TABLE events DROP COLUMN append_seq");
      // Nor the numbering of catalog changes.
      await store.query("DROP TRIGGER items_changed ON items");
      await store.query("DROP TRIGGER clusters_changed ON clusters");
      await store.query("ALTER TABLE items DROP COLUMN changed_seq");
      await store.query("ALTER TABLE clusters DROP COLUMN changed_seq");
      await store.query("DROP FUNCTION freshrec_catalog_change()");
    } finally {
      await store.close();
    }
    const reopened = await PostgresEventStore.open(old);
    try {
      const [{ n }] = await reopened.query<{ n: bigint }>("SELECT count(*) AS n FROM events WHERE append_seq IS NULL");
      expect(Number(n)).toBeGreaterThan(1000);
      expect(await reopened.lastAppend()).toBe(0);
      upgraded = await startServer({ workspace: tempDir("freshrec-follow-"), storeUrl: old, port: 0, logLevel: "silent", reloadIntervalMs: 3_600_000 });
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

      // A move after the upgrade is numbered and followed: the item of the user's newest event goes to a cluster
      // outside the user's history.
      const served = upgraded.state.catalog;
      const history = upgraded.state.users.get(user)!.history!;
      const target = served.clusterIds.find((c, k) => k !== history.c1 && k !== history.c2)!;
      await reopened.append({ items: [{ id: itemId, clusterId: target }] });
      expect(await reopened.lastAppend()).toBe(2);
      for (let attempt = 0; attempt < 600 && upgraded.state.storeFollow()!.appliedThrough < 2; attempt++) await new Promise((r) => setTimeout(r, 100));
      expect(served.clusterOfItem(itemId)).toBe(target);
      const moved = upgraded.state.users.get(user)!.history!;
      expect(served.clusterIds[moved.c2]).toBe(target);
      const freshCatalog = await Catalog.load(reopened);
      const afterMove = await UserIndex.load(reopened, freshCatalog, { positiveMin: Number(await reopened.getMeta("positive_min")), recentItems: 10 });
      const h = afterMove.get(user)!.history!;
      expect([served.clusterIds[moved.c1], served.clusterIds[moved.c2]]).toEqual([freshCatalog.clusterIds[h.c1], freshCatalog.clusterIds[h.c2]]);
    } finally {
      await upgraded?.close();
      await reopened.close();
    }
  }, 180_000);
});
