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
import { EventLists, grown } from "./event-lists.js";
import { emptyTail, extendRecent, extendTail, type HistoryTail } from "./histories.js";

/**
 * A user's state as serving reads it, taken when `UserIndex.get` is called: the history, the current run's cluster
 * and the recent items as they were then; the events (`seen`, `hasSeen`) as they are when asked.
 */
export class UserState {
  /** The last two distinct positively engaged clusters (cluster indices, c2 most recent), null with fewer than two. */
  readonly history: { c1: number; c2: number } | null;
  /** Cluster of the latest positive event (the current run), -1 when there is none. */
  readonly lastCluster: number;
  /** Most recent positively engaged distinct items (item indices), newest first. */
  readonly recent: number[];
  /** Time of each recent item's latest positive event. */
  readonly recentTs: number[];
  /** Where the history's last two runs lie (what lets an out-of-order event update it exactly). */
  readonly tail: HistoryTail;
  readonly #users: UserIndex;
  readonly #user: number;

  constructor(users: UserIndex, user: number, tail: HistoryTail, recent: { items: number[]; times: number[] }) {
    this.#users = users;
    this.#user = user;
    this.tail = tail;
    this.history = tail.c1 >= 0 ? { c1: tail.c1, c2: tail.c2 } : null;
    this.lastCluster = tail.c2;
    this.recent = recent.items;
    this.recentTs = recent.times;
  }

  /** The item of every stored event of the user, ascending by (item, time): an item repeats once per event with it. */
  get seen(): number[] {
    return this.#users.events(this.#user).items;
  }

  /** The time of each event of `seen` (epoch milliseconds, as stored), same order. */
  get seenTs(): number[] {
    return this.#users.events(this.#user).times;
  }

  /** Whether the user had an event with the item: what exploration never recommends again. */
  hasSeen(item: number): boolean {
    return this.#users.hasSeen(this.#user, item);
  }
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

/**
 * Every user's state, by the user's number in the index (given in order of arrival, never changed or reused): the
 * events and the recent items as lists in shared typed arrays (./event-lists.ts says why), the history's tail as
 * columns. Nothing here is an object per user but the user's id, the key of the map to the number.
 */
export class UserIndex {
  private readonly numbers = new Map<string, number>();
  private readonly recentItems: number;
  /** Per user, every stored event (item, ts), ascending by (item, ts). */
  private readonly seen: EventLists;
  /** Per user, the recent positive items (item, time of its latest positive event), newest first. */
  private readonly recent: EventLists;
  /** Per user, the history's tail (./histories.ts), one column per field. */
  private c1: Int32Array = new Int32Array(1024);
  private c2: Int32Array = new Int32Array(1024);
  private boundaryTs: Float64Array = new Float64Array(1024);
  private boundaryItem: Int32Array = new Int32Array(1024);
  private newestTs: Float64Array = new Float64Array(1024);
  private newestItem: Int32Array = new Int32Array(1024);
  /** The tail `extendTail` works on: one user's columns copied in and back. */
  private readonly tail = emptyTail();

  private constructor(
    private readonly catalog: Catalog,
    private readonly options: UserIndexOptions,
  ) {
    this.recentItems = options.recentItems ?? SERVE_DEFAULTS.recentItems;
    this.seen = new EventLists();
    this.recent = new EventLists();
  }

  /** An index with no users (the simulation fills it with `observe`). */
  static empty(catalog: Catalog, options: UserIndexOptions): UserIndex {
    return new UserIndex(catalog, options);
  }

  static async load(store: EventStoreContract, catalog: Catalog, options: UserIndexOptions): Promise<UserIndex> {
    const positiveMin = options.positiveMin;
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
    const index = new UserIndex(catalog, options);
    const [userKeys, itemKeys, times, positives] = n ? (read.columns as [number[], number[], number[], boolean[]]) : [[], [], [], []];
    const items = index.itemsOfKeys(itemKeys);
    let start = 0;
    while (start < n) {
      const key = userKeys[start];
      let end = start;
      while (end < n && userKeys[end] === key) end++;
      const userId = users.get(key);
      if (userId !== undefined) index.setEvents(index.add(userId), items, times, positives, start, end);
      start = end;
    }
    return index;
  }

  get size(): number {
    return this.numbers.size;
  }

