/**
 * What event intake (./intake.ts) needs of the store it writes to, as a contract with one adapter per store: the
 * embedded DuckDB event store and the PostgreSQL one, each with the same three calls.
 *
 * Why intake does not call `EventStore.append`: that path is built for files of millions of rows (staging tables,
 * a dedup join over every stored event, counts before and after: about a dozen statements and a scan of the whole
 * event table per call, a cost that grows with the store). An intake group is small and the server's user index
 * knows every event it stored or loaded, so intake leaves out the events it knows stored and an append only appends:
 * - DuckDB: one transaction holding one appender (and one for new users), on the intake buffer attached beside the
 *   store's file (../data/intake-buffer.ts), whose mover moves the rows into the store. Only this process writes
 *   either file while it serves (its lock), so what the user index does not know is not stored: nothing is looked up.
 * - PostgreSQL: one transaction of one `INSERT ... ON CONFLICT (user, item, ts) DO NOTHING RETURNING`, because other
 *   processes may have stored an event this one has not seen; the primary key finds it without a scan.
 * The rules are the store's: an event is (user, item, ts), the first engagement value given for it is the one kept,
 * and an event already stored is skipped and reported as such.
 *
 * @example
 * const store = new DuckDbIntakeStore(events, catalog); // or new PostgresIntakeStore(postgresEvents, catalog)
 * const added = await store.append([{ userId: "u1", item: 7, ts: Date.parse("2025-03-02"), engagement: null }]);
 */
import { BIGINT, DuckDBDataChunk, DuckDBTimestampValue, FLOAT, INTEGER, TIMESTAMP, VARCHAR, listValue } from "@duckdb/node-api";
import type { EventStore } from "../data/event-store.js";
import type { IntakeBuffer } from "../data/intake-buffer.js";
import { lockDenseKeys, type PostgresEventStore } from "../data/postgres-event-store.js";
import type { PoolClient } from "pg";
import { FreshrecError } from "../domain/errors.js";
import type { Catalog } from "./catalog.js";

/** One event to append, its item as a catalog index. */
export interface IntakeEvent {
  readonly userId: string;
  readonly item: number;
  /** Epoch milliseconds (whole). */
  readonly ts: number;
  /** null = engaged (no value). */
  readonly engagement: number | null;
}

/** The answer recorded for an idempotency key. */
export interface RecordedAnswer {
  readonly key: string;
  readonly bodyHash: string;
  /** The answer as JSON. */
  readonly result: string;
}

export interface IntakeStore {
  /**
   * Appends the events in one transaction (all or none) and tells, per event, whether the store took it (false: it
   * held that event already). The events' identities (user, item, ts) are distinct within one call, and none is an
   * event that this process stored or loaded (its user index knows those): an adapter whose store only this process
   * writes may take them all as new.
   */
  append(events: readonly IntakeEvent[]): Promise<boolean[]>;
  /**
   * The answers recorded for these idempotency keys. An expired key is forgotten at the next `record`, so until
   * then it still answers (a retry is never told a different story within its key's lifetime).
   */
  recorded(keys: readonly string[]): Promise<Map<string, RecordedAnswer>>;
  /** Records answers under their keys (one transaction) and forgets those recorded before `expiredBefore`. */
  record(answers: readonly RecordedAnswer[], now: number, expiredBefore: number): Promise<void>;
  /**
   * The store's own upkeep, at a quiet moment (intake calls it once no event has come for a while, not through the
   * store queue: it must not hold up the batches that come meanwhile): work the store would otherwise do inside some
   * later write.
   * @returns whether it did any.
   */
  settle(): Promise<boolean>;
}

/**
 * The event store's write-ahead log at which the mover checkpoints it, after a timed move
 * (`IntakeBuffer.storeCheckpointLogBytes`). DuckDB would do it by itself inside whichever commit fills the log to its
 * `checkpoint_threshold`, holding every write to the file meanwhile: besides the mover's, a read's move of what came
 * since its own (inside the store queue, where intake batches wait behind it) or an admin write. So while intake
 * writes, DuckDB's threshold is out of reach (`NO_AUTOMATIC_CHECKPOINT`, a setting of the whole instance: both files)
 * and the mover checkpoints both files itself (the buffer at `BUFFER_CHECKPOINT_LOG_BYTES`). A larger log makes the
 * store's checkpoints rarer and longer; what it costs besides: the log's data waits in memory, and a start after a
 * crash replays a longer log.
 */
