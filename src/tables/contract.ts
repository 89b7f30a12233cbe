/**
 * The table store contract: versioned, immutable recommendation tables with a transactional live pointer.
 *
 * A table maps every ordered history pair (c1, c2), c1 != c2, to ranked novel clusters with scores. Tables are
 * built once (`beginBuild` -> `append`/`copyRows` -> `finish`), never edited afterwards, and become visible to
 * serving only through `publish`, a single transactional pointer flip. A crash mid-build leaves the table
 * `building`; the next open marks it `failed` and the live table never changes ("State is durable and atomic").
 *
 * Two surfaces:
 * - `TableStoreContract` (asynchronous): the one contract every adapter implements, what serving and the CLI use.
 *   Adapters: `EmbeddedTableStore` (./embedded-store.ts, the workspace's SQLite file) and `PostgresTableStore`
 *   (./postgres-store.ts, a deployment's shared database, issue 19). Both run the shared conformance suite in
 *   test/tables/conformance.ts.
 * - `TableStore` (synchronous): the SQLite adapter's own surface (`SqliteTableStore`), which replay, the oracle and
 *   `serve --schedule` still hold; `EmbeddedTableStore.sync` hands it out. The update path (table builds, refresh,
 *   the update loop) takes either and works through the contract (`tableStoreContract` of ./embedded-store.ts).
 *
 * @example
 * const store = SqliteTableStore.open(tableStorePath(workspace), clock);
 * const build = store.beginBuild({ modelVersion: "m000003", templateHash: "9f2c..." });
 * build.append(rows); // TableBuildRow[] of any length; written in transactions of `batchSize` rows
 * const table = build.finish({ pairs: rows.length, rescored: rows.length, copied: 0, seconds: 12.5 });
 * store.publish(table.version, { actor: "refresh", reason: "RAG refresh 2025-03-02" });
 * store.rollback({ reason: "bad table" }); // the previously live table is live again
 */
import type { History, ScoredCluster, TableRow } from "../domain/types.js";

/**
 * Lifecycle of a table version.
 * - `building`: rows are being written; never servable.
 * - `ready`: complete, never published yet.
 * - `live`: the one table serving reads (exactly zero or one table is live).
 * - `retired`: was live once; can be published again (rollback does exactly that).
 * - `failed`: a build that was abandoned (`fail`, or a crash found by `recoverStale`); never servable.
 */
/** Ranked clusters kept per pair, and table versions kept by garbage collection; the config's tables.* defaults come from here. */
export const TABLE_DEFAULTS = { topN: 10, keep: 20 } as const;

export type TableStatus = "building" | "ready" | "live" | "retired" | "failed";

/** What made a table: recorded when its build begins, never changed afterwards. */
export interface TableBuildMeta {
  readonly modelVersion: string;
  /** Hash of the prompt template the answers were scored with; incremental builds only copy within one hash. */
  readonly templateHash: string;
  /** As-of time (epoch ms) of the RAG snapshot; null for a table built without retrieval. */
  readonly ragAsOf?: number | null;
  /** Length of the RAG window in days; null without retrieval. */
  readonly ragWindowDays?: number | null;
  /** RAG mode and options (top-n, minimum support, mode...), stored as JSON. */
  readonly ragOptions?: Readonly<Record<string, unknown>> | null;
  /** Strategy or experiment-arm label ("hybrid", "rag-only", "arm-b"...). */
  readonly strategy?: string | null;
  /** The table this build copies unchanged rows from (incremental builds). Must exist. */
  readonly parent?: string | null;
}

/** Counters of a finished build, stored as JSON; add fields freely. */
export interface TableBuildStats {
  readonly pairs: number;
  readonly rescored: number;
  readonly copied: number;
  readonly seconds: number;
  readonly promptsPerSecond?: number;
  readonly tokens?: number;
  readonly [field: string]: unknown;
}

/** Evaluation metrics of a table (hit rates, coverage...), stored as JSON and updatable after the build. */
export type TableMetrics = Readonly<Record<string, unknown>>;

