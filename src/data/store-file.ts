/**
 * The workspace's SQLite store files (tables.sqlite, registry.sqlite, schedule.sqlite, the LLM response cache) opened one way: a missing
 * file is created whole, a 0-byte one is refused as truncated, and a file SQLite cannot read is refused naming the
 * file and the problem (BAD_INPUT: exit 2), never a raw SQLite error and never silently replaced by an empty store.
 *
 * @example
 * const db = openStoreFile(file, { store: "registry", startsOver: "an empty model registry" }, migrate);
 */
import Database from "better-sqlite3";
import { randomUUID } from "node:crypto";
import { existsSync, linkSync, mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { FreshrecError } from "../domain/errors.js";

/** Which store a file holds, in the words its errors use. */
export interface StoreFileKind {
  /** Prefix of its messages: "tables", "registry", "schedule". */
  readonly store: string;
  /** What moving the file aside starts, for the advice: "an empty table store". */
  readonly startsOver: string;
}

/**
 * A store file cannot be used: not a SQLite database, damaged, or empty. BAD_INPUT (exit 2, like any bad file the
 * user points freshrec at): nothing freshrec does would repair it, and going on would fail later on a raw SQLite
 * error or, for an empty file, silently start a new empty store where the old one's state was.
 */
export class StoreFileError extends FreshrecError {
  override name = "StoreFileError";
  readonly store: string;
  constructor(
    kind: StoreFileKind,
    readonly file: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super("BAD_INPUT", `${kind.store}: ${file} ${problem}; restore it from a backup, or move it aside to start ${kind.startsOver}`, options);
    this.store = kind.store;
  }
}

/** What is wrong with a file SQLite failed to read, or null when the error is not about the file's bytes. */
export function storeFileDamage(error: unknown): string | null {
  const code = (error as { code?: unknown })?.code;
  const said = (error as Error)?.message ?? String(error);
  if (code === "SQLITE_NOTADB") return `is not a SQLite database (${said})`;
  if (typeof code === "string" && code.startsWith("SQLITE_CORRUPT")) return `is damaged (${said})`;
  return null;
}

/**
 * An error met opening a store file, named by the store and the file: a damaged file is a StoreFileError, a
 * FreshrecError stays as it is, anything else (permissions, a full disk) is INTERNAL keeping its cause.
 */
export function storeFileError(kind: StoreFileKind, file: string, error: unknown): Error {
  if (error instanceof FreshrecError) return error;
  const damage = storeFileDamage(error);
  if (damage !== null) return new StoreFileError(kind, file, damage, { cause: error });
  return new FreshrecError("INTERNAL", `${kind.store}: cannot open ${file}: ${(error as Error)?.message ?? String(error)}`, { cause: error });
}

/**
 * Makes sure `file` is a store file to open: creates a missing one whole (`migrate` writes its schema), refuses a
 * 0-byte one. SQLite would take an empty file for a new database; freshrec never leaves one, so an empty file is a
 * store that was truncated or replaced.
 * @throws StoreFileError for a 0-byte file; what `storeFileError` makes of a failure to create one.
 */
export function prepareStoreFile(file: string, kind: StoreFileKind, migrate: (db: Database.Database) => void): void {
  let empty: boolean;
  try {
    mkdirSync(dirname(file), { recursive: true });
    if (!existsSync(file)) createStoreFile(file, migrate);
    empty = statSync(file).size === 0;
  } catch (error) {
    throw storeFileError(kind, file, error);
  }
  if (empty) throw new StoreFileError(kind, file, "is empty (0 bytes): it was truncated or replaced");
}

/**
 * Opens a store file (created whole when missing) and runs `migrate` on it; failures are named by `storeFileError`
 * (a file SQLite cannot read is a StoreFileError). The connection is closed when anything throws. ":memory:" opens a
 * private in-memory database (no file to prepare), migrated the same way.
 */
export function openStoreFile(
  file: string,
  kind: StoreFileKind,
  migrate: (db: Database.Database) => void,
  options: Database.Options = {},
): Database.Database {
  if (file !== ":memory:") prepareStoreFile(file, kind, migrate);
  let db: Database.Database | null = null;
  try {
    db = new Database(file, options);
    migrate(db);
    return db;
  } catch (error) {
    db?.close();
    throw storeFileError(kind, file, error);
  }
}

/**
 * Creates a missing store file whole: the schema is written to a temporary file which is then linked into place, so
 * the file appears complete or not at all. A 0-byte store file is then never one another freshrec process is
 * creating, and opening can refuse it as truncated. When two processes create the file at once, the first link
 * wins and the other's (identical, empty) store is dropped.
 */
export function createStoreFile(file: string, migrate: (db: Database.Database) => void): void {
  const temp = `${file}.${process.pid}-${randomUUID().slice(0, 8)}.creating`;
  try {
    const db = new Database(temp);
    try {
      migrate(db);
    } finally {
      // Closing checkpoints the WAL into the file, so the linked file holds everything.
      db.close();
    }
    try {
      linkSync(temp, file);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "EEXIST") return;
      // A file system without hard links: a rename is atomic too, only not exclusive (a race is not refused).
      if (code === "EPERM" || code === "ENOTSUP" || code === "EOPNOTSUPP" || code === "ENOSYS") renameSync(temp, file);
      else throw error;
    }
  } finally {
    for (const leftover of [temp, `${temp}-wal`, `${temp}-shm`]) rmSync(leftover, { force: true });
  }
}
