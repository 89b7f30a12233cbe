/**
 * What every command receives: the workspace, the validated config and how to print its result. A command
 * returns one result object; with --json it is printed as exactly one JSON object on stdout, otherwise the
 * command's human rendering is printed. Logs and progress go to stderr.
 */
import type { Command } from "commander";
import { EventStore, type EventStoreContract } from "../data/event-store.js";
import { openEventStoreReader, type EventStoreReading } from "../data/event-store-share.js";
import { PostgresEventStore, redactedUrl } from "../data/postgres-event-store.js";
import { SystemClock, type Clock } from "../domain/clock.js";
import { FreshrecError } from "../domain/errors.js";
import { EmbeddedModelRegistry, type ModelRegistryContract } from "../llm/registry.js";
import { PostgresModelRegistry } from "../llm/postgres-registry.js";
import { PostgresResponseCache, SqliteResponseCache, responseCachePath, type ResponseCacheContract } from "../llm/backends/index.js";
import { EmbeddedTableStore, PostgresTableStore, SqliteTableStore, type TableStoreContract } from "../tables/index.js";
import type { ProgressSink } from "../domain/types.js";
import { PostgresScheduleStore, SqliteScheduleStore, scheduleStorePath, type ScheduleStoreContract } from "../update/schedule/index.js";
import { loadConfig, type FreshrecConfig } from "./config.js";
import { progressSink } from "./progress.js";
import { workspacePaths, type WorkspacePaths } from "./workspace.js";

export interface GlobalOptions {
  workspace: string;
  config?: string;
  json?: boolean;
}

export interface CommandContext {
  readonly paths: WorkspacePaths;
  readonly config: FreshrecConfig;
  readonly json: boolean;
  readonly progress: ProgressSink;
  /** Prints a line for people on stderr (never stdout, which belongs to the result). */
  log(line: string): void;
  /**
   * The embedded DuckDB event store itself, for `serve` on the workspace (one DuckDB instance per file and process).
   * @throws FreshrecError (INTERNAL, `embeddedOnly`) when the config names a PostgreSQL store (`store.url`): a caller
   * would otherwise read a local file that is not the deployment's events.
   */
  openEvents(): Promise<EventStore>;
  /** The event store the config names: PostgreSQL with `store.url`, else the workspace's DuckDB file. */
  openEventStore(): Promise<EventStoreContract>;
  /**
   * The event store the config names, for a command that only reads it (`analyze drift`, `doctor`, `experiment
   * analyze`): the database with store.url; else the workspace's file opened read-only (readers run beside each other),
   * or read through the process that holds it and shares it, `freshrec serve` or a `freshrec schedule run` worker
   * (../data/event-store-share.ts). `heldBy` and `holder` name that process (null: none), for the command to say so.
   * @throws EventStoreBusyError (exit 2) when a process that does not share the file holds it, naming it.
   */
  openEventStoreForReading(): Promise<EventStoreReading>;
  /**
   * The workspace's SQLite table store itself, for `serve --schedule`, which still builds tables through its
   * synchronous surface.
   * @throws FreshrecError (INTERNAL) with `store.url`, as `openEvents` does.
   */
  openTables(): SqliteTableStore;
  /** The table store the config names: PostgreSQL with `store.url`, else the workspace's tables.sqlite. */
  openTableStore(): Promise<TableStoreContract>;
  /** The model registry the config names: PostgreSQL with `store.url` (files under `<workspace>/models`), else registry.sqlite. */
  openRegistry(): Promise<ModelRegistryContract>;
  /** The schedule store the config names: PostgreSQL with `store.url`, else the workspace's schedule.sqlite. */
  openScheduleStore(): Promise<ScheduleStoreContract>;
  /** The openai backend's response cache the config names: PostgreSQL with `store.url`, else llm-cache.sqlite. */
  openResponseCache(): Promise<ResponseCacheContract>;
  /**
   * Aborted by the first Ctrl-C (SIGINT) or SIGTERM, so a long job stops cleanly (a partial table is marked failed,
   * training is cancelled); a second signal exits at once.
   */
  readonly signal: AbortSignal;
  /** The wall clock: the CLI is the one place where "now" comes from the system. */
  readonly clock: Clock;
  /** The engagement threshold for "positive": the config's, else the one the dataset recorded at ingestion. */
  positiveMin(store: EventStoreContract): Promise<number | null>;
}

export function contextOf(command: Command): CommandContext {
  const globals = command.optsWithGlobals<GlobalOptions>();
  const { config } = loadConfig(globals.config);
  return contextOver(workspacePaths(globals.workspace), config, Boolean(globals.json));
}

/**
 * The context of a command run on the embedded workspace at `root` with `ctx`'s settings otherwise (store.url left
 * out): for a command that works on a scratch copy of a deployment's state (`schedule run --simulate` on store.url), so
 * that the very code of the embedded workspace runs on it and nothing it does reaches the deployment's stores (but
 * the response cache, `ctx`'s).
 */