  get(userId: string): UserState | undefined {
    const user = this.numbers.get(userId);
    return user === undefined ? undefined : this.state(user);
  }

  /** The user's number in the index, -1 for a user it does not have (yet). */
  find(userId: string): number {
    return this.numbers.get(userId) ?? -1;
  }

  /** Whether the user had an event with the item (exploration never recommends it again). */
  static hasSeen(state: UserState | undefined, item: number): boolean {
    return state !== undefined && state.hasSeen(item);
  }

  /** `UserState.hasSeen` of user number `user`: a binary search over the user's events, ordered by item. */
  hasSeen(user: number, item: number): boolean {
    const seen = this.seen;
    let lo = 0;
    let hi = seen.length(user) - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const v = seen.item(user, mid);
      if (v === item) return true;
      if (v < item) lo = mid + 1;
      else hi = mid - 1;
    }
    return false;
  }

  /** Copies of the user's events, ascending by (item, ts). */
  events(user: number): { items: number[]; times: number[] } {
    return this.seen.copy(user);
  }

  /**
   * Whether the store holds this event (user, item, ts): every event the index loaded or was given to `apply` is
   * known. In the embedded store, which only this process writes while it serves, that is every stored event; a
   * store other processes write too may hold more (its adapter checks what this does not know).
   */
  holds(userId: string, item: number, ts: number): boolean {
    return this.holdsEvent(this.find(userId), item, ts);
  }

  /** `holds` for a user already looked up (`find`; -1 holds nothing): a lookup among every user costs more than the rest. */
  holdsEvent(user: number, item: number, ts: number): boolean {
    return user >= 0 && this.position(user, item, ts) < 0;
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
    for (const e of events) this.applyOne(this.find(e.userId), e.userId, e.item, e.ts, e.engagement);
  }

  /**
   * `apply` with each event's user already looked up (`find` before the write): `users[k]` is the number of
   * `events[k].userId`, or -1 for a user the index did not have then (looked up again: an earlier event of the same
   * call may have added the user).
   */
  applyFound(events: readonly StoredEvent[], users: readonly number[]): void {
    for (let k = 0; k < events.length; k++) {
      const e = events[k];
      this.applyOne(users[k], e.userId, e.item, e.ts, e.engagement);
    }
  }

  /**
   * Sets users' states to what a load computes from their stored events, for a catalog change that alters the
   * clusters of events already applied: an item moved to another cluster moves every event of it, past ones too, and
   * that can change a history anywhere along it, beyond what a state keeps. Each entry is every event the store holds
   * of one user, in mining's order (ts, then item key), as a load reads them; an item the catalog lacks is left out,
   * as a load leaves it out. In place: whoever looked the user up (intake, between its lookup and its write) finds
   * the new state. Events the state held that the list lacks (stored after the list was read) are dropped
   * with the rest: `apply` brings them again when they are read, which it would skip as known if they stayed.
   */
  reload(histories: readonly (readonly AppendedEvent[])[]): void {
    for (const events of histories) {
      if (events.length === 0) continue;
      const userId = events[0].userId;
      const user = this.numbers.get(userId) ?? this.add(userId);
      this.setEvents(
        user,
        this.itemsOfKeys(events.map((e) => e.itemKey)),
        events.map((e) => e.ts),
        events.map((e) => this.isPositive(e.engagement)),
        0,
        events.length,
      );
    }
  }

  /** Applies one new event of the simulation's stream (`apply` for an event given by item id). */
  observe(event: EngagementEvent): void {
    const item = this.catalog.itemIndex.get(event.itemId);
    if (item === undefined) return;
    this.applyOne(this.find(event.userId), event.userId, item, event.ts, event.engagement);
  }

  private applyOne(found: number, userId: string, item: number, ts: number, engagement: number | null | undefined): void {
    let user = found >= 0 ? found : this.find(userId);
    if (user < 0) user = this.add(userId);
    const at = this.position(user, item, ts);
    // An event the index holds already changes nothing (the store keeps the first one).
    if (at < 0) return;
    this.seen.insert(user, at, item, ts);
    if (this.isPositive(engagement)) this.addPositive(user, item, ts);
  }

