/**
 * The schedule's durable record: every run (the run log), each job's state (cursor, pause, counters) and which
 * process drives the schedule, so a restarted `schedule run` continues where the last one stopped and `schedule
 * status|pause|resume` work from other processes (and, on PostgreSQL, other hosts). One asynchronous contract, two
 * adapters with the same tables and meaning: SQLite (sqlite-store.ts: the workspace's schedule.sqlite, or ":memory:"
 * for replay and tests) and PostgreSQL (postgres-store.ts: a deployment's `store.url`). Both run one conformance
 * suite (test/update/schedule/store-conformance.ts).
 *
 * @example
 * const store = SqliteScheduleStore.open(scheduleStorePath(workspace)); // or await PostgresScheduleStore.open(url)
 * const recent = await store.runs({ job: "refresh", limit: 10 });
 * await store.transaction(async (tx) => {
 *   const id = await tx.begin({ job: "refresh", due, trigger: "scheduled", startedAt: due });
 *   await tx.saveJobState({ ...state, cursor: due, lastRunId: id });
 * });
 */
import { FreshrecError } from "../../domain/errors.js";
import type { JobCost, JobName, JobState, RunRecord, RunStatus, RunTrigger } from "./types.js";

export interface RunStart {
  readonly job: JobName;
  readonly due: number;
  readonly trigger: RunTrigger;
  readonly startedAt: number;
}

export interface RunEnd {
  /** Null when the end is unknown: a run found still `running` after a crash. */
  readonly endedAt: number | null;
  readonly status: Exclude<RunStatus, "running">;
  readonly durationSeconds: number | null;
  readonly cost: JobCost | null;
  readonly detail: Readonly<Record<string, unknown>> | null;
  readonly error: string | null;
}

export interface RunQuery {
  readonly job?: JobName;
  readonly status?: RunStatus;
  /** Only runs due at or after this time. */
  readonly dueFrom?: number;
  /** Only runs due before this time. */
  readonly dueTo?: number;
  /** The newest `limit` runs (still returned oldest first). */
  readonly limit?: number;
}

/** Append-mostly log of runs: a run is written when it starts and completed once when it ends. */
export interface RunLog {
  /**
   * Logs a run's start. A job runs each due time at most once, whoever drives the schedule.
   * @throws ScheduleStoreError naming the run already logged for that job and due time.
   */
  begin(run: RunStart): Promise<number>;
  finish(id: number, end: RunEnd): Promise<void>;
  run(id: number): Promise<RunRecord | undefined>;
  /** Runs ordered by start (then id), oldest first. */
  runs(query?: RunQuery): Promise<RunRecord[]>;
}

/** The run log and the job states: what the store answers, and what a transaction's body works on. */
export interface ScheduleRecord extends RunLog {
  jobState(job: JobName): Promise<JobState | undefined>;
  jobStates(): Promise<JobState[]>;
  saveJobState(state: JobState): Promise<void>;
}

/** The process that drives a schedule (runs its jobs): named in the refusal a second driver gets. */
export interface ScheduleDriver {
  readonly host: string;
  readonly pid: number;
  /** When it took the schedule (its clock's time). */
  readonly since: number;
}

/** The right to drive a schedule, held from `claimDriver` until `release`. */
export interface DriverLease {
  readonly driver: ScheduleDriver;
  /**
   * Resolves while the lease still holds; rejects once it is lost (on PostgreSQL: the connection that holds it
   * dropped, so another process may have taken the schedule). The scheduler asks before each run.
   */
  check(): Promise<void>;
  release(): Promise<void>;
}

export interface ScheduleStoreContract extends ScheduleRecord {
  /** Where the store is, for messages: a file path, or the database URL without its password. */
  readonly location: string;
  /**
   * Runs `body` atomically and serialized with every other transaction on the store (from this process or another):
   * a run's end and its job's counters change together or not at all, and a read-modify-write of a job's state is
   * never lost to a pause made at the same moment. `body` must use `tx`: the store's own calls see only committed
   * state (on SQLite they wait for the transaction to end, so a body calling the store would wait on itself), and it
   * must not wait on anything else: the schedule is locked meanwhile.
   */
  transaction<T>(body: (tx: ScheduleRecord) => Promise<T>): Promise<T>;
  /**
   * Makes `driver` the one process that runs this schedule's jobs, until the lease is released or the process dies.
   * A second driver would run the same due times again and fail the first one's running run as interrupted.
   * @throws ScheduleDriverHeldError naming the process that holds it.
   */
  claimDriver(driver: ScheduleDriver): Promise<DriverLease>;
  /** The process driving the schedule now, or null. */
  driver(): Promise<ScheduleDriver | null>;
  close(): Promise<void>;
}

/** Another process drives this schedule: BAD_INPUT (exit 2), as any other misuse of a deployment's one worker. */
export class ScheduleDriverHeldError extends FreshrecError {
  override name = "ScheduleDriverHeldError";
  constructor(
    readonly location: string,
    readonly holder: ScheduleDriver | null,
  ) {
    const who = holder === null ? "another process (it is starting)" : `host ${holder.host} pid ${holder.pid} (since ${new Date(holder.since).toISOString()})`;
    super(
      "BAD_INPUT",
      `the schedule of ${location} is already driven by ${who}: one process runs a schedule's jobs at a time. Stop that freshrec schedule run (or serve --schedule) first; schedule status, pause and resume work beside it`,
    );
  }
}
