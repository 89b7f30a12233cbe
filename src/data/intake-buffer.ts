/**
 * The intake buffer: a DuckDB file attached beside the workspace's event store (`events.duckdb` ->
 * `events.intake.duckdb`), where the server's event intake writes what it acknowledges, and a mover that moves those
 * rows into the event store off intake's path.
 *
 * Why: a DuckDB checkpoint of a file holds every append to that file, on any connection and to any table, for its
 * whole time, which grows with the event store's log, while appends to a separately attached file go on. With
 * intake writing here, no intake append waits for a checkpoint of the event store; what does are the other writers
 * of the store's file: the mover (a move a reader asks for may run inside the server's store queue, and holds it up
 * meanwhile) and the store's own connection (experiment changes, an in-process append). The mover runs the store's
 * checkpoints itself (once its log is full, `storeCheckpointLogBytes`, and in intake's quiet moments, `settle`); this
 * file's are small, since every move empties it.
 *
 * - Rows: each buffered table is the event store's table of the same name plus `seq`, the number of the commit that
 *   wrote it (one per transaction, increasing, one transaction at a time: `allocate`). Intake writes `events` and
 *   `users` (new users keyed from its own counter, the next after every key of both files: only this process writes
 *   either while it serves); the server's experiment log writes `experiment_exposures` and `experiment_outcomes`.
 *   `intake_keys` (idempotency keys) live here for good: nothing else reads them. `buffer_meta` pairs the file with
 *   its store (`claim`).
 * - A move: one transaction on the event store inserts every buffered row with `seq` in (moved, X] and records X
 *   (`meta` key `intake_moved_seq`); a second deletes the moved rows from this file (DuckDB lets one transaction
 *   write one attached database only). A crash between the two moves nothing twice: rows at or below the recorded
 *   seq are never moved again, and `attach` deletes them. A failed move is rolled back, counted and retried; no row
 *   is dropped. One that fails at `EventStore.open` fails the open, naming the way out (the buffer moved aside).
 * - Readers: `EventStore` moves everything buffered before each read and each append (./event-store.ts), so
 *   whatever reads the store (grounding, analysis, scheduled refreshes, readers through ./event-store-share.ts) sees
 *   every acknowledged event, and an append numbers its new users after the buffered ones.
 * - The mover runs on a connection of its own, one move at a time, and is not a task of the server's store queue
 *   (../serving/store-queue.ts): intake appends to this file while a move commits to the store or checkpoints it.
 *
 * @example
 * const buffer = await store.intakeBuffer(); // attached on first use; a leftover one is moved at EventStore.open
 * const seq = buffer.allocate(); // ... intake appends rows with this seq on buffer.connection, commits ...
 * buffer.committed(seq, rows); // or buffer.abandoned(seq) after a rollback
 * await buffer.drain(); // everything buffered is in the event store
 */
import { randomUUID } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import type { DuckDBConnection, DuckDBInstance } from "@duckdb/node-api";
import { BadInputError, FreshrecError } from "../domain/errors.js";

/** The name the buffer is attached under in the event store's DuckDB instance. */
export const INTAKE_BUFFER = "freshrec_intake";

/** The `meta` key (in the event store) of the last seq moved. */
export const MOVED_SEQ_KEY = "intake_moved_seq";

/** The `buffer_meta` key of the seq through which the buffer deleted moved rows (`IntakeBuffer.claim`). */
const DELETED_SEQ_KEY = "deleted_seq";

/** The `meta` key (in the event store) of the id its intake buffer records too (`IntakeBuffer.claim`). */
const STORE_ID_KEY = "intake_buffer_id";

/**
 * The write-ahead log at which the mover checkpoints the buffer after a move: it holds appends that every move
 * deleted again, so a checkpoint has little to write, and a small log keeps it that way (an intake append waits for
 * a checkpoint of this file while it runs).
 */
export const BUFFER_CHECKPOINT_LOG_BYTES = 4 * 2 ** 20;

/** How long after a buffered write the mover moves it, at most (readers move before they read, whatever this is). */
export const DEFAULT_MOVE_AFTER_MS = 1000;

/** The buffer file of the event store at `eventsPath` (beside it); null for a store in memory (buffered in memory). */
export function intakeBufferPath(eventsPath: string): string | null {
  if (eventsPath === ":memory:") return null;
  return eventsPath.endsWith(".duckdb") ? `${eventsPath.slice(0, -".duckdb".length)}.intake.duckdb` : `${eventsPath}.intake`;
}

