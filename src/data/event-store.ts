/**
 * The event store: a DuckDB database in the workspace holding clusters, items, users and events in the generic
 * schema of README.md "Data" (docs/architecture.md places it). Ids are the user's strings; dense integer keys sit beside them so that mining (window
 * functions over millions of events) sorts and joins integers, not strings.
 *
 * Appending is idempotent and atomic: an event is identified by (user, item, ts), a re-ingested file adds nothing
 * twice, and one `append` call commits clusters, items and events together or not at all.
 *
 * The contract both stores keep is `EventStoreContract` below; `EventStore` is its DuckDB adapter (the embedded
 * workspace) and `PostgresEventStore` (./postgres-event-store.ts) its PostgreSQL one (`store.url`, shared by processes
 * and hosts). Both run the conformance suite in test/data/event-store-conformance.ts.
 *
 * @example
 * const store = await EventStore.open(".freshrec/events.duckdb");
 * await store.append({ clusters, items, events: EventColumns.fromEvents(list) });
 * const counts = await store.counts();
 */
import { existsSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import {
  listValue,
  DuckDBConnection,
  DuckDBDataChunk,
  DuckDBInstance,
  FLOAT,
  INTEGER,
  BIGINT,
  VARCHAR,
  type DuckDBType,
  type DuckDBValue,
} from "@duckdb/node-api";
import type { Cluster, EngagementEvent, Item } from "../domain/types.js";
import { BadInputError, FreshrecError } from "../domain/errors.js";
import { INTAKE_BUFFER, IntakeBuffer, MOVED_SEQ_KEY, intakeBufferPath, quoteIdentifier, quoteLiteral, unmovedIntakeRows } from "./intake-buffer.js";

/** A block of events in columns; user and item are indexes into the batch's dictionaries. */
export interface EventChunk {
  readonly length: number;
  readonly userIndex: Int32Array;
  readonly itemIndex: Int32Array;
  /** Epoch milliseconds. */
  readonly ts: Float64Array;
  /** NaN means "no engagement value" (the event counts as engaged). */
  readonly engagement: Float32Array;
}

/** Events to append: two dictionaries and chunks that index into them. */
export interface EventBatch {
  readonly userIds: readonly string[];
  readonly itemIds: readonly string[];
  readonly chunks: Iterable<EventChunk> | AsyncIterable<EventChunk>;
}

export interface AppendRequest {
  readonly clusters?: readonly Cluster[];
  readonly items?: readonly Item[];
  readonly events?: EventBatch;
  /** Dataset facts kept with the data (for example the engagement threshold that means "positive"). */
  readonly meta?: Readonly<Record<string, string>>;
  /**
   * Facts that name the dataset (a dataset adapter's name and options), recorded like `meta`. One store holds one
   * dataset: when the store holds events or items and its recorded identity differs (or it has none: other data), the
   * append is refused before anything is written, naming the difference. Two synthetic worlds share user ids, and a second
   * dataset would also overwrite the first's positive threshold, so a merge would silently corrupt both.
   */
  readonly identity?: Readonly<Record<string, string>>;
}

export interface AppendResult {
  readonly clustersAdded: number;
  readonly itemsAdded: number;
  readonly eventsAdded: number;
  /** Events already in the store or repeated within the batch. */
  readonly skippedDuplicates: number;
}

export interface StoreCounts {
  readonly events: number;
  readonly items: number;
  readonly clusters: number;
  readonly users: number;
  /** Epoch ms of the first and last event; null when empty. */
  readonly firstTs: number | null;
  readonly lastTs: number | null;
}


/** A query parameter either store binds: numbers as DOUBLE, bigints as BIGINT, string lists as lists (arrays). */
export type SqlParam = string | number | bigint | boolean | null | readonly string[];

/** The SQL a store speaks; mining writes one query per dialect where DuckDB and PostgreSQL disagree. */
export type SqlDialect = "duckdb" | "postgres";

/** A result read by columns (mining reads millions of rows, and building objects row by row costs more than the query). */
export interface QueryColumns {
  readonly rowCount: number;
  /** One array per selected column, in order; empty when there are no rows. */
  readonly columns: readonly (readonly unknown[])[];
}

/**
 * The event store contract: the catalog (clusters, items), users and events in the generic schema, with
 * idempotent atomic appends and SQL reads. Adapters: `EventStore` (DuckDB) and `PostgresEventStore`. Queries name
 * parameters as `$name`; results give INTEGER as number, BIGINT as bigint, TIMESTAMP as a UTC Date.
 */
export interface EventStoreContract {
  readonly dialect: SqlDialect;
  /** Where the store lives, for messages: a file path, or a PostgreSQL URL without its password. */
  readonly location: string;
  close(): void | Promise<void>;
  query<Row = Record<string, unknown>>(sql: string, params?: Readonly<Record<string, SqlParam>>): Promise<Row[]>;
  queryColumns(sql: string, params?: Readonly<Record<string, SqlParam>>): Promise<QueryColumns>;
  counts(): Promise<StoreCounts>;
  clusters(): Promise<Cluster[]>;
  titledItems(limit: number): Promise<Item[]>;
  itemClusters(): Promise<Map<string, string>>;
  getMeta(key: string): Promise<string | null>;
  append(request: AppendRequest): Promise<AppendResult>;
  checkIdentity(identity: Readonly<Record<string, string>>): Promise<void>;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS clusters (cluster_key INTEGER PRIMARY KEY, cluster_id VARCHAR NOT NULL UNIQUE, description VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS items (item_key INTEGER PRIMARY KEY, item_id VARCHAR NOT NULL UNIQUE, cluster_key INTEGER NOT NULL, title VARCHAR);
CREATE TABLE IF NOT EXISTS users (user_key INTEGER PRIMARY KEY, user_id VARCHAR NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS events (user_key INTEGER NOT NULL, item_key INTEGER NOT NULL, ts TIMESTAMP NOT NULL, engagement FLOAT);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
`;

/** Rows per appender chunk: DuckDB's vector size. */
const CHUNK_ROWS = 2048;

/** Appends `rows` (columns of `types`, in order) to `table` on `connection`, one appender chunk at a time. */
export async function appendChunks(connection: DuckDBConnection, table: string, types: DuckDBType[], rows: readonly (readonly DuckDBValue[])[]): Promise<void> {
  const appender = await connection.createAppender(table);
  for (let start = 0; start < rows.length; start += CHUNK_ROWS) {
    const slice = rows.slice(start, start + CHUNK_ROWS);
    const chunk = DuckDBDataChunk.create(types, slice.length);
    for (let col = 0; col < types.length; col++) chunk.setColumnValues(col, slice.map((r) => r[col]));
    appender.appendDataChunk(chunk);
  }
  appender.closeSync();
}

/**
 * Another process holds the event store's file (DuckDB opens a file to write in one process at a time, and no reader
 * beside such a writer). That is how the commands were run, not a fault of the store, so it is bad usage, with what to
 * do instead. `holderPid` is the holder's process id as DuckDB reports it.
 */
export class EventStoreBusyError extends FreshrecError {
  override name = "EventStoreBusyError";
  constructor(
    readonly path: string,
    readonly holderPid: number,
    holderProgram: string,
    options?: { cause?: unknown },
  ) {
    super(
      "BAD_INPUT",
      `the event store ${path} is in use by another process (PID ${holderPid}, ${holderProgram}): DuckDB opens it in one process at a time. ` +
        "Stop that process first; or, while it is freshrec serve, run the update loop inside it (serve --schedule) and send events to its POST /v1/events; " +
        "or put the stores on PostgreSQL (store.url) so that several processes share them",
      options,
    );
  }
}

/** Opens the DuckDB database at `path`; a file another process holds is an EventStoreBusyError naming that process. */
async function openInstance(path: string, options: Record<string, string>): Promise<DuckDBInstance> {
  try {
    return await DuckDBInstance.create(path, options);
  } catch (error) {
    const message = (error as Error).message;
    // Most often `freshrec serve`, which holds the store while it runs.
    const holder = /Could not set lock on file[\s\S]*?Conflicting lock is held in (.*?) \(PID (\d+)\)/.exec(message);
    if (holder) throw new EventStoreBusyError(path, Number(holder[2]), holder[1], { cause: error });
    throw new FreshrecError("INTERNAL", `cannot open the event store ${path}: ${message}`, { cause: error });
  }
}

export class EventStore implements EventStoreContract {
  readonly dialect = "duckdb" as const;

  private closed = false;
  private buffer: IntakeBuffer | null = null;
  private attaching: Promise<IntakeBuffer> | null = null;
  /**
   * Counts the appends that added users: the intake buffer numbers its new users after every key it read, and reads
   * them again when this changes.
   */
  usersAdded = 0;

  private constructor(
    private readonly instance: DuckDBInstance,
    readonly connection: DuckDBConnection,
    readonly path: string,
  ) {}

  /**
   * Opens (creating if needed) the store at `path`; ":memory:" gives a throwaway store. An intake buffer left beside
   * it (./intake-buffer.ts: a server that stopped without moving it, or crashed) is moved into it first, so every
   * command sees the events a server acknowledged.
   */
  static async open(path: string): Promise<EventStore> {
    if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
    const instance = await openInstance(path, {});
    const connection = await instance.connect();
    const store = new EventStore(instance, connection, path);
    try {
      await connection.run(SCHEMA);
      const buffered = intakeBufferPath(path);
      if (buffered !== null && existsSync(buffered)) {
        const buffer = await store.intakeBuffer();
        try {
          await buffer.drain();
        } catch (error) {
          // What the move ran into, without the mover's "retried": nothing retries it here.
          const reason = ((error as Error).cause as Error | undefined)?.message ?? (error as Error).message;
          throw new FreshrecError(
            "INTERNAL",
            `the intake buffer ${buffered} holds rows a server acknowledged that cannot be moved into the event store ${path} (nothing was moved, the store is not opened): ${reason}. ` +
              `To open the store without them, move ${buffered} aside (its rows stay in it)`,
            { cause: error },
          );
        }
      }
    } catch (error) {
      store.close();
      throw error;
    }
    return store;
  }

  /**
   * The intake buffer beside this store (./intake-buffer.ts), attached (its file created) on the first call. Only
   * a store opened to write has one.
   */
  async intakeBuffer(): Promise<IntakeBuffer> {
    if (this.buffer) return this.buffer;
    this.attaching ??= IntakeBuffer.attach(this.instance, this.path).then((buffer) => (this.buffer = buffer));
    return this.attaching;
  }

  /** Moves what the intake buffer holds into this store (nothing to do without one). */
  async drainIntake(): Promise<void> {
    if (this.buffer?.pending) await this.buffer.drain();
  }

  /**
   * Opens the store at `path` for reading only: any number of readers open a file at once, but none beside a process
   * that opened it to write (`open`); see ./event-store-share.ts for reading through such a holder. The store is not
   * created: a missing file is bad input. Its appends fail (DuckDB refuses writes to a read-only database).
   * @throws EventStoreBusyError when another process holds the file to write.
   */
  static async openReadOnly(path: string): Promise<EventStore> {
    if (!existsSync(path)) throw new BadInputError(`there is no event store at ${path}: run freshrec ingest or freshrec synth first`);
    const instance = await openInstance(path, { access_mode: "READ_ONLY" });
    const store = new EventStore(instance, await instance.connect(), path);
    try {
      await store.refuseUnmovedIntake();
    } catch (error) {
      store.close();
      throw error;
    }
    return store;
  }

  /**
   * A reader cannot move an intake buffer (it may not write): when one holds rows the store does not, what it would
   * read lacks events a server acknowledged, so it is refused, saying how to move them. An empty one stays attached
   * (read-only), so that `verify` reads it too.
   * @throws BadInputError naming the buffer file; FreshrecError naming it when it cannot be read.
   */
  private async refuseUnmovedIntake(): Promise<void> {
    const buffered = intakeBufferPath(this.path);
    if (buffered === null || !existsSync(buffered)) return;
    let attached = false;
    try {
      await this.connection.run(`ATTACH ${quoteLiteral(buffered)} AS ${INTAKE_BUFFER} (READ_ONLY)`);
      attached = true;
      const [recorded] = await this.queryHere<{ value: string }>("SELECT value FROM meta WHERE key = $key", { key: MOVED_SEQ_KEY });
      const rows = await unmovedIntakeRows(this.connection, Number(recorded?.value ?? 0));
      if (rows > 0) {
        throw new BadInputError(
          `the intake buffer ${buffered} holds ${rows} rows a server acknowledged that the event store ${this.path} does not hold yet (the server stopped without moving them): ` +
            "run a command that opens the store to write (freshrec serve, ingest or refresh), which moves them first, then read again",
        );
      }
    } catch (error) {
      if (attached) await this.connection.run(`DETACH ${INTAKE_BUFFER}`);
      if (error instanceof BadInputError) throw error;
      throw new FreshrecError("INTERNAL", `cannot read the intake buffer ${buffered} of the event store ${this.path}: ${(error as Error).message}`, { cause: error });
    }
  }

  /**
   * A new connection to this store's database, for reads that must not share the main connection's transactions
   * (./event-store-share.ts answers other processes' reads on one each). The caller closes it.
   */
  async connectReader(): Promise<DuckDBConnection> {
    return this.instance.connect();
  }

  get location(): string {
    return this.path;
  }

  /**
   * Checks a DuckDB event store without changing it (`freshrec doctor`): reads every column of every table, which makes
   * DuckDB verify the checksum of each block it reads; a plain count is answered from metadata and would pass a store
   * whose data blocks are damaged. `store` is the file opened read-only, or read through the process that holds it
   * (./event-store-share.ts), whose DuckDB then reads the blocks (those it holds in memory already are not read again).
   * @returns rows per table.
   * @throws FreshrecError naming the store and what DuckDB said.
   */
  static async verify(store: EventStoreContract): Promise<Record<string, number>> {
    if (store.dialect !== "duckdb") throw new FreshrecError("INTERNAL", `EventStore.verify checks DuckDB stores, not ${store.location}`);
    try {
      // Every database attached: the store's own, and the intake buffer beside it when the holder has it attached.
      const tables = await store.query<{ database_name: string; schema_name: string; table_name: string; own: boolean }>(
        "SELECT database_name, schema_name, table_name, database_name = current_database() AS own FROM duckdb_tables() WHERE NOT temporary ORDER BY NOT own, database_name, table_name",
      );
      const rows: Record<string, number> = {};
      for (const { database_name: database, schema_name: schema, table_name: name, own } of tables) {
        const [row] = await store.query<{ n: bigint }>(`SELECT count(*) AS n, sum(hash(COLUMNS(*))) FROM ${quoteIdentifier(database)}.${quoteIdentifier(schema)}.${quoteIdentifier(name)}`);
        rows[own ? name : `${database}.${name}`] = Number(row.n);
      }
      return rows;
    } catch (error) {
      throw new FreshrecError("INTERNAL", `event store ${store.location}: ${(error as Error).message}`, { cause: error });
    }
  }

  /**
   * Stops the intake buffer's mover, after the move or checkpoint it runs now, and closes the buffer's connections
   * (nothing to do without one). Whoever may have a move running (a server, whose mover moves on a timer) awaits it
   * before `close`; drain first (`drainIntake`) to leave nothing buffered.
   */
  async closeIntake(): Promise<void> {
    const buffer = this.buffer ?? (this.attaching ? await this.attaching.catch(() => null) : null);
    await buffer?.close();
  }

  /**
   * Closes the store, and its intake buffer's connections at once: when a move may be running, `closeIntake` first
   * (closing a connection under a running statement leaves it unsettled for good).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.buffer?.closeNow();
    this.connection.closeSync();
    this.instance.closeSync();
  }

  /**
   * Runs a query and returns its rows as plain JS objects (BIGINT as bigint, TIMESTAMP as Date). A JS array
   * parameter is bound as a DuckDB list.
   */
  async query<Row = Record<string, unknown>>(sql: string, params?: Readonly<Record<string, DuckDBValue | SqlParam>>): Promise<Row[]> {
    await this.drainIntake();
    return this.queryHere(sql, params);
  }

  /** `query` without moving the intake buffer first: inside `append`'s transaction, whose snapshot a move would miss. */
  private async queryHere<Row = Record<string, unknown>>(sql: string, params?: Readonly<Record<string, DuckDBValue | SqlParam>>): Promise<Row[]> {
    try {
      const reader = await this.connection.runAndReadAll(sql, duckdbParams(params));
      return reader.getRowObjectsJS() as Row[];
    } catch (error) {
      throw new FreshrecError("INTERNAL", `event store query failed: ${(error as Error).message}\n${sql}`, { cause: error });
    }
  }

  async queryColumns(sql: string, params?: Readonly<Record<string, DuckDBValue | SqlParam>>): Promise<QueryColumns> {
    await this.drainIntake();
    try {
      const reader = await this.connection.runAndReadAll(sql, duckdbParams(params));
      // An empty result has no column vectors at all.
      const rowCount = reader.currentRowCount;
      return { rowCount, columns: rowCount === 0 ? [] : reader.getColumns() };
    } catch (error) {
      throw new FreshrecError("INTERNAL", `event store query failed: ${(error as Error).message}\n${sql}`, { cause: error });
    }
  }

  async counts(): Promise<StoreCounts> {
    return readCounts(this);
  }

  async clusters(): Promise<Cluster[]> {
    return readClusters(this);
  }

  /** Items that have a title, most engaged first (the catalog text a base model learns from). */
  async titledItems(limit: number): Promise<Item[]> {
    return readTitledItems(this, limit);
  }

  /** Item ids already known, mapped to their cluster ids (for validating events against the catalog). */
  async itemClusters(): Promise<Map<string, string>> {
    return readItemClusters(this);
  }

  async getMeta(key: string): Promise<string | null> {
    return readMeta(this, key);
  }

  /**
   * Appends clusters, items and events in one transaction. Clusters and items are upserted by id (a changed
   * description, cluster or title replaces the old one); events are inserted unless (user, item, ts) exists.
   */
  async append(request: AppendRequest): Promise<AppendResult> {
    const c = this.connection;
    if (request.identity) await this.checkIdentity(request.identity);
    // New users are numbered after the largest key here: the buffered users must be here first.
    await this.drainIntake();
    await c.run("BEGIN TRANSACTION");
    try {
      const clustersAdded = request.clusters?.length ? await this.upsertClusters(request.clusters) : 0;
      const itemsAdded = request.items?.length ? await this.upsertItems(request.items) : 0;
      let eventsAdded = 0;
      let skippedDuplicates = 0;
      if (request.events) ({ eventsAdded, skippedDuplicates } = await this.insertEvents(request.events));
      for (const [key, value] of Object.entries({ ...request.meta, ...request.identity })) {
        await c.run("INSERT OR REPLACE INTO meta VALUES ($key, $value)", { key, value });
      }
      await c.run("COMMIT");
      if (request.events?.userIds.length) this.usersAdded++;
      return { clustersAdded, itemsAdded, eventsAdded, skippedDuplicates };
    } catch (error) {
      await c.run("ROLLBACK");
      throw error instanceof FreshrecError
        ? error
        : new FreshrecError("INTERNAL", `appending to the event store failed, nothing was written: ${(error as Error).message}`, { cause: error });
    } finally {
      await c.run("DROP TABLE IF EXISTS stage_clusters; DROP TABLE IF EXISTS stage_items; DROP TABLE IF EXISTS stage_users; DROP TABLE IF EXISTS stage_item_dict; DROP TABLE IF EXISTS stage_events;");
    }
  }

  /**
   * Checks that an append naming `identity` (see AppendRequest.identity) may go into this store; `append` checks it
   * too, callers call it first to fail before long work (generating a synthetic world).
   * @throws BadInputError when the store holds events of another dataset, or of this one with other settings.
   */
  async checkIdentity(identity: Readonly<Record<string, string>>): Promise<void> {
    return checkStoreIdentity(this, identity);
  }

  private async upsertClusters(clusters: readonly Cluster[]): Promise<number> {
    const c = this.connection;
    await c.run("CREATE OR REPLACE TEMP TABLE stage_clusters (pos INTEGER, cluster_id VARCHAR, description VARCHAR)");
    await this.appendRows("stage_clusters", [INTEGER, VARCHAR, VARCHAR], clusters.map((cl, i) => [i, cl.id, cl.description]));
    await c.run(`UPDATE clusters SET description = s.description FROM stage_clusters s
                 WHERE clusters.cluster_id = s.cluster_id AND clusters.description <> s.description`);
    const before = await this.scalar("SELECT count(*) FROM clusters");
    await c.run(`INSERT INTO clusters
      SELECT (SELECT coalesce(max(cluster_key), 0) FROM clusters) + row_number() OVER (ORDER BY pos), cluster_id, description
      FROM stage_clusters s WHERE NOT EXISTS (SELECT 1 FROM clusters c WHERE c.cluster_id = s.cluster_id)`);
    return (await this.scalar("SELECT count(*) FROM clusters")) - before;
  }

  private async upsertItems(items: readonly Item[]): Promise<number> {
    const c = this.connection;
    await c.run("CREATE OR REPLACE TEMP TABLE stage_items (pos INTEGER, item_id VARCHAR, cluster_id VARCHAR, title VARCHAR)");
    await this.appendRows("stage_items", [INTEGER, VARCHAR, VARCHAR, VARCHAR], items.map((it, i) => [i, it.id, it.clusterId, it.title ?? null]));
    const unknown = await this.queryHere<{ cluster_id: string; item_id: string }>(
      `SELECT s.cluster_id, s.item_id FROM stage_items s LEFT JOIN clusters c USING (cluster_id) WHERE c.cluster_key IS NULL LIMIT 1`,
    );
    if (unknown.length) {
      throw new FreshrecError("BAD_INPUT", `item ${unknown[0].item_id} names cluster ${unknown[0].cluster_id}, which is not in the catalog`);
    }
    await c.run(`UPDATE items SET cluster_key = c.cluster_key, title = coalesce(s.title, items.title)
                 FROM stage_items s JOIN clusters c USING (cluster_id)
                 WHERE items.item_id = s.item_id AND (items.cluster_key <> c.cluster_key OR items.title IS DISTINCT FROM coalesce(s.title, items.title))`);
    const before = await this.scalar("SELECT count(*) FROM items");
    await c.run(`INSERT INTO items
      SELECT (SELECT coalesce(max(item_key), 0) FROM items) + row_number() OVER (ORDER BY s.pos), s.item_id, c.cluster_key, s.title
      FROM stage_items s JOIN clusters c USING (cluster_id)
      WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.item_id = s.item_id)`);
    return (await this.scalar("SELECT count(*) FROM items")) - before;
  }

  private async insertEvents(batch: EventBatch): Promise<{ eventsAdded: number; skippedDuplicates: number }> {
    const c = this.connection;
    await c.run("CREATE OR REPLACE TEMP TABLE stage_users (idx INTEGER, user_id VARCHAR)");
    await this.appendRows("stage_users", [INTEGER, VARCHAR], batch.userIds.map((id, i) => [i, id]));
    await c.run(`INSERT INTO users
      SELECT (SELECT coalesce(max(user_key), 0) FROM users) + row_number() OVER (ORDER BY idx), user_id
      FROM stage_users s WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = s.user_id)`);
    await c.run("CREATE OR REPLACE TEMP TABLE stage_item_dict (idx INTEGER, item_id VARCHAR)");
    await this.appendRows("stage_item_dict", [INTEGER, VARCHAR], batch.itemIds.map((id, i) => [i, id]));
    const missing = await this.queryHere<{ item_id: string }>(
      "SELECT d.item_id FROM stage_item_dict d LEFT JOIN items i USING (item_id) WHERE i.item_key IS NULL LIMIT 1",
    );
    if (missing.length) throw new FreshrecError("BAD_INPUT", `events name item ${missing[0].item_id}, which is not in the catalog`);

    await c.run("CREATE OR REPLACE TEMP TABLE stage_events (u INTEGER, i INTEGER, ts BIGINT, e FLOAT)");
    const appender = await c.createAppender("stage_events");
    let staged = 0;
    const types: DuckDBType[] = [INTEGER, INTEGER, BIGINT, FLOAT];
    for await (const chunk of batch.chunks) {
      for (let start = 0; start < chunk.length; start += CHUNK_ROWS) {
        const n = Math.min(CHUNK_ROWS, chunk.length - start);
        const users = new Array<number>(n);
        const items = new Array<number>(n);
        const ts = new Array<bigint>(n);
        const eng = new Array<number | null>(n);
        for (let k = 0; k < n; k++) {
          users[k] = chunk.userIndex[start + k];
          items[k] = chunk.itemIndex[start + k];
          ts[k] = BigInt(Math.round(chunk.ts[start + k]));
          const e = chunk.engagement[start + k];
          eng[k] = Number.isNaN(e) ? null : e;
        }
        const dataChunk = DuckDBDataChunk.create(types, n);
        dataChunk.setColumnValues(0, users);
        dataChunk.setColumnValues(1, items);
        dataChunk.setColumnValues(2, ts);
        dataChunk.setColumnValues(3, eng);
        appender.appendDataChunk(dataChunk);
      }
      staged += chunk.length;
    }
    appender.closeSync();

    const before = await this.scalar("SELECT count(*) FROM events");
    // An event's identity is (user, item, ts); the first engagement value seen for it wins.
    await c.run(`INSERT INTO events
      SELECT n.user_key, n.item_key, n.ts, n.engagement FROM (
        SELECT u.user_key, it.item_key, epoch_ms(s.ts) AS ts, first(s.e) AS engagement
        FROM stage_events s
        JOIN stage_users su ON su.idx = s.u JOIN users u ON u.user_id = su.user_id
        JOIN stage_item_dict si ON si.idx = s.i JOIN items it ON it.item_id = si.item_id
        GROUP BY ALL
      ) n
      ANTI JOIN events e ON e.user_key = n.user_key AND e.item_key = n.item_key AND e.ts = n.ts`);
    const eventsAdded = (await this.scalar("SELECT count(*) FROM events")) - before;
    return { eventsAdded, skippedDuplicates: staged - eventsAdded };
  }

  private async appendRows(table: string, types: DuckDBType[], rows: readonly (readonly DuckDBValue[])[]): Promise<void> {
    await appendChunks(this.connection, table, types, rows);
  }

  private async scalar(sql: string): Promise<number> {
    const reader = await this.connection.runAndReadAll(sql);
    return Number(reader.getRows()[0][0]);
  }
}

/*
 * The reads both adapters answer with the same SQL (PostgreSQL gets DuckDB's epoch_ms as functions of its schema).
 */

export async function readCounts(store: EventStoreContract): Promise<StoreCounts> {
  const [row] = await store.query<{ events: bigint; items: bigint; clusters: bigint; users: bigint; first: number | bigint | null; last: number | bigint | null }>(`
    SELECT (SELECT count(*) FROM events) AS events, (SELECT count(*) FROM items) AS items,
           (SELECT count(*) FROM clusters) AS clusters, (SELECT count(*) FROM users) AS users,
           (SELECT epoch_ms(min(ts)) FROM events) AS first, (SELECT epoch_ms(max(ts)) FROM events) AS last`);
  return {
    events: Number(row.events),
    items: Number(row.items),
    clusters: Number(row.clusters),
    users: Number(row.users),
    firstTs: row.first === null ? null : Number(row.first),
    lastTs: row.last === null ? null : Number(row.last),
  };
}

export async function readClusters(store: EventStoreContract): Promise<Cluster[]> {
  const rows = await store.query<{ cluster_id: string; description: string }>("SELECT cluster_id, description FROM clusters ORDER BY cluster_key");
  return rows.map((r) => ({ id: r.cluster_id, description: r.description }));
}

export async function readTitledItems(store: EventStoreContract, limit: number): Promise<Item[]> {
  const rows = await store.query<{ item_id: string; cluster_id: string; title: string }>(
    `SELECT i.item_id, c.cluster_id, i.title FROM items i JOIN clusters c USING (cluster_key)
     LEFT JOIN (SELECT item_key, count(*) AS n FROM events GROUP BY item_key) e USING (item_key)
     WHERE i.title IS NOT NULL AND trim(i.title) <> ''
     ORDER BY coalesce(e.n, 0) DESC, i.item_key LIMIT $limit`,
    { limit },
  );
  return rows.map((r) => ({ id: r.item_id, clusterId: r.cluster_id, title: r.title }));
}

export async function readItemClusters(store: EventStoreContract): Promise<Map<string, string>> {
  const rows = await store.query<{ item_id: string; cluster_id: string }>("SELECT i.item_id, c.cluster_id FROM items i JOIN clusters c USING (cluster_key)");
  return new Map(rows.map((r) => [r.item_id, r.cluster_id]));
}

export async function readMeta(store: EventStoreContract, key: string): Promise<string | null> {
  const rows = await store.query<{ value: string }>("SELECT value FROM meta WHERE key = $key", { key });
  return rows[0]?.value ?? null;
}

/**
 * Checks that an append naming `identity` (see AppendRequest.identity) may go into `store`.
 * @throws BadInputError when the store holds events of another dataset, or of this one with other settings.
 */
export async function checkStoreIdentity(store: EventStoreContract, identity: Readonly<Record<string, string>>): Promise<void> {
  const { events, items } = await store.counts();
  // A catalog without events is data too: another dataset's items would be merged into it.
  if (events === 0 && items === 0) return;
  const name = identity.dataset ?? "this dataset";
  const differences: string[] = [];
  let sameDataset = true;
  for (const [key, value] of Object.entries(identity)) {
    const recorded = await store.getMeta(key);
    if (recorded === value) continue;
    const difference = recorded === null ? `${key} is not recorded (the store holds other data)` : describeDifference(key, recorded, value);
    if (difference === null) continue;
    if (key === "dataset") sameDataset = false;
    differences.push(difference);
  }
  if (differences.length === 0) return;
  const what = sameDataset ? `of the ${name} dataset with other settings` : `of another dataset than ${name}`;
  throw new BadInputError(
    `the event store ${store.location} already holds ${events} events and ${items} items ${what}: ${differences.join("; ")}. One event store holds one dataset (a merge would mix their users and positive thresholds): use another --workspace, or delete the workspace to start over`,
  );
}

function duckdbParams(params: Readonly<Record<string, DuckDBValue | SqlParam>> | undefined): Record<string, DuckDBValue> | undefined {
  if (!params) return undefined;
  const out: Record<string, DuckDBValue> = {};
  for (const [key, value] of Object.entries(params)) out[key] = Array.isArray(value) ? listValue([...(value as readonly string[])]) : (value as DuckDBValue);
  return out;
}

/** Builds an EventBatch from plain events (tests, the HTTP intake, small files). */
export function eventBatchFromEvents(events: readonly EngagementEvent[]): EventBatch {
  const users = new Map<string, number>();
  const items = new Map<string, number>();
  const chunk = {
    length: events.length,
    userIndex: new Int32Array(events.length),
    itemIndex: new Int32Array(events.length),
    ts: new Float64Array(events.length),
    engagement: new Float32Array(events.length),
  };
  events.forEach((e, k) => {
    chunk.userIndex[k] = dictionaryIndex(users, e.userId);
    chunk.itemIndex[k] = dictionaryIndex(items, e.itemId);
    chunk.ts[k] = e.ts;
    chunk.engagement[k] = e.engagement ?? Number.NaN;
  });
  return { userIds: [...users.keys()], itemIds: [...items.keys()], chunks: [chunk] };
}

export function dictionaryIndex(dictionary: Map<string, number>, id: string): number {
  let index = dictionary.get(id);
  if (index === undefined) {
    index = dictionary.size;
    dictionary.set(id, index);
  }
  return index;
}

/**
 * `key: recorded -> requested`, per field when both are JSON objects (the synthetic world's options); null when they
 * are the same object written in another key order. A field the request leaves out is not compared: it does not
 * name the data (stores written before batchSize left the identity recorded it).
 */
function describeDifference(key: string, recorded: string, requested: string): string | null {
  const parse = (text: string): Record<string, unknown> | null => {
    try {
      const value: unknown = JSON.parse(text);
      return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  };
  const [a, b] = [parse(recorded), parse(requested)];
  if (!a || !b) return `${key} ${JSON.stringify(recorded)} here, ${JSON.stringify(requested)} requested`;
  const fields = Object.keys(b).filter((f) => JSON.stringify(a[f]) !== JSON.stringify(b[f]));
  if (fields.length === 0) return null;
  return `${key} differ in ${fields.map((f) => `${f} (${JSON.stringify(a[f])} here, ${JSON.stringify(b[f])} requested)`).join(", ")}`;
}
