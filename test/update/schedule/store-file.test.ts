/**
 * Opening a schedule store file that is not a usable store: a damaged, foreign or empty schedule.sqlite is refused
 * with an error naming the file and the problem (BAD_INPUT: exit 2), never a SQLite error passed on, and never
 * silently replaced by an empty store (as tables.sqlite is, test/tables/store-file.test.ts).
 */
import { spawnSync } from "node:child_process";
import { closeSync, openSync, readdirSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { StoreFileError } from "../../../src/data/store-file.js";
import { SqliteScheduleStore, ZERO_COUNTERS, scheduleStorePath } from "../../../src/update/schedule/index.js";
import { tempDir } from "../../temp-dir.js";

const BIN = join(import.meta.dirname, "../../../bin/freshrec.js");
const dir = tempDir("freshrec-schedule-file-");
let workspaces = 0;
const nextWorkspace = () => join(dir, `ws-${++workspaces}`);

function refusal(file: string): StoreFileError {
  try {
    SqliteScheduleStore.open(file).close();
  } catch (error) {
    expect(error).toBeInstanceOf(StoreFileError);
    expect((error as StoreFileError).store).toBe("schedule");
    return error as StoreFileError;
  }
  throw new Error(`${file} was opened`);
}

/** A schedule store with a job's state and one run in it. */
async function storeWithState(): Promise<{ workspace: string; file: string }> {
  const workspace = nextWorkspace();
  const file = scheduleStorePath(workspace);
  const store = SqliteScheduleStore.open(file);
  const id = await store.begin({ job: "refresh", due: 1000, trigger: "scheduled", startedAt: 1000 });
  await store.finish(id, { endedAt: 2000, status: "succeeded", durationSeconds: 1, cost: null, detail: null, error: null });
  await store.saveJobState({ job: "refresh", cursor: 2000, paused: false, pauseReason: null, pausedAt: null, consecutiveFailures: 0, counters: ZERO_COUNTERS, lastRunId: id });
  await store.close();
  return { workspace, file };
}

describe("SqliteScheduleStore: the store file", () => {
  it("refuses a file that is not a SQLite database, naming the file and the problem", async () => {
    const { file } = await storeWithState();
    writeFileSync(file, Buffer.from(Array.from({ length: 8192 }, (_, k) => (k * 37 + 11) % 256)));
    const error = refusal(file);
    expect(error.code).toBe("BAD_INPUT");
    expect(error.file).toBe(file);
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/not a SQLite database/);
    expect(error.message).toMatch(/backup/);
  });

  it("refuses a store whose schema page is damaged, naming the file", async () => {
    const { file } = await storeWithState();
    const fd = openSync(file, "r+");
    writeSync(fd, Buffer.alloc(3000, 0x5a), 0, 3000, 100);
    closeSync(fd);
    const error = refusal(file);
    expect(error.code).toBe("BAD_INPUT");
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/damaged/);
  });

  it("refuses a 0-byte file instead of starting an empty store in it (it was a store that got truncated)", async () => {
    const { file } = await storeWithState();
    writeFileSync(file, "");
    const error = refusal(file);
    expect(error.code).toBe("BAD_INPUT");
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/empty \(0 bytes\)/);
    expect(statSync(file).size).toBe(0);
  });

  it("creates a missing store file whole: never 0 bytes, no temporary file left", async () => {
    const workspace = nextWorkspace();
    const file = scheduleStorePath(workspace);
    const store = SqliteScheduleStore.open(file);
    expect(statSync(file).size).toBeGreaterThan(0);
    expect(readdirSync(workspace).filter((f) => !/^schedule\.sqlite(-wal|-shm)?$/.test(f))).toEqual([]);
    await store.close();
    await SqliteScheduleStore.open(file).close();
  });

  it("freshrec schedule status on a damaged store exits 2 naming the file, without a stack trace", async () => {
    const { workspace, file } = await storeWithState();
    writeFileSync(file, Buffer.alloc(8192, 0x42));
    const r = spawnSync(process.execPath, [BIN, "--workspace", workspace, "schedule", "status"], { encoding: "utf8", timeout: 60_000 });
    expect(r.stderr).toContain(file);
    expect(r.stderr).not.toMatch(/SqliteError|\n\s+at /);
    expect(r.status).toBe(2);
  });
});
