/**
 * Intake checkpoints the embedded store in its quiet moments (src/serving/intake.ts `armSettle`, intake-store.ts
 * `settle`): rounds of concurrent batches, some right after a quiet moment began (while its checkpoint may run),
 * some after a checkpoint surely ran, with repeats of earlier events and new users. Every acknowledged event is then
 * stored exactly once, in the store as the server leaves it and as a fresh open reads it (the log replayed or
 * checkpointed), and the live user index equals a fresh load of the store.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld } from "../../src/data/synthetic/index.js";
import { DAY_MS } from "../../src/domain/clock.js";
import { seededRandom } from "../../src/domain/random.js";
import { Catalog } from "../../src/serving/catalog.js";
import { EventIntake } from "../../src/serving/intake.js";
import { DuckDbIntakeStore } from "../../src/serving/intake-store.js";
import { StoreQueue } from "../../src/serving/store-queue.js";
import { UserIndex, type UserState } from "../../src/serving/users.js";
import { tempDir } from "../temp-dir.js";

const POSITIVE_MIN = 0.5;
const RECENT = 4;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function plain(s: UserState | undefined) {
  return s && { history: s.history, lastCluster: s.lastCluster, recent: s.recent, recentTs: s.recentTs, seen: s.seen, seenTs: s.seenTs, tail: { ...s.tail } };
}

describe("intake's checkpoints in quiet moments", () => {
  const dir = tempDir("freshrec-intake-checkpoint-");
  const path = join(dir, "events.duckdb");

  it("keep every acknowledged event stored exactly once, and the users a fresh load gives", async () => {
    const world = new SyntheticWorld({ seed: 13, months: 1, users: 150, targetEvents: 4_000, clustersPerDomain: 3, itemsPerCluster: 6 });
    let events = await EventStore.open(path);
    await ingestSynthetic(events, world);
    const before = (await events.counts()).events;
    const catalog = await Catalog.load(events);
    const users = await UserIndex.load(events, catalog, { positiveMin: POSITIVE_MIN, recentItems: RECENT });
    // Every quiet moment checkpoints, whatever the log holds.
    const store = new DuckDbIntakeStore(events, catalog, { settleMinLogBytes: 0 });
    const queue = new StoreQueue();
    const settleAfterMs = 5;
    const intake = new EventIntake({ intakeStore: store, catalog, users, queue, unknownItems: "reject", maxBatchEvents: 1000, now: () => world.endMs + DAY_MS, settleAfterMs });

    const next = seededRandom(29);
    const sent: { userId: string; itemId: string; ts: number; engagement: number }[] = [];
    const event = () => {
      if (next() < 0.15 && sent.length) return { ...sent[Math.floor(next() * sent.length)], engagement: 0.9 };
      const userId = next() < 0.1 ? `quiet-new-${Math.floor(next() * 20)}` : world.userId(Math.floor(next() * 150));
      const e = {
        userId,
        itemId: catalog.itemIds[Math.floor(next() * catalog.itemCount)],
        // On a minute grid: ties and repeats within a batch happen too.
        ts: world.startMs + Math.floor(next() * 40_000) * 60_000,
        engagement: Math.round(next() * 100) / 100,
      };
      sent.push(e);
      return e;
    };
    let added = 0;
    let waitedFor = 0;
    for (let round = 0; round < 15; round++) {
      const batches = Array.from({ length: 1 + Math.floor(next() * 4) }, () => Array.from({ length: 1 + Math.floor(next() * 30) }, event));
      const results = await Promise.all(batches.map((b) => intake.ingest({ events: b }, undefined)));
      for (const r of results) added += r.eventsAdded;
      if (round % 3 === 2) {
        // A quiet moment long enough for its checkpoint to run.
        const ran = store.checkpoints;
        for (let waited = 0; store.checkpoints === ran && waited < 10_000; waited += 5) await sleep(5);
        expect(store.checkpoints).toBeGreaterThan(ran);
        waitedFor++;
      } else {
        // The next round comes about when the quiet moment's checkpoint starts.
        await sleep(settleAfterMs + Math.floor(next() * 3));
      }
    }
    await queue.idle();
    expect(intake.upkeep).toEqual({ ran: store.checkpoints, failed: 0, lastError: null });
    expect(store.checkpoints).toBeGreaterThanOrEqual(waitedFor);

    const stored = async (e: EventStore) => {
      const rows = await e.query<{ user_id: string; item_id: string; ts: number; n: bigint }>(
        `SELECT user_id, item_id, epoch_ms(ts)::DOUBLE AS ts, count(*) AS n FROM events JOIN users USING (user_key) JOIN items USING (item_key)
         GROUP BY ALL`,
      );
      return new Map(rows.map((r) => [`${r.user_id}|${r.item_id}|${r.ts}`, Number(r.n)]));
    };
    const check = async (e: EventStore) => {
      expect((await e.counts()).events).toBe(before + added);
      const counts = await stored(e);
      expect([...counts.values()].filter((n) => n !== 1)).toEqual([]);
      for (const s of sent) expect(counts.get(`${s.userId}|${s.itemId}|${s.ts}`)).toBe(1);
    };
    await check(events);
    const fresh = await UserIndex.load(events, catalog, { positiveMin: POSITIVE_MIN, recentItems: RECENT });
    expect(fresh.size).toBe(users.size);
    for (const userId of new Set([...sent.map((s) => s.userId), ...Array.from({ length: 150 }, (_, k) => world.userId(k))])) {
      expect({ userId, state: plain(users.get(userId)) }).toEqual({ userId, state: plain(fresh.get(userId)) });
    }
    events.close();
    events = await EventStore.open(path);
    try {
      await check(events);
    } finally {
      events.close();
    }
  }, 120_000);
});
