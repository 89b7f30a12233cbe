/**
 * The model registry on PostgreSQL: the second adapter of `ModelRegistryContract` (./registry.ts), for a deployment
 * whose processes and hosts share one database (`store.url`, issue 19). Its rows live beside the event and table
 * stores (tables `models` and `model_status_changes`); the model files stay files.
 *
 * Where the files are: every host has the models folder at `<workspace>/models` (a shared mount, or a copy), and a
 * row records its file relative to that folder ("m000003/model.gguf"), never by absolute path, so each host opens
 * its own path to the same bytes, and `modelFile` checks those bytes against the sha256 recorded at registration.
 * A file outside the models folder is refused at registration: another host could not find it.
 *
 * "Make live" is one transaction under an advisory lock; a partial unique index keeps at most one live model. Status
 * changes notify `freshrec_models` when they commit, so servers reload at once (src/serving/store-notifications.ts).
 *
 * @example
 * const registry = await PostgresModelRegistry.open("postgres://freshrec@db.internal/freshrec", ".freshrec", clock);
 * const live = await registry.live();
 * const file = live && (await registry.modelFile(live)); // checked against its registered sha256
 */
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import pg from "pg";
import { BIGINT_AS_NUMBER, inTransaction, openStorePool } from "../data/postgres-pool.js";
import type { Clock } from "../domain/clock.js";
import { FreshrecError } from "../domain/errors.js";
import {
  fileSha256,
  modelVersionOf,
  pathInside,
  verifiedModelFile,
  type ModelFilter,
  type ModelRegistryContract,
  type ModelRow,
  type ModelStatus,
  type ModelVersion,
  type RegisterModelInput,
  type StatusChange,
} from "./registry.js";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS models (
  seq INTEGER PRIMARY KEY,
  version TEXT NOT NULL UNIQUE,
  parent TEXT REFERENCES models(version),
  kind TEXT NOT NULL CHECK (kind IN ('base', 'fine-tuned')),
  status TEXT NOT NULL CHECK (status IN ('candidate', 'live', 'halted', 'rejected', 'retired')),
  window_from BIGINT, window_to BIGINT,
  train_samples INTEGER NOT NULL DEFAULT 0,
  validation_samples INTEGER NOT NULL DEFAULT 0,
  metrics TEXT NOT NULL DEFAULT '{}',
  file_path TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  template_hash TEXT, vocabulary_hash TEXT,
  created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS models_one_live ON models (status) WHERE status = 'live';
CREATE TABLE IF NOT EXISTS model_status_changes (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  version TEXT NOT NULL REFERENCES models(version),
  from_status TEXT, to_status TEXT NOT NULL, reason TEXT NOT NULL, at BIGINT NOT NULL
);
`;

/** The channel a change of the live model or a review decision notifies (with the version), when it commits. */
export const MODELS_CHANNEL = "freshrec_models";

/** Advisory lock keys (any constants, distinct from the other stores'). */
const SCHEMA_LOCK = 0x6d646c73;
/** Held by every write: versions are numbered max + 1, and going live retires the previous live model. */
const WRITE_LOCK = 0x6d646c77;


interface Row extends ModelRow {
  seq: number;
}

function versionName(seq: number): string {
  return `m${String(seq).padStart(6, "0")}`;
}

export class PostgresModelRegistry implements ModelRegistryContract {
  private readonly models: string;

  private constructor(
    private readonly pool: pg.Pool,
    readonly location: string,
    workspace: string,
    private readonly clock: Clock,
  ) {
    this.models = join(resolve(workspace), "models");
  }

  /**
   * Connects to the database at `url` and creates the registry's tables when missing; model files are found under
   * `<workspace>/models`.
   * @throws FreshrecError naming the URL (without its password) and what PostgreSQL said.
   */
  static async open(url: string, workspace: string, clock: Clock): Promise<PostgresModelRegistry> {
    const { pool, location } = await openStorePool({ url, store: "model registry", schema: SCHEMA, schemaLock: SCHEMA_LOCK, max: 2, types: BIGINT_AS_NUMBER });
    return new PostgresModelRegistry(pool, location, workspace, clock);
  }

  get modelsDir(): string {
    mkdirSync(this.models, { recursive: true });
    return this.models;
  }

  private fromRow(r: Row): ModelVersion {
    return modelVersionOf(r, { filePath: join(this.models, ...r.file_path.split("/")), external: false });
  }

  private async query<R extends pg.QueryResultRow>(on: pg.Pool | pg.PoolClient, text: string, values: unknown[] = []): Promise<R[]> {
    try {
      return (await on.query<R>(text, values)).rows;
    } catch (error) {
      throw new FreshrecError("INTERNAL", `model registry query failed (${this.location}): ${(error as Error).message}\n${text}`, { cause: error });
    }
  }

  /** Runs `work` in one transaction holding the write lock. */
  private write<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, work, WRITE_LOCK);
  }

  private async row(on: pg.Pool | pg.PoolClient, version: string): Promise<Row | null> {
    return (await this.query<Row>(on, "SELECT * FROM models WHERE version = $1", [version]))[0] ?? null;
  }

  private async existing(on: pg.PoolClient, version: string): Promise<Row> {
    const r = await this.row(on, version);
    if (!r) throw new FreshrecError("NOT_FOUND", `model ${version} does not exist`);
    return r;
  }

  private async recordChange(client: pg.PoolClient, version: string, from: ModelStatus | null, to: ModelStatus, reason: string, at: number): Promise<void> {
    await this.query(client, "INSERT INTO model_status_changes (version, from_status, to_status, reason, at) VALUES ($1, $2, $3, $4, $5)", [version, from, to, reason, at]);
  }

  async nextVersion(): Promise<string> {
    const [r] = await this.query<{ n: number }>(this.pool, "SELECT coalesce(max(seq), 0)::INTEGER AS n FROM models");
    return versionName(r.n + 1);
  }

  async register(input: RegisterModelInput): Promise<ModelVersion> {
    const status = input.status ?? "candidate";
    if (status === "live") throw new FreshrecError("BAD_INPUT", "register as candidate, then makeLive");
    const stored = pathInside(this.models, input.filePath);
    if (stored === null) {
      throw new FreshrecError(
        "BAD_INPUT",
        `model file ${resolve(input.filePath)} is outside ${this.models}: a registry shared through ${this.location} records files relative to the models folder every host has, so copy the file under it and register that copy`,
      );
    }
    const sha256 = input.sha256 ?? (await fileSha256(input.filePath));
    const now = this.clock.now();
    return this.write(async (client) => {
      if (input.parent && !(await this.row(client, input.parent))) throw new FreshrecError("NOT_FOUND", `parent model ${input.parent} does not exist`);
      const [{ n }] = await this.query<{ n: number }>(client, "SELECT coalesce(max(seq), 0)::INTEGER AS n FROM models");
      const version = versionName(n + 1);
      await this.query(
        client,
        `INSERT INTO models (seq, version, parent, kind, status, window_from, window_to, train_samples, validation_samples,
           metrics, file_path, sha256, template_hash, vocabulary_hash, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
        [
          n + 1,
          version,
          input.parent ?? null,
          input.kind,
          status,
          input.window?.from ?? null,
          input.window?.to ?? null,
          input.trainSamples ?? 0,
          input.validationSamples ?? 0,
          JSON.stringify(input.metrics ?? {}),
          stored,
          sha256,
          input.templateHash ?? null,
          input.vocabularyHash ?? null,
          now,
        ],
      );
      await this.recordChange(client, version, null, status, input.reason ?? "registered", now);
      return this.fromRow((await this.row(client, version))!);
    });
  }

  async get(version: string): Promise<ModelVersion | null> {
    const r = await this.row(this.pool, version);
    return r ? this.fromRow(r) : null;
  }

  async list(filter: ModelFilter = {}): Promise<ModelVersion[]> {
    return (await this.query<Row>(this.pool, "SELECT * FROM models ORDER BY seq"))
      .map((r) => this.fromRow(r))
      .filter((m) => (!filter.status || filter.status.includes(m.status)) && (!filter.kind || m.kind === filter.kind));
  }

  async live(): Promise<ModelVersion | null> {
    const [r] = await this.query<Row>(this.pool, "SELECT * FROM models WHERE status = 'live'");
    return r ? this.fromRow(r) : null;
  }

  async history(version?: string): Promise<StatusChange[]> {
    const rows = version
      ? await this.query<{ version: string; from_status: ModelStatus | null; to_status: ModelStatus; reason: string; at: number }>(
          this.pool,
          "SELECT * FROM model_status_changes WHERE version = $1 ORDER BY id",
          [version],
        )
      : await this.query<{ version: string; from_status: ModelStatus | null; to_status: ModelStatus; reason: string; at: number }>(this.pool, "SELECT * FROM model_status_changes ORDER BY id");
    return rows.map((r) => ({ version: r.version, from: r.from_status, to: r.to_status, reason: r.reason, at: r.at }));
  }

  async makeLive(version: string, reason: string): Promise<ModelVersion> {
    const now = this.clock.now();
    return this.write(async (client) => {
      const target = await this.existing(client, version);
      if (target.status === "live") return this.fromRow(target);
      if (target.status === "rejected") throw new FreshrecError("BAD_INPUT", `model ${version} was rejected and cannot go live`);
      const [previous] = await this.query<Row>(client, "SELECT * FROM models WHERE status = 'live'");
      if (previous) {
        await this.query(client, "UPDATE models SET status = 'retired' WHERE version = $1", [previous.version]);
        await this.recordChange(client, previous.version, "live", "retired", `replaced by ${version}`, now);
      }
      await this.query(client, "UPDATE models SET status = 'live' WHERE version = $1", [version]);
      await this.recordChange(client, version, target.status, "live", reason, now);
      await this.query(client, "SELECT pg_notify($1, $2)", [MODELS_CHANNEL, version]);
      return this.fromRow((await this.row(client, version))!);
    });
  }

  async setStatus(version: string, status: Exclude<ModelStatus, "live">, reason: string): Promise<ModelVersion> {
    const now = this.clock.now();
    return this.write(async (client) => {
      const target = await this.existing(client, version);
      if (target.status === status) return this.fromRow(target);
      await this.query(client, "UPDATE models SET status = $1 WHERE version = $2", [status, version]);
      await this.recordChange(client, version, target.status, status, reason, now);
      await this.query(client, "SELECT pg_notify($1, $2)", [MODELS_CHANNEL, version]);
      return this.fromRow((await this.row(client, version))!);
    });
  }

  async updateMetrics(version: string, metrics: Record<string, unknown>): Promise<ModelVersion> {
    return this.write(async (client) => {
      const target = await this.existing(client, version);
      await this.query(client, "UPDATE models SET metrics = $1 WHERE version = $2", [JSON.stringify({ ...JSON.parse(target.metrics), ...metrics }), version]);
      return this.fromRow((await this.row(client, version))!);
    });
  }

  async modelFile(model: ModelVersion | string): Promise<string> {
    const found = typeof model === "string" ? await this.get(model) : model;
    if (!found) throw new FreshrecError("NOT_FOUND", `model ${String(model)} does not exist (see freshrec models list)`);
    return verifiedModelFile(found);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
