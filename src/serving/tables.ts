/**
 * The tables serving reads, kept in memory and following the stores: the live table (the table store's live
 * pointer), any table an experiment arm is bound to, and the registry's live model version.
 *
 * Hot reload: `poll()` (every `serve.reloadIntervalMs`) reads the live pointer, which another process may have
 * flipped (`freshrec tables publish`, a refresh): through the database for a PostgreSQL store (every replica reads
 * the same pointer), through the file for the workspace's SQLite store (WAL makes the commit visible). A changed pointer loads the
 * new table completely (page by page, yielding to requests meanwhile: ./table-loader.ts), then swaps one reference
 * (`LiveTable`). A request takes its lookup once and reads only that object, so no response ever mixes two versions
 * and none fails because of a swap. The last few lookups stay cached, so a rollback (or a flip back) is instant.
 *
 * Bindings (what an experiment arm serves):
 * - `live`: the live table, whatever it is at the moment;
 * - `t000042`: exactly that version, loaded once;
 * - `strategy:NAME`: the newest finished table recorded with that strategy label (followed like the live one).
 *
 * @example
 * const tables = new ServingTables(tableStore, registry);
 * await tables.poll();              // at start-up, then on a timer
 * const lookup = tables.lookup("live");
 * lookup?.get("baking", "coffee");  // ranked novel clusters
 */
import { SystemClock } from "../domain/clock.js";
import { FreshrecError } from "../domain/errors.js";
import type { ModelRegistryContract } from "../llm/registry.js";
import { LiveTable, type TableInfo, type TableLookup, type TableStoreContract } from "../tables/index.js";
import { loadLookup, type LoadLookupOptions } from "./table-loader.js";

export interface TableChange {
  readonly binding: string;
  readonly from: string | null;
  readonly to: string | null;
  /** Whether the lookup came from the cache (no load). */
  readonly cached: boolean;
  readonly seconds: number;
}

/**
 * A binding whose latest reload failed. It keeps serving the table it served before, which is no longer what the
 * store says it should serve: readiness reports it (GET /readyz) until a reload succeeds.
 */
export interface ReloadFailure {
  readonly binding: string;
  /** The version that could not be loaded; null when the store could not say which (the pointer read failed). */
  readonly version: string | null;
  readonly error: string;
  /** When this run of failures began (epoch ms). */
  readonly since: number;
  /** Failed attempts in a row. */
  readonly attempts: number;
}

export interface ServingTablesOptions extends LoadLookupOptions {
  /** Lookups kept in memory besides the ones serving (instant rollback). @defaultValue 2 */
  readonly cachedLookups?: number;
  /** Called after a binding swapped to another version (logs, metrics). */
  readonly onChange?: (change: TableChange) => void;
  /** Called when a reload failed (the previous table keeps serving). */
  readonly onError?: (error: unknown, binding: string) => void;
  /** The clock's now (epoch ms), for when a failure began. @defaultValue the system clock */
  readonly now?: () => number;
}

const FINISHED = ["ready", "live", "retired"] as const;

/** Validates a binding's form; NOT_FOUND when it names a version or strategy that has no finished table. */
export async function resolveBinding(store: TableStoreContract, binding: string): Promise<TableInfo | undefined> {
  if (binding === "live") return store.live();
  if (binding.startsWith("strategy:")) {
    const strategy = binding.slice("strategy:".length);
    if (!strategy) throw new FreshrecError("BAD_INPUT", `table binding ${JSON.stringify(binding)} names no strategy`);
    const info = (await store.list({ strategy, status: [...FINISHED] })).at(-1);
    if (!info) throw new FreshrecError("NOT_FOUND", `no finished table has strategy ${JSON.stringify(strategy)}`);
    return info;
  }
  if (/^t\d+$/.test(binding)) {
    const info = await store.get(binding);
    if (!(FINISHED as readonly string[]).includes(info.status)) {
      throw new FreshrecError("BAD_INPUT", `table ${binding} is ${info.status}; only a finished table can be served`);
    }
    return info;
  }
  throw new FreshrecError("BAD_INPUT", `table binding ${JSON.stringify(binding)}: expected "live", a version like t000042, or strategy:NAME`);
}

export class ServingTables {
  private readonly holders = new Map<string, LiveTable>();
  /** Recently loaded lookups by version, oldest first. */
  private readonly cache = new Map<string, TableLookup>();
  private modelVersion: string | null = null;
  private polling: Promise<void> | null = null;
  private readonly loading = new Map<string, Promise<TableLookup>>();
  private readonly failing = new Map<string, ReloadFailure>();
  private readonly now: () => number;

  constructor(
    private readonly store: TableStoreContract,
    private readonly registry: ModelRegistryContract | null,
    private readonly options: ServingTablesOptions = {},
  ) {
    this.holders.set("live", new LiveTable());
    const clock = new SystemClock();
    this.now = options.now ?? (() => clock.now());
  }

