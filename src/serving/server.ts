/**
 * The serving process: opens the workspace's stores, builds the in-memory state (catalog, users, grounding index,
 * tables), starts the Fastify app and the background timers (table/model poll, exposure flush, grounding rebuild),
 * and shuts all of it down cleanly.
 *
 * Two ways to hold the stores:
 * - the workspace (the default): the server owns the event store while it runs (a DuckDB file opens in one process at
 *   a time): exploration reads histories from it and POST /v1/events appends to it. Update jobs either run inside the
 *   server (`freshrec serve --schedule`, which passes its scheduler's status here) or while it is stopped; tables and
 *   models may be published or reviewed from other processes at any time (SQLite WAL);
 * - a deployment's PostgreSQL database (`storeUrl`, the config's store.url): events, tables and models all come from
 *   it, any number of servers run on it at once, and a publish by any process reaches each of them through the
 *   database (LISTEN/NOTIFY at once, and the poll). The events, items and clusters that other processes append (other
 *   replicas' intake, `freshrec ingest`) reach this server's users and catalog the same way (./store-follower.ts),
 *   and a change of the catalog rebuilds the grounding index at once (./grounding/live-grounding.ts).
 *   Model files are read under `<workspace>/models`; experiments are kept in the database too.
 * Either way the server follows the table store's live pointer and the registry's live model within `reloadIntervalMs`.
 *
 * @example
 * const server = await startServer({ workspace: ".freshrec", port: 0 });
 * const res = await fetch(`${server.url}/v1/users/u000123/exploration?n=5`);
 * await server.close();
 */
import { randomUUID, createHash, timingSafeEqual } from "node:crypto";
import { join } from "node:path";
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { EventStore, type EventStoreContract } from "../data/event-store.js";
import { EVENTS_CHANNEL, PostgresEventStore } from "../data/postgres-event-store.js";
import type { IntakeBuffer } from "../data/intake-buffer.js";
import { MAX_ID_LENGTH } from "../data/ingest/event-fields.js";
import { SystemClock, type Clock } from "../domain/clock.js";
import { FreshrecError } from "../domain/errors.js";
import { MODELS_CHANNEL, PostgresModelRegistry } from "../llm/postgres-registry.js";
import { EmbeddedModelRegistry, type ModelRegistryContract } from "../llm/registry.js";
import type { ScheduleStatus } from "../update/schedule/index.js";
import { EmbeddedTableStore, PostgresTableStore, TABLES_CHANNEL, tableStorePath, type TableStoreContract } from "../tables/index.js";
import { Catalog } from "./catalog.js";
import { EXPERIMENT_DEFAULTS, SERVE_DEFAULTS } from "./defaults.js";
import { HttpError } from "./errors.js";
import { assignArm, type Experiment } from "./experiments/definition.js";
import { openExperimentLog, type ExperimentLogContract } from "./experiments/log.js";
import { EXPERIMENTS_CHANNEL } from "./experiments/postgres-log.js";
import { Explorer } from "./exploration.js";
import { buildGroundingIndex, CoVisitationPolicy, LiveGrounding, type GroundingIndex, type ItemPolicy } from "./grounding/index.js";
import { EventIntake } from "./intake.js";
import { DuckDbIntakeStore, PostgresIntakeStore } from "./intake-store.js";
import { ServerMetrics } from "./metrics.js";
import { registerRoutes, replyWithError } from "./routes.js";
import { listenForChanges, type ChangeListener } from "./store-notifications.js";
import { StoreFollower, type FollowStatus } from "./store-follower.js";
import { StoreQueue } from "./store-queue.js";
import { ServingTables } from "./tables.js";
import { UserIndex } from "./users.js";

