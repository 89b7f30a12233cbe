/**
 * `freshrec serve [--port N] [--host H] [--schedule]`: the HTTP API over the workspace until Ctrl-C.
 *
 * The server owns the workspace's event store while it runs (DuckDB allows one process per file): `ingest`,
 * `refresh`, `finetune`, `schedule run` and `experiment create|analyze` cannot open it meanwhile. Either run the hybrid
 * schedule inside the server (`--schedule`: the same jobs as `schedule run`, over the server's own store connection),
 * or stop the server for them, or use the admin routes (publish, rollback, review, experiments). Read-only commands
 * (`analyze drift`) read the events through the server, which shares its store for reading
 * (../../data/event-store-share.ts). Tables and models published or reviewed by other processes (`tables publish`,
 * `review`) are picked up within serve.reloadIntervalMs.
 *
 * With store.url (a PostgreSQL database) the server holds no lock: events, tables and models come from the database,
 * any number of `serve` processes (on any hosts) run at once, and each follows the live table a publish by any
 * process sets. Model files are read under `<workspace>/models`. `--schedule` then runs the schedule over the
 * database's stores and its schedule store; one process drives a database's schedule (this server or a `schedule
 * run` worker), so a second one is refused at start, naming the first.
 */
import type { Command } from "commander";
import { EventStoreShare } from "../../data/event-store-share.js";
import { DAY_MS } from "../../domain/clock.js";
import { BadInputError, ConfigError } from "../../domain/errors.js";
import { ModelRegistry } from "../../llm/registry.js";
import { startServer, type RunningServer, type ServeOptions } from "../../serving/index.js";
import { UpdateLoop } from "../../update/loop.js";
import { Scheduler, hybridJobs, readScheduleStatus, type ScheduleStoreContract } from "../../update/schedule/index.js";
import { configSchema, type FreshrecConfig } from "../config.js";
import type { CommandContext } from "../context.js";
import { loopSettings, openLoop } from "../loop-context.js";
import { trainingProgress } from "../progress.js";
import { action, positiveInt } from "../run.js";
import { runLine, scheduleDefinitions } from "./refresh.js";

/** serve.adminToken's own rule, so a token from the environment is held to exactly what the config file is. */
const adminTokenRule = configSchema.shape.serve.unwrap().shape.adminToken;

/**
 * The admin token: FRESHREC_ADMIN_TOKEN wins over serve.adminToken; empty means none.
 * @throws ConfigError when FRESHREC_ADMIN_TOKEN breaks serve.adminToken's rule (the message never holds the token).
 */
export function adminToken(config: FreshrecConfig): string | null {
  const fromEnv = process.env.FRESHREC_ADMIN_TOKEN;
  if (fromEnv !== undefined && fromEnv !== "") {
    const checked = adminTokenRule.safeParse(fromEnv);
    if (!checked.success) {
      const said = checked.error.issues.map((i) => (i.code === "too_small" ? `at least ${String(i.minimum)} characters` : i.message)).join("; ");
      throw new ConfigError(`FRESHREC_ADMIN_TOKEN: expected ${said} (the rule of serve.adminToken), got ${fromEnv.length} characters`, [{ path: "FRESHREC_ADMIN_TOKEN", message: `expected ${said}` }]);
    }
    return fromEnv;
  }
  return config.serve.adminToken;
}

/** The server options of the config's `serve` and `experiment` sections. */
export function serveOptions(ctx: CommandContext): Omit<ServeOptions, "workspace"> {
  const s = ctx.config.serve;
  const positiveMin = ctx.config.data.positiveMin;
  return {
    host: s.host,
    port: s.port,
    adminToken: adminToken(ctx.config),
    bodyLimitBytes: s.bodyLimitBytes,
    maxBatchEvents: s.maxBatchEvents,
    futureToleranceMs: s.futureToleranceMs,
    unknownItems: s.unknownItems,
    reloadIntervalMs: s.reloadIntervalMs,
    defaultN: s.defaultN,
    maxN: s.maxN,
    itemsPerCluster: s.itemsPerCluster,
    logLevel: s.logLevel,
    groundingWindowDays: s.groundingWindowDays,
    groundingRebuildMinutes: s.groundingRebuildMinutes,
    covisitationSpan: s.covisitationSpan,
    recentItems: s.recentItems,
    attributionHours: ctx.config.experiment.attributionHours,
    flushIntervalMs: ctx.config.experiment.flushIntervalMs,
    resamples: ctx.config.experiment.resamples,
    // null in the config means "the dataset's own threshold", which the server reads from the store.
    ...(positiveMin === null ? {} : { positiveMin }),
    clock: ctx.clock,
  };
}

