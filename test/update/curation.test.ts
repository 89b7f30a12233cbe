import { describe, expect, it } from "vitest";
import { CURATION_DEFAULTS, contextsExcludingOneUser, diversify, curateFineTuningSet } from "../../src/update/curation.js";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld, SYNTHETIC_QUICK } from "../../src/data/synthetic/index.js";

describe("fine-tuning curation", () => {
  const counts = [
    { c1: "a", c2: "b", next: "c", users: 500 }, // a head transition
    { c1: "a", c2: "b", next: "d", users: 40 },
    { c1: "x", c2: "y", next: "c", users: 300 },
    ...Array.from({ length: 60 }, (_, k) => ({ c1: `p${k}`, c2: "q", next: `t${k % 30}`, users: 2 })),
  ];
  const options = { maxSamples: 100, maxPerPair: 10, maxTargetShare: 0.1, maxPerTriple: 8 };

  it("caps samples per pair, per target and per triple, deterministically", () => {
    const kept = diversify(counts, options, 42);
    const perPair = new Map<string, number>();
    const perTarget = new Map<string, number>();
    for (const s of kept) {
      perPair.set(`${s.c1}|${s.c2}`, (perPair.get(`${s.c1}|${s.c2}`) ?? 0) + 1);
      perTarget.set(s.next, (perTarget.get(s.next) ?? 0) + 1);
    }
    expect(Math.max(...perPair.values())).toBeLessThanOrEqual(10);
    expect(Math.max(...perTarget.values())).toBeLessThanOrEqual(10);
    expect(kept.filter((s) => s.c1 === "a" && s.next === "d").length).toBeLessThanOrEqual(8);
    expect(kept.length).toBe(100);
    // The tail is represented: most of the 60 one-off pairs made it in.
    expect(new Set(kept.filter((s) => s.c1.startsWith("p")).map((s) => s.c1)).size).toBeGreaterThan(40);
    expect(diversify(counts, options, 42)).toEqual(kept);
    expect(diversify(counts, options, 43_000)).not.toEqual(kept);
  });

  it("by default caps nothing: a sample of distinct users' transitions keeps each target's and each successor's share", () => {
    const { maxPerPair, maxTargetShare, maxPerTriple } = CURATION_DEFAULTS;
    const kept = diversify(counts, { maxSamples: 400, maxPerPair, maxTargetShare, maxPerTriple }, 42);
    const users = counts.reduce((sum, t) => sum + t.users, 0);
    const share = (keep: (t: { c1: string; next: string }) => boolean, of: readonly { c1: string; next: string }[]) => of.filter(keep).length / of.length;
    // c is the answer of 800 of the 1,060 users' transitions; capped at a tenth (the test above) it would be taught as rare.
    const cShare = counts.filter((t) => t.next === "c").reduce((sum, t) => sum + t.users, 0) / users;
    expect(Math.abs(share((t) => t.next === "c", kept) - cShare)).toBeLessThan(0.06);
    // Within the head pair, c keeps its lead over d (500 users against 40), which a triple cap of 8 would erase.
    const head = kept.filter((t) => t.c1 === "a");
    expect(share((t) => t.next === "c", head)).toBeGreaterThan(0.85);
    expect(kept.length).toBe(400);
  });

  it("splits by time: the test slice is the most recent part and is never trained on", async () => {
    const world = new SyntheticWorld({ ...SYNTHETIC_QUICK, users: 600, targetEvents: 60_000 });
    const store = await EventStore.open(":memory:");
    await ingestSynthetic(store, world);
    const asOf = Date.UTC(2025, 6, 1);
    const set = await curateFineTuningSet(store, asOf, { positiveMin: 0.5, windowDays: 60, testDays: 10 });
    expect(set.trainWindow).toEqual({ from: asOf - 60 * 86_400_000, to: asOf - 10 * 86_400_000 });
    expect(set.testWindow).toEqual({ from: asOf - 10 * 86_400_000, to: asOf });
    expect(set.train.length).toBeGreaterThan(500);
    expect(set.test.length).toBeGreaterThan(50);
    for (const s of set.train) expect(new Set([s.prompt.history.c1, s.prompt.history.c2, s.answer]).size).toBe(3);
    const withContext = set.train.filter((s) => s.prompt.context).length / set.train.length;
    expect(withContext).toBeGreaterThan(0); // sparse weekly contexts in this small world
    expect(withContext).toBeLessThan(0.55);
    // Reproducible for an as-of time (the shuffle is seeded by it).
    const again = await curateFineTuningSet(store, asOf, { positiveMin: 0.5, windowDays: 60, testDays: 10 });
    expect(again).toEqual(set);
    await expect(curateFineTuningSet(store, asOf, { windowDays: 10, testDays: 10 })).rejects.toThrow(/testDays/);
    store.close();
  });
});