/** What the mover did so far (the server's /metrics and /healthz). */
export interface IntakeBufferStatus {
  /** Rows written to the buffer and not moved yet. */
  readonly backlog: number;
  readonly moves: number;
  readonly rowsMoved: number;
  /** Failed moves, and failed deletes or buffer checkpoints after a move (`drain`). */
  readonly moveFailures: number;
  readonly lastMoveError: string | null;
  /** Checkpoints of the buffer file the mover ran. */
  readonly bufferCheckpoints: number;
  /** Checkpoints of the event store the mover ran after a timed move (`storeCheckpointLogBytes`). */
  readonly storeCheckpoints: number;
}

export class IntakeBuffer {
  /** The last seq given out by `allocate`. */
  private lastSeq: number;
  /** The seq given out and not yet committed or abandoned (`allocate`). */
  private openSeq: number | null = null;
  /** The largest seq of a transaction that committed rows (what a move must reach). */
  private committedSeq: number;
  private movedSeq: number;
  private backlogRows = 0;
  /** The running move (or drain), which the next one waits for. */
  private moving: Promise<unknown> = Promise.resolve();
  private moveTimer: NodeJS.Timeout | null = null;
  private closed = false;
  private connectionsClosed = false;
  private readonly tables = new Set<string>();
  moves = 0;
  rowsMoved = 0;
  moveFailures = 0;
  lastMoveError: unknown = null;
  bufferCheckpoints = 0;
  /** The buffer's write-ahead log at which a move checkpoints it. */
  bufferCheckpointLogBytes = BUFFER_CHECKPOINT_LOG_BYTES;
  /** Checkpoints of the event store after a timed move (`storeCheckpointLogBytes`). */
  storeCheckpoints = 0;
  /**
   * The event store's write-ahead log at which the mover checkpoints it after a timed move (not after a move a reader
   * asked for, which may run inside the server's store queue); null: never, DuckDB's own `checkpoint_threshold` does.
   */
  storeCheckpointLogBytes: number | null = null;
  /**
   * Told of each failed move (the server logs it), which is retried, and of each failed delete or buffer checkpoint
   * after a move, which the next move does.
   */
  onMoveError: ((error: unknown) => void) | null = null;
  moveAfterMs = DEFAULT_MOVE_AFTER_MS;

  private constructor(
    /** Intake's connection, whose default database is the buffer: its statements never touch the event store's file. */
    readonly connection: DuckDBConnection,
    private readonly mover: DuckDBConnection,
    /** The event store's database name (quoted), as statements on the buffer's connection name it. */
    readonly store: string,
    readonly path: string | null,
    private readonly storePath: string,
    movedSeq: number,
    lastSeq: number,
  ) {
    this.movedSeq = movedSeq;
    this.lastSeq = lastSeq;
    this.committedSeq = lastSeq;
  }

  /** The buffer's file, or that it is in memory, for messages. */
  get location(): string {
    return this.path ?? "(in memory)";
  }

