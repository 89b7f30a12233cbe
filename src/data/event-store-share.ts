/**
 * Reading the workspace's event store while another freshrec process holds it. DuckDB opens a file to write in one
 * process at a time and lets no other process open it meanwhile, not even to read; `freshrec serve` holds
 * events.duckdb for its whole life (intake appends to it, experiments log to it, `--schedule` refreshes from it). So
 * the holder shares its store for reading: it answers other processes' SELECTs on its own DuckDB instance, and a
 * read-only command (`analyze drift`) that finds the file held reads through it. A reader then sees exactly what the
 * holder has committed, every event intake acknowledged included (the holder moves its intake buffer, ./intake-buffer.ts,
 * into the store before each read), as the holder's own queries do.
 *
 * - The holders are the commands that hold the store for their whole life, `freshrec serve` and the `freshrec schedule
 *   run` worker; each shares it through `EventStoreShare.startFor` as soon as it has opened the store, and closes the
 *   share before the store.
 * - The holder (`EventStoreShare.start`) listens on loopback only, on a free port, and writes `<store>.share` (JSON:
 *   its PID, the command it runs, the port and a random token) with mode 0600: whoever can read that file is the workspace's owner, who
 *   can open the store's file anyway. Each request carries the token; each statement runs on a connection of its own
 *   and must be exactly one SELECT (DuckDB's own parse says so), so a reader cannot write through the share.
 * - A reader (`openEventStoreReader`) opens the file read-only when no process holds it to write (readers run beside
 *   each other), and reads through the holder only when the holder named by DuckDB's lock is the process the share
 *   file names: a share file left by a holder that was killed is never used, and a holder that does not share (an
 *   `ingest` that runs) refuses the reader as before, naming it.
 * - The analysis runs in the holder's process (its DuckDB threads and memory, beside the requests it serves); the
 *   holder's writers are never blocked by a reader (DuckDB reads a snapshot).
 *
 * @example
 * const share = await EventStoreShare.startFor(store, "freshrec serve"); // in the holder
 * const { store, heldBy, holder } = await openEventStoreReader(".freshrec/events.duckdb"); // in a reader
 * await share.close();
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { DuckDBListValue, DuckDBTimestampValue, StatementType, listValue, type DuckDBConnection, type DuckDBValue } from "@duckdb/node-api";
import { FreshrecError } from "../domain/errors.js";
import type { Cluster, Item } from "../domain/types.js";
import {
  EventStore,
  EventStoreBusyError,
  checkStoreIdentity,
  readClusters,
  readCounts,
  readItemClusters,
  readMeta,
  readTitledItems,
  type AppendResult,
  type EventStoreContract,
  type QueryColumns,
  type SqlParam,
  type StoreCounts,
} from "./event-store.js";

/** Where the holder of the store at `storePath` says how to reach it. */
export function shareFilePath(storePath: string): string {
  return `${storePath}.share`;
}

/** What the share file holds. */
interface ShareFile {
  readonly pid: number;
  /** The command the holder runs ("freshrec serve"), for a reader to say what it read through. */
  readonly holder?: string;
  readonly port: number;
  readonly token: string;
}

/** A read as it travels: the statement, its parameters, and whether the answer is rows (`query`) or columns. */
interface ShareRequest {
  readonly sql: string;
  readonly params: Record<string, unknown>;
  readonly shape: "rows" | "columns";
}

/** The answer: column names and one encoded array per column. */
interface ShareAnswer {
  readonly names: string[];
  readonly rowCount: number;
  readonly columns: unknown[][];
}

/**
 * The largest request a holder reads: a statement with its parameters (a list of user ids at most), far below what
 * would strain the holder's memory.
 */
const MAX_REQUEST_BYTES = 64 * 1024 * 1024;

/** The holder's end: answers other processes' reads of `store` until closed. */
export class EventStoreShare {
  /** Connections running a reader's statement, interrupted when the share closes. */
  private readonly running = new Set<DuckDBConnection>();
  /** Answers being given: the share closes only after them, so that no connection outlives the store's instance. */
  private readonly answering = new Set<Promise<void>>();

