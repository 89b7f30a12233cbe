/**
 * The mining tests that read an event store, run by every adapter (test/mining/transitions.test.ts runs them on
 * DuckDB and on a throwaway PostgreSQL): `openEmpty` gives a fresh empty store.
 */
import { describe, expect, it } from "vitest";
import { eventBatchFromEvents, type EventStoreContract } from "../../src/data/event-store.js";
import { countTransitions, countTransitionsByMonth, futureExamples, historiesAsOf, timedTransitions } from "../../src/mining/transitions.js";
import type { EngagementEvent } from "../../src/domain/types.js";

export const CLUSTERS = ["a", "b", "c", "d", "e"].map((id) => ({ id, description: `topic ${id}` }));
// Two items per cluster: "a1", "a2", ...
export const ITEMS = CLUSTERS.flatMap((c) => [1, 2].map((n) => ({ id: `${c.id}${n}`, clusterId: c.id })));
export const DAY = 86_400_000;
export const T0 = Date.UTC(2025, 0, 1);

/** Events of one user visiting items in order, one per day from `startDay`. */
export function visits(userId: string, itemIds: string[], startDay = 0, engagement?: number[]): EngagementEvent[] {
  return itemIds.map((itemId, k) => ({ userId, itemId, ts: T0 + (startDay + k) * DAY, engagement: engagement?.[k] }));
}

const ALL = { from: T0 - 365 * DAY, to: T0 + 365 * DAY };

