/**
 * The event store on PostgreSQL: the second adapter of `EventStoreContract` (./event-store.ts), for a deployment
 * whose processes and hosts share one database (`store.url: postgres://...`, issue 19). Same schema, same dense
 * integer keys, same idempotent atomic `append`, same results: test/data/event-store-conformance.ts runs every event
 * store and mining test against both adapters on the same data.
 *
 * What differs from DuckDB, and why:
 * - The schema defines DuckDB's `epoch_ms(timestamp) -> bigint` and `epoch_ms(bigint) -> timestamp` as SQL functions,
 *   so the queries that only need those (counts, first-seen, most of mining) are the same text on both stores.
 * - Queries name parameters `$name` as on DuckDB; they are rewritten to PostgreSQL's `$1..$n` before sending.
 * - An append holds an advisory lock for its transaction (`lockDenseKeys`): keys are dense (`max + row_number`), so two
 *   processes appending at once must take turns; events carry a primary key on (user, item, ts), the identity of an event.
 * - Results parse BIGINT as bigint and TIMESTAMP (without time zone, as DuckDB's) as a UTC Date, as DuckDB's do.
 * - Appends are numbered in commit order and notified (`EVENTS_CHANNEL`), and `readAppends` reads what came after a
 *   number: other processes write the store while an API replica serves from memory, and this is how it follows.
 *
 * @example
 * const store = await PostgresEventStore.open("postgres://freshrec@db.internal/freshrec");
 * await store.append({ clusters, items, events: eventBatchFromEvents(list) });
 * const counts = await store.counts();
 * await store.close();
 */
import pg from "pg";
import { inTransaction, openStorePool, redactedUrl } from "./postgres-pool.js";
import type { Cluster, Item } from "../domain/types.js";
import { FreshrecError } from "../domain/errors.js";
import {
  checkStoreIdentity,
  readClusters,
  readCounts,
  readItemClusters,
  readMeta,
  readTitledItems,
  type AppendRequest,
  type AppendResult,
  type EventBatch,
  type EventStoreContract,
  type QueryColumns,
  type SqlParam,
  type StoreCounts,
} from "./event-store.js";

/**
 * Notified (payload: the append's number) as each transaction that appended events, items or clusters commits; API
 * replicas follow the store through it (src/serving/store-follower.ts).
 */
export const EVENTS_CHANNEL = "freshrec_events";

/**
 * Appends are numbered in commit order, so a reader that has everything up to number n misses nothing by asking for
 * what came after n (a plain sequence would not do: its numbers are taken in start order, and a transaction that took
 * a smaller one may commit later than one a reader already saw).
 * - `event_appends.last` is the number of the latest committed append. A transaction takes the next one at its first
 *   event (the default of `events.append_seq`, evaluated per row: its first row calls `freshrec_append_seq()`, which
 *   increments the counter and remembers the number for the rest of the transaction). The counter's row stays locked
 *   until the transaction ends, so the next writer takes its number after this one committed: numbers are commit order.
 * - Every writer gets this without knowing of it, because it is the column's default (intake's INSERT, `append`'s, a
 *   writer of an older version). Rows stored before the column existed have none; a reader loads them in full at start.
 * - The cost: writers of events take turns from their first event row (or catalog change) to their commit: an ingest's
 *   `append` for the rest of its transaction, intake's insert being its transaction's last statement.
 * - The column is added only when missing, checked first: ALTER TABLE would take the events table's exclusive lock
 *   at every open, and wait behind (and hold up) every query on it. The counter's row is seeded the same way: an
 *   INSERT ... ON CONFLICT would wait for a writer holding that row, for as long as a large ingest runs.
 *
 * Changes to what the catalog held are numbered the same way: an item that an ingest gives another cluster (or another
 * title), a cluster given another description. `changed_seq` on items and clusters holds the number of the append
 * that last changed the row, set by a trigger (so every writer numbers its changes without knowing of it, as with the
 * events' default); rows never changed since the column was added have none, and a reader loads them at start. A
 * move matters beyond the catalog: events name items, not clusters, so an item's cluster is its events' cluster, past
 * ones included (mining, `Catalog.load` and `UserIndex.load` join the items as they are now, on both stores).
 * Column, index and triggers are created only when missing, checked first, for the same reason as the events' column.
 */