  private constructor(
    private readonly server: Server,
    private readonly file: string,
  ) {}

  /**
   * Shares the event store a command holds for its whole life (`holder`: "freshrec serve", "freshrec schedule run")
   * when no other process could read it meanwhile: a DuckDB file. Null for any other store (PostgreSQL: every process
   * opens it itself; an in-memory one: nobody else can). Close the share before the store.
   */
  static async startFor(store: EventStoreContract, holder: string): Promise<EventStoreShare | null> {
    return store instanceof EventStore && store.path !== ":memory:" ? EventStoreShare.start(store, holder) : null;
  }

  /** Starts sharing `store` (a file, not ":memory:") and writes its share file, naming the command this process runs. */
  static async start(store: EventStore, holder?: string): Promise<EventStoreShare> {
    const token = randomBytes(32).toString("hex");
    const expected = Buffer.from(`Bearer ${token}`);
    let share: EventStoreShare | null = null;
    const server = createServer((request, response) => {
      const answering = share!.answering;
      const answer = share!
        .answer(store, expected, request, response)
        .catch((error: unknown) => {
          // Not a fault of the reader's statement (that is answered as 400): the holder could not run it at all.
          if (!response.headersSent) response.writeHead(500, { "content-type": "application/json" });
          response.end(JSON.stringify({ error: `the holder could not read its store: ${(error as Error).message}` }));
        })
        .finally(() => answering.delete(answer));
      answering.add(answer);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    share = new EventStoreShare(server, shareFilePath(store.path));
    const content: ShareFile = { pid: process.pid, ...(holder === undefined ? {} : { holder }), port: (server.address() as AddressInfo).port, token };
    // Written whole under another name, then renamed: a reader never reads half a file.
    const temporary = `${share.file}.${process.pid}`;
    try {
      writeFileSync(temporary, JSON.stringify(content), { mode: 0o600 });
      renameSync(temporary, share.file);
    } catch (error) {
      server.close();
      throw new FreshrecError("INTERNAL", `cannot write ${share.file}, which tells readers how to read the event store: ${(error as Error).message}`, { cause: error });
    }
    return share;
  }

  /** Stops answering (a statement still running is interrupted) and removes the share file if it is still this process's. */
  async close(): Promise<void> {
    if (readShareFile(this.file)?.pid === process.pid) rmSync(this.file, { force: true });
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const connection of this.running) connection.interrupt();
    await Promise.allSettled([...this.answering]);
    this.server.closeAllConnections();
    await closed;
  }

  private async answer(store: EventStore, expected: Buffer, request: IncomingMessage, response: ServerResponse): Promise<void> {
    const reply = (status: number, body: unknown) => {
      response.writeHead(status, { "content-type": "application/json" });
      response.end(JSON.stringify(body));
    };
    const given = Buffer.from(request.headers.authorization ?? "");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return reply(401, { error: "this share answers only the token of its share file" });
    if (request.method !== "POST") return reply(405, { error: "POST a read" });
    let read: ShareRequest;
    try {
      read = JSON.parse(await body(request)) as ShareRequest;
    } catch (error) {
      return reply(400, { error: (error as Error).message });
    }
    try {
      // A reader sees every event intake acknowledged, as the holder's own reads do (./intake-buffer.ts).
      await store.drainIntake();
    } catch (error) {
      return reply(500, { error: (error as Error).message });
    }
    const connection = await store.connectReader();
    this.running.add(connection);
    // A reader that goes away (Ctrl-C) stops its statement.
    response.on("close", () => {
      if (!response.writableFinished) connection.interrupt();
    });
    try {
      const statements = await connection.extractStatements(read.sql);
      if (statements.count !== 1) return reply(400, { error: `a reader sends one statement at a time, this text holds ${statements.count}` });
      const prepared = await statements.prepare(0);
      if (prepared.statementType !== StatementType.SELECT) return reply(400, { error: "a reader may only SELECT: the share never writes the store" });
      const params = Object.fromEntries(Object.entries(read.params ?? {}).map(([name, value]) => [name, decodeValue(value, "param") as DuckDBValue]));
      if (Object.keys(params).length) prepared.bind(params);
      const reader = await prepared.runAndReadAll();
      const names = reader.columnNames();
      const columns = reader.currentRowCount === 0 ? [] : read.shape === "rows" ? reader.getColumnsJS() : reader.getColumns();
      const answer: ShareAnswer = { names, rowCount: reader.currentRowCount, columns: columns.map((column) => (column as unknown[]).map(encodeValue)) };
      reply(200, answer);
    } catch (error) {
      reply(400, { error: (error as Error).message });
    } finally {
      this.running.delete(connection);
      connection.closeSync();
    }
  }
}

/**
 * The reader's end: the event store contract over the holder's share, for reading. `append` is refused (the holder
 * writes its store); everything else is answered by the holder's DuckDB, in its dialect.
 */
export class SharedEventStore implements EventStoreContract {
  readonly dialect = "duckdb" as const;

