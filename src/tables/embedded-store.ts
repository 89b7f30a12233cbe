/**
 * The workspace's table store (one SQLite file, `<workspace>/tables.sqlite`) behind the asynchronous contract, so
 * that serving and the CLI use one code path for it and for PostgreSQL. Every call runs the synchronous
 * `SqliteTableStore` (./sqlite-store.ts) underneath; the only calls that could hold the event loop for long, reading
 * a whole table, give it back between pages.
 *
 * `sync` is the synchronous store itself, for the callers that still hold it (replay, the oracle, the demo's
 * timeline, `serve --schedule`).
 *
 * @example
 * const store = EmbeddedTableStore.open(tableStorePath(".freshrec"), new SystemClock());
 * const live = await store.live();
 * if (live) console.log((await store.lookup(live.version, "baking", "running"))?.answers);
 * await store.close();
 */
import type { Clock } from "../domain/clock.js";
import type { History } from "../domain/types.js";
import type {
  PackedBuildRows,
  PackedPage,
  PackedTable,
  PackedTableHeader,
  PublishEvent,
  PublishOptions,
  StoredTableRow,
  TableBuilder,
  TableBuilderContract,
  TableBuildMeta,
  TableBuildRow,
  TableBuildStats,
  TableFilter,
  TableInfo,
  TableMetrics,
  TableStoreContract,
} from "./contract.js";
import { SqliteTableStore, type SqliteTableStoreOptions } from "./sqlite-store.js";

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export class EmbeddedTableStore implements TableStoreContract {
  constructor(readonly sync: SqliteTableStore) {}

  /** Opens (creating when missing) the store at `file`; see `SqliteTableStore.open`. */
  static open(file: string, clock: Clock, options: SqliteTableStoreOptions = {}): EmbeddedTableStore {
    return new EmbeddedTableStore(SqliteTableStore.open(file, clock, options));
  }

  get location(): string {
    return this.sync.location;
  }

  async beginBuild(meta: TableBuildMeta): Promise<TableBuilderContract> {
    return new EmbeddedTableBuilder(this.sync.beginBuild(meta));
  }

  async clusterOrder(clusters: readonly string[]): Promise<string[]> {
    return this.sync.clusterOrder(clusters);
  }

  async publish(version: string, options?: PublishOptions): Promise<TableInfo> {
    return this.sync.publish(version, options);
  }

  async rollback(options?: PublishOptions): Promise<TableInfo> {
    return this.sync.rollback(options);
  }

  async gc(keep: number): Promise<TableInfo[]> {
    return this.sync.gc(keep);
  }

  async recoverStale(): Promise<TableInfo[]> {
    return this.sync.recoverStale();
  }

  async updateMetrics(version: string, metrics: TableMetrics, options?: { readonly merge?: boolean }): Promise<TableInfo> {
    return this.sync.updateMetrics(version, metrics, options);
  }

  async list(filter?: TableFilter): Promise<TableInfo[]> {
    return this.sync.list(filter);
  }

  async get(version: string): Promise<TableInfo> {
    return this.sync.get(version);
  }

  async live(): Promise<TableInfo | undefined> {
    return this.sync.live();
  }

  async previousLive(): Promise<TableInfo | undefined> {
    return this.sync.previousLive();
  }

  async publishHistory(): Promise<PublishEvent[]> {
    return this.sync.publishHistory();
  }

  async *rows(version: string): AsyncIterableIterator<StoredTableRow> {
    // Inside the generator: an unknown version fails at the first `next()`, as the contract says.
    yield* this.sync.rows(version);
  }

  async lookup(version: string, c1: string, c2: string): Promise<StoredTableRow | undefined> {
    return this.sync.lookup(version, c1, c2);
  }

  async contextKeys(version: string): Promise<Map<string, string | null>> {
    return this.sync.contextKeys(version);
  }

  async packed(version: string): Promise<PackedTable> {
    const pages = this.sync.packedInPages(version, 2000);
    for (;;) {
      const step = pages.next();
      if (step.done) return step.value;
      await yieldToEventLoop();
    }
  }

  async *packedPages(version: string, rowsPerPage: number): AsyncGenerator<PackedPage, PackedTableHeader, void> {
    const pages = this.sync.packedPages(version, rowsPerPage);
    try {
      for (let step = pages.next(); ; step = pages.next()) {
        if (step.done) return step.value;
        yield step.value;
      }
    } finally {
      // Ends the synchronous scan however this one ends (a reader that stops early), so its settings are restored.
      pages.return(undefined as never);
    }
  }

  async close(): Promise<void> {
    this.sync.close();
  }
}

class EmbeddedTableBuilder implements TableBuilderContract {
  constructor(private readonly builder: TableBuilder) {}

  get version(): string {
    return this.builder.version;
  }

  get written(): number {
    return this.builder.written;
  }

  async append(rows: Iterable<TableBuildRow>): Promise<number> {
    return this.builder.append(rows);
  }

  async appendPacked(rows: PackedBuildRows): Promise<number> {
    return this.builder.appendPacked(rows);
  }

  async copyRows(fromVersion: string, pairs?: Iterable<History>): Promise<number> {
    return this.builder.copyRows(fromVersion, pairs);
  }

  async finish(stats: TableBuildStats): Promise<TableInfo> {
    return this.builder.finish(stats);
  }

  async fail(reason: string): Promise<TableInfo> {
    return this.builder.fail(reason);
  }
}

/**
 * What the update path (table builds, refresh jobs, the update loop) is handed: any adapter of the contract, or the
 * workspace's synchronous store itself, which replay and the oracle keep using (`SqliteTableStore`).
 */
export type UpdateTableStore = TableStoreContract | SqliteTableStore;

/**
 * The contract over an `UpdateTableStore`: a synchronous store is wrapped (same file, same calls, so a replay builds
 * the same tables as before), an adapter is returned as it is. The wrapper is never closed: its owner closes the store.
 */
export function tableStoreContract(store: UpdateTableStore): TableStoreContract {
  return store instanceof SqliteTableStore ? new EmbeddedTableStore(store) : store;
}
