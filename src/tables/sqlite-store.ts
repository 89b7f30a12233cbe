/**
 * The SQLite adapter of the table store (better-sqlite3, one file: `<workspace>/tables.sqlite`).
 *
 * Storage layout, chosen for a 300-cluster table of 89,700 pairs x top-10 answers:
 * - `clusters(idx, id)`: one global dictionary of cluster ids, dense integers from 0. Global rather than per
 *   table so that an incremental build copies rows between versions as opaque values in one SQL statement.
 *   Entries are never deleted or renumbered, so every process may cache them.
 * - `table_rows(table_seq, c1, c2, context_key, answers, explanation)`, WITHOUT ROWID, keyed by (table, c1, c2): a point
 *   lookup is one B-tree probe and a table's rows are one contiguous range (cheap to scan, copy and delete).
 *   `answers` is the 8-bytes-per-answer BLOB of ./answer-blob.ts; `explanation` what a fusion row explains
 *   itself with (weights and counts: a BLOB in the writer's compact encoding, JSON text in tables written before it;
 *   NULL for prompted rows). A TEXT column holds BLOBs as they are, so old files need no migration.
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
import { type StoreFileKind, openStoreFile, storeFileError } from "../data/store-file.js";
import { FreshrecError } from "../domain/errors.js";
import type { History } from "../domain/types.js";
import { pairKey } from "../domain/types.js";
import { ANSWER_BYTES, checkPackedRows, decodeAnswersInto, encodeAnswers, newClustersInOrder, remapPackedAnswers } from "./answer-blob.js";

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
import { TableNotFoundError, TableStateError } from "./errors.js";
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
   * Rows fetched per query while iterating `rows()`.
   * @defaultValue 2000
   */
  readonly pageSize?: number;
}

const SCHEMA_VERSION = "1";
const PUBLISHABLE: readonly TableStatus[] = ["ready", "retired"];

/** The table store file inside a workspace. */
export function tableStorePath(workspace: string): string {
  return join(workspace, "tables.sqlite");
}

/** How the table store's file errors name it (src/data/store-file.ts). */
const TABLE_STORE_FILE: StoreFileKind = { store: "tables", startsOver: "an empty table store" };

