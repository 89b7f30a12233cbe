/**
 * One writer at a time on the event store. The store has one DuckDB connection and `EventStore.append` spans several
 * statements inside BEGIN ... COMMIT; anything else sent on that connection meanwhile would run inside the append's
 * transaction. The server therefore sends every event-store statement (intake, exposure flushes, user refreshes,
 * grounding rebuilds) through this queue, in arrival order.
 *
 * @example
 * const queue = new StoreQueue();
 * const result = await queue.run(() => events.append({ events: batch }));
 */
export class StoreQueue {
  private tail: Promise<unknown> = Promise.resolve();
  private pending = 0;

  /** Runs `task` after every task queued before it; its result or error is the returned promise's. */
  run<T>(task: () => Promise<T>): Promise<T> {
    this.pending++;
    const result = this.tail.then(task, task);
    this.tail = result.then(
      () => this.pending--,
      () => this.pending--,
    );
    return result;
  }

  /** Tasks queued or running. */
  get size(): number {
    return this.pending;
  }

  /** Resolves when everything queued so far has finished. */
  async idle(): Promise<void> {
    while (this.pending > 0) await this.tail;
  }
}
