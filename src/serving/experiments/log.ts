/**
 * Experiments, exposures and outcomes, kept in the event store beside the events they are measured with (this file:
 * the DuckDB adapter; ./postgres-log.ts the PostgreSQL one) (tables `experiments`, `experiment_exposures`, `experiment_outcomes`), so an analysis joins them in one place
 * and a backup of the event store holds everything.
 *
 * - An *exposure* is one slot of one served slate: (exposure id, rank, cluster, items shown), with the arm and the
 *   table version that answered.
 * - An *outcome* is what happened to a slot: `satisfied` (a positive engagement with the slot's cluster),
 *   `dissatisfied` (an engagement below the positive threshold) or `negative` (explicit "not interested" feedback).
 *   Live, outcomes are attributed from ingested events (`attributeOutcomes`): the first event of the user on the
 *   slot's cluster within the attribution window after the exposure. The simulation logs the platform's own responses.
 *
 * Writes are buffered (`logExposure` is called on the request path) and flushed in one appender pass.
 *
 * @example
 * const log = await ExperimentLog.open(events);
 * await log.create(parseExperimentDefinition(input), clock.now());
 * log.logExposure({ exposureId, experiment: "e1", arm: "control", userId, ts, tableVersion, coldStart: false, slots });
 * await log.flush();
 */
import { BIGINT, BOOLEAN, FLOAT, INTEGER, LIST, VARCHAR, listValue, type DuckDBType, type DuckDBValue } from "@duckdb/node-api";
import { EventStore, appendChunks, type EventStoreContract } from "../../data/event-store.js";
import type { IntakeBuffer } from "../../data/intake-buffer.js";
import { PostgresEventStore } from "../../data/postgres-event-store.js";
// Type-only the other way (./postgres-log.ts imports this file's types), so there is no cycle when it runs.
import { PostgresExperimentLog } from "./postgres-log.js";
import { BadInputError, FreshrecError } from "../../domain/errors.js";
import type { Experiment, ExperimentDefinition, ExperimentStatus } from "./definition.js";

export type OutcomeKind = "satisfied" | "dissatisfied" | "negative";

export interface ExposureSlot {
  readonly rank: number;
  readonly cluster: string;
  readonly items: readonly string[];
}

export interface ExposureRecord {
  readonly exposureId: string;
  readonly experiment: string;
  readonly arm: string;
  readonly userId: string;
  readonly ts: number;
  readonly tableVersion: string | null;
  readonly coldStart: boolean;
  readonly slots: readonly ExposureSlot[];
}

export interface OutcomeRecord {
  readonly exposureId: string;
  readonly experiment: string;
  readonly arm: string;
  readonly userId: string;
  readonly rank: number;
  readonly cluster: string;
  readonly itemId: string | null;
  readonly ts: number;
  readonly outcome: OutcomeKind;
  readonly engagement: number | null;
}

