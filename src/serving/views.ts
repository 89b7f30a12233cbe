/**
 * The wire form of the records users read, shared by the HTTP API and the CLI's --json output so that one record
 * reads the same through both: times are ISO-8601 strings (UTC), never epoch milliseconds, and a window is
 * `{ from, to }` of ISO strings (half-open: `to` is excluded). The stores keep epoch ms; only these views convert.
 *
 * @example
 * reply.send(scheduleStatusView(scheduler.status()));
 * printJson({ models: registry.list().map(modelView) });
 */
import { z } from "zod";
import type { TimeWindow } from "../domain/types.js";
import type { ModelVersion, StatusChange } from "../llm/registry.js";
import type { JobState, RunRecord, ScheduleStatus } from "../update/schedule/index.js";
import type { Experiment } from "./experiments/definition.js";

export function isoTime(ms: number): string;
export function isoTime(ms: number | null): string | null;
export function isoTime(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

export function windowView(window: TimeWindow): { from: string; to: string };
export function windowView(window: TimeWindow | null): { from: string; to: string } | null;
export function windowView(window: TimeWindow | null): { from: string; to: string } | null {
  return window === null ? null : { from: isoTime(window.from), to: isoTime(window.to) };
}

const isoSchema = z.string().describe("ISO-8601 time (UTC)");
const windowSchema = z.object({ from: isoSchema, to: isoSchema.describe("ISO-8601 time (UTC), excluded") });

// ---------------------------------------------------------------------------------------------------- schedule

export const runRecordSchema = z.object({
  id: z.number().int(),
  job: z.string(),
  due: isoSchema.describe("The due time the run was scheduled for; also its as-of time."),
  trigger: z.enum(["scheduled", "catch-up", "buffered"]),
  startedAt: isoSchema,
  endedAt: isoSchema.nullable(),
  status: z.enum(["running", "succeeded", "failed", "halted", "cancelled"]),
  durationSeconds: z.number().nullable(),
  cost: z.record(z.string(), z.number()).nullable(),
  detail: z.record(z.string(), z.unknown()).nullable(),
  error: z.string().nullable(),
});

export function runRecordView(run: RunRecord): z.infer<typeof runRecordSchema> {
  return {
    id: run.id,
    job: run.job,
    due: isoTime(run.due),
    trigger: run.trigger,
    startedAt: isoTime(run.startedAt),
    endedAt: isoTime(run.endedAt),
    status: run.status,
    durationSeconds: run.durationSeconds,
    cost: run.cost ? { ...run.cost } : null,
    detail: run.detail ? { ...run.detail } : null,
    error: run.error,
  };
}

const countersSchema = z.object({
  runs: z.number().int(),
  succeeded: z.number().int(),
  failed: z.number().int(),
  halted: z.number().int(),
  cancelled: z.number().int(),
  skipped: z.number().int().describe("Due times dropped because a run was in progress."),
  missed: z.number().int().describe("Due times that fell while no scheduler ran and were not caught up."),
  skippedWhilePaused: z.number().int(),
});

export const jobStateSchema = z.object({
  job: z.string(),
  cursor: isoSchema.describe("The last due time the scheduler handled; later ones are still open."),
  paused: z.boolean(),
  pauseReason: z.string().nullable(),
  pausedAt: isoSchema.nullable(),
  consecutiveFailures: z.number().int(),
  counters: countersSchema,
  lastRunId: z.number().int().nullable(),
});

export function jobStateView(state: JobState): z.infer<typeof jobStateSchema> {
  return { ...state, counters: { ...state.counters }, cursor: isoTime(state.cursor), pausedAt: isoTime(state.pausedAt) };
}

export const scheduleStatusSchema = z.object({
  now: isoSchema,
  running: z.object({ job: z.string(), due: isoSchema, startedAt: isoSchema }).nullable().describe("The run in progress in the scheduling process."),
  jobs: z.array(
    z.object({
      job: z.string(),
      cadence: z.string().describe("UTC cron pattern or 'every N days|hours|minutes [from ISO]'."),
      paused: z.boolean(),
      pauseReason: z.string().nullable(),
      pausedAt: isoSchema.nullable(),
      consecutiveFailures: z.number().int(),
      counters: countersSchema,
      lastRun: runRecordSchema.nullable(),
      nextDue: isoSchema.nullable().describe("The next due time still open (earlier than now when behind); null while paused."),
    }),
  ),
});

export function scheduleStatusView(status: ScheduleStatus): z.infer<typeof scheduleStatusSchema> {
  return {
    now: isoTime(status.now),
    running: status.running && { job: status.running.job, due: isoTime(status.running.due), startedAt: isoTime(status.running.startedAt) },
    jobs: status.jobs.map((j) => ({
      job: j.job,
      cadence: j.cadence,
      paused: j.paused,
      pauseReason: j.pauseReason,
      pausedAt: isoTime(j.pausedAt),
      consecutiveFailures: j.consecutiveFailures,
      counters: { ...j.counters },
      lastRun: j.lastRun && runRecordView(j.lastRun),
      nextDue: isoTime(j.nextDue),
    })),
  };
}

// ---------------------------------------------------------------------------------------------------- models

export type ModelView = Omit<ModelVersion, "window" | "createdAt"> & { window: { from: string; to: string } | null; createdAt: string };

export function modelView(model: ModelVersion): ModelView {
  return { ...model, window: windowView(model.window), createdAt: isoTime(model.createdAt) };
}

export function statusChangeView(change: StatusChange): Omit<StatusChange, "at"> & { at: string } {
  return { ...change, at: isoTime(change.at) };
}

// ---------------------------------------------------------------------------------------------------- experiments

export const experimentSchema = z.object({
  name: z.string(),
  salt: z.string(),
  control: z.string(),
  description: z.string().nullable(),
  arms: z.array(
    z.object({
      name: z.string(),
      table: z.string(),
      weight: z.number(),
      serving: z.string().nullable().optional().describe("The table version this arm serves now (active experiments, from a server)."),
    }),
  ),
  status: z.enum(["active", "stopped"]),
  createdAt: isoSchema,
  stoppedAt: isoSchema.nullable(),
});

/** An experiment; `serving` names the table version each arm serves now (a server knows it; the CLI alone does not). */
export function experimentView(e: Experiment, serving?: (table: string) => string | null): z.infer<typeof experimentSchema> {
  return {
    name: e.name,
    salt: e.salt,
    control: e.control,
    description: e.description,
    arms: e.arms.map((a) => ({ ...a, ...(serving ? { serving: e.status === "active" ? serving(a.table) : null } : {}) })),
    status: e.status,
    createdAt: isoTime(e.createdAt),
    stoppedAt: isoTime(e.stoppedAt),
  };
}

export { windowSchema };
