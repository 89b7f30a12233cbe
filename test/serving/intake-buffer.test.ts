/**
 * The embedded store's intake buffer (src/data/intake-buffer.ts): intake writes what it acknowledges to a file
 * attached beside the event store, and a mover moves it in. Real DuckDB files in temp folders; the server tests post
 * over loopback.
 * - acknowledged events are in the store exactly once with their users after the server stops, and a second open of
 *   the store (a command) sees them;
 * - a crash between a move's two transactions moves nothing twice; rows written after it are moved;
 * - a store opened read-only refuses a buffer holding unmoved rows, naming its file;
 * - readers (counts, an in-process append) see buffered events first, and new users' keys never clash;
 * - idempotency keys answer the same before and after a move and after a restart;
 * - the outcome attribution writes to the buffer, and an analysis sees its outcomes.
 */
import { copyFileSync, existsSync, renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";
import { intakeBufferPath } from "../../src/data/intake-buffer.js";
import { Catalog } from "../../src/serving/catalog.js";
import { ExperimentLog } from "../../src/serving/experiments/log.js";
import { DuckDbIntakeStore, type IntakeEvent } from "../../src/serving/intake-store.js";
import { startServer, type RunningServer } from "../../src/serving/index.js";
import { servingWorkspace, TOKEN, type ServingWorkspace } from "./fixtures.js";
import { tempDir } from "../temp-dir.js";

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

let ws: ServingWorkspace;
let eventsPath: string;

beforeAll(async () => {
  ws = await servingWorkspace({ users: 150, events: 6_000 });
  eventsPath = join(ws.dir, "events.duckdb");
}, 120_000);

async function post(server: RunningServer, events: unknown[], key?: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${server.url}/v1/events`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(key ? { "idempotency-key": key } : {}) },
    body: JSON.stringify({ events }),
  });
  return { status: res.status, body: await res.json() };
}

/** Rows of the store for these users, as (user id, item id, ts ms). */
async function stored(store: EventStore, userIds: readonly string[]): Promise<string[]> {
  const rows = await store.query<{ user_id: string; item_id: string; ts: bigint }>(
    `SELECT u.user_id, i.item_id, epoch_ms(e.ts) AS ts FROM events e JOIN users u USING (user_key) JOIN items i USING (item_key)
     WHERE list_contains($ids::VARCHAR[], u.user_id) ORDER BY ALL`,
    { ids: [...userIds] },
  );
  return rows.map((r) => `${r.user_id}|${r.item_id}|${Number(r.ts)}`);
}

async function duplicateKeys(store: EventStore): Promise<number> {
  const [row] = await store.query<{ n: bigint }>("SELECT count(*) - count(DISTINCT user_key) + count(*) - count(DISTINCT user_id) AS n FROM users");
  return Number(row.n);
}

describe("the intake buffer behind POST /v1/events", () => {
  it("keeps acknowledged events out of the store's file until a move, then in it exactly once with their users; a second open sees them", async () => {
    const item = ws.world.itemId(2);
    const ts = ws.world.endMs - 5 * 60_000;
    const events = [
      { userId: "buffered-new-1", itemId: item, ts, engagement: 0.9 },
      { userId: "buffered-new-2", itemId: ws.world.itemId(4), ts: ts + 1000 },
      { userId: "u000001", itemId: ws.world.itemId(5), ts: ts + 2000, engagement: 0.7 },
    ];
    const server = await startServer({ workspace: ws.dir, port: 0, logLevel: "silent", validateResponses: true });
    let closed = false;
    try {
      const buffer = server.state.intakeBuffer!;
      // No timed move during the test: what is in the store's file before the close is what intake put there.
      buffer.moveAfterMs = 3_600_000;
      const { status, body } = await post(server, events);
      expect(status).toBe(200);
      expect(body.eventsAdded).toBe(3);
      expect(buffer.status().backlog).toBe(5); // 3 events and 2 new users
      const health: any = await (await fetch(`${server.url}/healthz`)).json();
      expect(health.intakeBuffer).toMatchObject({ backlog: 5, moves: 0, moveFailures: 0 });
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      expect(metrics).toMatch(/^freshrec_intake_buffer_backlog_rows 5$/m);
      // The store's own file has none of them yet: read on a connection of the store that does not move the buffer.
      const store = server.state.events as EventStore;
      const reader = await store.connectReader();
      const inFile = await reader.runAndReadAll("SELECT count(*) FROM users WHERE user_id LIKE 'buffered-new-%'");
      reader.closeSync();
      expect(Number(inFile.getRows()[0][0])).toBe(0);
      await server.close();
      closed = true;
      expect(buffer.status()).toMatchObject({ backlog: 0, moves: 1, rowsMoved: 5 });
    } finally {
      if (!closed) await server.close();
    }
    // A command opening the store after the server stopped (read-only too: the buffer is empty).
    const again = await EventStore.openReadOnly(eventsPath);
    try {
      expect(await stored(again, ["buffered-new-1", "buffered-new-2"])).toEqual([`buffered-new-1|${item}|${ts}`, `buffered-new-2|${ws.world.itemId(4)}|${ts + 1000}`]);
      const [row] = await again.query<{ n: bigint }>("SELECT count(*) AS n FROM events e JOIN users u USING (user_key) WHERE u.user_id = 'u000001' AND epoch_ms(e.ts) = $ts", { ts: ts + 2000 });
      expect(Number(row.n)).toBe(1);
      expect(await duplicateKeys(again)).toBe(0);
    } finally {
      again.close();
    }
    expect(existsSync(intakeBufferPath(eventsPath)!)).toBe(true);
  });

  it("answers an idempotency key the same before and after a move and after a restart", async () => {
    const events = [{ userId: "keyed-user", itemId: ws.world.itemId(7), ts: ws.world.endMs - 60_000, engagement: 0.8 }];
    let server = await startServer({ workspace: ws.dir, port: 0, logLevel: "silent" });
    let first: any;
    try {
      server.state.intakeBuffer!.moveAfterMs = 3_600_000;
      first = await post(server, events, "key-1");
      expect(first.status).toBe(200);
      expect(first.body).toMatchObject({ eventsAdded: 1, replayed: false });
      expect((await post(server, events, "key-1")).body).toEqual({ ...first.body, replayed: true });
      await server.state.moveIntake();
      expect(server.state.intakeBuffer!.status().backlog).toBe(0);
      expect((await post(server, events, "key-1")).body).toEqual({ ...first.body, replayed: true });
      expect((await post(server, [{ ...events[0], engagement: 0.1 }], "key-1")).status).toBe(409);
    } finally {
      await server.close();
    }
    server = await startServer({ workspace: ws.dir, port: 0, logLevel: "silent" });
    try {
      expect((await post(server, events, "key-1")).body).toEqual({ ...first.body, replayed: true });
    } finally {
      await server.close();
    }
    const store = await EventStore.open(eventsPath);
    try {
      expect(await stored(store, ["keyed-user"])).toHaveLength(1);
    } finally {
      store.close();
    }
  });

  it("still answers the idempotency keys an earlier server recorded in the event store's file", async () => {
    const events = [{ userId: "old-keyed-user", itemId: ws.world.itemId(8), ts: ws.world.endMs - 90_000 }];
    let server = await startServer({ workspace: ws.dir, port: 0, logLevel: "silent" });
    const first = await post(server, events, "old-key");
    await server.close();
    // The layout before the buffer: the keys in the event store's file, no buffer file.
    const store = await EventStore.open(eventsPath);
    await store.connection.run("CREATE TABLE intake_keys AS SELECT * FROM freshrec_intake.intake_keys");
    store.close();
    for (const file of [intakeBufferPath(eventsPath)!, `${intakeBufferPath(eventsPath)!}.wal`]) rmSync(file, { force: true });
    server = await startServer({ workspace: ws.dir, port: 0, logLevel: "silent" });
    try {
      expect((await post(server, events, "old-key")).body).toEqual({ ...first.body, replayed: true });
    } finally {
      await server.close();
    }
  });

  it("attributes outcomes inside intake without writing the store's file, and an analysis sees them", async () => {
    const server = await startServer({ workspace: ws.dir, port: 0, logLevel: "silent", adminToken: TOKEN, flushIntervalMs: 3_600_000 });
    try {
      server.state.intakeBuffer!.moveAfterMs = 3_600_000;
      const admin = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" };
      const created = await fetch(`${server.url}/v1/experiments`, {
        method: "POST",
        headers: admin,
        body: JSON.stringify({ definition: { name: "buffered-exp", arms: [{ name: "control", table: ws.plain }, { name: "treatment", table: ws.rag }] } }),
      });
      expect(created.status).toBe(200);
      const user = "u000003";
      const served: any = await (await fetch(`${server.url}/v1/users/${user}/exploration?n=3`)).json();
      const slot = served.recommendations[0];
      const moves = server.state.intakeBuffer!.status().moves;
      const { body } = await post(server, [{ userId: user, itemId: slot.items[0].itemId, ts: server.state.options.clock.now(), engagement: 0.95 }]);
      expect(body.outcomesAttributed).toBe(1);
      // The exposure and the outcome wait in the buffer: no move ran for them.
      expect(server.state.intakeBuffer!.status().moves).toBe(moves);
      expect(server.state.intakeBuffer!.status().backlog).toBeGreaterThanOrEqual(3); // exposure slots, the event, the outcome
      const analysis: any = await (await fetch(`${server.url}/v1/experiments/buffered-exp/analysis`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
      const arms = Object.values(analysis.arms) as { exposures: number; satisfied: number }[];
      expect(arms.reduce((n, a) => n + a.exposures, 0)).toBe(1);
      expect(arms.reduce((n, a) => n + a.satisfied, 0)).toBe(1);
      expect(server.state.intakeBuffer!.status().backlog).toBe(0);
    } finally {
      await server.close();
    }
  });
});

describe("the intake buffer's moves", () => {
  /** A store with the fixture's catalog and users, and an intake store on it. */
  async function openIntake() {
    const store = await EventStore.open(eventsPath);
    const catalog = await Catalog.load(store);
    const intake = new DuckDbIntakeStore(store, catalog);
    const buffer = await intake.buffer();
    buffer.moveAfterMs = 3_600_000;
    const event = (userId: string, item: number, minutesBack: number): IntakeEvent => ({ userId, item, ts: ws.world.endMs - minutesBack * 60_000, engagement: 0.6 });
    return { store, catalog, intake, buffer, event };
  }

  it("after a crash between moving and deleting, moves nothing twice and moves what came after", async () => {
    let { store, intake, buffer, event } = await openIntake();
    await intake.append([event("crash-a", 1, 30), event("crash-a", 2, 29), event("u000002", 3, 28)]);
    // The first step only: the rows are in the store and the seq recorded, the buffer still holds them.
    expect(await buffer.moveCommitted()).toBe(4);
    await intake.append([event("crash-b", 4, 27), event("crash-a", 5, 26)]);
    // In this process a move after it skips the rows already moved.
    expect(await buffer.moveCommitted()).toBe(3);
    await intake.append([event("crash-c", 6, 25)]);
    store.close(); // a crash: nothing drained or deleted
    // A reader cannot move the rows, so it refuses, naming the file.
    await expect(EventStore.openReadOnly(eventsPath)).rejects.toThrow(new RegExp(`intake buffer ${escape(intakeBufferPath(eventsPath)!)} holds 2 rows`));
    // A cold start deletes the moved rows and moves the rest.
    store = await EventStore.open(eventsPath);
    try {
      const rows = await stored(store, ["crash-a", "crash-b", "crash-c", "u000002"]);
      expect(rows.filter((r) => r.startsWith("crash-a"))).toHaveLength(3);
      expect(rows.filter((r) => r.startsWith("crash-b"))).toHaveLength(1);
      expect(rows.filter((r) => r.startsWith("crash-c"))).toHaveLength(1);
      expect(rows.filter((r) => r.startsWith("u000002") && r.endsWith(String(ws.world.endMs - 28 * 60_000)))).toHaveLength(1);
      expect(await duplicateKeys(store)).toBe(0);
      const buffered = await store.query<{ n: bigint }>("SELECT (SELECT count(*) FROM freshrec_intake.events) + (SELECT count(*) FROM freshrec_intake.users) AS n");
      expect(Number(buffered[0].n)).toBe(0);
    } finally {
      store.close();
    }
    const reader = await EventStore.openReadOnly(eventsPath);
    reader.close();
  });

  it("never moves a buffer into a store that replaced the one it was made beside", async () => {
    const dir = tempDir("freshrec-intake-replaced-");
    const path = join(dir, "events.duckdb");
    try {
      copyFileSync(eventsPath, path);
      let store = await EventStore.open(path);
      const intake = new DuckDbIntakeStore(store, await Catalog.load(store));
      (await intake.buffer()).moveAfterMs = 3_600_000;
      await intake.append([{ userId: "replaced-new", item: 1, ts: ws.world.endMs - 60_000, engagement: null }]);
      store.close(); // a crash: the rows stay buffered
      renameSync(path, join(dir, "aside.duckdb"));
      rmSync(`${path}.wal`, { force: true });
      // An empty store in its place (what freshrec makes when the old one was moved aside).
      await expect(EventStore.open(path)).rejects.toThrow(new RegExp(`intake buffer ${escape(intakeBufferPath(path)!)} holds 2 rows of another event store than ${escape(path)}`));
      rmSync(path, { force: true });
      rmSync(`${path}.wal`, { force: true });
      // The store it belongs to, put back: the rows move into it.
      renameSync(join(dir, "aside.duckdb"), path);
      store = await EventStore.open(path);
      try {
        expect(await stored(store, ["replaced-new"])).toHaveLength(1);
      } finally {
        store.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("checkpoints the store itself after a timed move once its log is full (DuckDB's own checkpoint out of reach while intake writes), and the buffer in quiet moments", async () => {
    const { store, intake, buffer, event } = await openIntake();
    buffer.moveAfterMs = 20;
    try {
      await intake.append([event("u000004", 1, 50)]);
      const [[threshold]] = (await store.connection.runAndReadAll("SELECT current_setting('checkpoint_threshold')")).getRows() as [[string]];
      expect(threshold).toMatch(/TiB$/);
      // The timed move of that append: the store's log is far from full.
      for (let k = 0; k < 100 && buffer.pending; k++) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(buffer.status()).toMatchObject({ backlog: 0, storeCheckpoints: 0 });
      // Any log is full now; the next timed move checkpoints the store after it.
      buffer.storeCheckpointLogBytes = 1;
      await intake.append([event("u000004", 2, 49)]);
      for (let k = 0; k < 100 && buffer.status().storeCheckpoints === 0; k++) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(buffer.status()).toMatchObject({ backlog: 0, storeCheckpoints: 1 });
      expect(existsSync(`${eventsPath}.wal`) ? statSync(`${eventsPath}.wal`).size : 0).toBe(0);
      // A quiet moment's upkeep also empties the buffer's log, whatever it holds.
      await intake.append([event("u000004", 3, 48)]);
      const walOf = (file: string) => (existsSync(`${file}.wal`) ? statSync(`${file}.wal`).size : 0);
      expect(walOf(intakeBufferPath(eventsPath)!)).toBeGreaterThan(0);
      const before = buffer.status().bufferCheckpoints;
      expect(await buffer.settle(Number.POSITIVE_INFINITY)).toBe(true);
      expect(buffer.status()).toMatchObject({ backlog: 0, bufferCheckpoints: before + 1 });
      expect(walOf(intakeBufferPath(eventsPath)!)).toBe(0);
    } finally {
      await store.drainIntake();
      store.close();
    }
  });

  it("retries a failed move until it succeeds, dropping no row, and tells of each failure", async () => {
    const { store, intake, buffer, event } = await openIntake();
    const told: unknown[] = [];
    buffer.onMoveError = (error) => told.push(error);
    buffer.moveAfterMs = 20;
    const until = async (done: () => boolean) => {
      for (let k = 0; k < 100 && !done(); k++) await new Promise((resolve) => setTimeout(resolve, 20));
    };
    try {
      await intake.append([event("u000001", 1, 41)]);
      await until(() => !buffer.pending);
      // Another writer takes the key intake gives its next new user (on the store's own connection, which does not
      // move the buffer, and without telling intake).
      const [[next]] = (await store.connection.runAndReadAll("SELECT max(user_key) + 1 FROM users")).getRows() as [[number]];
      await store.connection.run("INSERT INTO users VALUES ($key, 'squatter')", { key: next });
      await intake.append([event("retry-new", 1, 40), event("retry-new", 2, 39)]);
      await until(() => told.length >= 2);
      expect(told.length).toBeGreaterThanOrEqual(2);
      expect(String(told[0])).toMatch(/moving the intake buffer .* failed, nothing was moved \(retried\).*Duplicate key/s);
      await expect(buffer.drain()).rejects.toThrow(/Duplicate key/);
      expect(buffer.status()).toMatchObject({ backlog: 3, lastMoveError: expect.stringMatching(/Duplicate key/) });
      expect(buffer.status().moveFailures).toBeGreaterThanOrEqual(3);
      // Once the key is free, the timer's retry moves everything.
      await store.connection.run("DELETE FROM users WHERE user_id = 'squatter'");
      await until(() => !buffer.pending);
      expect(buffer.status().backlog).toBe(0);
      expect(await stored(store, ["retry-new"])).toHaveLength(2);
    } finally {
      buffer.onMoveError = null;
      await store.connection.run("DELETE FROM users WHERE user_id = 'squatter'");
      await store.drainIntake();
      store.close();
    }
  });

  it("reads the users for a cold append without waiting for the mover (whose store checkpoint may run long)", async () => {
    const { store, intake, buffer, event } = await openIntake();
    const exclusive = (buffer as unknown as { exclusive: (task: () => Promise<void>) => Promise<void> }).exclusive.bind(buffer);
    let release = () => {};
    const held = exclusive(() => new Promise<void>((resolve) => (release = resolve)));
    // The first append of this intake store reads every user's key.
    const appended = intake.append([event("cold-read-1", 1, 14)]).then(() => "appended");
    try {
      const waited = new Promise<string>((resolve) => setTimeout(() => resolve("waited"), 5_000).unref());
      expect(await Promise.race([appended, waited])).toBe("appended");
    } finally {
      release();
      await held;
      await appended;
      await store.drainIntake();
      expect(await duplicateKeys(store)).toBe(0);
      expect(await stored(store, ["cold-read-1"])).toHaveLength(1);
      await store.closeIntake();
      store.close();
    }
  });

  it("reads the keys of a store of hundreds of thousands of users for a cold append, and keys a new user after them", async () => {
    const dir = tempDir("freshrec-intake-many-users-");
    const path = join(dir, "events.duckdb");
    copyFileSync(eventsPath, path);
    const store = await EventStore.open(path);
    try {
      // More users than a call's arguments can hold (what the bench's store of 150,000 users ran into).
      await store.connection.run("INSERT INTO users SELECT 1000000 + i, 'bulk-' || i FROM range(300000) t(i)");
      const intake = new DuckDbIntakeStore(store, await Catalog.load(store));
      (await intake.buffer()).moveAfterMs = 3_600_000;
      await intake.append([{ userId: "after-bulk", item: 1, ts: ws.world.endMs - 60_000, engagement: null }]);
      await store.drainIntake();
      const [row] = await store.query<{ user_key: number }>("SELECT user_key FROM users WHERE user_id = 'after-bulk'");
      expect(Number(row.user_key)).toBe(1_300_000);
      expect(await duplicateKeys(store)).toBe(0);
    } finally {
      await store.closeIntake();
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("lets readers and an in-process append see buffered events first; new users' keys never clash", async () => {
    const { store, intake, buffer, event } = await openIntake();
    try {
      const before = (await store.counts()).events;
      await intake.append([event("reader-new-1", 1, 20), event("reader-new-2", 2, 19)]);
      expect(buffer.pending).toBe(true);
      // A read moves the buffer first.
      expect((await store.counts()).events).toBe(before + 2);
      expect(buffer.pending).toBe(false);
      // A buffer transaction that wrote nothing (an attribution without outcomes, a rolled-back append) leaves
      // nothing for a read to move.
      buffer.abandoned(buffer.allocate());
      expect(buffer.pending).toBe(false);
      await intake.append([event("reader-new-3", 3, 18)]);
      // An append numbers its new users after the buffered ones: it moves them first.
      const itemId = ws.world.itemId(9);
      await store.append({ events: eventBatchFromEvents([{ userId: "ingested-new", itemId, ts: ws.world.endMs - 17 * 60_000, engagement: 0.5 }]) });
      // And intake numbers its next new user after the append's.
      await intake.append([event("reader-new-4", 4, 16)]);
      await store.drainIntake();
      expect(await duplicateKeys(store)).toBe(0);
      expect(await stored(store, ["reader-new-1", "reader-new-2", "reader-new-3", "reader-new-4", "ingested-new"])).toHaveLength(5);
    } finally {
      await store.drainIntake();
      store.close();
    }
  });
});

describe("the intake buffer on a store of its own", () => {
  /** A new store in a temp folder, its buffer never moving by itself, and an experiment log on the buffer. */
  async function fresh() {
    const dir = tempDir("freshrec-intake-");
    const path = join(dir, "events.duckdb");
    const store = await EventStore.open(path);
    const buffer = await store.intakeBuffer();
    buffer.moveAfterMs = 3_600_000;
    const log = await ExperimentLog.open(store, buffer);
    const done = async () => {
      await store.closeIntake();
      store.close();
      rmSync(dir, { recursive: true, force: true });
    };
    return { dir, path, store, buffer, log, done };
  }
  const exposure = (log: ExperimentLog, id: string, user: string) =>
    log.logExposure({ exposureId: id, experiment: "e", arm: "a", userId: user, ts: 1000, tableVersion: null, coldStart: false, slots: [{ rank: 1, cluster: "c1", items: ["i1"] }] });
  const engaged = (user: string) => [{ userId: user, itemId: "i1", clusterId: "c1", ts: 2000, engagement: 1, negative: false }];

  it("counts an attribution's outcomes by what it inserted, whatever the mover deletes meanwhile", async () => {
    const { store, buffer, log, done } = await fresh();
    try {
      exposure(log, "x1", "u1");
      exposure(log, "x2", "u2");
      await log.flush();
      expect(await log.attributeOutcomes("e", engaged("u1"), 10_000, null)).toBe(1);
      // A timed move's first step: the first outcome is in the store and still in the buffer...
      await buffer.moveCommitted();
      // ...and its delete lands right after the next attribution's INSERT, on the mover's connection.
      const c = buffer.connection;
      const run = c.run.bind(c);
      c.run = (async (sql: string, ...rest: unknown[]) => {
        const result = await (run as (...a: unknown[]) => Promise<unknown>)(sql, ...rest);
        if (sql.startsWith("INSERT INTO experiment_outcomes")) await buffer.deleteMoved();
        return result;
      }) as typeof c.run;
      const added = await log.attributeOutcomes("e", engaged("u2"), 10_000, null);
      c.run = run;
      expect(added).toBe(1);
      expect(buffer.pending).toBe(true);
      const [row] = await store.query<{ n: bigint }>("SELECT count(*) AS n FROM experiment_outcomes");
      expect(Number(row.n)).toBe(2);
    } finally {
      await done();
    }
  });

  it("closes while a move or a checkpoint runs: the close waits for it, and what is buffered is moved exactly once at the next open", async () => {
    const { path, store, buffer, log, done } = await fresh();
    const exposures = async (s: EventStore) => Number((await s.query<{ n: bigint }>("SELECT count(*) AS n FROM experiment_exposures"))[0].n);
    const within = <T>(p: Promise<T>, what: string) =>
      Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} did not end`)), 20_000).unref())]);
    let reopened: EventStore | null = null;
    try {
      // A log for a checkpoint of the store to write for a while (DuckDB's own checkpoint kept off, as intake does).
      await store.connection.run("SET checkpoint_threshold = '1000TB'");
      await store.connection.run("INSERT INTO events SELECT range % 1000, range % 777, TIMESTAMP '2024-01-01' + INTERVAL (range) SECOND, random() FROM range(1500000)");
      exposure(log, "x1", "u1");
      await log.flush();
      // A quiet moment's upkeep: a move, then a checkpoint of the store; the store closes meanwhile.
      let settled = false;
      const settling = buffer.settle(1).finally(() => (settled = true));
      await new Promise((resolve) => setTimeout(resolve, 20));
      exposure(log, "x2", "u2");
      await log.flush();
      // A drain asked for just before the close: it does not start once the buffer closes.
      const draining = buffer.drain();
      await within(store.closeIntake(), "closing the intake buffer");
      expect(settled).toBe(true);
      await settling;
      await draining;
      store.close();
      reopened = await within(EventStore.open(path), "opening the store again");
      expect(await exposures(reopened)).toBe(2);
      const [left] = await reopened.query<{ n: bigint }>("SELECT count(*) AS n FROM freshrec_intake.experiment_exposures");
      expect(Number(left.n)).toBe(0);
    } finally {
      reopened?.close();
      await done();
    }
  }, 60_000);

  it("gives out one seq at a time: a second writer is refused until the first commits or abandons its seq, and a failed write abandons it", async () => {
    const { buffer, log, done } = await fresh();
    try {
      const seq = buffer.allocate();
      expect(() => buffer.allocate()).toThrow(new RegExp(`gave out seq ${seq}, not committed or abandoned yet`));
      buffer.abandoned(seq);
      buffer.committed(buffer.allocate(), 0);
      // An exposure flush whose transaction fails tells the buffer, so the next one writes.
      const c = buffer.connection;
      const run = c.run.bind(c);
      c.run = (async (sql: string, ...rest: unknown[]) => {
        if (sql === "COMMIT") throw new Error("commit refused");
        return (run as (...a: unknown[]) => Promise<unknown>)(sql, ...rest);
      }) as typeof c.run;
      exposure(log, "x1", "u1");
      await expect(log.flush()).rejects.toThrow(/commit refused/);
      c.run = run;
      await log.flush();
      expect(buffer.pending).toBe(true);
    } finally {
      await done();
    }
  });

  it("after a move, a failed delete from the buffer is counted and told, not thrown to readers, and the next move deletes it", async () => {
    const { store, buffer, log, done } = await fresh();
    try {
      const told: unknown[] = [];
      buffer.onMoveError = (error) => told.push(error);
      const mover = (buffer as unknown as { mover: { run: (sql: string, ...rest: unknown[]) => Promise<unknown> } }).mover;
      const run = mover.run.bind(mover);
      mover.run = async (sql, ...rest) => {
        if (sql.startsWith("DELETE FROM")) throw new Error("delete refused");
        return run(sql, ...rest);
      };
      exposure(log, "x1", "u1");
      await log.flush();
      // A reader: the move succeeded, so it reads the exposure.
      const [row] = await store.query<{ n: bigint }>("SELECT count(*) AS n FROM experiment_exposures");
      expect(Number(row.n)).toBe(1);
      expect(told).toHaveLength(1);
      expect(String(told[0])).toMatch(/delete refused/);
      expect(buffer.status()).toMatchObject({ moveFailures: 1, backlog: 0 });
      mover.run = run;
      exposure(log, "x2", "u2");
      await log.flush();
      await store.drainIntake();
      const [after] = await store.query<{ stored: bigint; buffered: bigint }>(
        "SELECT (SELECT count(*) FROM experiment_exposures) AS stored, (SELECT count(*) FROM freshrec_intake.experiment_exposures) AS buffered",
      );
      expect([Number(after.stored), Number(after.buffered)]).toEqual([2, 0]);
    } finally {
      await done();
    }
  });

  it("names the file in the errors of the store's checkpoint and of the idempotency keys' read", async () => {
    const { path, store, buffer, log, done } = await fresh();
    try {
      exposure(log, "x1", "u1");
      await log.flush();
      await store.drainIntake();
      const mover = (buffer as unknown as { mover: { run: (sql: string, ...rest: unknown[]) => Promise<unknown> } }).mover;
      const run = mover.run.bind(mover);
      mover.run = async (sql, ...rest) => {
        if (sql.startsWith("CHECKPOINT")) throw new Error("checkpoint refused");
        return run(sql, ...rest);
      };
      await expect(buffer.settle(1)).rejects.toThrow(new RegExp(`checkpointing the event store ${escape(path)} failed .*checkpoint refused`));
      mover.run = run;
      const intake = new DuckDbIntakeStore(store, { itemCount: 0, itemOfKey: [] } as unknown as Catalog);
      await buffer.connection.run("DROP TABLE intake_keys");
      await expect(intake.recorded(["k"])).rejects.toThrow(new RegExp(`idempotency keys from the intake buffer ${escape(intakeBufferPath(path)!)} failed`));
    } finally {
      await done();
    }
  });

  it("refuses to move a buffer into an older copy of its store put back, naming both files", async () => {
    const dir = tempDir("freshrec-intake-");
    const path = join(dir, "events.duckdb");
    const open = async () => {
      const store = await EventStore.open(path);
      const intake = new DuckDbIntakeStore(store, await Catalog.load(store));
      (await intake.buffer()).moveAfterMs = 3_600_000;
      return { store, intake };
    };
    try {
      let store = await EventStore.open(path);
      await store.append({
        clusters: [{ id: "c1", description: "c" }],
        items: [{ id: "i1", clusterId: "c1", title: "t" }, { id: "i2", clusterId: "c1", title: "t" }],
        events: eventBatchFromEvents([{ userId: "old", itemId: "i1", ts: 1_000_000, engagement: 1 }]),
      });
      store.close();
      let intake;
      ({ store, intake } = await open());
      await intake.append([{ userId: "old", item: 0, ts: 2_000_000, engagement: 1 }]);
      await store.drainIntake();
      store.close();
      copyFileSync(path, join(dir, "backup.duckdb"));
      ({ store, intake } = await open());
      // A user the backup never had, moved into the live store; then an event of that user, left buffered.
      await intake.append([{ userId: "gap-user", item: 0, ts: 3_000_000, engagement: 1 }]);
      await store.drainIntake();
      await intake.append([{ userId: "gap-user", item: 1, ts: 4_000_000, engagement: 1 }]);
      await store.closeIntake();
      store.close();
      rmSync(`${path}.wal`, { force: true });
      copyFileSync(join(dir, "backup.duckdb"), path);
      const buffer = escape(intakeBufferPath(path)!);
      await expect(EventStore.open(path)).rejects.toThrow(new RegExp(`intake buffer ${buffer} holds 1 rows .*event store ${escape(path)} .*an older copy of it was put back.*move ${buffer} aside`));
      // The way out named: with the buffer moved aside, the backup opens and holds no event of a user it lacks.
      renameSync(intakeBufferPath(path)!, join(dir, "aside.duckdb"));
      rmSync(`${intakeBufferPath(path)!}.wal`, { force: true });
      store = await EventStore.open(path);
      const [orphans] = await store.query<{ n: bigint }>("SELECT count(*) AS n FROM events e ANTI JOIN users u USING (user_key)");
      expect(Number(orphans.n)).toBe(0);
      store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("says, when an open cannot move a leftover buffer, what failed and the way out", async () => {
    const dir = tempDir("freshrec-intake-");
    const path = join(dir, "events.duckdb");
    const bufferPath = intakeBufferPath(path)!;
    try {
      let store = await EventStore.open(path);
      await store.append({
        clusters: [{ id: "c1", description: "c" }],
        items: [{ id: "i1", clusterId: "c1", title: "t" }],
        events: eventBatchFromEvents([{ userId: "dup", itemId: "i1", ts: 1_000_000, engagement: 1 }]),
      });
      const buffer = await store.intakeBuffer();
      // A buffered user the store has under another key: every move of it fails.
      await buffer.connection.run("INSERT INTO users VALUES (1, 99, 'dup')");
      await store.closeIntake();
      store.close();
      const error = await EventStore.open(path).then(
        () => null,
        (e: unknown) => e as Error,
      );
      expect(error?.message).toMatch(new RegExp(`intake buffer ${escape(bufferPath)} holds rows .* cannot be moved into the event store ${escape(path)} .*move ${escape(bufferPath)} aside`));
      expect(error?.message).not.toMatch(/retried/);
      renameSync(bufferPath, join(dir, "aside.duckdb"));
      rmSync(`${bufferPath}.wal`, { force: true });
      store = await EventStore.open(path);
      expect((await store.counts()).events).toBe(1);
      store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
