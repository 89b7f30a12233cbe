/**
 * The schedule's durable record: every run (the run log) and each job's state (cursor, pause, counters), so a
 * restarted `schedule run` continues where the last one stopped and `schedule status` can read it from another
 * process. One contract, one adapter (SQLite, sqlite-store.ts); tests use the same adapter on ":memory:".
 *
 * @example
 * const store = SqliteScheduleStore.open(scheduleStorePath(workspace));
 * const recent = store.runs({ job: "refresh", limit: 10 });
 */
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
  begin(run: RunStart): number;
  finish(id: number, end: RunEnd): void;
  run(id: number): RunRecord | undefined;
  /** Runs ordered by start (then id), oldest first. */
  runs(query?: RunQuery): RunRecord[];
}

export interface ScheduleStore extends RunLog {
  jobState(job: JobName): JobState | undefined;
  jobStates(): JobState[];
  saveJobState(state: JobState): void;
  /** Runs `body` atomically: a run's end and its job's counters change together or not at all. */
  transaction<T>(body: () => T): T;
  close(): void;
}