/** Options of the server; the CLI builds them from the config's `serve` and `experiment` sections. */
export interface ServeOptions {
  /**
   * The workspace folder: its tables.sqlite and registry.sqlite (and events.duckdb unless `events` is given); with
   * `storeUrl`, only its models/ folder (the registered model files).
   */
  readonly workspace: string;
  /**
   * A PostgreSQL URL (the config's store.url): events, tables and models come from that database, which other
   * servers and the job worker share; not together with `events` or `intakeEvents`. @defaultValue null (the workspace)
   */
  readonly storeUrl?: string | null;
  /** An event store already open in this process (the server then does not close it). @defaultValue <workspace>/events.duckdb */
  readonly events?: EventStore;
  /**
   * The event store POST /v1/events writes to and the user index loads from, in place of `events`: a deployment's
   * PostgreSQL event store, holding the same catalog (same item keys) as `events`, while the catalog, grounding and
   * experiments come from `events` (the intake bench measures the PostgreSQL intake this way; a deployment serves on
   * `storeUrl`, where every store is the database). The server does not close it.
   * @defaultValue `events`
   */
  readonly intakeEvents?: PostgresEventStore;
  /** @defaultValue "127.0.0.1" */
  readonly host?: string;
  /** 0 picks a free port. @defaultValue 8080 */
  readonly port?: number;
  /** Bearer token of the admin routes; null or empty disables them (403). @defaultValue null */
  readonly adminToken?: string | null;
  /** Largest request body; a bigger one is 413 naming this limit. @defaultValue 1_048_576 */
  readonly bodyLimitBytes?: number;
  /** @defaultValue 10_000 */
  readonly maxBatchEvents?: number;
  /**
   * How far after the server clock's now an event's `ts` may be (client clock skew); a later one makes POST
   * /v1/events answer 400 naming the event, because one event from a clock years ahead would become the store's newest
   * event and empty every window counted back from it (grounding, cold start). @defaultValue DAY_MS (one day)
   */
  readonly futureToleranceMs?: number;
  /** @defaultValue "reject" */
  readonly unknownItems?: "reject" | "skip";
  /** @defaultValue 1000 */
  readonly reloadIntervalMs?: number;
  /** @defaultValue 10 */
  readonly defaultN?: number;
  /** @defaultValue 50 */
  readonly maxN?: number;
  /** @defaultValue 3 */
  readonly itemsPerCluster?: number;
  /** pino level. @defaultValue "info" */
  readonly logLevel?: string;
  /** Where logs go (one JSON line per write). @defaultValue process.stderr */
  readonly logStream?: { write(line: string): void };
  /** @defaultValue 30 */
  readonly groundingWindowDays?: number;
  /** @defaultValue 60 */
  readonly groundingRebuildMinutes?: number;
  /** @defaultValue 5 */
  readonly covisitationSpan?: number;
  /** @defaultValue 10 */
  readonly recentItems?: number;
  /** @defaultValue 24 */
  readonly attributionHours?: number;
  /** @defaultValue 1000 */
  readonly flushIntervalMs?: number;
  /** @defaultValue 1000 */
  readonly resamples?: number;
  /** Positive engagement threshold; undefined = the one the dataset recorded at ingestion. */
  readonly positiveMin?: number | null;
  /** @defaultValue the system clock */
  readonly clock?: Clock;
  /** A stronger item model; default: co-visitation with popularity fallback over the grounding index. */
  readonly itemPolicy?: (grounding: () => GroundingIndex) => ItemPolicy;
  /**
   * The hybrid schedule's status for GET /v1/schedule/status: the running scheduler's (serve --schedule), or the one
   * recorded in the workspace's schedule store by `schedule run` when this process does not run it.
   */
  readonly scheduleStatus?: () => ScheduleStatus | Promise<ScheduleStatus>;
  /**
   * Whether this process runs the hybrid schedule (serve --schedule), as GET /v1/schedule/status reports it. Kept
   * apart from `scheduleStatus`, which is also given without --schedule (to show the recorded status).
   * @defaultValue false
   */
  readonly scheduling?: boolean;
  /** Parse every JSON response with its zod schema before sending (tests). @defaultValue false */
  readonly validateResponses?: boolean;
  /**
   * Registers more routes or hooks on the app before it listens (Fastify takes none after): an embedding program's
   * own routes, or the serve bench's no-op route, measured against exploration on the same server. They get the
   * API's hooks, error handlers and logging.
   */
  readonly extendApp?: (app: FastifyInstance) => void;
}

