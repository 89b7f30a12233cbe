/**
 * Opening a table store file that is not a usable store: a damaged, foreign or empty file is refused with an error
 * naming the file and the problem (BAD_INPUT: exit 2), never a raw SQLite error, and never silently replaced by an
 * empty store.
 */
import { closeSync, openSync, readdirSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { FreshrecError } from "../../src/domain/errors.js";
import { StoreFileError } from "../../src/data/store-file.js";
import { SqliteTableStore, tableStorePath } from "../../src/tables/sqlite-store.js";
import { STATS, clusterNames, tableRows } from "./fixtures/rows.js";
import { tempDir } from "../temp-dir.js";

const dir = tempDir("freshrec-store-file-");
let files = 0;
const nextWorkspace = () => join(dir, `ws-${++files}`);
const clock = new VirtualClock(Date.UTC(2025, 2, 1));

function refusal(file: string): StoreFileError {
  try {
    SqliteTableStore.open(file, clock).close();
  } catch (error) {
    expect(error).toBeInstanceOf(StoreFileError);
    return error as StoreFileError;
  }
  throw new Error(`${file} was opened`);
}

describe("SqliteTableStore: the store file", () => {
  it("refuses a file that is not a SQLite database, naming the file and the problem", () => {
    const file = tableStorePath(nextWorkspace());
    SqliteTableStore.open(file, clock).close();
    writeFileSync(file, Buffer.from(Array.from({ length: 8192 }, (_, k) => (k * 37 + 11) % 256)));
    const error = refusal(file);
    expect(error).toBeInstanceOf(FreshrecError);
    expect(error.code).toBe("BAD_INPUT");
    expect(error.file).toBe(file);
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/not a SQLite database/);
    expect(error.message).toMatch(/backup/);
  });

  it("refuses a store whose schema page is damaged, naming the file", () => {
    const file = tableStorePath(nextWorkspace());
    const store = SqliteTableStore.open(file, clock);
    const b = store.beginBuild({ modelVersion: "m000001", templateHash: "t" });
    b.append(tableRows(clusterNames(6), 0));
    store.publish(b.finish(STATS).version);
    store.close();
    // Page 1 after the 100-byte file header holds the schema: SQLite opens the file, then fails to read it.
    const fd = openSync(file, "r+");
    writeSync(fd, Buffer.alloc(3000, 0x5a), 0, 3000, 100);
    closeSync(fd);
    const error = refusal(file);
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/damaged/);
  });

  it("refuses a 0-byte file instead of starting an empty store in it (it was a store that got truncated)", () => {
    const file = tableStorePath(nextWorkspace());
    SqliteTableStore.open(file, clock).close();
    writeFileSync(file, "");
    const error = refusal(file);
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/empty \(0 bytes\)/);
    expect(statSync(file).size).toBe(0);
  });

  it("creates a missing store file whole: never 0 bytes, no temporary file left", () => {
    const workspace = nextWorkspace();
    const file = tableStorePath(workspace);
    const store = SqliteTableStore.open(file, clock);
    expect(statSync(file).size).toBeGreaterThan(0);
    expect(readdirSync(workspace).filter((f) => !/^tables\.sqlite(-wal|-shm)?$/.test(f))).toEqual([]);
    store.close();
    // And a created store opens again as a store.
    SqliteTableStore.open(file, clock).close();
  });
});
