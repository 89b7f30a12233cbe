/**
 * The table store on PostgreSQL: the second adapter of `TableStoreContract` (./contract.ts), for a deployment whose
 * processes and hosts share one database (`store.url: postgres://...`, issue 19). It lives in the same database as
 * the event store (its own tables, all named `table_*`), and runs the same conformance suite as the workspace's
 * SQLite file (test/tables/conformance.ts).
 *
 * Same layout as the SQLite adapter (./sqlite-store.ts): one global, dense, never-renumbered cluster dictionary
 * (`table_clusters`), rows keyed by (table, c1, c2) with the 8-bytes-per-answer blob of ./answer-blob.ts, version
 * metadata, the publish stack whose top is the live table, and the publish log.
 *
 * What differs, and why:
 * - Versions come from an identity column: increasing, never reused (gc does not give numbers back).
 * - A build holds a session advisory lock on its version for as long as its builder lives, on a connection of its
 *   own. `recoverStale` marks a `building` version failed when that lock is free: its builder's session ended (the
 *   process crashed or was killed, on whichever host), which a pid check cannot see across hosts.
 * - New cluster ids are numbered under a transaction-scoped advisory lock (max + ordinal), so two processes that
 *   introduce clusters at once never give out one index twice and the dictionary stays dense.
 * - Publish and rollback run under one advisory lock, flip the pointer in one transaction and `NOTIFY
 *   freshrec_tables` with the new live version when they commit. Servers follow the live pointer by reading it
 *   (`live()`, one indexed query), so a publish by any process reaches every replica through the database.
 *
 * @example
 * const store = await PostgresTableStore.open("postgres://freshrec@db.internal/freshrec", new SystemClock());
 * const build = await store.beginBuild({ modelVersion: "m000003", templateHash: "9f2c..." });
 * await build.append(rows);
 * await store.publish((await build.finish(stats)).version, { actor: "refresh" });
 * await store.close();
 */
import { hostname } from "node:os";
import pg from "pg";
import { BIGINT_AS_NUMBER, inTransaction, openStorePool, transactionOn } from "../data/postgres-pool.js";
import type { Clock } from "../domain/clock.js";
import { FreshrecError } from "../domain/errors.js";
import { pairKey, type History } from "../domain/types.js";
import { ANSWER_BYTES, checkPackedRows, decodeAnswersInto, encodeAnswers, newClustersInOrder, remappedPackedAnswers } from "./answer-blob.js";
import type {
  PackedBuildRows,
  PackedPage,
  PackedTable,
  PackedTableHeader,
  PublishEvent,
  PublishOptions,
  StoredTableRow,
  TableBuilderContract,
  TableBuildMeta,
  TableBuildRow,
  TableBuildStats,
  TableFilter,
  TableInfo,
  TableMetrics,
  TableStatus,
  TableStoreContract,
} from "./contract.js";
import { damagedRowsError, TableNotFoundError, TableStateError } from "./errors.js";
import { matchesFilter, orderByDictionary, PackedTableGatherer, parseVersion, tableInfoOf, versionId, type VersionColumns } from "./versions.js";

export interface PostgresTableStoreOptions {
  /**
   * Rows per write transaction in `append`.
   * @defaultValue 5000
   */
  readonly batchSize?: number;
  /**
   * Rows fetched per query while iterating `rows()`.
   * @defaultValue 2000
   */
  readonly pageSize?: number;
  /**
   * Run `recoverStale()` when opening, as the durability rule asks.
   * @defaultValue true
   */
  readonly recoverOnOpen?: boolean;
}

