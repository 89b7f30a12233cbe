/**
 * The intake store contract (src/serving/intake-store.ts) on both adapters, and POST /v1/events writing to
 * PostgreSQL (`ServeOptions.intakeEvents`): new users get the next dense keys, every acknowledged event is stored once,
 * an event another process stored first is a duplicate (the first engagement stays), idempotency keys answer again
 * and expire, and the server's in-memory users equal a fresh load from the store after the batches.
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore, type EventStoreContract } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { lockDenseKeys, PostgresEventStore } from "../../src/data/postgres-event-store.js";
import { SyntheticWorld } from "../../src/data/synthetic/index.js";
import { Catalog } from "../../src/serving/catalog.js";
import { DuckDbIntakeStore, PostgresIntakeStore, type IntakeStore } from "../../src/serving/intake-store.js";
import { startServer } from "../../src/serving/server.js";
import { UserIndex } from "../../src/serving/users.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();
const world = () => new SyntheticWorld({ seed: 5, months: 1, users: 40, targetEvents: 1_500, clustersPerDomain: 3, itemsPerCluster: 5 });

interface Opened {
  readonly events: EventStoreContract;
  readonly catalog: Catalog;
  /** A second adapter on the same store, as another process would have. */
  readonly stores: readonly [IntakeStore, IntakeStore];
  close(): Promise<void>;
}

