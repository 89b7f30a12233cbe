/**
 * What serving knows about each user, held in memory so that a request costs no database query: the history (the
 * last two distinct positively engaged clusters, as mining defines it in ../mining/transitions.ts), the most recent
 * positively engaged items (where co-visitation starts) and every item the user already had an event with (never
 * recommended again).
 *
 * Loaded from the event store at start-up in one ordered scan; after each accepted intake batch the events the store
 * newly took are applied to their users' states in place (`apply`), in any time order: the state keeps just enough of
 * each user's events (./histories.ts) to give what a reload would. No other user is touched.
 *
 * @example
 * const users = await UserIndex.load(events, catalog, { positiveMin: 0.5, recentItems: 10 });
 * users.get("u000123")?.history; // { c1: 17, c2: 4 } (cluster indices) or null
 * users.apply([{ userId: "u000123", item: 42, ts: Date.parse("2025-03-02T10:00:00Z"), engagement: 1 }]);
 */
import type { EventStore } from "../data/event-store.js";
import type { EngagementEvent } from "../domain/types.js";
import type { Catalog } from "./catalog.js";
import { SERVE_DEFAULTS } from "./defaults.js";
import { emptyTail, extendRecent, extendTail, insertSorted, type HistoryTail } from "./histories.js";

export interface UserState {
  /** The last two distinct positively engaged clusters (cluster indices, c2 most recent), null with fewer than two. */
  history: { c1: number; c2: number } | null;
  /** Cluster of the latest positive event (the current run), -1 when there is none. */
  lastCluster: number;
  /**
   * Most recent positively engaged distinct items (item indices), newest first. Plain arrays here and below, changed
   * in place: typed arrays of this size live outside the JS heap, and allocating one per event cost more than all
   * the rest intake does per event.
   */
  recent: number[];
  /** Time of each recent item's latest positive event (so a late event finds its place). */
  recentTs: number[];
  /** Every item index the user had any event with, ascending. */
  seen: number[];
  /** Where the history's last two runs lie (what lets an out-of-order event update it exactly). */
  tail: HistoryTail;
}

/** An event the store took, with its item as a catalog index. */
export interface StoredEvent {
  readonly userId: string;
  readonly item: number;
  /** Epoch milliseconds, as stored (whole milliseconds). */
  readonly ts: number;
  /** As stored (float32); null or absent = engaged. */
  readonly engagement?: number | null;
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
    this.recentItems = options.recentItems ?? SERVE_DEFAULTS.recentItems;
  }

  /** An index with no users (the simulation fills it with `observe`). */
  static empty(catalog: Catalog, options: UserIndexOptions): UserIndex {
    return new UserIndex(catalog, options);
  }

  static async load(store: EventStore, catalog: Catalog, options: UserIndexOptions): Promise<UserIndex> {
    const index = new UserIndex(catalog, options);
    await index.read(store);
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

  /**
   * Whether the store may already hold an event of this user with this item. False is certain: every stored event
   * put its item into `seen`. Intake asks the store only about events where this is true.
   */
  mayHaveStored(userId: string, item: number): boolean {
    return UserIndex.hasSeen(this.states.get(userId), item);
  }

  /** Whether an engagement counts as positive, compared as the store compares it (the float32 it holds). */
  isPositive(engagement: number | null | undefined): boolean {
    const min = this.options.positiveMin;
    return engagement === undefined || engagement === null || min === null || Math.fround(engagement) >= min;
  }

  /**
   * Applies events the store has just taken (new ones only: a duplicate the store skipped must not be applied, its
   * stored engagement may differ), in any time order, to their users' states in place.
   */
  apply(events: readonly StoredEvent[]): void {
    for (const e of events) this.applyOne(e.userId, e.item, e.ts, e.engagement);
  }

  /** Applies one new event of the simulation's stream (`apply` for an event given by item id). */
  observe(event: EngagementEvent): void {
    const item = this.catalog.itemIndex.get(event.itemId);
    if (item === undefined) return;
    this.applyOne(event.userId, item, event.ts, event.engagement);
  }

  private applyOne(userId: string, item: number, ts: number, engagement: number | null | undefined): void {
    let state = this.states.get(userId);
    if (!state) {
      state = { history: null, lastCluster: -1, recent: [], recentTs: [], seen: [], tail: emptyTail() };
      this.states.set(userId, state);
    }
    insertSorted(state.seen, item);
    if (this.isPositive(engagement)) this.addPositive(state, item, ts);
  }

  private addPositive(state: UserState, item: number, ts: number): void {
    const tail = state.tail;
    if (extendTail(tail, ts, item, this.catalog.itemCluster[item])) state.history = tail.c1 >= 0 ? { c1: tail.c1, c2: tail.c2 } : null;
    state.lastCluster = tail.c2;
    extendRecent(state.recent, state.recentTs, ts, item, this.recentItems);
  }

  /**
   * Every user's state from one scan of the events in mining's order (ts, then item key): the history through the
   * same `extendTail` intake uses, events in order.
   */
  private async read(store: EventStore): Promise<void> {
    const { catalog } = this;
    const positiveMin = this.options.positiveMin;
    const positive = positiveMin === null ? "true" : "(e.engagement IS NULL OR e.engagement >= $positiveMin)";
    const users = new Map(
      (await store.query<{ k: number; id: string }>("SELECT user_key AS k, user_id AS id FROM users")).map((r) => [r.k, r.id]),
    );
    const reader = await store.connection.runAndReadAll(
      `SELECT e.user_key, e.item_key, epoch_ms(e.ts)::DOUBLE AS ts, ${positive} AS positive FROM events e
       ORDER BY e.user_key, e.ts, e.item_key`,
      (positiveMin === null ? {} : { positiveMin }) as never,
    );
    const n = reader.currentRowCount;
    const [userKeys, itemKeys, times, positives] = n ? (reader.getColumns() as [number[], number[], number[], boolean[]]) : [[], [], [], []];
    let start = 0;
    while (start < n) {
      const key = userKeys[start];
      let end = start;
      while (end < n && userKeys[end] === key) end++;
      const userId = users.get(key);
      if (userId !== undefined) {
        const seen: number[] = [];
        const tail = emptyTail();
        for (let r = start; r < end; r++) {
          const item = catalog.itemOfKey[itemKeys[r]];
          if (item < 0) continue;
          seen.push(item);
          if (positives[r]) extendTail(tail, times[r], item, catalog.itemCluster[item]);
        }
        // Recent items newest first: the first time an item shows up walking back is its latest positive event.
        const recent: number[] = [];
        const recentTs: number[] = [];
        for (let r = end - 1; r >= start && recent.length < this.recentItems; r--) {
          const item = catalog.itemOfKey[itemKeys[r]];
          if (item < 0 || !positives[r] || recent.includes(item)) continue;
          recent.push(item);
          recentTs.push(times[r]);
        }
        this.states.set(userId, {
          history: tail.c1 >= 0 ? { c1: tail.c1, c2: tail.c2 } : null,
          lastCluster: tail.c2,
          recent,
          recentTs,
          seen: uniqueSorted(seen),
          tail,
        });
      }
      start = end;
    }
  }
}

function uniqueSorted(values: number[]): number[] {
  values.sort((a, b) => a - b);
  let w = 0;
  for (let r = 0; r < values.length; r++) if (r === 0 || values[r] !== values[r - 1]) values[w++] = values[r];
  values.length = w;
  return values;
}
