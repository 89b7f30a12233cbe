/**
 * A user's history kept up to date one event at a time, in any time order, with the same answer mining gives over all
 * the user's stored events (../mining/transitions.ts: positive events ordered by (ts, item key), consecutive repeats
 * collapsed into runs, the history is the clusters of the last two runs).
 *
 * Why a constant-size state is enough: every positive event after the last event of the second-to-last run belongs
 * to the last run. So with two runs known, a new event at key k (the (ts, item) order) can only
 * - land before that boundary event: the last two runs keep their clusters (runs are never merged by an insertion);
 * - land between the boundary and the newest event: a different cluster splits the last run, and since the newest
 *   event lies after it, the history becomes (its cluster, the last run's); the same cluster changes nothing;
 * - land after the newest event: a different cluster starts a new run.
 * With one run only (one cluster so far) the boundary is the run's first event and the same three cases apply.
 * The state is therefore the two clusters, the boundary key and the newest key; the equality test
 * (test/serving/intake-histories.test.ts) checks it against mining's SQL after random out-of-order batches.
 *
 * Keys: (ts, item index). The catalog numbers items in the store's item key order, so comparing indices is comparing
 * keys, as mining does.
 *
 * @example
 * const tail = emptyTail();
 * extendTail(tail, Date.parse("2025-03-02"), item, catalog.itemCluster[item]);
 * tail.c1; tail.c2; // the history (c1 = -1 until there are two runs)
 */
import type { EventLists } from "./event-lists.js";

/** What the history needs of a user's positive events. */
export interface HistoryTail {
  /** Cluster of the second-to-last run; -1 with fewer than two runs. */
  c1: number;
  /** Cluster of the last run (the latest positive event's); -1 without positive events. */
  c2: number;
  /** With two runs: the last event of the second-to-last run; with one: the run's first event. */
  boundaryTs: number;
  boundaryItem: number;
  /** The newest positive event. */
  newestTs: number;
  newestItem: number;
}

export function emptyTail(): HistoryTail {
  return { c1: -1, c2: -1, boundaryTs: 0, boundaryItem: -1, newestTs: 0, newestItem: -1 };
}

/** Whether event (ts1, item1) comes before (ts2, item2) in mining's order. */
export function precedes(ts1: number, item1: number, ts2: number, item2: number): boolean {
  return ts1 < ts2 || (ts1 === ts2 && item1 < item2);
}

/**
 * Adds one positive event that the store did not hold before. An event with the boundary's or the newest event's key
 * is that event again and changes nothing.
 * @returns whether the history (c1, c2) changed.
 */
export function extendTail(tail: HistoryTail, ts: number, item: number, cluster: number): boolean {
  if (tail.c2 < 0) {
    tail.c2 = cluster;
    tail.boundaryTs = tail.newestTs = ts;
    tail.boundaryItem = tail.newestItem = item;
    return false;
  }
  if ((ts === tail.newestTs && item === tail.newestItem) || (ts === tail.boundaryTs && item === tail.boundaryItem)) return false;
  if (precedes(tail.newestTs, tail.newestItem, ts, item)) {
    const changed = cluster !== tail.c2;
    if (changed) {
      // A new last run: the old newest event is now the last of the second-to-last run.
      tail.c1 = tail.c2;
      tail.c2 = cluster;
      tail.boundaryTs = tail.newestTs;
      tail.boundaryItem = tail.newestItem;
    }
    tail.newestTs = ts;
    tail.newestItem = item;
    return changed;
  }
  if (tail.c1 < 0) {
    // One run so far, spanning [boundary, newest].
    if (cluster === tail.c2) {
      if (precedes(ts, item, tail.boundaryTs, tail.boundaryItem)) {
        tail.boundaryTs = ts;
        tail.boundaryItem = item;
      }
      return false;
    }
    // Before the run or inside it: either way the run has events after this one, so this is the second-to-last run.
    tail.c1 = cluster;
    tail.boundaryTs = ts;
    tail.boundaryItem = item;
    return true;
  }
  if (precedes(ts, item, tail.boundaryTs, tail.boundaryItem) || cluster === tail.c2) return false;
  // Splits the last run (or extends the second-to-last one forward when it is c1 right after the boundary).
  const changed = cluster !== tail.c1;
  tail.c1 = cluster;
  tail.boundaryTs = ts;
  tail.boundaryItem = item;
  return changed;
}

/**
 * The `limit` most recently positively engaged distinct items, newest first, each with the time of its latest positive
 * event, after one more positive event (any time order): list `u` of `recent`, changed in place. An item's latest
 * time only grows, so the top `limit` by it can be kept without the items that fell out.
 * @returns whether the list changed.
 */
export function extendRecent(recent: EventLists, u: number, ts: number, item: number, limit: number): boolean {
  const n = recent.length(u);
  let at = -1;
  for (let k = 0; k < n; k++) {
    if (recent.item(u, k) === item) {
      at = k;
      break;
    }
  }
  if (at >= 0) {
    if (recent.time(u, at) >= ts) return false;
    // Taken out; it goes back in at its new place below.
    recent.remove(u, at);
  } else if (n >= limit) {
    const last = n - 1;
    if (limit === 0 || !precedes(recent.time(u, last), recent.item(u, last), ts, item)) return false;
    recent.remove(u, last);
  }
  const left = recent.length(u);
  let place = 0;
  while (place < left && !precedes(recent.time(u, place), recent.item(u, place), ts, item)) place++;
  recent.insert(u, place, item, ts);
  return true;
}
