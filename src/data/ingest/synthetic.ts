/**
 * Writes the synthetic platform into the event store: its catalog, then its generated events streamed batch by
 * batch (the generator awaits each append, so memory stays flat at any scale), all in one transaction.
 *
 * @example
 * const world = new SyntheticWorld(SYNTHETIC_QUICK);
 * const report = await ingestSynthetic(store, world);
 */
import { SILENT_PROGRESS, type ProgressSink } from "../../domain/types.js";
import type { EventChunk, EventStoreContract } from "../event-store.js";
import type { SyntheticEventBatch, SyntheticWorld } from "../synthetic/index.js";

export interface SyntheticIngestReport {
  readonly events: number;
  readonly items: number;
  readonly clusters: number;
  readonly users: number;
  readonly skippedDuplicates: number;
  readonly positiveEvents: number;
}

export async function ingestSynthetic(store: EventStoreContract, world: SyntheticWorld, progress: ProgressSink = SILENT_PROGRESS): Promise<SyntheticIngestReport> {
  const items = world.items();
  const userIds = Array.from({ length: world.userCount }, (_, k) => world.userId(k));
  const itemIds = items.map((item) => item.id);
  // Re-running the same world is idempotent; another seed or scale into the same store is refused, before generating.
  // batchSize only cuts the stream into appends: the same world in other batches is the same data.
  const { batchSize: _batchSize, ...worldOptions } = world.options;
  const identity = { dataset: "synthetic", synthetic_options: JSON.stringify(worldOptions) };
  await store.checkIdentity(identity);
  let generated = 0;
  let positiveEvents = 0;
  progress.start("synthesizing events", world.options.targetEvents);
  const chunks = pullBatches<SyntheticEventBatch>(async (emit) => {
    const summary = await world.generate(async (batch) => {
      generated += batch.length;
      progress.update(Math.min(generated, world.options.targetEvents), { events: generated });
      await emit(batch);
    });
    positiveEvents = summary.positiveEvents;
  });
  try {
    const result = await store.append({
      clusters: world.clusters.map((c) => ({ id: c.id, description: c.description })),
      items,
      events: { userIds, itemIds, chunks: chunks as AsyncIterable<EventChunk> },
      meta: { positive_min: String(world.options.positiveThreshold) },
      identity,
    });
    return {
      events: result.eventsAdded,
      items: items.length,
      clusters: world.clusters.length,
      users: userIds.length,
      skippedDuplicates: result.skippedDuplicates,
      positiveEvents,
    };
  } finally {
    progress.stop();
  }
}

/**
 * Turns a push producer (a callback that awaits each hand-off) into an async iterable, one item in flight:
 * the producer waits until the consumer has taken the previous item.
 */
export function pullBatches<T>(produce: (emit: (item: T) => Promise<void>) => Promise<void>): AsyncIterable<T> {
  return {
    [Symbol.asyncIterator]() {
      let pending: { item: T; taken: () => void } | null = null;
      let waiting: ((r: IteratorResult<T>) => void) | null = null;
      let failed: ((e: unknown) => void) | null = null;
      let finished = false;
      let error: unknown = null;
      const emit = (item: T) =>
        new Promise<void>((taken) => {
          if (waiting) {
            const w = waiting;
            waiting = failed = null;
            w({ value: item, done: false });
            taken();
          } else pending = { item, taken };
        });
      const done = produce(emit).then(
        () => {
          finished = true;
          if (waiting) waiting({ value: undefined, done: true });
        },
        (e: unknown) => {
          finished = true;
          error = e;
          if (failed) failed(e);
        },
      );
      void done;
      return {
        next(): Promise<IteratorResult<T>> {
          if (pending) {
            const { item, taken } = pending;
            pending = null;
            taken();
            return Promise.resolve({ value: item, done: false });
          }
          if (error) return Promise.reject(error);
          if (finished) return Promise.resolve({ value: undefined, done: true });
          return new Promise((resolve, reject) => {
            waiting = resolve;
            failed = reject;
          });
        },
      };
    },
  };
}