/** The channel publish and rollback notify with the new live version. */
export const TABLES_CHANNEL = "freshrec_tables";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS table_clusters (idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS table_versions (
  seq INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  status TEXT NOT NULL CHECK (status IN ('building', 'ready', 'live', 'retired', 'failed')),
  model_version TEXT NOT NULL,
  template_hash TEXT NOT NULL,
  rag_as_of BIGINT,
  rag_window_days DOUBLE PRECISION,
  rag_options TEXT,
  strategy TEXT,
  parent TEXT,
  stats TEXT,
  metrics TEXT,
  created_at BIGINT NOT NULL,
  finished_at BIGINT,
  failure TEXT,
  row_count INTEGER NOT NULL DEFAULT 0,
  top_n INTEGER NOT NULL DEFAULT 0,
  builder TEXT
);
CREATE TABLE IF NOT EXISTS table_rows (
  table_seq INTEGER NOT NULL,
  c1 INTEGER NOT NULL,
  c2 INTEGER NOT NULL,
  context_key TEXT,
  answers BYTEA NOT NULL,
  explanation_bytes BYTEA,
  explanation_json TEXT,
  PRIMARY KEY (table_seq, c1, c2)
);
CREATE TABLE IF NOT EXISTS table_live_stack (pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, table_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS table_publish_log (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  action TEXT NOT NULL CHECK (action IN ('publish', 'rollback')),
  version TEXT NOT NULL,
  previous TEXT,
  at BIGINT NOT NULL,
  actor TEXT,
  reason TEXT
);
`;

/** Advisory lock keys (any constants, distinct from the event store's). */
const SCHEMA_LOCK = 0x74626c73;
const PUBLISH_LOCK = 0x74626c70;
const CLUSTER_LOCK = 0x74626c63;
/** First half of a build's two-key advisory lock; the second is the version's sequence number. */
const BUILD_LOCK_CLASS = 0x74626c62;

const PUBLISHABLE: readonly TableStatus[] = ["ready", "retired"];

interface VersionRecord extends VersionColumns {
  builder: string | null;
}

type Queryable = pg.Pool | pg.PoolClient | pg.Client;

function isUniqueViolation(error: unknown): boolean {
  return (error as { code?: string })?.code === "23505";
}

export class PostgresTableStore implements TableStoreContract {
  private readonly batchSize: number;
  private readonly pageSize: number;
  /** Cluster dictionary cache: idx -> id and back. Entries never change once committed, so the cache never lies. */
  private readonly clusterIds: string[] = [];
  private readonly clusterIndex = new Map<string, number>();
  /** Open builders' own connections, released (ending their locks) on close. */
  private readonly buildClients = new Set<pg.Client>();

  private constructor(
    private readonly pool: pg.Pool,
    private readonly url: string,
    readonly location: string,
    private readonly clock: Clock,
    options: PostgresTableStoreOptions,
  ) {
    this.batchSize = options.batchSize ?? 5000;
    this.pageSize = options.pageSize ?? 2000;
  }

  /**
   * Connects to the database at `url` and creates the tables when they are missing.
   * @throws FreshrecError naming the URL (without its password) and what PostgreSQL said.
   */
  static async open(url: string, clock: Clock, options: PostgresTableStoreOptions = {}): Promise<PostgresTableStore> {
    const batchSize = options.batchSize ?? 5000;
    const pageSize = options.pageSize ?? 2000;
    if (!(batchSize >= 1) || !(pageSize >= 1)) throw new FreshrecError("BAD_INPUT", "tables: batchSize and pageSize must be at least 1");
    const { pool, location } = await openStorePool({ url, store: "table store", schema: SCHEMA, schemaLock: SCHEMA_LOCK, max: 4, types: BIGINT_AS_NUMBER });
    const store = new PostgresTableStore(pool, url, location, clock, options);
    if (options.recoverOnOpen ?? true) {
      try {
        await store.recoverStale();
      } catch (error) {
        await store.close();
        throw error;
      }
    }
    return store;
  }

  // ---------------------------------------------------------------------------------------------- plumbing

  private async run<Row extends pg.QueryResultRow = pg.QueryResultRow>(on: Queryable, text: string, values: unknown[] = [], rowMode?: "array"): Promise<pg.QueryResult<Row>> {
    try {
      return await on.query<Row>({ text, values, ...(rowMode ? { rowMode } : {}) });
    } catch (error) {
      if (error instanceof FreshrecError || isUniqueViolation(error)) throw error;
      throw new FreshrecError("INTERNAL", `table store query failed (${this.location}): ${(error as Error).message}\n${text}`, { cause: error });
    }
  }

  /** @internal used by PostgresTableBuilder: the error for a builder used after `finish` or `fail`. */
  async refuseEnded(seq: number): Promise<never> {
    const r = await this.record(this.pool, versionId(seq));
    throw new TableStateError(`tables: ${versionId(seq)} is ${r.status}, no longer building`, versionId(seq), r.status);
  }

  private async transaction<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, work);
  }

  private async record(on: Queryable, version: string, forUpdate = false): Promise<VersionRecord> {
    const r = await this.run<VersionRecord>(on, `SELECT * FROM table_versions WHERE seq = $1${forUpdate ? " FOR UPDATE" : ""}`, [parseVersion(version)]);
    if (!r.rows.length) throw new TableNotFoundError(version);
    return r.rows[0];
  }

  /** Live seq and the seq rollback would return to, from the publish stack. */
  private async stackState(on: Queryable): Promise<{ live: number | null; previous: number | null; previousPos: number | null }> {
    const stack = (await this.run<{ pos: number; table_seq: number }>(on, "SELECT pos, table_seq FROM table_live_stack ORDER BY pos DESC")).rows;
    if (stack.length === 0) return { live: null, previous: null, previousPos: null };
    const live = stack[0].table_seq;
    // Entries equal to the live one are skipped: publishing A, B, A then rolling back must not "return" to A.
    const below = stack.find((e) => e.table_seq !== live);
    return { live, previous: below?.table_seq ?? null, previousPos: below?.pos ?? null };
  }

  // ---------------------------------------------------------------------------------------------- reading state

  async get(version: string): Promise<TableInfo> {
    return tableInfoOf(await this.record(this.pool, version));
  }

  async list(filter: TableFilter = {}): Promise<TableInfo[]> {
    return (await this.run<VersionRecord>(this.pool, "SELECT * FROM table_versions ORDER BY seq")).rows
      .filter((r) => matchesFilter(r, filter))
      .map(tableInfoOf);
  }

  async live(): Promise<TableInfo | undefined> {
    // Pointer and metadata in one statement: one snapshot, even while another process publishes.
    const r = await this.run<VersionRecord>(
      this.pool,
      `SELECT v.* FROM (SELECT table_seq FROM table_live_stack ORDER BY pos DESC LIMIT 1) top JOIN table_versions v ON v.seq = top.table_seq`,
    );
    return r.rows.length ? tableInfoOf(r.rows[0]) : undefined;
  }

  async previousLive(): Promise<TableInfo | undefined> {
    const r = await this.run<VersionRecord>(
      this.pool,
      `WITH top AS (SELECT table_seq FROM table_live_stack ORDER BY pos DESC LIMIT 1),
            below AS (SELECT s.table_seq FROM table_live_stack s, top WHERE s.table_seq <> top.table_seq ORDER BY s.pos DESC LIMIT 1)
       SELECT v.* FROM below JOIN table_versions v ON v.seq = below.table_seq`,
    );
    return r.rows.length ? tableInfoOf(r.rows[0]) : undefined;
  }

  async publishHistory(): Promise<PublishEvent[]> {
    return (await this.run<PublishEvent>(this.pool, "SELECT action, version, previous, at, actor, reason FROM table_publish_log ORDER BY id")).rows;
  }

  // ---------------------------------------------------------------------------------------------- cluster dictionary

  private async loadClusters(): Promise<void> {
    const rows = (await this.run<{ idx: number; id: string }>(this.pool, "SELECT idx, id FROM table_clusters WHERE idx >= $1 ORDER BY idx", [this.clusterIds.length])).rows;
    for (const r of rows) {
      this.clusterIds[r.idx] = r.id;
      this.clusterIndex.set(r.id, r.idx);
    }
  }

  /** Makes sure the cache covers index `idx` (rows are committed after the clusters they name). */
  private async knowIndex(idx: number): Promise<void> {
    if (idx >= this.clusterIds.length) await this.loadClusters();
  }

  /** Index of a cluster id for reading, or undefined when no table ever used it. */
  private async clusterIdxForRead(id: string): Promise<number | undefined> {
    if (!this.clusterIndex.has(id)) await this.loadClusters();
    return this.clusterIndex.get(id);
  }

  /**
   * Indices of `ids` inside the caller's write transaction, numbering the ones the dictionary lacks. The cache learns
   * them only after that transaction commits (`loadClusters`), so a rolled-back batch leaves no stale entry behind.
   */
  private async clusterIdxForWrite(client: pg.ClientBase, ids: ReadonlySet<string>): Promise<Map<string, number>> {
    const found = new Map<string, number>();
    const unknown: string[] = [];
    for (const id of ids) {
      const idx = this.clusterIndex.get(id);
      if (idx === undefined) unknown.push(id);
      else found.set(id, idx);
    }
    if (unknown.length === 0) return found;
    await client.query("SELECT pg_advisory_xact_lock($1)", [CLUSTER_LOCK]);
    await client.query(
      `INSERT INTO table_clusters (idx, id)
       SELECT (SELECT coalesce(max(idx) + 1, 0) FROM table_clusters) + row_number() OVER (ORDER BY ord) - 1, id
       FROM unnest($1::TEXT[]) WITH ORDINALITY AS u(id, ord)
       WHERE NOT EXISTS (SELECT 1 FROM table_clusters c WHERE c.id = u.id)`,
      [unknown],
    );
    const rows = (await client.query<{ idx: number; id: string }>("SELECT idx, id FROM table_clusters WHERE id = ANY($1::TEXT[])", [unknown])).rows;
    for (const r of rows) found.set(r.id, r.idx);
    return found;
  }

  /** The id of a dictionary index, or undefined when the dictionary has no such index (a damaged row). */
  private clusterId(idx: number): string | undefined {
    return this.clusterIds[idx];
  }

  /**
   * The id of a cluster index stored in a row of `version` (`what`: "has c2 #7"). An index the dictionary lacks is a
   * damaged row, named with its pair, as the SQLite store names it: a reader must not hand out a row without its cluster.
   */
  private storedClusterId(version: string, r: { c1: number; c2: number }, idx: number, what: () => string): string {
    const id = this.clusterId(idx);
    if (id === undefined) throw this.damagedRow(version, r, `${what()}, not one of the ${this.clusterIds.length} clusters of the dictionary`);
    return id;
  }

  private damagedRow(version: string, r: { c1: number; c2: number }, problem: string): FreshrecError {
    const name = (idx: number) => this.clusterId(idx) ?? `#${idx}`;
    return damagedRowsError(version, `row (${name(r.c1)}, ${name(r.c2)}) ${problem}`);
  }

  private async decodeRows(
    version: string,
    rows: readonly { c1: number; c2: number; context_key: string | null; answers: Buffer; explanation_bytes: Buffer | null; explanation_json: string | null }[],
  ): Promise<StoredTableRow[]> {
    let top = -1;
    for (const r of rows) {
      top = Math.max(top, r.c1, r.c2);
      for (let k = 0; k + ANSWER_BYTES <= r.answers.length; k += ANSWER_BYTES) top = Math.max(top, r.answers.readInt32LE(k));
    }
    await this.knowIndex(top);
    return rows.map((r) => {
      if (r.answers.length % ANSWER_BYTES !== 0) throw this.damagedRow(version, r, `has answers of ${r.answers.length} bytes, not whole answers of ${ANSWER_BYTES}`);
      const n = r.answers.length / ANSWER_BYTES;
      const answers = new Array<{ cluster: string; score: number }>(n);
      for (let k = 0; k < n; k++) {
        const idx = r.answers.readInt32LE(k * ANSWER_BYTES);
        answers[k] = { cluster: this.storedClusterId(version, r, idx, () => `answers cluster #${idx}`), score: r.answers.readFloatLE(k * ANSWER_BYTES + 4) };
      }
      const c1 = this.storedClusterId(version, r, r.c1, () => `has c1 #${r.c1}`);
      const c2 = this.storedClusterId(version, r, r.c2, () => `has c2 #${r.c2}`);
      const row = { c1, c2, answers, contextKey: r.context_key };
      if (r.explanation_bytes !== null) return { ...row, explanation: r.explanation_bytes };
      if (r.explanation_json !== null) {
        let explanation: Record<string, unknown>;
        try {
          explanation = JSON.parse(r.explanation_json) as Record<string, unknown>;
        } catch (error) {
          throw this.damagedRow(version, r, `has an explanation that is not JSON: ${(error as Error).message}`);
        }
        return { ...row, explanation };
      }
      return row;
    });
  }

  // ---------------------------------------------------------------------------------------------- building

  async clusterOrder(clusters: readonly string[]): Promise<string[]> {
    await this.loadClusters();
    return orderByDictionary(clusters, this.clusterIndex);
  }

  async beginBuild(meta: TableBuildMeta): Promise<TableBuilderContract> {
    if (!meta.modelVersion || !meta.templateHash) {
      throw new FreshrecError("BAD_INPUT", "tables: a build needs a modelVersion and a templateHash");
    }
    if (meta.parent) await this.record(this.pool, meta.parent);
    // The build's own connection holds its lock for as long as the builder lives; see recoverStale.
    const client = new pg.Client({ connectionString: this.url, types: BIGINT_AS_NUMBER });
    client.on("error", (error) => process.stderr.write(`freshrec: a table build's connection to ${this.location} failed: ${error.message}\n`));
    try {
      await client.connect();
    } catch (error) {
      throw new FreshrecError("INTERNAL", `cannot connect to the table store ${this.location}: ${(error as Error).message}`, { cause: error });
    }
    try {
      // Row and lock in one transaction: no other process sees the building row before its lock is held.
      const seq = await transactionOn(client, async () => {
        const inserted = await this.run<{ seq: number }>(
          client,
          `INSERT INTO table_versions (status, model_version, template_hash, rag_as_of, rag_window_days, rag_options, strategy, parent, created_at, builder)
           VALUES ('building', $1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq`,
          [
            meta.modelVersion,
            meta.templateHash,
            meta.ragAsOf ?? null,
            meta.ragWindowDays ?? null,
            meta.ragOptions == null ? null : JSON.stringify(meta.ragOptions),
            meta.strategy ?? null,
            meta.parent ?? null,
            this.clock.now(),
            `${hostname()}:${process.pid}`,
          ],
        );
        const s = inserted.rows[0].seq;
        await client.query("SELECT pg_advisory_lock($1, $2)", [BUILD_LOCK_CLASS, s]);
        return s;
      });
      this.buildClients.add(client);
      return new PostgresTableBuilder(this, client, seq);
    } catch (error) {
      await client.end().catch(() => {});
      throw error;
    }
  }

  private async assertBuilding(client: pg.ClientBase, seq: number): Promise<VersionRecord> {
    const r = (await client.query<VersionRecord>("SELECT * FROM table_versions WHERE seq = $1 FOR UPDATE", [seq])).rows[0];
    if (!r) throw new TableNotFoundError(versionId(seq));
    if (r.status !== "building") {
      throw new TableStateError(`tables: ${versionId(seq)} is ${r.status}, no longer building`, versionId(seq), r.status);
    }
    return r;
  }

  /**
   * @internal used by PostgresTableBuilder: `committed` hears of each batch as it commits, so a builder counts the
   * batches committed before one that fails.
   */
  async appendRows(client: pg.Client, seq: number, rows: Iterable<TableBuildRow>, committed: (rows: number) => void): Promise<number> {
    let written = 0;
    let batch: TableBuildRow[] = [];
    const flush = async () => {
      await this.writeBatch(client, seq, batch);
      committed(batch.length);
      written += batch.length;
      batch = [];
    };
    for (const row of rows) {
      batch.push(row);
      if (batch.length >= this.batchSize) await flush();
    }
    if (batch.length) await flush();
    return written;
  }

  /**
   * @internal used by PostgresTableBuilder: `appendRows` for rows in stored form, in the same batches, clusters added
   * to the dictionary in the same order, with the same checks and errors.
   */
  async appendPackedRows(client: pg.Client, seq: number, rows: PackedBuildRows, committed: (rows: number) => void): Promise<number> {
    let written = 0;
    for (let from = 0; from < rows.count; from += this.batchSize) {
      const to = Math.min(from + this.batchSize, rows.count);
      checkPackedRows(rows, from, to);
      // Names in the order an object batch meets them (each row's answers, then c1, c2): new ones are numbered so.
      const names = new Set(newClustersInOrder(rows, from, to, new Uint8Array(rows.clusters.length)).map((i) => rows.clusters[i]));
      await this.insertRows(client, seq, names, (index) => {
        const dictionary = Int32Array.from(rows.clusters, (id) => index.get(id) ?? -1);
        // A buffer of the batch's own: the query reads the answers after this returns.
        const remapped = remappedPackedAnswers(rows, from, to, dictionary, null);
        const first = from === 0 ? 0 : rows.answerEnd[from - 1];
        const part = (end: Int32Array, bytes: Buffer, r: number) => bytes.subarray(r === 0 ? 0 : end[r - 1], end[r]);
        const c1: number[] = [];
        const c2: number[] = [];
        const keys: (string | null)[] = [];
        const answers: Buffer[] = [];
        const explanations: (Buffer | null)[] = [];
        for (let r = from; r < to; r++) {
          c1.push(dictionary[rows.c1[r]]);
          c2.push(dictionary[rows.c2[r]]);
          keys.push(rows.contextKeys[r] ?? null);
          answers.push(remapped.subarray((r === 0 ? 0 : rows.answerEnd[r - 1]) - first, rows.answerEnd[r] - first));
          const explanation = part(rows.explanationEnd, rows.explanation, r);
          explanations.push(explanation.length > 0 ? explanation : null);
        }
        return { c1, c2, keys, answers, bytes: explanations, json: explanations.map(() => null) };
      });
      committed(to - from);
      written += to - from;
    }
    return written;
  }

  private async writeBatch(client: pg.Client, seq: number, batch: readonly TableBuildRow[]): Promise<void> {
    const names = new Set<string>();
    for (const row of batch) {
      if (row.c1 === row.c2) throw new FreshrecError("BAD_INPUT", `tables: row (${row.c1}, ${row.c2}) repeats its cluster`);
      for (const a of row.answers) {
        if (a.cluster === row.c1 || a.cluster === row.c2) {
          throw new FreshrecError("BAD_INPUT", `tables: row (${row.c1}, ${row.c2}) answers ${a.cluster}, a cluster of its own history`);
        }
        if (!Number.isFinite(a.score)) throw new FreshrecError("BAD_INPUT", `tables: row (${row.c1}, ${row.c2}) has score ${a.score} for ${a.cluster}`);
        names.add(a.cluster);
      }
      names.add(row.c1);
      names.add(row.c2);
    }
    await this.insertRows(client, seq, names, (index) => {
      const c1 = new Array<number>(batch.length);
      const c2 = new Array<number>(batch.length);
      const keys = new Array<string | null>(batch.length);
      const answers = new Array<Buffer>(batch.length);
      const bytes = new Array<Buffer | null>(batch.length);
      const json = new Array<string | null>(batch.length);
      batch.forEach((row, r) => {
        c1[r] = index.get(row.c1)!;
        c2[r] = index.get(row.c2)!;
        keys[r] = row.contextKey ?? null;
        answers[r] = encodeAnswers(
          row.answers.map((a) => index.get(a.cluster)!),
          row.answers.map((a) => a.score),
        );
        const e = row.explanation;
        bytes[r] = e instanceof Uint8Array ? Buffer.from(e.buffer, e.byteOffset, e.byteLength) : null;
        json[r] = e && !(e instanceof Uint8Array) ? JSON.stringify(e) : null;
      });
      return { c1, c2, keys, answers, bytes, json };
    });
  }

  /**
   * One batch of rows in one transaction: the clusters `names` (in the order new ones are numbered) added to the
   * dictionary, then `columns` (given the dictionary) inserted in one statement; a pair written twice is named.
   */
  private async insertRows(
    client: pg.Client,
    seq: number,
    names: ReadonlySet<string>,
    columns: (index: Map<string, number>) => {
      c1: number[];
      c2: number[];
      keys: (string | null)[];
      answers: Buffer[];
      bytes: (Buffer | null)[];
      json: (string | null)[];
    },
  ): Promise<void> {
    let index: Map<string, number> = new Map();
    try {
      await transactionOn(client, async () => {
        await this.assertBuilding(client, seq);
        index = await this.clusterIdxForWrite(client, names);
        const { c1, c2, keys, answers, bytes, json } = columns(index);
        await client.query(
          `INSERT INTO table_rows (table_seq, c1, c2, context_key, answers, explanation_bytes, explanation_json)
           SELECT $1, * FROM unnest($2::INTEGER[], $3::INTEGER[], $4::TEXT[], $5::BYTEA[], $6::BYTEA[], $7::TEXT[])`,
          [seq, c1, c2, keys, answers, bytes, json],
        );
      });
    } catch (error) {
      if (isUniqueViolation(error)) {
        // "Key (table_seq, c1, c2)=(7, 0, 1) already exists.": name the pair as the rows did.
        const m = /=\(\d+, (\d+), (\d+)\)/.exec((error as { detail?: string }).detail ?? "");
        const byIdx = new Map([...index].map(([name, idx]) => [idx, name]));
        const pair = m ? `(${byIdx.get(Number(m[1])) ?? m[1]}, ${byIdx.get(Number(m[2])) ?? m[2]})` : "a pair";
        throw new FreshrecError("BAD_INPUT", `tables: pair ${pair} written twice to ${versionId(seq)}`, { cause: error });
      }
      throw error instanceof FreshrecError
        ? error
        : new FreshrecError("INTERNAL", `writing rows of ${versionId(seq)} to ${this.location} failed: ${(error as Error).message}`, { cause: error });
    }
    await this.loadClusters();
  }

  /** @internal used by PostgresTableBuilder */
  async copyRowsInto(client: pg.Client, seq: number, fromVersion: string, pairs?: Iterable<History>): Promise<number> {
    const from = (await this.record(this.pool, fromVersion)).seq;
    if (from === seq) throw new TableStateError(`tables: ${versionId(seq)} cannot copy rows from itself`, versionId(seq));
    const c1: number[] = [];
    const c2: number[] = [];
    if (pairs) {
      for (const p of pairs) {
        const i1 = await this.clusterIdxForRead(p.c1);
        const i2 = await this.clusterIdxForRead(p.c2);
        // A cluster no table ever used cannot be in the source either.
        if (i1 !== undefined && i2 !== undefined) {
          c1.push(i1);
          c2.push(i2);
        }
      }
    }
    try {
      return await transactionOn(client, async () => {
        await this.assertBuilding(client, seq);
        const copied = pairs
          ? await client.query(
              `INSERT INTO table_rows (table_seq, c1, c2, context_key, answers, explanation_bytes, explanation_json)
               SELECT $1, r.c1, r.c2, r.context_key, r.answers, r.explanation_bytes, r.explanation_json
               FROM (SELECT DISTINCT c1, c2 FROM unnest($3::INTEGER[], $4::INTEGER[]) AS p(c1, c2)) p
               JOIN table_rows r ON r.table_seq = $2 AND r.c1 = p.c1 AND r.c2 = p.c2`,
              [seq, from, c1, c2],
            )
          : await client.query(
              `INSERT INTO table_rows (table_seq, c1, c2, context_key, answers, explanation_bytes, explanation_json)
               SELECT $1, c1, c2, context_key, answers, explanation_bytes, explanation_json FROM table_rows WHERE table_seq = $2`,
              [seq, from],
            );
        return copied.rowCount ?? 0;
      });
    } catch (error) {
      if (isUniqueViolation(error)) {
        throw new FreshrecError("BAD_INPUT", `tables: copying from ${fromVersion} overlaps rows already in ${versionId(seq)}`, { cause: error });
      }
      throw error;
    }
  }

  /** @internal used by PostgresTableBuilder: marks the build ready or failed, then ends its connection (and lock). */
  async endBuild(client: pg.Client, seq: number, outcome: { stats: TableBuildStats } | { failure: string }): Promise<TableInfo> {
    await transactionOn(client, async () => {
      await this.assertBuilding(client, seq);
      const shape = (await client.query<{ n: number; bytes: number }>(
        "SELECT count(*)::INTEGER AS n, coalesce(max(octet_length(answers)), 0)::INTEGER AS bytes FROM table_rows WHERE table_seq = $1",
        [seq],
      )).rows[0];
      if ("stats" in outcome) {
        await client.query(
          "UPDATE table_versions SET status = 'ready', stats = $1, finished_at = $2, row_count = $3, top_n = $4, builder = NULL WHERE seq = $5",
          [JSON.stringify(outcome.stats), this.clock.now(), shape.n, shape.bytes / ANSWER_BYTES, seq],
        );
      } else {
        await client.query("UPDATE table_versions SET status = 'failed', failure = $1, finished_at = $2, row_count = $3, builder = NULL WHERE seq = $4", [
          outcome.failure,
          this.clock.now(),
          shape.n,
          seq,
        ]);
      }
    });
    this.buildClients.delete(client);
    await client.end().catch(() => {});
    return this.get(versionId(seq));
  }

  async recoverStale(): Promise<TableInfo[]> {
    return this.transaction(async (client) => {
      const building = (await client.query<VersionRecord>("SELECT * FROM table_versions WHERE status = 'building' ORDER BY seq FOR UPDATE")).rows;
      const recovered: TableInfo[] = [];
      for (const r of building) {
        // Free lock: the session that began the build has ended, so nobody will ever finish it.
        const free = (await client.query<{ free: boolean }>("SELECT pg_try_advisory_xact_lock($1, $2) AS free", [BUILD_LOCK_CLASS, r.seq])).rows[0].free;
        if (!free) continue;
        const n = (await client.query<{ n: number }>("SELECT count(*)::INTEGER AS n FROM table_rows WHERE table_seq = $1", [r.seq])).rows[0].n;
        await client.query("UPDATE table_versions SET status = 'failed', failure = $1, finished_at = $2, row_count = $3, builder = NULL WHERE seq = $4", [
          `abandoned: builder ${r.builder ?? "?"} ended without finishing`,
          this.clock.now(),
          n,
          r.seq,
        ]);
        recovered.push(tableInfoOf((await client.query<VersionRecord>("SELECT * FROM table_versions WHERE seq = $1", [r.seq])).rows[0]));
      }
      return recovered;
    });
  }

  async updateMetrics(version: string, metrics: TableMetrics, options: { readonly merge?: boolean } = {}): Promise<TableInfo> {
    return this.transaction(async (client) => {
      const r = await this.record(client, version, true);
      const base = options.merge === false || r.metrics === null ? {} : JSON.parse(r.metrics);
      await client.query("UPDATE table_versions SET metrics = $1 WHERE seq = $2", [JSON.stringify({ ...base, ...metrics }), r.seq]);
      return tableInfoOf(await this.record(client, version));
    });
  }

  // ---------------------------------------------------------------------------------------------- publishing

  async publish(version: string, options: PublishOptions = {}): Promise<TableInfo> {
    return this.transaction(async (client) => {
      await client.query("SELECT pg_advisory_xact_lock($1)", [PUBLISH_LOCK]);
      const r = await this.record(client, version, true);
      if (r.status === "live") return tableInfoOf(r);
      if (!PUBLISHABLE.includes(r.status)) {
        throw new TableStateError(`tables: ${version} is ${r.status}; only a ready or retired table can be published`, version, r.status);
      }
      const { live } = await this.stackState(client);
      if (live !== null) await client.query("UPDATE table_versions SET status = 'retired' WHERE seq = $1", [live]);
      await client.query("INSERT INTO table_live_stack (table_seq) VALUES ($1)", [r.seq]);
      await client.query("UPDATE table_versions SET status = 'live' WHERE seq = $1", [r.seq]);
      await this.log(client, "publish", version, live === null ? null : versionId(live), options);
      await client.query("SELECT pg_notify($1, $2)", [TABLES_CHANNEL, version]);
      return tableInfoOf(await this.record(client, version));
    });
  }

  async rollback(options: PublishOptions = {}): Promise<TableInfo> {
    return this.transaction(async (client) => {
      await client.query("SELECT pg_advisory_xact_lock($1)", [PUBLISH_LOCK]);
      const { live, previous, previousPos } = await this.stackState(client);
      if (live === null) throw new TableStateError("tables: no table is live, nothing to roll back");
      if (previous === null || previousPos === null) {
        throw new TableStateError(`tables: ${versionId(live)} is the only table ever published, nothing to roll back to`, versionId(live), "live");
      }
      await client.query("DELETE FROM table_live_stack WHERE pos > $1", [previousPos]);
      await client.query("UPDATE table_versions SET status = 'retired' WHERE seq = $1", [live]);
      await client.query("UPDATE table_versions SET status = 'live' WHERE seq = $1", [previous]);
      await this.log(client, "rollback", versionId(previous), versionId(live), options);
      await client.query("SELECT pg_notify($1, $2)", [TABLES_CHANNEL, versionId(previous)]);
      return tableInfoOf(await this.record(client, versionId(previous)));
    });
  }

  private async log(client: pg.PoolClient, action: "publish" | "rollback", version: string, previous: string | null, options: PublishOptions): Promise<void> {
    await client.query("INSERT INTO table_publish_log (action, version, previous, at, actor, reason) VALUES ($1, $2, $3, $4, $5, $6)", [
      action,
      version,
      previous,
      this.clock.now(),
      options.actor ?? null,
      options.reason ?? null,
    ]);
  }

  async gc(keep: number): Promise<TableInfo[]> {
    if (!Number.isInteger(keep) || keep < 0) throw new FreshrecError("BAD_INPUT", `tables: gc keep must be a whole number >= 0, got ${keep}`);
    return this.transaction(async (client) => {
      // The publish lock: a publish or rollback cannot pick a version this gc is deleting.
      await client.query("SELECT pg_advisory_xact_lock($1)", [PUBLISH_LOCK]);
      const { live, previous } = await this.stackState(client);
      const all = (await client.query<VersionRecord>("SELECT * FROM table_versions ORDER BY seq FOR UPDATE")).rows;
      const newestFinished = new Set(
        all
          .filter((r) => r.status === "ready" || r.status === "live" || r.status === "retired")
          .map((r) => r.seq)
          .sort((a, b) => b - a)
          .slice(0, keep),
      );
      const victims = all.filter((r) => r.status !== "building" && r.seq !== live && r.seq !== previous && !newestFinished.has(r.seq));
      if (victims.length) {
        const seqs = victims.map((r) => r.seq);
        await client.query("DELETE FROM table_rows WHERE table_seq = ANY($1::INTEGER[])", [seqs]);
        await client.query("DELETE FROM table_versions WHERE seq = ANY($1::INTEGER[])", [seqs]);
        await client.query("DELETE FROM table_live_stack WHERE table_seq = ANY($1::INTEGER[])", [seqs]);
      }
      // Removing entries can leave the same table twice in a row on the stack; one entry is enough.
      const stack = (await client.query<{ pos: number; table_seq: number }>("SELECT pos, table_seq FROM table_live_stack ORDER BY pos")).rows;
      const repeats = stack.filter((e, i) => i > 0 && e.table_seq === stack[i - 1].table_seq).map((e) => e.pos);
      if (repeats.length) await client.query("DELETE FROM table_live_stack WHERE pos = ANY($1::BIGINT[])", [repeats]);
      return victims.map(tableInfoOf);
    });
  }

  // ---------------------------------------------------------------------------------------------- rows

  async *rows(version: string): AsyncIterableIterator<StoredTableRow> {
    const seq = (await this.record(this.pool, version)).seq;
    let c1 = -1;
    let c2 = -1;
    for (;;) {
      const page = (
        await this.run<{ c1: number; c2: number; context_key: string | null; answers: Buffer; explanation_bytes: Buffer | null; explanation_json: string | null }>(
          this.pool,
          `SELECT c1, c2, context_key, answers, explanation_bytes, explanation_json FROM table_rows
           WHERE table_seq = $1 AND (c1, c2) > ($2, $3) ORDER BY c1, c2 LIMIT $4`,
          [seq, c1, c2, this.pageSize],
        )
      ).rows;
      for (const row of await this.decodeRows(version, page)) yield row;
      if (page.length < this.pageSize) return;
      c1 = page[page.length - 1].c1;
      c2 = page[page.length - 1].c2;
    }
  }

  async lookup(version: string, c1: string, c2: string): Promise<StoredTableRow | undefined> {
    const seq = (await this.record(this.pool, version)).seq;
    const i1 = await this.clusterIdxForRead(c1);
    const i2 = await this.clusterIdxForRead(c2);
    if (i1 === undefined || i2 === undefined) return undefined;
    const r = await this.run<{ c1: number; c2: number; context_key: string | null; answers: Buffer; explanation_bytes: Buffer | null; explanation_json: string | null }>(
      this.pool,
      "SELECT c1, c2, context_key, answers, explanation_bytes, explanation_json FROM table_rows WHERE table_seq = $1 AND c1 = $2 AND c2 = $3",
      [seq, i1, i2],
    );
    return r.rows.length ? (await this.decodeRows(version, r.rows))[0] : undefined;
  }

  async contextKeys(version: string): Promise<Map<string, string | null>> {
    const seq = (await this.record(this.pool, version)).seq;
    const rows = (await this.run<{ c1: number; c2: number; context_key: string | null }>(this.pool, "SELECT c1, c2, context_key FROM table_rows WHERE table_seq = $1", [seq])).rows;
    await this.loadClusters();
    const keys = new Map<string, string | null>();
    for (const r of rows) {
      keys.set(pairKey(this.storedClusterId(version, r, r.c1, () => `has c1 #${r.c1}`), this.storedClusterId(version, r, r.c2, () => `has c2 #${r.c2}`)), r.context_key);
    }
    return keys;
  }

  async packed(version: string): Promise<PackedTable> {
    const pages = this.packedPages(version, this.pageSize);
    const gatherer = new PackedTableGatherer();
    for (;;) {
      const step = await pages.next();
      if (step.done) return gatherer.finish(step.value);
      gatherer.add(step.value);
    }
  }

  async *packedPages(version: string, rowsPerPage: number): AsyncGenerator<PackedPage, PackedTableHeader, void> {
    const r = await this.record(this.pool, version);
    const size = (await this.run<{ n: number; bytes: number }>(
      this.pool,
      "SELECT count(*)::INTEGER AS n, coalesce(max(octet_length(answers)), 0)::INTEGER AS bytes FROM table_rows WHERE table_seq = $1",
      [r.seq],
    )).rows[0];
    const n = size.n;
    const topN = size.bytes / ANSWER_BYTES;
    // Rows are committed after the clusters they name, so the dictionary read now covers every row.
    await this.loadClusters();
    const header: PackedTableHeader = { version, modelVersion: r.model_version, topN, clusters: this.clusterIds.slice(), rows: n };
    const perPage = Math.max(1, Math.min(rowsPerPage, n));
    const c1 = new Int32Array(perPage);
    const c2 = new Int32Array(perPage);
    const answerIds = new Int32Array(perPage * topN);
    const scores = new Float32Array(perPage * topN);
    // Each query is a round trip (milliseconds, more under load), so rows are fetched at least `pageSize` at a time
    // and handed out `rowsPerPage` at a time: a reader that asks for small pages (the server, to yield often) does not
    // pay a round trip per page.
    const fetchRows = Math.max(rowsPerPage, this.pageSize);
    let i = 0;
    let last: [number, number] = [-1, -1];
    while (i < n) {
      const fetched = (
        await this.run(
          this.pool,
          "SELECT c1, c2, answers FROM table_rows WHERE table_seq = $1 AND (c1, c2) > ($2, $3) ORDER BY c1, c2 LIMIT $4",
          [r.seq, last[0], last[1], fetchRows],
          "array",
        )
      ).rows as unknown as [number, number, Buffer][];
      if (fetched.length === 0) break;
      last = [fetched[fetched.length - 1][0], fetched[fetched.length - 1][1]];
      for (let at = 0; at < fetched.length && i < n; at += rowsPerPage) {
        answerIds.fill(-1);
        scores.fill(0);
        let count = 0;
        // Rows added after the count: only an unfinished build grows, and a caller reading one gets what was counted.
        for (let k = at; k < Math.min(at + rowsPerPage, fetched.length) && i + count < n; k++) {
          const row = fetched[k];
          c1[count] = row[0];
          c2[count] = row[1];
          decodeAnswersInto(row[2], answerIds, scores, count * topN);
          count++;
        }
        i += count;
        yield { header, count, c1, c2, answerIds, scores };
      }
      if (fetched.length < fetchRows) break;
    }
    // Fewer rows than counted: the version was garbage-collected between pages. Never hand out a partial table.
    if (i !== n) throw new FreshrecError("NOT_FOUND", `table ${version} disappeared while loading (${i} of ${n} rows read)`);
    return header;
  }

  async close(): Promise<void> {
    // Builds left open are not failed here: closing without finishing is what a crash looks like, and the next
    // recoverStale (any process's) finds their locks free.
    for (const client of this.buildClients) await client.end().catch(() => {});
    this.buildClients.clear();
    await this.pool.end();
  }
}