  private constructor(
    readonly location: string,
    /** The process that holds the store and answers its reads. */
    readonly holderPid: number,
    /** The command that process runs, as its share file names it (null: it does not say). */
    readonly holder: string | null,
    private readonly url: string,
    private readonly token: string,
  ) {}

  /** The share of the store at `path` when the process `holderPid` publishes one; null when it does not (or a share file is stale). */
  static connect(path: string, holderPid: number): SharedEventStore | null {
    const share = readShareFile(shareFilePath(path));
    if (share === null || share.pid !== holderPid) return null;
    return new SharedEventStore(path, holderPid, share.holder ?? null, `http://127.0.0.1:${share.port}/`, share.token);
  }

  close(): void {}

  async query<Row = Record<string, unknown>>(sql: string, params?: Readonly<Record<string, SqlParam>>): Promise<Row[]> {
    const answer = await this.read({ sql, params: encodeParams(params), shape: "rows" });
    const columns = answer.columns.map((column) => column.map((value) => decodeValue(value, "rows")));
    const rows: Row[] = [];
    for (let r = 0; r < answer.rowCount; r++) {
      const row: Record<string, unknown> = {};
      answer.names.forEach((name, c) => (row[name] = columns[c][r]));
      rows.push(row as Row);
    }
    return rows;
  }

  async queryColumns(sql: string, params?: Readonly<Record<string, SqlParam>>): Promise<QueryColumns> {
    const answer = await this.read({ sql, params: encodeParams(params), shape: "columns" });
    return { rowCount: answer.rowCount, columns: answer.columns.map((column) => column.map((value) => decodeValue(value, "columns"))) };
  }

  async counts(): Promise<StoreCounts> {
    return readCounts(this);
  }

  async clusters(): Promise<Cluster[]> {
    return readClusters(this);
  }

  async titledItems(limit: number): Promise<Item[]> {
    return readTitledItems(this, limit);
  }

  async itemClusters(): Promise<Map<string, string>> {
    return readItemClusters(this);
  }

  async getMeta(key: string): Promise<string | null> {
    return readMeta(this, key);
  }

  append(): Promise<AppendResult> {
    return Promise.reject(new FreshrecError("BAD_INPUT", `the event store ${this.location} is read here through ${this.holder ?? "the process that holds it"} (PID ${this.holderPid}): appends go to that process`));
  }

  async checkIdentity(identity: Readonly<Record<string, string>>): Promise<void> {
    return checkStoreIdentity(this, identity);
  }