const CHECKPOINT_LOG_BYTES = 64 * 2 ** 20;
/** A `checkpoint_threshold` no write-ahead log reaches. */
const NO_AUTOMATIC_CHECKPOINT = "1000TB";
/**
 * The least write-ahead log `settle` checkpoints: a checkpoint has a cost that does not shrink with the log, and the
 * moves that come while one runs wait for it, so quiet moments are taken only once there is enough to move.
 */
const SETTLE_MIN_LOG_BYTES = 8 * 2 ** 20;

export interface DuckDbIntakeStoreOptions {
  /** The least write-ahead log `settle` checkpoints. @defaultValue 8 MiB */
  readonly settleMinLogBytes?: number;
}

/**
 * The embedded adapter: the workspace's DuckDB event store, which only this process can open while it serves. Intake
 * writes to the store's intake buffer (../data/intake-buffer.ts), a file attached beside it whose mover moves the rows
 * into the store off intake's path: a checkpoint of the store, which holds every append to its file, then holds no
 * intake append. The idempotency keys live in the buffer file for good.
 */
export class DuckDbIntakeStore implements IntakeStore {
  /** Event-store key of each catalog item (the inverse of `catalog.itemOfKey`). */
  private readonly itemKeys: Int32Array;
  /**
   * Every user's key, read on the first append (from the store and the buffer). The store's lock keeps every other
   * process out while this one serves, every intake write of this process goes through the store queue, and an
   * append by `EventStore.append` makes them read again (`EventStore.usersAdded`), so what was read stays right.
   */
  private readonly userKeys = new Map<string, number>();
  /** The key the next new user gets; null until the keys are read. */
  private nextUserKey: number | null = null;
  /** `EventStore.usersAdded` when the keys were read. */
  private usersAddedSeen = 0;
  private logThresholdSet = false;
  private readonly settleMinLogBytes: number;
  /** Checkpoints `settle` ran. */
  checkpoints = 0;

  constructor(
    private readonly store: EventStore,
    catalog: Catalog,
    options: DuckDbIntakeStoreOptions = {},
  ) {
    this.settleMinLogBytes = options.settleMinLogBytes ?? SETTLE_MIN_LOG_BYTES;
    this.itemKeys = new Int32Array(catalog.itemCount);
    catalog.itemOfKey.forEach((item, key) => {
      if (item >= 0) this.itemKeys[item] = key;
    });
  }

  /** The buffer intake writes to (attached on first use). */
  buffer(): Promise<IntakeBuffer> {
    return this.store.intakeBuffer();
  }

  async append(events: readonly IntakeEvent[]): Promise<boolean[]> {
    if (events.length === 0) return [];
    const buffer = await this.buffer();
    const c = buffer.connection;
    if (!this.logThresholdSet) {
      await c.run(`SET checkpoint_threshold = '${NO_AUTOMATIC_CHECKPOINT}'`);
      buffer.storeCheckpointLogBytes = CHECKPOINT_LOG_BYTES;
      this.logThresholdSet = true;
    }
    if (this.usersAddedSeen !== this.store.usersAdded) this.forgetUsers();
    if (this.nextUserKey === null) await this.readUsers(buffer);
    const seq = buffer.allocate();
    try {
      await c.run("BEGIN TRANSACTION");
      const { created, keys } = await this.resolveUsers(buffer, seq, events);
      const appender = await c.createAppender("events");
      const types = [BIGINT, INTEGER, INTEGER, TIMESTAMP, FLOAT];
      const seqValue = BigInt(seq);
      for (let start = 0; start < events.length; start += 2048) {
        const slice = events.slice(start, start + 2048);
        const chunk = DuckDBDataChunk.create(types, slice.length);
        chunk.setColumnValues(0, slice.map(() => seqValue));
        chunk.setColumnValues(1, keys.slice(start, start + slice.length));
        chunk.setColumnValues(2, slice.map((e) => this.itemKeys[e.item]));
        chunk.setColumnValues(3, slice.map((e) => new DuckDBTimestampValue(BigInt(e.ts) * 1000n)));
        chunk.setColumnValues(4, slice.map((e) => e.engagement));
        appender.appendDataChunk(chunk);
      }
      appender.closeSync();
      await c.run("COMMIT");
      buffer.committed(seq, events.length + created.size);
      for (const [id, key] of created) this.userKeys.set(id, key);
      this.nextUserKey! += created.size;
      return events.map(() => true);
    } catch (error) {
      await c.run("ROLLBACK").catch(() => undefined);
      buffer.abandoned(seq);
      // Read the users' keys again next time: if the table changed under this cache (a key taken), the retry heals.
      this.forgetUsers();
      throw new FreshrecError("INTERNAL", `appending ${events.length} intake events failed, nothing was written: ${(error as Error).message}`, { cause: error });
    }
  }

