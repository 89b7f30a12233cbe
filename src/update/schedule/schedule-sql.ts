/**
 * The schedule store's statements and row readings, written once for both adapters (SQLite and PostgreSQL accept the
 * same SQL here: upserts, RETURNING, `?` placeholders that the PostgreSQL adapter numbers), so the two cannot drift
 * apart in what a run or a job's state is. Each adapter only says how a statement is executed: on its connection, in
 * or out of a transaction.
 */
import { ScheduleStoreError } from "./errors.js";
import type { RunEnd, RunQuery, RunStart, ScheduleDriver, ScheduleRecord } from "./store.js";
import { ZERO_COUNTERS, type JobCounters, type JobState, type RunRecord } from "./types.js";

export type SqlValue = string | number | null;

/**
 * Executes one statement with `?` placeholders and answers its rows (none for a statement without RETURNING).
 * @throws ScheduleStoreError naming the statement.
 */
export type ScheduleStatement = <R>(sql: string, params?: readonly SqlValue[]) => Promise<R[]>;

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
  /** 0/1 in SQLite, a boolean in PostgreSQL. */
  paused: number | boolean;
  pause_reason: string | null;
  paused_at: number | null;
  consecutive_failures: number;
  counters: string;
  last_run_id: number | null;
}

/** The run log and job states over one way of executing statements. */
export class SqlScheduleRecord implements ScheduleRecord {
  constructor(
    private readonly exec: ScheduleStatement,
    /** Where the store is, for messages. */
    private readonly location: string,
  ) {}

  async begin(run: RunStart): Promise<number> {
    // The unique (job, due) index decides, in the statement itself, that a due time runs once, whoever asks.
    const sql = "INSERT INTO schedule_runs (job, due, trigger, started_at, status) VALUES (?, ?, ?, ?, 'running') ON CONFLICT (job, due) DO NOTHING RETURNING id";
    const [row] = await this.exec<{ id: number }>(sql, [run.job, run.due, run.trigger, run.startedAt]);
    if (row !== undefined) return Number(row.id);
    const [taken] = await this.exec<RunRow>("SELECT * FROM schedule_runs WHERE job = ? AND due = ?", [run.job, run.due]);
    throw new ScheduleStoreError(
      `${this.location}: ${run.job} due ${new Date(run.due).toISOString()} has run already (run ${taken?.id ?? "?"}, ${taken?.status ?? "?"}): another scheduler drives this schedule`,
      sql,
    );
  }

  async finish(id: number, end: RunEnd): Promise<void> {
    const sql = "UPDATE schedule_runs SET ended_at = ?, status = ?, duration_seconds = ?, cost = ?, detail = ?, error = ? WHERE id = ? RETURNING id";
    const params = [end.endedAt, end.status, end.durationSeconds, end.cost === null ? null : jsonOf(end.cost), end.detail === null ? null : jsonOf(end.detail), end.error, id];
    const changed = await this.exec(sql, params);
    if (changed.length !== 1) throw new ScheduleStoreError(`${this.location}: no run ${id} to finish`, sql);
  }

  async run(id: number): Promise<RunRecord | undefined> {
    const [row] = await this.exec<RunRow>("SELECT * FROM schedule_runs WHERE id = ?", [id]);
    return row === undefined ? undefined : toRunRecord(row);
  }

  async runs(query: RunQuery = {}): Promise<RunRecord[]> {
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (query.job !== undefined) (where.push("job = ?"), params.push(query.job));
    if (query.status !== undefined) (where.push("status = ?"), params.push(query.status));
    if (query.dueFrom !== undefined) (where.push("due >= ?"), params.push(query.dueFrom));
    if (query.dueTo !== undefined) (where.push("due < ?"), params.push(query.dueTo));
    const filter = where.length === 0 ? "" : `WHERE ${where.join(" AND ")}`;
    const limit = query.limit === undefined ? "" : `LIMIT ${Math.max(0, Math.floor(query.limit))}`;
    // Newest first for LIMIT, then flipped so callers always read oldest first.
    const rows = await this.exec<RunRow>(`SELECT * FROM schedule_runs ${filter} ORDER BY started_at DESC, id DESC ${limit}`, params);
    return rows.reverse().map(toRunRecord);
  }

