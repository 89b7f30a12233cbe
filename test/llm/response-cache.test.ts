/**
 * The LLM response cache opens through the workspace's one store-file helper: a missing file is created, answers
 * survive a reopen, and an empty, foreign or damaged file is refused naming the file (BAD_INPUT: exit 2), never a raw
 * SQLite error.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { StoreFileError } from "../../src/data/store-file.js";
import { exitCodeFor } from "../../src/domain/errors.js";
import { SqliteResponseCache } from "../../src/llm/backends/response-cache.js";
import { tempDir } from "../temp-dir.js";

const dir = tempDir("freshrec-response-cache-");

function refusal(file: string): StoreFileError {
  try {
    void SqliteResponseCache.open(file).close();
  } catch (error) {
    expect(error).toBeInstanceOf(StoreFileError);
    return error as StoreFileError;
  }
  throw new Error(`${file} was opened`);
}

describe("SqliteResponseCache.open", () => {
  it("creates a missing file (and its folder) and keeps answers across a reopen", async () => {
    const file = join(dir, "nested", "llm-cache.sqlite");
    const cache = SqliteResponseCache.open(file);
    await cache.put("k", { answer: 1 });
    await cache.close();
    const again = SqliteResponseCache.open(file);
    expect(await again.get<{ answer: number }>("k")).toEqual({ answer: 1 });
    await again.close();
  });

  it("refuses a file that is not a SQLite database, naming it, with exit code 2", () => {
    const file = join(dir, "foreign.sqlite");
    writeFileSync(file, "not a database, just text that is long enough to have a header ".repeat(20));
    const error = refusal(file);
    expect(error.message).toContain(file);
    expect(error.message).toContain("llm cache");
    expect(exitCodeFor(error)).toBe(2);
  });

  it("refuses an empty file as truncated", () => {
    const file = join(dir, "empty.sqlite");
    writeFileSync(file, "");
    expect(refusal(file).message).toMatch(/empty \(0 bytes\)/);
  });
});
