/**
 * Keeps an API replica's in-memory users and catalog following a shared PostgreSQL event store, which other
 * processes append to while it serves (other replicas' intake, `freshrec ingest`): without this a replica would
 * answer from the histories it read at start until it restarts.
 *
 * How: the store numbers its appends in commit order (src/data/postgres-event-store.ts, `event_appends`), so the
 * replica keeps one number, the last append it applied (its watermark), and `catchUp` reads what came after it, in
 * one snapshot: new clusters and items into the catalog first, with the changes appends made to those it holds (an
 * item's cluster or title, a cluster's description: `Catalog.revise`); then the appended events, applied to their
 * users' states in place (`UserIndex.apply`, the path the replica's own intake takes: only the users whose events
 * were appended are touched, never a recount). Then the watermark moves to the last append read.
 *
 * An item moved to another cluster moves every event of it, past ones too (events name items; a fresh load joins the
 * items as they are now), so the histories holding one are wrong, and a state keeps too little of a user's events to
 * mend them. The users with an event of a moved item, they alone, are read again in full from the same snapshot
 * and their states set to what a load computes (`UserIndex.reload`), before the appended events are applied. One
 * race remains, and the next catch-up closes it: this replica's intake may commit an event of the item after the
 * snapshot and apply it, under the item's old cluster, before the catalog took the move; that event's append comes
 * after the snapshot's, so the next catch-up reads again the users with an appended event of the items this one moved.
 * What triggers a catch-up:
 * - the store's notification (`EVENTS_CHANNEL`) as each append commits, through the server's listener;
 * - the server's poll (every serve.reloadIntervalMs), which costs one small query when nothing was appended;
 * - the listener's reconnection: a notification sent while it was down is lost, the watermark is not.
 * Catch-ups run one at a time; a trigger during one makes one more run after it. A catch-up that fails leaves the
 * watermark where it was, so the next trigger reads the same appends again.
 *
 * Requests never wait on it: it reads pages of events and applies each page between requests (yielding to the event
 * loop), and a request sees each user's state either before or after an event, never half of one.
 *
 * @example
 * const since = await store.lastAppend();          // before the catalog and users are read
 * const catalog = await Catalog.load(store);
 * const users = await UserIndex.load(store, catalog, options);
 * const follower = new StoreFollower(store, catalog, users, since);
 * await follower.catchUp("poll");
 */
import type { PostgresEventStore } from "../data/postgres-event-store.js";
import type { Catalog } from "./catalog.js";
import type { StoredEvent, UserIndex } from "./users.js";

export type CatchUpTrigger = "notification" | "poll" | "reconnect" | "start";

/** What /healthz and /metrics tell about following the store. */
export interface FollowStatus {
  /** The last append applied here. */
  readonly appliedThrough: number;
  /** The latest append this replica knows the store committed (from a notification or a read). */
  readonly storeLatest: number;
  /** Whether a catch-up is running now. */
  readonly catchingUp: boolean;
  /** When the last catch-up that succeeded ended (epoch ms), null before one. */
  readonly lastCaughtUpAt: number | null;
  /** Catch-ups that failed since the last one that succeeded (0 when following). */
  readonly failing: number;
  readonly lastError: string | null;
  readonly catchUps: number;
  readonly catchUpErrors: number;
  readonly eventsApplied: number;
  readonly itemsAdded: number;
  readonly clustersAdded: number;
  /** Items the catalog held that an append changed (moved to another cluster, or retitled). */
  readonly itemsChanged: number;
  /** Clusters the catalog held whose description an append changed. */
  readonly clustersChanged: number;
  /** Users read again from the store because an item of their events moved. */
  readonly usersReloaded: number;
}

