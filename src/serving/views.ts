/**
 * The wire form of the records users read, shared by the HTTP API and the CLI's --json output so that one record
 * reads the same through both: times are ISO-8601 strings (UTC), never epoch milliseconds, and a window is
 * `{ from, to }` of ISO strings (half-open: `to` is excluded). The stores keep epoch ms; only these views convert.
 *
 * @example
 * reply.send(scheduleStatusView(scheduler.status()));
 * printJson({ models: registry.list().map(modelView) });
 */
import type { FusionFit } from "../update/fusion.js";
import { z } from "zod";
import type { StoreCounts } from "../data/event-store.js";
import type { TimeWindow } from "../domain/types.js";
import type { ReplayResult } from "../evaluation/replay.js";
import type { ModelVersion, StatusChange } from "../llm/registry.js";
import type { TableInfo } from "../tables/index.js";
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

// ---------------------------------------------------------------------------------------------------- tables

export const tableSchema = z.object({
  version: z.string(),
  status: z.enum(["building", "ready", "live", "retired", "failed"]),
  modelVersion: z.string(),
  templateHash: z.string(),
  ragAsOf: isoSchema.nullable().describe("The RAG window's end (the data the table knows up to); null without RAG."),
  ragWindowDays: z.number().nullable(),
  ragOptions: z.record(z.string(), z.unknown()).nullable(),
  strategy: z.string().nullable(),
  parent: z.string().nullable().describe("The table this one was built incrementally from."),
  stats: z.record(z.string(), z.unknown()).nullable().describe("Build statistics: pairs, rescored, copied, seconds."),
  metrics: z.record(z.string(), z.unknown()).nullable(),
  createdAt: isoSchema,
  finishedAt: isoSchema.nullable(),
  failure: z.string().nullable(),
  rows: z.number().int(),
  topN: z.number().int().describe("Most answers in one row: GET exploration answers at most this many clusters."),
});

export function tableView(table: TableInfo): z.infer<typeof tableSchema> {
  return {
    ...table,
    ragOptions: table.ragOptions ? { ...table.ragOptions } : null,
    stats: table.stats ? { ...table.stats } : null,
    metrics: table.metrics ? { ...table.metrics } : null,
    ragAsOf: isoTime(table.ragAsOf),
    createdAt: isoTime(table.createdAt),
    finishedAt: isoTime(table.finishedAt),
  };
}

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
  cost: z.record(z.string(), z.number().nullable()).nullable().describe("What the run spent: CPU seconds, tokens trained, prompts scored and, for a priced backend, their tokens and dollars (usd null when the backend has no prices)."),
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
    detail: run.detail ? detailView(run.detail) : null,
    error: run.error,
  };
}

/** Time fields a job puts in its run detail (src/update/jobs.ts); the run log keeps them as epoch ms for replay. */
const DETAIL_TIMES = ["dataAsOf"] as const;

function detailView(detail: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const view: Record<string, unknown> = { ...detail };
  for (const key of DETAIL_TIMES) if (typeof view[key] === "number") view[key] = isoTime(view[key]);
  return view;
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

export const modelSchema = z.object({
  version: z.string(),
  parent: z.string().nullable(),
  kind: z.enum(["base", "fine-tuned"]),
  status: z.enum(["candidate", "live", "halted", "rejected", "retired"]),
  window: windowSchema.nullable().describe("The data window its training samples came from."),
  trainSamples: z.number().int(),
  validationSamples: z.number().int(),
  metrics: z.record(z.string(), z.unknown()).describe("Gate values and training results."),
  filePath: z.string(),
  sha256: z.string(),
  templateHash: z.string().nullable(),
  vocabularyHash: z.string().nullable(),
  createdAt: isoSchema,
});

export function modelView(model: ModelVersion): z.infer<typeof modelSchema> {
  return { ...model, metrics: { ...model.metrics }, window: windowView(model.window), createdAt: isoTime(model.createdAt) };
}

export const statusChangeSchema = z.object({
  version: z.string(),
  from: z.string().nullable(),
  to: z.string(),
  reason: z.string(),
  at: isoSchema,
});

export function statusChangeView(change: StatusChange): z.infer<typeof statusChangeSchema> {
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

// ---------------------------------------------------------------------------------------------------- data, replay

/** The event store's counts, with its first and last event times. */
export function storeCountsView(counts: StoreCounts): Omit<StoreCounts, "firstTs" | "lastTs"> & { firstTs: string | null; lastTs: string | null } {
  return { ...counts, firstTs: isoTime(counts.firstTs), lastTs: isoTime(counts.lastTs) };
}

/** A replay's result: its window and each strategy's published tables (publish time, data as-of) in ISO. */
export function replayResultView(result: ReplayResult) {
  return {
    ...result,
    window: windowView(result.window),
    timelines: Object.fromEntries(
      Object.entries(result.timelines).map(([name, tables]) => [name, tables.map((t) => ({ ...t, publishedAt: isoTime(t.publishedAt), dataAsOf: isoTime(t.dataAsOf) }))]),
    ),
  };
}

/** A fusion fit's wire form (times as ISO), for refresh --json and the API. */
export function fusionFitView(fit: FusionFit) {
  return { ...fit, slice: windowView(fit.slice), fitEvidence: windowView(fit.fitEvidence) };
}
