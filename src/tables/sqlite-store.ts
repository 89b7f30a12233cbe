/**
 * The SQLite adapter of the table store (better-sqlite3, one file: `<workspace>/tables.sqlite`).
 *
 * Storage layout, chosen for a 300-cluster table of 89,700 pairs x top-10 answers:
 * - `clusters(idx, id)`: one global dictionary of cluster ids, dense integers from 0. Global rather than per
 *   table so that an incremental build copies rows between versions as opaque bytes (all of them: whole blocks in
 *   one SQL statement).
 *   Entries are never deleted or renumbered, so every process may cache them.
 * - `table_blocks(id, table_seq, c1, row_count, top_n, block)`: a table's rows in blocks, not one SQL row per pair,
 *   because SQLite's cost of writing a table is per SQL row, whatever its bytes. `block` is one BLOB of ./table-block.ts
 *   holding rows of one c1, sorted by c2, each with its c2, its answers (the 8-bytes-per-answer form of
 *   ./answer-blob.ts), its explanation (what a fusion row explains itself with: bytes in the writer's compact
 *   encoding, or JSON text for an object and for every explanation of a table written before bytes; none for
 *   prompted rows) and its context key. Each batch an append commits writes one block per c1 it holds, so a c1
 *   whose rows came in several batches has several blocks (parts), which readers merge by c2; `row_count` and
 *   `top_n` (the most answers of a row) let SQL sum a version's shape without reading blocks. Indexed by
 *   (table_seq, c1): a lookup reads one c1's parts, a table's blocks are one contiguous range (cheap to scan, copy
 *   whole in SQL and delete).
 *   A build refuses a pair written twice from the pairs it has written, kept in memory by the store that began it
 *   (a build is written by one process; `recoverStale` fails one whose process is gone).
 *   Files of schema 1 held one SQL row per pair (`table_rows`); opening one converts it to blocks in one transaction.
 * - `table_versions`: metadata and status; the version id is "t" + the AUTOINCREMENT sequence, so ids are never
 *   reused, even after gc deletes the newest one.
 * - `live_stack`: the publish stack. Its top is the live table, the entry below is where rollback returns.
 *   `table_versions.status` mirrors it ('live' for the top) and both change in the same transaction.
 * - `publish_log`: who published or rolled back what, when and why.
 *
 * Durability: WAL with synchronous=FULL. Rows are written in transactions of `batchSize`, so a killed build
 * leaves complete batches and a `building` status; `recoverStale` (run on open) marks such a build failed once its
 * process is gone. Publish and rollback are single IMMEDIATE transactions: a reader sees the old live table or the
 * new one, never a state in between.
 *
 * @example
 * const store = SqliteTableStore.open(tableStorePath(".freshrec"), new SystemClock());
 * const live = store.live();
 * if (live) console.log(store.lookup(live.version, "baking", "running")?.answers);
 */
import Database from "better-sqlite3";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import type { Clock } from "../domain/clock.js";
import { type StoreFileKind, StoreFileError, openStoreFile, storeFileError } from "../data/store-file.js";
import { FreshrecError } from "../domain/errors.js";
import type { History } from "../domain/types.js";
import { pairKey } from "../domain/types.js";
import { ANSWER_BYTES, checkPackedRows, decodeAnswersInto, encodeAnswers, newClustersInOrder, remappedPackedAnswers } from "./answer-blob.js";
import {
  EXPLANATION_BYTES,
  EXPLANATION_JSON,
  EXPLANATION_NONE,
  type ExplanationKind,
  mergeBlockParts,
  storedType,
  TableBlock,
  TableBlockWriter,
} from "./table-block.js";

/** Page cache of a table scan (`packedPages`), in SQLite's units (negative: KiB). */
const SCAN_CACHE_SIZE = -1024;
import type {
  PackedBuildRows,
  PackedPage,
  PackedTable,
  PackedTableHeader,
  PublishEvent,
  PublishOptions,
  StoredTableRow,
  TableBuilder,
  TableBuildMeta,
  TableBuildRow,
  TableBuildStats,
  TableFilter,
  TableInfo,
  TableMetrics,
  TableStatus,
  TableStore,
} from "./contract.js";
import { damagedRowsError, TableNotFoundError, TableStateError } from "./errors.js";
import { matchesFilter, orderByDictionary, PackedTableGatherer, parseVersion, tableInfoOf, versionId, type VersionColumns } from "./versions.js";

export interface SqliteTableStoreOptions {
  /**
   * Rows per write transaction in `append`. Larger batches write faster; a crash loses at most one batch.
   * @defaultValue 5000
   */
  readonly batchSize?: number;
  /**
   * How long a write waits for another process's write transaction before failing (ms).
   * @defaultValue 5000
   */
  readonly busyTimeoutMs?: number;
  /**
   * Run `recoverStale()` when opening, as the durability rule asks.
   * @defaultValue true
   */
  readonly recoverOnOpen?: boolean;
  /**
   * Rows fetched per query while iterating `rows()` (and `contextKeys`, `packed`): whole c1s, as many as this many
   * rows need, at least one.
   * @defaultValue 2000
   */
  readonly pageSize?: number;
}

const SCHEMA_VERSION = "2";
/** The schema of files that stored one SQL row per pair (`table_rows`); opening one converts it to blocks. */
const ROWS_SCHEMA_VERSION = "1";
const PUBLISHABLE: readonly TableStatus[] = ["ready", "retired"];

/** The table store file inside a workspace. */
export function tableStorePath(workspace: string): string {
  return join(workspace, "tables.sqlite");
}

/** How the table store's file errors name it (src/data/store-file.ts). */
const TABLE_STORE_FILE: StoreFileKind = { store: "tables", startsOver: "an empty table store" };

/** A row's explanation as a block stores it: bytes as they are, an object as JSON text, nothing as none. */
function storedExplanation(explanation: TableBuildRow["explanation"] | string | null): { kind: ExplanationKind; bytes: Uint8Array | null } {
  if (explanation === undefined || explanation === null) return { kind: EXPLANATION_NONE, bytes: null };
  if (explanation instanceof Uint8Array) return { kind: EXPLANATION_BYTES, bytes: explanation };
  return { kind: EXPLANATION_JSON, bytes: Buffer.from(typeof explanation === "string" ? explanation : JSON.stringify(explanation), "utf8") };
}

/** What a block cannot hold of a schema-1 row (a file written by hand or by another program), or null. */
function unconvertible(c1: unknown, c2: unknown, key: unknown, answers: unknown, explanation: unknown): string | null {
  if (!Number.isInteger(c1)) return `c1 stored as ${storedType(c1)}`;
  if (!Number.isInteger(c2)) return `c2 stored as ${storedType(c2)}`;
  if (!Buffer.isBuffer(answers)) return `answers stored as ${storedType(answers)}`;
  if (answers.length % ANSWER_BYTES !== 0) return `answers of ${answers.length} bytes, not whole answers of ${ANSWER_BYTES}`;
  if (key !== null && typeof key !== "string") return `a context key stored as ${storedType(key)}`;
  if (explanation !== null && typeof explanation !== "string" && !Buffer.isBuffer(explanation)) return `an explanation stored as ${storedType(explanation)}`;
  return null;
}