export interface StoreFollowerOptions {
  /** Events read and applied between two yields to the event loop. @defaultValue 5000 */
  readonly pageRows?: number;
  /** The server clock's now (epoch ms). */
  readonly now: () => number;
  /** After a catch-up that applied something. */
  readonly onApplied?: (applied: {
    from: number;
    to: number;
    events: number;
    items: number;
    clusters: number;
    itemsChanged: number;
    clustersChanged: number;
    usersReloaded: number;
    trigger: CatchUpTrigger;
  }) => void;
  /** After a catch-up that failed (the next trigger retries). */
  readonly onError?: (error: Error, trigger: CatchUpTrigger) => void;
  /** After the catalog gained or changed clusters or items (before their events are applied). */
  readonly onCatalogChange?: () => void;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export class StoreFollower {
  private applied: number;
  private latest: number;
  private running: Promise<void> | null = null;
  private again: CatchUpTrigger | null = null;
  private lastCaughtUpAt: number | null = null;
  private failing = 0;
  private lastError: string | null = null;
  private catchUps = 0;
  private catchUpErrors = 0;
  private eventsApplied = 0;
  private itemsAdded = 0;
  private clustersAdded = 0;
  private itemsChanged = 0;
  private clustersChanged = 0;
  private usersReloaded = 0;
  /**
   * Store keys of items the catalog moved whose users were not read again yet: kept until a catch-up that reads them
   * succeeds (the catalog has the move from the first try on, so a retry would not see it as one).
   */
  private readonly unreloaded = new Set<number>();
  /** Store keys of the items the last catch-up moved: the next one reads again the users with appended events of them. */
  private movedLately: number[] = [];
  private closed = false;

  /** @param since the store's last append read before the catalog and the users were loaded (`lastAppend`). */
  constructor(
    private readonly store: PostgresEventStore,
    private readonly catalog: Catalog,
    private readonly users: UserIndex,
    since: number,
    private readonly options: StoreFollowerOptions,
  ) {
    this.applied = this.latest = since;
  }

  /** A notification's payload: the number of the append that committed. */
  heard(payload: string | undefined): void {
    const seq = Number(payload);
    if (Number.isFinite(seq) && seq > this.latest) this.latest = seq;
    if (!(seq <= this.applied)) void this.catchUp("notification");
  }

  /**
   * Applies what was appended after the watermark. Never rejects (a failure is reported through `onError` and
   * counted in `status`); resolves when this trigger's catch-up, or one started after it, has ended.
   */
  catchUp(trigger: CatchUpTrigger): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.running) {
      // The running catch-up goes round once more for it before it resolves.
      this.again ??= trigger;
      return this.running;
    }
    const run = (async () => {
      let next: CatchUpTrigger | null = trigger;
      while (next !== null && !this.closed) {
        this.again = null;
        await this.once(next);
        next = this.again;
      }
    })();
    this.running = run.finally(() => {
      this.running = null;
    });
    return this.running;
  }

  status(): FollowStatus {
    return {
      appliedThrough: this.applied,
      storeLatest: Math.max(this.latest, this.applied),
      catchingUp: this.running !== null,
      lastCaughtUpAt: this.lastCaughtUpAt,
      failing: this.failing,
      lastError: this.lastError,
      catchUps: this.catchUps,
      catchUpErrors: this.catchUpErrors,
      eventsApplied: this.eventsApplied,
      itemsAdded: this.itemsAdded,
      clustersAdded: this.clustersAdded,
      itemsChanged: this.itemsChanged,
      clustersChanged: this.clustersChanged,
      usersReloaded: this.usersReloaded,
    };
  }

  /** Stops following; waits for a running catch-up to end (before the store closes). */
  async close(): Promise<void> {
    this.closed = true;
    await this.running;
  }

  private async once(trigger: CatchUpTrigger): Promise<void> {
    const from = this.applied;
    let events = 0;
    let items = 0;
    let clusters = 0;
    let itemsChanged = 0;
    let clustersChanged = 0;
    let usersReloaded = 0;
    const count = () => {
      this.eventsApplied += events;
      this.itemsAdded += items;
      this.clustersAdded += clusters;
      this.itemsChanged += itemsChanged;
      this.clustersChanged += clustersChanged;
      this.usersReloaded += usersReloaded;
    };
    try {
      // The cheap question first: a poll that finds nothing new costs one row.
      const latest = await this.store.lastAppend();
      if (latest > this.latest) this.latest = latest;
      if (latest > from) {
        const { catalog, users } = this;
        let reloadedItems: number[] = [];
        const to = await this.store.readAppends(
          from,
          { clusterKey: catalog.lastClusterKey, itemKey: catalog.lastItemKey },
          {
            onCatalog: (appended) => {
              const added = catalog.extend(appended.clusters, appended.items);
              // After `extend`: an item may move to a cluster added by the same appends.
              const revised = catalog.revise(appended.changedClusters, appended.changedItems);
              clusters += added.clusters;
              items += added.items;
              clustersChanged += revised.clusters;
              itemsChanged += revised.items;
              for (const key of revised.moved) this.unreloaded.add(key);
              if (added.clusters + added.items + revised.clusters + revised.items > 0) this.options.onCatalogChange?.();
              reloadedItems = [...this.unreloaded];
              return { ofItems: reloadedItems, appendedOfItems: this.movedLately };
            },
            onHistories: async (histories) => {
              users.reload(histories);
              usersReloaded += histories.length;
              await yieldToEventLoop();
            },
            onEvents: async (page) => {
              const stored: StoredEvent[] = [];
              for (const e of page) {
                const item = catalog.itemOfKey[e.itemKey] ?? -1;
                // Read in the same snapshot as the catalog: an item the catalog lacks is one it left out (no cluster).
                if (item >= 0) stored.push({ userId: e.userId, item, ts: e.ts, engagement: e.engagement });
              }
              users.apply(stored);
              events += stored.length;
              await yieldToEventLoop();
            },
          },
          this.options.pageRows ?? 5000,
        );
        this.applied = to;
        if (to > this.latest) this.latest = to;
        if (to > from) {
          this.unreloaded.clear();
          this.movedLately = reloadedItems;
        }
      }
      this.catchUps++;
      count();
      this.failing = 0;
      this.lastError = null;
      this.lastCaughtUpAt = this.options.now();
      if (this.applied > from) {
        this.options.onApplied?.({ from, to: this.applied, events, items, clusters, itemsChanged, clustersChanged, usersReloaded, trigger });
      }
    } catch (error) {
      // Events of a page applied before the failure stay applied: reading them again changes nothing. Users read
      // again stay so, and the moved items stay in `unreloaded`: the retry reads all their users again.
      count();
      this.catchUpErrors++;
      this.failing++;
      this.lastError = (error as Error).message;
      this.options.onError?.(error as Error, trigger);
    }
  }
}
