/**
 * Errors of the scheduler. They reuse the domain's stable codes so the CLI maps them to exit codes without
 * knowing this module: a bad cadence or window is the user's input (exit 2), an unknown job name is NOT_FOUND.
 */
import { FreshrecError } from "../../domain/errors.js";

/** A cadence text that is neither a cron pattern nor an "every N days" interval. */
export class CadenceError extends FreshrecError {
  override name = "CadenceError";
  constructor(
    readonly cadence: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super("BAD_INPUT", `bad cadence "${cadence}": ${problem}`, options);
  }
}

/** pause/resume/status named a job the scheduler does not define. */
export class UnknownJobError extends FreshrecError {
  override name = "UnknownJobError";
  constructor(
    readonly job: string,
    known: readonly string[],
  ) {
    super("NOT_FOUND", `no scheduled job "${job}" (jobs: ${known.join(", ") || "none"})`);
  }
}

/** A driver was used wrongly: a simulation window that ends before it starts, a clock that is not virtual. */
export class ScheduleUsageError extends FreshrecError {
  override name = "ScheduleUsageError";
  constructor(message: string) {
    super("BAD_INPUT", message);
  }
}

/** The schedule database could not be read or written; `statement` names what failed. */
export class ScheduleStoreError extends FreshrecError {
  override name = "ScheduleStoreError";
  constructor(
    message: string,
    readonly statement: string,
    options?: { cause?: unknown },
  ) {
    super("INTERNAL", message, options);
  }
}