/**
 * Rows [from, to) in the order of a table's blocks, (c1, c2) in the store's numbering. A build lists its pairs in
 * that order (`clusterOrder`), so the sort is mostly skipped.
 */
function pairOrder(from: number, to: number, c1Of: (r: number) => number, c2Of: (r: number) => number): Int32Array {
  const order = new Int32Array(to - from);
  let sorted = true;
  for (let r = from; r < to; r++) {
    order[r - from] = r;
    if (r > from && sorted) {
      const d = c1Of(r) - c1Of(r - 1);
      sorted = d > 0 || (d === 0 && c2Of(r) > c2Of(r - 1));
    }
  }
  return sorted ? order : order.sort((a, b) => c1Of(a) - c1Of(b) || c2Of(a) - c2Of(b));
}

/**
 * The pairs written to a build this store has open, per c1 (dictionary indices), so a pair written twice is refused
 * before it is stored. Pairs added since the last `commit` are taken back by `rollback` when their transaction fails.
 */
class WrittenPairs {
  /** Per c1, a byte per c2 (1: written), grown as larger indices come. */
  private readonly byC1: Uint8Array[] = [];
  private readonly pending: number[] = [];

  /** Adds a pair; false when it was written before. */
  add(c1: number, c2: number): boolean {
    let c2s = this.byC1[c1];
    if (!c2s || c2 >= c2s.length) {
      const grown = new Uint8Array(Math.max(64, 2 * c2 + 1));
      if (c2s) grown.set(c2s);
      this.byC1[c1] = c2s = grown;
    }
    if (c2s[c2] === 1) return false;
    c2s[c2] = 1;
    this.pending.push(c1, c2);
    return true;
  }

  commit(): void {
    this.pending.length = 0;
  }

  rollback(): void {
    for (let k = 0; k < this.pending.length; k += 2) this.byC1[this.pending[k]][this.pending[k + 1]] = 0;
    this.pending.length = 0;
  }
}

/**
 * Builds open in this process, per database file. A build row whose pid is this process but which is not in
 * here was left by a builder that was dropped without `finish`/`fail` (a closed store): it is stale too.
 */
const activeBuilds = new Map<string, Set<number>>();
let memoryStores = 0;

interface VersionRecord extends VersionColumns {
  builder_pid: number | null;
  builder_host: string | null;
}

/** Whether a process with this id runs on this host (a builder's, or the schedule's driver, src/update/schedule/sqlite-store.ts). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** How errors name a block of a version: the store's index of its c1 (the dictionary may be what is damaged). */
function blockName(seq: number, c1: number): string {
  return `${versionId(seq)} (c1 #${c1})`;
}

function prepareStatements(db: Database.Database) {
  return {
    version: db.prepare("SELECT * FROM table_versions WHERE seq = ?"),
    versions: db.prepare("SELECT * FROM table_versions ORDER BY seq"),
    building: db.prepare("SELECT * FROM table_versions WHERE status = 'building' ORDER BY seq"),
    insertVersion: db.prepare(`INSERT INTO table_versions
      (status, model_version, template_hash, rag_as_of, rag_window_days, rag_options, strategy, parent, created_at, builder_pid, builder_host)
      VALUES ('building', @modelVersion, @templateHash, @ragAsOf, @ragWindowDays, @ragOptions, @strategy, @parent, @createdAt, @pid, @host)`),
    setStatus: db.prepare("UPDATE table_versions SET status = ? WHERE seq = ?"),
    finish: db.prepare(`UPDATE table_versions SET status = 'ready', stats = ?, finished_at = ?, row_count = ?, top_n = ?,
      builder_pid = NULL, builder_host = NULL WHERE seq = ?`),
    fail: db.prepare(`UPDATE table_versions SET status = 'failed', failure = ?, finished_at = ?, row_count = ?,
      builder_pid = NULL, builder_host = NULL WHERE seq = ?`),
    setMetrics: db.prepare("UPDATE table_versions SET metrics = ? WHERE seq = ?"),
    rowShape: db.prepare("SELECT coalesce(sum(row_count), 0) AS n, coalesce(max(top_n), 0) AS topN FROM table_blocks WHERE table_seq = ?"),
    clusterByIdx: db.prepare("SELECT idx, id FROM clusters WHERE idx >= ? ORDER BY idx"),
    clusterById: db.prepare("SELECT idx FROM clusters WHERE id = ?"),
    insertCluster: db.prepare("INSERT INTO clusters (idx, id) VALUES ((SELECT coalesce(max(idx) + 1, 0) FROM clusters), ?)"),
    insertBlock: db.prepare("INSERT INTO table_blocks (table_seq, c1, row_count, top_n, block) VALUES (?, ?, ?, ?, ?)"),
    partsOf: db.prepare("SELECT block FROM table_blocks WHERE table_seq = ? AND c1 = ? ORDER BY id").pluck(),
    firstClusters: db.prepare(`SELECT c1, sum(row_count) FROM table_blocks WHERE table_seq = ? AND c1 > ?
      GROUP BY c1 ORDER BY c1 LIMIT ?`).raw(),
    blocksBetween: db.prepare("SELECT c1, block FROM table_blocks WHERE table_seq = ? AND c1 > ? AND c1 <= ? ORDER BY c1, id").raw(),
    copyBlocks: db.prepare(`INSERT INTO table_blocks (table_seq, c1, row_count, top_n, block)
      SELECT ?, c1, row_count, top_n, block FROM table_blocks WHERE table_seq = ? ORDER BY c1, id`),
    stack: db.prepare("SELECT pos, table_seq FROM live_stack ORDER BY pos DESC"),
    push: db.prepare("INSERT INTO live_stack (table_seq) VALUES (?)"),
    popAbove: db.prepare("DELETE FROM live_stack WHERE pos > ?"),
    dropFromStack: db.prepare("DELETE FROM live_stack WHERE table_seq = ?"),
    dropStackPos: db.prepare("DELETE FROM live_stack WHERE pos = ?"),
    log: db.prepare("INSERT INTO publish_log (action, version, previous, at, actor, reason) VALUES (?, ?, ?, ?, ?, ?)"),
    history: db.prepare("SELECT action, version, previous, at, actor, reason FROM publish_log ORDER BY id"),
    deleteBlocks: db.prepare("DELETE FROM table_blocks WHERE table_seq = ?"),
    deleteVersion: db.prepare("DELETE FROM table_versions WHERE seq = ?"),
  };
}

type Statements = ReturnType<typeof prepareStatements>;

