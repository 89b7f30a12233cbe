/**
 * Intake checks a body that plainly fits the schema without zod (src/serving/intake.ts `plainEvents`); every other
 * body goes through zod. The two must never disagree: here random bodies, valid ones and ones with one thing wrong
 * (a type, a missing or extra field, an empty or too long id, a non-finite number, a bad date, a time in the future,
 * an unknown item), must be accepted exactly when zod and the field rules accept them, and a keyed retry of the same
 * body with its fields in another order is the same request (the idempotency digest is the one zod's output gives).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld } from "../../src/data/synthetic/index.js";
import { seededRandom } from "../../src/domain/random.js";
import { Catalog } from "../../src/serving/catalog.js";
import { HttpError } from "../../src/serving/errors.js";
import { EventIntake, intakeBodySchema, type IntakeResult } from "../../src/serving/intake.js";
import type { IntakeEvent, IntakeStore, RecordedAnswer } from "../../src/serving/intake-store.js";
import { StoreQueue } from "../../src/serving/store-queue.js";
import { UserIndex } from "../../src/serving/users.js";

/** Takes every event; remembers keys, as a store would. */
class MemoryIntakeStore implements IntakeStore {
  readonly keys = new Map<string, RecordedAnswer>();
  async append(events: readonly IntakeEvent[]): Promise<boolean[]> {
    return events.map(() => true);
  }
  async recorded(keys: readonly string[]): Promise<Map<string, RecordedAnswer>> {
    return new Map(keys.filter((k) => this.keys.has(k)).map((k) => [k, this.keys.get(k)!]));
  }
  async record(answers: readonly RecordedAnswer[]): Promise<void> {
    for (const a of answers) this.keys.set(a.key, a);
  }
  async settle(): Promise<boolean> {
    return false;
  }
}

describe("intake validation: the plain-body check agrees with the schema", () => {
  const NOW = Date.UTC(2025, 2, 1);
  let store: EventStore;
  let catalog: Catalog;
  const intake = () =>
    new EventIntake({
      events: store,
      intakeStore: new MemoryIntakeStore(),
      catalog,
      users: UserIndex.empty(catalog, { positiveMin: 0.5 }),
      queue: new StoreQueue(),
      unknownItems: "reject",
      maxBatchEvents: 100,
      now: () => NOW,
    });

  beforeAll(async () => {
    store = await EventStore.open(":memory:");
    await ingestSynthetic(store, new SyntheticWorld({ seed: 3, months: 1, users: 10, targetEvents: 300, clustersPerDomain: 3, itemsPerCluster: 4 }));
    catalog = await Catalog.load(store);
  }, 60_000);
  afterAll(() => store?.close());

  it("accepts a random body exactly when zod and the field rules do", async () => {
    const next = seededRandom(41);
    const pick = <T>(list: readonly T[]): T => list[Math.floor(next() * list.length)];
    const validEvent = (): Record<string, unknown> => {
      const e: Record<string, unknown> = { userId: `u${Math.floor(next() * 5)}`, itemId: pick(catalog.itemIds), ts: pick([NOW - 1000, (NOW - 5000) / 1000, "2025-02-27T10:00:00Z", "2025-02-27"]) };
      if (next() < 0.5) e.engagement = pick([0.3, 1, null, 0]);
      if (next() < 0.2) e.feedback = "negative";
      return e;
    };
    // One thing wrong: what zod refuses, and what only the field rules refuse.
    const breakings: ((e: Record<string, unknown>) => void)[] = [
      (e) => (e.userId = 42),
      (e) => delete e.itemId,
      (e) => (e.extra = 1),
      (e) => (e.userId = ""),
      (e) => (e.itemId = "x".repeat(257)),
      (e) => (e.userId = "bad\ud800"),
      (e) => (e.ts = Number.POSITIVE_INFINITY),
      (e) => (e.ts = Number.NaN),
      (e) => (e.ts = ""),
      (e) => (e.ts = "2025-02-30"),
      (e) => (e.ts = NOW + 3 * 86_400_000),
      (e) => (e.ts = null),
      (e) => (e.engagement = "0.5"),
      (e) => (e.engagement = 1e39),
      (e) => (e.engagement = Number.NEGATIVE_INFINITY),
      (e) => (e.feedback = "positive"),
      (e) => (e.itemId = "not-an-item"),
    ];
    const oddBodies: unknown[] = [null, [], "x", { events: [] }, { events: {} }, { events: [validEvent()], more: 1 }, { events: [[1]] }, { events: [null] }];
    let accepted = 0;
    let refused = 0;
    for (let trial = 0; trial < 400; trial++) {
      const events = Array.from({ length: 1 + Math.floor(next() * 4) }, validEvent);
      const broken = next() < 0.6;
      if (broken) pick(breakings)(pick(events));
      const body: unknown = trial < oddBodies.length ? oddBodies[trial] : { events };
      const schemaOk = intakeBodySchema.safeParse(body).success;
      const outcome = await intake()
        .ingest(body, undefined)
        .then(() => "accepted" as const)
        .catch((error: unknown) => {
          expect(error).toBeInstanceOf(HttpError);
          expect((error as HttpError).code).toBe("BAD_INPUT");
          return "refused" as const;
        });
      // Zod's refusal is always a refusal; every valid event and every break zod lets pass is for the field rules,
      // which the breakings above make fail.
      const expected = !schemaOk || (broken && trial >= oddBodies.length) ? "refused" : "accepted";
      expect({ trial, body, outcome }).toEqual({ trial, body, outcome: expected });
      if (outcome === "accepted") accepted++;
      else refused++;
    }
    expect(accepted).toBeGreaterThan(100);
    expect(refused).toBeGreaterThan(100);
  });

  it("takes a keyed retry with the fields in another order as the same request, and another body as a conflict", async () => {
    const one = intake();
    const item = catalog.itemIds[0];
    const first: IntakeResult = await one.ingest({ events: [{ userId: "u1", itemId: item, ts: NOW - 1, engagement: null, feedback: "negative" }, { userId: "u2", itemId: item, ts: "2025-02-27" }] }, "k1");
    expect(first.replayed).toBe(false);
    const again = await one.ingest({ events: [{ feedback: "negative", engagement: null, ts: NOW - 1, itemId: item, userId: "u1" }, { ts: "2025-02-27", userId: "u2", itemId: item }] }, "k1");
    expect(again).toEqual({ ...first, replayed: true });
    const other = await one.ingest({ events: [{ userId: "u1", itemId: item, ts: NOW - 2 }] }, "k1").catch((e: unknown) => e);
    expect((other as HttpError).code).toBe("CONFLICT");
  });
});