  async recorded(keys: readonly string[]): Promise<Map<string, RecordedAnswer>> {
    if (keys.length === 0) return new Map();
    const buffer = await this.buffer();
    let reader;
    try {
      reader = await buffer.connection.runAndReadAll("SELECT key, body_hash, result FROM intake_keys WHERE list_contains($keys::VARCHAR[], key)", {
        keys: listValue([...keys]),
      });
    } catch (error) {
      throw new FreshrecError("INTERNAL", `reading idempotency keys from the intake buffer ${buffer.location} failed: ${(error as Error).message}`, { cause: error });
    }
    const rows = reader.getRowObjectsJS() as { key: string; body_hash: string; result: string }[];
    return new Map(rows.map((r) => [r.key, { key: r.key, bodyHash: r.body_hash, result: r.result }]));
  }

  async record(answers: readonly RecordedAnswer[], now: number, expiredBefore: number): Promise<void> {
    if (answers.length === 0) return;
    const c = (await this.buffer()).connection;
    await c.run("BEGIN TRANSACTION");
    try {
      const appender = await c.createAppender("intake_keys");
      const chunk = DuckDBDataChunk.create([VARCHAR, VARCHAR, VARCHAR, BIGINT], answers.length);
      chunk.setColumnValues(0, answers.map((a) => a.key));
      chunk.setColumnValues(1, answers.map((a) => a.bodyHash));
      chunk.setColumnValues(2, answers.map((a) => a.result));
      chunk.setColumnValues(3, answers.map(() => BigInt(now)));
      appender.appendDataChunk(chunk);
      appender.closeSync();
      await c.run("DELETE FROM intake_keys WHERE created_at < $before", { before: BigInt(expiredBefore) });
      await c.run("COMMIT");
    } catch (error) {
      await c.run("ROLLBACK");
      throw new FreshrecError("INTERNAL", `recording ${answers.length} idempotency keys failed: ${(error as Error).message}`, { cause: error });
    }
  }

  /**
   * Moves the buffer into the store, then checkpoints the store once its write-ahead log holds enough
   * (`IntakeBuffer.settle`, on the mover's connection: intake appends meanwhile).
   */
  async settle(): Promise<boolean> {
    const ran = await (await this.buffer()).settle(this.settleMinLogBytes);
    if (ran) this.checkpoints++;
    return ran;
  }

  private forgetUsers(): void {
    this.userKeys.clear();
    this.nextUserKey = null;
  }

  /**
   * Every user's key, of the buffer and of the store, read in one transaction on intake's connection and not while
   * the mover waits (a move's checkpoint of the store would hold this append up). A user being moved (inserted into
   * the store, then deleted from the buffer) is in one of them or both, never in neither, as long as the buffer's
   * snapshot is not later than the store's: the buffer is read first, for the case that DuckDB starts an attached
   * file's snapshot when a transaction first reads it. The next new user's key is the next after all of them.
   */
  private async readUsers(buffer: IntakeBuffer): Promise<void> {
    this.usersAddedSeen = this.store.usersAdded;
    const c = buffer.connection;
    // Each file's columns as read (a store holds millions of users: never spread into arguments).
    const read: [string[], number[]][] = [];
    await c.run("BEGIN TRANSACTION");
    try {
      for (const table of ["users", `${buffer.store}.main.users`]) {
        const reader = await c.runAndReadAll(`SELECT user_id, user_key FROM ${table}`);
        if (reader.currentRowCount > 0) read.push(reader.getColumns() as [string[], number[]]);
      }
      await c.run("COMMIT");
    } catch (error) {
      await c.run("ROLLBACK").catch(() => undefined);
      throw new FreshrecError("INTERNAL", `reading the users of the intake buffer ${buffer.location} and of the event store ${this.store.location} failed: ${(error as Error).message}`, {
        cause: error,
      });
    }
    let max = 0;
    for (const [ids, keys] of read) {
      for (let r = 0; r < ids.length; r++) {
        this.userKeys.set(ids[r], keys[r]);
        if (keys[r] > max) max = keys[r];
      }
    }
    this.nextUserKey = max + 1;
  }

