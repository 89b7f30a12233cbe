/**
 * The model registry: every model version freshrec made, with its lineage, training window, sample counts,
 * metrics, file and sha256, and status history. One SQLite file, `<workspace>/registry.sqlite`.
 *
 * "Make live" is one IMMEDIATE transaction: the previous live model becomes retired and the new one live, so at
 * every moment readers see exactly one live model (or none before the first).
 *
 * A model file inside the workspace is recorded relative to it ("models/m000001/model.gguf"), so a copied or moved
 * workspace uses its own files; a file outside it (a user's GGUF) is recorded by absolute path and reported as
 * external, because copying the workspace does not copy it.
 *
 * `modelFile(version)` is how a version becomes a file to open: it checks the file against the sha256 recorded at
 * registration (once per process for each file, modification time and size) and refuses a file that changed.
 *
 * Two surfaces, as the table store has: `ModelRegistryContract` (asynchronous), the one contract both adapters
 * implement (`EmbeddedModelRegistry` over this file, `PostgresModelRegistry` in ./postgres-registry.ts for a
 * deployment's shared database), run by one conformance suite (test/llm/registry-conformance.ts); and the synchronous
 * `ModelRegistry`, which replay and `serve --schedule` still hold (the update loop takes either through
 * `modelRegistryContract`).
 *
 * @example
 * const registry = new ModelRegistry("./.freshrec", clock);
 * const v = registry.register({ kind: "base", filePath, metrics: { top1: 0.21 }, trainSamples: 9000 });
 * registry.makeLive(v.version, "pretrained base model");
 */