/** An ingested event as outcome attribution needs it. */
export interface AttributableEvent {
  readonly userId: string;
  readonly itemId: string;
  readonly clusterId: string;
  readonly ts: number;
  readonly engagement: number | null;
  /** Explicit "not interested" feedback. */
  readonly negative: boolean;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS experiments (name VARCHAR PRIMARY KEY, definition VARCHAR NOT NULL, status VARCHAR NOT NULL, created_at BIGINT NOT NULL, stopped_at BIGINT);
CREATE TABLE IF NOT EXISTS experiment_exposures (exposure_id VARCHAR NOT NULL, experiment VARCHAR NOT NULL, arm VARCHAR NOT NULL, user_id VARCHAR NOT NULL,
  ts BIGINT NOT NULL, rank INTEGER NOT NULL, cluster_id VARCHAR NOT NULL, item_ids VARCHAR NOT NULL, table_version VARCHAR, cold_start BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS experiment_outcomes (exposure_id VARCHAR NOT NULL, experiment VARCHAR NOT NULL, arm VARCHAR NOT NULL, user_id VARCHAR NOT NULL,
  rank INTEGER NOT NULL, cluster_id VARCHAR NOT NULL, item_id VARCHAR, ts BIGINT NOT NULL, outcome VARCHAR NOT NULL, engagement FLOAT);
`;

const EXPOSURE_TYPES: DuckDBType[] = [VARCHAR, VARCHAR, VARCHAR, VARCHAR, BIGINT, INTEGER, VARCHAR, VARCHAR, VARCHAR, BOOLEAN];
const OUTCOME_TYPES: DuckDBType[] = [VARCHAR, VARCHAR, VARCHAR, VARCHAR, INTEGER, VARCHAR, VARCHAR, BIGINT, VARCHAR, FLOAT];

interface ExperimentRow {
  name: string;
  definition: string;
  status: ExperimentStatus;
  created_at: bigint | number;
  stopped_at: bigint | number | null;
}

function toExperiment(r: ExperimentRow): Experiment {
  const d = JSON.parse(r.definition) as ExperimentDefinition;
  return { ...d, status: r.status, createdAt: Number(r.created_at), stoppedAt: r.stopped_at === null ? null : Number(r.stopped_at) };
}

/**
 * What the server and the CLI use of an experiment log; both adapters implement it: `ExperimentLog` (the DuckDB event
 * store) and `PostgresExperimentLog` (./postgres-log.ts). `openExperimentLog` picks the one of a store.
 */
export interface ExperimentLogContract {
  list(): Promise<Experiment[]>;
  /** NOT_FOUND for an unknown name. */
  get(name: string): Promise<Experiment>;
  active(): Promise<Experiment | null>;
  /** Stores a new experiment as the active one; BAD_INPUT for a name used before, or another active without `replace`. */
  create(definition: ExperimentDefinition, now: number, options?: { replace?: boolean }): Promise<Experiment>;
  stop(name: string, now: number): Promise<Experiment>;
  logExposure(record: ExposureRecord): void;
  logOutcome(record: OutcomeRecord): void;
  /** Rows (exposure slots and outcomes) waiting for `flush`. */
  readonly buffered: number;
  flush(): Promise<number>;
  attributeOutcomes(experiment: string, events: readonly AttributableEvent[], windowMs: number, positiveMin: number | null): Promise<number>;
}

/**
 * The experiment `name` as any event store holds it, read with one SELECT and nothing created: also from a store opened
 * read-only or read through the process that holds it (`freshrec experiment analyze` beside `freshrec serve`).
 * @throws FreshrecError (NOT_FOUND) for a name the store never had (or a store without experiments at all).
 */
export async function readExperiment(store: EventStoreContract, name: string): Promise<Experiment> {
  // information_schema is in both dialects: a store where no experiment was ever made has no table to read.
  const [found] = await store.query<{ n: bigint | number }>(
    "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'experiments' AND table_schema = current_schema()",
  );
  const [row] = Number(found.n) === 0 ? [] : await store.query<ExperimentRow>("SELECT * FROM experiments WHERE name = $name", { name });
  if (!row) throw new FreshrecError("NOT_FOUND", `experiment ${JSON.stringify(name)} does not exist`);
  return toExperiment(row);
}

/**
 * The experiment log kept in `store`, whichever adapter it is. `intakeBuffer`: the DuckDB store's intake buffer, which
 * the log then writes its exposures and outcomes to (the server's: see `ExperimentLog.open`).
 */
export async function openExperimentLog(store: EventStoreContract, options: { intakeBuffer?: IntakeBuffer | null } = {}): Promise<ExperimentLogContract> {
  if (store instanceof PostgresEventStore) return PostgresExperimentLog.open(store);
  if (store instanceof EventStore) return ExperimentLog.open(store, options.intakeBuffer ?? null);
  throw new FreshrecError("INTERNAL", `no experiment log for an event store of dialect ${store.dialect}`);
}

export class ExperimentLog implements ExperimentLogContract {
  private exposures: DuckDBValue[][] = [];
  private outcomes: DuckDBValue[][] = [];

  private constructor(
    private readonly store: EventStore,
    private readonly buffer: IntakeBuffer | null,
  ) {}

  /**
   * Creates the tables when missing. With `buffer` (the store's intake buffer, ../../data/intake-buffer.ts), exposures
   * and outcomes are written to it, the mover moving them into the store like intake's events: the server attributes
   * outcomes inside intake's write, which must not wait for a write to the store's file (a checkpoint of the store
   * holds every write to it). Reads of the log's tables through the store (an analysis) move the buffer first; the
   * attribution reads both files.
   */
  static async open(store: EventStore, buffer: IntakeBuffer | null = null): Promise<ExperimentLog> {
    await store.connection.run(SCHEMA);
    if (buffer) for (const table of ["experiment_exposures", "experiment_outcomes"]) await buffer.table(table);
    return new ExperimentLog(store, buffer);
  }

  async list(): Promise<Experiment[]> {
    return (await this.store.query<ExperimentRow>("SELECT * FROM experiments ORDER BY created_at, name")).map(toExperiment);
  }

  async get(name: string): Promise<Experiment> {
    return readExperiment(this.store, name);
  }

  /** The one active experiment, if any. */
  async active(): Promise<Experiment | null> {
    const [row] = await this.store.query<ExperimentRow>("SELECT * FROM experiments WHERE status = 'active' ORDER BY created_at DESC LIMIT 1");
    return row ? toExperiment(row) : null;
  }

  /**
   * Stores a new experiment as the active one. At most one experiment is active: with another one active this fails
   * unless `replace`, which stops the other one in the same transaction.
   */
  async create(definition: ExperimentDefinition, now: number, options: { replace?: boolean } = {}): Promise<Experiment> {
    const c = this.store.connection;
    await c.run("BEGIN TRANSACTION");
    try {
      const existing = await this.store.query<{ n: bigint }>("SELECT count(*) AS n FROM experiments WHERE name = $name", { name: definition.name });
      if (Number(existing[0].n) > 0) throw new BadInputError(`experiment ${JSON.stringify(definition.name)} already exists (names are never reused, so its data stays unambiguous)`);
      const active = await this.store.query<{ name: string }>("SELECT name FROM experiments WHERE status = 'active'");
      if (active.length && !options.replace) {
        throw new BadInputError(`experiment ${JSON.stringify(active[0].name)} is active; stop it first, or replace it`);
      }
      await c.run("UPDATE experiments SET status = 'stopped', stopped_at = $now WHERE status = 'active'", { now: BigInt(now) });
      await c.run("INSERT INTO experiments VALUES ($name, $definition, 'active', $now, NULL)", {
        name: definition.name,
        definition: JSON.stringify(definition),
        now: BigInt(now),
      });
      await c.run("COMMIT");
    } catch (error) {
      await c.run("ROLLBACK");
      throw error;
    }
    return this.get(definition.name);
  }

  async stop(name: string, now: number): Promise<Experiment> {
    const experiment = await this.get(name);
    if (experiment.status === "active") {
      await this.store.connection.run("UPDATE experiments SET status = 'stopped', stopped_at = $now WHERE name = $name", { name, now: BigInt(now) });
    }
    return this.get(name);
  }

  /** Buffers one served slate (written at the next `flush`). */
  logExposure(record: ExposureRecord): void {
    for (const slot of record.slots) {
      this.exposures.push([
        record.exposureId,
        record.experiment,
        record.arm,
        record.userId,
        BigInt(Math.round(record.ts)),
        slot.rank,
        slot.cluster,
        slot.items.join(","),
        record.tableVersion,
        record.coldStart,
      ]);
    }
  }

  /** Buffers one outcome (the simulation's responses). */
  logOutcome(record: OutcomeRecord): void {
    this.outcomes.push([
      record.exposureId,
      record.experiment,
      record.arm,
      record.userId,
      record.rank,
      record.cluster,
      record.itemId,
      BigInt(Math.round(record.ts)),
      record.outcome,
      record.engagement,
    ]);
  }

  /** Rows waiting for `flush`. */
  get buffered(): number {
    return this.exposures.length + this.outcomes.length;
  }

  /** Writes buffered exposures and outcomes; returns how many rows. */
  async flush(): Promise<number> {
    const exposures = this.exposures;
    const outcomes = this.outcomes;
    this.exposures = [];
    this.outcomes = [];
    try {
      if (this.buffer) await this.appendBuffered(this.buffer, exposures, outcomes);
      else {
        if (exposures.length) await this.appendRows("experiment_exposures", EXPOSURE_TYPES, exposures);
        if (outcomes.length) await this.appendRows("experiment_outcomes", OUTCOME_TYPES, outcomes);
      }
    } catch (error) {
      // Kept for the next flush rather than lost.
      this.exposures = exposures.concat(this.exposures);
      this.outcomes = outcomes.concat(this.outcomes);
      throw error;
    }
    return exposures.length + outcomes.length;
  }

  /**
   * Attributes ingested events to the active experiment's exposures: each slot gets the first event of its user on
   * its cluster at or after the exposure and before `windowMs` later; a slot that already has an outcome keeps it.
   * @returns the number of outcomes written.
   */
  async attributeOutcomes(experiment: string, events: readonly AttributableEvent[], windowMs: number, positiveMin: number | null): Promise<number> {
    if (events.length === 0) return 0;
    const buffer = this.buffer;
    // Buffered: exposures and outcomes are in the buffer or already moved into the store, so both are read, and the
    // new outcomes are written to the buffer, as one buffer transaction (its own seq). A move (insert into the store,
    // then delete from the buffer) cannot hide a row from both reads as long as the buffer's snapshot is not later
    // than the store's: so if DuckDB starts an attached file's snapshot when a statement first touches it, the
    // buffer must come first, as the INSERT's target does here (intake's read of the users orders it explicitly).
    const run = buffer ? buffer.connection : this.store.connection;
    const [exposures, outcomes, target] = buffer
      ? [
          `(SELECT * FROM ${buffer.store}.main.experiment_exposures UNION ALL SELECT * EXCLUDE (seq) FROM experiment_exposures)`,
          `(SELECT exposure_id, rank FROM ${buffer.store}.main.experiment_outcomes UNION ALL SELECT exposure_id, rank FROM experiment_outcomes)`,
          "experiment_outcomes SELECT $seq::BIGINT AS seq, *",
        ]
      : ["experiment_exposures", "experiment_outcomes", "experiment_outcomes SELECT *"];
    const positive = positiveMin === null ? "true" : "(b.engagement IS NULL OR b.engagement >= $positiveMin)";
    const params: Record<string, DuckDBValue> = {
      experiment,
      window: BigInt(Math.round(windowMs)),
      users: listValue(events.map((e) => e.userId)),
      items: listValue(events.map((e) => e.itemId)),
      clusters: listValue(events.map((e) => e.clusterId)),
      ts: listValue(events.map((e) => BigInt(Math.round(e.ts)))),
      engagement: listValue(events.map((e) => e.engagement)),
      negative: listValue(events.map((e) => e.negative)),
    };
    if (positiveMin !== null) params.positiveMin = positiveMin;
    // Typed lists: left to itself DuckDB types a list by its first value, so engagements [1, 0.5] failed as integers.
    const types = { users: LIST(VARCHAR), items: LIST(VARCHAR), clusters: LIST(VARCHAR), ts: LIST(BIGINT), engagement: LIST(FLOAT), negative: LIST(BOOLEAN) };
    const seq = buffer ? buffer.allocate() : 0;
    if (buffer) params.seq = BigInt(seq);
    // The INSERT's own count: counting the table before and after would miss rows, since the mover deletes moved
    // rows from the buffer on its own connection at any time.
    let inserted: Awaited<ReturnType<typeof run.run>>;
    try {
      inserted = await run.run(
        `INSERT INTO ${target} FROM (
         WITH b AS (
           SELECT unnest($users::VARCHAR[]) AS user_id, unnest($items::VARCHAR[]) AS item_id, unnest($clusters::VARCHAR[]) AS cluster_id,
                  unnest($ts::BIGINT[]) AS ts, unnest($engagement::FLOAT[]) AS engagement, unnest($negative::BOOLEAN[]) AS negative
         ),
         matched AS (
           SELECT x.exposure_id, x.experiment, x.arm, x.user_id, x.rank, x.cluster_id, b.item_id, b.ts,
                  CASE WHEN b.negative THEN 'negative' WHEN ${positive} THEN 'satisfied' ELSE 'dissatisfied' END AS outcome,
                  b.engagement,
                  row_number() OVER (PARTITION BY x.exposure_id, x.rank ORDER BY b.ts, b.item_id) AS k
           FROM ${exposures} x JOIN b ON b.user_id = x.user_id AND b.cluster_id = x.cluster_id
             AND b.ts >= x.ts AND b.ts < x.ts + $window
           WHERE x.experiment = $experiment
         )
         SELECT exposure_id, experiment, arm, user_id, rank, cluster_id, item_id, ts, outcome, engagement FROM matched m
         WHERE k = 1 AND NOT EXISTS (SELECT 1 FROM ${outcomes} o WHERE o.exposure_id = m.exposure_id AND o.rank = m.rank))`,
        params,
        types,
      );
    } catch (error) {
      buffer?.abandoned(seq);
      throw error;
    }
    const added = Number(inserted.rowsChanged);
    buffer?.committed(seq, added);
    return added;
  }

  /** Appends exposures and outcomes to the intake buffer in one transaction (its own seq). */
  private async appendBuffered(buffer: IntakeBuffer, exposures: readonly DuckDBValue[][], outcomes: readonly DuckDBValue[][]): Promise<void> {
    if (exposures.length + outcomes.length === 0) return;
    const c = buffer.connection;
    const seq = buffer.allocate();
    try {
      await c.run("BEGIN TRANSACTION");
      const value = BigInt(seq);
      if (exposures.length) await appendChunks(c, "experiment_exposures", [BIGINT, ...EXPOSURE_TYPES], exposures.map((r) => [value, ...r]));
      if (outcomes.length) await appendChunks(c, "experiment_outcomes", [BIGINT, ...OUTCOME_TYPES], outcomes.map((r) => [value, ...r]));
      await c.run("COMMIT");
    } catch (error) {
      await c.run("ROLLBACK").catch(() => undefined);
      buffer.abandoned(seq);
      throw error;
    }
    buffer.committed(seq, exposures.length + outcomes.length);
  }

  private async appendRows(table: string, types: DuckDBType[], rows: readonly DuckDBValue[][]): Promise<void> {
    await appendChunks(this.store.connection, table, types, rows);
  }
}