export interface WorkspaceServer extends RunningServer {
  /** Whether the hybrid schedule runs inside this process. */
  readonly scheduling: boolean;
}

/**
 * Starts the API over the command's workspace (the demo calls this with `{ port: 0 }`), optionally with the hybrid
 * schedule in the same process. `close()` stops the schedule (a running job is cancelled cleanly), the server and
 * the stores.
 */
export async function startWorkspaceServer(
  ctx: CommandContext,
  overrides: { port?: number; host?: string; schedule?: boolean; logLevel?: ServeOptions["logLevel"] } = {},
): Promise<WorkspaceServer> {
  const storeUrl = ctx.config.store.url;
  // The events the server reads: with store.url the server opens the database's itself; on the workspace this process
  // opens the DuckDB file once, for the server and the schedule alike (one process per file).
  const events = storeUrl === null ? await ctx.openEvents() : null;
  const recorded = recordedScheduleStatus(ctx);
  let scheduleParts: RunningSchedule | null = null;
  let share: EventStoreShare | null = null;
  let server: RunningServer;
  try {
    // Before anything slow (loading users): a read-only command started meanwhile reads through this process.
    if (events !== null) share = await EventStoreShare.startFor(events, "freshrec serve");
    if (overrides.schedule) scheduleParts = await startSchedule(ctx, events === null ? await openLoop(ctx) : await workspaceLoop(ctx, events));
    const parts = scheduleParts;
    server = await startServer({
      ...serveOptions(ctx),
      workspace: ctx.paths.root,
      ...(events === null ? { storeUrl: storeUrl! } : { events }),
      ...overridesOf(overrides),
      // Whether this process runs the schedule (--schedule); the status route reports it beside the recorded state.
      scheduling: parts !== null,
      scheduleStatus: () => (parts ? parts.scheduler.status() : recorded.read()),
    });
  } catch (error) {
    await scheduleParts?.close();
    await recorded.close();
    await share?.close();
    await events?.closeIntake();
    events?.close();
    throw error;
  }
  let closing: Promise<void> | null = null;
  const parts = scheduleParts;
  const shared = share;
  return {
    ...server,
    scheduling: parts !== null,
    close: () =>
      (closing ??= (async () => {
        // The schedule first: its jobs read the event store the server is about to release.
        await parts?.close();
        await server.close();
        await recorded.close();
        await shared?.close();
        // The intake buffer's mover ends its running move or checkpoint before the store closes.
        await events?.closeIntake();
        events?.close();
      })()),
  };
}

/**
 * The schedule's status as recorded in the store the config names, for a server that does not run the schedule:
 * the workspace's file is opened per request (a worker may write it meanwhile), the database's store once, on the
 * first request, and closed with the server.
 */
function recordedScheduleStatus(ctx: CommandContext) {
  let shared: Promise<ScheduleStoreContract> | null = null;
  const read = async (store: ScheduleStoreContract) => readScheduleStatus(store, scheduleDefinitions(ctx.config), ctx.clock.now(), null);
  return {
    read: async () => {
      if (ctx.config.store.url !== null) return read(await (shared ??= ctx.openScheduleStore()));
      const store = await ctx.openScheduleStore();
      try {
        return await read(store);
      } finally {
        await store.close();
      }
    },
    close: async () => {
      const opened = shared;
      shared = null;
      await (await opened?.catch(() => null))?.close();
    },
  };
}

/** The command line's port, host and log level over the config's. */
function overridesOf(overrides: { port?: number; host?: string; logLevel?: ServeOptions["logLevel"] }): Partial<ServeOptions> {
  return {
    ...(overrides.port === undefined ? {} : { port: overrides.port }),
    ...(overrides.host === undefined ? {} : { host: overrides.host }),
    ...(overrides.logLevel === undefined ? {} : { logLevel: overrides.logLevel }),
  };
}

/** What the schedule runs on: the loop (its jobs), the registry it asks for a live model, and how to close both. */
interface ScheduledLoop {
  readonly loop: UpdateLoop;
  readonly registry: { live(): Promise<unknown> };
  close(): Promise<void>;
}

interface RunningSchedule {
  readonly scheduler: Scheduler;
  close(): Promise<void>;
}

