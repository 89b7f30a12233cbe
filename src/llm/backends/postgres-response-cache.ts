/**
 * The response cache on PostgreSQL: the second adapter of `ResponseCacheContract` (./response-cache.ts), for a
 * deployment whose processes and hosts share one database (`store.url`, issue 19). A worker moved to another host, or
 * a refresh run from any host, is answered from the same answers, and a Batch-API job submitted by one host is resumed
 * by another. Same semantics as the SQLite file: an answer is written once (INSERT ... ON CONFLICT DO NOTHING, so two
 * hosts asking the same prompt at once keep the first answer), batches are upserted and deleted.
 *
 * Values are kept as the JSON text the SQLite file holds (TEXT, not JSONB): read back exactly as written.
 *
 * @example
 * const cache = await PostgresResponseCache.open("postgres://freshrec@db.internal/freshrec", clock);
 * const hits = await cache.getMany<Answer>(keys); // one round trip per LOOKUP_CHUNK keys
 */
import pg from "pg";
import { BIGINT_AS_NUMBER, openStorePool } from "../../data/postgres-pool.js";
import type { Clock } from "../../domain/clock.js";
import type { ResponseCacheContract } from "./response-cache.js";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS llm_responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at BIGINT);
CREATE TABLE IF NOT EXISTS llm_batches (chunk TEXT PRIMARY KEY, batch_id TEXT NOT NULL, created_at BIGINT);
`;

/** Advisory lock key of the schema (any constant, distinct from the other stores'). */
const SCHEMA_LOCK = 0x6c6c6d63;

/** Keys per lookup query: a table build's thousands of keys in a few round trips, each query's array bounded. */
const LOOKUP_CHUNK = 5000;

export class PostgresResponseCache implements ResponseCacheContract {
  readonly stats = { hits: 0, misses: 0 };

  private constructor(
    private readonly pool: pg.Pool,
    readonly location: string,
    private readonly clock: Clock | null,
  ) {}

  /**
   * Connects to `url` and creates the cache's tables when missing.
   * @throws FreshrecError naming the database (without its password) when it cannot be reached or set up.
   */
  static async open(url: string, clock: Clock | null = null): Promise<PostgresResponseCache> {
    // Several connections: a build's requests run `concurrency` at a time and each stores its answer.
    const { pool, location } = await openStorePool({ url, store: "response cache", schema: SCHEMA, schemaLock: SCHEMA_LOCK, max: 4, types: BIGINT_AS_NUMBER });
    return new PostgresResponseCache(pool, location, clock);
  }

  async get<T>(key: string): Promise<T | undefined> {
    return (await this.getMany<T>([key])).get(key);
  }

  async getMany<T>(keys: readonly string[]): Promise<Map<string, T>> {
    const unique = [...new Set(keys)];
    const found = new Map<string, T>();
    for (let start = 0; start < unique.length; start += LOOKUP_CHUNK) {
      const { rows } = await this.pool.query<{ key: string; value: string }>("SELECT key, value FROM llm_responses WHERE key = ANY($1::TEXT[])", [
        unique.slice(start, start + LOOKUP_CHUNK),
      ]);
      for (const r of rows) found.set(r.key, JSON.parse(r.value) as T);
    }
    this.stats.hits += found.size;
    this.stats.misses += unique.length - found.size;
    return found;
  }

  async has(key: string): Promise<boolean> {
    return (await this.hasMany([key])).has(key);
  }

  async hasMany(keys: readonly string[]): Promise<Set<string>> {
    const unique = [...new Set(keys)];
    const found = new Set<string>();
    for (let start = 0; start < unique.length; start += LOOKUP_CHUNK) {
      const { rows } = await this.pool.query<{ key: string }>("SELECT key FROM llm_responses WHERE key = ANY($1::TEXT[])", [unique.slice(start, start + LOOKUP_CHUNK)]);
      for (const r of rows) found.add(r.key);
    }
    return found;
  }

  async put(key: string, value: unknown): Promise<void> {
    await this.pool.query("INSERT INTO llm_responses (key, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING", [
      key,
      JSON.stringify(value),
      this.clock?.now() ?? null,
    ]);
  }

  async batchOf(chunk: string): Promise<string | null> {
    const { rows } = await this.pool.query<{ batch_id: string }>("SELECT batch_id FROM llm_batches WHERE chunk = $1", [chunk]);
    return rows[0]?.batch_id ?? null;
  }

  async recordBatch(chunk: string, batchId: string): Promise<void> {
    await this.pool.query(
      "INSERT INTO llm_batches (chunk, batch_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (chunk) DO UPDATE SET batch_id = EXCLUDED.batch_id, created_at = EXCLUDED.created_at",
      [chunk, batchId, this.clock?.now() ?? null],
    );
  }

  async forgetBatch(chunk: string): Promise<void> {
    await this.pool.query("DELETE FROM llm_batches WHERE chunk = $1", [chunk]);
  }

  async size(): Promise<number> {
    const { rows } = await this.pool.query<{ n: number }>("SELECT COUNT(*)::BIGINT AS n FROM llm_responses");
    return rows[0].n;
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