/** A running server: where it listens and how to stop it. */
export interface RunningServer {
  readonly url: string;
  readonly port: number;
  readonly app: FastifyInstance;
  readonly state: ServingState;
  /** Stops accepting requests, finishes those in flight, flushes exposures, closes what it opened. */
  close(): Promise<void>;
}

export interface ActiveExperiment {
  readonly experiment: Experiment;
}

/** How a replica on a shared store follows what other processes append (null on the embedded workspace). */
export interface StoreFollowing {
  readonly follower: StoreFollower;
  /** Whether the connection that hears the store's notifications is up. */
  listening(): boolean;
  /** Times that connection was lost since start. */
  disconnects(): number;
}

/** What /healthz and /metrics say about following the store. */
export interface StoreFollowReport extends FollowStatus {
  /**
   * following: listening and nothing known to be missing; catching-up: appends committed that are not applied yet (or
   * a catch-up runs); disconnected: not hearing notifications (reconnecting; the poll still follows, every
   * serve.reloadIntervalMs); failing: the last catch-up failed (retried at the next notification or poll).
   */
  readonly state: "following" | "catching-up" | "disconnected" | "failing";
  readonly listening: boolean;
  readonly disconnects: number;
}

/** Everything the routes read; built once per server. */
export class ServingState {
  experiment: ActiveExperiment | null = null;
  /** Set by startServer on a shared store. */
  storeFollowing: StoreFollowing | null = null;
  /** The embedded store's intake buffer, which intake writes to (set by startServer; null on PostgreSQL). */
  intakeBuffer: IntakeBuffer | null = null;
  readonly startedAt: number;
  private readonly tokenDigest: Buffer | null;

  constructor(
    readonly options: ServeOptions & { readonly clock: Clock },
    readonly events: EventStoreContract,
    readonly tableStore: TableStoreContract,
    readonly registry: ModelRegistryContract,
    readonly catalog: Catalog,
    readonly users: UserIndex,
    /** The grounding index and its rebuilds (periodic, and on a catalog change). */
    readonly liveGrounding: LiveGrounding,
    readonly explorer: Explorer,
    readonly intake: EventIntake,
    readonly tables: ServingTables,
    /** The experiment log, kept in the event store (`events`). */
    readonly experiments: ExperimentLogContract,
    readonly queue: StoreQueue,
    readonly metrics: ServerMetrics,
    readonly positiveMin: number | null,
  ) {
    this.startedAt = options.clock.now();
    const token = options.adminToken ?? null;
    this.tokenDigest = token ? createHash("sha256").update(token).digest() : null;
  }

  /**
   * Checks an admin request's bearer token (constant-time comparison of digests). Never logs or echoes the token.
   * @throws HttpError 401 without a token, 403 with a wrong one or when no token is configured.
   */
  authorize(header: string | undefined): void {
    if (this.tokenDigest === null) {
      this.metrics.authFailures++;
      throw new HttpError("FORBIDDEN", "admin routes are disabled: set serve.adminToken in the config or FRESHREC_ADMIN_TOKEN");
    }
    const match = header === undefined ? null : /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
    if (!match) {
      this.metrics.authFailures++;
      throw new HttpError("UNAUTHORIZED", "this admin route needs an Authorization: Bearer <token> header");
    }
    const given = createHash("sha256").update(match[1]).digest();
    if (!timingSafeEqual(given, this.tokenDigest)) {
      this.metrics.authFailures++;
      throw new HttpError("FORBIDDEN", "the bearer token is not the admin token");
    }
  }

  /** The arm of a user under the active experiment, or null. */
  armOf(userId: string): { experiment: Experiment; arm: { name: string; table: string } } | null {
    const active = this.experiment;
    if (!active) return null;
    return { experiment: active.experiment, arm: assignArm(active.experiment, userId) };
  }

