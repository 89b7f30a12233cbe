/**
 * What serving knows about each user, held in memory so that a request costs no database query: the history (the
 * last two distinct positively engaged clusters, from the mining layer's own `historiesAsOf`, so serving and the
 * tables agree on what a history is), the most recent positively engaged items (where co-visitation starts) and
 * every item the user already had an event with (never recommended again).
 *
 * Loaded from the event store at start-up; after each accepted intake batch the users it touched are re-read from
 * the store, so late or out-of-order events give the same state as a fresh start.
 *
 * @example
 * const users = await UserIndex.load(events, catalog, { positiveMin: 0.5, recentItems: 10 });
 * users.get("u000123")?.history; // { c1: 17, c2: 4 } (cluster indices) or null
 * await users.refresh(events, ["u000123"]);
 */
import { listValue } from "@duckdb/node-api";
import type { EventStore } from "../data/event-store.js";
import type { EngagementEvent } from "../domain/types.js";
import { historiesAsOf } from "../mining/transitions.js";
import type { Catalog } from "./catalog.js";

/** Histories are read over every stored event: a time far enough out that nothing real lies beyond it. */
const ALL_TIME = Date.UTC(9999, 0, 1);

export interface UserState {
  /** The last two distinct positively engaged clusters (cluster indices, c2 most recent), null with fewer than two. */
  history: { c1: number; c2: number } | null;
  /** Cluster of the latest positive event (the current run), -1 when there is none. */
  lastCluster: number;
  /** Most recent positively engaged distinct items (item indices), newest first. */
  recent: Int32Array;
  /** Every item index the user had any event with, ascending. */
  seen: Int32Array;
}

export interface UserIndexOptions {
  /** Minimum engagement that counts as positive; null = every event counts. */
  readonly positiveMin: number | null;
  /** Recent positive items kept per user. @defaultValue 10 */
  readonly recentItems?: number;
}

export class UserIndex {
  private readonly states = new Map<string, UserState>();
  private readonly recentItems: number;

  private constructor(
    private readonly catalog: Catalog,
    private readonly options: UserIndexOptions,
  ) {
    this.recentItems = options.recentItems ?? 10;
  }

  /** An index with no users (the simulation fills it with `observe`). */
  static empty(catalog: Catalog, options: UserIndexOptions): UserIndex {
    return new UserIndex(catalog, options);
  }

  static async load(store: EventStore, catalog: Catalog, options: UserIndexOptions): Promise<UserIndex> {
    const index = new UserIndex(catalog, options);
    await index.read(store, null);
    return index;
  }

  get size(): number {
    return this.states.size;
  }

  get(userId: string): UserState | undefined {
    return this.states.get(userId);
  }