  /**
   * Attaches the buffer (creating its file if needed) to the instance of the event store at `storePath`, deletes
   * rows a crash left behind after moving them, and counts the rest as the backlog (moved by the next `drain`).
   */
  static async attach(instance: DuckDBInstance, storePath: string): Promise<IntakeBuffer> {
    const path = intakeBufferPath(storePath);
    const fresh = path === null || !existsSync(path);
    // A connection of its own (an attachment is the instance's): the store's main one may be inside a transaction.
    const main = await instance.connect();
    let connection: DuckDBConnection | null = null;
    let mover: DuckDBConnection | null = null;
    try {
      const [[database]] = (await main.runAndReadAll("SELECT current_database()")).getRows() as [[string]];
      const store = quoteIdentifier(database);
      await main.run(`ATTACH ${quoteLiteral(path ?? ":memory:")} AS ${INTAKE_BUFFER}`);
      connection = await instance.connect();
      await connection.run(`USE ${INTAKE_BUFFER}`);
      mover = await instance.connect();
      await connection.run(
        "CREATE TABLE IF NOT EXISTS intake_keys (key VARCHAR PRIMARY KEY, body_hash VARCHAR NOT NULL, result VARCHAR NOT NULL, created_at BIGINT NOT NULL)",
      );
      // Keys recorded in the event store before intake wrote here still answer.
      const oldKeys = await connection.runAndReadAll(`SELECT count(*) FROM duckdb_tables() WHERE database_name = ${quoteLiteral(database)} AND table_name = 'intake_keys'`);
      if (fresh && Number(oldKeys.getRows()[0][0]) > 0) await connection.run(`INSERT INTO intake_keys SELECT * FROM ${store}.main.intake_keys ON CONFLICT DO NOTHING`);
      const moved = await main.runAndReadAll(`SELECT value FROM meta WHERE key = '${MOVED_SEQ_KEY}'`);
      const movedSeq = moved.currentRowCount ? Number(moved.getRows()[0][0]) : 0;
      const buffer = new IntakeBuffer(connection, mover, store, path, storePath, movedSeq, movedSeq);
      for (const table of await bufferedTables(mover)) buffer.tables.add(table);
      await buffer.claim(main);
      await buffer.table("events");
      await buffer.table("users");
      // A crash between a move's two transactions: those rows are in the event store already.
      await buffer.deleteMoved();
      let backlog = 0;
      for (const table of buffer.tables) {
        const [[rows, last]] = (await mover.runAndReadAll(`SELECT count(*), coalesce(max(seq), 0) FROM ${INTAKE_BUFFER}.${quoteIdentifier(table)}`)).getRows() as [[bigint, bigint]];
        backlog += Number(rows);
        buffer.lastSeq = Math.max(buffer.lastSeq, Number(last));
        buffer.committedSeq = buffer.lastSeq;
      }
      buffer.backlogRows = backlog;
      return buffer;
    } catch (error) {
      connection?.closeSync();
      mover?.closeSync();
      await main.run(`DETACH DATABASE IF EXISTS ${INTAKE_BUFFER}`).catch(() => undefined);
      if (error instanceof BadInputError) throw error;
      throw new FreshrecError("INTERNAL", `cannot attach the intake buffer ${path ?? "(in memory)"} of the event store ${storePath}: ${(error as Error).message}`, { cause: error });
    } finally {
      main.closeSync();
    }
  }

  /**
   * Pairs the buffer with its event store: each records the same id (the store in `meta`, the buffer in
   * `buffer_meta`), so that a buffer left beside a store that has since been replaced by another (the old one moved
   * aside, a new one made or copied in) is never moved into it: its rows' user and item keys are another store's. A
   * backup of the same store put back keeps its id, but records an older moved seq than the one the buffer deleted
   * through (`deleteMoved` records it): the buffer's rows may then be keyed to users only the newer store has, so
   * they are not moved into it either.
   * @throws BadInputError naming both files when the buffer holds rows of another store, or of a newer state of this one.
   */
  private async claim(main: DuckDBConnection): Promise<void> {
    await this.connection.run("CREATE TABLE IF NOT EXISTS buffer_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)");
    const read = async (c: DuckDBConnection, sql: string) => {
      const r = await c.runAndReadAll(sql);
      return r.currentRowCount ? String(r.getRows()[0][0]) : null;
    };
    let storeId = await read(main, `SELECT value FROM meta WHERE key = '${STORE_ID_KEY}'`);
    const bufferId = await read(this.connection, "SELECT value FROM buffer_meta WHERE key = 'store_id'");
    const buffered = async () => {
      let rows = 0;
      for (const table of this.tables) rows += Number((await this.connection.runAndReadAll(`SELECT count(*) FROM ${quoteIdentifier(table)}`)).getRows()[0][0]);
      return rows;
    };
    if (bufferId !== null && bufferId === storeId) {
      const deleted = Number((await read(this.connection, `SELECT value FROM buffer_meta WHERE key = '${DELETED_SEQ_KEY}'`)) ?? 0);
      if (deleted <= this.movedSeq) return;
      const rows = await buffered();
      if (rows > 0) {
        throw new BadInputError(
          `the intake buffer ${this.path} holds ${rows} rows written after the event store ${this.storePath} was moved into through seq ${deleted}, but that store records seq ${this.movedSeq} (an older copy of it was put back): ` +
            `its rows may name users only the newer store has; put back the newer store to have them moved into it, or move ${this.path} aside to drop them`,
        );
      }
      // Empty, but its idempotency keys answered for events the older store does not hold.
      await this.connection.run("DELETE FROM intake_keys");
      return;
    }
    if (bufferId !== null) {
      const rows = await buffered();
      if (rows > 0) {
        throw new BadInputError(
          `the intake buffer ${this.path} holds ${rows} rows of another event store than ${this.storePath} (the store it was made beside was replaced since): ` +
            `put back the store it was made beside to have them moved into it, or move ${this.path} aside too`,
        );
      }
      // Empty, but its idempotency keys answered for the other store's events.
      await this.connection.run("DELETE FROM intake_keys");
    }
    // The store's id first: a crash before the buffer records it leaves a buffer that adopts it next time.
    if (storeId === null) {
      storeId = randomUUID();
      await main.run(`INSERT OR REPLACE INTO meta VALUES ('${STORE_ID_KEY}', $id)`, { id: storeId });
    }
    await this.connection.run("INSERT OR REPLACE INTO buffer_meta VALUES ('store_id', $id)", { id: storeId });
  }