  /**
   * Serves the experiment the store says is active, when another process (a replica's admin route, the CLI) started
   * or stopped one: a shared store's replicas then assign users alike.
   */
  async followExperiment(): Promise<void> {
    const active = await this.experiments.active();
    if ((active?.name ?? null) === (this.experiment?.experiment.name ?? null)) return;
    await this.flushExposures();
    await this.activate(active);
  }

  /** Makes an experiment the active one (binding its arms' tables), or clears it. */
  async activate(experiment: Experiment | null): Promise<void> {
    if (experiment) for (const arm of experiment.arms) await this.tables.bind(arm.table);
    this.tables.retain(experiment ? experiment.arms.map((a) => a.table) : []);
    this.experiment = experiment ? { experiment } : null;
  }

  /**
   * Moves the DuckDB store's intake buffer into it (nothing on PostgreSQL). A reader through the store queue calls
   * this before it queues: every read of the store moves the buffer first anyway, and a move done inside the queue
   * would hold up the intake batches behind it.
   */
  async moveIntake(): Promise<void> {
    if (this.events instanceof EventStore) await this.events.drainIntake();
  }

  /** Writes buffered exposures (through the store queue). */
  async flushExposures(): Promise<void> {
    if (this.experiments.buffered === 0) return;
    await this.queue.run(() => this.experiments.flush());
  }

  /** How this replica follows the shared store, or null (the embedded workspace: this process is its only writer). */
  storeFollow(): StoreFollowReport | null {
    const following = this.storeFollowing;
    if (!following) return null;
    const status = following.follower.status();
    const listening = following.listening();
    const state = status.failing > 0 ? "failing" : !listening ? "disconnected" : status.catchingUp || status.storeLatest > status.appliedThrough ? "catching-up" : "following";
    return { ...status, state, listening, disconnects: following.disconnects() };
  }

  /** The largest request body Fastify reads (serve.bodyLimitBytes). */
  get bodyLimitBytes(): number {
    return this.options.bodyLimitBytes ?? SERVE_DEFAULTS.bodyLimitBytes;
  }

  get grounding(): GroundingIndex {
    return this.liveGrounding.current;
  }

  /** When the grounding index requests read was built (epoch ms, the server clock). */
  get groundingBuiltAt(): number {
    return this.liveGrounding.builtAt;
  }
}

/**
 * Query parameters whose values are credentials. The API takes the admin token only in the Authorization header, but
 * a client that puts one in the URL (as many APIs take it) must not get it into the logs, right or wrong.
 */
const SECRET_QUERY_PARAMETERS = new Set(["token", "access_token", "auth", "authorization", "bearer", "api_key", "apikey", "key", "secret", "password"]);
const REDACTED = "[redacted]";

/** A request URL as it may be logged: the values of credential parameters, and the admin token wherever it appears, redacted. */
export function redactUrl(url: string, adminToken: string | null): string {
  let out = url;
  const q = out.indexOf("?");
  if (q >= 0) {
    const pairs = out
      .slice(q + 1)
      .split("&")
      .map((pair) => {
        const eq = pair.indexOf("=");
        if (eq < 0) return pair;
        const name = pair.slice(0, eq);
        let decoded = name;
        try {
          decoded = decodeURIComponent(name.replace(/\+/g, " "));
        } catch {
          // A name that is not valid percent-encoding is compared as it is.
        }
        return SECRET_QUERY_PARAMETERS.has(decoded.trim().toLowerCase()) ? `${name}=${REDACTED}` : pair;
      });
    out = `${out.slice(0, q)}?${pairs.join("&")}`;
  }
  // Anywhere else too (a path segment, an unusual parameter name): the configured token is long enough never to
  // match by chance (serve.adminToken: at least 16 characters).
  if (adminToken) for (const form of new Set([adminToken, encodeURIComponent(adminToken)])) out = out.split(form).join(REDACTED);
  return out;
}