const SCHEMA = `
CREATE TABLE IF NOT EXISTS clusters (cluster_key INTEGER PRIMARY KEY, cluster_id TEXT NOT NULL UNIQUE, description TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (item_key INTEGER PRIMARY KEY, item_id TEXT NOT NULL UNIQUE, cluster_key INTEGER NOT NULL, title TEXT);
CREATE TABLE IF NOT EXISTS users (user_key INTEGER PRIMARY KEY, user_id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS events (user_key INTEGER NOT NULL, item_key INTEGER NOT NULL, ts TIMESTAMP NOT NULL, engagement REAL,
  PRIMARY KEY (user_key, item_key, ts));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE OR REPLACE FUNCTION epoch_ms(ts TIMESTAMP) RETURNS BIGINT LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $$ SELECT (extract(epoch FROM ts) * 1000)::BIGINT $$;
CREATE OR REPLACE FUNCTION epoch_ms(ms BIGINT) RETURNS TIMESTAMP LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $$ SELECT TIMESTAMP '1970-01-01' + ms * INTERVAL '1 millisecond' $$;
CREATE TABLE IF NOT EXISTS event_appends (one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one), last BIGINT NOT NULL);
INSERT INTO event_appends SELECT true, 0 WHERE NOT EXISTS (SELECT 1 FROM event_appends);
CREATE OR REPLACE FUNCTION freshrec_append_seq() RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  taken TEXT := current_setting('freshrec.append_seq', true);
  seq BIGINT;
BEGIN
  IF taken IS NOT NULL AND taken <> '' THEN RETURN taken::BIGINT; END IF;
  UPDATE event_appends SET last = last + 1 RETURNING last INTO seq;
  PERFORM pg_notify('${EVENTS_CHANNEL}', seq::TEXT);
  PERFORM set_config('freshrec.append_seq', seq::TEXT, true);
  RETURN seq;
END $$;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events'::regclass AND attname = 'append_seq' AND NOT attisdropped) THEN
    ALTER TABLE events ADD COLUMN append_seq BIGINT;
    ALTER TABLE events ALTER COLUMN append_seq SET DEFAULT coalesce(nullif(current_setting('freshrec.append_seq', true), '')::BIGINT, freshrec_append_seq());
    CREATE INDEX events_append_seq ON events (append_seq);
  END IF;
END $$;
CREATE OR REPLACE FUNCTION freshrec_catalog_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.changed_seq := freshrec_append_seq();
  RETURN NEW;
END $$;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'changed_seq' AND NOT attisdropped) THEN
    ALTER TABLE items ADD COLUMN changed_seq BIGINT;
    CREATE INDEX items_changed_seq ON items (changed_seq);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'items'::regclass AND tgname = 'items_changed') THEN
    CREATE TRIGGER items_changed BEFORE UPDATE OF cluster_key, title ON items FOR EACH ROW
      WHEN (OLD.cluster_key IS DISTINCT FROM NEW.cluster_key OR OLD.title IS DISTINCT FROM NEW.title)
      EXECUTE FUNCTION freshrec_catalog_change();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'clusters'::regclass AND attname = 'changed_seq' AND NOT attisdropped) THEN
    ALTER TABLE clusters ADD COLUMN changed_seq BIGINT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'clusters'::regclass AND tgname = 'clusters_changed') THEN
    CREATE TRIGGER clusters_changed BEFORE UPDATE OF description ON clusters FOR EACH ROW
      WHEN (OLD.description IS DISTINCT FROM NEW.description)
      EXECUTE FUNCTION freshrec_catalog_change();
  END IF;
END $$;
`;

