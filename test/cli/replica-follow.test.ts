/**
 * Replicas follow the shared store's appends (issue 19, item 2): two `freshrec serve` processes on one PostgreSQL
 * database (a throwaway cluster), each holding the users' histories and the catalog in memory. What another process
 * appends reaches both without a restart: events posted to one replica change the other's answer for that user,
 * `freshrec ingest` of a file (a new item and events on it) changes both replicas' answers and catalogs, an ingest
 * that moves an item to another cluster changes the answers of a user who had the item and the items each cluster is
 * grounded into (the new item, the moved one under its new cluster and no longer under its old), and a replica
 * whose listening connection was cut (pg_terminate_backend, and no new connection allowed meanwhile) says so in
 * /healthz and /metrics and catches up with what was appended while it could not hear, once it reconnects.
 *
 * The replicas poll the store once an hour here, so only the notifications and the catch-up on reconnection can make
 * these tests pass within their time (each waits by asking again, bounded by the test's timeout, never a time it
 * asserts). Likewise the grounding index is rebuilt once a day here: only a rebuild on the catalog change grounds a new
 * or moved item within a test.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { seedPostgres, servingWorkspace, type ServingWorkspace } from "../serving/fixtures.js";
import { runCli, serveCli } from "./run.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();
let ws: ServingWorkspace;
let url: string;
let root: string;
let config: string;
let replicas: Awaited<ReturnType<typeof serveCli>>[] = [];
let db: pg.Client;

interface Answer {
  history: { c1: string; c2: string } | null;
  fallback: string | null;
  recommendations: { cluster: string; items: { itemId: string }[] }[];
  [key: string]: unknown;
}

async function explore(replica: number, user: string): Promise<Answer> {
  const res = await fetch(`${replicas[replica].url}/v1/users/${encodeURIComponent(user)}/exploration?n=5`);
  expect(res.status).toBe(200);
  const body = (await res.json()) as Answer;
  // Per request, not per answer.
  delete body.requestId;
  return body;
}

async function health(replica: number): Promise<{ storeFollow: { state: string; listening: boolean; disconnects: number; appliedThrough: number; itemsChanged: number; usersReloaded: number }; grounding: { builtAt: string; stale: boolean } }> {
  return (await (await fetch(`${replicas[replica].url}/healthz`)).json()) as never;
}

/**
 * The items a replica grounds each cluster into, for a user it has never seen: the cold-start answer names every
 * cluster, and with no recent items every item of a cluster (up to 100) comes from its popularity ranking.
 */
async function groundedItems(replica: number): Promise<Map<string, string[]>> {
  const res = await fetch(`${replicas[replica].url}/v1/users/follow-nobody/exploration?n=50&items=100`);
  expect(res.status).toBe(200);
  const body = (await res.json()) as Answer;
  expect(body.recommendations.length).toBe(ws.clusters.length);
  return new Map(body.recommendations.map((r) => [r.cluster, r.items.map((i) => i.itemId)]));
}

/** Whether `item` is grounded under `cluster` and under no other. */
function groundedUnder(grounded: Map<string, string[]>, item: string, cluster: string): boolean {
  return [...grounded].every(([c, items]) => items.includes(item) === (c === cluster));
}

async function groundingRebuilds(replica: number): Promise<number> {
  const metrics = await (await fetch(`${replicas[replica].url}/metrics`)).text();
  return Number(/^freshrec_grounding_rebuilds_total (\d+)$/m.exec(metrics)![1]);
}

/** Asks until `done` holds of the answer, at most a minute (the test's timeout bounds it; no time is asserted). */
async function eventually<T>(ask: () => Promise<T>, done: (value: T) => boolean): Promise<T> {
  let value = await ask();
  for (let attempt = 0; attempt < 600 && !done(value); attempt++) {
    await new Promise((r) => setTimeout(r, 100));
    value = await ask();
  }
  return value;
}

