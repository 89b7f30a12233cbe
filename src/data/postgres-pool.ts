/**
 * How every PostgreSQL store of a deployment (`store.url`: events, tables, the model registry) connects: one pool per
 * store, its schema created in one transaction under an advisory lock (two processes starting at once would otherwise
 * race on CREATE ... IF NOT EXISTS and one of them fail on a duplicate type or index), and every message naming the
 * database without its password.
 *
 * @example
 * const { pool, location } = await openStorePool({ url, store: "table store", schema: SCHEMA, schemaLock: 0x74626c73, max: 4, types: TYPES });
 */
import pg from "pg";
import { FreshrecError } from "../domain/errors.js";

export interface StorePoolOptions {
  /** postgres://user:password@host:port/database */
  readonly url: string;
  /** What the store is, for messages: "event store", "table store", "model registry". */
  readonly store: string;
  /** Statements that create the store's tables when missing (idempotent). */
  readonly schema: string;
  /** Advisory lock key the schema is created under; any constant, distinct per store. */
  readonly schemaLock: number;
  /** Connections the pool opens at most. */
  readonly max: number;
  /** How the store reads column types (each store reads BIGINT its own way). */
  readonly types: pg.CustomTypesConfig;
}

/**
 * Connects to `url` and creates the store's schema when missing.
 * @returns the pool and the URL without its password (the store's `location`).
 * @throws FreshrecError naming the store and the URL (without its password) and what PostgreSQL said; no pool is left open.
 */
export async function openStorePool(options: StorePoolOptions): Promise<{ pool: pg.Pool; location: string }> {
  const location = redactedUrl(options.url);
  const pool = new pg.Pool({ connectionString: options.url, max: options.max, types: options.types });
  // An idle client's error (the server went away) must not crash the process: it is said on stderr, and the next
  // query that needs the server fails with its own error.
  pool.on("error", (error) => process.stderr.write(`freshrec: the ${options.store} ${location} lost an idle connection: ${error.message}\n`));
  try {
    await inTransaction(pool, (client) => client.query(options.schema), options.schemaLock);
  } catch (error) {
    await pool.end().catch(() => {});
    throw new FreshrecError("INTERNAL", `cannot open the ${options.store} ${location}: ${(error as Error).message}`, { cause: error });
  }
  return { pool, location };
}

/**
 * Runs `work` on one connection of `pool` inside one transaction, committed when it resolves and rolled back when it
 * throws; with `lock`, holding that transaction-level advisory lock first (so such transactions of every process run
 * one at a time).
 */
export async function inTransaction<T>(pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>, lock?: number): Promise<T> {
  const client = await pool.connect();
  try {
    return await transactionOn(client, () => work(client), lock);
  } finally {
    client.release();
  }
}

/**
 * Every transaction of the stores begins at READ COMMITTED whatever the database's default (a reader that wants one
 * snapshot says so first, as `readAppends` does): a transaction that takes an advisory lock and then reads what the
 * writer before it committed (max + row_number keys) needs each statement's own snapshot, and at REPEATABLE READ the
 * lock's SELECT would fix the snapshot before the lock was granted.
 */
const BEGIN_READ_COMMITTED = "BEGIN ISOLATION LEVEL READ COMMITTED";

/** The same on a connection the caller holds (a table build's, which keeps its session lock across transactions). */
export async function transactionOn<T>(client: pg.ClientBase, work: () => Promise<T>, lock?: number): Promise<T> {
  await client.query(BEGIN_READ_COMMITTED);
  try {
    if (lock !== undefined) await client.query("SELECT pg_advisory_xact_lock($1)", [lock]);
    const result = await work();
    await client.query("COMMIT");
    return result;
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw error;
  }
}

/** The URL without its password, for messages and logs. */
export function redactedUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(a PostgreSQL URL that does not parse)";
  }
}

const INT8 = 20;

/** BIGINT as a number (epoch ms and counts fit a double exactly); everything else as pg parses it. */
export const BIGINT_AS_NUMBER = {
  getTypeParser(oid: number, format?: "text" | "binary") {
    if (oid === INT8) return (text: string) => Number(text);
    return pg.types.getTypeParser(oid, format as "text");
  },
} as pg.CustomTypesConfig;