import Database from "better-sqlite3";
import { createHash } from "node:crypto";
import { closeSync, copyFileSync, createReadStream, existsSync, linkSync, mkdirSync, openSync, readSync, realpathSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { type StoreFileKind, openStoreFile } from "../data/store-file.js";
import type { Clock } from "../domain/clock.js";
import { FreshrecError } from "../domain/errors.js";
import type { TimeWindow } from "../domain/types.js";

export type ModelKind = "base" | "fine-tuned";
export type ModelStatus = "candidate" | "live" | "halted" | "rejected" | "retired";

export interface ModelVersion {
  /** "m000001", "m000002", ... in creation order. */
  readonly version: string;
  readonly parent: string | null;
  readonly kind: ModelKind;
  readonly status: ModelStatus;
  /** Data window the training samples came from (null when unknown). */
  readonly window: TimeWindow | null;
  readonly trainSamples: number;
  readonly validationSamples: number;
  readonly metrics: Record<string, unknown>;
  /** Absolute path of the model file (resolved against the workspace when it lies inside it). */
  readonly filePath: string;
  /** The file lies outside the workspace: a copy of the workspace still reads it from there. */
  readonly external: boolean;
  readonly sha256: string;
  readonly templateHash: string | null;
  readonly vocabularyHash: string | null;
  readonly createdAt: number;
}

export interface StatusChange {
  readonly version: string;
  readonly from: ModelStatus | null;
  readonly to: ModelStatus;
  readonly reason: string;
  readonly at: number;
}

export interface RegisterModelInput {
  readonly kind: ModelKind;
  readonly parent?: string | null;
  readonly filePath: string;
  /** Computed from the file when absent. */
  readonly sha256?: string;
  readonly window?: TimeWindow | null;
  readonly trainSamples?: number;
  readonly validationSamples?: number;
  readonly metrics?: Record<string, unknown>;
  readonly templateHash?: string | null;
  readonly vocabularyHash?: string | null;
  /** @defaultValue "candidate" */
  readonly status?: ModelStatus;
  readonly reason?: string;
}

/** sha256 of a file, streamed. */
export async function fileSha256(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/**
 * A version's model file is not the file that was registered: changed, replaced or missing. BAD_INPUT (exit 2), as a
 * damaged store file is: freshrec cannot repair it, and serving or training from it would silently use other weights
 * than the ones the gates passed.
 */
export class ModelFileError extends FreshrecError {
  override name = "ModelFileError";
  constructor(
    readonly version: string,
    readonly file: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super("BAD_INPUT", `model ${version}: ${file} ${problem}`, options);
  }
}

/** sha256 of files this process has hashed, by path, modification time and size: each is read once. */
const verifiedHashes = new Map<string, string>();

/**
 * sha256 of a file, read synchronously: callers resolve a version to its file in synchronous code (the fine-tuning
 * job's view of the registry), and each file is read once per process.
 */
function fileSha256Sync(path: string): string {
  const hash = createHash("sha256");
  const buffer = Buffer.allocUnsafe(1 << 20);
  const fd = openSync(path, "r");
  try {
    for (let n = readSync(fd, buffer); n > 0; n = readSync(fd, buffer)) hash.update(buffer.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/**
 * The file of a model version, checked against the sha256 recorded when it was registered (each registry adapter's
 * `modelFile`). Hashed once per process for each file, modification time and size.
 * @throws ModelFileError naming the file (and both hashes when they differ).
 */
export function verifiedModelFile(found: ModelVersion): string {
  const { version, filePath: file, sha256: recorded } = found;
  const where = found.external ? "external file, outside the workspace" : "in the workspace";
  let stat: ReturnType<typeof statSync>;
  try {
    stat = statSync(file);
  } catch (error) {
    throw new ModelFileError(version, file, `is missing (${where}): restore it, or register the model again`, { cause: error });
  }
  if (!stat.isFile()) throw new ModelFileError(version, file, `is not a file (${where})`);
  const key = `${file}\0${stat.mtimeMs}\0${stat.size}`;
  let actual = verifiedHashes.get(key);
  if (actual === undefined) {
    try {
      actual = fileSha256Sync(file);
    } catch (error) {
      throw new ModelFileError(version, file, `cannot be read (${(error as Error).message})`, { cause: error });
    }
    verifiedHashes.set(key, actual);
  }
  if (actual !== recorded) {
    throw new ModelFileError(
      version,
      file,
      `has sha256 ${actual}, but the registry recorded ${recorded} when the model was registered: the file was changed or replaced (${where}); restore the registered file, or register this one as a new model version`,
    );
  }
  return file;
}

/** A registry row as both adapters store it (the PostgreSQL one adds its sequence number). */
export interface ModelRow {
  version: string;
  parent: string | null;
  kind: ModelKind;
  status: ModelStatus;
  window_from: number | null;
  window_to: number | null;
  train_samples: number;
  validation_samples: number;
  metrics: string;
  file_path: string;
  sha256: string;
  template_hash: string | null;
  vocabulary_hash: string | null;
  created_at: number;
}

/** A stored row read back; `file` is where its recorded path points and whether that lies outside the store's folder. */
export function modelVersionOf(r: ModelRow, file: { readonly filePath: string; readonly external: boolean }): ModelVersion {
  return {
    version: r.version,
    parent: r.parent,
    kind: r.kind,
    status: r.status,
    window: r.window_from !== null && r.window_to !== null ? { from: r.window_from, to: r.window_to } : null,
    trainSamples: r.train_samples,
    validationSamples: r.validation_samples,
    metrics: JSON.parse(r.metrics) as Record<string, unknown>,
    filePath: file.filePath,
    external: file.external,
    sha256: r.sha256,
    templateHash: r.template_hash,
    vocabularyHash: r.vocabulary_hash,
    createdAt: r.created_at,
  };
}

function fromRow(r: ModelRow, workspace: string): ModelVersion {
  const external = isAbsolute(r.file_path);
  return modelVersionOf(r, { filePath: external ? r.file_path : join(workspace, ...r.file_path.split("/")), external });
}

/**
 * 1: file paths absolute. 2: file paths inside the workspace relative to it, with "/" (a freshrec that reads schema 1
 * would resolve them against its working directory, so it refuses the file instead).
 */
const SCHEMA_VERSION = 2;

const REGISTRY_FILE = "registry.sqlite";
/** How the registry's file errors name it (src/data/store-file.ts). */
const REGISTRY_STORE_FILE: StoreFileKind = { store: "registry", startsOver: "an empty model registry" };

/** `path` relative to `dir` with "/" separators when it lies inside `dir`, else null. */
function inside(dir: string, path: string): string | null {
  const rel = relative(dir, path);
  if (rel === "" || rel === ".." || rel.startsWith(`..${sep}`) || isAbsolute(rel)) return null;
  return rel.split(sep).join("/");
}

function isFile(path: string): boolean {
  return existsSync(path) && statSync(path).isFile();
}

function realPath(path: string): string | null {
  try {
    return realpathSync(path);
  } catch {
    return null;
  }
}

/**
 * Schema 1 recorded every file by absolute path. A path inside this workspace becomes relative. So does one that
 * points into another folder's `models/` when this workspace has a file of that name under its own `models/`: freshrec
 * only ever wrote model files there, so that row was written while this registry lived in that other folder (a
 * workspace copied before this migration), and its own copy is the one meant. Any other path stays absolute:
 * external. The sha256 check when a version is opened catches a copy that differs from what was registered.
 */
function relativiseLegacyPaths(db: Database.Database, root: string): void {
  const rows = db.prepare("SELECT version, file_path FROM models").all() as { version: string; file_path: string }[];
  const update = db.prepare("UPDATE models SET file_path = ? WHERE version = ?");
  for (const row of rows) {
    if (!isAbsolute(row.file_path)) continue;
    let stored = storedPathIn(root, row.file_path);
    if (isAbsolute(stored)) {
      const parts = row.file_path.split(/[\\/]/);
      const at = parts.lastIndexOf("models");
      const tail = at >= 0 ? parts.slice(at) : [];
      if (tail.length > 1 && isFile(join(root, ...tail))) stored = tail.join("/");
    }
    if (stored !== row.file_path) update.run(stored, row.version);
  }
}

/**
 * `file` at `target` (a hard link, or a copy across filesystems), written whole or not at all: a model file from
 * outside a registry's workspace placed under its models folder, so that the registry records it relative to it.
 */
export function placeModelFile(file: string, target: string): string {
  mkdirSync(dirname(target), { recursive: true });
  const partial = `${target}.partial`;
  rmSync(partial, { force: true });
  try {
    linkSync(file, partial);
  } catch (error) {
    // Only a filesystem that cannot link here (another device, no hard links) falls back to a copy; any other
    // failure is the caller's to see.
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== "EXDEV" && code !== "EPERM" && code !== "ENOTSUP") throw error;
    copyFileSync(file, partial);
  }
  renameSync(partial, target);
  return target;
}

/**
 * `file` relative to `dir` with "/" separators when it lies inside `dir` (directly, or once symbolic links are
 * resolved), else null.
 */
export function pathInside(dir: string, file: string): string | null {
  const path = resolve(file);
  const lexical = inside(dir, path);
  if (lexical !== null) return lexical;
  const realDir = realPath(dir);
  const realFile = realPath(path);
  return realDir !== null && realFile !== null ? inside(realDir, realFile) : null;
}

/** What the registry records for a model file: relative to the workspace when inside it, else absolute. */
function storedPathIn(root: string, file: string): string {
  const path = resolve(file);
  const lexical = inside(root, path);
  if (lexical !== null) return lexical;
  // The workspace or the file may be reached through a symbolic link (/tmp on macOS, a mounted home).
  const realRoot = realPath(root);
  const realFile = realPath(path);
  const real = realRoot !== null && realFile !== null ? inside(realRoot, realFile) : null;
  return real ?? path;
}

export class ModelRegistry {
  private readonly db: Database.Database;
  /** The workspace as an absolute path: what relative file paths are resolved against. */
  private readonly root: string;

  /** Opens (creating if needed) `<workspace>/registry.sqlite`; models live in `<workspace>/models/`. */
  constructor(
    readonly workspace: string,
    private readonly clock: Clock,
  ) {
    this.root = resolve(workspace);
    this.db = openStoreFile(join(this.root, REGISTRY_FILE), REGISTRY_STORE_FILE, (db) => ModelRegistry.migrate(db, this.root), { timeout: 5000 });
  }

  private static migrate(db: Database.Database, root: string): void {
    db.pragma("journal_mode = WAL");
    const userVersion = db.pragma("user_version", { simple: true }) as number;
    if (userVersion > SCHEMA_VERSION) {
      throw new FreshrecError("INTERNAL", `registry: ${join(root, REGISTRY_FILE)} has schema ${userVersion}, newer than this freshrec (${SCHEMA_VERSION})`);
    }
    db.transaction(() => {
      // Read again under the write lock: another process may have migrated the file meanwhile.
      const found = db.pragma("user_version", { simple: true }) as number;
      db.exec(`
        CREATE TABLE IF NOT EXISTS models (
          seq INTEGER PRIMARY KEY AUTOINCREMENT,
          version TEXT NOT NULL UNIQUE,
          parent TEXT REFERENCES models(version),
          kind TEXT NOT NULL CHECK (kind IN ('base','fine-tuned')),
          status TEXT NOT NULL CHECK (status IN ('candidate','live','halted','rejected','retired')),
          window_from INTEGER, window_to INTEGER,
          train_samples INTEGER NOT NULL DEFAULT 0,
          validation_samples INTEGER NOT NULL DEFAULT 0,
          metrics TEXT NOT NULL DEFAULT '{}',
          file_path TEXT NOT NULL,
          sha256 TEXT NOT NULL,
          template_hash TEXT, vocabulary_hash TEXT,
          created_at INTEGER NOT NULL
        );
        -- At most one live model, enforced by the database itself.
        CREATE UNIQUE INDEX IF NOT EXISTS one_live ON models(status) WHERE status = 'live';
        CREATE TABLE IF NOT EXISTS status_changes (
          id INTEGER PRIMARY KEY AUTOINCREMENT,
          version TEXT NOT NULL REFERENCES models(version),
          from_status TEXT, to_status TEXT NOT NULL, reason TEXT NOT NULL, at INTEGER NOT NULL
        );
      `);
      if (found === 1) relativiseLegacyPaths(db, root);
      db.pragma(`user_version = ${SCHEMA_VERSION}`);
    }).immediate();
  }

  /** Directory for model files and checkpoints. */
  get modelsDir(): string {
    const dir = join(this.workspace, "models");
    mkdirSync(dir, { recursive: true });
    return dir;
  }

  /**
   * The file of a model version, to open it for serving, refreshing or fine-tuning: checked against the sha256
   * recorded when it was registered. Hashed once per process for each file, modification time and size.
   * @throws ModelFileError naming the file (and both hashes when they differ); FreshrecError NOT_FOUND for an unknown version.
   */
  modelFile(model: ModelVersion | string): string {
    const found = typeof model === "string" ? this.get(model) : model;
    if (!found) throw new FreshrecError("NOT_FOUND", `model ${String(model)} does not exist (see freshrec models list)`);
    return verifiedModelFile(found);
  }

  /** The version name the next registration will get (for naming files before registering). */
  nextVersion(): string {
    const row = this.db.prepare("SELECT COALESCE(MAX(seq), 0) AS n FROM models").get() as { n: number };
    return `m${String(row.n + 1).padStart(6, "0")}`;
  }

  async register(input: RegisterModelInput): Promise<ModelVersion> {
    const sha256 = input.sha256 ?? (await fileSha256(input.filePath));
    const status = input.status ?? "candidate";
    if (status === "live") throw new FreshrecError("BAD_INPUT", "register as candidate, then makeLive");
    const now = this.clock.now();
    return this.db.transaction(() => {
      if (input.parent && !this.get(input.parent)) throw new FreshrecError("NOT_FOUND", `parent model ${input.parent} does not exist`);
      const version = this.nextVersion();
      this.db
        .prepare(
          `INSERT INTO models (version, parent, kind, status, window_from, window_to, train_samples, validation_samples,
             metrics, file_path, sha256, template_hash, vocabulary_hash, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          version,
          input.parent ?? null,
          input.kind,
          status,
          input.window?.from ?? null,
          input.window?.to ?? null,
          input.trainSamples ?? 0,
          input.validationSamples ?? 0,
          JSON.stringify(input.metrics ?? {}),
          storedPathIn(this.root, input.filePath),
          sha256,
          input.templateHash ?? null,
          input.vocabularyHash ?? null,
          now,
        );
      this.recordChange(version, null, status, input.reason ?? "registered", now);
      return this.get(version)!;
    }).immediate();
  }

  get(version: string): ModelVersion | null {
    const row = this.db.prepare("SELECT * FROM models WHERE version = ?").get(version) as ModelRow | undefined;
    return row ? fromRow(row, this.root) : null;
  }

  list(filter: ModelFilter = {}): ModelVersion[] {
    const rows = this.db.prepare("SELECT * FROM models ORDER BY seq").all() as ModelRow[];
    return rows
      .map((r) => fromRow(r, this.root))
      .filter((m) => (!filter.status || filter.status.includes(m.status)) && (!filter.kind || m.kind === filter.kind));
  }

  live(): ModelVersion | null {
    const row = this.db.prepare("SELECT * FROM models WHERE status = 'live'").get() as ModelRow | undefined;
    return row ? fromRow(row, this.root) : null;
  }

  history(version?: string): StatusChange[] {
    const rows = (
      version
        ? this.db.prepare("SELECT * FROM status_changes WHERE version = ? ORDER BY id").all(version)
        : this.db.prepare("SELECT * FROM status_changes ORDER BY id").all()
    ) as { version: string; from_status: ModelStatus | null; to_status: ModelStatus; reason: string; at: number }[];
    return rows.map((r) => ({ version: r.version, from: r.from_status, to: r.to_status, reason: r.reason, at: r.at }));
  }

  /** Makes `version` the one live model; the previous live model becomes retired, in one transaction. */
  makeLive(version: string, reason: string): ModelVersion {
    const now = this.clock.now();
    return this.db.transaction(() => {
      const target = this.get(version);
      if (!target) throw new FreshrecError("NOT_FOUND", `model ${version} does not exist`);
      if (target.status === "live") return target;
      if (target.status === "rejected") throw new FreshrecError("BAD_INPUT", `model ${version} was rejected and cannot go live`);
      const previous = this.live();
      if (previous) {
        this.db.prepare("UPDATE models SET status = 'retired' WHERE version = ?").run(previous.version);
        this.recordChange(previous.version, "live", "retired", `replaced by ${version}`, now);
      }
      this.db.prepare("UPDATE models SET status = 'live' WHERE version = ?").run(version);
      this.recordChange(version, target.status, "live", reason, now);
      return this.get(version)!;
    }).immediate();
  }

  /** Any status change other than going live (halted, rejected, retired, back to candidate). */
  setStatus(version: string, status: Exclude<ModelStatus, "live">, reason: string): ModelVersion {
    const now = this.clock.now();
    return this.db.transaction(() => {
      const target = this.get(version);
      if (!target) throw new FreshrecError("NOT_FOUND", `model ${version} does not exist`);
      if (target.status === status) return target;
      this.db.prepare("UPDATE models SET status = ? WHERE version = ?").run(status, version);
      this.recordChange(version, target.status, status, reason, now);
      return this.get(version)!;
    }).immediate();
  }

  /** Merges metrics into a model's record (gates computed after registration). */
  updateMetrics(version: string, metrics: Record<string, unknown>): ModelVersion {
    return this.db.transaction(() => {
      const target = this.get(version);
      if (!target) throw new FreshrecError("NOT_FOUND", `model ${version} does not exist`);
      this.db.prepare("UPDATE models SET metrics = ? WHERE version = ?").run(JSON.stringify({ ...target.metrics, ...metrics }), version);
      return this.get(version)!;
    }).immediate();
  }

  close(): void {
    this.db.close();
  }

  private recordChange(version: string, from: ModelStatus | null, to: ModelStatus, reason: string, at: number): void {
    this.db
      .prepare("INSERT INTO status_changes (version, from_status, to_status, reason, at) VALUES (?, ?, ?, ?, ?)")
      .run(version, from, to, reason, at);
  }
}

/** Which models `list` returns; both fields optional and combined with AND. */
export interface ModelFilter {
  readonly status?: readonly ModelStatus[];
  readonly kind?: ModelKind;
}

/**
 * The model registry contract, asynchronous so that an adapter may talk to a database server. Each method means what
 * the same-named `ModelRegistry` method means.
 */
export interface ModelRegistryContract {
  /** Where the records are, for messages: a file path, or a database URL without its password. */
  readonly location: string;
  /** Folder of model files and checkpoints (created when missing). */
  readonly modelsDir: string;
  /** The version name the next registration will most likely get (for naming files before registering). */
  nextVersion(): Promise<string>;
  register(input: RegisterModelInput): Promise<ModelVersion>;
  get(version: string): Promise<ModelVersion | null>;
  list(filter?: ModelFilter): Promise<ModelVersion[]>;
  live(): Promise<ModelVersion | null>;
  history(version?: string): Promise<StatusChange[]>;
  makeLive(version: string, reason: string): Promise<ModelVersion>;
  setStatus(version: string, status: Exclude<ModelStatus, "live">, reason: string): Promise<ModelVersion>;
  updateMetrics(version: string, metrics: Record<string, unknown>): Promise<ModelVersion>;
  /** The version's file, checked against its registered sha256 (`verifiedModelFile`). */
  modelFile(model: ModelVersion | string): Promise<string>;
  close(): Promise<void>;
}

/** The workspace's registry file behind the asynchronous contract; `sync` is the synchronous registry itself. */
export class EmbeddedModelRegistry implements ModelRegistryContract {
  constructor(readonly sync: ModelRegistry) {}

  static open(workspace: string, clock: Clock): EmbeddedModelRegistry {
    return new EmbeddedModelRegistry(new ModelRegistry(workspace, clock));
  }

  get location(): string {
    return join(resolve(this.sync.workspace), REGISTRY_FILE);
  }

  get modelsDir(): string {
    return this.sync.modelsDir;
  }

  async nextVersion(): Promise<string> {
    return this.sync.nextVersion();
  }

  register(input: RegisterModelInput): Promise<ModelVersion> {
    return this.sync.register(input);
  }

  async get(version: string): Promise<ModelVersion | null> {
    return this.sync.get(version);
  }

  async list(filter?: ModelFilter): Promise<ModelVersion[]> {
    return this.sync.list(filter);
  }

  async live(): Promise<ModelVersion | null> {
    return this.sync.live();
  }

  async history(version?: string): Promise<StatusChange[]> {
    return this.sync.history(version);
  }

  async makeLive(version: string, reason: string): Promise<ModelVersion> {
    return this.sync.makeLive(version, reason);
  }

  async setStatus(version: string, status: Exclude<ModelStatus, "live">, reason: string): Promise<ModelVersion> {
    return this.sync.setStatus(version, status, reason);
  }

  async updateMetrics(version: string, metrics: Record<string, unknown>): Promise<ModelVersion> {
    return this.sync.updateMetrics(version, metrics);
  }

  async modelFile(model: ModelVersion | string): Promise<string> {
    return this.sync.modelFile(model);
  }

  async close(): Promise<void> {
    this.sync.close();
  }
}

/** What the update path (the update loop, fine-tuning) is handed: any adapter, or the synchronous registry replay keeps. */
export type UpdateModelRegistry = ModelRegistryContract | ModelRegistry;

/**
 * The contract over an `UpdateModelRegistry`: a synchronous registry is wrapped (same file, same calls), an adapter is
 * returned as it is. The wrapper is never closed: its owner closes the registry.
 */
export function modelRegistryContract(registry: UpdateModelRegistry): ModelRegistryContract {
  return registry instanceof ModelRegistry ? new EmbeddedModelRegistry(registry) : registry;
}