/** Any constant: the advisory lock that keeps two processes from creating the schema at once. */
const SCHEMA_LOCK = 0x66726573;
/** Any other constant: the advisory lock under which every writer gives out dense keys (`lockDenseKeys`). */
const DENSE_KEYS_LOCK = 0x66726574;

/**
 * Takes, until the transaction ends, the lock every writer of this store holds while it gives out dense keys to new
 * clusters, items and users (max + row_number): a writer waits for the one before it to commit, so no key is given
 * twice and keys grow in commit order (what `readAppends` reads by). An advisory lock, not a table lock: every table
 * lock that excludes other writers also waits for (auto)vacuum and analyze of that table, which hold it for as long as
 * they run: intake stalled for every pass of theirs.
 */
export async function lockDenseKeys(client: pg.ClientBase): Promise<void> {
  await client.query("SELECT pg_advisory_xact_lock($1)", [DENSE_KEYS_LOCK]);
}
/** Rows per INSERT ... SELECT FROM unnest(...) while staging events. */
const STAGE_ROWS = 20_000;

const INT8 = 20;
const FLOAT4 = 700;
const TIMESTAMP = 1114;

/**
 * BIGINT as bigint, REAL as the float32 value itself (PostgreSQL prints 0.9 for the float nearest 0.9; DuckDB gives
 * 0.8999999761581421) and TIMESTAMP as UTC, as the DuckDB adapter returns them; everything else as pg parses it.
 */
const TYPES = {
  getTypeParser(oid: number, format?: "text" | "binary") {
    if (oid === INT8) return (text: string) => BigInt(text);
    if (oid === FLOAT4) return (text: string) => Math.fround(Number.parseFloat(text));
    if (oid === TIMESTAMP) return (text: string) => new Date(`${text.replace(" ", "T")}Z`);
    return pg.types.getTypeParser(oid, format as "text");
  },
} as pg.CustomTypesConfig;

/** A cluster added by an append (`readAppends`). */
export interface AppendedCluster {
  readonly key: number;
  readonly id: string;
  readonly description: string;
}

/** An item added by an append. */
export interface AppendedItem {
  readonly key: number;
  readonly id: string;
  readonly clusterKey: number;
  readonly title: string | null;
}

/**
 * The catalog as appends left it (`readAppends`): the clusters and items added, and those the reader held already
 * that an append changed (an item's cluster or title, a cluster's description), each as it is now.
 */
export interface AppendedCatalog {
  readonly clusters: readonly AppendedCluster[];
  readonly items: readonly AppendedItem[];
  readonly changedClusters: readonly AppendedCluster[];
  readonly changedItems: readonly AppendedItem[];
}

/** Users whose every event a reader asks for after reading the catalog's changes (`readAppends`), by item key. */
export interface HistoriesWanted {
  /** Every user with an event of one of these items. */
  readonly ofItems?: readonly number[];
  /** Every user with an event of one of these items among the appends read. */
  readonly appendedOfItems?: readonly number[];
}

/** An event as stored by an append. */
export interface AppendedEvent {
  readonly userId: string;
  readonly itemKey: number;
  /** Epoch milliseconds. */
  readonly ts: number;
  /** As stored (a float32); null = engaged. */
  readonly engagement: number | null;
}

export class PostgresEventStore implements EventStoreContract {
  readonly dialect = "postgres" as const;

  private constructor(
    private readonly pool: pg.Pool,
    readonly location: string,
  ) {}