export function miningConformance(adapter: string, openEmpty: () => Promise<EventStoreContract>): void {
  async function storeWith(events: EngagementEvent[]): Promise<EventStoreContract> {
    const store = await openEmpty();
    await store.append({ clusters: CLUSTERS, items: ITEMS, events: eventBatchFromEvents(events) });
    return store;
  }

  describe(`transition mining: ${adapter}`, () => {
    it("collapses consecutive repeats and keeps only novel successors", async () => {
      // a a b a c: collapsed to a b a c; (a,b)->a is not novel; (b,a)->c is.
      const store = await storeWith(visits("u1", ["a1", "a2", "b1", "a1", "c1"]));
      expect(await countTransitions(store, ALL)).toEqual([{ c1: "b", c2: "a", next: "c", users: 1 }]);
      await store.close();
    });

    it("orders events with equal timestamps by item, deterministically", async () => {
      // c1 and b1 at the same instant: catalog order puts b before c, so the sequence is a b c d.
      const same = T0 + DAY;
      const store = await storeWith([
        { userId: "u1", itemId: "a1", ts: T0 },
        { userId: "u1", itemId: "c1", ts: same },
        { userId: "u1", itemId: "b1", ts: same },
        { userId: "u1", itemId: "d1", ts: T0 + 2 * DAY },
      ]);
      expect(await countTransitions(store, ALL)).toEqual([
        { c1: "a", c2: "b", next: "c", users: 1 },
        { c1: "b", c2: "c", next: "d", users: 1 },
      ]);
      await store.close();
    });

    it("returns nothing, not an error, for a window without transitions", async () => {
      const store = await storeWith(visits("u1", ["a1", "b1", "c1"]));
      expect(await countTransitions(store, { from: T0 + 100 * DAY, to: T0 + 200 * DAY })).toEqual([]);
      expect(await countTransitionsByMonth(store, { from: T0 + 100 * DAY, to: T0 + 200 * DAY })).toEqual(new Map());
      expect(await timedTransitions(store, { from: T0 + 100 * DAY, to: T0 + 200 * DAY })).toEqual([]);
      await store.close();
    });

    it("counts each user at most once per triple per window", async () => {
      const events = [
        ...visits("u1", ["a1", "b1", "c1", "a1", "b1", "c1"]), // (a,b)->c twice, (b,c)->a, (c,a)->b
        ...visits("u2", ["a2", "b2", "c2"]),
      ];
      const store = await storeWith(events);
      const counts = await countTransitions(store, ALL);
      expect(counts.find((t) => t.c1 === "a" && t.c2 === "b" && t.next === "c")?.users).toBe(2);
      await store.close();
    });

    it("drops non-positive events before collapsing", async () => {
      // b is skipped by the user (engagement 0.1), so the sequence is a c d.
      const store = await storeWith(visits("u1", ["a1", "b1", "c1", "d1"], 0, [1, 0.1, 1, 1]));
      expect(await countTransitions(store, ALL, { positiveMin: 0.5 })).toEqual([{ c1: "a", c2: "c", next: "d", users: 1 }]);
      expect((await countTransitions(store, ALL)).length).toBe(2);
      await store.close();
    });

    it("assigns a transition to the window of its successor event, with history from before the window", async () => {
      const store = await storeWith(visits("u1", ["a1", "b1", "c1", "d1"])); // days 0..3
      const window = { from: T0 + 2 * DAY, to: T0 + 3 * DAY }; // holds only the c event
      expect(await countTransitions(store, window)).toEqual([{ c1: "a", c2: "b", next: "c", users: 1 }]);
      await store.close();
    });

    it("never reads events at or after the window end", async () => {
      const before = visits("u1", ["a1", "b1", "c1"]).concat(visits("u2", ["b2", "c2"], 0));
      const after = [
        // Same timestamp as the window end, and later: a leak would change the counts or the histories.
        { userId: "u2", itemId: "d1", ts: T0 + 3 * DAY },
        ...visits("u1", ["d1", "e1", "a1"], 4),
        ...visits("u3", ["a1", "b1", "c1"], 5),
      ];
      const window = { from: T0, to: T0 + 3 * DAY };
      const clean = await storeWith(before);
      const full = await storeWith([...before, ...after]);
      expect(await countTransitions(full, window)).toEqual(await countTransitions(clean, window));
      expect(await countTransitions(full, window)).toEqual([{ c1: "a", c2: "b", next: "c", users: 1 }]);
      expect(await historiesAsOf(full, window.to)).toEqual(await historiesAsOf(clean, window.to));
      expect(await countTransitionsByMonth(full, window)).toEqual(await countTransitionsByMonth(clean, window));
      await clean.close();
      await full.close();
    });

    it("matches a brute-force count on random event sets", async () => {
      let seed = 7;
      const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
      const events: EngagementEvent[] = [];
      for (let u = 0; u < 40; u++) {
        for (let k = 0; k < 25; k++) {
          events.push({ userId: `u${u}`, itemId: ITEMS[Math.floor(random() * ITEMS.length)].id, ts: T0 + Math.floor(random() * 60) * DAY + u * 1000 + k });
        }
      }
      const window = { from: T0 + 20 * DAY, to: T0 + 45 * DAY };
      const store = await storeWith(events);
      const mined = await countTransitions(store, window);

      const expected = new Map<string, Set<string>>();
      const byUser = new Map<string, EngagementEvent[]>();
      for (const e of events) byUser.set(e.userId, [...(byUser.get(e.userId) ?? []), e]);
      for (const [user, list] of byUser) {
        const seq: { cluster: string; ts: number }[] = [];
        for (const e of list.filter((x) => x.ts < window.to).sort((x, y) => x.ts - y.ts || (x.itemId < y.itemId ? -1 : 1))) {
          const cluster = e.itemId[0];
          if (seq.at(-1)?.cluster !== cluster) seq.push({ cluster, ts: e.ts });
        }
        for (let k = 2; k < seq.length; k++) {
          if (seq[k].ts < window.from || seq[k].cluster === seq[k - 2].cluster) continue;
          const key = `${seq[k - 2].cluster}${seq[k - 1].cluster}${seq[k].cluster}`;
          expected.set(key, (expected.get(key) ?? new Set()).add(user));
        }
      }
      const minedMap = new Map(mined.map((t) => [`${t.c1}${t.c2}${t.next}`, t.users]));
      expect(minedMap).toEqual(new Map([...expected].map(([k, users]) => [k, users.size])));
      expect(mined.length).toBeGreaterThan(20);
      await store.close();
    });

    it("reads each user's last two distinct clusters as of a time", async () => {
      const store = await storeWith([...visits("u1", ["a1", "b1", "b2", "c1", "d1"]), ...visits("u2", ["a1", "a2"])]);
      expect(await historiesAsOf(store, T0 + 4 * DAY)).toEqual(new Map([["u1", { c1: "b", c2: "c" }]]));
      expect(await historiesAsOf(store, T0 + 10 * DAY, { userIds: ["u1", "u2"] })).toEqual(new Map([["u1", { c1: "c", c2: "d" }]]));
      await store.close();
    });
  });

  describe(`future examples for test recall: ${adapter}`, () => {
    it("takes each user's first novel transition in the window and what followed, before the window end", async () => {
      const store = await storeWith([
        ...visits("u1", ["a1", "b1", "c1", "d1", "a1", "e1"]), // days 0..5
        ...visits("u2", ["a1", "b1"]), // no novel transition
      ]);
      const window = { from: T0 + 3 * DAY, to: T0 + 5 * DAY }; // holds d (day 3) and a (day 4)
      expect(await futureExamples(store, window)).toEqual([{ userId: "u1", c1: "b", c2: "c", later: ["a", "d"] }]);
      await store.close();
    });
  });

  describe(`timed transitions for replay: ${adapter}`, () => {
    it("lists each transition with its time and the following clusters, never past the window end", async () => {
      const store = await storeWith(visits("u1", ["a1", "b1", "c1", "d1", "e1", "a1"])); // days 0..5
      const window = { from: T0 + 2 * DAY, to: T0 + 5 * DAY }; // c, d, e
      const got = await timedTransitions(store, window, { horizon: 3 });
      expect(got).toEqual([
        { userId: "u1", ts: T0 + 2 * DAY, c1: "a", c2: "b", next: "c", horizon: ["c", "d", "e"] },
        { userId: "u1", ts: T0 + 3 * DAY, c1: "b", c2: "c", next: "d", horizon: ["d", "e"] },
        { userId: "u1", ts: T0 + 4 * DAY, c1: "c", c2: "d", next: "e", horizon: ["e"] },
      ]);
      await store.close();
    });
  });
}
