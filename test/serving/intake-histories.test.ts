/**
 * Incremental intake equals a recount. The server applies each intake group to its users' states in place
 * (src/serving/users.ts, histories.ts); here the same events are counted again from the store from scratch, three
 * ways: mining's SQL (historiesAsOf), a fresh start-up load, and a plain recount written out below. Batches arrive
 * concurrently (so several go into one group write), with times out of order within and across batches, ties on
 * time, duplicates within a batch, of earlier batches and of the synthetic store (with another engagement: the first
 * stored value wins), engagement at and around positiveMin (0.7 is not a float32: stored, it is just below 0.7),
 * negative feedback, new users, and idempotency keys (repeated, and sent twice at once).
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld } from "../../src/data/synthetic/index.js";
import { DAY_MS } from "../../src/domain/clock.js";
import { historiesAsOf } from "../../src/mining/transitions.js";
import { EventLists } from "../../src/serving/event-lists.js";
import { emptyTail, extendRecent, extendTail } from "../../src/serving/histories.js";
import { startServer, type RunningServer } from "../../src/serving/server.js";
import { UserIndex, type UserState } from "../../src/serving/users.js";
import { seededRandom } from "../../src/domain/random.js";
import { tempDir } from "../temp-dir.js";

/** The project's seeded generator, so a failure can be replayed. */
const random = seededRandom;

/** The last two runs of a positive cluster sequence, recounted from the whole sequence. */
function lastTwoRuns(clusters: readonly number[]): { c1: number; c2: number } {
  const runs: number[] = [];
  for (const c of clusters) if (runs.at(-1) !== c) runs.push(c);
  return { c1: runs.length >= 2 ? runs.at(-2)! : -1, c2: runs.length ? runs.at(-1)! : -1 };
}

describe("histories.ts against a recount of the whole sequence", () => {
  it("extendTail gives the last two runs after every insertion, in any order", () => {
    const next = random(19);
    for (let trial = 0; trial < 2000; trial++) {
      const n = 1 + Math.floor(next() * 12);
      // Few times and items so that ties on time (broken by item) are common.
      const keys = new Map<string, { ts: number; item: number }>();
      while (keys.size < n) {
        const e = { ts: Math.floor(next() * 6), item: Math.floor(next() * 6) };
        keys.set(`${e.ts}:${e.item}`, e);
      }
      const clusterOf = (item: number) => item % 3;
      const tail = emptyTail();
      const inserted: { ts: number; item: number }[] = [];
      for (const e of keys.values()) {
        extendTail(tail, e.ts, e.item, clusterOf(e.item));
        inserted.push(e);
        const ordered = [...inserted].sort((a, b) => a.ts - b.ts || a.item - b.item);
        expect({ c1: tail.c1, c2: tail.c2 }).toEqual(lastTwoRuns(ordered.map((x) => clusterOf(x.item))));
      }
    }
  });

  it("extendRecent keeps the newest distinct items by their latest event, in any order", () => {
    const next = random(23);
    for (let trial = 0; trial < 1000; trial++) {
      const limit = Math.floor(next() * 4);
      const recent = new EventLists(0);
      const u = recent.add(0);
      const inserted: { ts: number; item: number }[] = [];
      for (let k = 0; k < 15; k++) {
        const e = { ts: Math.floor(next() * 8), item: Math.floor(next() * 7) };
        if (inserted.some((x) => x.ts === e.ts && x.item === e.item)) continue;
        inserted.push(e);
        extendRecent(recent, u, e.ts, e.item, limit);
        const newestFirst = [...inserted].sort((a, b) => b.ts - a.ts || b.item - a.item);
        const expected: number[] = [];
        for (const x of newestFirst) if (expected.length < limit && !expected.includes(x.item)) expected.push(x.item);
        expect(recent.copy(u).items).toEqual(expected);
      }
    }
  });
});