/** pino's levels by name (a logger's `level` is one of these names). */
const LOG_LEVELS: Readonly<Record<string, number>> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Number.POSITIVE_INFINITY };

/** One log line per request (at completion, with status and time); the "incoming" line only at debug level. */
class OneLinePerRequest extends LogController {
  constructor(
    options: ConstructorParameters<typeof LogController>[0],
    private readonly loggedUrl: (url: string) => string,
  ) {
    super(options);
  }

  override incomingRequest(request: FastifyRequest): void {
    request.log.debug({ req: request }, "incoming request");
  }

  override requestCompleted(error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    // The line, and the redacted URL in it, is made only when it will be written (every request pays for it otherwise).
    if ((LOG_LEVELS[reply.log.level] ?? 0) > (error ? LOG_LEVELS.error : LOG_LEVELS.info)) return;
    const entry = { method: request.method, url: this.loggedUrl(request.url), statusCode: reply.statusCode, responseTime: reply.elapsedTime };
    if (error) reply.log.error({ ...entry, err: error }, "request errored");
    else reply.log.info(entry, "request completed");
  }
}

function requestIdGenerator(): (req: { headers: Record<string, string | string[] | undefined> }) => string {
  const prefix = randomUUID().slice(0, 8);
  let n = 0;
  return (req) => {
    const given = req.headers["x-request-id"];
    // A caller's id is kept when it is a sane token, so one id follows a request across services.
    if (typeof given === "string" && /^[A-Za-z0-9._:-]{1,128}$/.test(given)) return given;
    return `${prefix}-${(++n).toString(36)}`;
  };
}