describe("context of training samples", () => {
  it("comes from the week before the sample, never from its own week", async () => {
    const clusters = ["a", "b", "c", "d"].map((id) => ({ id, description: id }));
    const items = clusters.map((c) => ({ id: `${c.id}1`, clusterId: c.id }));
    const DAY = 86_400_000;
    const asOf = Date.UTC(2025, 0, 29);
    const path = (user: string, next: string, at: number) =>
      ["a1", "b1", `${next}1`].map((itemId, k) => ({ userId: user, itemId, ts: at + k * 1000 }));
    const events = [
      // Week 1 (Jan 1-8): a, b -> c by three users. Week 2 (Jan 8-15): a, b -> d by three users.
      ...["u1", "u2", "u3"].flatMap((u, k) => path(u, "c", Date.UTC(2025, 0, 2) + k * DAY)),
      ...["u4", "u5", "u6"].flatMap((u, k) => path(u, "d", Date.UTC(2025, 0, 9) + k * DAY)),
    ];
    const store = await EventStore.open(":memory:");
    await store.append({ clusters, items, events: eventBatchFromEvents(events) });
    // Unrelabelled (relabelShare 0), so each sample still names its own clusters and its context can be traced.
    const set = await curateFineTuningSet(store, asOf, { windowDays: 28, testDays: 14, contextShare: 1, relabelShare: 0, rag: { windowDays: 7, minSupport: 2 } });
    // Train part: Jan 1-15. Week-1 samples have no earlier data (no context); week-2 samples carry week 1's c.
    const toD = set.train.filter((s) => s.answer === "d");
    const toC = set.train.filter((s) => s.answer === "c");
    expect(toD).toHaveLength(3);
    expect(toC).toHaveLength(3);
    for (const s of toD) expect(s.prompt.context).toEqual({ successors: ["c"] });
    for (const s of toC) expect(s.prompt.context).toBeUndefined();
    // By default every sample with a context is relabelled: renamed, with its context still not its answer.
    const relabelled = (await curateFineTuningSet(store, asOf, { windowDays: 28, testDays: 14, contextShare: 1, rag: { windowDays: 7, minSupport: 2 } })).train.filter((s) => s.prompt.context);
    expect(relabelled).toHaveLength(3);
    for (const s of relabelled) expect(s.prompt.context!.successors[0]).not.toBe(s.answer);
    expect(relabelled.some((s) => JSON.stringify(s) !== JSON.stringify(toD[0]))).toBe(true);
    store.close();
  });
});

describe("same-week contexts (contextPeriod \"same\")", () => {
  it("take the pair's most frequent successor of the week without the sample's own user", () => {
    const week = [
      { c1: "a", c2: "b", next: "c", users: 3 },
      { c1: "a", c2: "b", next: "d", users: 3 },
      { c1: "a", c2: "b", next: "e", users: 1 },
      { c1: "x", c2: "y", next: "z", users: 2 },
    ];
    const context = contextsExcludingOneUser(week, { minSupport: 2 });
    // A user of (a, b, c) leaves c with 2 against d's 3: d. A user of (a, b, d): c. A user of the rare e: c (tie by id).
    expect(context(week[0])).toEqual({ successors: ["d"] });
    expect(context(week[1])).toEqual({ successors: ["c"] });
    expect(context(week[2])).toEqual({ successors: ["c"] });
    // Alone with one other user, z falls below the support minimum: no context at all.
    expect(context(week[3])).toBeUndefined();
    expect(contextsExcludingOneUser(week, { minSupport: 1 })(week[3])).toEqual({ successors: ["z"] });
    expect(() => contextsExcludingOneUser(week, { mode: "trend" })).toThrow(/frequency/);
  });
});
