import { describe, expect, it } from "vitest";
import { EventStore } from "../../../src/data/event-store.js";
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