  /** Bindings whose latest reload failed ("live" first); empty when every binding serves what the store says. */
  failures(): ReloadFailure[] {
    return [...this.failing.values()].sort((a, b) => (a.binding === "live" ? -1 : b.binding === "live" ? 1 : a.binding.localeCompare(b.binding)));
  }

  /** The lookup a binding serves right now (take it once per request). */
  lookup(binding = "live"): TableLookup | undefined {
    return this.holders.get(binding)?.lookup;
  }

  /** Every binding followed and the version it serves. */
  bindings(): { binding: string; version: string | null }[] {
    return [...this.holders].map(([binding, holder]) => ({ binding, version: holder.version ?? null }));
  }

  /** The registry's live model version at the last poll. */
  get liveModelVersion(): string | null {
    return this.modelVersion;
  }

  /** Starts following a binding (an experiment arm) and loads its table; throws when the binding names nothing. */
  async bind(binding: string): Promise<TableLookup | undefined> {
    const added = !this.holders.has(binding);
    if (added) {
      await resolveBinding(this.store, binding);
      this.holders.set(binding, new LiveTable());
    }
    try {
      await this.reloadBinding(binding, true);
    } catch (error) {
      // The caller learns of it (the experiment is not activated); a binding that never served is not followed.
      if (added) {
        this.holders.delete(binding);
        this.failing.delete(binding);
      }
      throw error;
    }
    return this.lookup(binding);
  }

  /** Stops following bindings not in `keep` ("live" is always kept). */
  retain(keep: readonly string[]): void {
    for (const binding of [...this.holders.keys()]) {
      if (binding !== "live" && !keep.includes(binding)) {
        this.holders.delete(binding);
        this.failing.delete(binding);
      }
    }
  }

  /**
   * Looks at the stores once: swaps in changed tables and reads the live model. Never throws (failures go to
   * `onError` and the previous tables keep serving). Concurrent calls share one pass.
   */
  poll(): Promise<void> {
    if (this.polling) return this.polling.then(() => this.poll());
    this.polling = (async () => {
      try {
        for (const binding of [...this.holders.keys()]) await this.reloadBinding(binding, false);
        try {
          this.modelVersion = (await this.registry?.live())?.version ?? null;
        } catch (error) {
          this.options.onError?.(error, "model");
        }
      } finally {
        this.polling = null;
      }
    })();
    return this.polling;
  }

  /** Resolves when no poll or load is running (before closing the stores). */
  async settle(): Promise<void> {
    while (this.polling || this.loading.size) {
      await this.polling;
      await Promise.allSettled([...this.loading.values()]);
    }
  }

  private async reloadBinding(binding: string, rethrow: boolean): Promise<void> {
    const holder = this.holders.get(binding);
    if (!holder) return;
    let attempted: string | null = null;
    try {
      const before = holder.version ?? null;
      // A fixed version never changes once loaded.
      if (/^t\d+$/.test(binding) && before === binding) return;
      const info = await resolveBinding(this.store, binding);
      const version = info?.version ?? null;
      attempted = version;
      if (version === before) {
        // The store points back at what is served (a rollback past a table that failed to load): nothing fails.
        this.failing.delete(binding);
        return;
      }
      const started = process.hrtime.bigint();
      const cached = version !== null && this.cached(version) !== undefined;
      // Loaded completely before the swap: readers keep the old lookup until the new one is whole.
      const next = version === null ? undefined : await this.load(version);
      if (this.holders.get(binding) !== holder) return; // unbound meanwhile
      const previous = holder.swap(next);
      if (previous) this.remember(previous);
      this.failing.delete(binding);
      this.options.onChange?.({ binding, from: before, to: version, cached, seconds: Number(process.hrtime.bigint() - started) / 1e9 });
    } catch (error) {
      if (this.holders.get(binding) === holder) {
        const last = this.failing.get(binding);
        const again = last !== undefined && last.version === attempted;
        const message = error instanceof Error ? error.message : String(error);
        this.failing.set(binding, { binding, version: attempted, error: message, since: again ? last.since : this.now(), attempts: again ? last.attempts + 1 : 1 });
      }
      this.options.onError?.(error, binding);
      if (rethrow) throw error;
    }
  }

  private cached(version: string): TableLookup | undefined {
    for (const holder of this.holders.values()) if (holder.version === version) return holder.lookup;
    return this.cache.get(version);
  }

  /** One load per version at a time; bindings on one version share one lookup. */
  private async load(version: string): Promise<TableLookup> {
    const known = this.cached(version);
    if (known) return known;
    let pending = this.loading.get(version);
    if (!pending) {
      pending = loadLookup(this.store, version, this.options).finally(() => this.loading.delete(version));
      this.loading.set(version, pending);
    }
    return pending;
  }

  /** Keeps a lookup that stopped serving, for a quick way back; the oldest fall out. */
  private remember(lookup: TableLookup): void {
    this.cache.delete(lookup.version);
    this.cache.set(lookup.version, lookup);
    const capacity = this.options.cachedLookups ?? 2;
    while (this.cache.size > capacity) this.cache.delete(this.cache.keys().next().value!);
  }
}