/** An item of `cluster` from the store. */
async function itemOf(cluster: string): Promise<string> {
  const rows = await db.query<{ item_id: string }>("SELECT item_id FROM items JOIN clusters USING (cluster_key) WHERE cluster_id = $1 ORDER BY item_key LIMIT 1", [cluster]);
  return rows.rows[0].item_id;
}

/** A cluster that is neither of the history's. */
function otherCluster(history: { c1: string; c2: string }): string {
  return ws.clusters.find((c) => c !== history.c1 && c !== history.c2)!;
}

/** A time after the user's newest stored event (so that the event starts a new last run). */
async function after(user: string): Promise<number> {
  const rows = await db.query<{ t: string }>("SELECT max(epoch_ms(ts)) AS t FROM events JOIN users USING (user_key) WHERE user_id = $1", [user]);
  return Number(rows.rows[0].t) + 3_600_000;
}

/** Users that both replicas answer from the table with the same history, `count` of them, from the k-th on. */
async function usersWithHistory(from: number, count: number): Promise<{ user: string; history: { c1: string; c2: string } }[]> {
  const found: { user: string; history: { c1: string; c2: string } }[] = [];
  for (let k = from; found.length < count; k++) {
    const user = ws.world.userId(k);
    const [a, b] = [await explore(0, user), await explore(1, user)];
    if (a.history && a.fallback === null) {
      expect(b).toEqual(a);
      found.push({ user, history: a.history });
    }
  }
  return found;
}

beforeAll(async () => {
  ws = await servingWorkspace({ users: 200, events: 15_000 });
  url = await database();
  await seedPostgres(url, ws);
  root = tempDir("freshrec-follow-");
  config = join(root, "freshrec.config.json");
  // An hour between polls: what reaches a replica within a test comes through the notifications or a reconnection.
  writeFileSync(config, JSON.stringify({ store: { url }, serve: { reloadIntervalMs: 3_600_000, groundingRebuildMinutes: 1440 } }));
  replicas = [await serveCli(join(root, "host-a"), config), await serveCli(join(root, "host-b"), config)];
  db = new pg.Client({ connectionString: url });
  await db.connect();
}, 300_000);

afterAll(async () => {
  await db?.end();
  for (const r of replicas) r.child.kill("SIGINT");
  for (const r of replicas) expect(await r.exited).toBe(0);
});

