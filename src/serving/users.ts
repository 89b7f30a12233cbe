/**
 * What serving knows about each user, held in memory so that a request costs no database query: the history (the
 * last two distinct positively engaged clusters, as mining defines it in ../mining/transitions.ts), the most recent
 * positively engaged items (where co-visitation starts) and every item the user already had an event with (never
 * recommended again).
 *
 * Loaded from the event store at start-up in one ordered scan; after each accepted intake batch the events the store
 * newly took are applied to their users' states in place (`apply`), in any time order: the state keeps just enough of
 * each user's events (./histories.ts) to give what a reload would. No other user is touched, and nothing costs more
 * than the posting user's own events: an intake batch is never a recount. On a shared PostgreSQL store the events
 * other processes append are applied the same way (./store-follower.ts); applying an event the index holds changes
 * nothing, so the two paths may bring the same event in either order. An item moved to another cluster there changes
 * the cluster of events already applied: the users holding one are read again from the store (`reload`), they alone.
 *
 * The index also knows every stored event's identity (user, item, ts), which is what lets intake tell a repeated event
 * from a new one without asking the store (`holds`): a lookup there has no index to use and scans the whole event
 * table, once per write.
 *
 * @example
 * const users = await UserIndex.load(events, catalog, { positiveMin: 0.5, recentItems: 10 });
 * users.get("u000123")?.history; // { c1: 17, c2: 4 } (cluster indices) or null
 * users.apply([{ userId: "u000123", item: 42, ts: Date.parse("2025-03-02T10:00:00Z"), engagement: 1 }]);
 */
