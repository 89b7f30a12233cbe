/**
 * Answers of a remote language model kept on disk, keyed by the sha256 of the exact request (server, model,
 * messages, constraint, sampling parameters): a table rebuild whose pairs did not change costs nothing, and a
 * changed prompt (new RAG context, new model) misses by construction. One SQLite file (WAL) that several processes
 * may share; a value is written once and never changes.
 *
 * @example
 * const cache = ResponseCache.open("/ws/llm-cache.sqlite");
 * const key = ResponseCache.keyOf({ baseURL, body });
 * const hit = cache.get<Answer>(key) ?? (cache.put(key, await ask()), cache.get<Answer>(key));
 */
import type Database from "better-sqlite3";
import { createHash } from "node:crypto";
import { type StoreFileKind, openStoreFile } from "../../data/store-file.js";
import type { Clock } from "../../domain/clock.js";

const RESPONSE_CACHE_FILE: StoreFileKind = { store: "llm cache", startsOver: "an empty response cache (every answer is asked again)" };

export class ResponseCache {
  /** Lookups answered from the file, and those that were not, since this cache was opened. */
  readonly stats = { hits: 0, misses: 0 };

  private constructor(
    private readonly db: Database.Database,
    private readonly clock: Clock | null,
  ) {}

  /**
   * Opens (creating when missing) the cache at `path`. A file that is empty, damaged or not a SQLite database is
   * refused naming it (StoreFileError, BAD_INPUT), like the workspace's other store files.
   */
  static open(path: string, clock: Clock | null = null): ResponseCache {
    return new ResponseCache(openStoreFile(path, RESPONSE_CACHE_FILE, migrate, { timeout: 5000 }), clock);
  }

  /** sha256 of a canonical JSON rendering (object keys sorted), so key order in a request never splits the cache. */
  static keyOf(request: unknown): string {
    return createHash("sha256").update(canonicalJson(request)).digest("hex");
  }

  get<T>(key: string): T | undefined {
    const row = this.db.prepare("SELECT value FROM responses WHERE key = ?").get(key) as { value: string } | undefined;
    if (row) this.stats.hits++;
    else this.stats.misses++;
    return row ? (JSON.parse(row.value) as T) : undefined;
  }

  /** True without counting a lookup (dry-run estimates). */
  has(key: string): boolean {
    return this.db.prepare("SELECT 1 FROM responses WHERE key = ?").get(key) !== undefined;
  }

  put(key: string, value: unknown): void {
    this.db.prepare("INSERT OR IGNORE INTO responses (key, value, created_at) VALUES (?, ?, ?)").run(key, JSON.stringify(value), this.clock?.now() ?? null);
  }

  /** The running batch submitted for these request lines, if any. */
  batchOf(chunk: string): string | null {
    return (this.db.prepare("SELECT batch_id FROM batches WHERE chunk = ?").get(chunk) as { batch_id: string } | undefined)?.batch_id ?? null;
  }

  recordBatch(chunk: string, batchId: string): void {
    this.db.prepare("INSERT OR REPLACE INTO batches (chunk, batch_id, created_at) VALUES (?, ?, ?)").run(chunk, batchId, this.clock?.now() ?? null);
  }

  forgetBatch(chunk: string): void {
    this.db.prepare("DELETE FROM batches WHERE chunk = ?").run(chunk);
  }

  get size(): number {
    return (this.db.prepare("SELECT COUNT(*) AS n FROM responses").get() as { n: number }).n;
  }

  close(): void {
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