export class SqliteTableStore implements TableStore {
  /** Page scans in progress (packedPages) and the connection's cache size to restore when the last one ends. */
  private openScans = 0;
  private cacheSizeOutsideScans = 0;
  private readonly batchSize: number;
  private readonly pageSize: number;
  private readonly file: string;
  /** Cluster dictionary cache: idx -> id and back. Entries never change once assigned, so the cache never lies. */
  private readonly clusterIds: string[] = [];
  private readonly clusterIndex = new Map<string, number>();
  private readonly sql: Statements;
  private readonly db: Database.Database;
  /** Where blocks are written before SQLite copies them in (`writeBlocks`). */
  private blockScratch = Buffer.allocUnsafeSlow(0);
  /** Builds this store began and has not finished or failed, with the pairs written to each. */
  private readonly openBuilds = new Map<number, WrittenPairs>();

  /** The database file (":memory:N" for an in-memory store), for messages. */
  get location(): string {
    return this.file;
  }

  /** Opens (creating when missing) the store at `file`; ":memory:" gives a private in-memory store. */
  static open(file: string, clock: Clock, options: SqliteTableStoreOptions = {}): SqliteTableStore {
    return new SqliteTableStore(file, clock, options);
  }

  constructor(
    file: string,
    private readonly clock: Clock,
    options: SqliteTableStoreOptions = {},
  ) {
    this.batchSize = options.batchSize ?? 5000;
    this.pageSize = options.pageSize ?? 2000;
    if (!(this.batchSize >= 1) || !(this.pageSize >= 1)) {
      throw new FreshrecError("BAD_INPUT", "tables: batchSize and pageSize must be at least 1");
    }
    // Each ":memory:" connection is its own database, so each gets its own key for the open-build registry.
    this.file = file === ":memory:" ? `:memory:${++memoryStores}` : resolve(file);
    const db = openStoreFile(file === ":memory:" ? file : this.file, TABLE_STORE_FILE, (db) => SqliteTableStore.migrate(db, this.file), {
      timeout: options.busyTimeoutMs ?? 5000,
    });
    this.db = db;
    try {
      this.sql = prepareStatements(db);
      if (options.recoverOnOpen ?? true) this.recoverStale();
    } catch (error) {
      db.close();
      throw storeFileError(TABLE_STORE_FILE, this.file, error);
    }
  }

  private static migrate(db: Database.Database, file: string): void {
    // page_size and auto_vacuum must be set before the first table exists (a file made before keeps its own).
    // 16 KiB pages: a table's rows are written in key order, tens of megabytes per build, and larger pages cost that
    // build fewer page splits and log frames (a fusion build of 89,700 rows writes faster with them than with 4 KiB).
    // auto_vacuum lets gc hand freed pages back to the OS.
    // Set on a file without tables only: on any other they change nothing, and setting auto_vacuum writes the file's
    // header, so it would wait for (and fail on) another process's write lock, such as a conversion's, on every open.
    if (db.prepare("SELECT count(*) FROM sqlite_master").pluck().get() === 0) {
      db.pragma("page_size = 16384");
      db.pragma("auto_vacuum = INCREMENTAL");
    }
    db.pragma("journal_mode = WAL");
    // FULL: a committed publish survives power loss too; it costs one sync per transaction, and rows are written in
    // large batches, so it is cheap here.
    db.pragma("synchronous = FULL");
    // One IMMEDIATE transaction, so two processes opening a new file at once do not both write the schema row.
    let converted: boolean;
    try {
      converted = db.transaction(() => SqliteTableStore.createSchema(db, file)).immediate();
    } catch (error) {
      throw SqliteTableStore.convertingElsewhere(db, file, error) ?? error;
    }
    // The rows a conversion dropped leave their pages free: hand them back rather than keep a file twice its size.
    if (converted) db.pragma("incremental_vacuum");
  }

  /**
   * The error for a schema transaction that waited out the busy timeout on a file another process is converting to
   * blocks (its committed schema, which WAL lets this connection read meanwhile, is still 1), or null for any other
   * failure. A conversion holds the file's write lock for as long as it takes, which a large file makes longer than
   * a busy timeout; SQLite's own "database is locked" would not say why or what to do.
   */
  private static convertingElsewhere(db: Database.Database, file: string, error: unknown): FreshrecError | null {
    const code = (error as { code?: unknown })?.code;
    if (typeof code !== "string" || !code.startsWith("SQLITE_BUSY")) return null;
    let schema: unknown;
    try {
      schema = db.prepare("SELECT value FROM store_meta WHERE key = 'schema'").pluck().get();
    } catch {
      return null;
    }
    if (schema !== ROWS_SCHEMA_VERSION) return null;
    const waited = db.pragma("busy_timeout", { simple: true });
    return new FreshrecError(
      "INTERNAL",
      `tables: ${file} is being converted to blocks (schema ${ROWS_SCHEMA_VERSION} to ${SCHEMA_VERSION}) by another process, which held it past the ${waited} ms this one waits; wait for that process to finish converting, then retry`,
      { cause: error },
    );
  }

  /** Creates what is missing; returns whether a schema-1 file was converted to blocks. */
  private static createSchema(db: Database.Database, file: string): boolean {
    db.exec(`
      CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS clusters (idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
      CREATE TABLE IF NOT EXISTS table_versions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        status TEXT NOT NULL CHECK (status IN ('building', 'ready', 'live', 'retired', 'failed')),
        model_version TEXT NOT NULL,
        template_hash TEXT NOT NULL,
        rag_as_of INTEGER,
        rag_window_days REAL,
        rag_options TEXT,
        strategy TEXT,
        parent TEXT,
        stats TEXT,
        metrics TEXT,
        created_at INTEGER NOT NULL,
        finished_at INTEGER,
        failure TEXT,
        row_count INTEGER NOT NULL DEFAULT 0,
        top_n INTEGER NOT NULL DEFAULT 0,
        builder_pid INTEGER,
        builder_host TEXT
      );
      CREATE TABLE IF NOT EXISTS table_blocks (
        id INTEGER PRIMARY KEY,
        table_seq INTEGER NOT NULL,
        c1 INTEGER NOT NULL,
        row_count INTEGER NOT NULL,
        top_n INTEGER NOT NULL,
        block BLOB NOT NULL
      );
      CREATE INDEX IF NOT EXISTS table_blocks_by_c1 ON table_blocks (table_seq, c1);
      CREATE TABLE IF NOT EXISTS live_stack (pos INTEGER PRIMARY KEY AUTOINCREMENT, table_seq INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS publish_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        action TEXT NOT NULL CHECK (action IN ('publish', 'rollback')),
        version TEXT NOT NULL,
        previous TEXT,
        at INTEGER NOT NULL,
        actor TEXT,
        reason TEXT
      );
    `);
    const row = db.prepare("SELECT value FROM store_meta WHERE key = 'schema'").get() as { value: string } | undefined;
    if (!row) db.prepare("INSERT INTO store_meta (key, value) VALUES ('schema', ?)").run(SCHEMA_VERSION);
    else if (row.value === ROWS_SCHEMA_VERSION) {
      SqliteTableStore.convertRowsToBlocks(db, file);
      db.prepare("UPDATE store_meta SET value = ? WHERE key = 'schema'").run(SCHEMA_VERSION);
      return true;
    } else if (row.value !== SCHEMA_VERSION) {
      throw new FreshrecError("INTERNAL", `tables: ${file} has schema ${row.value}, this freshrec reads ${SCHEMA_VERSION}`);
    }
    return false;
  }