  /**
   * Connects to the database at `url` and creates the schema when it is missing.
   * @throws FreshrecError naming the URL (without its password) and what PostgreSQL said.
   */
  static async open(url: string): Promise<PostgresEventStore> {
    const { pool, location } = await openStorePool({ url, store: "event store", schema: SCHEMA, schemaLock: SCHEMA_LOCK, max: 4, types: TYPES });
    return new PostgresEventStore(pool, location);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  async query<Row = Record<string, unknown>>(sql: string, params?: Readonly<Record<string, SqlParam>>): Promise<Row[]> {
    return (await this.run(this.pool, sql, params)).rows as Row[];
  }

  async queryColumns(sql: string, params?: Readonly<Record<string, SqlParam>>): Promise<QueryColumns> {
    const result = await this.run(this.pool, sql, params, "array");
    const rows = result.rows as unknown[][];
    if (rows.length === 0) return { rowCount: 0, columns: [] };
    const columns = result.fields.map((_, k) => rows.map((row) => row[k]));
    return { rowCount: rows.length, columns };
  }

  counts(): Promise<StoreCounts> {
    return readCounts(this);
  }

  clusters(): Promise<Cluster[]> {
    return readClusters(this);
  }

  titledItems(limit: number): Promise<Item[]> {
    return readTitledItems(this, limit);
  }

  itemClusters(): Promise<Map<string, string>> {
    return readItemClusters(this);
  }

  getMeta(key: string): Promise<string | null> {
    return readMeta(this, key);
  }

  checkIdentity(identity: Readonly<Record<string, string>>): Promise<void> {
    return checkStoreIdentity(this, identity);
  }

  /**
   * Appends clusters, items and events in one transaction, as the DuckDB adapter does (see `EventStore.append`):
   * clusters and items upserted by id, events inserted unless (user, item, ts) exists, the first engagement value
   * of an event repeated within the batch winning.
   */
  async append(request: AppendRequest): Promise<AppendResult> {
    if (request.identity) await this.checkIdentity(request.identity);
    try {
      // Dense keys are max + row_number: appends from other processes wait for this one to commit.
      return await inTransaction(this.pool, (client) => this.appendOn(client, request), DENSE_KEYS_LOCK);
    } catch (error) {
      throw error instanceof FreshrecError
        ? error
        : new FreshrecError("INTERNAL", `appending to the event store failed, nothing was written: ${(error as Error).message}`, { cause: error });
    }
  }

  /** `append`'s statements, inside its transaction. */
  private async appendOn(client: pg.PoolClient, request: AppendRequest): Promise<AppendResult> {
    const clustersAdded = request.clusters?.length ? await this.upsertClusters(client, request.clusters) : 0;
    const itemsAdded = request.items?.length ? await this.upsertItems(client, request.items) : 0;
    let eventsAdded = 0;
    let skippedDuplicates = 0;
    if (request.events) ({ eventsAdded, skippedDuplicates } = await this.insertEvents(client, request.events));
    // A catalog change without events numbers its append too, so that replicas hear of the new items (a changed
    // row numbers it through its trigger).
    if (clustersAdded + itemsAdded > 0) await client.query("SELECT freshrec_append_seq()");
    for (const [key, value] of Object.entries({ ...request.meta, ...request.identity })) {
      await this.run(client, "INSERT INTO meta VALUES ($key, $value) ON CONFLICT (key) DO UPDATE SET value = excluded.value", { key, value });
    }
    return { clustersAdded, itemsAdded, eventsAdded, skippedDuplicates };
  }

  /**
   * Runs `work` on one connection inside one transaction: committed when it resolves, rolled back when it throws. For
   * a writer with statements of its own on this store's tables (the server's event intake, src/serving/intake-store.ts).
   */
  transaction<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, work);
  }

  /** The number of the latest committed append (0 before the first). */
  async lastAppend(): Promise<number> {
    const rows = await this.query<{ last: bigint }>("SELECT last FROM event_appends");
    return Number(rows[0]?.last ?? 0);
  }

  /**
   * What was appended after append number `after`, read in one snapshot up to the latest committed append: the
   * clusters and items with keys above the given ones (keys grow with each append: `max + row_number` under the
   * append's lock, `lockDenseKeys`) and those up to them that an append changed (`onCatalog`); then, when `onCatalog` asks for them,
   * every event of some users (`onHistories`: a move changes the cluster of every event of the item, past ones too);
   * then the appended events, `pageRows` at a time through a cursor, each page handed to `onEvents` before the next is
   * read. An event may be one a reader has already (its own intake's, or one it read at start): readers apply them as
   * they would apply any event, where a known one changes nothing.
   * @returns the number of the latest append read (`after` when nothing was appended since).
   */
  async readAppends(
    after: number,
    known: { readonly clusterKey: number; readonly itemKey: number },
    handlers: {
      readonly onCatalog: (catalog: AppendedCatalog) => HistoriesWanted | void;
      /** Pages of users, each user's every event in (ts, item key) order (the order of a load), a user never split. */
      readonly onHistories?: (histories: readonly (readonly AppendedEvent[])[]) => void | Promise<void>;
      readonly onEvents: (events: readonly AppendedEvent[]) => void | Promise<void>;
    },
    pageRows = 10_000,
  ): Promise<number> {
    const fetchRows = Math.max(1, Math.floor(pageRows));
    try {
      return await inTransaction(this.pool, async (client) => {
        // One snapshot for the counter, the catalog and the events: whatever the counter counts is visible here.
        await client.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
        const last = Number((await client.query<{ last: bigint }>("SELECT last FROM event_appends")).rows[0]?.last ?? 0);
        if (last <= after) return after;
        const clusterRows = (text: string, values: unknown[]) =>
          client.query<[number, string, string]>({ text: `SELECT cluster_key, cluster_id, description FROM clusters WHERE ${text} ORDER BY cluster_key`, values, rowMode: "array" });
        const itemRows = (text: string, values: unknown[]) =>
          client.query<[number, string, number, string | null]>({ text: `SELECT item_key, item_id, cluster_key, title FROM items WHERE ${text} ORDER BY item_key`, values, rowMode: "array" });
        const changed = "changed_seq > $2 AND changed_seq <= $3";
        const [clusters, items, changedClusters, changedItems] = [
          await clusterRows("cluster_key > $1", [known.clusterKey]),
          await itemRows("item_key > $1", [known.itemKey]),
          await clusterRows(`cluster_key <= $1 AND ${changed}`, [known.clusterKey, after, last]),
          await itemRows(`item_key <= $1 AND ${changed}`, [known.itemKey, after, last]),
        ];
        const asCluster = ([key, id, description]: [number, string, string]): AppendedCluster => ({ key, id, description });
        const asItem = ([key, id, clusterKey, title]: [number, string, number, string | null]): AppendedItem => ({ key, id, clusterKey, title });
        const wanted = handlers.onCatalog({
          clusters: clusters.rows.map(asCluster),
          items: items.rows.map(asItem),
          changedClusters: changedClusters.rows.map(asCluster),
          changedItems: changedItems.rows.map(asItem),
        });
        const whose: string[] = [];
        const values: unknown[] = [];
        if (wanted?.ofItems?.length) {
          values.push(wanted.ofItems);
          whose.push(`SELECT user_key FROM events WHERE item_key = ANY($${values.length}::INTEGER[])`);
        }
        if (wanted?.appendedOfItems?.length) {
          values.push(wanted.appendedOfItems, after, last);
          const n = values.length;
          whose.push(`SELECT user_key FROM events WHERE item_key = ANY($${n - 2}::INTEGER[]) AND append_seq > $${n - 1} AND append_seq <= $${n}`);
        }
        if (whose.length) {
          const onHistories = handlers.onHistories;
          if (!onHistories) throw new FreshrecError("INTERNAL", "readAppends: onCatalog asked for users' histories, and no onHistories takes them");
          await client.query({
            text: `DECLARE histories NO SCROLL CURSOR FOR
                   SELECT u.user_id, e.item_key, epoch_ms(e.ts)::FLOAT8, e.engagement FROM events e JOIN users u USING (user_key)
                   WHERE e.user_key IN (${whose.join(" UNION ")})
                   ORDER BY e.user_key, e.ts, e.item_key`,
            values,
          });
          let user: AppendedEvent[] = [];
          for (;;) {
            const page = await client.query<[string, number, number, number | null]>({ text: `FETCH ${fetchRows} FROM histories`, rowMode: "array" });
            const whole: AppendedEvent[][] = [];
            for (const [userId, itemKey, ts, engagement] of page.rows) {
              if (user.length > 0 && user[0].userId !== userId) {
                whole.push(user);
                user = [];
              }
              user.push({ userId, itemKey, ts, engagement });
            }
            // The page's last user may go on in the next page.
            if (page.rows.length === 0 && user.length > 0) whole.push(user);
            if (whole.length) await onHistories(whole);
            if (page.rows.length === 0) break;
          }
        }
        await client.query({
          text: `DECLARE appended NO SCROLL CURSOR FOR
                 SELECT u.user_id, e.item_key, epoch_ms(e.ts)::FLOAT8, e.engagement FROM events e JOIN users u USING (user_key)
                 WHERE e.append_seq > $1 AND e.append_seq <= $2`,
          values: [after, last],
        });
        for (;;) {
          const page = await client.query<[string, number, number, number | null]>({ text: `FETCH ${fetchRows} FROM appended`, rowMode: "array" });
          if (page.rows.length === 0) break;
          await handlers.onEvents(page.rows.map(([userId, itemKey, ts, engagement]) => ({ userId, itemKey, ts, engagement })));
        }
        return last;
      });
    } catch (error) {
      if (error instanceof FreshrecError) throw error;
      throw new FreshrecError("INTERNAL", `reading the appends after ${after} from the event store ${this.location} failed: ${(error as Error).message}`, { cause: error });
    }
  }

  private async upsertClusters(client: pg.PoolClient, clusters: readonly Cluster[]): Promise<number> {
    await client.query("CREATE TEMP TABLE stage_clusters (pos INTEGER, cluster_id TEXT, description TEXT) ON COMMIT DROP");
    await this.run(client, "INSERT INTO stage_clusters SELECT * FROM unnest($pos::INTEGER[], $id::TEXT[], $description::TEXT[])", {
      pos: clusters.map((_, i) => String(i)),
      id: clusters.map((c) => c.id),
      description: clusters.map((c) => c.description),
    });
    await client.query(`UPDATE clusters SET description = s.description FROM stage_clusters s
                        WHERE clusters.cluster_id = s.cluster_id AND clusters.description <> s.description`);
    const inserted = await client.query(`INSERT INTO clusters
      SELECT (SELECT coalesce(max(cluster_key), 0) FROM clusters) + row_number() OVER (ORDER BY pos), cluster_id, description
      FROM stage_clusters s WHERE NOT EXISTS (SELECT 1 FROM clusters c WHERE c.cluster_id = s.cluster_id)`);
    return inserted.rowCount ?? 0;
  }

  private async upsertItems(client: pg.PoolClient, items: readonly Item[]): Promise<number> {
    await client.query("CREATE TEMP TABLE stage_items (pos INTEGER, item_id TEXT, cluster_id TEXT, title TEXT) ON COMMIT DROP");
    await this.run(client, "INSERT INTO stage_items SELECT * FROM unnest($pos::INTEGER[], $id::TEXT[], $cluster::TEXT[], $title::TEXT[])", {
      pos: items.map((_, i) => String(i)),
      id: items.map((it) => it.id),
      cluster: items.map((it) => it.clusterId),
      title: items.map((it) => it.title ?? null) as string[],
    });
    const unknown = await client.query<{ cluster_id: string; item_id: string }>(
      "SELECT s.cluster_id, s.item_id FROM stage_items s LEFT JOIN clusters c USING (cluster_id) WHERE c.cluster_key IS NULL ORDER BY s.pos LIMIT 1",
    );
    if (unknown.rows.length) {
      throw new FreshrecError("BAD_INPUT", `item ${unknown.rows[0].item_id} names cluster ${unknown.rows[0].cluster_id}, which is not in the catalog`);
    }
    await client.query(`UPDATE items SET cluster_key = c.cluster_key, title = coalesce(s.title, items.title)
                        FROM stage_items s JOIN clusters c USING (cluster_id)
                        WHERE items.item_id = s.item_id AND (items.cluster_key <> c.cluster_key OR items.title IS DISTINCT FROM coalesce(s.title, items.title))`);
    const inserted = await client.query(`INSERT INTO items
      SELECT (SELECT coalesce(max(item_key), 0) FROM items) + row_number() OVER (ORDER BY s.pos), s.item_id, c.cluster_key, s.title
      FROM stage_items s JOIN clusters c USING (cluster_id)
      WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.item_id = s.item_id)`);
    return inserted.rowCount ?? 0;
  }

  private async insertEvents(client: pg.PoolClient, batch: EventBatch): Promise<{ eventsAdded: number; skippedDuplicates: number }> {
    await client.query("CREATE TEMP TABLE stage_users (idx INTEGER, user_id TEXT) ON COMMIT DROP");
    await this.run(client, "INSERT INTO stage_users SELECT * FROM unnest($idx::INTEGER[], $id::TEXT[])", {
      idx: batch.userIds.map((_, i) => String(i)),
      id: batch.userIds,
    });
    await client.query(`INSERT INTO users
      SELECT (SELECT coalesce(max(user_key), 0) FROM users) + row_number() OVER (ORDER BY idx), user_id
      FROM stage_users s WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = s.user_id)`);
    await client.query("CREATE TEMP TABLE stage_item_dict (idx INTEGER, item_id TEXT) ON COMMIT DROP");
    await this.run(client, "INSERT INTO stage_item_dict SELECT * FROM unnest($idx::INTEGER[], $id::TEXT[])", {
      idx: batch.itemIds.map((_, i) => String(i)),
      id: batch.itemIds,
    });
    const missing = await client.query<{ item_id: string }>(
      "SELECT d.item_id FROM stage_item_dict d LEFT JOIN items i USING (item_id) WHERE i.item_key IS NULL ORDER BY d.idx LIMIT 1",
    );
    if (missing.rows.length) throw new FreshrecError("BAD_INPUT", `events name item ${missing.rows[0].item_id}, which is not in the catalog`);

    // pos keeps the batch's order, so that "the first engagement value seen wins" means the same as on DuckDB.
    await client.query("CREATE TEMP TABLE stage_events (pos BIGINT, u INTEGER, i INTEGER, ts BIGINT, e REAL) ON COMMIT DROP");
    let staged = 0;
    for await (const chunk of batch.chunks) {
      for (let start = 0; start < chunk.length; start += STAGE_ROWS) {
        const n = Math.min(STAGE_ROWS, chunk.length - start);
        const pos = new Array<string>(n);
        const users = new Array<string>(n);
        const items = new Array<string>(n);
        const ts = new Array<string>(n);
        const eng = new Array<string | null>(n);
        for (let k = 0; k < n; k++) {
          pos[k] = String(staged + start + k);
          users[k] = String(chunk.userIndex[start + k]);
          items[k] = String(chunk.itemIndex[start + k]);
          ts[k] = String(Math.round(chunk.ts[start + k]));
          const e = chunk.engagement[start + k];
          // A float32 printed in full round-trips exactly into REAL.
          eng[k] = Number.isNaN(e) ? null : String(e);
        }
        await this.run(client, "INSERT INTO stage_events SELECT * FROM unnest($pos::BIGINT[], $u::INTEGER[], $i::INTEGER[], $ts::BIGINT[], $e::REAL[])", {
          pos,
          u: users,
          i: items,
          ts,
          e: eng as string[],
        });
      }
      staged += chunk.length;
    }
    // An event's identity is (user, item, ts); the first engagement value seen for it wins.
    const inserted = await client.query(`INSERT INTO events
      SELECT DISTINCT ON (u.user_key, it.item_key, s.ts) u.user_key, it.item_key, epoch_ms(s.ts), s.e
      FROM stage_events s
      JOIN stage_users su ON su.idx = s.u JOIN users u ON u.user_id = su.user_id
      JOIN stage_item_dict si ON si.idx = s.i JOIN items it ON it.item_id = si.item_id
      ORDER BY u.user_key, it.item_key, s.ts, s.pos
      ON CONFLICT DO NOTHING`);
    const eventsAdded = inserted.rowCount ?? 0;
    return { eventsAdded, skippedDuplicates: staged - eventsAdded };
  }

  private async run(
    on: pg.Pool | pg.PoolClient,
    sql: string,
    params: Readonly<Record<string, SqlParam>> | undefined,
    rowMode?: "array",
  ): Promise<pg.QueryResult> {
    try {
      const { text, values } = positionalQuery(sql, params ?? {});
      return await on.query({ text, values: values as unknown[], ...(rowMode ? { rowMode } : {}) });
    } catch (error) {
      if (error instanceof FreshrecError) throw error;
      throw new FreshrecError("INTERNAL", `event store query failed (${this.location}): ${(error as Error).message}\n${sql}`, { cause: error });
    }
  }
}

