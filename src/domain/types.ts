/**
 * Plain types of the freshrec domain. This folder imports nothing: every other layer builds on it.
 *
 * Cluster ids, item ids and user ids are the user's own strings; the event store keeps dense integer keys
 * beside them for speed, but nothing outside `data/` sees those keys.
 */

/** A topical interest cluster with a short keyword description ("baking, desserts, pastry"). */
export interface Cluster {
  readonly id: string;
  readonly description: string;
}

/** An item belongs to exactly one cluster. */
export interface Item {
  readonly id: string;
  readonly clusterId: string;
  readonly title?: string;
}

/** One interaction. `engagement` is the raw signal (rating, watch fraction...); absent means "engaged". */
export interface EngagementEvent {
  readonly userId: string;
  readonly itemId: string;
  /** Milliseconds since the Unix epoch. */
  readonly ts: number;
  readonly engagement?: number;
}

/** The last k=2 distinct positively engaged clusters of a user, oldest first. */
export interface History {
  readonly c1: string;
  readonly c2: string;
}

/** A novel-interest transition (c1, c2) -> next, with `next` not in {c1, c2}. */
export interface Transition extends History {
  readonly next: string;
}

/** A transition with the number of distinct users who made it inside a window. */
export interface TransitionCount extends Transition {
  readonly users: number;
}

/** The key of a history pair in maps (ids may hold any character but NUL). */
export function pairKey(c1: string, c2: string): string {
  return `${c1}\u0000${c2}`;
}

/** A half-open time window [from, to) in epoch milliseconds. */
export interface TimeWindow {
  readonly from: number;
  readonly to: number;
}

/** Ranked successors of one history pair, most frequent first. */
export interface SuccessorList extends History {
  readonly successors: ReadonlyArray<{ readonly cluster: string; readonly users: number }>;
}

/**
 * Progress of a long job. Jobs report through this; the CLI renders it (a bar on a TTY, periodic lines
 * otherwise) and tests ignore it.
 */
export interface ProgressSink {
  start(label: string, total: number): void;
  update(done: number, detail?: Record<string, string | number>): void;
  stop(): void;
}

export const SILENT_PROGRESS: ProgressSink = { start() {}, update() {}, stop() {} };

/** A cluster with a score (a probability for LLM tables, a count share for baselines). */
export interface ScoredCluster {
  readonly cluster: string;
  readonly score: number;
}

/** One row of a table: the ranked novel clusters predicted for a history pair (never c1 or c2). */
export interface TableRow extends History {
  readonly answers: readonly ScoredCluster[];
}
