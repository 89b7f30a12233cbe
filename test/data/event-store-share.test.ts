/**
 * Reading an event store through the process that holds it (src/data/event-store-share.ts): every read of the
 * conformance suite through a share gives what the store itself gives, and a share never writes.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EventStore, eventBatchFromEvents, type EventStoreContract } from "../../src/data/event-store.js";
import { EventStoreShare, SharedEventStore, shareFilePath } from "../../src/data/event-store-share.js";
import { eventStoreConformance } from "./event-store-conformance.js";
import { tempDir } from "../temp-dir.js";

/**
 * The contract with every read through a share of the store (this process holds it and shares it) and the appends
 * to the store itself, as a holder writes while readers read.
 */
async function readThroughShare(path: string): Promise<EventStoreContract> {
  const holder = await EventStore.open(path);
  const share = await EventStoreShare.start(holder);
  const reader = SharedEventStore.connect(path, process.pid)!;
  return {
    dialect: reader.dialect,
    location: reader.location,
    query: (sql, params) => reader.query(sql, params),
    queryColumns: (sql, params) => reader.queryColumns(sql, params),
    counts: () => reader.counts(),
    clusters: () => reader.clusters(),
    titledItems: (limit) => reader.titledItems(limit),
    itemClusters: () => reader.itemClusters(),
    getMeta: (key) => reader.getMeta(key),
    checkIdentity: (identity) => reader.checkIdentity(identity),
    append: (request) => holder.append(request),
    close: async () => {
      await share.close();
      holder.close();
    },
  } as EventStoreContract;
}

const newPath = () => join(tempDir("freshrec-share-"), "events.duckdb");

eventStoreConformance("duckdb, read through its holder's share", async () => {
  const path = newPath();
  return () => readThroughShare(path);
});

describe("EventStoreShare", () => {
  it("gives a reader the very values and types the store's own queries give", async () => {
    const holder = await EventStore.open(newPath());
    const share = await EventStoreShare.start(holder);
    try {
      const reader = SharedEventStore.connect(holder.path, process.pid)!;
      const sql = `SELECT 'nan'::DOUBLE AS nan, '-inf'::DOUBLE AS inf, 12345678901234567::BIGINT AS big, 7::INTEGER AS int,
        TIMESTAMP '2025-01-02 03:04:05.678' AS ts, [1, 2]::INTEGER[] AS ints, ['a', NULL] AS strings, NULL AS nothing,
        0.1::FLOAT AS f, true AS yes, $big::BIGINT + 1 AS bound, list_contains($ids::VARCHAR[], 'b') AS member
        FROM range(2)`;
      const params = { big: 9007199254740993n, ids: ["a", "b"] };
      expect(await reader.query(sql, params)).toEqual(await holder.query(sql, params));
      expect(await reader.queryColumns(sql, params)).toEqual(await holder.queryColumns(sql, params));
      const [row] = await reader.query<{ big: bigint; ts: Date; nan: number }>(sql, params);
      expect(row.big).toBe(12345678901234567n);
      expect(row.ts).toEqual(new Date(Date.UTC(2025, 0, 2, 3, 4, 5, 678)));
      expect(row.nan).toBeNaN();
    } finally {
      await share.close();
      holder.close();
    }
  });

  it("answers only SELECTs, one at a time, and only to the token of its share file", async () => {
    const holder = await EventStore.open(newPath());
    const share = await EventStoreShare.start(holder);
    try {
      await holder.append({
        clusters: [{ id: "c", description: "c" }],
        items: [{ id: "i", clusterId: "c" }],
        events: eventBatchFromEvents([{ userId: "u", itemId: "i", ts: Date.UTC(2025, 0, 1) }]),
      });
      const reader = SharedEventStore.connect(holder.path, process.pid)!;
      await expect(reader.query("DELETE FROM events")).rejects.toThrow(/may only SELECT/);
      await expect(reader.query("SELECT 1; DELETE FROM events")).rejects.toThrow(/one statement at a time, this text holds 2/);
      await expect(reader.query("CREATE TABLE x (a INTEGER)")).rejects.toThrow(/may only SELECT/);
      await expect(reader.append()).rejects.toThrow(/appends go to that process/);
      const { port } = JSON.parse(readFileSync(shareFilePath(holder.path), "utf8")) as { port: number };
      const wrong = await fetch(`http://127.0.0.1:${port}/`, {
        method: "POST",
        headers: { authorization: "Bearer not-the-token" },
        body: JSON.stringify({ sql: "SELECT 1", params: {}, shape: "rows" }),
      });
      expect(wrong.status).toBe(401);
      expect((await holder.counts()).events).toBe(1);
      expect(await holder.query("SELECT table_name FROM duckdb_tables() WHERE table_name = 'x'")).toEqual([]);
    } finally {
      await share.close();
      holder.close();
    }
  });

  it("is found only under its holder's PID, and its file goes when it closes", async () => {
    const holder = await EventStore.open(newPath());
    const share = await EventStoreShare.start(holder);
    try {
      expect(existsSync(shareFilePath(holder.path))).toBe(true);
      // A share file whose process is not the one holding the store (a killed server's, say) is not used.
      expect(SharedEventStore.connect(holder.path, process.pid + 1)).toBeNull();
      expect(SharedEventStore.connect(holder.path, process.pid)).not.toBeNull();
    } finally {
      await share.close();
      holder.close();
    }
    expect(existsSync(shareFilePath(holder.path))).toBe(false);
    expect(SharedEventStore.connect(holder.path, process.pid)).toBeNull();
  });
});

describe("EventStore.openReadOnly", () => {
  it("opens a store without creating one, and refuses to append", async () => {
    const path = newPath();
    await expect(EventStore.openReadOnly(path)).rejects.toThrow(`there is no event store at ${path}: run freshrec ingest or freshrec synth first`);
    expect(existsSync(path)).toBe(false);
    (await EventStore.open(path)).close();
    const reader = await EventStore.openReadOnly(path);
    const second = await EventStore.openReadOnly(path);
    try {
      expect((await reader.counts()).events).toBe(0);
      expect((await second.counts()).events).toBe(0);
      await expect(reader.append({ clusters: [{ id: "c", description: "c" }] })).rejects.toThrow(/read-?only database/);
    } finally {
      second.close();
      reader.close();
    }
  });
});
