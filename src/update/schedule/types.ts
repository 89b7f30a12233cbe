/**
 * Shapes shared by the scheduler core, its drivers and the run log. A job is any async function with a name and a
 * cadence; the scheduler knows nothing of what fine-tuning or refresh do.
 */
import type { Clock } from "../../domain/clock.js";

/** The two jobs of the hybrid strategy; any other name is allowed for ablations and tests. */
export type JobName = "finetune" | "refresh" | (string & {});

/** Why a run happened: on its due time, as the coalesced catch-up of missed due times, or after an overlap. */
export type RunTrigger = "scheduled" | "catch-up" | "buffered";

/** What a job hands to its run function. */
export interface JobContext {
  /**
   * The as-of time of the run: the due time it was scheduled for, never later than `clock.now()`. A job reads only
   * data strictly before it, so the same due time gives the same result live, on restart and in replay.
   */
  readonly asOf: number;
  readonly clock: Clock;
  /** Aborted when the live scheduler stops; a job should stop early and return or throw. */
  readonly signal: AbortSignal;
  readonly job: JobName;
  readonly trigger: RunTrigger;
}

/** Resources a run used; the CPU seconds of the process are measured by the scheduler when the job gives none. */
export interface JobCost {
  readonly tokensTrained?: number;
  readonly promptsScored?: number;
  /**
   * The scorer's own estimate of those prompts (what `refresh --dry-run` prints): tokens, and dollars when the
   * backend has prices (null without). Absent for a scorer that prices nothing.
   */
  readonly promptTokens?: number;
  readonly completionTokens?: number;
  readonly usd?: number | null;
  readonly cpuSeconds?: number;
  /** CPU seconds of child processes the run started (training workers), added to the measured ones. */
  readonly childCpuSeconds?: number;
}

export interface JobOutcome {
  /**
   * - succeeded: the job did its work (for example a table was published);
   * - failed: an error worth retrying next time; N in a row pause the job;
   * - halted: a quality gate stopped the run; the job pauses until a human resumes it.
   */
  readonly status: "succeeded" | "failed" | "halted";
  readonly cost?: JobCost;
  /** Anything the job wants kept in the run log (model version, table version, gate values). JSON-serialisable. */
  readonly detail?: Readonly<Record<string, unknown>>;
  /** A message kept in the run log for failed and halted runs. */
  readonly error?: string;
  /**
   * Simulation only: how long the run would have taken in virtual time. The simulator advances its virtual clock by
   * this much after the run, so due times falling inside it meet the overlap policy as they would live. Absent or 0
   * means the run is instantaneous in virtual time. Ignored by the live driver, where real time passes.
   */
  readonly simulatedMs?: number;
}

export type JobRun = (context: JobContext) => Promise<JobOutcome>;

export interface JobDefinition {
  readonly name: JobName;
  /** A cron pattern (UTC) or "every N days|hours|minutes [from ISO-TIME]"; see cadence.ts. */
  readonly cadence: string;
  readonly run: JobRun;
}

/** The status of a run in the log. `running` is only seen while it runs; a crash leaves it and reopen fails it. */
export type RunStatus = "running" | "succeeded" | "failed" | "halted" | "cancelled";

export interface RunRecord {
  readonly id: number;
  readonly job: JobName;
  /** The due time the run was scheduled for; also its as-of time. */
  readonly due: number;
  readonly trigger: RunTrigger;
  /** Clock time (virtual in simulation) when the run started and ended. */
  readonly startedAt: number;
  readonly endedAt: number | null;
  readonly status: RunStatus;
  /** Wall-clock seconds the run took on this machine, also in simulation. */
  readonly durationSeconds: number | null;
  readonly cost: JobCost | null;
  readonly detail: Readonly<Record<string, unknown>> | null;
  readonly error: string | null;
}

/** Counters of one job since its state was created. */
export interface JobCounters {
  /** Runs started (whatever their end). */
  readonly runs: number;
  readonly succeeded: number;
  readonly failed: number;
  readonly halted: number;
  /** Runs stopped by the live scheduler's stop(). */
  readonly cancelled: number;
  /** Due times that fell while a run (of any job) was in progress and were dropped by the overlap policy. */
  readonly skipped: number;
  /** Due times that fell while the scheduler was not running and were not caught up (coalesced or too old). */
  readonly missed: number;
  /** Due times that fell while the job was paused. */
  readonly skippedWhilePaused: number;
}

export const ZERO_COUNTERS: JobCounters = {
  runs: 0,
  succeeded: 0,
  failed: 0,
  halted: 0,
  cancelled: 0,
  skipped: 0,
  missed: 0,
  skippedWhilePaused: 0,
};

/** The durable state of one job, enough for a restarted scheduler to continue where it stopped. */
export interface JobState {
  readonly job: JobName;
  /** The last due time the scheduler handled (ran, skipped, missed); due times after it are still open. */
  readonly cursor: number;
  readonly paused: boolean;
  readonly pauseReason: string | null;
  readonly pausedAt: number | null;
  readonly consecutiveFailures: number;
  readonly counters: JobCounters;
  readonly lastRunId: number | null;
}
