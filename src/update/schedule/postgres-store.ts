/**
 * The schedule store on PostgreSQL: the second adapter of `ScheduleStoreContract` (./store.ts), for a deployment whose
 * processes and hosts share one database (`store.url`, issue 19). Same tables and meaning as the SQLite file
 * (statements shared in ./schedule-sql.ts), beside the deployment's events, tables and registry, so the worker
 * (`schedule run` or `serve --schedule`) writes the run log and `schedule status|pause|resume` from any host read and
 * change the same state.
 *
 * Concurrency, and why:
 * - Every transaction takes one transaction-level advisory lock first, so the schedule's read-modify-writes run one
 *   at a time across processes, as SQLite's single writer makes them: a `schedule pause` from another host can never
 *   be overwritten by the worker saving the job state it read just before. They are a few short statements each
 *   (no job runs inside one), so serializing them costs nothing.
 * - The driver lease is a session-level advisory lock held on a connection of its own for as long as the worker runs.
 *   A second worker is refused at once with the holder named (host, pid, since), rather than left waiting: a waiting
 *   worker looks healthy in every process list while doing nothing, and an operator who started it by mistake would
 *   not learn it. The lock ends with its session, so a worker that crashed or lost its host frees the schedule without
 *   any timeout to tune; the row naming it is only shown while the session holding the lock is alive (pg_locks).
 * - Beneath the lease, a unique (job, due) index refuses a second run of a due time in the INSERT itself, so two
 *   processes cannot both run one due time even if a lease were lost between the scheduler's check and its begin.
 *
 * @example
 * const store = await PostgresScheduleStore.open("postgres://freshrec@db.internal/freshrec");
 * const scheduler = new Scheduler({ jobs, store, clock: new SystemClock() });
 * await scheduler.start(); // refused with ScheduleDriverHeldError while another worker drives this database
 */