  /**
   * Rewrites the rows of a schema-1 file (`table_rows`, one SQL row per pair) as blocks, one per (version, c1), and
   * drops them; runs inside the schema's transaction, so a file is converted whole or not at all. Explanations keep
   * their kind: BLOBs stay bytes, text (the JSON of tables written before bytes) stays JSON. A row a block cannot hold
   * fails the conversion, naming the file and the row, and leaves the file as it was.
   */
  private static convertRowsToBlocks(db: Database.Database, file: string): void {
    if (!db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'table_rows'").get()) return;
    // Files written before rows could explain themselves have no explanation column.
    const columns = db.prepare("PRAGMA table_info(table_rows)").all() as { name: string }[];
    const explanation = columns.some((c) => c.name === "explanation") ? "explanation" : "NULL";
    const firstClusters = db.prepare("SELECT DISTINCT table_seq, c1 FROM table_rows ORDER BY table_seq, c1").raw();
    const rowsOf = db.prepare(`SELECT c2, context_key, answers, ${explanation} FROM table_rows WHERE table_seq = ? AND c1 = ? ORDER BY c2`).raw();
    const insert = db.prepare("INSERT INTO table_blocks (table_seq, c1, row_count, top_n, block) VALUES (?, ?, ?, ?, ?)");
    const clusterIdAt = db.prepare("SELECT id FROM clusters WHERE idx = ?").pluck();
    const refuse = (seq: number, c1: unknown, c2: unknown, problem: string) => {
      const name = (idx: unknown) => (Number.isInteger(idx) ? (clusterIdAt.get(idx) as string | undefined) : undefined) ?? `#${String(idx)}`;
      return new StoreFileError(
        TABLE_STORE_FILE,
        file,
        `cannot be converted to blocks (schema ${ROWS_SCHEMA_VERSION} to ${SCHEMA_VERSION}): ${versionId(seq)} row (${name(c1)}, ${name(c2)}) has ${problem}; it is left as it was`,
      );
    };
    for (const [seq, c1] of firstClusters.all() as [number, number][]) {
      const writer = new TableBlockWriter();
      for (const [c2, key, answers, stored] of rowsOf.all(seq, c1) as [number, string | null, Buffer, Buffer | string | null][]) {
        const problem = unconvertible(c1, c2, key, answers, stored);
        if (problem !== null) throw refuse(seq, c1, c2, problem);
        const { kind, bytes } = storedExplanation(stored);
        writer.add(c2, answers, 0, answers.length, kind, bytes, 0, bytes?.length ?? 0, key);
      }
      insert.run(seq, c1, writer.count, writer.topN, writer.finish());
    }
    db.exec("DROP TABLE table_rows");
  }

  // ---------------------------------------------------------------------------------------------- lookups of state

  private record(version: string): VersionRecord {
    const r = this.sql.version.get(parseVersion(version)) as VersionRecord | undefined;
    if (!r) throw new TableNotFoundError(version);
    return r;
  }

  /** Live seq and the seq rollback would return to, from the publish stack. */
  private stackState(): { live: number | null; previous: number | null; previousPos: number | null } {
    const stack = this.sql.stack.all() as { pos: number; table_seq: number }[];
    if (stack.length === 0) return { live: null, previous: null, previousPos: null };
    const live = stack[0].table_seq;
    // Entries equal to the live one are skipped: publishing A, B, A then rolling back must not "return" to A.
    const below = stack.find((e) => e.table_seq !== live);
    return { live, previous: below?.table_seq ?? null, previousPos: below?.pos ?? null };
  }

  get(version: string): TableInfo {
    return tableInfoOf(this.record(version));
  }

  list(filter: TableFilter = {}): TableInfo[] {
    return (this.sql.versions.all() as VersionRecord[])
      .filter((r) => matchesFilter(r, filter))
      .map(tableInfoOf);
  }

  live(): TableInfo | undefined {
    // Pointer and metadata read in one transaction: one snapshot, even while another process publishes.
    return this.db.transaction(() => {
      const { live } = this.stackState();
      return live === null ? undefined : this.get(versionId(live));
    })();
  }

  previousLive(): TableInfo | undefined {
    return this.db.transaction(() => {
      const { previous } = this.stackState();
      return previous === null ? undefined : this.get(versionId(previous));
    })();
  }

  publishHistory(): PublishEvent[] {
    return this.sql.history.all() as PublishEvent[];
  }

  // ---------------------------------------------------------------------------------------------- cluster dictionary

  private loadClusters(): void {
    for (const r of this.sql.clusterByIdx.all(this.clusterIds.length) as { idx: number; id: string }[]) {
      this.clusterIds[r.idx] = r.id;
      this.clusterIndex.set(r.id, r.idx);
    }
  }

  clusterOrder(clusters: readonly string[]): string[] {
    this.loadClusters();
    return orderByDictionary(clusters, this.clusterIndex);
  }

  /** Index of a cluster id, adding it to the dictionary; call inside a write transaction. */
  private clusterIdxForWrite(id: string): number {
    const known = this.clusterIndex.get(id);
    if (known !== undefined) return known;
    let row = this.sql.clusterById.get(id) as { idx: number } | undefined;
    if (!row) {
      this.sql.insertCluster.run(id);
      row = this.sql.clusterById.get(id) as { idx: number };
    }
    // Another process may have added clusters in between: load everything up to here so the cache stays dense.
    this.loadClusters();
    return row.idx;
  }

  private forgetClustersFrom(idx: number): void {
    for (const id of this.clusterIds.splice(idx)) this.clusterIndex.delete(id);
  }

  /** Index of a cluster id for reading, or undefined when no table ever used it. */
  private clusterIdxForRead(id: string): number | undefined {
    if (!this.clusterIndex.has(id)) this.loadClusters();
    return this.clusterIndex.get(id);
  }

  /** The id of a dictionary index, or undefined when the dictionary has no such index (a damaged block). */
  private clusterId(idx: number): string | undefined {
    if (idx >= this.clusterIds.length) this.loadClusters();
    return this.clusterIds[idx];
  }

  /** How errors name row i of a block of c1: its pair, by id where the dictionary has one. */
  private rowName(c1: number, block: TableBlock, i: number): string {
    const c2 = block.c2(i);
    return `row (${this.clusterId(c1) ?? `#${c1}`}, ${this.clusterId(c2) ?? `#${c2}`})`;
  }

  /**
   * The id of a cluster index stored in row i of a block of c1 (`what`: "has c2 #7"). An index the dictionary lacks
   * is a damaged block, named with the row: a reader must not hand out a row without its cluster.
   */
  private storedClusterId(idx: number, c1: number, block: TableBlock, i: number, what: () => string): string {
    const id = this.clusterId(idx);
    if (id === undefined) throw block.damaged(`${this.rowName(c1, block, i)} ${what()}, not one of the ${this.clusterIds.length} clusters of the dictionary`);
    return id;
  }

  /** Row i of a block of c1 as a stored row. */
  private decodeRow(c1: number, block: TableBlock, i: number): StoredTableRow {
    const first = this.storedClusterId(c1, c1, block, i, () => `has c1 #${c1}`);
    const second = this.storedClusterId(block.c2(i), c1, block, i, () => `has c2 #${block.c2(i)}`);
    const { bytes } = block;
    const start = block.answersStart(i);
    const n = (block.answersEnd(i) - start) / ANSWER_BYTES;
    const list = new Array<{ cluster: string; score: number }>(n);
    for (let k = 0, at = start; k < n; k++, at += ANSWER_BYTES) {
      const idx = bytes.readInt32LE(at);
      list[k] = { cluster: this.storedClusterId(idx, c1, block, i, () => `answers cluster #${idx}`), score: bytes.readFloatLE(at + 4) };
    }
    const row = { c1: first, c2: second, answers: list, contextKey: block.contextKey(i) };
    const explanation = block.explanation(i, () => this.rowName(c1, block, i));
    return explanation === undefined ? row : { ...row, explanation };
  }

  /** The stored parts of one c1 of a version, in the order they were written. */
  private partsOf(seq: number, c1: number): TableBlock[] {
    return (this.sql.partsOf.all(seq, c1) as Buffer[]).map((bytes) => new TableBlock(bytes, blockName(seq, c1)));
  }

  /**
   * A version's c1s in order, each with its parts, fetched by whole c1s of about `rowsPerQuery` rows per query: pages,
   * not one long-lived statement, as better-sqlite3 blocks every other call on the connection while an iterator is
   * open, and a caller may well look things up while walking the rows.
   */
  private *firstClusters(seq: number, rowsPerQuery: number): Generator<{ c1: number; parts: TableBlock[] }, void, void> {
    let after = -1;
    for (;;) {
      const counts = this.sql.firstClusters.all(seq, after, rowsPerQuery) as [number, number][];
      if (counts.length === 0) return;
      let last = counts.length - 1;
      for (let j = 0, rows = 0; j < counts.length; j++) {
        rows += counts[j][1];
        if (rows >= rowsPerQuery) {
          last = j;
          break;
        }
      }
      const upTo = counts[last][0];
      const blocks = this.sql.blocksBetween.all(seq, after, upTo) as [number, Buffer][];
      for (let j = 0; j < blocks.length; ) {
        const c1 = blocks[j][0];
        const parts: TableBlock[] = [];
        for (; j < blocks.length && blocks[j][0] === c1; j++) parts.push(new TableBlock(blocks[j][1], blockName(seq, c1)));
        yield { c1, parts };
      }
      after = upTo;
    }
  }

  /** The written pairs of a build this store has open, once it is checked to be still building; call in a transaction. */
  private openBuild(seq: number): WrittenPairs {
    this.assertBuilding(seq);
    const pairs = this.openBuilds.get(seq);
    if (!pairs) throw new TableStateError(`tables: ${versionId(seq)} is being built through another store`, versionId(seq), "building");
    return pairs;
  }

  // ---------------------------------------------------------------------------------------------- building

  beginBuild(meta: TableBuildMeta): TableBuilder {
    if (!meta.modelVersion || !meta.templateHash) {
      throw new FreshrecError("BAD_INPUT", "tables: a build needs a modelVersion and a templateHash");
    }
    if (meta.parent) this.record(meta.parent);
    const seq = Number(
      this.sql.insertVersion.run({
        modelVersion: meta.modelVersion,
        templateHash: meta.templateHash,
        ragAsOf: meta.ragAsOf ?? null,
        ragWindowDays: meta.ragWindowDays ?? null,
        ragOptions: meta.ragOptions == null ? null : JSON.stringify(meta.ragOptions),
        strategy: meta.strategy ?? null,
        parent: meta.parent ?? null,
        createdAt: this.clock.now(),
        pid: process.pid,
        host: hostname(),
      }).lastInsertRowid,
    );
    let open = activeBuilds.get(this.file);
    if (!open) activeBuilds.set(this.file, (open = new Set()));
    open.add(seq);
    this.openBuilds.set(seq, new WrittenPairs());
    return new SqliteTableBuilder(this, seq);
  }

  /**
   * @internal used by SqliteTableBuilder: `committed` hears of each batch as it commits, so a builder counts the
   * batches committed before one that fails.
   */
  appendRows(seq: number, rows: Iterable<TableBuildRow>, committed: (rows: number) => void): number {
    const ids: number[] = [];
    const scores: number[] = [];
    const writeBatch = this.db.transaction((batch: TableBuildRow[]) => {
      const written = this.openBuild(seq);
      const c1s = new Int32Array(batch.length);
      const c2s = new Int32Array(batch.length);
      const answers: Buffer[] = [];
      batch.forEach((row, r) => {
        if (row.c1 === row.c2) throw new FreshrecError("BAD_INPUT", `tables: row (${row.c1}, ${row.c2}) repeats its cluster`);
        ids.length = 0;
        scores.length = 0;
        for (const a of row.answers) {
          if (a.cluster === row.c1 || a.cluster === row.c2) {
            throw new FreshrecError("BAD_INPUT", `tables: row (${row.c1}, ${row.c2}) answers ${a.cluster}, a cluster of its own history`);
          }
          if (!Number.isFinite(a.score)) {
            throw new FreshrecError("BAD_INPUT", `tables: row (${row.c1}, ${row.c2}) has score ${a.score} for ${a.cluster}`);
          }
          ids.push(this.clusterIdxForWrite(a.cluster));
          scores.push(a.score);
        }
        c1s[r] = this.clusterIdxForWrite(row.c1);
        c2s[r] = this.clusterIdxForWrite(row.c2);
        if (!written.add(c1s[r], c2s[r])) throw new FreshrecError("BAD_INPUT", `tables: pair (${row.c1}, ${row.c2}) written twice to ${versionId(seq)}`);
        answers.push(encodeAnswers(ids, scores));
      });
      const explanations = batch.map((row) => storedExplanation(row.explanation));
      this.writeBlocks(seq, pairOrder(0, batch.length, (r) => c1s[r], (r) => c2s[r]), c1s, (writer, r) => {
        const { kind, bytes } = explanations[r];
        writer.add(c2s[r], answers[r], 0, answers[r].length, kind, bytes, 0, bytes?.length ?? 0, batch[r].contextKey ?? null);
      });
    });
    let written = 0;
    let batch: TableBuildRow[] = [];
    const flush = () => {
      this.inBatch(seq, () => writeBatch.immediate(batch));
      committed(batch.length);
      written += batch.length;
      batch = [];
    };
    for (const row of rows) {
      batch.push(row);
      if (batch.length >= this.batchSize) flush();
    }
    if (batch.length) flush();
    return written;
  }

  /**
   * Runs one write transaction of a build; when it fails, forgets what it added to the dictionary cache and to the
   * build's written pairs (its rollback undid them in the file): or a later insert could reuse the dictionary indices
   * for other clusters while the cache still maps the old ids to them.
   */
  private inBatch<T>(seq: number, write: () => T): T {
    const known = this.clusterIds.length;
    try {
      const result = write();
      this.openBuilds.get(seq)?.commit();
      return result;
    } catch (error) {
      this.forgetClustersFrom(known);
      this.openBuilds.get(seq)?.rollback();
      throw error;
    }
  }

  /**
   * Writes rows in `order` (by c1, then c2, in the store's numbering) as one block per c1: `add` adds row r to its
   * c1's block.
   */
  private writeBlocks(seq: number, order: Int32Array, c1Of: Int32Array, add: (writer: TableBlockWriter, r: number) => void): void {
    for (let j = 0; j < order.length; ) {
      const c1 = c1Of[order[j]];
      const writer = new TableBlockWriter();
      for (; j < order.length && c1Of[order[j]] === c1; j++) add(writer, order[j]);
      this.insertBlock(seq, c1, writer);
    }
  }

  /** Stores the block `writer` holds as a part of c1 of version `seq`. */
  private insertBlock(seq: number, c1: number, writer: TableBlockWriter): void {
    // SQLite copies a bound BLOB, so one scratch buffer serves every block of the store's writes.
    const block = writer.finishInto(this.blockScratch);
    // Its own memory, never a slice of Node's shared pool, so a block written elsewhere is told apart by its buffer.
    if (block.buffer !== this.blockScratch.buffer) this.blockScratch = Buffer.allocUnsafeSlow(Math.max(block.length, 2 * this.blockScratch.length));
    this.sql.insertBlock.run(seq, c1, writer.count, writer.topN, block);
  }

  /**
   * @internal used by SqliteTableBuilder: `appendRows` for rows in stored form, in the same transactions of
   * `batchSize`, clusters added to the dictionary in the same order, with the same checks and errors.
   */
  appendPackedRows(seq: number, rows: PackedBuildRows, committed: (rows: number) => void): number {
    const { clusters, c1, c2, answerEnd, explanation, explanationEnd, contextKeys } = rows;
    const dictionary = new Int32Array(clusters.length).fill(-1);
    const seen = new Uint8Array(clusters.length);
    // Each row's clusters in the store's numbering.
    const c1s = new Int32Array(rows.count);
    const c2s = new Int32Array(rows.count);
    // The batch's answers in the store's numbering, in memory reused from batch to batch (the blocks copy them).
    let remapped: Buffer | null = null;
    const writeBatch = this.db.transaction((from: number, to: number) => {
      const written = this.openBuild(seq);
      // The dictionary learns clusters in the order an object build meets them: each row's answers, then c1, c2.
      for (const i of newClustersInOrder(rows, from, to, seen)) dictionary[i] = this.clusterIdxForWrite(clusters[i]);
      const batchAnswers = remappedPackedAnswers(rows, from, to, dictionary, remapped);
      if (remapped === null || batchAnswers.buffer !== remapped.buffer) remapped = batchAnswers;
      const first = from === 0 ? 0 : answerEnd[from - 1];
      for (let r = from; r < to; r++) {
        c1s[r] = dictionary[c1[r]];
        c2s[r] = dictionary[c2[r]];
        if (!written.add(c1s[r], c2s[r])) throw new FreshrecError("BAD_INPUT", `tables: pair (${clusters[c1[r]]}, ${clusters[c2[r]]}) written twice to ${versionId(seq)}`);
      }
      this.writeBlocks(seq, pairOrder(from, to, (r) => c1s[r], (r) => c2s[r]), c1s, (writer, r) => {
        const explanationFrom = r === 0 ? 0 : explanationEnd[r - 1];
        const kind = explanationEnd[r] > explanationFrom ? EXPLANATION_BYTES : EXPLANATION_NONE;
        writer.add(c2s[r], batchAnswers, (r === 0 ? 0 : answerEnd[r - 1]) - first, answerEnd[r] - first, kind, explanation, explanationFrom, explanationEnd[r], contextKeys[r] ?? null);
      });
    });
    let written = 0;
    for (let from = 0; from < rows.count; from += this.batchSize) {
      const to = Math.min(from + this.batchSize, rows.count);
      checkPackedRows(rows, from, to);
      // As in appendRows: the rollback undid the dictionary entries and pairs this batch added.
      this.inBatch(seq, () => writeBatch.immediate(from, to));
      committed(to - from);
      written += to - from;
    }
    return written;
  }

  /** @internal used by SqliteTableBuilder */
  copyRowsInto(seq: number, fromVersion: string, pairs?: Iterable<History>): number {
    const from = this.record(fromVersion).seq;
    if (from === seq) throw new TableStateError(`tables: ${versionId(seq)} cannot copy rows from itself`, versionId(seq));
    const overlap = () => new FreshrecError("BAD_INPUT", `tables: copying from ${fromVersion} overlaps rows already in ${versionId(seq)}`);
    const copy = this.db.transaction(() => {
      const written = this.openBuild(seq);
      if (!pairs) {
        // Whole blocks, copied in SQL; their pairs are read only to be known as written.
        let n = 0;
        for (const { c1, parts } of this.firstClusters(from, this.pageSize)) {
          for (const part of parts) {
            for (let i = 0; i < part.count; i++) if (!written.add(c1, part.c2(i))) throw overlap();
            n += part.count;
          }
        }
        this.sql.copyBlocks.run(seq, from);
        return n;
      }
      const wanted = new Map<number, Set<number>>();
      for (const p of pairs) {
        const c1 = this.clusterIdxForRead(p.c1);
        const c2 = this.clusterIdxForRead(p.c2);
        // A cluster no table ever used cannot be in the source either.
        if (c1 === undefined || c2 === undefined) continue;
        let c2s = wanted.get(c1);
        if (!c2s) wanted.set(c1, (c2s = new Set()));
        c2s.add(c2);
      }
      let n = 0;
      for (const c1 of [...wanted.keys()].sort((a, b) => a - b)) {
        const c2s = wanted.get(c1)!;
        const parts = this.partsOf(from, c1);
        const merged = mergeBlockParts(parts, blockName(from, c1));
        const writer = new TableBlockWriter();
        for (let j = 0; j < merged.count; j++) {
          const part = parts[merged.part[j]];
          const i = merged.row[j];
          if (!c2s.has(part.c2(i))) continue;
          if (!written.add(c1, part.c2(i))) throw overlap();
          part.copyRowTo(i, writer);
        }
        if (writer.count === 0) continue;
        this.insertBlock(seq, c1, writer);
        n += writer.count;
      }
      return n;
    });
    return this.inBatch(seq, () => copy.immediate());
  }

  private assertBuilding(seq: number): VersionRecord {
    const r = this.sql.version.get(seq) as VersionRecord | undefined;
    if (!r) throw new TableNotFoundError(versionId(seq));
    if (r.status !== "building") {
      throw new TableStateError(`tables: ${versionId(seq)} is ${r.status}, no longer building`, versionId(seq), r.status);
    }
    return r;
  }

  private endBuild(seq: number): void {
    activeBuilds.get(this.file)?.delete(seq);
    this.openBuilds.delete(seq);
  }

  /** @internal used by SqliteTableBuilder */
  finishBuild(seq: number, stats: TableBuildStats): TableInfo {
    const info = this.db
      .transaction(() => {
        this.assertBuilding(seq);
        const shape = this.sql.rowShape.get(seq) as { n: number; topN: number };
        this.sql.finish.run(JSON.stringify(stats), this.clock.now(), shape.n, shape.topN, seq);
        return this.get(versionId(seq));
      })
      .immediate();
    this.endBuild(seq);
    return info;
  }

  /** @internal used by SqliteTableBuilder */
  failBuild(seq: number, reason: string): TableInfo {
    const info = this.db
      .transaction(() => {
        this.assertBuilding(seq);
        const shape = this.sql.rowShape.get(seq) as { n: number };
        this.sql.fail.run(reason, this.clock.now(), shape.n, seq);
        return this.get(versionId(seq));
      })
      .immediate();
    this.endBuild(seq);
    return info;
  }

  recoverStale(): TableInfo[] {
    const host = hostname();
    const mine = activeBuilds.get(this.file);
    return this.db
      .transaction(() => {
        const recovered: TableInfo[] = [];
        for (const r of this.sql.building.all() as VersionRecord[]) {
          // A build on another host cannot be checked from here; leave it to that host's next open.
          if (r.builder_host !== null && r.builder_host !== host) continue;
          const pid = r.builder_pid;
          const alive = pid !== null && (pid === process.pid ? (mine?.has(r.seq) ?? false) : isProcessAlive(pid));
          if (alive) continue;
          const shape = this.sql.rowShape.get(r.seq) as { n: number };
          this.sql.fail.run(`abandoned: builder process ${pid ?? "?"} ended without finishing`, this.clock.now(), shape.n, r.seq);
          recovered.push(this.get(versionId(r.seq)));
        }
        return recovered;
      })
      .immediate();
  }

  updateMetrics(version: string, metrics: TableMetrics, options: { readonly merge?: boolean } = {}): TableInfo {
    return this.db
      .transaction(() => {
        const r = this.record(version);
        const base = options.merge === false || r.metrics === null ? {} : JSON.parse(r.metrics);
        this.sql.setMetrics.run(JSON.stringify({ ...base, ...metrics }), r.seq);
        return this.get(version);
      })
      .immediate();
  }

  // ---------------------------------------------------------------------------------------------- publishing

  publish(version: string, options: PublishOptions = {}): TableInfo {
    return this.db
      .transaction(() => {
        const r = this.record(version);
        if (r.status === "live") return tableInfoOf(r);
        if (!PUBLISHABLE.includes(r.status)) {
          throw new TableStateError(`tables: ${version} is ${r.status}; only a ready or retired table can be published`, version, r.status);
        }
        const { live } = this.stackState();
        if (live !== null) this.sql.setStatus.run("retired", live);
        this.sql.push.run(r.seq);
        this.sql.setStatus.run("live", r.seq);
        this.sql.log.run("publish", version, live === null ? null : versionId(live), this.clock.now(), options.actor ?? null, options.reason ?? null);
        return this.get(version);
      })
      .immediate();
  }

  rollback(options: PublishOptions = {}): TableInfo {
    return this.db
      .transaction(() => {
        const { live, previous, previousPos } = this.stackState();
        if (live === null) throw new TableStateError("tables: no table is live, nothing to roll back");
        if (previous === null || previousPos === null) {
          throw new TableStateError(`tables: ${versionId(live)} is the only table ever published, nothing to roll back to`, versionId(live), "live");
        }
        this.sql.popAbove.run(previousPos);
        this.sql.setStatus.run("retired", live);
        this.sql.setStatus.run("live", previous);
        this.sql.log.run("rollback", versionId(previous), versionId(live), this.clock.now(), options.actor ?? null, options.reason ?? null);
        return this.get(versionId(previous));
      })
      .immediate();
  }

  gc(keep: number): TableInfo[] {
    if (!Number.isInteger(keep) || keep < 0) throw new FreshrecError("BAD_INPUT", `tables: gc keep must be a whole number >= 0, got ${keep}`);
    const deleted = this.db
      .transaction(() => {
        const { live, previous } = this.stackState();
        const all = this.sql.versions.all() as VersionRecord[];
        const newestFinished = new Set(
          all
            .filter((r) => r.status === "ready" || r.status === "live" || r.status === "retired")
            .map((r) => r.seq)
            .sort((a, b) => b - a)
            .slice(0, keep),
        );
        const victims = all.filter(
          (r) => r.status !== "building" && r.seq !== live && r.seq !== previous && !newestFinished.has(r.seq),
        );
        for (const r of victims) {
          this.sql.deleteBlocks.run(r.seq);
          this.sql.deleteVersion.run(r.seq);
          this.sql.dropFromStack.run(r.seq);
        }
        // Removing entries can leave the same table twice in a row on the stack; one entry is enough.
        const stack = (this.sql.stack.all() as { pos: number; table_seq: number }[]).reverse();
        for (let i = 1; i < stack.length; i++) {
          if (stack[i].table_seq === stack[i - 1].table_seq) this.sql.dropStackPos.run(stack[i].pos);
        }
        return victims.map(tableInfoOf);
      })
      .immediate();
    if (deleted.length) this.db.pragma("incremental_vacuum");
    return deleted;
  }

  // ---------------------------------------------------------------------------------------------- rows

  rows(version: string): IterableIterator<StoredTableRow> {
    // Resolved before iterating, so an unknown version fails at the call, not at the first `next()`.
    return this.pages(this.record(version).seq);
  }

  private *pages(seq: number): IterableIterator<StoredTableRow> {
    for (const { c1, parts } of this.firstClusters(seq, this.pageSize)) {
      const merged = mergeBlockParts(parts, blockName(seq, c1));
      for (let j = 0; j < merged.count; j++) yield this.decodeRow(c1, parts[merged.part[j]], merged.row[j]);
    }
  }

  lookup(version: string, c1: string, c2: string): StoredTableRow | undefined {
    const seq = this.record(version).seq;
    const i1 = this.clusterIdxForRead(c1);
    const i2 = this.clusterIdxForRead(c2);
    if (i1 === undefined || i2 === undefined) return undefined;
    for (const part of this.partsOf(seq, i1)) {
      const i = part.find(i2);
      if (i >= 0) return this.decodeRow(i1, part, i);
    }
    return undefined;
  }

  contextKeys(version: string): Map<string, string | null> {
    const seq = this.record(version).seq;
    const keys = new Map<string, string | null>();
    for (const { c1, parts } of this.firstClusters(seq, this.pageSize)) {
      const merged = mergeBlockParts(parts, blockName(seq, c1));
      for (let j = 0; j < merged.count; j++) {
        const part = parts[merged.part[j]];
        const i = merged.row[j];
        const first = this.storedClusterId(c1, c1, part, i, () => `has c1 #${c1}`);
        keys.set(pairKey(first, this.storedClusterId(part.c2(i), c1, part, i, () => `has c2 #${part.c2(i)}`)), part.contextKey(i));
      }
    }
    return keys;
  }

  packed(version: string): PackedTable {
    const pages = this.packedInPages(version, this.pageSize);
    for (;;) {
      const step = pages.next();
      if (step.done) return step.value;
    }
  }

  *packedInPages(version: string, rowsPerPage: number): Generator<number, PackedTable, void> {
    const pages = this.packedPages(version, rowsPerPage);
    const gatherer = new PackedTableGatherer();
    for (;;) {
      const step = pages.next();
      if (step.done) return gatherer.finish(step.value);
      gatherer.add(step.value);
      if (gatherer.gathered < step.value.header.rows) yield gatherer.gathered;
    }
  }

  *packedPages(version: string, rowsPerPage: number): Generator<PackedPage, PackedTableHeader, void> {
    const r = this.record(version);
    const { n, topN } = this.sql.rowShape.get(r.seq) as { n: number; topN: number };
    // Rows are committed after the clusters they name, so the dictionary read now covers every row.
    this.loadClusters();
    const header: PackedTableHeader = { version, modelVersion: r.model_version, topN, clusters: this.clusterIds.slice(), rows: n };
    const perPage = Math.max(1, Math.min(rowsPerPage, n));
    // A scan reads each database page once, so caching them gains nothing, and what the page cache grows to stays
    // in the process after (the allocator keeps it): 14 MB of a 1,000-cluster table's load with the default cache.
    // The scan runs with a small cache; the connection's own size comes back when the last open scan ends (scans
    // are generators: two loads may interleave, and each may end in any order).
    if (this.openScans++ === 0) {
      this.cacheSizeOutsideScans = this.db.pragma("cache_size", { simple: true }) as number;
      this.db.pragma(`cache_size = ${SCAN_CACHE_SIZE}`);
    }
    try {
      return yield* this.scanPages(r.seq, header, perPage, r.status === "building");
    } finally {
      if (--this.openScans === 0) this.db.pragma(`cache_size = ${this.cacheSizeOutsideScans}`);
    }
  }

  private *scanPages(seq: number, header: PackedTableHeader, perPage: number, building: boolean): Generator<PackedPage, PackedTableHeader, void> {
    const { version, topN, rows: n } = header;
    const c1 = new Int32Array(perPage);
    const c2 = new Int32Array(perPage);
    const answerIds = new Int32Array(perPage * topN).fill(-1);
    const scores = new Float32Array(perPage * topN);
    let i = 0;
    let count = 0;
    // Blocks decoded straight into the columns: no row or answer objects, so loading a million-row table leaves no
    // heap garbage behind (what the resident memory of a served table would pay).
    scan: for (const group of this.firstClusters(seq, perPage)) {
      const { parts } = group;
      const merged = mergeBlockParts(parts, blockName(seq, group.c1));
      for (let j = 0; j < merged.count; j++) {
        // Rows added after the count: only an unfinished build grows, and a caller reading one gets what was counted.
        // A finished table with more rows than its blocks count is damaged: never a table cut short without a word.
        if (i + count >= n) {
          if (building) break scan;
          throw damagedRowsError(version, `more rows than the ${n} its blocks count`);
        }
        const part = parts[merged.part[j]];
        const row = merged.row[j];
        // The columns hold topN answers a row (the most any block records): a wider row would spill into the next.
        if (part.answersEnd(row) - part.answersStart(row) > topN * ANSWER_BYTES) {
          throw damagedRowsError(blockName(seq, group.c1), `a row of more than the ${topN} answers its blocks record`);
        }
        c1[count] = group.c1;
        c2[count] = part.c2(row);
        decodeAnswersInto(part.bytes, answerIds, scores, count * topN, part.answersStart(row), part.answersEnd(row));
        if (++count === perPage) {
          i += count;
          yield { header, count, c1, c2, answerIds, scores };
          count = 0;
          answerIds.fill(-1);
          scores.fill(0);
        }
      }
    }
    if (count > 0) {
      i += count;
      yield { header, count, c1, c2, answerIds, scores };
    }
    // Fewer rows than counted: the version was garbage-collected between pages. Never hand out a partial table.
    if (i !== n) throw new FreshrecError("NOT_FOUND", `table ${version} disappeared while loading (${i} of ${n} rows read)`);
    return header;
  }

  close(): void {
    // Builds left open are not failed here: closing without finishing is what a crash looks like, and the next
    // open's recoverStale handles both the same way.
    for (const seq of this.openBuilds.keys()) activeBuilds.get(this.file)?.delete(seq);
    this.openBuilds.clear();
    this.db.close();
  }
}

class SqliteTableBuilder implements TableBuilder {
  readonly version: string;
  private count = 0;

  constructor(
    private readonly store: SqliteTableStore,
    private readonly seq: number,
  ) {
    this.version = versionId(seq);
  }

  get written(): number {
    return this.count;
  }

  append(rows: Iterable<TableBuildRow>): number {
    return this.store.appendRows(this.seq, rows, (n) => (this.count += n));
  }

  appendPacked(rows: PackedBuildRows): number {
    return this.store.appendPackedRows(this.seq, rows, (n) => (this.count += n));
  }

  copyRows(fromVersion: string, pairs?: Iterable<History>): number {
    const n = this.store.copyRowsInto(this.seq, fromVersion, pairs);
    this.count += n;
    return n;
  }

  finish(stats: TableBuildStats): TableInfo {
    return this.store.finishBuild(this.seq, stats);
  }

  fail(reason: string): TableInfo {
    return this.store.failBuild(this.seq, reason);
  }
}
