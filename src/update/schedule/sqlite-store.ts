/**
 * SQLite adapter of the schedule store (better-sqlite3). The file is `<workspace>/schedule.sqlite`, in WAL mode so
 * `schedule status` can read while `schedule run` writes; ":memory:" gives a private store (replay, tests).
 *
 * better-sqlite3 is synchronous and has one connection, while the contract's transactions take an asynchronous body:
 * a transaction is BEGIN IMMEDIATE ... COMMIT around the awaited body, and every other call on the store waits its
 * turn in this process (otherwise it would run inside the open transaction and be rolled back with it). IMMEDIATE
 * takes the file's write lock at the start, so another process's read-modify-write (a pause) waits instead of failing
 * at commit.
 *
 * The driver lease is a row naming the driving process: on an embedded workspace every process runs on one host (its
 * DuckDB file admits one process), so a row naming a process that no longer exists, or another host (a copied
 * workspace), is stale and taken over.
 *
 * @example
 * const store = SqliteScheduleStore.open(scheduleStorePath(".freshrec"));
 * const scheduler = new Scheduler({ jobs, store, clock: new SystemClock() });
 */
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { type StoreFileKind, openStoreFile } from "../../data/store-file.js";
import { FreshrecError } from "../../domain/errors.js";
import { isProcessAlive } from "../../tables/sqlite-store.js";
import { ScheduleStoreError } from "./errors.js";
import { ScheduleStoreOverSql, SqlScheduleRecord, type ScheduleStatement } from "./schedule-sql.js";
import { ScheduleDriverHeldError, type DriverLease, type ScheduleDriver, type ScheduleRecord, type ScheduleStoreContract } from "./store.js";

export const SCHEDULE_STORE_FILE = "schedule.sqlite";

export function scheduleStorePath(workspace: string): string {
  return join(workspace, SCHEDULE_STORE_FILE);
}

/**
 * Still 1: what was added since (the driver table, the unique index) is created on open and ignored by older freshrec
 * versions, which would otherwise refuse the file as newer.
 */