  /**
   * The keys of the group's users; users neither file has yet are appended to the buffer, numbered after the
   * largest key as `EventStore.append` numbers them. One lookup per event among the keys read once, none more.
   * @returns each event's user key, and the keys of the users appended in this transaction (kept only once it commits).
   */
  private async resolveUsers(buffer: IntakeBuffer, seq: number, events: readonly IntakeEvent[]): Promise<{ created: Map<string, number>; keys: number[] }> {
    const created = new Map<string, number>();
    const keys = events.map((e) => {
      let key = this.userKeys.get(e.userId) ?? created.get(e.userId);
      if (key === undefined) created.set(e.userId, (key = this.nextUserKey! + created.size));
      return key;
    });
    if (created.size) {
      const appender = await buffer.connection.createAppender("users");
      const chunk = DuckDBDataChunk.create([BIGINT, INTEGER, VARCHAR], created.size);
      chunk.setColumnValues(0, [...created.keys()].map(() => BigInt(seq)));
      chunk.setColumnValues(1, [...created.values()]);
      chunk.setColumnValues(2, [...created.keys()]);
      appender.appendDataChunk(chunk);
      appender.closeSync();
    }
    return { created, keys };
  }
}

/**
 * The PostgreSQL adapter: a store that other processes (API replicas, `freshrec ingest`) write at the same time, so
 * an event this process does not know may be stored already; the events' primary key (user, item, ts) tells, without
 * a scan. Items are mapped to the store's keys by id (read once: the catalog's items are the store's), users too
 * (every key read on the first append and cached: a user's key never changes); a user the store does not have is added with the next dense key
 * under the lock `PostgresEventStore.append` takes (`lockDenseKeys`), so two processes never give out one key twice.
 */
export class PostgresIntakeStore implements IntakeStore {
  private schemaReady = false;
  /** Store key of each catalog item; null until read. */
  private itemKeys: Int32Array | null = null;
  private readonly userKeys = new Map<string, number>();
  private usersRead = false;

  constructor(
    private readonly store: PostgresEventStore,
    private readonly catalog: Catalog,
  ) {}

  async append(events: readonly IntakeEvent[]): Promise<boolean[]> {
    if (events.length === 0) return [];
    const itemKeys = await this.readItemKeys();
    try {
      const { added, created } = await this.store.transaction(async (client) => {
        const created = await this.resolveUsers(client, events);
        const key = (userId: string) => this.userKeys.get(userId) ?? created.get(userId)!;
        // Answers only the positions of the events the store held already (usually none), not a row per event.
        const held = await client.query<[string]>({
          text: `WITH s AS (SELECT u, i, epoch_ms(t) AS ts, e, n FROM unnest($1::INTEGER[], $2::INTEGER[], $3::BIGINT[], $4::REAL[]) WITH ORDINALITY AS s(u, i, t, e, n)),
                 taken AS (INSERT INTO events (user_key, item_key, ts, engagement) SELECT u, i, ts, e FROM s ON CONFLICT DO NOTHING RETURNING user_key, item_key, ts)
                 SELECT n FROM s WHERE NOT EXISTS (SELECT 1 FROM taken WHERE taken.user_key = s.u AND taken.item_key = s.i AND taken.ts = s.ts)`,
          values: [events.map((e) => key(e.userId)), events.map((e) => itemKeys[e.item]), events.map((e) => e.ts), events.map((e) => e.engagement)],
          rowMode: "array",
        });
        const added = events.map(() => true);
        for (const [n] of held.rows) added[Number(n) - 1] = false;
        return { added, created };
      });
      for (const [id, k] of created) this.userKeys.set(id, k);
      return added;
    } catch (error) {
      throw new FreshrecError("INTERNAL", `appending ${events.length} intake events failed, nothing was written: ${(error as Error).message}`, { cause: error });
    }
  }