/** Metadata of one table version. */
export interface TableInfo {
  /** "t000001", "t000002"...: increasing in build order, never reused (not even after gc). */
  readonly version: string;
  readonly status: TableStatus;
  readonly modelVersion: string;
  readonly templateHash: string;
  readonly ragAsOf: number | null;
  readonly ragWindowDays: number | null;
  readonly ragOptions: Readonly<Record<string, unknown>> | null;
  readonly strategy: string | null;
  readonly parent: string | null;
  readonly stats: TableBuildStats | null;
  readonly metrics: TableMetrics | null;
  /** Clock time the build began (epoch ms). */
  readonly createdAt: number;
  /** Clock time the build finished or failed (epoch ms); null while building. */
  readonly finishedAt: number | null;
  /** Why a build failed; null otherwise. */
  readonly failure: string | null;
  /** Rows stored (pairs); known once the build finished. */
  readonly rows: number;
  /** Largest number of answers in one row; known once the build finished. */
  readonly topN: number;
}

/**
 * A row as a build writes it: the answers plus the RAG context key that produced them (for example
 * `contextKey()` of src/update/rag.ts, "" for no context), so a later incremental build can tell whether the
 * pair's prompt changed. `null` means "unknown": such a row is never considered unchanged.
 */
export interface TableBuildRow extends TableRow {
  readonly contextKey?: string | null;
  /**
   * Why the row says what it says (a fusion row: its weights and counts), absent for prompted rows. Bytes are stored
   * as they are (a compact encoding the writer owns, e.g. `encodeExplanation` of src/update/fusion.ts), an object as
   * JSON.
   */
  readonly explanation?: Readonly<Record<string, unknown>> | Uint8Array | null;
}

/**
 * Rows already in their stored form, for a build that computes every row in bulk (a fusion table's 89,700): no
 * object per row or answer between the scorer and the store. Row r is the pair (clusters[c1[r]], clusters[c2[r]]);
 * its answers are answers[answerEnd[r - 1] .. answerEnd[r]) (0 before the first row) in the layout of
 * ./answer-blob.ts with cluster indices into `clusters`, its explanation the bytes
 * explanation[explanationEnd[r - 1] .. explanationEnd[r]) (stored as bytes, as `TableBuildRow.explanation`; none
 * when empty), its context key contextKeys[r]. The store never writes into these buffers (it numbers the answers'
 * clusters in its own dictionary in a copy), so they are as given after the call, whether it succeeds or fails.
 */
export interface PackedBuildRows {
  readonly clusters: readonly string[];
  readonly count: number;
  readonly c1: Int32Array;
  readonly c2: Int32Array;
  readonly answers: Buffer;
  readonly answerEnd: Int32Array;
  readonly explanation: Buffer;
  readonly explanationEnd: Int32Array;
  readonly contextKeys: readonly (string | null)[];
}

/** A stored row with its context key. Scores come back as stored (32-bit floats). */
export interface StoredTableRow extends TableRow {
  readonly contextKey: string | null;
  /** As written: the bytes, or the object read back from its JSON. */
  readonly explanation?: Readonly<Record<string, unknown>> | Uint8Array | null;
}

/**
 * A whole table in columnar form, for building serving structures without one object per answer.
 * Row r has history (clusters[c1[r]], clusters[c2[r]]) and answers clusters[answerIds[r*topN + k]] with score
 * scores[r*topN + k] for k < topN, padded with -1 ids (and 0 scores) after its last answer.
 */
export interface PackedTable {
  readonly version: string;
  readonly modelVersion: string;
  readonly topN: number;
  /** Dictionary of cluster ids the index arrays point into (may hold clusters this table does not use). */
  readonly clusters: readonly string[];
  readonly c1: Int32Array;
  readonly c2: Int32Array;
  readonly answerIds: Int32Array;
  readonly scores: Float32Array;
}

/** What `packedPages` knows of a table before its rows: `PackedTable` without the columns. */
export interface PackedTableHeader {
  readonly version: string;
  readonly modelVersion: string;
  readonly topN: number;
  /** Dictionary of cluster ids the pages' index arrays point into (may hold clusters this table does not use). */
  readonly clusters: readonly string[];
  /** Rows the table has. */
  readonly rows: number;
}

