import { describe, expect, it } from "vitest";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";
import { countTransitions, countTransitionsForWindows } from "../../src/mining/transitions.js";
import { contextFor, contextKey, contextsAlong, contextsFromCounts, retrieveContexts, SnapshotCache, stepAt } from "../../src/update/rag.js";
import type { EngagementEvent, TransitionCount } from "../../src/domain/types.js";

const t = (c1: string, c2: string, next: string, users: number): TransitionCount => ({ c1, c2, next, users });

describe("RAG retrieval on hand-made counts", () => {
  const recent = [t("a", "b", "c", 10), t("a", "b", "d", 8), t("a", "b", "e", 2), t("x", "y", "z", 1), t("x", "y", "w", 3)];

  it("frequency top-1 picks the most frequent successor (the paper's example)", () => {
    const s = contextsFromCounts(recent, []);
    expect(contextFor(s, "a", "b")).toEqual({ successors: ["c"] });
    expect(contextFor(s, "x", "y")).toEqual({ successors: ["w"] });
    expect(contextFor(s, "b", "a")).toBeUndefined();
  });

  it("top-n keeps the n most frequent with at least the minimum support", () => {
    const s = contextsFromCounts(recent, [], { topN: 3, minSupport: 2 });
    expect(contextFor(s, "a", "b")).toEqual({ successors: ["c", "d", "e"] });
    expect(contextFor(s, "x", "y")).toEqual({ successors: ["w"] });
    const strict = contextsFromCounts(recent, [], { topN: 3, minSupport: 5 });
    expect(contextFor(strict, "x", "y")).toBeUndefined();
  });

  it("trend mode ranks by the rise versus the previous window", () => {
    const previous = [t("a", "b", "c", 9), t("a", "b", "d", 1), t("a", "b", "e", 2)];
    const s = contextsFromCounts(recent, previous, { mode: "trend", topN: 2 });
    // c rose by 1, d by 7, e by 0 (not a rise).
    expect(contextFor(s, "a", "b")).toEqual({ successors: ["d", "c"] });
  });

  it("global mode gives every pair the same context, without the pair's own clusters", () => {
    const s = contextsFromCounts(recent, [], { mode: "global", globalPairs: 3 });
    // Top-3 transitions: (a,b,c) 10, (a,b,d) 8, (x,y,w) 3 -> c first.
    expect(contextFor(s, "p", "q")).toEqual({ successors: ["c"] });
    expect(contextFor(s, "c", "q")).toEqual({ successors: ["d"] });
  });

  it("keys contexts so that equal prompts share a key", () => {
    expect(contextKey(undefined)).toBe("");
    expect(contextKey({ successors: ["c"] })).toBe(contextKey({ successors: ["c"] }));
    expect(contextKey({ successors: ["c", "d"] })).not.toBe(contextKey({ successors: ["d", "c"] }));
  });

  it("rejects bad options by name", () => {
    expect(() => contextsFromCounts(recent, [], { topN: 0 })).toThrow(/rag\.topN/);
    expect(() => contextsFromCounts(recent, [], { mode: "nearest" as never })).toThrow(/rag\.mode/);
  });
});