  async jobState(job: string): Promise<JobState | undefined> {
    const [row] = await this.exec<JobRow>("SELECT * FROM schedule_jobs WHERE job = ?", [job]);
    return row === undefined ? undefined : toJobState(row);
  }

  async jobStates(): Promise<JobState[]> {
    // In byte order on both: PostgreSQL's column is declared COLLATE "C" (postgres-store.ts), SQLite's default is BINARY.
    return (await this.exec<JobRow>("SELECT * FROM schedule_jobs ORDER BY job")).map(toJobState);
  }

  async saveJobState(state: JobState): Promise<void> {
    await this.exec(
      `INSERT INTO schedule_jobs (job, cursor, paused, pause_reason, paused_at, consecutive_failures, counters, last_run_id)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (job) DO UPDATE SET cursor = excluded.cursor, paused = excluded.paused,
         pause_reason = excluded.pause_reason, paused_at = excluded.paused_at,
         consecutive_failures = excluded.consecutive_failures, counters = excluded.counters,
         last_run_id = excluded.last_run_id`,
      // 1/0: SQLite binds no booleans, and PostgreSQL reads '1'/'0' as a boolean's input.
      [state.job, state.cursor, state.paused ? 1 : 0, state.pauseReason, state.pausedAt, state.consecutiveFailures, JSON.stringify(state.counters), state.lastRunId],
    );
  }

  /** The recorded driver: the adapters decide whether it is still alive. */
  async recordedDriver(): Promise<ScheduleDriver | null> {
    const [row] = await this.exec<ScheduleDriver>("SELECT host, pid, since FROM schedule_driver WHERE slot = 1");
    return row === undefined ? null : { host: row.host, pid: Number(row.pid), since: Number(row.since) };
  }

  /**
   * Records `driver` as the schedule's one driver, replacing whoever was recorded: delete then insert, so columns an
   * adapter fills by default (PostgreSQL: the holding session) are filled anew.
   */
  async recordDriver(driver: ScheduleDriver): Promise<void> {
    await this.exec("DELETE FROM schedule_driver");
    await this.exec("INSERT INTO schedule_driver (slot, host, pid, since) VALUES (1, ?, ?, ?)", [driver.host, driver.pid, driver.since]);
  }

  /** Forgets `driver`, unless another process has taken the schedule since. */
  async forgetDriver(driver: ScheduleDriver): Promise<void> {
    await this.exec("DELETE FROM schedule_driver WHERE host = ? AND pid = ? AND since = ?", [driver.host, driver.pid, driver.since]);
  }
}

/**
 * The run log and job-state calls of a store adapter, each one its SqlScheduleRecord's, made the adapter's way
 * (`within`: SQLite queues it behind any open transaction, PostgreSQL just runs it on its pool).
 */
export abstract class ScheduleStoreOverSql implements ScheduleRecord {
  protected abstract readonly record: SqlScheduleRecord;
  protected abstract within<T>(call: () => Promise<T>): Promise<T>;

  begin(run: RunStart): Promise<number> {
    return this.within(() => this.record.begin(run));
  }

  finish(id: number, end: RunEnd): Promise<void> {
    return this.within(() => this.record.finish(id, end));
  }

  run(id: number): Promise<RunRecord | undefined> {
    return this.within(() => this.record.run(id));
  }

  runs(query?: RunQuery): Promise<RunRecord[]> {
    return this.within(() => this.record.runs(query));
  }

  jobState(job: string): Promise<JobState | undefined> {
    return this.within(() => this.record.jobState(job));
  }

  jobStates(): Promise<JobState[]> {
    return this.within(() => this.record.jobStates());
  }

  saveJobState(state: JobState): Promise<void> {
    return this.within(() => this.record.saveJobState(state));
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
    id: Number(row.id),
    job: row.job,
    due: Number(row.due),
    trigger: row.trigger as RunRecord["trigger"],
    startedAt: Number(row.started_at),
    endedAt: row.ended_at === null ? null : Number(row.ended_at),
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
    cursor: Number(row.cursor),
    paused: row.paused === 1 || row.paused === true,
    pauseReason: row.pause_reason,
    pausedAt: row.paused_at === null ? null : Number(row.paused_at),
    consecutiveFailures: row.consecutive_failures,
    counters,
    lastRunId: row.last_run_id === null ? null : Number(row.last_run_id),
  };
}