describe("serve replicas follow the shared store's appends", () => {
  it("events posted to replica A for a user change replica B's answer for that user, without a restart", async () => {
    const [{ user, history }] = await usersWithHistory(0, 1);
    const next = otherCluster(history);
    const response = await fetch(`${replicas[0].url}/v1/events`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ events: [{ userId: user, itemId: await itemOf(next), ts: await after(user) }] }),
    });
    expect(response.status).toBe(200);
    expect(((await response.json()) as { eventsAdded: number }).eventsAdded).toBe(1);
    // A applies its own intake in place; B hears of it through the database.
    const onA = await explore(0, user);
    expect(onA.history).toEqual({ c1: history.c2, c2: next });
    const onB = await eventually(
      () => explore(1, user),
      (b) => b.history?.c2 === next,
    );
    // The whole answer, not only the history: B's row, items and fallback are A's.
    expect(onB).toEqual(onA);
    // B's answer can show the append while the catch-up that applied it is still finishing (it applies a page,
    // then yields to requests): it settles to following, listening.
    const { storeFollow: follow } = await eventually(
      () => health(1),
      (h) => h.storeFollow.state !== "catching-up",
    );
    expect(follow.state).toBe("following");
    expect(follow.listening).toBe(true);
  }, 120_000);

  it("freshrec ingest of a small file (a new item and events on it) while both replicas run changes both replicas' answers", async () => {
    const [{ user, history }, other] = await usersWithHistory(20, 2);
    const next = otherCluster(history);
    const items = join(root, "items.csv");
    const events = join(root, "events.csv");
    writeFileSync(items, `item_id,cluster_id,title\nfollowed-new-item,${next},A new item\n`);
    writeFileSync(events, `user_id,item_id,ts\n${user},followed-new-item,${new Date(await after(user)).toISOString()}\n`);
    const ingested = runCli(["--workspace", join(root, "ingest-host"), "--config", config, "--json", "ingest", "--items", items, "--events", events]);
    expect(ingested.status, ingested.stderr).toBe(0);
    expect(ingested.json).toMatchObject({ events: 1, items: 1 });
    for (const replica of [0, 1]) {
      const answer = await eventually(
        () => explore(replica, user),
        (a) => a.history?.c2 === next,
      );
      expect(answer.history, `replica ${replica}`).toEqual({ c1: history.c2, c2: next });
      // The item reached the catalog too: it is the user's, so never recommended to them again.
      expect(answer.recommendations.flatMap((r) => r.items.map((i) => i.itemId))).not.toContain("followed-new-item");
      // And the grounding: recommended under its cluster to a user who has not seen it.
      const grounded = await eventually(
        () => groundedItems(replica),
        (g) => groundedUnder(g, "followed-new-item", next),
      );
      expect(grounded.get(next), `replica ${replica}`).toContain("followed-new-item");
    }
    expect(await explore(1, user)).toEqual(await explore(0, user));
    // And each replica's intake takes the new item (a catalog read at start would refuse it: 400, not in the catalog).
    const posted = await fetch(`${replicas[1].url}/v1/events`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ events: [{ userId: other.user, itemId: "followed-new-item", ts: await after(other.user) }] }),
    });
    expect(posted.status, await posted.clone().text()).toBe(200);
  }, 120_000);

  it("freshrec ingest of an item file that moves an item to another cluster changes both replicas' answers for a user who had it", async () => {
    const [p, q, r] = ws.clusters;
    const user = "follow-move-user";
    const items = join(root, "moving-items.csv");
    const events = join(root, "moving-events.csv");
    const [{ t }] = (await db.query<{ t: string }>("SELECT max(epoch_ms(ts)) AS t FROM events")).rows;
    const at = (hours: number) => new Date(Number(t) + hours * 3_600_000).toISOString();
    writeFileSync(items, `item_id,cluster_id,title\nfollowed-moving-item,${q},An item that moves\n`);
    writeFileSync(events, `user_id,item_id,ts\n${user},${await itemOf(p)},${at(1)}\n${user},followed-moving-item,${at(2)}\n`);
    const first = runCli(["--workspace", join(root, "ingest-host"), "--config", config, "--json", "ingest", "--items", items, "--events", events]);
    expect(first.status, first.stderr).toBe(0);
    const before: Answer[] = [];
    for (const replica of [0, 1]) {
      before.push(
        await eventually(
          () => explore(replica, user),
          (a) => a.history?.c2 === q,
        ),
      );
      expect(before[replica].history, `replica ${replica}`).toEqual({ c1: p, c2: q });
      const grounded = await eventually(
        () => groundedItems(replica),
        (g) => groundedUnder(g, "followed-moving-item", q),
      );
      expect(grounded.get(q), `replica ${replica}`).toContain("followed-moving-item");
    }
    const rebuildsBefore = [await groundingRebuilds(0), await groundingRebuilds(1)];

    // The same item, now in r: the user's latest event (and every event of the item) is in r.
    writeFileSync(items, `item_id,cluster_id,title\nfollowed-moving-item,${r},An item that moves\n`);
    const movedAt = Date.now();
    const moved = runCli(["--workspace", join(root, "ingest-host"), "--config", config, "--json", "ingest", "--items", items]);
    expect(moved.status, moved.stderr).toBe(0);
    for (const replica of [0, 1]) {
      const answer = await eventually(
        () => explore(replica, user),
        (a) => a.history?.c2 === r,
      );
      expect(answer.history, `replica ${replica}`).toEqual({ c1: p, c2: r });
      expect(answer).not.toEqual(before[replica]);
      // The answer changes as the catch-up reloads the user, before it counts what it did and ends: wait for its end.
      const { storeFollow: follow } = await eventually(
        () => health(replica),
        (h) => h.storeFollow.state !== "catching-up",
      );
      expect(follow).toMatchObject({ state: "following", itemsChanged: 1, usersReloaded: 1 });
      const metrics = await (await fetch(`${replicas[replica].url}/metrics`)).text();
      expect(metrics).toMatch(/^freshrec_store_items_changed_total 1$/m);
      expect(metrics).toMatch(/^freshrec_store_users_reloaded_total 1$/m);
      // Grounded under its new cluster, no longer under its old one: the move rebuilt the grounding index, without
      // waiting for the periodic rebuild.
      const grounded = await eventually(
        () => groundedItems(replica),
        (g) => groundedUnder(g, "followed-moving-item", r),
      );
      expect(grounded.get(r), `replica ${replica}`).toContain("followed-moving-item");
      expect(grounded.get(q), `replica ${replica}`).not.toContain("followed-moving-item");
      expect(await groundingRebuilds(replica)).toBeGreaterThan(rebuildsBefore[replica]);
      // ...and says the index holds every change: built after the move was ingested, not stale.
      const { grounding } = await health(replica);
      expect(grounding.stale).toBe(false);
      expect(Date.parse(grounding.builtAt)).toBeGreaterThanOrEqual(movedAt);
      expect(await (await fetch(`${replicas[replica].url}/metrics`)).text()).toMatch(/^freshrec_grounding_stale 0$/m);
    }
    expect(await explore(1, user)).toEqual(await explore(0, user));
  }, 120_000);

  it("a replica cut off from notifications says so, and catches up with what was appended meanwhile once it reconnects", async () => {
    const [{ user, history }] = await usersWithHistory(40, 1);
    const next = otherCluster(history);
    const [keys] = (
      await db.query<{ user_key: number; item_key: number }>(
        "SELECT (SELECT user_key FROM users WHERE user_id = $1) AS user_key, (SELECT item_key FROM items WHERE item_id = $2) AS item_key",
        [user, await itemOf(next)],
      )
    ).rows;
    const ts = await after(user);
    const name = new URL(url).pathname.slice(1);
    const admin = new pg.Client({ connectionString: url.replace(/\/[^/]+$/, "/postgres") });
    await admin.connect();
    try {
      // No new connection to the database from now on (the connections open stay open), so B cannot listen again
      // until this is undone: whatever is notified meanwhile, B does not hear.
      await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
      const cut = await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [`freshrec serve ${replicas[1].child.pid}`]);
      expect(cut.rowCount).toBe(1);
      const degraded = await eventually(
        () => health(1),
        (h) => !h.storeFollow.listening,
      );
      expect(degraded.storeFollow).toMatchObject({ state: "disconnected", listening: false });
      expect(degraded.storeFollow.disconnects).toBeGreaterThanOrEqual(1);
      const metrics = await (await fetch(`${replicas[1].url}/metrics`)).text();
      expect(metrics).toMatch(/^freshrec_store_listener_connected 0$/m);

      // Another writer appends on a connection it holds (the default of events.append_seq numbers it and notifies).
      await db.query("INSERT INTO events (user_key, item_key, ts, engagement) VALUES ($1, $2, epoch_ms($3::BIGINT), NULL)", [keys.user_key, keys.item_key, ts]);
      // B did not hear it: nothing can bring it to B while it cannot connect.
      expect((await explore(1, user)).history).toEqual(history);
    } finally {
      await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
      await admin.end();
    }
    const caughtUp = await eventually(
      () => explore(1, user),
      (b) => b.history?.c2 === next,
    );
    expect(caughtUp.history).toEqual({ c1: history.c2, c2: next });
    const back = await eventually(
      () => health(1),
      (h) => h.storeFollow.state === "following",
    );
    expect(back.storeFollow).toMatchObject({ state: "following", listening: true });
    expect(await (await fetch(`${replicas[1].url}/metrics`)).text()).toMatch(/^freshrec_store_listener_connected 1$/m);
  }, 180_000);
});
