/**
 * Keeps an API replica's in-memory users and catalog following a shared PostgreSQL event store, which other
 * processes append to while it serves (other replicas' intake, `freshrec ingest`): without this a replica would
 * answer from the histories it read at start until it restarts.
 *
 * How: the store numbers its appends in commit order (src/data/postgres-event-store.ts, `event_appends`), so the
 * replica keeps one number, the last append it applied (its watermark), and `catchUp` reads what came after it, in
 * one snapshot: new clusters and items into the catalog first, then the appended events, applied to their users'
 * states in place (`UserIndex.apply`, the path the replica's own intake takes: only the users whose events were
 * appended are touched, never a recount). Then the watermark moves to the last append read. What triggers it:
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
}

export interface StoreFollowerOptions {
  /** Events read and applied between two yields to the event loop. @defaultValue 5000 */
  readonly pageRows?: number;
  /** The server clock's now (epoch ms). */
  readonly now: () => number;
  /** After a catch-up that applied something. */
  readonly onApplied?: (applied: { from: number; to: number; events: number; items: number; clusters: number; trigger: CatchUpTrigger }) => void;
  /** After a catch-up that failed (the next trigger retries). */
  readonly onError?: (error: Error, trigger: CatchUpTrigger) => void;
  /** After the catalog gained clusters or items (before their events are applied). */
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
    try {
      // The cheap question first: a poll that finds nothing new costs one row.
      const latest = await this.store.lastAppend();
      if (latest > this.latest) this.latest = latest;
      if (latest > from) {
        const { catalog, users } = this;
        const to = await this.store.readAppends(
          from,
          { clusterKey: catalog.lastClusterKey, itemKey: catalog.lastItemKey },
          {
            onCatalog: (newClusters, newItems) => {
              const added = catalog.extend(newClusters, newItems);
              clusters += added.clusters;
              items += added.items;
              if (added.clusters + added.items > 0) this.options.onCatalogChange?.();
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
      }
      this.catchUps++;
      this.eventsApplied += events;
      this.itemsAdded += items;
      this.clustersAdded += clusters;
      this.failing = 0;
      this.lastError = null;
      this.lastCaughtUpAt = this.options.now();
      if (this.applied > from) this.options.onApplied?.({ from, to: this.applied, events, items, clusters, trigger });
    } catch (error) {
      // Events of a page applied before the failure stay applied: reading them again changes nothing.
      this.eventsApplied += events;
      this.itemsAdded += items;
      this.clustersAdded += clusters;
      this.catchUpErrors++;
      this.failing++;
      this.lastError = (error as Error).message;
      this.options.onError?.(error as Error, trigger);
    }
  }
}
