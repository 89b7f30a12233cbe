/**
 * The schedule store contract on both adapters (the workspace's SQLite file, PostgreSQL on a real throwaway server),
 * and what each adapter does its own way: SQLite refuses a newer schema and takes over the lease of a process that
 * is gone; PostgreSQL frees the lease when the driver's session ends and tells a driver whose session dropped.
 */
import { spawnSync } from "node:child_process";
import { hostname } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { PostgresScheduleStore, ScheduleDriverHeldError, SqliteScheduleStore } from "../../../src/update/schedule/index.js";
import { usePostgresCluster } from "../../data/postgres-cluster.js";
import { scheduleStoreConformance } from "./store-conformance.js";
import { tempDir } from "../../temp-dir.js";

const database = usePostgresCluster();
const dir = tempDir("freshrec-schedule-store-");
let files = 0;

scheduleStoreConformance("sqlite file", async () => {
  const file = join(dir, `nested/${files++}/schedule.sqlite`);
  return async () => SqliteScheduleStore.open(file);
});
scheduleStoreConformance("postgres", async () => {
  const url = await database();
  return () => PostgresScheduleStore.open(url);
});

describe("sqlite schedule store", () => {
  it("refuses a file written by a newer schema, naming the file", async () => {
    const path = join(dir, "newer.sqlite");
    await SqliteScheduleStore.open(path).close();
    // A newer freshrec having migrated the file.
    const raw = new Database(path);
    raw.pragma("user_version = 99");
    raw.close();
    expect(() => SqliteScheduleStore.open(path)).toThrow(/newer.sqlite.*schema version 99/);
  });

  it("takes over the lease of a process that is gone, not of one that runs", async () => {
    const path = join(dir, "lease.sqlite");
    const store = SqliteScheduleStore.open(path);
    try {
      // A process that has exited: its pid is free (reused pids aside, which the refusal would name).
      const gone = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
      const dead = { host: hostname(), pid: Number(gone.stdout), since: 1 };
      const raw = new Database(path);
      raw.prepare("INSERT INTO schedule_driver (slot, host, pid, since) VALUES (1, ?, ?, ?)").run(dead.host, dead.pid, dead.since);
      raw.close();
      expect(await store.driver()).toBeNull();
      const lease = await store.claimDriver({ host: hostname(), pid: process.pid, since: 2 });
      expect(await store.driver()).toEqual({ host: hostname(), pid: process.pid, since: 2 });
      // The lease's own record replaced behind its back (a copied workspace's process took it): the check says so.
      const other = new Database(path);
      other.prepare("UPDATE schedule_driver SET since = 3").run();
      other.close();
      await expect(lease.check()).rejects.toThrow(/no longer drives the schedule/);
      await lease.release();
    } finally {
      await store.close();
    }
  });

  it("an in-memory store is private to its handle", async () => {
    const a = SqliteScheduleStore.open(":memory:");
    const b = SqliteScheduleStore.open(":memory:");
    await a.begin({ job: "refresh", due: 1, trigger: "scheduled", startedAt: 1 });
    expect(await b.runs()).toEqual([]);
    await a.close();
    await b.close();
  });
});

describe("postgres schedule store", () => {
  it("a driver whose session ends frees the schedule at once; its own check then fails", async () => {
    const url = await database();
    const [a, b] = [await PostgresScheduleStore.open(url), await PostgresScheduleStore.open(url)];
    try {
      const lease = await a.claimDriver({ host: "worker-a", pid: 11, since: 1 });
      await expect(b.claimDriver({ host: "worker-b", pid: 22, since: 2 })).rejects.toBeInstanceOf(ScheduleDriverHeldError);
      // The worker's host dies: its session is gone (terminated here from outside, as the server does on a lost client).
      const admin = new pg.Client({ connectionString: url });
      await admin.connect();
      try {
        const { rows } = await admin.query("SELECT backend_pid FROM schedule_driver");
        expect(rows).toHaveLength(1);
        await admin.query("SELECT pg_terminate_backend($1)", [rows[0].backend_pid]);
      } finally {
        await admin.end();
      }
      expect(await b.driver()).toBeNull();
      const taken = await b.claimDriver({ host: "worker-b", pid: 22, since: 2 });
      expect(await a.driver()).toEqual({ host: "worker-b", pid: 22, since: 2 });
      await expect(lease.check()).rejects.toThrow(/lost the schedule's driver lock/);
      await lease.release();
      // The lost lease's release took nothing from the new driver.
      expect(await b.driver()).toEqual({ host: "worker-b", pid: 22, since: 2 });
      await taken.release();
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("several processes opening a new database at once create the schema once", async () => {
    const url = await database();
    const stores = await Promise.all(Array.from({ length: 4 }, () => PostgresScheduleStore.open(url)));
    await stores[0].begin({ job: "refresh", due: 1, trigger: "scheduled", startedAt: 1 });
    expect(await stores[3].runs()).toHaveLength(1);
    for (const store of stores) await store.close();
  });
});