import type { EventStoreContract } from "../data/event-store.js";
import type { AppendedEvent } from "../data/postgres-event-store.js";
import type { EngagementEvent } from "../domain/types.js";
import type { Catalog } from "./catalog.js";
import { SERVE_DEFAULTS } from "./defaults.js";
import { emptyTail, extendRecent, extendTail, type HistoryTail } from "./histories.js";

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
  /**
   * The item of every stored event of the user, ascending by (item, time): an item repeats once per event with it.
   * What exploration never recommends again, and with `seenTs` what tells a repeated event from a new one.
   */
  seen: number[];
  /** The time of each event of `seen` (epoch milliseconds, as stored), same order. */
  seenTs: number[];
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

  static async load(store: EventStoreContract, catalog: Catalog, options: UserIndexOptions): Promise<UserIndex> {
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
   * Whether the store holds this event (user, item, ts): every event the index loaded or was given to `apply` is
   * known. In the embedded store, which only this process writes while it serves, that is every stored event; a
   * store other processes write too may hold more (its adapter checks what this does not know).
   */
  holds(userId: string, item: number, ts: number): boolean {
    return UserIndex.holdsEvent(this.states.get(userId), item, ts);
  }

  /** `holds` for a state already looked up (a lookup among every user costs more than the rest of the check). */
  static holdsEvent(state: UserState | undefined, item: number, ts: number): boolean {
    return state !== undefined && eventPosition(state.seen, state.seenTs, item, ts) < 0;
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
    for (const e of events) this.applyOne(this.states.get(e.userId), e.userId, e.item, e.ts, e.engagement);
  }

  /**
   * `apply` with each event's state already looked up (`get` before the write): `states[k]` is the state of
   * `events[k].userId`, or undefined for a user the index did not have then (looked up again: an earlier event of the
   * same call may have added the user).
   */
  applyKnown(events: readonly StoredEvent[], states: readonly (UserState | undefined)[]): void {
    for (let k = 0; k < events.length; k++) {
      const e = events[k];
      this.applyOne(states[k] ?? this.states.get(e.userId), e.userId, e.item, e.ts, e.engagement);
    }
  }

  /**
   * Sets users' states to what a load computes from their stored events, for a catalog change that alters the
   * clusters of events already applied: an item moved to another cluster moves every event of it, past ones too, and
   * that can change a history anywhere along it, beyond what a state keeps. Each entry is every event the store holds
   * of one user, in mining's order (ts, then item key), as a load reads them; an item the catalog lacks is left out,
   * as a load leaves it out. Changed in place: whoever holds a user's state (intake, between its lookup and its
   * write) holds the new one. Events the state held that the list lacks (stored after the list was read) are dropped
   * with the rest: `apply` brings them again when they are read, which it would skip as known if they stayed.
   */
  reload(histories: readonly (readonly AppendedEvent[])[]): void {
    for (const events of histories) {
      if (events.length === 0) continue;
      const fresh = this.stateOf(
        events.map((e) => e.itemKey),
        events.map((e) => e.ts),
        events.map((e) => this.isPositive(e.engagement)),
        0,
        events.length,
      );
      const state = this.states.get(events[0].userId);
      if (state) Object.assign(state, fresh);
      else this.states.set(events[0].userId, fresh);
    }
  }

  /** Applies one new event of the simulation's stream (`apply` for an event given by item id). */
  observe(event: EngagementEvent): void {
    const item = this.catalog.itemIndex.get(event.itemId);
    if (item === undefined) return;
    this.applyOne(this.states.get(event.userId), event.userId, item, event.ts, event.engagement);
  }

  private applyOne(known: UserState | undefined, userId: string, item: number, ts: number, engagement: number | null | undefined): void {
    let state = known;
    if (!state) {
      state = { history: null, lastCluster: -1, recent: [], recentTs: [], seen: [], seenTs: [], tail: emptyTail() };
      this.states.set(userId, state);
    }
    const at = eventPosition(state.seen, state.seenTs, item, ts);
    // An event the index holds already changes nothing (the store keeps the first one).
    if (at < 0) return;
    state.seen.splice(at, 0, item);
    state.seenTs.splice(at, 0, ts);
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
  private async read(store: EventStoreContract): Promise<void> {
    const positiveMin = this.options.positiveMin;
    // The engagement compared as a double on both stores (PostgreSQL would compare a REAL with a REAL parameter).
    const [double, min] = store.dialect === "postgres" ? ["FLOAT8", "$positiveMin::FLOAT8"] : ["DOUBLE", "$positiveMin"];
    const positive = positiveMin === null ? "true" : `(e.engagement IS NULL OR e.engagement >= ${min})`;
    const users = new Map(
      (await store.query<{ k: number; id: string }>("SELECT user_key AS k, user_id AS id FROM users")).map((r) => [r.k, r.id]),
    );
    const read = await store.queryColumns(
      `SELECT e.user_key, e.item_key, epoch_ms(e.ts)::${double} AS ts, ${positive} AS positive FROM events e
       ORDER BY e.user_key, e.ts, e.item_key`,
      positiveMin === null ? {} : { positiveMin },
    );
    const n = read.rowCount;
    const [userKeys, itemKeys, times, positives] = n ? (read.columns as [number[], number[], number[], boolean[]]) : [[], [], [], []];
    let start = 0;
    while (start < n) {
      const key = userKeys[start];
      let end = start;
      while (end < n && userKeys[end] === key) end++;
      const userId = users.get(key);
      if (userId !== undefined) this.states.set(userId, this.stateOf(itemKeys, times, positives, start, end));
      start = end;
    }
  }

  /**
   * A user's state from every stored event of the user: rows start..end-1 of the columns, in mining's order (ts, then
   * item key), items as store keys.
   */
  private stateOf(itemKeys: ArrayLike<number>, times: ArrayLike<number>, positives: ArrayLike<boolean>, start: number, end: number): UserState {
    const { catalog } = this;
    const rows: number[] = [];
    const tail = emptyTail();
    for (let r = start; r < end; r++) {
      // An item added after the catalog was read is not known yet (the store follower brings it and its events).
      const item = catalog.itemOfKey[itemKeys[r]] ?? -1;
      if (item < 0) continue;
      rows.push(r);
      if (positives[r]) extendTail(tail, times[r], item, catalog.itemCluster[item]);
    }
    // The rows are in (ts, item) order; the events' identities go in (item, ts) order.
    rows.sort((a, b) => itemKeys[a] - itemKeys[b] || times[a] - times[b]);
    const seen = rows.map((r) => catalog.itemOfKey[itemKeys[r]]);
    const seenTs = rows.map((r) => times[r]);
    // Recent items newest first: the first time an item shows up walking back is its latest positive event.
    const recent: number[] = [];
    const recentTs: number[] = [];
    for (let r = end - 1; r >= start && recent.length < this.recentItems; r--) {
      const item = catalog.itemOfKey[itemKeys[r]] ?? -1;
      if (item < 0 || !positives[r] || recent.includes(item)) continue;
      recent.push(item);
      recentTs.push(times[r]);
    }
    return {
      history: tail.c1 >= 0 ? { c1: tail.c1, c2: tail.c2 } : null,
      lastCluster: tail.c2,
      recent,
      recentTs,
      seen,
      seenTs,
      tail,
    };
  }
}

/**
 * Where event (item, ts) goes in a user's (item, ts)-ordered lists, or -1 when they hold it already (binary search).
 */
function eventPosition(seen: readonly number[], seenTs: readonly number[], item: number, ts: number): number {
  let lo = 0;
  let hi = seen.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (seen[mid] < item || (seen[mid] === item && seenTs[mid] < ts)) lo = mid + 1;
    else hi = mid;
  }
  return lo < seen.length && seen[lo] === item && seenTs[lo] === ts ? -1 : lo;
}