  async recorded(keys: readonly string[]): Promise<Map<string, RecordedAnswer>> {
    await this.ensureSchema();
    if (keys.length === 0) return new Map();
    const rows = await this.store.transaction((client) =>
      client.query<{ key: string; body_hash: string; result: string }>("SELECT key, body_hash, result FROM intake_keys WHERE key = ANY($1::TEXT[])", [[...keys]]),
    );
    return new Map(rows.rows.map((r) => [r.key, { key: r.key, bodyHash: r.body_hash, result: r.result }]));
  }

  async record(answers: readonly RecordedAnswer[], now: number, expiredBefore: number): Promise<void> {
    if (answers.length === 0) return;
    await this.ensureSchema();
    try {
      await this.store.transaction(async (client) => {
        // A key another replica recorded meanwhile keeps its first answer.
        await client.query(
          `INSERT INTO intake_keys (key, body_hash, result, created_at)
           SELECT k, h, r, $4 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[]) AS s(k, h, r) ON CONFLICT (key) DO NOTHING`,
          [answers.map((a) => a.key), answers.map((a) => a.bodyHash), answers.map((a) => a.result), now],
        );
        await client.query("DELETE FROM intake_keys WHERE created_at < $1", [expiredBefore]);
      });
    } catch (error) {
      throw new FreshrecError("INTERNAL", `recording ${answers.length} idempotency keys failed: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Nothing: PostgreSQL checkpoints in its own background process, and commits do not wait for it. */
  async settle(): Promise<boolean> {
    return false;
  }

  private async ensureSchema(): Promise<void> {
    if (this.schemaReady) return;
    await this.store.transaction(async (client) => {
      // Two processes creating the table at once would collide in the catalog: they take turns.
      await client.query("SELECT pg_advisory_xact_lock(hashtext('freshrec intake_keys'))");
      await client.query("CREATE TABLE IF NOT EXISTS intake_keys (key TEXT PRIMARY KEY, body_hash TEXT NOT NULL, result TEXT NOT NULL, created_at BIGINT NOT NULL)");
    });
    this.schemaReady = true;
  }

  private async readItemKeys(): Promise<Int32Array> {
    // Read again when the catalog has grown (a shared store's follower adds the items other processes append).
    if (this.itemKeys && this.itemKeys.length === this.catalog.itemCount) return this.itemKeys;
    const rows = await this.store.query<{ item_id: string; item_key: number }>("SELECT item_id, item_key FROM items");
    const byId = new Map(rows.map((r) => [r.item_id, r.item_key]));
    const keys = new Int32Array(this.catalog.itemCount);
    this.catalog.itemIds.forEach((id, index) => {
      const key = byId.get(id);
      if (key === undefined) throw new FreshrecError("INTERNAL", `the event store ${this.store.location} has no item ${JSON.stringify(id)} of the server's catalog`);
      keys[index] = key;
    });
    return (this.itemKeys = keys);
  }

  /**
   * The keys of the group's users this process has not cached: read, and those the store lacks added (with the next
   * dense keys, under the lock that orders every process's additions).
   * @returns the keys read or added in this transaction (cached only once it commits).
   */
  private async resolveUsers(client: PoolClient, events: readonly IntakeEvent[]): Promise<Map<string, number>> {
    if (!this.usersRead) {
      // Every user's key, once: afterwards only users added since (by any process) are looked up.
      const all = await client.query<[string, number]>({ text: "SELECT user_id, user_key FROM users", rowMode: "array" });
      for (const [id, key] of all.rows) this.userKeys.set(id, key);
      this.usersRead = true;
    }
    const unknown = [...new Set(events.filter((e) => !this.userKeys.has(e.userId)).map((e) => e.userId))];
    const found = new Map<string, number>();
    if (unknown.length === 0) return found;
    const read = async () => {
      const rows = await client.query<[string, number]>({ text: "SELECT user_id, user_key FROM users WHERE user_id = ANY($1::TEXT[])", values: [unknown], rowMode: "array" });
      for (const [id, key] of rows.rows) found.set(id, key);
    };
    await read();
    if (found.size < unknown.length) {
      await lockDenseKeys(client);
      await client.query(
        `INSERT INTO users (user_key, user_id)
         SELECT (SELECT coalesce(max(user_key), 0) FROM users) + row_number() OVER (ORDER BY n), id
         FROM unnest($1::TEXT[]) WITH ORDINALITY AS s(id, n) WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = s.id)`,
        [unknown.filter((id) => !found.has(id))],
      );
      await read();
    }
    return found;
  }
}