describe("POST /v1/events updates histories incrementally, equal to a recount", () => {
  const POSITIVE_MIN = 0.7;
  const RECENT = 4;
  let dir: string;
  let store: EventStore;
  let server: RunningServer;
  let world: SyntheticWorld;

  beforeAll(async () => {
    dir = tempDir("freshrec-intake-histories-");
    world = new SyntheticWorld({ seed: 11, months: 1, users: 120, targetEvents: 4_000, clustersPerDomain: 3, itemsPerCluster: 6 });
    store = await EventStore.open(join(dir, "events.duckdb"));
    await ingestSynthetic(store, world);
    server = await startServer({ workspace: dir, events: store, port: 0, logLevel: "warn", positiveMin: POSITIVE_MIN, recentItems: RECENT });
  }, 60_000);

  afterAll(async () => {
    await server?.close();
    store?.close();
  });

  async function post(body: unknown, key?: string): Promise<{ status: number; body: any }> {
    const response = await fetch(`${server.url}/v1/events`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(key ? { "idempotency-key": key } : {}) },
      body: JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  }

  interface Recounted {
    history: { c1: number; c2: number } | null;
    lastCluster: number;
    recent: number[];
    seen: number[];
    seenTs: number[];
  }

  /** Every user's state recounted from the stored events alone (no code of src/serving/users.ts). */
  async function recount(): Promise<Map<string, Recounted>> {
    const catalog = server.state.catalog;
    const rows = await store.query<{ user_id: string; item_id: string; ts: number; engagement: number | null }>(
      "SELECT user_id, item_id, epoch_ms(ts)::DOUBLE AS ts, engagement FROM events JOIN users USING (user_key) JOIN items USING (item_key)",
    );
    const byUser = new Map<string, { ts: number; item: number; positive: boolean }[]>();
    for (const r of rows) {
      let list = byUser.get(r.user_id);
      if (!list) byUser.set(r.user_id, (list = []));
      list.push({ ts: r.ts, item: catalog.itemIndex.get(r.item_id)!, positive: r.engagement === null || r.engagement >= POSITIVE_MIN });
    }
    const out = new Map<string, Recounted>();
    for (const [user, list] of byUser) {
      list.sort((a, b) => a.ts - b.ts || a.item - b.item);
      const positives = list.filter((e) => e.positive);
      const { c1, c2 } = lastTwoRuns(positives.map((e) => catalog.itemCluster[e.item]));
      const recent: number[] = [];
      for (const e of [...positives].reverse()) if (recent.length < RECENT && !recent.includes(e.item)) recent.push(e.item);
      out.set(user, {
        history: c1 >= 0 ? { c1, c2 } : null,
        lastCluster: c2,
        recent,
        // Every stored event's identity, ordered by (item, ts).
        ...(() => {
          const byItem = [...list].sort((a, b) => a.item - b.item || a.ts - b.ts);
          return { seen: byItem.map((e) => e.item), seenTs: byItem.map((e) => e.ts) };
        })(),
      });
    }
    return out;
  }

  const plain = (s: UserState) => ({ ...s, recent: [...s.recent], recentTs: [...s.recentTs], seen: [...s.seen], seenTs: [...s.seenTs], tail: { ...s.tail } });

  async function expectEqualToRecount(): Promise<number> {
    await server.state.queue.idle();
    const live = server.state.users;
    const catalog = server.state.catalog;
    const counted = await recount();
    const mined = await historiesAsOf(store, Date.UTC(2200, 0, 1), { positiveMin: POSITIVE_MIN });
    const reloaded = await UserIndex.load(store, catalog, { positiveMin: POSITIVE_MIN, recentItems: RECENT });
    expect(live.size).toBe(counted.size);
    expect(reloaded.size).toBe(counted.size);
    let withHistory = 0;
    for (const [user, expected] of counted) {
      const state = live.get(user)!;
      expect({ user, history: state.history, lastCluster: state.lastCluster, recent: [...state.recent], seen: [...state.seen], seenTs: [...state.seenTs] }).toEqual({
        user,
        ...expected,
      });
      for (let k = 0; k < state.seen.length; k++) expect(live.holds(user, state.seen[k], state.seenTs[k])).toBe(true);
      const h = mined.get(user);
      expect(state.history && { c1: catalog.clusterIds[state.history.c1], c2: catalog.clusterIds[state.history.c2] }).toEqual(h ?? null);
      // The whole state, what lets later events be applied too, is the one a start-up builds.
      expect(plain(state)).toEqual(plain(reloaded.get(user)!));
      if (state.history) withHistory++;
    }
    return withHistory;
  }

  it("after rounds of concurrent out-of-order batches with duplicates, keys and low engagement", async () => {
    expect(await expectEqualToRecount()).toBeGreaterThan(50);
    const next = random(7);
    const items = (await store.query<{ item_id: string }>("SELECT item_id FROM items ORDER BY item_key")).map((r) => r.item_id);
    const users = [...Array.from({ length: 25 }, (_, k) => world.userId(k * 4)), ...Array.from({ length: 8 }, (_, k) => `new-user-${k}`)];
    // Stored synthetic events of those users: sent again with another engagement, they must change nothing.
    const storedRows = await store.query<{ user_id: string; item_id: string; ts: number; engagement: number | null }>(
      `SELECT user_id, item_id, epoch_ms(ts)::DOUBLE AS ts, engagement FROM events JOIN users USING (user_key) JOIN items USING (item_key)
       WHERE user_id IN (${users.map((u) => `'${u}'`).join(",")}) ORDER BY ts`,
    );
    const span = world.endMs - world.startMs;
    const pick = <T>(list: readonly T[]) => list[Math.floor(next() * list.length)];
    const engagement = () => pick([undefined, null, 1, 0.9, 0.7, Math.fround(0.7), 0.70000005, 0.2, 0, 0.69]);
    const sent: { userId: string; itemId: string; ts: number; engagement?: number | null }[] = [];
    const event = () => {
      const roll = next();
      if (roll < 0.08 && sent.length) return { ...pick(sent), engagement: engagement() };
      if (roll < 0.14 && storedRows.length) {
        const r = pick(storedRows);
        return { userId: r.user_id, itemId: r.item_id, ts: r.ts, engagement: engagement() };
      }
      // Times on a coarse grid (six hours): ties on time between items are common.
      const ts = world.startMs - 3 * DAY_MS + Math.floor(next() * (span / 21_600_000 + 6 * 4)) * 21_600_000;
      return { userId: pick(users), itemId: pick(items), ts, engagement: engagement() };
    };
    let added = 0;
    const before = (await store.counts()).events;
    for (let round = 0; round < 6; round++) {
      const batches = Array.from({ length: 10 }, (_, b) => {
        const events: Record<string, unknown>[] = Array.from({ length: 1 + Math.floor(next() * 30) }, () => {
          const e = event();
          sent.push(e);
          return next() < 0.05 ? { ...e, feedback: "negative" } : e;
        });
        // A repeat inside the batch, with another engagement: the first one is stored.
        if (b % 3 === 0) events.push({ ...events[0], engagement: 0.95 });
        return events;
      });
      const key = `round-${round}`;
      const answers = await Promise.all([
        ...batches.map((events, b) => post({ events }, b === 0 ? key : undefined)),
        // The same key at the same time with the same body: written once, answered twice.
        post({ events: batches[0] }, key),
      ]);
      for (const a of answers) expect(a.status).toBe(200);
      expect(answers.filter((a) => a.body.idempotencyKey === key && a.body.replayed).length).toBe(1);
      for (const a of answers) if (!a.body.replayed) added += a.body.eventsAdded;
      // A repeated key later on: the first answer again, nothing written.
      const again = await post({ events: batches[0] }, key);
      expect(again.body).toMatchObject({ replayed: true, eventsAdded: answers[0].body.eventsAdded });
      await expectEqualToRecount();
    }
    // Every event acknowledged as added is stored once, and nothing else was.
    expect((await store.counts()).events - before).toBe(added);
    expect(added).toBeGreaterThan(500);
    const twice = await store.query<{ n: bigint }>("SELECT count(*) AS n FROM (SELECT user_key, item_key, ts FROM events GROUP BY ALL HAVING count(*) > 1)");
    expect(Number(twice[0].n)).toBe(0);
    // The synthetic events sent again kept their first engagement value.
    const kept = await store.query<{ user_id: string; item_id: string; ts: number; engagement: number | null }>(
      `SELECT user_id, item_id, epoch_ms(ts)::DOUBLE AS ts, engagement FROM events JOIN users USING (user_key) JOIN items USING (item_key)
       WHERE user_id IN (${users.map((u) => `'${u}'`).join(",")}) AND ts <= epoch_ms(${Math.max(...storedRows.map((r) => r.ts))}::BIGINT)`,
    );
    const original = new Map(storedRows.map((r) => [`${r.user_id}:${r.item_id}:${r.ts}`, r.engagement]));
    for (const r of kept) {
      const key = `${r.user_id}:${r.item_id}:${r.ts}`;
      if (original.has(key)) expect({ key, engagement: r.engagement }).toEqual({ key, engagement: original.get(key) });
    }
  }, 120_000);
});