  /**
   * Makes sure the buffer has the table `name`: the event store's table of that name (which must exist) with `seq`
   * first, so a move copies every other column in order.
   * @returns the table's name as the buffer's connection names it.
   */
  async table(name: string): Promise<string> {
    if (!this.tables.has(name)) {
      await this.connection.run(`CREATE TABLE IF NOT EXISTS ${quoteIdentifier(name)} AS SELECT 0::BIGINT AS seq, * FROM ${this.store}.main.${quoteIdentifier(name)} LIMIT 0`);
      this.tables.add(name);
    }
    return quoteIdentifier(name);
  }

  /**
   * The seq of the next transaction that writes to the buffer (all its rows carry it). One at a time: a move takes
   * every row up to the largest seq it sees, so a lower seq committing after it would be deleted unmoved. Every
   * writer writes through the server's store queue, one after another; this checks it.
   * @throws FreshrecError (INTERNAL) while the seq given out before is neither `committed` nor `abandoned`.
   */
  allocate(): number {
    if (this.openSeq !== null) {
      throw new FreshrecError("INTERNAL", `the intake buffer ${this.location} gave out seq ${this.openSeq}, not committed or abandoned yet: its writers must write one at a time`);
    }
    this.openSeq = ++this.lastSeq;
    return this.openSeq;
  }

  /** Tells the buffer that the transaction of `seq` rolled back or never started: the next writer may allocate. */
  abandoned(seq: number): void {
    if (this.openSeq === seq) this.openSeq = null;
  }

  /**
   * Tells the buffer that the transaction of `seq` committed `rows` rows (none: nothing waits for a move); the mover
   * moves them within `moveAfterMs`.
   */
  committed(seq: number, rows: number): void {
    this.abandoned(seq);
    if (rows <= 0) return;
    this.backlogRows += rows;
    this.committedSeq = Math.max(this.committedSeq, seq);
    this.scheduleMove();
  }

  /** Whether rows wait to be moved. */
  get pending(): boolean {
    return this.committedSeq > this.movedSeq;
  }

  status(): IntakeBufferStatus {
    return {
      backlog: this.backlogRows,
      moves: this.moves,
      rowsMoved: this.rowsMoved,
      moveFailures: this.moveFailures,
      lastMoveError: this.lastMoveError === null ? null : this.lastMoveError instanceof Error ? this.lastMoveError.message : String(this.lastMoveError),
      bufferCheckpoints: this.bufferCheckpoints,
      storeCheckpoints: this.storeCheckpoints,
    };
  }

  /**
   * Moves everything buffered so far into the event store (after any move running now). Once the rows are in the
   * store, a failure to delete them from the buffer or to checkpoint it is counted and told to `onMoveError`, not
   * thrown: the next move does both (nothing moved is moved again).
   * @throws FreshrecError when the move fails (rolled back: the rows stay buffered, and the next move takes them).
   */
  async drain(): Promise<void> {
    if (this.closed) return;
    try {
      await this.exclusive(async () => {
        if (this.closed || !this.pending) return;
        await this.moveCommitted();
        try {
          await this.deleteMoved();
          await this.checkpointBuffer();
        } catch (error) {
          this.moveFailures++;
          this.lastMoveError = error;
          this.onMoveError?.(error);
        }
      });
    } catch (error) {
      // Whoever asked (a reader, the timer), the mover tries again.
      this.scheduleMove();
      throw error;
    }
  }

