/**
 * `store.url` through the CLI (issue 19): ingest and analyze drift run on a PostgreSQL event store and give what
 * they give on the workspace's DuckDB file; a command not yet on PostgreSQL refuses (exit 2, naming store.url
 * without its password) instead of reading a local events file.
 */
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { runCli } from "./run.js";

const MOVIELENS = join(import.meta.dirname, "../../../shared/datasets/movielens-latest-small");
const database = usePostgresCluster();

function freshrec(workspace: string, args: string[], config?: object): { status: number; stdout: string; stderr: string } {
  const extra: string[] = [];
  if (config) {
    const file = join(workspace, "..", "freshrec.config.json");
    writeFileSync(file, JSON.stringify(config));
    extra.push("--config", file);
  }
  return runCli(["--workspace", workspace, ...extra, ...args], { timeoutMs: 240_000 });
}

describe("store.url: the PostgreSQL event store through the CLI", () => {
  it("ingests MovieLens and analyzes drift as on the embedded store, and refuses commands not yet on PostgreSQL", async () => {
    const url = (await database()).replace("postgres://postgres@", "postgres://postgres:hunter2@");
    const pgWorkspace = join(mkdtempSync(join(tmpdir(), "freshrec-pgcli-")), "ws");
    const duckWorkspace = join(mkdtempSync(join(tmpdir(), "freshrec-duckcli-")), "ws");
    const config = { store: { url } };

    const ingest = ["--json", "ingest", "--dataset", "movielens", "--path", MOVIELENS];
    const onPg = freshrec(pgWorkspace, ingest, config);
    expect(onPg.stderr).toBe("");
    expect(onPg.status).toBe(0);
    const onDuck = freshrec(duckWorkspace, ingest);
    expect(onDuck.status).toBe(0);
    expect(JSON.parse(onPg.stdout)).toEqual(JSON.parse(onDuck.stdout));
    expect(JSON.parse(onPg.stdout).events).toBeGreaterThan(100_000);
    expect(existsSync(join(pgWorkspace, "events.duckdb"))).toBe(false);

    const drift = ["--json", "analyze", "drift", "--min-support", "3"];
    const driftPg = freshrec(pgWorkspace, drift, config);
    expect(driftPg.status).toBe(0);
    const driftDuck = freshrec(duckWorkspace, drift);
    const strip = (out: string) => {
      const { reports: _reports, ...rest } = JSON.parse(out) as { reports: unknown };
      return rest;
    };
    expect(strip(driftPg.stdout)).toEqual(strip(driftDuck.stdout));
    expect((strip(driftPg.stdout) as { pairsCompared: number }).pairsCompared).toBeGreaterThan(0);

    const refused = freshrec(pgWorkspace, ["--json", "refresh"], config);
    expect(refused.status).toBe(2);
    expect(refused.stderr).toMatch(/does not run on the PostgreSQL event store yet \(store\.url = postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:\d+\/t\d+\)/);
    expect(refused.stderr).not.toContain("hunter2");
    expect(existsSync(join(pgWorkspace, "events.duckdb"))).toBe(false);
  }, 600_000);

  it("refuses a store.url that is not a PostgreSQL URL, naming the field", () => {
    const workspace = join(mkdtempSync(join(tmpdir(), "freshrec-pgcli-")), "ws");
    const r = freshrec(workspace, ["--json", "analyze", "drift"], { store: { url: "mysql://x" } });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/store\.url/);
  });
});
