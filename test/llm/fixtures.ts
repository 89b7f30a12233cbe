import { existsSync } from "node:fs";
import { expect } from "vitest";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";
import type { Cluster, EngagementEvent } from "../../src/domain/types.js";
import type { Trainer, TrainingSample } from "../../src/llm/contracts.js";

export const CLUSTERS: Cluster[] = [
  { id: "baking", description: "baking, desserts, pastry" },
  { id: "hiking", description: "hiking, trails, mountains" },
  { id: "jazz", description: "jazz, vinyl, saxophone" },
  { id: "chess", description: "chess, openings" },
  { id: "garden", description: "gardening, roses, compost" },
  { id: "cars", description: "cars, engines" },
  { id: "poetry", description: "poetry" },
  { id: "space", description: "space, rockets, astronomy" },
];

/** A seeded toy platform: the next cluster mostly follows the second history cluster. */
export function toySamples(n: number, seed = 3): TrainingSample[] {
  let s = seed;
  const rnd = () => {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    return s / 0x7fffffff;
  };
  const ids = CLUSTERS.map((c) => c.id);
  const out: TrainingSample[] = [];
  while (out.length < n) {
    const a = Math.floor(rnd() * ids.length);
    const b = Math.floor(rnd() * ids.length);
    if (a === b) continue;
    const next = rnd() < 0.7 ? (b + 1) % ids.length : Math.floor(rnd() * ids.length);
    if (next === a || next === b) continue;
    out.push({ prompt: { history: { c1: ids[a], c2: ids[b] } }, answer: ids[next] });
  }
  return out;
}

export const TINY_SHAPE = { embedding: 32, layers: 1, heads: 2, feedForward: 64, contextLength: 256 } as const;

/**
 * Trains until the first epoch ends, then aborts: the run must reject with CANCELLED and leave neither the output
 * model nor its checkpoints (every trainer's cancellation contract).
 */
export async function expectCancelledCleanly(trainer: Trainer, samples: readonly TrainingSample[], out: string, epochs: number): Promise<void> {
  const controller = new AbortController();
  const run = trainer.train(samples, {
    outputPath: out,
    epochs,
    patience: epochs,
    signal: controller.signal,
    onProgress: (e) => {
      if (e.type === "epoch") controller.abort();
    },
  });
  await expect(run).rejects.toMatchObject({ code: "CANCELLED" });
  expect(existsSync(out)).toBe(false);
  expect(existsSync(`${out}.checkpoints`)).toBe(false);
}

/**
 * A deterministic 12-cluster world for tests that train a tiny model on every history pair: cluster `k<i>` is
 * described by a word, and the successor of a pair (a, b) is decided by b (`shift` picks another), never a history
 * cluster.
 */
export const PAIR_WORLD = (() => {
  const words = ["amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "harbor", "indigo", "juniper", "kelp", "lagoon"];
  const clusters: Cluster[] = words.map((w, k) => ({ id: `k${k}`, description: `${w} videos` }));
  const n = clusters.length;
  const successor = (a: number, b: number, shift = 0): number => {
    let k = (b * 5 + 1 + shift) % n;
    while (k === a || k === b) k = (k + 1) % n;
    return k;
  };
  const pairs: [number, number][] = [];
  for (let a = 0; a < n; a++) for (let b = 0; b < n; b++) if (a !== b) pairs.push([a, b]);
  return { clusters, ids: clusters.map((c) => c.id), n, successor, pairs };
})();

/**
 * A log of PAIR_WORLD: `visit(a, b, next, at)` records one new user's three events (item `i<k>` of cluster `k<k>`),
 * `open()` an in-memory event store with the world's catalog and the visits so far.
 */
export function pairWorldLog(): { visit: (a: number, b: number, next: number, at: number) => void; open: () => Promise<EventStore> } {
  const events: EngagementEvent[] = [];
  let user = 0;
  return {
    visit: (a, b, next, at) => {
      const u = `u${user++}`;
      [a, b, next].forEach((c, k) => events.push({ userId: u, itemId: `i${c}`, ts: at + k * 1000 }));
    },
    open: async () => {
      const store = await EventStore.open(":memory:");
      await store.append({ clusters: PAIR_WORLD.clusters, items: PAIR_WORLD.clusters.map((c, k) => ({ id: `i${k}`, clusterId: c.id })), events: eventBatchFromEvents(events) });
      return store;
    },
  };
}