  /** Runs `task` on the mover's connection after the mover's running task, alone: one statement at a time there. */
  private exclusive<T>(task: () => Promise<T>): Promise<T> {
    const result = this.moving.then(task, task);
    this.moving = result.catch(() => undefined);
    return result;
  }

  /**
   * A quiet moment's upkeep (intake calls it when no batch has come for a while): a move, then a checkpoint of the
   * event store when its write-ahead log holds at least `minLogBytes`, and of the buffer's file whatever its log holds
   * (so that a burst of intake starts with an empty log here, and meets no checkpoint of this file sooner than it must).
   * @returns whether a checkpoint ran.
   */
  async settle(minLogBytes: number): Promise<boolean> {
    await this.drain();
    const store = await this.checkpointStore(minLogBytes);
    const buffer = await this.exclusive(() => this.checkpointBuffer(1));
    return store || buffer;
  }

  /**
   * Checkpoints the event store on the mover's connection when its write-ahead log holds at least `minLogBytes`
   * (intake appends meanwhile: they write the buffer's file).
   * @returns whether it ran.
   * @throws FreshrecError naming the store's file.
   */
  private checkpointStore(minLogBytes: number): Promise<boolean> {
    return this.exclusive(async () => {
      if (this.closed || this.storePath === ":memory:") return false;
      const logged = statSync(`${this.storePath}.wal`, { throwIfNoEntry: false })?.size ?? 0;
      if (logged === 0 || logged < minLogBytes) return false;
      try {
        await this.mover.run(`CHECKPOINT ${this.store}`);
      } catch (error) {
        throw new FreshrecError("INTERNAL", `checkpointing the event store ${this.storePath} failed (retried after a later move): ${(error as Error).message}`, { cause: error });
      }
      return true;
    });
  }

