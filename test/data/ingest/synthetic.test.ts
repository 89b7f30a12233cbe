import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EventStore } from "../../../src/data/event-store.js";
import { ingestMovieLens } from "../../../src/data/ingest/movielens.js";
import { ingestSynthetic, pullBatches } from "../../../src/data/ingest/synthetic.js";
import { SyntheticWorld, SYNTHETIC_QUICK } from "../../../src/data/synthetic/index.js";
import { countTransitions } from "../../../src/mining/transitions.js";

describe("synthetic platform into the event store", () => {
  it("streams every generated event in, idempotently, with the dataset's positive threshold", async () => {
    const world = new SyntheticWorld({ ...SYNTHETIC_QUICK, users: 300, targetEvents: 30_000, batchSize: 4096 });
    let generated = 0;
    await world.generate((b) => {
      generated += b.length;
    });
    const store = await EventStore.open(":memory:");
    const report = await ingestSynthetic(store, world);
    expect(report.events).toBe(generated);
    expect(report.skippedDuplicates).toBe(0);
    expect(await store.counts()).toMatchObject({ events: generated, clusters: world.clusters.length, items: world.itemTotal });
    expect(await store.getMeta("positive_min")).toBe("0.5");
    const again = await ingestSynthetic(store, world);
    expect(again).toMatchObject({ events: 0, skippedDuplicates: generated });
    const transitions = await countTransitions(store, { from: world.startMs, to: world.endMs }, { positiveMin: 0.5 });
    expect(transitions.length).toBeGreaterThan(100);
    for (const t of transitions.slice(0, 50)) expect(new Set([t.c1, t.c2, t.next]).size).toBe(3);
    store.close();
  });

  it("refuses to merge another world, or another dataset, into a store that holds one, writing nothing", async () => {
    const options = { ...SYNTHETIC_QUICK, users: 200, targetEvents: 10_000, batchSize: 4096 };
    const store = await EventStore.open(":memory:");
    try {
      await ingestSynthetic(store, new SyntheticWorld(options));
      const before = await store.counts();
      // Another seed: the same user ids with other histories; refused, naming what differs.
      await expect(ingestSynthetic(store, new SyntheticWorld({ ...options, seed: 7 }))).rejects.toThrow(/the synthetic dataset with other settings: synthetic_options differ in seed \(42 here, 7 requested\).*another --workspace/);
      await expect(ingestSynthetic(store, new SyntheticWorld({ ...options, users: 300 }))).rejects.toThrow(/users \(200 here, 300 requested\)/);
      // Another dataset altogether (MovieLens) is refused the same way.
      await expect(ingestMovieLens(store, join(import.meta.dirname, "../../../../shared/datasets/movielens-latest-small"))).rejects.toThrow(
        /another dataset than ml-latest-small: dataset "synthetic" here, "ml-latest-small" requested/,
      );
      expect(await store.counts()).toEqual(before);
      expect(JSON.parse((await store.getMeta("synthetic_options"))!)).toMatchObject({ seed: 42, users: 200 });
      // The same world cut into other batches is the same data: accepted, nothing added twice.
      expect(await ingestSynthetic(store, new SyntheticWorld({ ...options, batchSize: 1000 }))).toMatchObject({ events: 0 });
      // A store written before batchSize left the identity (it recorded the full options) still takes its own world.
      await store.append({ meta: { synthetic_options: JSON.stringify(new SyntheticWorld(options).options) } });
      expect(JSON.parse((await store.getMeta("synthetic_options"))!)).toHaveProperty("batchSize", 4096);
      expect(await ingestSynthetic(store, new SyntheticWorld(options))).toMatchObject({ events: 0 });
      // Events without a dataset identity (the API's intake, generic files) still append: they name no dataset.
      const more = await store.append({ events: { userIds: ["u000000"], itemIds: [new SyntheticWorld(options).items()[0].id], chunks: [{ length: 1, userIndex: Int32Array.of(0), itemIndex: Int32Array.of(0), ts: Float64Array.of(before.lastTs! + 1), engagement: Float32Array.of(1) }] } });
      expect(more.eventsAdded).toBe(1);
    } finally {
      store.close();
    }
    // A synthetic world into a store of other data (no identity recorded) is refused too.
    const other = await EventStore.open(":memory:");
    try {
      const world = new SyntheticWorld(options);
      await other.append({ clusters: [{ id: "c", description: "mine" }], items: [{ id: "i", clusterId: "c" }], events: { userIds: ["me"], itemIds: ["i"], chunks: [{ length: 1, userIndex: Int32Array.of(0), itemIndex: Int32Array.of(0), ts: Float64Array.of(world.startMs), engagement: Float32Array.of(1) }] } });
      await expect(ingestSynthetic(other, world)).rejects.toThrow(/dataset is not recorded \(the store holds other data\)/);
      expect((await other.counts()).events).toBe(1);
    } finally {
      other.close();
    }
  });

  it("hands batches over one at a time and propagates producer errors", async () => {
    const seen: number[] = [];
    for await (const n of pullBatches<number>(async (emit) => {
      for (let k = 0; k < 5; k++) await emit(k);
    })) seen.push(n);
    expect(seen).toEqual([0, 1, 2, 3, 4]);
    const failing = pullBatches<number>(async (emit) => {
      await emit(1);
      throw new Error("generator broke");
    });
    const got: number[] = [];
    await expect(
      (async () => {
        for await (const n of failing) got.push(n);
      })(),
    ).rejects.toThrow("generator broke");
    expect(got).toEqual([1]);
  });
});
