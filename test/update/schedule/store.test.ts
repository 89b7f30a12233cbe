/**
 * The schedule store contract, written once so any further adapter runs the same suite (as the other stores'
 * conformance suites do). SQLite runs it in memory and on a file.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import {
  ScheduleStoreError,
  SqliteScheduleStore,
  ZERO_COUNTERS,
  type JobState,
  type ScheduleStore,
} from "../../../src/update/schedule/index.js";

function describeScheduleStore(adapter: string, open: () => ScheduleStore) {
  describe(`schedule store conformance: ${adapter}`, () => {
    it("logs a run at its start and completes it once at its end", () => {
      const store = open();
      const id = store.begin({ job: "refresh", due: 1000, trigger: "scheduled", startedAt: 1005 });
      expect(store.run(id)).toEqual({
        id,
        job: "refresh",
        due: 1000,
        trigger: "scheduled",
        startedAt: 1005,
        endedAt: null,
        status: "running",
        durationSeconds: null,
        cost: null,
        detail: null,
        error: null,
      });
      store.finish(id, {
        endedAt: 2000,
        status: "succeeded",
        durationSeconds: 1.5,
        cost: { promptsScored: 90_000, cpuSeconds: 3.25 },
        detail: { tableVersion: "t-7", nested: { pairs: [1, 2] } },
        error: null,
      });
      expect(store.run(id)).toMatchObject({
        endedAt: 2000,
        status: "succeeded",
        durationSeconds: 1.5,
        cost: { promptsScored: 90_000, cpuSeconds: 3.25 },
        detail: { tableVersion: "t-7", nested: { pairs: [1, 2] } },
      });
      expect(store.run(id + 1000)).toBeUndefined();
      expect(() => store.finish(id + 1000, { endedAt: 1, status: "failed", durationSeconds: 0, cost: null, detail: null, error: "x" })).toThrow(
        ScheduleStoreError,
      );
      store.close();
    });

    it("keeps the run even when the job's detail is not JSON", () => {
      const store = open();
      const id = store.begin({ job: "j", due: 1, trigger: "scheduled", startedAt: 1 });
      store.finish(id, { endedAt: 2, status: "succeeded", durationSeconds: 0, cost: null, detail: { big: 1n }, error: null });
      expect(store.run(id)?.detail).toMatchObject({ unserialisable: expect.any(String) });
      store.close();
    });

    it("queries runs by job, status and due window; limit keeps the newest, returned oldest first", () => {
      const store = open();
      for (let day = 1; day <= 5; day++) {
        for (const job of ["finetune", "refresh"]) {
          const id = store.begin({ job, due: day * 100, trigger: "scheduled", startedAt: day * 100 + (job === "refresh" ? 1 : 0) });
          if (day < 5) store.finish(id, { endedAt: day * 100 + 50, status: "succeeded", durationSeconds: 0, cost: null, detail: null, error: null });
        }
      }
      expect(store.runs()).toHaveLength(10);
      expect(store.runs({ job: "refresh" }).map((r) => r.due)).toEqual([100, 200, 300, 400, 500]);
      expect(store.runs({ job: "refresh", limit: 2 }).map((r) => r.due)).toEqual([400, 500]);
      expect(store.runs({ dueFrom: 200, dueTo: 400 }).map((r) => `${r.job}@${r.due}`)).toEqual([
        "finetune@200",
        "refresh@200",
        "finetune@300",
        "refresh@300",
      ]);
      expect(store.runs({ status: "running" }).map((r) => r.job)).toEqual(["finetune", "refresh"]);
      store.close();
    });

    it("saves and replaces job state", () => {
      const store = open();
      const state: JobState = {
        job: "finetune",
        cursor: 123,
        paused: true,
        pauseReason: "halted",
        pausedAt: 120,
        consecutiveFailures: 2,
        counters: { ...ZERO_COUNTERS, runs: 4, halted: 1, missed: 3 },
        lastRunId: 9,
      };
      expect(store.jobState("finetune")).toBeUndefined();
      store.saveJobState(state);
      expect(store.jobState("finetune")).toEqual(state);
      store.saveJobState({ ...state, paused: false, pauseReason: null, pausedAt: null, cursor: 456 });
      expect(store.jobState("finetune")).toMatchObject({ paused: false, pauseReason: null, cursor: 456 });
      store.saveJobState({ ...state, job: "refresh" });
      expect(store.jobStates().map((s) => s.job)).toEqual(["finetune", "refresh"]);
      store.close();
    });

    it("a transaction that throws leaves nothing behind", () => {
      const store = open();
      expect(() =>
        store.transaction(() => {
          store.begin({ job: "j", due: 1, trigger: "scheduled", startedAt: 1 });
          store.saveJobState({
            job: "j",
            cursor: 1,
            paused: false,
            pauseReason: null,
            pausedAt: null,
            consecutiveFailures: 0,
            counters: ZERO_COUNTERS,
            lastRunId: null,
          });
          throw new Error("crash between the two writes");
        }),
      ).toThrow("crash");
      expect(store.runs()).toEqual([]);
      expect(store.jobState("j")).toBeUndefined();
      expect(store.transaction(() => 42)).toBe(42);
      store.close();
    });
  });
}

const dir = mkdtempSync(join(tmpdir(), "freshrec-schedule-store-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;

describeScheduleStore("sqlite :memory:", () => SqliteScheduleStore.open(":memory:"));
describeScheduleStore("sqlite file", () => SqliteScheduleStore.open(join(dir, `nested/${files++}/schedule.sqlite`)));

describe("sqlite schedule store", () => {
  it("refuses a file written by a newer schema, naming the file", () => {
    const path = join(dir, "newer.sqlite");
    SqliteScheduleStore.open(path).close();
    // A newer freshrec having migrated the file.
    const raw = new Database(path);
    raw.pragma("user_version = 99");
    raw.close();
    expect(() => SqliteScheduleStore.open(path)).toThrow(/newer.sqlite.*schema version 99/);
  });
});
