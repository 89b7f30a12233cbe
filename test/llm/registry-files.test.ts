/**
 * The registry's model files belong to its workspace: a file inside the workspace is recorded relative to it, so a
 * copied workspace uses its own copies (it used the original's, by absolute path); a file outside it (a user's GGUF)
 * stays absolute and is reported as external; registries written with absolute paths are migrated when opened.
 * Opening a version for the update loop (refresh, serve --schedule, fine-tune) checks the file against the sha256
 * recorded at registration.
 */
import Database from "better-sqlite3";
import { createHash } from "node:crypto";
import { cpSync, mkdirSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import type { EventStore } from "../../src/data/event-store.js";
import { FreshrecError } from "../../src/domain/errors.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import type { TableStoreContract } from "../../src/tables/index.js";
import { finetuneRegistryOf, type LoopSettings, UpdateLoop } from "../../src/update/loop.js";
import { tempDir } from "../temp-dir.js";

const clock = new VirtualClock(Date.parse("2025-01-01T00:00:00Z"));

describe("model registry: where model files are", () => {
  it("a copied workspace resolves its own model files, not the original's", async () => {
    const root = tempDir("freshrec-registry-copy-");
    const a = join(root, "a");
    const registry = new ModelRegistry(a, clock);
    mkdirSync(join(registry.modelsDir, "m000001"), { recursive: true });
    writeFileSync(join(registry.modelsDir, "m000001", "model.gguf"), "weights of a");
    const base = await registry.register({ kind: "base", filePath: join(registry.modelsDir, "m000001", "model.gguf") });
    registry.makeLive(base.version, "first");
    expect(base.filePath).toBe(join(a, "models", "m000001", "model.gguf"));
    registry.close();

    const b = join(root, "b");
    cpSync(a, b, { recursive: true });
    rmSync(join(a, "models"), { recursive: true, force: true });
    const copy = new ModelRegistry(b, clock);
    expect(copy.live()?.filePath).toBe(join(b, "models", "m000001", "model.gguf"));
    expect(copy.get("m000001")?.external).toBe(false);
    expect(base.external).toBe(false);
    copy.close();
  });

  it("a file outside the workspace stays absolute and is reported as external", async () => {
    const root = tempDir("freshrec-registry-external-");
    const userModel = join(root, "downloads", "user.gguf");
    mkdirSync(join(root, "downloads"), { recursive: true });
    writeFileSync(userModel, "a user's gguf");
    const registry = new ModelRegistry(join(root, "ws"), clock);
    const v = await registry.register({ kind: "base", filePath: userModel });
    expect(v.filePath).toBe(userModel);
    expect(v.external).toBe(true);
    expect(registry.get(v.version)?.filePath).toBe(userModel);
    registry.close();
  });

  it("migrates a registry written with absolute paths: rows inside the workspace become relative", () => {
    const root = tempDir("freshrec-registry-migrate-");
    const a = join(root, "a");
    mkdirSync(join(a, "models"), { recursive: true });
    writeFileSync(join(a, "models", "base.gguf"), "base");
    const userModel = join(root, "user.gguf");
    writeFileSync(userModel, "user");
    writeLegacyRegistry(a, [
      { version: "m000001", filePath: join(a, "models", "base.gguf") },
      { version: "m000002", filePath: userModel },
    ]);
    // Copied before any newer freshrec opened it, then the original's models deleted.
    const b = join(root, "b");
    cpSync(a, b, { recursive: true });
    rmSync(join(a, "models"), { recursive: true, force: true });

    const copy = new ModelRegistry(b, clock);
    expect(copy.get("m000001")).toMatchObject({ filePath: join(b, "models", "base.gguf"), external: false });
    expect(copy.get("m000002")).toMatchObject({ filePath: userModel, external: true });
    copy.close();
    // What is stored: relative inside the workspace, absolute outside it.
    const db = new Database(join(b, "registry.sqlite"), { readonly: true });
    expect(db.prepare("SELECT file_path FROM models ORDER BY seq").pluck().all()).toEqual(["models/base.gguf", userModel]);
    db.close();
  });
});

const sha = (text: string) => createHash("sha256").update(text).digest("hex");

describe("model registry: the recorded sha256 is checked when a version is opened", () => {
  async function liveModelIn(prefix: string) {
    const ws = tempDir(prefix);
    const registry = new ModelRegistry(ws, clock);
    const file = join(registry.modelsDir, "live.gguf");
    writeFileSync(file, "the registered weights");
    const v = await registry.register({ kind: "base", filePath: file });
    registry.makeLive(v.version, "first");
    return { registry, file, version: v.version };
  }

  it("modelFile gives the file while it holds what was registered, and refuses it, naming the file and both hashes, once its bytes change", async () => {
    const { registry, file, version } = await liveModelIn("freshrec-registry-sha-");
    expect(registry.modelFile(version)).toBe(file);
    // One byte different, same length. The hash is kept per file, modification time and size, so the time is moved
    // on explicitly: a write within the file system's timestamp resolution would not move it.
    writeFileSync(file, "the registered weightz");
    utimesSync(file, new Date(Date.now() + 5000), new Date(Date.now() + 5000));
    let refusal: unknown = null;
    try {
      registry.modelFile(version);
    } catch (error) {
      refusal = error;
    }
    expect(refusal).toBeInstanceOf(FreshrecError);
    const message = (refusal as Error).message;
    expect(message).toContain(file);
    expect(message).toContain(version);
    expect(message).toContain(sha("the registered weights"));
    expect(message).toContain(sha("the registered weightz"));
    // A missing file is refused too, naming it.
    rmSync(file);
    expect(() => registry.modelFile(version)).toThrow(file);
    registry.close();
  });

  it("the update loop refuses to open a live model whose file changed (refresh, serve --schedule) or to fine-tune from it", async () => {
    const { registry, file } = await liveModelIn("freshrec-registry-sha-loop-");
    writeFileSync(file, "other weights, longer than the registered ones");
    let opened = 0;
    const loop = new UpdateLoop({
      events: {} as EventStore,
      tables: {} as TableStoreContract,
      registry,
      clusters: [],
      settings: { rag: {} } as LoopSettings,
      openModel: async () => {
        opened++;
        throw new Error("the model was opened");
      },
    });
    await expect(loop.liveModel()).rejects.toThrow(file);
    expect(opened).toBe(0);
    await expect(finetuneRegistryOf(registry).live()).rejects.toThrow(file);
    registry.close();
  });
});

/** A registry as freshrec wrote it before paths were relative (schema 1, absolute file paths). */
function writeLegacyRegistry(workspace: string, rows: { version: string; filePath: string }[]): void {
  const db = new Database(join(workspace, "registry.sqlite"));
  db.pragma("journal_mode = WAL");
  db.exec(`
    CREATE TABLE models (
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
    CREATE UNIQUE INDEX one_live ON models(status) WHERE status = 'live';
    CREATE TABLE status_changes (
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      version TEXT NOT NULL REFERENCES models(version),
      from_status TEXT, to_status TEXT NOT NULL, reason TEXT NOT NULL, at INTEGER NOT NULL
    );
  `);
  const insert = db.prepare("INSERT INTO models (version, kind, status, file_path, sha256, created_at) VALUES (?, 'base', 'candidate', ?, ?, 0)");
  for (const row of rows) insert.run(row.version, row.filePath, "0".repeat(64));
  db.pragma("user_version = 1");
  db.close();
}