/**
 * One page of `packedPages`: rows 0..count-1 of the columns, laid out as in `PackedTable`. The columns are reused
 * for the next page, so a reader copies what it keeps before asking for the next one.
 */
export interface PackedPage {
  readonly header: PackedTableHeader;
  readonly count: number;
  readonly c1: Int32Array;
  readonly c2: Int32Array;
  readonly answerIds: Int32Array;
  readonly scores: Float32Array;
}

/** Who asked for a publish or rollback, and why; both optional, kept in the publish history. */
export interface PublishOptions {
  /** @defaultValue null */
  readonly actor?: string | null;
  /** @defaultValue null */
  readonly reason?: string | null;
}

/** One entry of the publish history. */
export interface PublishEvent {
  readonly action: "publish" | "rollback";
  /** The version that became live. */
  readonly version: string;
  /** The version that was live before (null for the first publish). */
  readonly previous: string | null;
  readonly at: number;
  readonly actor: string | null;
  readonly reason: string | null;
}

/** Filter for `list`; all fields optional and combined with AND. */
export interface TableFilter {
  readonly status?: TableStatus | readonly TableStatus[];
  readonly modelVersion?: string;
  readonly templateHash?: string;
  readonly strategy?: string;
}

/** Writes the rows of one table version. Not reusable after `finish` or `fail`. */
export interface TableBuilder {
  readonly version: string;
  /** Rows written so far (appended and copied). */
  readonly written: number;
  /**
   * Writes rows in transactions of the store's `batchSize`. Each committed batch is durable, but the table stays
   * invisible until `finish` and `publish`. A pair written twice is a BAD_INPUT error. When a batch fails, the batches
   * of the call before it stay written: counted in `written`, and their pairs refused if written again.
   * @returns the number of rows written by this call.
   */
  append(rows: Iterable<TableBuildRow>): number;
  /** `append` for rows in their stored form (`PackedBuildRows`): the same checks, batches and errors. */
  appendPacked(rows: PackedBuildRows): number;
  /**
   * Copies rows of another table version unchanged (answers and context keys) inside the store, for incremental
   * builds. `pairs` omitted copies every row. Pairs the source does not have are skipped.
   * @returns the number of rows copied.
   */
  copyRows(fromVersion: string, pairs?: Iterable<History>): number;
  /** Marks the table `ready` with its build stats. */
  finish(stats: TableBuildStats): TableInfo;
  /** Marks the table `failed`; its rows stay until gc (a re-run may copy them to resume). */
  fail(reason: string): TableInfo;
}

export interface TableStore {
  beginBuild(meta: TableBuildMeta): TableBuilder;
  /**
   * `clusters` in the order the store's dictionary numbers them, those it has not numbered yet last in their given
   * order: a build that lists its pairs in this order (c1 outer) writes each row after the last in the table's key
   * order, where any other order writes them all over its range.
   */
  clusterOrder(clusters: readonly string[]): string[];
  /** Makes a `ready` or `retired` table live in one transaction; the previously live one becomes `retired`. */
  publish(version: string, options?: PublishOptions): TableInfo;
  /** Makes the table that was live before the current one live again; repeated calls walk further back. */
  rollback(options?: PublishOptions): TableInfo;
  /**
   * Deletes old versions, keeping the newest `keep` finished versions plus the live one, the one rollback would
   * return to and any still building. Failed builds do not count towards `keep` and are deleted.
   * @returns the deleted versions, oldest first.
   */
  gc(keep: number): TableInfo[];
  /** Marks builds whose process ended without finishing as `failed`. Adapters call it on open. */
  recoverStale(): TableInfo[];
  /** Replaces (merge: false) or merges into (the default) the evaluation metrics of a table. */
  updateMetrics(version: string, metrics: TableMetrics, options?: { readonly merge?: boolean }): TableInfo;

