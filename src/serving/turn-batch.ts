/**
 * Work of the requests that arrive in one turn of the event loop, done together at the end of that turn.
 *
 * Why: under load a turn reads many requests (one per connection with data), and answering each one in full before
 * reading the next interleaves the HTTP code with the answering code: each evicts the other's code and data from the
 * CPU caches, and both run slower. Batched per turn (every request read and routed, then every answer found and
 * written, then every response sent), each phase's code and shared data stay warm from one request to the next. A
 * request waits only for the others of its turn: the batch runs in the same turn's check phase (`setImmediate`),
 * before any new input is read.
 *
 * A job that throws, or returns a promise that rejects, fails its own request only.
 *
 * @example
 * const batch = new TurnBatch();
 * const body = await batch.run(() => writeBody(explorer.answer(request)));
 */
interface Job {
  readonly work: () => unknown;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
}

export class TurnBatch {
  private queued: Job[] = [];

  /** Queues `work` for the end of this turn; @returns what it returns (or its promise's value). */
  run<R>(work: () => R | Promise<R>): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.queued.push({ work, resolve: resolve as (value: unknown) => void, reject });
      if (this.queued.length === 1) setImmediate(() => this.runQueued());
    });
  }

  private runQueued(): void {
    const jobs = this.queued;
    this.queued = [];
    for (const job of jobs) {
      try {
        // A promise (work that answers later) settles the job when it settles.
        job.resolve(job.work());
      } catch (error) {
        job.reject(error);
      }
    }
  }
}