  /** Whether the user had an event with the item (binary search over the sorted list). */
  static hasSeen(state: UserState | undefined, item: number): boolean {
    if (!state) return false;
    const seen = state.seen;
    let lo = 0;
    let hi = seen.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const v = seen[mid];
      if (v === item) return true;
      if (v < item) lo = mid + 1;
      else hi = mid - 1;
    }
    return false;
  }

  /** Re-reads the named users from the store (after their events were appended). */
  async refresh(store: EventStore, userIds: readonly string[]): Promise<void> {
    if (userIds.length === 0) return;
    await this.read(store, userIds);
  }

  /**
   * Applies one event that is newer than everything the index holds for its user (the simulation's stream, which is
   * in time order per user). Out-of-order events need `refresh`.
   */
  observe(event: EngagementEvent): void {
    const item = this.catalog.itemIndex.get(event.itemId);
    if (item === undefined) return;
    let state = this.states.get(event.userId);
    if (!state) {
      state = { history: null, lastCluster: -1, recent: new Int32Array(0), seen: new Int32Array(0) };
      this.states.set(event.userId, state);
    }
    if (!UserIndex.hasSeen(state, item)) state.seen = insertSorted(state.seen, item);
    const min = this.options.positiveMin;
    const positive = event.engagement === undefined || min === null || event.engagement >= min;
    if (!positive) return;
    const cluster = this.catalog.itemCluster[item];
    if (cluster !== state.lastCluster) {
      if (state.lastCluster >= 0) state.history = { c1: state.lastCluster, c2: cluster };
      state.lastCluster = cluster;
    }
    const recent = [item];
    for (const r of state.recent) if (r !== item && recent.length < this.recentItems) recent.push(r);
    state.recent = Int32Array.from(recent);
  }

  private async read(store: EventStore, userIds: readonly string[] | null): Promise<void> {
    const { catalog } = this;
    const positiveMin = this.options.positiveMin;
    const histories = await historiesAsOf(store, ALL_TIME, { positiveMin, ...(userIds ? { userIds } : {}) });
    const only = userIds ? "WHERE e.user_key IN (SELECT user_key FROM users WHERE list_contains($ids::VARCHAR[], user_id))" : "";
    const positive = positiveMin === null ? "true" : "(e.engagement IS NULL OR e.engagement >= $positiveMin)";
    const params: Record<string, unknown> = {};
    if (userIds) params.ids = listValue([...userIds]);
    if (positiveMin !== null) params.positiveMin = positiveMin;
    const users = new Map(
      (
        await store.query<{ k: number; id: string }>(
          `SELECT user_key AS k, user_id AS id FROM users${userIds ? " WHERE list_contains($ids::VARCHAR[], user_id)" : ""}`,
          userIds ? { ids: listValue([...userIds]) } : undefined,
        )
      ).map((r) => [r.k, r.id]),
    );
    // Newest first, ties broken by item as mining breaks them, so "recent" and the history read the same order.
    const reader = await store.connection.runAndReadAll(
      `SELECT e.user_key, e.item_key, ${positive} AS positive FROM events e ${only}
       ORDER BY e.user_key, e.ts DESC, e.item_key DESC`,
      params as never,
    );
    const n = reader.currentRowCount;
    const [userKeys, itemKeys, positives] = n ? (reader.getColumns() as [number[], number[], boolean[]]) : [[], [], []];
    let start = 0;
    while (start < n) {
      const key = userKeys[start];
      let end = start;
      while (end < n && userKeys[end] === key) end++;
      const userId = users.get(key);
      if (userId !== undefined) {
        const seen: number[] = [];
        const recent: number[] = [];
        let lastCluster = -1;
        for (let r = start; r < end; r++) {
          const item = catalog.itemOfKey[itemKeys[r]];
          if (item < 0) continue;
          seen.push(item);
          if (positives[r]) {
            if (lastCluster < 0) lastCluster = catalog.itemCluster[item];
            if (recent.length < this.recentItems && !recent.includes(item)) recent.push(item);
          }
        }
        const h = histories.get(userId);
        const c1 = h ? catalog.clusterIndex.get(h.c1) : undefined;
        const c2 = h ? catalog.clusterIndex.get(h.c2) : undefined;
        this.states.set(userId, {
          history: c1 !== undefined && c2 !== undefined ? { c1, c2 } : null,
          lastCluster,
          recent: Int32Array.from(recent),
          seen: uniqueSorted(seen),
        });
      }
      start = end;
    }
  }
}

function uniqueSorted(values: number[]): Int32Array {
  const sorted = Int32Array.from(values).sort();
  let w = 0;
  for (let r = 0; r < sorted.length; r++) if (r === 0 || sorted[r] !== sorted[r - 1]) sorted[w++] = sorted[r];
  return sorted.slice(0, w);
}

function insertSorted(list: Int32Array, value: number): Int32Array {
  const out = new Int32Array(list.length + 1);
  let i = 0;
  while (i < list.length && list[i] < value) {
    out[i] = list[i];
    i++;
  }
  out[i] = value;
  out.set(list.subarray(i), i + 1);
  return out;
}
