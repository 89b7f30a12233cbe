/**
 * The experiment log on PostgreSQL: experiments, exposures and outcomes kept beside a deployment's events (same
 * tables and meaning as the DuckDB log, ./log.ts), so that servers on `store.url` run experiments and any of them (or
 * the CLI) analyses one over every replica's exposures.
 *
 * Writes differ from DuckDB's appender: a flush is one INSERT ... SELECT FROM unnest(...) per table, and attribution
 * one INSERT ... WITH over the batch's arrays, in one statement so that two servers attributing at once cannot both
 * give a slot an outcome (the NOT EXISTS and the insert see one snapshot per statement; the `rank` tie-break on item
 * ids compares them by code point, as DuckDB does).
 *
 * @example
 * const log = await PostgresExperimentLog.open(events);
 * await log.create(parseExperimentDefinition(input), clock.now());
 * log.logExposure(record);
 * await log.flush();
 */
import type { PostgresEventStore } from "../../data/postgres-event-store.js";
import { BadInputError, FreshrecError } from "../../domain/errors.js";
import type { Experiment, ExperimentDefinition, ExperimentStatus } from "./definition.js";
import type { AttributableEvent, ExperimentLogContract, ExposureRecord, OutcomeRecord } from "./log.js";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, definition TEXT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL, stopped_at BIGINT);
CREATE TABLE IF NOT EXISTS experiment_exposures (exposure_id TEXT NOT NULL, experiment TEXT NOT NULL, arm TEXT NOT NULL, user_id TEXT NOT NULL,
  ts BIGINT NOT NULL, rank INTEGER NOT NULL, cluster_id TEXT NOT NULL, item_ids TEXT NOT NULL, table_version TEXT, cold_start BOOLEAN NOT NULL);
CREATE INDEX IF NOT EXISTS experiment_exposures_by_user ON experiment_exposures (experiment, user_id, cluster_id);
CREATE TABLE IF NOT EXISTS experiment_outcomes (exposure_id TEXT NOT NULL, experiment TEXT NOT NULL, arm TEXT NOT NULL, user_id TEXT NOT NULL,
  rank INTEGER NOT NULL, cluster_id TEXT NOT NULL, item_id TEXT, ts BIGINT NOT NULL, outcome TEXT NOT NULL, engagement REAL);