const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS schedule_runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  job TEXT NOT NULL,
  due INTEGER NOT NULL,
  trigger TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  ended_at INTEGER,
  status TEXT NOT NULL,
  duration_seconds REAL,
  cost TEXT,
  detail TEXT,
  error TEXT
);
-- A job runs each due time once (schedule-sql.ts's begin relies on it); it replaces the plain index of the first files.
CREATE UNIQUE INDEX IF NOT EXISTS schedule_runs_once ON schedule_runs (job, due);
DROP INDEX IF EXISTS schedule_runs_job_due;
CREATE TABLE IF NOT EXISTS schedule_jobs (
  job TEXT PRIMARY KEY,
  cursor INTEGER NOT NULL,
  paused INTEGER NOT NULL,
  pause_reason TEXT,
  paused_at INTEGER,
  consecutive_failures INTEGER NOT NULL,
  counters TEXT NOT NULL,
  last_run_id INTEGER
);
CREATE TABLE IF NOT EXISTS schedule_driver (
  slot INTEGER PRIMARY KEY CHECK (slot = 1),
  host TEXT NOT NULL,
  pid INTEGER NOT NULL,
  since INTEGER NOT NULL
);
`;

/** How the schedule store's file errors name it (src/data/store-file.ts). */
const SCHEDULE_STORE: StoreFileKind = { store: "schedule", startsOver: "an empty schedule store (job cursors, pauses and run history start over)" };

function migrate(db: Database.Database): void {
  // WAL, so `schedule status` reads while `schedule run` writes (an in-memory database keeps its own journal).
  if (db.name !== ":memory:") db.pragma("journal_mode = WAL");
  const version = db.pragma("user_version", { simple: true }) as number;
  if (version > SCHEMA_VERSION) {
    throw new Error(`schema version ${version} is newer than this freshrec understands (${SCHEMA_VERSION})`);
  }
  db.exec(SCHEMA);
  db.pragma(`user_version = ${SCHEMA_VERSION}`);
}

export class SqliteScheduleStore extends ScheduleStoreOverSql implements ScheduleStoreContract {
  protected readonly record: SqlScheduleRecord;
  /** The end of the last call queued on the one connection: each call, and each whole transaction, takes its turn. */
  private turn: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly db: Database.Database,
    readonly location: string,
  ) {
    super();
    this.record = new SqlScheduleRecord(this.statement, location);
  }

  /**
   * Opens (creating if needed) the store at `path`; ":memory:" gives a private in-memory database. A file that is
   * empty, damaged or not a SQLite database is refused (StoreFileError, BAD_INPUT), never replaced by an empty store.
   */
  static open(path: string): SqliteScheduleStore {
    const file = path === ":memory:" ? path : resolve(path);
    let db: Database.Database | undefined;
    try {
      // Another process (status, resume) may hold the write lock for a moment: timeout.
      db = openStoreFile(file, SCHEDULE_STORE, migrate, { timeout: 5000 });
    } catch (error) {
      db?.close();
      // A file's own problems, and failures openStoreFile names by the file, as they are.
      if (error instanceof FreshrecError) throw error;
      throw new ScheduleStoreError(`cannot open the schedule store ${file}: ${String(error)}`, "open", { cause: error });
    }
    return new SqliteScheduleStore(db, file);
  }

  private readonly statement: ScheduleStatement = async <R>(sql: string, params: readonly (string | number | null)[] = []) => {
    try {
      const prepared = this.db.prepare(sql);
      if (prepared.reader) return prepared.all(...params) as R[];
      prepared.run(...params);
      return [];
    } catch (error) {
      throw new ScheduleStoreError(`schedule store ${this.location}: ${String(error)}`, sql, { cause: error });
    }
  };

  /** `call` in its turn: after every call and transaction queued before it on the one connection. */
  protected within<T>(call: () => Promise<T>): Promise<T> {
    const result = this.turn.then(call);
    this.turn = result.catch(() => undefined);
    return result;
  }

  transaction<T>(body: (tx: ScheduleRecord) => Promise<T>): Promise<T> {
    return this.within(() => this.atomically(() => body(this.record)));
  }

  /** `work` between BEGIN IMMEDIATE and COMMIT, rolled back if it throws; the caller holds the turn. */
  private async atomically<T>(work: () => Promise<T>): Promise<T> {
    await this.statement("BEGIN IMMEDIATE");
    try {
      const result = await work();
      await this.statement("COMMIT");
      return result;
    } catch (error) {
      if (this.db.inTransaction) this.db.exec("ROLLBACK");
      throw error;
    }
  }

  claimDriver(driver: ScheduleDriver): Promise<DriverLease> {
    return this.within(() =>
      this.atomically(async () => {
        const held = await this.liveDriver();
        if (held !== null) throw new ScheduleDriverHeldError(this.location, held);
        await this.record.recordDriver(driver);
        return {
          driver,
          check: () =>
            this.within(async () => {
              const recorded = await this.record.recordedDriver();
              if (recorded === null || !sameDriver(recorded, driver)) {
                throw new ScheduleStoreError(`${this.location}: this process no longer drives the schedule (the record names ${recorded === null ? "no one" : `host ${recorded.host} pid ${recorded.pid}`})`, "check");
              }
            }),
          release: () => this.within(() => this.record.forgetDriver(driver)),
        };
      }),
    );
  }

  driver(): Promise<ScheduleDriver | null> {
    return this.within(() => this.liveDriver());
  }

  /** The recorded driver if its process still runs on this host. */
  private async liveDriver(): Promise<ScheduleDriver | null> {
    const recorded = await this.record.recordedDriver();
    return recorded !== null && recorded.host === hostname() && isProcessAlive(recorded.pid) ? recorded : null;
  }

  async close(): Promise<void> {
    // After whatever is queued, so a caller's last write is not cut off.
    await this.turn;
    if (this.db.open) this.db.close();
  }
}

function sameDriver(a: ScheduleDriver, b: ScheduleDriver): boolean {
  return a.host === b.host && a.pid === b.pid && a.since === b.since;
}