import pg from "pg";
import { BIGINT_AS_NUMBER, inTransaction, openStorePool } from "../../data/postgres-pool.js";
import { ScheduleStoreError } from "./errors.js";
import { ScheduleStoreOverSql, SqlScheduleRecord, type ScheduleStatement } from "./schedule-sql.js";
import { ScheduleDriverHeldError, type DriverLease, type ScheduleDriver, type ScheduleRecord, type ScheduleStoreContract } from "./store.js";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS schedule_runs (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  job TEXT NOT NULL,
  due BIGINT NOT NULL,
  trigger TEXT NOT NULL,
  started_at BIGINT NOT NULL,
  ended_at BIGINT,
  status TEXT NOT NULL,
  duration_seconds DOUBLE PRECISION,
  cost TEXT,
  detail TEXT,
  error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS schedule_runs_once ON schedule_runs (job, due);
CREATE TABLE IF NOT EXISTS schedule_jobs (
  job TEXT COLLATE "C" PRIMARY KEY,
  cursor BIGINT NOT NULL,
  paused BOOLEAN NOT NULL,
  pause_reason TEXT,
  paused_at BIGINT,
  consecutive_failures INTEGER NOT NULL,
  counters TEXT NOT NULL,
  last_run_id BIGINT
);
CREATE TABLE IF NOT EXISTS schedule_driver (
  slot INTEGER PRIMARY KEY CHECK (slot = 1),
  host TEXT NOT NULL,
  pid INTEGER NOT NULL,
  since BIGINT NOT NULL,
  -- The session holding the driver lock: filled by the inserting session itself (the lease's own connection).
  backend_pid INTEGER NOT NULL DEFAULT pg_backend_pid()
);
`;

/** Advisory lock keys (any constants, distinct from the other stores'). */
const SCHEMA_LOCK = 0x73636873;
/** Held by every transaction: the schedule's writes are serialized across processes. */
const WRITE_LOCK = 0x73636877;
/** Held, at session level, by the one process driving the schedule. */
const DRIVER_LOCK = 0x73636864;

/** `?` placeholders as PostgreSQL's numbered ones (the shared statements have no `?` inside literals). */
function numbered(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

export class PostgresScheduleStore extends ScheduleStoreOverSql implements ScheduleStoreContract {
  protected readonly record: SqlScheduleRecord;
  private readonly leases = new Set<DriverLease>();

  private constructor(
    private readonly pool: pg.Pool,
    readonly location: string,
  ) {
    super();
    this.record = new SqlScheduleRecord(this.on(pool), location);
  }

  /**
   * Connects to the database at `url` and creates the schedule's tables when missing.
   * @throws FreshrecError naming the URL (without its password) and what PostgreSQL said.
   */
  static async open(url: string): Promise<PostgresScheduleStore> {
    // One connection for the driver lease, one for the transactions, one for reads meanwhile.
    const { pool, location } = await openStorePool({ url, store: "schedule store", schema: SCHEMA, schemaLock: SCHEMA_LOCK, max: 3, types: BIGINT_AS_NUMBER });
    return new PostgresScheduleStore(pool, location);
  }

  /** Statements executed on `client` (a pool: each on whichever connection is free). */
  private on(client: pg.Pool | pg.PoolClient): ScheduleStatement {
    return async <R>(sql: string, params: readonly (string | number | null)[] = []) => {
      try {
        return (await client.query(numbered(sql), params as unknown[])).rows as R[];
      } catch (error) {
        throw new ScheduleStoreError(`schedule store ${this.location}: ${(error as Error).message}`, sql, { cause: error });
      }
    };
  }

  /** Each call on whichever pooled connection is free: PostgreSQL isolates them from any open transaction. */
  protected within<T>(call: () => Promise<T>): Promise<T> {
    return call();
  }

  transaction<T>(body: (tx: ScheduleRecord) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, (client) => body(new SqlScheduleRecord(this.on(client), this.location)), WRITE_LOCK);
  }

  async claimDriver(driver: ScheduleDriver): Promise<DriverLease> {
    // The lock lives as long as this connection's session: the connection stays out of the pool until release.
    const client = await this.connect();
    let lost: Error | null = null;
    // A checked-out client's error would otherwise be an uncaught exception; the next check reports it.
    const onError = (error: Error) => (lost = error);
    client.on("error", onError);
    const exec = this.on(client);
    const giveBack = () => {
      client.off("error", onError);
      client.release(lost ?? undefined);
    };
    try {
      const [{ got }] = await exec<{ got: boolean }>("SELECT pg_try_advisory_lock(?) AS got", [DRIVER_LOCK]);
      if (!got) throw new ScheduleDriverHeldError(this.location, await this.driver());
      // On the lease's own connection, so the row's backend_pid is the session holding the lock.
      await new SqlScheduleRecord(exec, this.location).recordDriver(driver);
    } catch (error) {
      giveBack();
      throw error;
    }
    let released = false;
    const lease: DriverLease = {
      driver,
      check: async () => {
        try {
          if (lost !== null) throw lost;
          // A query that succeeds on the session proves the session, and so its lock, still exists.
          await client.query("SELECT 1");
        } catch (error) {
          lost ??= error as Error;
          throw new ScheduleStoreError(
            `${this.location}: lost the schedule's driver lock (its connection failed: ${(error as Error).message}); another process may drive the schedule now, so this one stops`,
            "SELECT 1",
            { cause: error },
          );
        }
      },
      release: async () => {
        if (released) return;
        released = true;
        this.leases.delete(lease);
        try {
          if (lost === null) {
            await exec("DELETE FROM schedule_driver WHERE backend_pid = pg_backend_pid()");
            await exec("SELECT pg_advisory_unlock(?)", [DRIVER_LOCK]);
          }
        } finally {
          giveBack();
        }
      },
    };
    this.leases.add(lease);
    return lease;
  }

  async driver(): Promise<ScheduleDriver | null> {
    // Only a row whose session still holds the lock: a crashed driver's row stays behind until the next claim.
    const [row] = await this.on(this.pool)<ScheduleDriver>(
      `SELECT d.host, d.pid, d.since FROM schedule_driver d
       WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.pid = d.backend_pid
                     AND l.classid = 0 AND l.objid = ? AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))`,
      [DRIVER_LOCK],
    );
    return row === undefined ? null : { host: row.host, pid: Number(row.pid), since: Number(row.since) };
  }

  async close(): Promise<void> {
    // A lease still held keeps its connection checked out, and pool.end() would wait for it forever.
    for (const lease of [...this.leases]) await lease.release().catch(() => {});
    await this.pool.end();
  }

  private async connect(): Promise<pg.PoolClient> {
    try {
      return await this.pool.connect();
    } catch (error) {
      throw new ScheduleStoreError(`schedule store ${this.location}: cannot connect: ${(error as Error).message}`, "connect", { cause: error });
    }
  }
}
