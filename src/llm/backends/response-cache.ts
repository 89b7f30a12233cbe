/**
 * Answers of a remote language model kept beside the deployment, keyed by the sha256 of the exact request (server,
 * model, messages, constraint, sampling parameters): a table rebuild whose pairs did not change costs nothing, and a
 * changed prompt (new RAG context, new model) misses by construction. A value is written once and never changes.
 * Beside the answers, the Batch-API jobs still running, by the hash of their request lines, so a restarted build (on
 * this host or another sharing the store) resumes them instead of paying again.
 *
 * One contract (`ResponseCacheContract`), two adapters: the workspace's SQLite file (`llm-cache.sqlite`, WAL, shared
 * by the processes of one host) here, and the deployment's PostgreSQL database (`store.url`, shared by every host) in
 * ./postgres-response-cache.ts. Both run the conformance suite of test/llm/response-cache-conformance.ts (response-cache-stores.test.ts).
 *
 * @example
 * const cache = SqliteResponseCache.open("/ws/llm-cache.sqlite");
 * const key = responseCacheKey({ baseURL, body });
 * const hit = (await cache.get<Answer>(key)) ?? (await cache.put(key, await ask()), await cache.get<Answer>(key));
 */
import type Database from "better-sqlite3";
import { createHash } from "node:crypto";
import { type StoreFileKind, openStoreFile } from "../../data/store-file.js";
import type { Clock } from "../../domain/clock.js";

export interface ResponseCacheContract {
  /** Lookups (`get`, `getMany`) answered from the store, and those that were not, since this cache was opened. */
  readonly stats: { hits: number; misses: number };
  /** Where the cache is, for messages: a file path, or the database URL without its password. */
  readonly location: string;
  get<T>(key: string): Promise<T | undefined>;
  /**
   * The values of those keys that are stored (absent keys are missing from the map), each key counted once as a hit
   * or a miss: a table build's lookups in as few round trips as the store allows.
   */
  getMany<T>(keys: readonly string[]): Promise<Map<string, T>>;
  /** True without counting a lookup (dry-run estimates). */
  has(key: string): Promise<boolean>;
  /** The keys among these that are stored, without counting lookups. */
  hasMany(keys: readonly string[]): Promise<Set<string>>;
  /** Stores a value once: a key already stored keeps its first value. */
  put(key: string, value: unknown): Promise<void>;
  /** The running batch submitted for these request lines, if any. */
  batchOf(chunk: string): Promise<string | null>;
  /** Records (or replaces) the batch running for these request lines. */
  recordBatch(chunk: string, batchId: string): Promise<void>;
  forgetBatch(chunk: string): Promise<void>;
  /** The number of answers stored. */
  size(): Promise<number>;
  close(): Promise<void>;
}

/** Opens the cache a backend uses; called once per opened model, which closes it with itself. */
export type ResponseCacheOpener = () => Promise<ResponseCacheContract>;

/** The opener of a workspace's SQLite response cache at `path`. */
export function sqliteResponseCache(path: string, clock: Clock | null = null): ResponseCacheOpener {
  return async () => SqliteResponseCache.open(path, clock);
}

/** sha256 of a canonical JSON rendering (object keys sorted), so key order in a request never splits the cache. */
export function responseCacheKey(request: unknown): string {
  return createHash("sha256").update(canonicalJson(request)).digest("hex");
}

const RESPONSE_CACHE_FILE: StoreFileKind = { store: "llm cache", startsOver: "an empty response cache (every answer is asked again)" };

export class SqliteResponseCache implements ResponseCacheContract {
  readonly stats = { hits: 0, misses: 0 };

  private constructor(
    private readonly db: Database.Database,
    readonly location: string,
    private readonly clock: Clock | null,
  ) {}

  /**
   * Opens (creating when missing) the cache at `path`. A file that is empty, damaged or not a SQLite database is
   * refused naming it (StoreFileError, BAD_INPUT), like the workspace's other store files.
   */
  static open(path: string, clock: Clock | null = null): SqliteResponseCache {
    return new SqliteResponseCache(openStoreFile(path, RESPONSE_CACHE_FILE, migrate, { timeout: 5000 }), path, clock);
  }

  /** The same as `responseCacheKey`. */
  static keyOf(request: unknown): string {
    return responseCacheKey(request);
  }

  async get<T>(key: string): Promise<T | undefined> {
    return (await this.getMany<T>([key])).get(key);
  }

  async getMany<T>(keys: readonly string[]): Promise<Map<string, T>> {
    const select = this.db.prepare("SELECT value FROM responses WHERE key = ?");
    const found = new Map<string, T>();
    for (const key of new Set(keys)) {
      const row = select.get(key) as { value: string } | undefined;
      if (row) {
        this.stats.hits++;
        found.set(key, JSON.parse(row.value) as T);
      } else this.stats.misses++;
    }
    return found;
  }

  async has(key: string): Promise<boolean> {
    return this.db.prepare("SELECT 1 FROM responses WHERE key = ?").get(key) !== undefined;
  }

  async hasMany(keys: readonly string[]): Promise<Set<string>> {
    const select = this.db.prepare("SELECT 1 FROM responses WHERE key = ?");
    return new Set([...new Set(keys)].filter((key) => select.get(key) !== undefined));
  }

  async put(key: string, value: unknown): Promise<void> {
    this.db.prepare("INSERT OR IGNORE INTO responses (key, value, created_at) VALUES (?, ?, ?)").run(key, JSON.stringify(value), this.clock?.now() ?? null);
  }

  async batchOf(chunk: string): Promise<string | null> {
    return (this.db.prepare("SELECT batch_id FROM batches WHERE chunk = ?").get(chunk) as { batch_id: string } | undefined)?.batch_id ?? null;
  }

  async recordBatch(chunk: string, batchId: string): Promise<void> {
    this.db.prepare("INSERT OR REPLACE INTO batches (chunk, batch_id, created_at) VALUES (?, ?, ?)").run(chunk, batchId, this.clock?.now() ?? null);
  }

  async forgetBatch(chunk: string): Promise<void> {
    this.db.prepare("DELETE FROM batches WHERE chunk = ?").run(chunk);
  }

  async size(): Promise<number> {
    return (this.db.prepare("SELECT COUNT(*) AS n FROM responses").get() as { n: number }).n;
  }

  async close(): Promise<void> {
    this.db.close();
  }
}

export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

function migrate(db: Database.Database): void {
  db.pragma("journal_mode = WAL");
  db.pragma("busy_timeout = 5000");
  db.exec("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at INTEGER)");
  // Batch API jobs still running, by the hash of their request lines: a restarted build resumes them.
  db.exec("CREATE TABLE IF NOT EXISTS batches (chunk TEXT PRIMARY KEY, batch_id TEXT NOT NULL, created_at INTEGER)");
}
