/**
 * Opening a model registry file that is not a usable registry: a damaged, foreign or empty registry.sqlite is refused
 * with an error naming the file and the problem (BAD_INPUT: exit 2), never a raw SQLite error, and never silently
 * replaced by an empty registry (as tables.sqlite is, test/tables/store-file.test.ts).
 */
import { spawnSync } from "node:child_process";
import { closeSync, openSync, readdirSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { StoreFileError } from "../../src/data/store-file.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import { tempDir } from "../temp-dir.js";

const BIN = join(import.meta.dirname, "../../bin/freshrec.js");
const clock = new VirtualClock(Date.UTC(2025, 2, 1));

function refusal(workspace: string): StoreFileError {
  try {
    new ModelRegistry(workspace, clock).close();
  } catch (error) {
    expect(error).toBeInstanceOf(StoreFileError);
    expect((error as StoreFileError).store).toBe("registry");
    return error as StoreFileError;
  }
  throw new Error(`the registry in ${workspace} was opened`);
}

async function registryWithAModel(): Promise<{ workspace: string; file: string }> {
  const workspace = tempDir("freshrec-registry-file-");
  const registry = new ModelRegistry(workspace, clock);
  const model = join(registry.modelsDir, "a.gguf");
  writeFileSync(model, "weights");
  registry.makeLive((await registry.register({ kind: "base", filePath: model })).version, "first");
  registry.close();
  return { workspace, file: join(workspace, "registry.sqlite") };
}

describe("ModelRegistry: the registry file", () => {
  it("refuses a file that is not a SQLite database, naming the file and the problem", async () => {
    const { workspace, file } = await registryWithAModel();
    writeFileSync(file, Buffer.from(Array.from({ length: 8192 }, (_, k) => (k * 37 + 11) % 256)));
    const error = refusal(workspace);
    expect(error.code).toBe("BAD_INPUT");
    expect(error.file).toBe(file);
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/not a SQLite database/);
    expect(error.message).toMatch(/backup/);
  });

  it("refuses a registry whose schema page is damaged, naming the file", async () => {
    const { workspace, file } = await registryWithAModel();
    const fd = openSync(file, "r+");
    writeSync(fd, Buffer.alloc(3000, 0x5a), 0, 3000, 100);
    closeSync(fd);
    const error = refusal(workspace);
    expect(error.code).toBe("BAD_INPUT");
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/damaged/);
  });

  it("refuses a 0-byte file instead of starting an empty registry in it (it was a registry that got truncated)", async () => {
    const { workspace, file } = await registryWithAModel();
    writeFileSync(file, "");
    const error = refusal(workspace);
    expect(error.code).toBe("BAD_INPUT");
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/empty \(0 bytes\)/);
    expect(statSync(file).size).toBe(0);
  });

  it("creates a missing registry file whole: never 0 bytes, no temporary file left", () => {
    const workspace = tempDir("freshrec-registry-new-");
    const registry = new ModelRegistry(workspace, clock);
    expect(statSync(join(workspace, "registry.sqlite")).size).toBeGreaterThan(0);
    expect(readdirSync(workspace).filter((f) => !/^registry\.sqlite(-wal|-shm)?$/.test(f))).toEqual([]);
    registry.close();
    new ModelRegistry(workspace, clock).close();
  });

  it("freshrec models list on a damaged registry exits 2 naming the file, without a stack trace", async () => {
    const { workspace, file } = await registryWithAModel();
    writeFileSync(file, Buffer.alloc(8192, 0x42));
    const r = spawnSync(process.execPath, [BIN, "--workspace", workspace, "models", "list"], { encoding: "utf8", timeout: 60_000 });
    expect(r.stderr).toContain(file);
    expect(r.stderr).not.toMatch(/SqliteError|\n\s+at /);
    expect(r.status).toBe(2);
  });
});
