/**
 * SQLite adapter of the schedule store (better-sqlite3, synchronous, so each state change is one short
 * transaction). The file is `<workspace>/schedule.sqlite`, in WAL mode so `schedule status` can read while
 * `schedule run` writes.
 *
 * @example
 * const store = SqliteScheduleStore.open(scheduleStorePath(".freshrec"));
 * const scheduler = new Scheduler({ jobs, store, clock: new SystemClock() });
 */
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { type StoreFileKind, openStoreFile } from "../../data/store-file.js";
import { FreshrecError } from "../../domain/errors.js";
import { ScheduleStoreError } from "./errors.js";
import type { RunEnd, RunQuery, RunStart, ScheduleStore } from "./store.js";
import { ZERO_COUNTERS, type JobCounters, type JobState, type RunRecord } from "./types.js";

export const SCHEDULE_STORE_FILE = "schedule.sqlite";

export function scheduleStorePath(workspace: string): string {
  return join(workspace, SCHEDULE_STORE_FILE);
}

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
CREATE INDEX IF NOT EXISTS schedule_runs_job_due ON schedule_runs (job, due);
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

interface RunRow {
  id: number;
  job: string;
  due: number;
  trigger: string;
  started_at: number;
  ended_at: number | null;
  status: string;
  duration_seconds: number | null;
  cost: string | null;
  detail: string | null;
  error: string | null;
}

interface JobRow {
  job: string;
  cursor: number;
  paused: number;
  pause_reason: string | null;
  paused_at: number | null;
  consecutive_failures: number;
  counters: string;
  last_run_id: number | null;
}

export class SqliteScheduleStore implements ScheduleStore {
  private constructor(private readonly db: Database.Database) {}

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
    return new SqliteScheduleStore(db);
  }

  begin(run: RunStart): number {
    const sql =
      "INSERT INTO schedule_runs (job, due, trigger, started_at, status) VALUES (?, ?, ?, ?, 'running')";
    const result = this.exec(sql, () => this.db.prepare(sql).run(run.job, run.due, run.trigger, run.startedAt));
    return Number(result.lastInsertRowid);
  }

  finish(id: number, end: RunEnd): void {
    const sql =
      "UPDATE schedule_runs SET ended_at = ?, status = ?, duration_seconds = ?, cost = ?, detail = ?, error = ? WHERE id = ?";
    const result = this.exec(sql, () =>
      this.db
        .prepare(sql)
        .run(
          end.endedAt,
          end.status,
          end.durationSeconds,
          end.cost === null ? null : jsonOf(end.cost),
          end.detail === null ? null : jsonOf(end.detail),
          end.error,
          id,
        ),
    );
    if (result.changes !== 1) throw new ScheduleStoreError(`no run ${id} to finish`, sql);
  }

  run(id: number): RunRecord | undefined {
    const sql = "SELECT * FROM schedule_runs WHERE id = ?";
    const row = this.exec(sql, () => this.db.prepare(sql).get(id) as RunRow | undefined);
    return row === undefined ? undefined : toRunRecord(row);
  }

  runs(query: RunQuery = {}): RunRecord[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    if (query.job !== undefined) (where.push("job = ?"), params.push(query.job));
    if (query.status !== undefined) (where.push("status = ?"), params.push(query.status));
    if (query.dueFrom !== undefined) (where.push("due >= ?"), params.push(query.dueFrom));
    if (query.dueTo !== undefined) (where.push("due < ?"), params.push(query.dueTo));
    const filter = where.length === 0 ? "" : `WHERE ${where.join(" AND ")}`;
    const limit = query.limit === undefined ? "" : `LIMIT ${Math.max(0, Math.floor(query.limit))}`;
    // Newest first for LIMIT, then flipped so callers always read oldest first.
    const sql = `SELECT * FROM schedule_runs ${filter} ORDER BY started_at DESC, id DESC ${limit}`;
    const rows = this.exec(sql, () => this.db.prepare(sql).all(...params) as RunRow[]);
    return rows.reverse().map(toRunRecord);
  }

  jobState(job: string): JobState | undefined {
    const sql = "SELECT * FROM schedule_jobs WHERE job = ?";
    const row = this.exec(sql, () => this.db.prepare(sql).get(job) as JobRow | undefined);
    return row === undefined ? undefined : toJobState(row);
  }

  jobStates(): JobState[] {
    const sql = "SELECT * FROM schedule_jobs ORDER BY job";
    return this.exec(sql, () => this.db.prepare(sql).all() as JobRow[]).map(toJobState);
  }

  saveJobState(state: JobState): void {
    const sql = `INSERT INTO schedule_jobs (job, cursor, paused, pause_reason, paused_at, consecutive_failures, counters, last_run_id)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (job) DO UPDATE SET cursor = excluded.cursor, paused = excluded.paused,
        pause_reason = excluded.pause_reason, paused_at = excluded.paused_at,
        consecutive_failures = excluded.consecutive_failures, counters = excluded.counters,
        last_run_id = excluded.last_run_id`;
    this.exec(sql, () =>
      this.db
        .prepare(sql)
        .run(
          state.job,
          state.cursor,
          state.paused ? 1 : 0,
          state.pauseReason,
          state.pausedAt,
          state.consecutiveFailures,
          JSON.stringify(state.counters),
          state.lastRunId,
        ),
    );
  }

  transaction<T>(body: () => T): T {
    return this.db.transaction(body)();
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  private exec<T>(statement: string, body: () => T): T {
    try {
      return body();
    } catch (error) {
      if (error instanceof ScheduleStoreError) throw error;
      throw new ScheduleStoreError(`schedule store: ${String(error)}`, statement, { cause: error });
    }
  }
}

/** A job's detail is its own business: one that JSON cannot hold must not lose the run's record. */
function jsonOf(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch (error) {
    return JSON.stringify({ unserialisable: error instanceof Error ? error.message : String(error) });
  }
}

function toRunRecord(row: RunRow): RunRecord {
  return {
    id: row.id,
    job: row.job,
    due: row.due,
    trigger: row.trigger as RunRecord["trigger"],
    startedAt: row.started_at,
    endedAt: row.ended_at,
    status: row.status as RunRecord["status"],
    durationSeconds: row.duration_seconds,
    cost: row.cost === null ? null : JSON.parse(row.cost),
    detail: row.detail === null ? null : JSON.parse(row.detail),
    error: row.error,
  };
}

function toJobState(row: JobRow): JobState {
  // Counters added in later versions read as zero from older rows.
  const counters: JobCounters = { ...ZERO_COUNTERS, ...(JSON.parse(row.counters) as Partial<JobCounters>) };
  return {
    job: row.job,
    cursor: row.cursor,
    paused: row.paused === 1,
    pauseReason: row.pause_reason,
    pausedAt: row.paused_at,
    consecutiveFailures: row.consecutive_failures,
    counters,
    lastRunId: row.last_run_id,
  };
}
