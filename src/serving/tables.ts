/**
 * The tables serving reads, kept in memory and following the stores: the live table (the table store's live
 * pointer), any table an experiment arm is bound to, and the registry's live model version.
 *
 * Hot reload: `poll()` (every `serve.reloadIntervalMs`) reads the live pointer, which another process may have
 * flipped (`freshrec tables publish`, a refresh, SQLite WAL makes the commit visible). A changed pointer loads the
 * new table completely, then swaps one reference (`LiveTable`). A request takes its lookup once and reads only that
 * object, so no response ever mixes two versions and none fails because of a swap.
 *
 * Bindings (what an experiment arm serves):
 * - `live`: the live table, whatever it is at the moment;
 * - `t000042`: exactly that version, loaded once;
 * - `strategy:NAME`: the newest finished table recorded with that strategy label (followed like the live one).
 *
 * @example
 * const tables = new ServingTables(tableStore, registry);
 * tables.poll();                    // at start-up, then on a timer
 * const lookup = tables.lookup("live");
 * lookup?.get("baking", "coffee");  // ranked novel clusters
 */
import { FreshrecError } from "../domain/errors.js";
import type { ModelRegistry } from "../llm/registry.js";
import { LiveTable, TableLookup, type TableInfo, type TableLookupOptions, type TableStore } from "../tables/index.js";

export interface TableChange {
  readonly binding: string;
  readonly from: string | null;
  readonly to: string | null;
}

export interface ServingTablesOptions extends TableLookupOptions {
  /** Called after a binding swapped to another version (logs, metrics). */
  readonly onChange?: (change: TableChange) => void;
  /** Called when a reload failed (the previous table keeps serving). */
  readonly onError?: (error: unknown, binding: string) => void;
}

const FINISHED = ["ready", "live", "retired"] as const;

/** Validates a binding's form; NOT_FOUND when it names a version or strategy that has no finished table. */
export function resolveBinding(store: TableStore, binding: string): TableInfo | undefined {
  if (binding === "live") return store.live();
  if (binding.startsWith("strategy:")) {
    const strategy = binding.slice("strategy:".length);
    if (!strategy) throw new FreshrecError("BAD_INPUT", `table binding ${JSON.stringify(binding)} names no strategy`);
    const info = store.list({ strategy, status: [...FINISHED] }).at(-1);
    if (!info) throw new FreshrecError("NOT_FOUND", `no finished table has strategy ${JSON.stringify(strategy)}`);
    return info;
  }
  if (/^t\d+$/.test(binding)) {
    const info = store.get(binding);
    if (!(FINISHED as readonly string[]).includes(info.status)) {
      throw new FreshrecError("BAD_INPUT", `table ${binding} is ${info.status}; only a finished table can be served`);
    }
    return info;
  }
  throw new FreshrecError("BAD_INPUT", `table binding ${JSON.stringify(binding)}: expected "live", a version like t000042, or strategy:NAME`);
}

export class ServingTables {
  private readonly holders = new Map<string, LiveTable>();
  private modelVersion: string | null = null;

  constructor(
    private readonly store: TableStore,
    private readonly registry: ModelRegistry | null,
    private readonly options: ServingTablesOptions = {},
  ) {
    this.holders.set("live", new LiveTable());
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

  /** Starts following a binding (an experiment arm); loads its table now. */
  bind(binding: string): TableLookup | undefined {
    if (!this.holders.has(binding)) {
      resolveBinding(this.store, binding);
      this.holders.set(binding, new LiveTable());
    }
    this.reloadBinding(binding);
    return this.lookup(binding);
  }

  /** Stops following bindings not in `keep` ("live" is always kept). */
  retain(keep: readonly string[]): void {
    for (const binding of [...this.holders.keys()]) if (binding !== "live" && !keep.includes(binding)) this.holders.delete(binding);
  }

  /** Looks at the stores once: swaps in changed tables and reads the live model. Never throws. */
  poll(): void {
    for (const binding of this.holders.keys()) this.reloadBinding(binding);
    try {
      this.modelVersion = this.registry?.live()?.version ?? null;
    } catch (error) {
      this.options.onError?.(error, "model");
    }
  }

  private reloadBinding(binding: string): void {
    const holder = this.holders.get(binding)!;
    try {
      const before = holder.version ?? null;
      // A fixed version never changes once loaded.
      if (/^t\d+$/.test(binding) && before === binding) return;
      const info = resolveBinding(this.store, binding);
      if ((info?.version ?? null) === before) return;
      // Loaded completely before the swap: readers keep the old lookup until the new one is whole.
      const next = info ? this.loadShared(info.version) : undefined;
      holder.swap(next);
      this.options.onChange?.({ binding, from: before, to: next?.version ?? null });
    } catch (error) {
      this.options.onError?.(error, binding);
    }
  }

  /** Two bindings on one version share one lookup in memory. */
  private loadShared(version: string): TableLookup {
    for (const holder of this.holders.values()) if (holder.version === version) return holder.lookup!;
    return TableLookup.load(this.store, version, this.options);
  }
}