/**
 * Rewrites `$name` parameters (DuckDB's style, which every freshrec query uses) into PostgreSQL's `$1..$n`, each
 * name bound once however often it appears. String literals, quoted identifiers, comments and dollar quotes are
 * left alone.
 * @throws FreshrecError when the SQL names a parameter that `params` lacks.
 */
export function positionalQuery(sql: string, params: Readonly<Record<string, SqlParam>>): { text: string; values: SqlParam[] } {
  const positions = new Map<string, number>();
  const values: SqlParam[] = [];
  let text = "";
  let k = 0;
  while (k < sql.length) {
    const ch = sql[k];
    if (ch === "'" || ch === '"') {
      const end = closingQuote(sql, k, ch);
      text += sql.slice(k, end);
      k = end;
    } else if (ch === "-" && sql[k + 1] === "-") {
      const end = sql.indexOf("\n", k);
      const stop = end < 0 ? sql.length : end;
      text += sql.slice(k, stop);
      k = stop;
    } else if (ch === "$" && sql[k + 1] === "$") {
      const end = sql.indexOf("$$", k + 2);
      const stop = end < 0 ? sql.length : end + 2;
      text += sql.slice(k, stop);
      k = stop;
    } else if (ch === "$" && /[A-Za-z_]/.test(sql[k + 1] ?? "")) {
      const name = /^[A-Za-z_][A-Za-z0-9_]*/.exec(sql.slice(k + 1))![0];
      if (!Object.hasOwn(params, name)) throw new FreshrecError("INTERNAL", `event store query names $${name}, which no parameter gives\n${sql}`);
      let position = positions.get(name);
      if (position === undefined) {
        values.push(params[name]);
        positions.set(name, (position = values.length));
      }
      text += `$${position}`;
      k += 1 + name.length;
    } else {
      text += ch;
      k++;
    }
  }
  return { text, values };
}

function closingQuote(sql: string, start: number, quote: string): number {
  let k = start + 1;
  while (k < sql.length) {
    if (sql[k] === quote) {
      if (sql[k + 1] === quote) k += 2;
      else return k + 1;
    } else k++;
  }
  return sql.length;
}

// Serving, the CLI and the tests import it from the event store, the first PostgreSQL store.
export { redactedUrl };