/** A row's explanation column: bytes as they are (a BLOB), an object as JSON text, nothing as NULL. */
function explanationValue(explanation: TableBuildRow["explanation"]): Buffer | string | null {
  if (!explanation) return null;
  if (explanation instanceof Uint8Array) return Buffer.isBuffer(explanation) ? explanation : Buffer.from(explanation.buffer, explanation.byteOffset, explanation.byteLength);
  return JSON.stringify(explanation);
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

function isPrimaryKeyConflict(error: unknown): boolean {
  return (error as { code?: string })?.code === "SQLITE_CONSTRAINT_PRIMARYKEY";
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
    rowShape: db.prepare(`SELECT count(*) AS n, coalesce(max(length(answers)), 0) AS bytes FROM table_rows WHERE table_seq = ?`),
    clusterByIdx: db.prepare("SELECT idx, id FROM clusters WHERE idx >= ? ORDER BY idx"),
    clusterById: db.prepare("SELECT idx FROM clusters WHERE id = ?"),
    insertCluster: db.prepare("INSERT INTO clusters (idx, id) VALUES ((SELECT coalesce(max(idx) + 1, 0) FROM clusters), ?)"),
    insertRow: db.prepare("INSERT INTO table_rows (table_seq, c1, c2, context_key, answers, explanation) VALUES (?, ?, ?, ?, ?, ?)"),
    row: db.prepare("SELECT context_key, answers, explanation FROM table_rows WHERE table_seq = ? AND c1 = ? AND c2 = ?"),
    page: db.prepare(`SELECT c1, c2, context_key, answers, explanation FROM table_rows
      WHERE table_seq = ? AND (c1, c2) > (?, ?) ORDER BY c1, c2 LIMIT ?`),
    keys: db.prepare("SELECT c1, c2, context_key FROM table_rows WHERE table_seq = ?").raw(),
    packedSize: db.prepare("SELECT count(*) AS n, coalesce(max(length(answers)), 0) AS bytes FROM table_rows WHERE table_seq = ?"),
    packedPage: db.prepare(`SELECT c1, c2, answers FROM table_rows
      WHERE table_seq = ? AND (c1, c2) > (?, ?) ORDER BY c1, c2 LIMIT ?`).raw(),
    clearCopyPairs: db.prepare("DELETE FROM temp.copy_pairs"),
    insertCopyPair: db.prepare("INSERT OR IGNORE INTO temp.copy_pairs (c1, c2) VALUES (?, ?)"),
    copyPairs: db.prepare(`INSERT INTO table_rows (table_seq, c1, c2, context_key, answers, explanation)
      SELECT ?, r.c1, r.c2, r.context_key, r.answers, r.explanation FROM temp.copy_pairs p
      JOIN table_rows r ON r.table_seq = ? AND r.c1 = p.c1 AND r.c2 = p.c2`),
    copyAll: db.prepare(`INSERT INTO table_rows (table_seq, c1, c2, context_key, answers, explanation)
      SELECT ?, c1, c2, context_key, answers, explanation FROM table_rows WHERE table_seq = ?`),
    stack: db.prepare("SELECT pos, table_seq FROM live_stack ORDER BY pos DESC"),
    push: db.prepare("INSERT INTO live_stack (table_seq) VALUES (?)"),
    popAbove: db.prepare("DELETE FROM live_stack WHERE pos > ?"),
    dropFromStack: db.prepare("DELETE FROM live_stack WHERE table_seq = ?"),
    dropStackPos: db.prepare("DELETE FROM live_stack WHERE pos = ?"),
    log: db.prepare("INSERT INTO publish_log (action, version, previous, at, actor, reason) VALUES (?, ?, ?, ?, ?, ?)"),
    history: db.prepare("SELECT action, version, previous, at, actor, reason FROM publish_log ORDER BY id"),
    deleteRows: db.prepare("DELETE FROM table_rows WHERE table_seq = ?"),
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
  /** Builds this store began and has not finished or failed. */
  private readonly openBuilds = new Set<number>();

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
    db.pragma("page_size = 16384");
    db.pragma("auto_vacuum = INCREMENTAL");
    db.pragma("journal_mode = WAL");
    // FULL: a committed publish survives power loss too; it costs one sync per transaction, and rows are written in
    // large batches, so it is cheap here.
    db.pragma("synchronous = FULL");
    // One IMMEDIATE transaction, so two processes opening a new file at once do not both write the schema row.
    db.transaction(() => SqliteTableStore.createSchema(db, file)).immediate();
  }

  private static createSchema(db: Database.Database, file: string): void {
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
      CREATE TABLE IF NOT EXISTS table_rows (
        table_seq INTEGER NOT NULL,
        c1 INTEGER NOT NULL,
        c2 INTEGER NOT NULL,
        context_key TEXT,
        answers BLOB NOT NULL,
        explanation TEXT,
        PRIMARY KEY (table_seq, c1, c2)
      ) WITHOUT ROWID;
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
      CREATE TEMP TABLE IF NOT EXISTS copy_pairs (c1 INTEGER NOT NULL, c2 INTEGER NOT NULL, PRIMARY KEY (c1, c2)) WITHOUT ROWID;
    `);
    // Files written before rows could explain themselves get the (nullable) column; old readers ignore it.
    const columns = db.prepare("PRAGMA table_info(table_rows)").all() as { name: string }[];
    if (!columns.some((c) => c.name === "explanation")) db.exec("ALTER TABLE table_rows ADD COLUMN explanation TEXT");
    const row = db.prepare("SELECT value FROM store_meta WHERE key = 'schema'").get() as { value: string } | undefined;
    if (!row) db.prepare("INSERT INTO store_meta (key, value) VALUES ('schema', ?)").run(SCHEMA_VERSION);
    else if (row.value !== SCHEMA_VERSION) {
      throw new FreshrecError("INTERNAL", `tables: ${file} has schema ${row.value}, this freshrec reads ${SCHEMA_VERSION}`);
    }
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

  private clusterId(idx: number): string {
    if (idx >= this.clusterIds.length) this.loadClusters();
    return this.clusterIds[idx];
  }

  private decodeRow(c1: number, c2: number, contextKey: string | null, answers: Buffer, explanation: string | Buffer | null): StoredTableRow {
    const n = answers.length / ANSWER_BYTES;
    const list = new Array<{ cluster: string; score: number }>(n);
    for (let k = 0; k < n; k++) {
      list[k] = { cluster: this.clusterId(answers.readInt32LE(k * ANSWER_BYTES)), score: answers.readFloatLE(k * ANSWER_BYTES + 4) };
    }
    const row = { c1: this.clusterId(c1), c2: this.clusterId(c2), answers: list, contextKey };
    if (explanation === null) return row;
    return { ...row, explanation: typeof explanation === "string" ? JSON.parse(explanation) : explanation };
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
    this.openBuilds.add(seq);
    return new SqliteTableBuilder(this, seq);
  }

  /** @internal used by SqliteTableBuilder */
  appendRows(seq: number, rows: Iterable<TableBuildRow>): number {
    const ids: number[] = [];
    const scores: number[] = [];
    const writeBatch = this.db.transaction((batch: TableBuildRow[]) => {
      this.assertBuilding(seq);
      for (const row of batch) {
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
        const c1 = this.clusterIdxForWrite(row.c1);
        const c2 = this.clusterIdxForWrite(row.c2);
        try {
          this.sql.insertRow.run(seq, c1, c2, row.contextKey ?? null, encodeAnswers(ids, scores), explanationValue(row.explanation));
        } catch (error) {
          if (isPrimaryKeyConflict(error)) {
            throw new FreshrecError("BAD_INPUT", `tables: pair (${row.c1}, ${row.c2}) written twice to ${versionId(seq)}`, { cause: error });
          }
          throw error;
        }
      }
    });
    let written = 0;
    let batch: TableBuildRow[] = [];
    const flush = () => {
      const known = this.clusterIds.length;
      try {
        writeBatch.immediate(batch);
      } catch (error) {
        // The rollback also undid the dictionary entries this batch added; forget them, or a later insert could
        // reuse their indices for other clusters while this cache still maps the old ids to them.
        this.forgetClustersFrom(known);
        throw error;
      }
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
   * @internal used by SqliteTableBuilder: `appendRows` for rows in stored form, in the same transactions of
   * `batchSize`, clusters added to the dictionary in the same order, with the same checks and errors.
   */
  appendPackedRows(seq: number, rows: PackedBuildRows): number {
    const { clusters, c1, c2, answers, answerEnd, explanation, explanationEnd, contextKeys } = rows;
    const dictionary = new Int32Array(clusters.length).fill(-1);
    const seen = new Uint8Array(clusters.length);
    const writeBatch = this.db.transaction((from: number, to: number) => {
      this.assertBuilding(seq);
      // The dictionary learns clusters in the order an object build meets them: each row's answers, then c1, c2.
      for (const i of newClustersInOrder(rows, from, to, seen)) dictionary[i] = this.clusterIdxForWrite(clusters[i]);
      remapPackedAnswers(rows, from, to, dictionary);
      for (let r = from; r < to; r++) {
        const explained = explanationEnd[r] > (r === 0 ? 0 : explanationEnd[r - 1]);
        try {
          this.sql.insertRow.run(
            seq,
            dictionary[c1[r]],
            dictionary[c2[r]],
            contextKeys[r] ?? null,
            answers.subarray(r === 0 ? 0 : answerEnd[r - 1], answerEnd[r]),
            explained ? explanation.subarray(r === 0 ? 0 : explanationEnd[r - 1], explanationEnd[r]) : null,
          );
        } catch (error) {
          if (isPrimaryKeyConflict(error)) {
            throw new FreshrecError("BAD_INPUT", `tables: pair (${clusters[c1[r]]}, ${clusters[c2[r]]}) written twice to ${versionId(seq)}`, { cause: error });
          }
          throw error;
        }
      }
    });
    let written = 0;
    for (let from = 0; from < rows.count; from += this.batchSize) {
      const to = Math.min(from + this.batchSize, rows.count);
      checkPackedRows(rows, from, to);
      const known = this.clusterIds.length;
      try {
        writeBatch.immediate(from, to);
      } catch (error) {
        // As in appendRows: the rollback undid the dictionary entries this batch added.
        this.forgetClustersFrom(known);
        throw error;
      }
      written += to - from;
    }
    return written;
  }

  /** @internal used by SqliteTableBuilder */
  copyRowsInto(seq: number, fromVersion: string, pairs?: Iterable<History>): number {
    const from = this.record(fromVersion).seq;
    if (from === seq) throw new TableStateError(`tables: ${versionId(seq)} cannot copy rows from itself`, versionId(seq));
    const copy = this.db.transaction(() => {
      this.assertBuilding(seq);
      if (!pairs) return this.sql.copyAll.run(seq, from).changes;
      this.sql.clearCopyPairs.run();
      for (const p of pairs) {
        const c1 = this.clusterIdxForRead(p.c1);
        const c2 = this.clusterIdxForRead(p.c2);
        // A cluster no table ever used cannot be in the source either.
        if (c1 !== undefined && c2 !== undefined) this.sql.insertCopyPair.run(c1, c2);
      }
      const changes = this.sql.copyPairs.run(seq, from).changes;
      this.sql.clearCopyPairs.run();
      return changes;
    });
    try {
      return copy.immediate();
    } catch (error) {
      if (isPrimaryKeyConflict(error)) {
        throw new FreshrecError("BAD_INPUT", `tables: copying from ${fromVersion} overlaps rows already in ${versionId(seq)}`, { cause: error });
      }
      throw error;
    }
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
        const shape = this.sql.rowShape.get(seq) as { n: number; bytes: number };
        this.sql.finish.run(JSON.stringify(stats), this.clock.now(), shape.n, shape.bytes / ANSWER_BYTES, seq);
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
          this.sql.deleteRows.run(r.seq);
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
    let c1 = -1;
    let c2 = -1;
    for (;;) {
      // Pages, not one long-lived statement: better-sqlite3 blocks every other call on the connection while an
      // iterator is open, and a caller may well look things up while walking the rows.
      const page = this.sql.page.all(seq, c1, c2, this.pageSize) as { c1: number; c2: number; context_key: string | null; answers: Buffer; explanation: string | Buffer | null }[];
      for (const r of page) yield this.decodeRow(r.c1, r.c2, r.context_key, r.answers, r.explanation);
      if (page.length < this.pageSize) return;
      c1 = page[page.length - 1].c1;
      c2 = page[page.length - 1].c2;
    }
  }

  lookup(version: string, c1: string, c2: string): StoredTableRow | undefined {
    const seq = this.record(version).seq;
    const i1 = this.clusterIdxForRead(c1);
    const i2 = this.clusterIdxForRead(c2);
    if (i1 === undefined || i2 === undefined) return undefined;
    const r = this.sql.row.get(seq, i1, i2) as { context_key: string | null; answers: Buffer; explanation: string | Buffer | null } | undefined;
    return r && this.decodeRow(i1, i2, r.context_key, r.answers, r.explanation);
  }

  contextKeys(version: string): Map<string, string | null> {
    const seq = this.record(version).seq;
    const keys = new Map<string, string | null>();
    for (const [c1, c2, key] of this.sql.keys.all(seq) as [number, number, string | null][]) {
      keys.set(pairKey(this.clusterId(c1), this.clusterId(c2)), key);
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
    const size = this.sql.packedSize.get(r.seq) as { n: number; bytes: number };
    const n = size.n;
    const topN = size.bytes / ANSWER_BYTES;
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
      return yield* this.scanPages(r.seq, header, perPage, rowsPerPage);
    } finally {
      if (--this.openScans === 0) this.db.pragma(`cache_size = ${this.cacheSizeOutsideScans}`);
    }
  }

  private *scanPages(seq: number, header: PackedTableHeader, perPage: number, rowsPerPage: number): Generator<PackedPage, PackedTableHeader, void> {
    const { version, topN, rows: n } = header;
    const c1 = new Int32Array(perPage);
    const c2 = new Int32Array(perPage);
    const answerIds = new Int32Array(perPage * topN);
    const scores = new Float32Array(perPage * topN);
    let i = 0;
    let last: [number, number] = [-1, -1];
    while (i < n) {
      // Raw pages of (c1, c2, blob) decoded straight into the columns: no row or answer objects, so loading a
      // million-row table leaves no heap garbage behind (what the resident memory of a served table would pay).
      const page = this.sql.packedPage.all(seq, last[0], last[1], rowsPerPage) as [number, number, Buffer][];
      answerIds.fill(-1);
      scores.fill(0);
      let count = 0;
      for (const row of page) {
        // Rows added after the count: only an unfinished build grows, and a caller reading one gets what was counted.
        if (i + count >= n) break;
        c1[count] = row[0];
        c2[count] = row[1];
        decodeAnswersInto(row[2], answerIds, scores, count * topN);
        count++;
      }
      if (count === 0) break;
      i += count;
      last = [page[page.length - 1][0], page[page.length - 1][1]];
      yield { header, count, c1, c2, answerIds, scores };
      if (page.length < rowsPerPage) break;
    }
    // Fewer rows than counted: the version was garbage-collected between pages. Never hand out a partial table.
    if (i !== n) throw new FreshrecError("NOT_FOUND", `table ${version} disappeared while loading (${i} of ${n} rows read)`);
    return header;
  }

  close(): void {
    // Builds left open are not failed here: closing without finishing is what a crash looks like, and the next
    // open's recoverStale handles both the same way.
    for (const seq of this.openBuilds) activeBuilds.get(this.file)?.delete(seq);
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
    const n = this.store.appendRows(this.seq, rows);
    this.count += n;
    return n;
  }

  appendPacked(rows: PackedBuildRows): number {
    const n = this.store.appendPackedRows(this.seq, rows);
    this.count += n;
    return n;
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