describe("RAG retrieval from the event store", () => {
  const clusters = ["a", "b", "c", "d", "e"].map((id) => ({ id, description: id }));
  const items = clusters.map((c) => ({ id: `${c.id}1`, clusterId: c.id }));
  const DAY = 86_400_000;
  const T0 = Date.UTC(2025, 5, 1);
  /** user goes a -> b -> next on day `day`. */
  const path = (user: string, next: string, day: number, offset = 0): EngagementEvent[] =>
    ["a1", "b1", `${next}1`].map((itemId, k) => ({ userId: user, itemId, ts: T0 + day * DAY + offset + k * 1000 }));

  async function store(events: EngagementEvent[]): Promise<EventStore> {
    const s = await EventStore.open(":memory:");
    await s.append({ clusters, items, events: eventBatchFromEvents(events) });
    return s;
  }

  it("a burst from one account does not move a pair's context", async () => {
    const organic = [...path("u1", "c", 1), ...path("u2", "c", 2), ...path("u3", "c", 3), ...path("u4", "d", 3), ...path("u5", "d", 4)];
    const burst: EngagementEvent[] = [];
    for (let k = 0; k < 500; k++) burst.push(...path("spammer", "e", 5, k * 10_000 + 10));
    const asOf = T0 + 7 * DAY;
    const clean = await retrieveContexts(await store(organic), asOf);
    const attacked = await retrieveContexts(await store([...organic, ...burst]), asOf);
    expect(contextFor(clean, "a", "b")).toEqual({ successors: ["c"] });
    expect(contextFor(attacked, "a", "b")).toEqual({ successors: ["c"] });
    const top3 = await retrieveContexts(await store([...organic, ...burst]), asOf, { topN: 3 });
    // The spammer's successor has one user: below the minimum support of 2, it is not retrieved at all.
    expect(contextFor(top3, "a", "b")).toEqual({ successors: ["c", "d"] });
  });

  it("reads only the window before the as-of time", async () => {
    const events = [...path("u1", "c", 1), ...path("u2", "c", 2), ...path("u3", "d", 8), ...path("u4", "d", 8), ...path("u5", "d", 9)];
    const s = await store(events);
    const snap = await retrieveContexts(s, T0 + 8 * DAY, { windowDays: 7 });
    expect(contextFor(snap, "a", "b")).toEqual({ successors: ["c"] });
    expect(snap.window).toEqual({ from: T0 + DAY, to: T0 + 8 * DAY });
    const later = await retrieveContexts(s, T0 + 10 * DAY, { windowDays: 7 });
    expect(contextFor(later, "a", "b")).toEqual({ successors: ["d"] });
  });

  it("gives each step of a training window the context retrieved just before it, never from the step itself", async () => {
    // Days 1-2: two users go a,b -> c. Days 8-9: three go a,b -> d. Days 15-16: two go a,b -> e.
    const events = [
      ...path("u1", "c", 1), ...path("u2", "c", 2),
      ...path("u3", "d", 8), ...path("u4", "d", 8), ...path("u5", "d", 9),
      ...path("u6", "e", 15), ...path("u7", "e", 16),
    ];
    const steps = await contextsAlong(await store(events), { from: T0 + 7 * DAY, to: T0 + 20 * DAY }, { windowDays: 7 });
    expect(steps.map((s) => [(s.from - T0) / DAY, (s.to - T0) / DAY])).toEqual([[7, 14], [14, 20]]);
    for (const s of steps) expect(s.snapshot.window.to).toBe(s.from);
    // The step holding days 8-9 serves what days 0-7 showed (c), not its own d; the next step serves d, not e.
    expect(contextFor(steps[0].snapshot, "a", "b")).toEqual({ successors: ["c"] });
    expect(contextFor(steps[1].snapshot, "a", "b")).toEqual({ successors: ["d"] });
    expect(stepAt(steps, T0 + 9 * DAY)).toBe(steps[0]);
    expect(stepAt(steps, T0 + 14 * DAY)).toBe(steps[1]);
    expect(stepAt(steps, T0 + 20 * DAY)).toBeUndefined();
    expect(stepAt(steps, T0 + 6 * DAY)).toBeUndefined();
  });

  it("counts all steps in one query, with exactly the snapshots retrieveContexts gives at each step start", async () => {
    const events: EngagementEvent[] = [];
    const nexts = ["c", "d", "e"];
    for (let u = 0; u < 60; u++) events.push(...path(`u${u}`, nexts[(u * 7) % 3 === 0 ? 0 : u % 3], (u * 5) % 40, u * 1000));
    const s = await store(events);
    for (const options of [{ windowDays: 3 }, { windowDays: 3, mode: "trend" as const, minSupport: 1 }, { windowDays: 5, mode: "global" as const }, { windowDays: 7, topN: 2 }]) {
      const steps = await contextsAlong(s, { from: T0 + 9 * DAY, to: T0 + 38 * DAY }, options);
      expect(steps.length).toBeGreaterThan(3);
      expect(steps.filter((st) => contextFor(st.snapshot, "a", "b")).length).toBeGreaterThan(1);
      for (const step of steps) {
        const one = await retrieveContexts(s, step.from, options);
        expect(step.snapshot).toEqual(one);
      }
    }
  });

  it("primes overlapping refresh windows in one query: every snapshot equals a retrieval of its own", async () => {
    const events: EngagementEvent[] = [];
    const nexts = ["c", "d", "e"];
    for (let u = 0; u < 40; u++) {
      // Each user walks a,b -> next twice, a few days apart: the same triple in several overlapping windows.
      events.push(...path(`u${u}`, nexts[u % 3], (u * 3) % 30, u * 1000));
      events.push(...path(`u${u}`, nexts[u % 3], ((u * 3) % 30) + 2, u * 1000));
    }
    const s = await store(events);
    const asOfs = Array.from({ length: 16 }, (_, k) => T0 + (4 + 2 * k) * DAY);
    const byWindow = await countTransitionsForWindows(s, asOfs, 7 * DAY);
    for (const end of asOfs) expect(byWindow.get(end) ?? []).toEqual(await countTransitions(s, { from: end - 7 * DAY, to: end }));
    expect([...byWindow.values()].some((counts) => counts.some((c) => c.users > 1))).toBe(true);
    for (const options of [{ windowDays: 7 }, { windowDays: 7, mode: "trend" as const, minSupport: 1 }, { windowDays: 7, mode: "global" as const }]) {
      const cache = new SnapshotCache();
      await cache.prime(s, asOfs, options);
      for (const asOf of asOfs) expect(await cache.retrieve(s, asOf, options)).toEqual(await retrieveContexts(s, asOf, options));
    }
    // The refreshes read the primed counts, not the store: emptied after priming, it is never asked again.
    const emptied = await store(events);
    const primed = new SnapshotCache();
    await primed.prime(emptied, asOfs, { windowDays: 7 });
    await emptied.query("DELETE FROM events");
    for (const asOf of asOfs) expect(await primed.retrieve(emptied, asOf, { windowDays: 7 })).toEqual(await retrieveContexts(s, asOf, { windowDays: 7 }));
  });
});