class PostgresTableBuilder implements TableBuilderContract {
  readonly version: string;
  private count = 0;
  /** Set by finish/fail: the connection is gone, and the store says what the build became. */
  private ended = false;

  constructor(
    private readonly store: PostgresTableStore,
    private readonly client: pg.Client,
    private readonly seq: number,
  ) {
    this.version = versionId(seq);
  }

  get written(): number {
    return this.count;
  }

  async append(rows: Iterable<TableBuildRow>): Promise<number> {
    if (this.ended) return this.store.refuseEnded(this.seq);
    return this.store.appendRows(this.client, this.seq, rows, (n) => (this.count += n));
  }

  async appendPacked(rows: PackedBuildRows): Promise<number> {
    if (this.ended) return this.store.refuseEnded(this.seq);
    return this.store.appendPackedRows(this.client, this.seq, rows, (n) => (this.count += n));
  }

  async copyRows(fromVersion: string, pairs?: Iterable<History>): Promise<number> {
    if (this.ended) return this.store.refuseEnded(this.seq);
    const n = await this.store.copyRowsInto(this.client, this.seq, fromVersion, pairs);
    this.count += n;
    return n;
  }

  async finish(stats: TableBuildStats): Promise<TableInfo> {
    if (this.ended) return this.store.refuseEnded(this.seq);
    const info = await this.store.endBuild(this.client, this.seq, { stats });
    this.ended = true;
    return info;
  }

  async fail(reason: string): Promise<TableInfo> {
    if (this.ended) return this.store.refuseEnded(this.seq);
    const info = await this.store.endBuild(this.client, this.seq, { failure: reason });
    this.ended = true;
    return info;
  }
}