  private addPositive(user: number, item: number, ts: number): void {
    const tail = this.readTail(user);
    extendTail(tail, ts, item, this.catalog.itemCluster[item]);
    this.writeTail(user, tail);
    extendRecent(this.recent, user, ts, item, this.recentItems);
  }

  /** A new user with no events; @returns the user's number. */
  private add(userId: string): number {
    const user = this.seen.add(0);
    // Both lists are added together, so a user's number is the same in each.
    this.recent.add(0);
    if (user === this.c1.length) {
      const size = user * 2;
      this.c1 = grown(this.c1, size);
      this.c2 = grown(this.c2, size);
      this.boundaryItem = grown(this.boundaryItem, size);
      this.newestItem = grown(this.newestItem, size);
      this.boundaryTs = grown(this.boundaryTs, size);
      this.newestTs = grown(this.newestTs, size);
    }
    this.writeTail(user, emptyTail());
    this.numbers.set(userId, user);
    return user;
  }

  /** The user's state as `get` gives it. */
  private state(user: number): UserState {
    return new UserState(this, user, { ...this.readTail(user) }, this.recent.copy(user));
  }

  /** The shared tail object, holding user `user`'s tail. */
  private readTail(user: number): HistoryTail {
    const tail = this.tail;
    tail.c1 = this.c1[user];
    tail.c2 = this.c2[user];
    tail.boundaryTs = this.boundaryTs[user];
    tail.boundaryItem = this.boundaryItem[user];
    tail.newestTs = this.newestTs[user];
    tail.newestItem = this.newestItem[user];
    return tail;
  }

  private writeTail(user: number, tail: HistoryTail): void {
    this.c1[user] = tail.c1;
    this.c2[user] = tail.c2;
    this.boundaryTs[user] = tail.boundaryTs;
    this.boundaryItem[user] = tail.boundaryItem;
    this.newestTs[user] = tail.newestTs;
    this.newestItem[user] = tail.newestItem;
  }

  /** Each store item key's catalog index, -1 for an item the catalog does not know yet. */
  private itemsOfKeys(keys: ArrayLike<number>): Int32Array {
    const { itemOfKey } = this.catalog;
    const items = new Int32Array(keys.length);
    // An item added after the catalog was read is not known yet (the store follower brings it and its events).
    for (let r = 0; r < keys.length; r++) items[r] = itemOfKey[keys[r]] ?? -1;
    return items;
  }

  /**
   * Sets user `user`'s state from every stored event of the user: rows start..end-1 of the columns, in mining's
   * order (ts, then item key), items as catalog indices (-1: unknown, left out). The history goes through the same
   * `extendTail` intake uses, events in order.
   */
  private setEvents(user: number, items: ArrayLike<number>, times: ArrayLike<number>, positives: ArrayLike<boolean>, start: number, end: number): void {
    const rows: number[] = [];
    const tail = emptyTail();
    for (let r = start; r < end; r++) {
      const item = items[r];
      if (item < 0) continue;
      rows.push(r);
      if (positives[r]) extendTail(tail, times[r], item, this.catalog.itemCluster[item]);
    }
    this.writeTail(user, tail);
    // The rows are in (ts, item) order; the events' identities go in (item, ts) order (the catalog numbers items in
    // the store's key order, so comparing indices is comparing keys).
    rows.sort((a, b) => items[a] - items[b] || times[a] - times[b]);
    this.seen.assign(user, items, times, rows);
    // Recent items newest first: the first time an item shows up walking back is its latest positive event.
    const recent: number[] = [];
    const recentItems: number[] = [];
    for (let r = end - 1; r >= start && recent.length < this.recentItems; r--) {
      const item = items[r];
      if (item < 0 || !positives[r] || recentItems.includes(item)) continue;
      recent.push(r);
      recentItems.push(item);
    }
    this.recent.assign(user, items, times, recent);
  }

  /**
   * Where event (item, ts) goes in user `user`'s (item, ts)-ordered events, or -1 when they hold it already (binary
   * search).
   */
  private position(user: number, item: number, ts: number): number {
    const seen = this.seen;
    const n = seen.length(user);
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const v = seen.item(user, mid);
      if (v < item || (v === item && seen.time(user, mid) < ts)) lo = mid + 1;
      else hi = mid;
    }
    return lo < n && seen.item(user, lo) === item && seen.time(user, lo) === ts ? -1 : lo;
  }
}