  /** All versions, oldest first. */
  list(filter?: TableFilter): TableInfo[];
  /** A version's metadata; NOT_FOUND when it does not exist. */
  get(version: string): TableInfo;
  /** The live table, or undefined before the first publish. */
  live(): TableInfo | undefined;
  /** The table rollback would make live, or undefined. */
  previousLive(): TableInfo | undefined;
  /** Publish and rollback events, oldest first. */
  publishHistory(): PublishEvent[];
  /** Rows of a version in a stable order. Pages through the store, so other calls may interleave. */
  rows(version: string): IterableIterator<StoredTableRow>;
  /** One row, or undefined when the table has no such pair. */
  lookup(version: string, c1: string, c2: string): StoredTableRow | undefined;
  /** Context key per pair (key: `pairKey(c1, c2)` of src/mining/successors.ts). */
  contextKeys(version: string): Map<string, string | null>;
  /** The whole table in columnar form (what `TableLookup.fromPacked` reads). */
  packed(version: string): PackedTable;
  /**
   * `packed`, read `rowsPerPage` rows at a time: the generator yields the rows read so far after each page (a server
   * lets its event loop run there) and returns the table. NOT_FOUND if the version is garbage-collected meanwhile.
   */
  packedInPages(version: string, rowsPerPage: number): Generator<number, PackedTable, void>;
  /**
   * The rows of a version as pages of columns, `rowsPerPage` rows at a time, without ever holding the whole table:
   * for loaders that decode straight into their own structure (a serving lookup), so loading does not need
   * memory for a second copy of the table. Returns the header once every row was yielded; NOT_FOUND as
   * `packedInPages`.
   */
  packedPages(version: string, rowsPerPage: number): Generator<PackedPage, PackedTableHeader, void>;
  close(): void;
}

/** Writes the rows of one table version through a `TableStoreContract`. Not reusable after `finish` or `fail`. */
export interface TableBuilderContract {
  readonly version: string;
  /** Rows written so far (appended and copied). */
  readonly written: number;
  /** As `TableBuilder.append`: batches of the store's batch size, each durable, invisible until publish. */
  append(rows: Iterable<TableBuildRow>): Promise<number>;
  /** As `TableBuilder.appendPacked`. */
  appendPacked(rows: PackedBuildRows): Promise<number>;
  /** As `TableBuilder.copyRows`: copied inside the store, pairs the source lacks skipped. */
  copyRows(fromVersion: string, pairs?: Iterable<History>): Promise<number>;
  finish(stats: TableBuildStats): Promise<TableInfo>;
  fail(reason: string): Promise<TableInfo>;
}

/**
 * The table store contract, asynchronous so that an adapter may talk to a database server. The semantics of each
 * method are those of the same-named `TableStore` method; differences are said here.
 */
export interface TableStoreContract {
  /** Where the tables are, for messages: a file path, or a database URL without its password. */
  readonly location: string;
  beginBuild(meta: TableBuildMeta): Promise<TableBuilderContract>;
  /** As `TableStore.clusterOrder`. */
  clusterOrder(clusters: readonly string[]): Promise<string[]>;
  publish(version: string, options?: PublishOptions): Promise<TableInfo>;
  rollback(options?: PublishOptions): Promise<TableInfo>;
  gc(keep: number): Promise<TableInfo[]>;
  recoverStale(): Promise<TableInfo[]>;
  updateMetrics(version: string, metrics: TableMetrics, options?: { readonly merge?: boolean }): Promise<TableInfo>;
  list(filter?: TableFilter): Promise<TableInfo[]>;
  get(version: string): Promise<TableInfo>;
  live(): Promise<TableInfo | undefined>;
  previousLive(): Promise<TableInfo | undefined>;
  publishHistory(): Promise<PublishEvent[]>;
  /** Rows of a version in a stable order, page by page; NOT_FOUND (at the first `next()`) for an unknown version. */
  rows(version: string): AsyncIterableIterator<StoredTableRow>;
  lookup(version: string, c1: string, c2: string): Promise<StoredTableRow | undefined>;
  contextKeys(version: string): Promise<Map<string, string | null>>;
  /** The whole table in columnar form, read page by page. */
  packed(version: string): Promise<PackedTable>;
  /** As `TableStore.packedPages`: reused columns per page, the header at the end; NOT_FOUND if collected meanwhile. */
  packedPages(version: string, rowsPerPage: number): AsyncGenerator<PackedPage, PackedTableHeader, void>;
  close(): Promise<void>;
}

export type { ScoredCluster };