const adapters: Record<"duckdb" | "postgres", () => Promise<Opened>> = {
  duckdb: async () => {
    const dir = tempDir("freshrec-intake-store-");
    const events = await EventStore.open(join(dir, "events.duckdb"));
    await ingestSynthetic(events, world());
    const catalog = await Catalog.load(events);
    const store = new DuckDbIntakeStore(events, catalog);
    return {
      events,
      catalog,
      // One process only: the file's lock keeps every other one out.
      stores: [store, store],
      close: async () => {
        events.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
  postgres: async () => {
    const events = await PostgresEventStore.open(await database());
    await ingestSynthetic(events, world());
    const catalog = await Catalog.load(events);
    const other = await PostgresEventStore.open(events.location);
    return {
      events,
      catalog,
      stores: [new PostgresIntakeStore(events, catalog), new PostgresIntakeStore(other, catalog)],
      close: async () => {
        await other.close();
        await events.close();
      },
    };
  },
};

/**
 * Polls until some connection waits for a lock of one of `locktypes` in `client`'s database (true), or `settled` says
 * the writes being watched ended first (false).
 */
async function lockWaited(client: pg.Client, locktypes: readonly ("relation" | "advisory")[], settled: () => boolean): Promise<boolean> {
  const waiting = "SELECT count(*)::INTEGER AS n FROM pg_locks WHERE NOT granted AND locktype = ANY($1) AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
  while (!settled()) {
    if ((await client.query<{ n: number }>(waiting, [locktypes])).rows[0].n > 0) return true;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return false;
}

const count = async (store: EventStoreContract, sql: string) => Number((await store.query<{ n: number | bigint }>(sql))[0].n);

for (const [name, open] of Object.entries(adapters)) {
  describe(`IntakeStore on ${name}`, () => {
    let opened: Opened;
    beforeAll(async () => {
      opened = await open();
    }, 120_000);
    afterAll(async () => opened?.close());

    it("appends events in one transaction, new users numbered after the largest key, each event stored once", async () => {
      const { events, catalog, stores } = opened;
      const before = await events.counts();
      const maxKey = await count(events, "SELECT max(user_key) AS n FROM users");
      const ts = Date.UTC(2025, 5, 1);
      const batch = [
        { userId: world().userId(3), item: 0, ts, engagement: 0.9 },
        { userId: "intake-new-a", item: 1, ts, engagement: null },
        { userId: "intake-new-b", item: 2, ts: ts + 1, engagement: 0.25 },
        { userId: "intake-new-a", item: 1, ts: ts + 2, engagement: 1 },
      ];
      expect(await stores[0].append(batch)).toEqual([true, true, true, true]);
      const after = await events.counts();
      expect(after.events - before.events).toBe(4);
      expect(after.users - before.users).toBe(2);
      const keys = await events.query<{ user_id: string; k: number }>(
        "SELECT user_id, user_key AS k FROM users WHERE user_id IN ('intake-new-a', 'intake-new-b') ORDER BY user_key",
      );
      expect(keys.map((r) => [r.user_id, Number(r.k)])).toEqual([
        ["intake-new-a", maxKey + 1],
        ["intake-new-b", maxKey + 2],
      ]);
      // The stored rows are the ones given (item keys mapped from the catalog, float32 engagement).
      const stored = await events.query<{ item_id: string; e: number | null }>(
        "SELECT item_id, engagement AS e FROM events JOIN users USING (user_key) JOIN items USING (item_key) WHERE user_id = 'intake-new-b'",
      );
      expect(stored).toEqual([{ item_id: catalog.itemIds[2], e: Math.fround(0.25) }]);
      // The next new user, from the other adapter (another process on PostgreSQL), takes the next key.
      expect(await stores[1].append([{ userId: "intake-new-c", item: 3, ts, engagement: null }])).toEqual([true]);
      expect(await count(events, "SELECT user_key AS n FROM users WHERE user_id = 'intake-new-c'")).toBe(maxKey + 3);
    });

    it("answers recorded idempotency keys until they expire at a later record", async () => {
      const [store] = opened.stores;
      const now = Date.UTC(2025, 5, 2);
      await store.record([{ key: "k-old", bodyHash: "h1", result: '{"eventsAdded":1}' }], now - 10_000, 0);
      await store.record([{ key: "k-new", bodyHash: "h2", result: '{"eventsAdded":2}' }], now, now - 5_000);
      const found = await store.recorded(["k-old", "k-new", "k-none"]);
      expect([...found.keys()]).toEqual(["k-new"]);
      expect(found.get("k-new")).toEqual({ key: "k-new", bodyHash: "h2", result: '{"eventsAdded":2}' });
    });

    if (name === "postgres") {
      it("reports an event another process stored first as not added, keeping the first engagement", async () => {
        const { events, stores } = opened;
        const ts = Date.UTC(2025, 5, 3);
        const event = { userId: "intake-shared", item: 4, ts, engagement: 0.8 };
        expect(await stores[1].append([event])).toEqual([true]);
        // This adapter has not seen that user or event: the store's key tells.
        expect(await stores[0].append([{ ...event, engagement: 0.1 }, { ...event, ts: ts + 1 }])).toEqual([false, true]);
        const rows = await events.query<{ e: number }>(
          "SELECT engagement AS e FROM events JOIN users USING (user_key) WHERE user_id = 'intake-shared' ORDER BY ts",
        );
        expect(rows.map((r) => r.e)).toEqual([Math.fround(0.8), Math.fround(0.8)]);
      });

      it("adds new users while a vacuum or analyze works on the tables, two writers never giving out one key", async () => {
        const { events, catalog, stores } = opened;
        const maxKey = await count(events, "SELECT max(user_key) AS n FROM users");
        // (Auto)vacuum and analyze hold this lock on the table they work on for as long as they run.
        const vacuum = new pg.Client({ connectionString: events.location });
        await vacuum.connect();
        await vacuum.query("BEGIN");
        await vacuum.query("LOCK TABLE clusters, items, users, events, meta IN SHARE UPDATE EXCLUSIVE MODE");
        try {
          const ts = Date.UTC(2025, 5, 4);
          const ingest = {
            userIds: ["vacuum-c"],
            itemIds: [catalog.itemIds[1]],
            chunks: [{ length: 1, userIndex: Int32Array.of(0), itemIndex: Int32Array.of(0), ts: Float64Array.of(ts), engagement: Float32Array.of(Number.NaN) }],
          };
          const writes = Promise.all([
            stores[0].append([{ userId: "vacuum-a", item: 0, ts, engagement: null }]),
            stores[1].append([{ userId: "vacuum-b", item: 0, ts, engagement: null }]),
            events.append({ events: ingest }),
          ]);
          // Until they are done, no write may wait for a table's lock (the writers wait for each other on an advisory one).
          let done = false;
          writes.finally(() => (done = true)).catch(() => undefined);
          if (await lockWaited(vacuum, ["relation"], () => done)) throw new Error("a write waits for the vacuum's lock on a table");
          const [a, b, c] = await writes;
          expect([a, b, c.eventsAdded]).toEqual([[true], [true], 1]);
        } finally {
          await vacuum.query("ROLLBACK");
          await vacuum.end();
        }
        const keys = await events.query<{ k: number }>("SELECT user_key AS k FROM users WHERE user_id LIKE 'vacuum-%' ORDER BY user_key");
        expect(keys.map((r) => Number(r.k))).toEqual([maxKey + 1, maxKey + 2, maxKey + 3]);
      });

      it("gives out the key after the one the writer before it gave, also where the database's default isolation is repeatable read", async () => {
        const { events, catalog } = opened;
        const database = new URL(events.location).pathname.slice(1);
        const maxKey = await count(events, "SELECT max(user_key) AS n FROM users");
        const admin = new pg.Client({ connectionString: events.location });
        await admin.connect();
        const before = new pg.Client({ connectionString: events.location });
        let store: PostgresEventStore | undefined;
        try {
          await admin.query(`ALTER DATABASE ${database} SET default_transaction_isolation = 'repeatable read'`);
          // Connections opened from now on begin their transactions at the database's default.
          store = await PostgresEventStore.open(events.location);
          await before.connect();
          const intake = new PostgresIntakeStore(store, catalog);
          const ts = Date.UTC(2025, 5, 5);
          const writes: [string, (userId: string) => Promise<unknown>][] = [
            ["intake", (userId) => intake.append([{ userId, item: 0, ts, engagement: null }])],
            [
              "ingest",
              (userId) =>
                store!.append({
                  events: {
                    userIds: [userId],
                    itemIds: [catalog.itemIds[0]],
                    chunks: [{ length: 1, userIndex: Int32Array.of(0), itemIndex: Int32Array.of(0), ts: Float64Array.of(ts), engagement: Float32Array.of(Number.NaN) }],
                  },
                }),
            ],
          ];
          for (const [name, write] of writes) {
            // The writer before holds the keys' lock, adds a user, and commits once the write waits for the lock: the
            // write's transaction began before that user existed.
            await before.query("BEGIN");
            await lockDenseKeys(before);
            await before.query("INSERT INTO users (user_key, user_id) SELECT max(user_key) + 1, $1 FROM users", [`isolation-before-${name}`]);
            let settled = false;
            const writing = write(`isolation-${name}`).finally(() => (settled = true));
            writing.catch(() => undefined);
            // Until the write waits for the lock the writer before holds (or ends without waiting: then it says why).
            await lockWaited(before, ["advisory", "relation"], () => settled);
            await before.query("COMMIT");
            await writing;
          }
        } finally {
          await admin.query(`ALTER DATABASE ${database} RESET default_transaction_isolation`);
          await Promise.all([admin.end(), before.end(), store?.close()]);
        }
        const keys = await events.query<{ user_id: string; k: number }>("SELECT user_id, user_key AS k FROM users WHERE user_id LIKE 'isolation-%' ORDER BY user_key");
        expect(keys.map((r) => [r.user_id, Number(r.k)])).toEqual([
          ["isolation-before-intake", maxKey + 1],
          ["isolation-intake", maxKey + 2],
          ["isolation-before-ingest", maxKey + 3],
          ["isolation-ingest", maxKey + 4],
        ]);
      });
    }
  });
}

describe("POST /v1/events with the intake on PostgreSQL", () => {
  it("stores every acknowledged event once in PostgreSQL, and the server's users equal a load from it", async () => {
    const dir = tempDir("freshrec-intake-pg-");
    const embedded = await EventStore.open(join(dir, "events.duckdb"));
    const postgres = await PostgresEventStore.open(await database());
    await ingestSynthetic(embedded, world());
    await ingestSynthetic(postgres, world());
    const server = await startServer({ workspace: dir, events: embedded, intakeEvents: postgres, port: 0, logLevel: "warn", positiveMin: 0.5 });
    try {
      const post = async (events: unknown[], key?: string) => {
        const response = await fetch(`${server.url}/v1/events`, {
          method: "POST",
          headers: { "content-type": "application/json", ...(key ? { "idempotency-key": key } : {}) },
          body: JSON.stringify({ events }),
        });
        return { status: response.status, body: (await response.json()) as Record<string, unknown> };
      };
      const before = await postgres.counts();
      const embeddedBefore = await embedded.counts();
      const item = (k: number) => server.state.catalog.itemIds[k];
      const ts = Date.UTC(2025, 5, 1, 12);
      const stored = await postgres.query<{ user_id: string; item_id: string; ts: number }>(
        "SELECT user_id, item_id, epoch_ms(ts)::FLOAT8 AS ts FROM events JOIN users USING (user_key) JOIN items USING (item_key) ORDER BY ts LIMIT 1",
      );
      const batch = [
        { userId: world().userId(1), itemId: item(0), ts, engagement: 0.9 },
        { userId: "pg-new", itemId: item(1), ts: ts + 1 },
        { userId: "pg-new", itemId: item(2), ts: ts + 2, engagement: 0.7 },
        // A stored event sent again, and a repeat within the batch: neither is added.
        { userId: stored[0].user_id, itemId: stored[0].item_id, ts: stored[0].ts, engagement: 0.1 },
        { userId: "pg-new", itemId: item(1), ts: ts + 1, engagement: 0.2 },
      ];
      const first = await post(batch, "pg-key");
      expect(first).toMatchObject({ status: 200, body: { received: 5, eventsAdded: 3, skippedDuplicates: 2, replayed: false } });
      expect(await post(batch, "pg-key")).toMatchObject({ status: 200, body: { eventsAdded: 3, replayed: true } });
      expect((await post(batch.slice(0, 1), "pg-key")).status).toBe(409);
      // Without the key, every event is known now: nothing is added.
      expect((await post(batch)).body).toMatchObject({ eventsAdded: 0, skippedDuplicates: 5 });
      expect((await postgres.counts()).events - before.events).toBe(3);
      expect((await embedded.counts()).events).toBe(embeddedBefore.events);
      await server.state.queue.idle();
      const reloaded = await UserIndex.load(postgres, server.state.catalog, { positiveMin: 0.5 });
      expect(reloaded.size).toBe(server.state.users.size);
      for (const user of [world().userId(1), "pg-new", stored[0].user_id]) {
        const live = server.state.users.get(user)!;
        const fresh = reloaded.get(user)!;
        expect({ user, history: live.history, recent: [...live.recent], seen: [...live.seen], seenTs: [...live.seenTs] }).toEqual({
          user,
          history: fresh.history,
          recent: [...fresh.recent],
          seen: [...fresh.seen],
          seenTs: [...fresh.seenTs],
        });
      }
    } finally {
      await server.close();
      embedded.close();
      await postgres.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