export function scratchContext(ctx: CommandContext, root: string): CommandContext {
  // The openai backend's answers stay the deployment's to share: an answer depends on the prompt and the server's model
  // only, and a simulation must not pay again for what the deployment already asked.
  return contextOver(workspacePaths(root), { ...ctx.config, store: { ...ctx.config.store, url: null } }, ctx.json, ctx.openResponseCache);
}

/** The context over `paths` and `config`; `responseCache` opens the response cache instead of the config's. */
function contextOver(paths: WorkspacePaths, config: FreshrecConfig, json: boolean, responseCache?: () => Promise<ResponseCacheContract>): CommandContext {
  const clock = new SystemClock();
  return {
    paths,
    config,
    // Lazily: only a command that can stop cleanly takes over Ctrl-C; the others keep Node's default (exit at once).
    get signal() {
      return interruptSignal();
    },
    json,
    progress: progressSink(),
    log: (line) => process.stderr.write(`${line}\n`),
    openEvents: async () => {
      if (config.store.url !== null) throw embeddedOnly(config.store.url, paths.events);
      return EventStore.open(paths.events);
    },
    openEventStore: () => (config.store.url !== null ? onDeployment(() => PostgresEventStore.open(config.store.url!)) : EventStore.open(paths.events)),
    openEventStoreForReading: async () =>
      config.store.url !== null ? { store: await onDeployment(() => PostgresEventStore.open(config.store.url!)), heldBy: null, holder: null } : openEventStoreReader(paths.events),
    openTableStore: async () => (config.store.url !== null ? onDeployment(() => PostgresTableStore.open(config.store.url!, clock)) : EmbeddedTableStore.open(paths.tables, clock)),
    openTables: () => {
      if (config.store.url !== null) throw embeddedOnly(config.store.url, paths.tables);
      return SqliteTableStore.open(paths.tables, clock);
    },
    openRegistry: async () => (config.store.url !== null ? onDeployment(() => PostgresModelRegistry.open(config.store.url!, paths.root, clock)) : EmbeddedModelRegistry.open(paths.root, clock)),
    openScheduleStore: async () => (config.store.url !== null ? onDeployment(() => PostgresScheduleStore.open(config.store.url!)) : SqliteScheduleStore.open(scheduleStorePath(paths.root))),
    openResponseCache: responseCache ?? (async () =>
      config.store.url !== null ? onDeployment(() => PostgresResponseCache.open(config.store.url!, clock)) : SqliteResponseCache.open(responseCachePath(paths.root), clock)),
    clock,
    positiveMin: async (store) => {
      if (config.data.positiveMin !== null) return config.data.positiveMin;
      const recorded = await store.getMeta("positive_min");
      return recorded === null ? null : Number(recorded);
    },
  };
}

/**
 * Opens one of the deployment's stores; a failure (the server unreachable, a wrong password or database) says that
 * the database is the config's `store.url`, so the user knows which setting to check. The error's code is kept.
 */
async function onDeployment<T>(open: () => Promise<T>): Promise<T> {
  try {
    return await open();
  } catch (error) {
    if (!(error instanceof FreshrecError)) throw error;
    throw new FreshrecError(error.code, `${error.message} (the database of store.url: check it, and that the server accepts connections from here)`, { cause: error });
  }
}

/**
 * The refusal of a part that works on the embedded workspace's files only (`openEvents`, `openTables`: `serve` and
 * `serve --schedule` over events.duckdb and tables.sqlite) when the config names a PostgreSQL store: every command runs
 * on store.url (issue 19), each opening the deployment's stores through the contracts, so reaching this is a fault of
 * freshrec's, said as such instead of reading a workspace file that is not the deployment's state.
 */
export function embeddedOnly(url: string, file: string): FreshrecError {
  return new FreshrecError(
    "INTERNAL",
    `the workspace's ${file} was to be opened while store.url names the deployment's database (${redactedUrl(url)}): every command runs on store.url, so this is a bug in freshrec (please report it with the command you ran); remove store.url from the config to work on the workspace's files meanwhile`,
  );
}

/** The result of a command: the JSON object and, for people, the text to print instead. */
export interface CommandResult {
  readonly json: object;
  readonly text: string;
  /** 0 by default; 1 for a failed run (a halted gate). */
  readonly exitCode?: 0 | 1;
}

let interrupt: AbortController | null = null;

function interruptSignal(): AbortSignal {
  if (interrupt) return interrupt.signal;
  const controller = new AbortController();
  interrupt = controller;
  const onSignal = (name: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(130);
    process.stderr.write(`freshrec: ${name}: stopping (again to exit at once)\n`);
    controller.abort(new FreshrecError("CANCELLED", `interrupted by ${name}`));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  return controller.signal;
}