  private async read(request: ShareRequest): Promise<ShareAnswer> {
    const holder = `through ${this.holder ?? "the process that holds it"} (PID ${this.holderPid})`;
    let response: Response;
    try {
      response = await fetch(this.url, { method: "POST", headers: { authorization: `Bearer ${this.token}`, "content-type": "application/json" }, body: JSON.stringify(request) });
    } catch (error) {
      throw new FreshrecError(
        "INTERNAL",
        `reading the event store ${this.location} ${holder} failed: it stopped answering (${((error as Error).cause as Error | undefined)?.message ?? (error as Error).message}); run the command again`,
        { cause: error },
      );
    }
    const answer = (await response.json()) as ShareAnswer & { error?: string };
    if (!response.ok) throw new FreshrecError("INTERNAL", `event store query failed (read ${holder}): ${answer.error ?? response.status}\n${request.sql}`);
    return answer;
  }
}

/** An event store opened for reading, and the process it is read through (both null: the store itself). */
export interface EventStoreReading {
  readonly store: EventStoreContract;
  /** The PID of the process that holds the store and answers its reads. */
  readonly heldBy: number | null;
  /** The command that process runs ("freshrec serve"), as its share file names it. */
  readonly holder: string | null;
}

/**
 * The event store at `path` for a command that only reads it: opened read-only, or, while a process that shares it
 * (freshrec serve, a freshrec schedule run worker) holds it, read through that process.
 * @returns the store, the PID of the process it is read through and the command that process runs (null: the file
 * itself; a holder null when the share file does not name it).
 * @throws EventStoreBusyError when a process that does not share the store holds it; BadInputError when there is none.
 */
export async function openEventStoreReader(path: string): Promise<EventStoreReading> {
  try {
    return { store: await EventStore.openReadOnly(path), heldBy: null, holder: null };
  } catch (error) {
    if (!(error instanceof EventStoreBusyError)) throw error;
    const shared = SharedEventStore.connect(path, error.holderPid);
    if (shared === null) throw error;
    return { store: shared, heldBy: error.holderPid, holder: shared.holder };
  }
}

function readShareFile(file: string): ShareFile | null {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return null;
  }
  try {
    const parsed = JSON.parse(text) as Partial<ShareFile>;
    if (parsed.holder !== undefined && typeof parsed.holder !== "string") return null;
    return typeof parsed.pid === "number" && typeof parsed.port === "number" && typeof parsed.token === "string" ? (parsed as ShareFile) : null;
  } catch {
    return null;
  }
}

async function body(request: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > MAX_REQUEST_BYTES) throw new Error(`a read is at most ${MAX_REQUEST_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function encodeParams(params: Readonly<Record<string, SqlParam>> | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(params ?? {})) out[key] = Array.isArray(value) ? { $: "list", v: value.map(encodeValue) } : encodeValue(value);
  return out;
}

/*
 * Values travel as JSON with what JSON lacks tagged, so a reader gets the very types the holder's query gave (the
 * contract's: INTEGER as number, BIGINT as bigint, TIMESTAMP as a Date in rows and as DuckDB's value in columns). A type
 * mining does not read is refused by name rather than passed on changed.
 */

function encodeValue(value: unknown): unknown {
  switch (typeof value) {
    case "string":
    case "boolean":
      return value;
    case "number":
      return Number.isFinite(value) ? value : { $: "number", v: String(value) };
    case "bigint":
      return { $: "bigint", v: value.toString() };
    case "object":
      if (value === null) return null;
      if (Array.isArray(value)) return value.map(encodeValue);
      if (value instanceof Date) return { $: "date", v: value.getTime() };
      if (value instanceof DuckDBTimestampValue) return { $: "timestamp", v: value.micros.toString() };
      if (value instanceof DuckDBListValue) return { $: "list", v: value.items.map(encodeValue) };
      if (Object.getPrototypeOf(value) === Object.prototype) return { $: "object", v: Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encodeValue(v)])) };
  }
  const kind = typeof value === "object" ? (value as object).constructor.name : typeof value;
  throw new FreshrecError("INTERNAL", `the event store share does not carry values of type ${kind}`);
}

function decodeValue(value: unknown, where: "rows" | "columns" | "param"): unknown {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map((v) => decodeValue(v, where));
  const { $: tag, v } = value as { $: string; v: unknown };
  switch (tag) {
    case "number":
      return Number(v);
    case "bigint":
      return BigInt(v as string);
    case "date":
      return new Date(v as number);
    case "timestamp":
      return new DuckDBTimestampValue(BigInt(v as string));
    case "list": {
      const items = (v as unknown[]).map((item) => decodeValue(item, where));
      return where === "rows" ? items : listValue(items as DuckDBValue[]);
    }
    case "object":
      return Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, item]) => [k, decodeValue(item, where)]));
  }
  throw new FreshrecError("INTERNAL", `the event store share sent a value it does not know: ${JSON.stringify(value).slice(0, 80)}`);
}
