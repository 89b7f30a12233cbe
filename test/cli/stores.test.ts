/**
 * Damaged workspace stores through the CLI: a command that opens a damaged table store exits 2 naming the file
 * (no raw SQLite error, no stack trace), and `freshrec doctor` checks every store of the workspace (SQLite quick_check,
 * the DuckDB event store read through) and fails naming the damaged one, where the backend checks alone would pass.
 */
import { closeSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";
import { intakeBufferPath } from "../../src/data/intake-buffer.js";
import { SystemClock, VirtualClock } from "../../src/domain/clock.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import { SqliteTableStore, tableStorePath } from "../../src/tables/sqlite-store.js";
import { CLUSTERS } from "../llm/fixtures.js";
import { trainTinyModel } from "../llm/tiny-model.js";
import { STATS, tableRows } from "../tables/fixtures/rows.js";
import { runCli } from "./run.js";
import { tempDir } from "../temp-dir.js";

const ws = tempDir("freshrec-stores-");

const freshrec = (args: string[]) => runCli(["--workspace", ws, ...args], { timeoutMs: 120_000 });

interface Report {
  passed: boolean;
  checks: { name: string; ok: boolean; detail: string }[];
}

function doctor(): { status: number; report: Report; stdout: string } {
  const r = freshrec(["--json", "doctor"]);
  return { status: r.status, report: JSON.parse(r.stdout) as Report, stdout: r.stdout };
}

/** Runs `body` with `file` damaged by `damage`, then puts the file's bytes back. */
function whileDamaged(file: string, damage: (file: string) => void, body: () => void): void {
  const original = readFileSync(file);
  try {
    damage(file);
    body();
  } finally {
    writeFileSync(file, original);
  }
}

/** Overwrites everything after the first `keep` bytes (the file header and the schema page survive). */
const overwriteAfter = (keep: number) => (file: string) => {
  const size = statSync(file).size;
  const fd = openSync(file, "r+");
  writeSync(fd, Buffer.alloc(size - keep, 0xa5), 0, size - keep, keep);
  closeSync(fd);
};

beforeAll(async () => {
  // A workspace whose backend checks pass (a live embedded model), with an event store and a published table.
  const model = await trainTinyModel(ws);
  const registry = new ModelRegistry(ws, new SystemClock());
  const base = await registry.register({ kind: "base", filePath: model, reason: "test" });
  registry.makeLive(base.version, "test");
  registry.close();
  const events = await EventStore.open(join(ws, "events.duckdb"));
  await events.append({
    clusters: CLUSTERS,
    items: CLUSTERS.map((c) => ({ id: `item-${c.id}`, clusterId: c.id })),
    events: eventBatchFromEvents(Array.from({ length: 5000 }, (_, k) => ({ userId: `u${k % 300}`, itemId: `item-${CLUSTERS[k % CLUSTERS.length].id}`, ts: Date.UTC(2025, 0, 1) + k * 60_000 }))),
  });
  events.close();
  const tables = SqliteTableStore.open(tableStorePath(ws), new VirtualClock(Date.UTC(2025, 1, 1)));
  const build = tables.beginBuild({ modelVersion: base.version, templateHash: "t" });
  build.append(tableRows(CLUSTERS.map((c) => c.id), 0));
  tables.publish(build.finish(STATS).version);
  tables.close();
}, 120_000);

describe("damaged stores", () => {
  it("doctor passes a healthy workspace with one check per store", () => {
    const { status, report } = doctor();
    expect(report.checks.filter((c) => !c.ok)).toEqual([]);
    expect(status).toBe(0);
    expect(report.checks.map((c) => c.name)).toEqual(expect.arrayContaining(["events.duckdb", "tables.sqlite", "registry.sqlite"]));
  });

  it("a command on a damaged tables.sqlite exits 2 naming the file and the problem, without a stack trace", () => {
    const file = tableStorePath(ws);
    whileDamaged(file, (f) => writeFileSync(f, Buffer.alloc(8192, 0x42)), () => {
      const r = freshrec(["tables", "list"]);
      expect(r.status).toBe(2);
      expect(r.stderr).toContain(file);
      expect(r.stderr).toMatch(/not a SQLite database/);
      expect(r.stderr).not.toMatch(/SqliteError|\n\s+at /);
      const json = freshrec(["--json", "tables", "list"]);
      expect(JSON.parse(json.stdout).error).toMatchObject({ code: "BAD_INPUT", message: expect.stringContaining(file) });
    });
  });

  it("doctor fails (exit 1) naming tables.sqlite when its pages are damaged", () => {
    whileDamaged(tableStorePath(ws), overwriteAfter(4096), () => {
      const { status, report } = doctor();
      expect(status).toBe(1);
      expect(report.passed).toBe(false);
      expect(report.checks.find((c) => c.name === "tables.sqlite")).toMatchObject({ ok: false, detail: expect.stringContaining(tableStorePath(ws)) });
    });
  });

  it("doctor fails naming a 0-byte tables.sqlite (and leaves it as it is)", () => {
    whileDamaged(tableStorePath(ws), (f) => writeFileSync(f, ""), () => {
      const { status, report } = doctor();
      expect(status).toBe(1);
      expect(report.checks.find((c) => c.name === "tables.sqlite")).toMatchObject({ ok: false, detail: expect.stringMatching(/empty \(0 bytes\)/) });
      expect(statSync(tableStorePath(ws)).size).toBe(0);
    });
  });

  it("doctor reads the intake buffer beside events.duckdb, and fails naming it when its blocks are damaged", async () => {
    const events = await EventStore.open(join(ws, "events.duckdb"));
    await events.intakeBuffer();
    events.close();
    const file = intakeBufferPath(join(ws, "events.duckdb"))!;
    const healthy = doctor();
    expect(healthy.status, healthy.stdout).toBe(0);
    whileDamaged(file, overwriteAfter(12_288), () => {
      const { status, report } = doctor();
      expect(status).toBe(1);
      expect(report.checks.find((c) => c.name === "events.duckdb")).toMatchObject({ ok: false, detail: expect.stringContaining(file) });
    });
    rmSync(file);
  });

  it("doctor fails (exit 1) naming events.duckdb when its blocks are damaged", () => {
    const file = join(ws, "events.duckdb");
    whileDamaged(file, overwriteAfter(12_288), () => {
      const { status, report } = doctor();
      expect(status).toBe(1);
      expect(report.checks.find((c) => c.name === "events.duckdb")).toMatchObject({ ok: false, detail: expect.stringContaining(file) });
    });
  });
});