CREATE INDEX IF NOT EXISTS experiment_outcomes_by_slot ON experiment_outcomes (exposure_id, rank);
`;

/** The channel creating or stopping an experiment notifies (with its name), when it commits: replicas follow it. */
export const EXPERIMENTS_CHANNEL = "freshrec_experiments";

/** Any constant: the advisory lock under which experiments are created (at most one active). */
const CREATE_LOCK = 0x65787063;

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

export class PostgresExperimentLog implements ExperimentLogContract {
  private exposures: ExposureRecord[] = [];
  private outcomes: OutcomeRecord[] = [];
  private slots = 0;

  private constructor(private readonly store: PostgresEventStore) {}

  /** Creates the tables when missing. */
  static async open(store: PostgresEventStore): Promise<PostgresExperimentLog> {
    await store.transaction(async (client) => {
      await client.query("SELECT pg_advisory_xact_lock($1)", [CREATE_LOCK]);
      await client.query(SCHEMA);
    });
    return new PostgresExperimentLog(store);
  }

  async list(): Promise<Experiment[]> {
    return (await this.store.query<ExperimentRow>(`SELECT * FROM experiments ORDER BY created_at, name COLLATE "C"`)).map(toExperiment);
  }

  async get(name: string): Promise<Experiment> {
    const [row] = await this.store.query<ExperimentRow>("SELECT * FROM experiments WHERE name = $name", { name });
    if (!row) throw new FreshrecError("NOT_FOUND", `experiment ${JSON.stringify(name)} does not exist`);
    return toExperiment(row);
  }

  async active(): Promise<Experiment | null> {
    const [row] = await this.store.query<ExperimentRow>("SELECT * FROM experiments WHERE status = 'active' ORDER BY created_at DESC LIMIT 1");
    return row ? toExperiment(row) : null;
  }

  async create(definition: ExperimentDefinition, now: number, options: { replace?: boolean } = {}): Promise<Experiment> {
    await this.store.transaction(async (client) => {
      // Two processes creating at once must not both find no active experiment.
      await client.query("SELECT pg_advisory_xact_lock($1)", [CREATE_LOCK]);
      const existing = await client.query("SELECT 1 FROM experiments WHERE name = $1", [definition.name]);
      if (existing.rowCount) throw new BadInputError(`experiment ${JSON.stringify(definition.name)} already exists (names are never reused, so its data stays unambiguous)`);
      const active = await client.query<{ name: string }>("SELECT name FROM experiments WHERE status = 'active'");
      if (active.rows.length && !options.replace) {
        throw new BadInputError(`experiment ${JSON.stringify(active.rows[0].name)} is active; stop it first, or replace it`);
      }
      await client.query("UPDATE experiments SET status = 'stopped', stopped_at = $1 WHERE status = 'active'", [now]);
      await client.query("INSERT INTO experiments VALUES ($1, $2, 'active', $3, NULL)", [definition.name, JSON.stringify(definition), now]);
      await client.query("SELECT pg_notify($1, $2)", [EXPERIMENTS_CHANNEL, definition.name]);
    });
    return this.get(definition.name);
  }

  async stop(name: string, now: number): Promise<Experiment> {
    await this.get(name);
    await this.store.transaction(async (client) => {
      const stopped = await client.query("UPDATE experiments SET status = 'stopped', stopped_at = $1 WHERE name = $2 AND status = 'active'", [now, name]);
      if (stopped.rowCount) await client.query("SELECT pg_notify($1, $2)", [EXPERIMENTS_CHANNEL, name]);
    });
    return this.get(name);
  }

  logExposure(record: ExposureRecord): void {
    this.exposures.push(record);
    this.slots += record.slots.length;
  }

  logOutcome(record: OutcomeRecord): void {
    this.outcomes.push(record);
  }

  get buffered(): number {
    return this.slots + this.outcomes.length;
  }

  async flush(): Promise<number> {
    const exposures = this.exposures;
    const outcomes = this.outcomes;
    const slots = this.slots;
    this.exposures = [];
    this.outcomes = [];
    this.slots = 0;
    try {
      await this.store.transaction(async (client) => {
        if (exposures.length) {
          const rows = exposures.flatMap((r) => r.slots.map((slot) => ({ r, slot })));
          await client.query(
            `INSERT INTO experiment_exposures
             SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::INTEGER[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BOOLEAN[])`,
            [
              rows.map(({ r }) => r.exposureId),
              rows.map(({ r }) => r.experiment),
              rows.map(({ r }) => r.arm),
              rows.map(({ r }) => r.userId),
              rows.map(({ r }) => String(Math.round(r.ts))),
              rows.map(({ slot }) => slot.rank),
              rows.map(({ slot }) => slot.cluster),
              rows.map(({ slot }) => slot.items.join(",")),
              rows.map(({ r }) => r.tableVersion),
              rows.map(({ r }) => r.coldStart),
            ],
          );
        }
        if (outcomes.length) {
          await client.query(
            `INSERT INTO experiment_outcomes
             SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::INTEGER[], $6::TEXT[], $7::TEXT[], $8::BIGINT[], $9::TEXT[], $10::REAL[])`,
            [
              outcomes.map((o) => o.exposureId),
              outcomes.map((o) => o.experiment),
              outcomes.map((o) => o.arm),
              outcomes.map((o) => o.userId),
              outcomes.map((o) => o.rank),
              outcomes.map((o) => o.cluster),
              outcomes.map((o) => o.itemId),
              outcomes.map((o) => String(Math.round(o.ts))),
              outcomes.map((o) => o.outcome),
              outcomes.map((o) => o.engagement),
            ],
          );
        }
      });
    } catch (error) {
      // Kept for the next flush rather than lost.
      this.exposures = exposures.concat(this.exposures);
      this.outcomes = outcomes.concat(this.outcomes);
      this.slots += slots;
      throw error;
    }
    return slots + outcomes.length;
  }

  async attributeOutcomes(experiment: string, events: readonly AttributableEvent[], windowMs: number, positiveMin: number | null): Promise<number> {
    if (events.length === 0) return 0;
    const positive = positiveMin === null ? "true" : "(b.engagement IS NULL OR b.engagement >= $9)";
    const inserted = await this.store.transaction((client) =>
      client.query(
        `INSERT INTO experiment_outcomes
         WITH b AS (
           SELECT * FROM unnest($3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[], $7::REAL[], $8::BOOLEAN[]) AS b(user_id, item_id, cluster_id, ts, engagement, negative)
         ),
         matched AS (
           SELECT x.exposure_id, x.experiment, x.arm, x.user_id, x.rank, x.cluster_id, b.item_id, b.ts,
                  CASE WHEN b.negative THEN 'negative' WHEN ${positive} THEN 'satisfied' ELSE 'dissatisfied' END AS outcome,
                  b.engagement,
                  row_number() OVER (PARTITION BY x.exposure_id, x.rank ORDER BY b.ts, b.item_id COLLATE "C") AS k
           FROM experiment_exposures x JOIN b ON b.user_id = x.user_id AND b.cluster_id = x.cluster_id
             AND b.ts >= x.ts AND b.ts < x.ts + $2
           WHERE x.experiment = $1
         )
         SELECT exposure_id, experiment, arm, user_id, rank, cluster_id, item_id, ts, outcome, engagement FROM matched m
         WHERE k = 1 AND NOT EXISTS (SELECT 1 FROM experiment_outcomes o WHERE o.exposure_id = m.exposure_id AND o.rank = m.rank)`,
        [
          experiment,
          String(Math.round(windowMs)),
          events.map((e) => e.userId),
          events.map((e) => e.itemId),
          events.map((e) => e.clusterId),
          events.map((e) => String(Math.round(e.ts))),
          events.map((e) => e.engagement),
          events.map((e) => e.negative),
          ...(positiveMin === null ? [] : [positiveMin]),
        ],
      ),
    );
    return inserted.rowCount ?? 0;
  }
}