export async function startServer(input: ServeOptions): Promise<RunningServer> {
  const options = { ...input, clock: input.clock ?? new SystemClock() };
  const storeUrl = options.storeUrl ?? null;
  if (storeUrl !== null && (options.events || options.intakeEvents)) {
    throw new FreshrecError("INTERNAL", "startServer: storeUrl names the stores; events and intakeEvents cannot be given with it");
  }
  // What this server opened, closed in reverse order when it stops (or fails to start).
  const opened: (() => unknown)[] = [];
  const closeOpened = async () => {
    for (const close of opened.reverse()) await close();
  };
  try {
    let events: EventStoreContract;
    let duckEvents: EventStore | null = null;
    let pgEvents: PostgresEventStore | null = options.intakeEvents ?? null;
    // The store's last append before the catalog and the users are read: following the store starts from it, so
    // whatever is appended while they are read is applied after (again, if they read it too: that changes nothing).
    let followFrom = 0;
    if (storeUrl !== null) {
      const pg = await PostgresEventStore.open(storeUrl);
      opened.push(() => pg.close());
      events = pgEvents = pg;
      followFrom = await pg.lastAppend();
    } else if (options.events) {
      events = duckEvents = options.events;
    } else {
      const duck = await EventStore.open(join(options.workspace, "events.duckdb"));
      // Its intake buffer's mover first: a move or checkpoint running now ends before the connections close.
      opened.push(async () => {
        await duck.closeIntake();
        duck.close();
      });
      events = duckEvents = duck;
    }
    const queue = new StoreQueue();
    const metrics = new ServerMetrics();
    const recorded = options.positiveMin === undefined ? await events.getMeta("positive_min") : null;
    const positiveMin = options.positiveMin !== undefined ? options.positiveMin : recorded === null ? null : Number(recorded);
    const catalog = await Catalog.load(events);
    const users = await UserIndex.load(pgEvents ?? events, catalog, { positiveMin, recentItems: options.recentItems ?? SERVE_DEFAULTS.recentItems });
    const groundingOptions = {
      windowDays: options.groundingWindowDays ?? SERVE_DEFAULTS.groundingWindowDays,
      span: options.covisitationSpan ?? SERVE_DEFAULTS.covisitationSpan,
      positiveMin,
    };
    const groundEvents = events;
    // The DuckDB store has one connection, which the queue hands out; a PostgreSQL store reads on a pool of its own, so
    // a rebuild there (after each catalog change a follower applies) does not hold up intake meanwhile.
    // On DuckDB the intake buffer is moved first, outside the queue (a move is no batch's business); what a batch adds
    // meanwhile is moved by the build's own first read.
    const buildGrounding = async () =>
      groundEvents instanceof PostgresEventStore
        ? buildGroundingIndex(groundEvents, catalog, groundingOptions)
        : (await duckEvents?.drainIntake(), queue.run(() => buildGroundingIndex(groundEvents, catalog, groundingOptions)));
    // The grounding index is swapped whole on rebuild; readers go through `grounding.current`.
    const grounding = new LiveGrounding(await buildGrounding(), buildGrounding, {
      now: () => options.clock.now(),
      onRebuilt: () => metrics.groundingRebuilds++,
    });
    opened.push(() => grounding.close());
    let app: FastifyInstance | null = null;
    /** Rebuilds in the background: on a catalog change, every serve.groundingRebuildMinutes, and at a poll while stale. */
    const rebuildGrounding = (why: "catalog-change" | "period" | "stale") => {
      const rebuilt = why === "catalog-change" ? grounding.catalogChanged() : why === "stale" ? grounding.rebuildIfStale() : grounding.rebuild();
      rebuilt.catch((error) =>
        app?.log.error(
          { err: error, why },
          why === "period"
            ? "rebuilding the grounding index failed; the previous one keeps serving"
            : "rebuilding the grounding index after a catalog change failed; the previous one keeps serving (items moved or added since are grounded as before them) until the next poll retries",
        ),
      );
    };
    // Small pages: a table loads in slices between requests (see table-loader.ts), and less garbage is alive at once.
    const tableStore: TableStoreContract =
      storeUrl !== null
        ? // Rows still reach the lookup 500 at a time; the store fetches more per round trip.
          await PostgresTableStore.open(storeUrl, options.clock, { pageSize: 5000 })
        : EmbeddedTableStore.open(tableStorePath(options.workspace), options.clock, { pageSize: 500 });
    opened.push(() => tableStore.close());
    const registry: ModelRegistryContract =
      storeUrl !== null ? await PostgresModelRegistry.open(storeUrl, options.workspace, options.clock) : EmbeddedModelRegistry.open(options.workspace, options.clock);
    opened.push(() => registry.close());
    // On DuckDB intake writes to the store's intake buffer, moved into the store by its mover (see
    // ../data/intake-buffer.ts); a move that fails is logged here and retried.
    const intakeBuffer = pgEvents === null && duckEvents !== null ? await duckEvents.intakeBuffer() : null;
    if (intakeBuffer) {
      intakeBuffer.onMoveError = (error) =>
        app?.log.error({ err: error, backlog: intakeBuffer.status().backlog }, "moving the intake buffer into the event store failed; the rows stay buffered and the move is retried (or, after a move, deleting them from the buffer or checkpointing it failed; the next move does it)");
    }
    // The experiment log writes exposures and outcomes to that buffer too: intake's attribution writes them.
    const experiments = await openExperimentLog(events, { intakeBuffer });

    const tables = new ServingTables(tableStore, registry, {
      rowsPerSlice: 500,
      now: () => options.clock.now(),
      onChange: (change) => {
        metrics.tableReloads++;
        app?.log.info({ binding: change.binding, from: change.from, to: change.to, cached: change.cached, seconds: change.seconds }, "table swapped");
      },
      onError: (error, binding) => {
        metrics.tableReloadErrors++;
        app?.log.error({ err: error, binding }, "table reload failed; the previous table keeps serving");
      },
    });
    await tables.poll();
    let state: ServingState | null = null;
    const followExperiment = () => {
      state?.followExperiment().catch((error) => app?.log.error({ err: error }, "following the store's active experiment failed; the current one keeps serving"));
    };
    let listener: ChangeListener | null = null;
    let follower: StoreFollower | null = null;
    if (storeUrl !== null && pgEvents !== null) {
      // Events, items and clusters that other processes append reach this replica's memory (see store-follower.ts).
      follower = new StoreFollower(pgEvents, catalog, users, followFrom, {
        now: () => options.clock.now(),
        onApplied: (applied) => {
          const entry = { from: applied.from, to: applied.to, events: applied.events, items: applied.items, clusters: applied.clusters, trigger: applied.trigger };
          // One line per append would flood a busy deployment's logs; a start or reconnect catch-up is worth a line.
          if (applied.trigger === "reconnect" || applied.trigger === "start") app?.log.info(entry, "caught up with the store's appends");
          else app?.log.debug(entry, "applied the store's appends");
        },
        // The grounding index files items under the catalog's clusters: it catches up with a move or a new item now,
        // not at the next periodic rebuild.
        onCatalogChange: () => rebuildGrounding("catalog-change"),
        onError: (error, trigger) =>
          app?.log.error({ err: error, trigger, appliedThrough: follower?.status().appliedThrough }, "following the store's appends failed; histories stay as they are until the next notification or poll retries"),
      });
      const following = follower;
      // A publish, rollback or review anywhere reloads this server at once, an append updates its users; the poll
      // below still catches what a dropped listening connection missed, and a reconnection catches up at once.
      listener = await listenForChanges(
        storeUrl,
        [TABLES_CHANNEL, MODELS_CHANNEL, EXPERIMENTS_CHANNEL, EVENTS_CHANNEL],
        (channel, payload) => {
          if (channel === EVENTS_CHANNEL) following.heard(payload);
          else if (channel === EXPERIMENTS_CHANNEL) followExperiment();
          else void tables.poll();
        },
        (error) =>
          app?.log.error(
            { err: error, appliedThrough: following.status().appliedThrough },
            "the connection that hears the store's changes (tables, models, experiments, events) failed; reconnecting, and following by polling meanwhile",
          ),
        {
          onConnect: () => {
            app?.log.info({ appliedThrough: following.status().appliedThrough }, "listening to the store's changes again; catching up with what was missed");
            void tables.poll();
            followExperiment();
            void following.catchUp("reconnect");
          },
          applicationName: `freshrec serve ${process.pid}`,
        },
      );
      const heard = listener;
      opened.push(() => heard.close());
      // What was appended between the read of the users and the start of listening.
      await follower.catchUp("start");
    }
    const policy = (options.itemPolicy ?? ((g) => new CoVisitationPolicy(g)))(() => grounding.current);
    const explorer = new Explorer(catalog, users, () => grounding.current, policy);
    const intake = new EventIntake({
      intakeStore: pgEvents ? new PostgresIntakeStore(pgEvents, catalog) : new DuckDbIntakeStore(duckEvents!, catalog),
      catalog,
      users,
      queue,
      unknownItems: options.unknownItems ?? SERVE_DEFAULTS.unknownItems,
      maxBatchEvents: options.maxBatchEvents ?? SERVE_DEFAULTS.maxBatchEvents,
      ...(options.futureToleranceMs === undefined ? {} : { futureToleranceMs: options.futureToleranceMs }),
      now: () => options.clock.now(),
      onUpkeepError: (error) =>
        app?.log.error({ err: error }, "the event store's upkeep in a quiet moment (a move of the intake buffer and a checkpoint) failed; the mover moves at its next turn and checkpoints once the store's log is full"),
      attribute: async (batch) => {
        const active = state?.experiment;
        if (!active) return 0;
        // Inside the queue already: flush directly so every exposure before these events can be matched.
        await experiments.flush();
        const n = await experiments.attributeOutcomes(active.experiment.name, batch, (options.attributionHours ?? EXPERIMENT_DEFAULTS.attributionHours) * 3_600_000, positiveMin);
        metrics.outcomesAttributed += n;
        return n;
      },
    });
    const serving = new ServingState(options, events, tableStore, registry, catalog, users, grounding, explorer, intake, tables, experiments, queue, metrics, positiveMin);
    state = serving;
    serving.intakeBuffer = intakeBuffer;
    if (follower && listener) {
      const [following, heard] = [follower, listener];
      serving.storeFollowing = { follower: following, listening: () => heard.connected, disconnects: () => heard.disconnects };
    }
    await serving.activate(await experiments.active());

    const loggedUrl = (url: string) => redactUrl(url, options.adminToken ?? null);
    app = Fastify({
      logger: {
        level: options.logLevel ?? SERVE_DEFAULTS.logLevel,
        // stderr: stdout belongs to the command's result (one JSON object with --json).
        stream: options.logStream ?? process.stderr,
        // Only these request fields are logged; headers (and so the Authorization token) never are, URLs redacted.
        serializers: {
          req: (req: { method: string; url: string; ip?: string }) => ({ method: req.method, url: loggedUrl(req.url), remoteAddress: req.ip }),
          res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
        },
        redact: { paths: ["req.headers.authorization", "headers.authorization", "authorization"], censor: "[redacted]" },
      },
      bodyLimit: serving.bodyLimitBytes,
      // Fastify's default (100) refused ids the intake accepts; the router measures the decoded parameter, the
      // unit MAX_ID_LENGTH counts in.
      routerOptions: { maxParamLength: MAX_ID_LENGTH },
      frameworkErrors: (error, request, reply) => replyWithError(serving, error, request, reply),
      genReqId: requestIdGenerator(),
      requestIdHeader: false,
      logController: new OneLinePerRequest({ requestIdLogLabel: "requestId" }, loggedUrl),
      return503OnClosing: true,
    });
    registerRoutes(app, serving);
    options.extendApp?.(app);
    await app.listen({ host: options.host ?? SERVE_DEFAULTS.host, port: options.port ?? SERVE_DEFAULTS.port });
    const address = app.server.address();
    const port = typeof address === "object" && address ? address.port : (options.port ?? SERVE_DEFAULTS.port);
    const host = options.host ?? SERVE_DEFAULTS.host;
    const url = `http://${host.includes(":") ? `[${host}]` : host === "0.0.0.0" ? "127.0.0.1" : host}:${port}`;

    const timers: NodeJS.Timeout[] = [];
    timers.push(
      setInterval(() => {
        void tables.poll();
        // A shared store's experiments change from other processes too; the workspace's only through this server.
        if (storeUrl !== null) followExperiment();
        void follower?.catchUp("poll");
        rebuildGrounding("stale");
      }, options.reloadIntervalMs ?? SERVE_DEFAULTS.reloadIntervalMs),
    );
    timers.push(
      setInterval(() => {
        serving.flushExposures().catch((error) => app?.log.error({ err: error }, "writing exposures failed; kept for the next flush"));
      }, options.flushIntervalMs ?? EXPERIMENT_DEFAULTS.flushIntervalMs),
    );
    timers.push(
      setInterval(
        () => {
          rebuildGrounding("period");
        },
        (options.groundingRebuildMinutes ?? SERVE_DEFAULTS.groundingRebuildMinutes) * 60_000,
      ),
    );
    for (const t of timers) t.unref();
    app.log.info({ url, users: users.size, clusters: catalog.clusterCount, items: catalog.itemCount, table: tables.lookup()?.version ?? null }, "freshrec serving");

    let closing: Promise<void> | null = null;
    return {
      url,
      port,
      app,
      state: serving,
      close: () =>
        (closing ??= (async () => {
          for (const t of timers) clearInterval(t);
          // No reload may start once the stores begin to close.
          await listener?.close();
          await follower?.close();
          // A rebuild running now ends before the event store closes; none starts after.
          await grounding.close();
          await app!.close();
          // No upkeep starts now, and the running one ends before the stores close.
          await intake.close();
          await tables.settle();
          await queue.idle();
          await queue.run(() => experiments.flush());
          // Whoever opens the store next (a command, a cold start) finds nothing buffered.
          await duckEvents?.drainIntake();
          await closeOpened();
        })()),
    };
  } catch (error) {
    await closeOpened();
    throw error;
  }
}