  /**
   * The first step of a move, alone (a move is this, then `deleteMoved`): copies every buffered row above the
   * recorded seq into the event store and records the largest seq copied, in one transaction.
   * @returns the rows copied.
   */
  async moveCommitted(): Promise<number> {
    const m = this.mover;
    await m.run("BEGIN TRANSACTION");
    try {
      // Read inside the transaction: its snapshot of the buffer is the one the copies below read.
      const parts = [...this.tables].map((t) => `SELECT max(seq) AS s FROM ${INTAKE_BUFFER}.${quoteIdentifier(t)}`).join(" UNION ALL ");
      const [[top]] = (await m.runAndReadAll(`SELECT coalesce(max(s), 0) FROM (${parts})`)).getRows() as [[bigint]];
      const through = Number(top);
      if (through <= this.movedSeq) {
        await m.run("ROLLBACK");
        return 0;
      }
      let rows = 0;
      for (const table of this.tables) {
        const t = quoteIdentifier(table);
        const inserted = await m.run(`INSERT INTO ${this.store}.main.${t} SELECT * EXCLUDE (seq) FROM ${INTAKE_BUFFER}.${t} WHERE seq > $moved AND seq <= $through ORDER BY seq`, {
          moved: this.movedSeq,
          through,
        });
        rows += Number(inserted.rowsChanged);
      }
      await m.run(`INSERT OR REPLACE INTO ${this.store}.main.meta VALUES ('${MOVED_SEQ_KEY}', $through)`, { through: String(through) });
      await m.run("COMMIT");
      this.movedSeq = through;
      this.backlogRows = Math.max(0, this.backlogRows - rows);
      this.rowsMoved += rows;
      this.moves++;
      return rows;
    } catch (error) {
      await m.run("ROLLBACK").catch(() => undefined);
      this.moveFailures++;
      this.lastMoveError = error;
      throw new FreshrecError("INTERNAL", `moving the intake buffer ${this.location} into the event store ${this.storePath} failed, nothing was moved (retried): ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /**
   * The second step of a move: deletes from the buffer the rows the event store holds (seq at or below the recorded
   * one), and records that seq in the buffer (an older copy of the store put back records a lower one: `claim`).
   */
  async deleteMoved(): Promise<void> {
    const m = this.mover;
    await m.run("BEGIN TRANSACTION");
    try {
      for (const table of this.tables) await m.run(`DELETE FROM ${INTAKE_BUFFER}.${quoteIdentifier(table)} WHERE seq <= $moved`, { moved: this.movedSeq });
      await m.run(`INSERT OR REPLACE INTO ${INTAKE_BUFFER}.buffer_meta VALUES ('${DELETED_SEQ_KEY}', $moved)`, { moved: String(this.movedSeq) });
      await m.run("COMMIT");
    } catch (error) {
      await m.run("ROLLBACK").catch(() => undefined);
      throw new FreshrecError("INTERNAL", `deleting moved rows from the intake buffer ${this.location} failed (they are not moved again): ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /**
   * Stops the mover and closes the buffer's connections (`EventStore.closeIntake` calls it): no move starts after it,
   * and the running one (a move, a checkpoint of either file) ends first, since closing a connection while a
   * statement runs on it leaves that statement unsettled for good. What is still buffered is moved at the next open;
   * drain first to leave nothing buffered.
   */
  async close(): Promise<void> {
    this.closed = true;
    if (this.moveTimer !== null) clearTimeout(this.moveTimer);
    this.moveTimer = null;
    // Until no task joined the chain meanwhile (each one started after this does nothing: they check `closed`).
    for (let running = this.moving; ; running = this.moving) {
      await running;
      if (running === this.moving) break;
    }
    this.closeNow();
  }

  /**
   * Closes the buffer's connections at once (`EventStore.close`): only for a buffer nothing runs on, which
   * `close` waits for.
   */
  closeNow(): void {
    if (this.connectionsClosed) return;
    this.connectionsClosed = true;
    this.closed = true;
    if (this.moveTimer !== null) clearTimeout(this.moveTimer);
    this.moveTimer = null;
    this.connection.closeSync();
    this.mover.closeSync();
  }

  private scheduleMove(): void {
    if (this.moveTimer !== null || this.closed) return;
    this.moveTimer = setTimeout(() => {
      this.moveTimer = null;
      // A failed move is retried (`drain` arms this again): the rows stay buffered until a move succeeds.
      const limit = this.storeCheckpointLogBytes;
      this.drain()
        .then(() => (limit === null ? false : this.checkpointStore(limit)))
        .then(
          (ran) => {
            if (ran) this.storeCheckpoints++;
          },
          (error: unknown) => this.onMoveError?.(error),
        );
    }, this.moveAfterMs);
    // A buffer never keeps a process alive: whoever closes the store drains it.
    this.moveTimer.unref();
  }

  /**
   * Checkpoints the buffer's file when its write-ahead log holds at least `minLogBytes` (an intake append waits while
   * it runs; right after a move's delete it has least to write).
   * @returns whether it ran.
   */
  private async checkpointBuffer(minLogBytes = this.bufferCheckpointLogBytes): Promise<boolean> {
    if (this.path === null || this.closed) return false;
    const logged = statSync(`${this.path}.wal`, { throwIfNoEntry: false })?.size ?? 0;
    if (logged === 0 || logged < minLogBytes) return false;
    try {
      await this.mover.run(`CHECKPOINT ${INTAKE_BUFFER}`);
    } catch (error) {
      throw new FreshrecError("INTERNAL", `checkpointing the intake buffer ${this.path} failed (what was moved stays moved; retried after the next move): ${(error as Error).message}`, {
        cause: error,
      });
    }
    this.bufferCheckpoints++;
    return true;
  }
}

/** A DuckDB identifier (table, database) as SQL names it, whatever characters it holds. */
export function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** A string as a DuckDB SQL literal (for statements that take no parameter, such as ATTACH). */
export function quoteLiteral(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

/** The tables of the attached buffer that have a `seq` column (what a leftover file holds), on any connection. */
async function bufferedTables(connection: DuckDBConnection): Promise<string[]> {
  const rows = await connection.runAndReadAll(`SELECT table_name FROM duckdb_columns() WHERE database_name = '${INTAKE_BUFFER}' AND column_name = 'seq' ORDER BY table_name`);
  return (rows.getRows() as [string][]).map(([name]) => name);
}

/** The rows of the attached buffer above `movedSeq` (not in the event store yet), on any connection. */
export async function unmovedIntakeRows(connection: DuckDBConnection, movedSeq: number): Promise<number> {
  let rows = 0;
  for (const table of await bufferedTables(connection)) {
    const counted = await connection.runAndReadAll(`SELECT count(*) FROM ${INTAKE_BUFFER}.${quoteIdentifier(table)} WHERE seq > $moved`, { moved: movedSeq });
    rows += Number(counted.getRows()[0][0]);
  }
  return rows;
}