/** The update loop over the server's own workspace event store (one DuckDB instance per file and process). */
async function workspaceLoop(ctx: CommandContext, events: Awaited<ReturnType<CommandContext["openEvents"]>>): Promise<ScheduledLoop> {
  const tables = ctx.openTables();
  const registry = new ModelRegistry(ctx.paths.root, ctx.clock);
  const close = async () => {
    registry.close();
    tables.close();
  };
  try {
    const positiveMin = await ctx.positiveMin(events);
    const loop = new UpdateLoop({
      events,
      tables,
      registry,
      clusters: (await events.clusters()).map((c) => c.id),
      settings: loopSettings(ctx.config, positiveMin),
      progress: ctx.progress,
      onTraining: trainingProgress(ctx.progress, ctx.log, "fine-tuning"),
    });
    return {
      loop,
      registry: { live: async () => registry.live() },
      close: async () => {
        await loop.close();
        await close();
      },
    };
  } catch (error) {
    await close();
    throw error;
  }
}

/**
 * The hybrid schedule over `opened`'s loop and the schedule store the config names, running until close(). Refused
 * (and `opened` closed) when there is no live model, or when another process drives the schedule.
 */
async function startSchedule(ctx: CommandContext, opened: ScheduledLoop): Promise<RunningSchedule> {
  let store: ScheduleStoreContract | null = null;
  let scheduler: Scheduler;
  try {
    if (!(await opened.registry.live())) throw new BadInputError("--schedule needs a live model: run freshrec pretrain first");
    store = await ctx.openScheduleStore();
    const s = ctx.config.schedule;
    scheduler = new Scheduler({
      jobs: hybridJobs({ finetune: opened.loop.finetuneJob(), refresh: opened.loop.refreshJob(), finetuneCadence: s.finetuneCadence, refreshCadence: s.refreshCadence, finetuneTrigger: ctx.config.finetune.trigger }),
      store,
      clock: ctx.clock,
      overlap: s.overlap,
      catchupWindowMs: s.catchupWindowDays * DAY_MS,
      maxConsecutiveFailures: s.maxConsecutiveFailures,
      onRun: (run) => ctx.log(`schedule: ${runLine(run)}`),
    });
    // Before the server listens: a schedule another process drives is refused here, naming it.
    await scheduler.claim();
  } catch (error) {
    await store?.close();
    await opened.close();
    throw error;
  }
  const running = scheduler.start().catch((error) => ctx.log(`schedule: stopped on an error: ${(error as Error).message}`));
  return {
    scheduler,
    close: async () => {
      await scheduler.stop();
      await running;
      await opened.close();
      await store!.close();
    },
  };
}

export function registerServe(program: Command): void {
  program
    .command("serve")
    .description("serve the exploration API (live table + item grounding), event intake, admin routes, /metrics; until Ctrl-C")
    .option("--port <n>", "TCP port (default: serve.port, 8080; 0 = any free port)")
    .option("--host <address>", "interface (default: serve.host, 127.0.0.1)")
    .option("--schedule", "also run the hybrid schedule (monthly fine-tune, RAG refresh) in this process")
    .addHelpText(
      "after",
      [
        "",
        "Examples:",
        "  freshrec serve --port 8080",
        "  FRESHREC_ADMIN_TOKEN=$(openssl rand -hex 24) freshrec serve --schedule",
        "  curl localhost:8080/v1/users/u000123/exploration?n=5",
        "",
        "The server holds the event store: run refresh/finetune with --schedule, or while it is stopped, or use the",
        "admin routes (POST /v1/tables/{v}/publish, /v1/tables/rollback, /v1/models/{v}/approve|reject). analyze drift",
        "reads the events through the server meanwhile. API: /openapi.json",
      ].join("\n"),
    )
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<{ port?: string; host?: string; schedule?: boolean }>();
        const port = opts.port === "0" ? 0 : positiveInt("port", opts.port);
        if (port !== undefined && port > 65535) throw new BadInputError(`--port: ${port} is not a TCP port`);
        const server = await startWorkspaceServer(ctx, { port, host: opts.host, schedule: Boolean(opts.schedule) });
        const health = (await (await fetch(`${server.url}/healthz`)).json()) as { table: { version: string } | null; users: number };
        ctx.log(`freshrec serving on ${server.url} (table ${health.table?.version ?? "none"}, ${health.users} users${server.scheduling ? ", hybrid schedule running" : ""}); Ctrl-C stops`);
        ctx.log(`  curl ${server.url}/v1/users/USER_ID/exploration?n=5`);
        ctx.log(`  curl ${server.url}/openapi.json`);
        await new Promise<void>((resolve) => {
          if (ctx.signal.aborted) resolve();
          ctx.signal.addEventListener("abort", () => resolve(), { once: true });
        });
        await server.close();
        return { json: { url: server.url, stopped: true, scheduling: server.scheduling }, text: `stopped serving ${server.url}` };
      }),
    );
}
