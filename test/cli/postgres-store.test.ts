/**
 * `store.url` through the CLI (issue 19): ingest and analyze drift run on a PostgreSQL event store and give what
 * they give on the workspace's DuckDB file; `serve` replicas, `tables` and `models` run on the database's tables and
 * registry (the update commands: ./postgres-update.test.ts; the schedule: ./postgres-schedule.test.ts; demo and
 * experiment simulate: ./postgres-demo.test.ts; schedule run --simulate: ./postgres-schedule-simulate.test.ts); a
 * database that cannot be reached is named, without its password.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { PostgresModelRegistry } from "../../src/llm/postgres-registry.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { seedPostgres, servingWorkspace, type ServingWorkspace } from "../serving/fixtures.js";
import { runCli, serveCli, servingLive } from "./run.js";
import { tempDir } from "../temp-dir.js";

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
  it("ingests MovieLens and analyzes drift as on the embedded store, and reads the database's registry for experiment simulate", async () => {
    const url = (await database()).replace("postgres://postgres@", "postgres://postgres:hunter2@");
    const pgWorkspace = join(tempDir("freshrec-pgcli-"), "ws");
    const duckWorkspace = join(tempDir("freshrec-duckcli-"), "ws");
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

    // experiment simulate reads the database's registry: without a live model there it says what to run first.
    const refused = freshrec(pgWorkspace, ["--json", "experiment", "simulate", "--days", "1"], config);
    expect(refused.status).toBe(2);
    expect(refused.stderr).toMatch(/no live model: run freshrec pretrain/);
    expect(refused.stderr).not.toContain("hunter2");
    expect(existsSync(join(pgWorkspace, "events.duckdb"))).toBe(false);
  }, 600_000);

  it("simulates the schedule only from the deployment's live model (with the database down: names it, copies nothing), and registers a configured model in the database, never in the workspace", () => {
    const workspace = join(tempDir("freshrec-pgcli-"), "ws");
    const url = "postgres://me:hunter2@127.0.0.1:1/deployment";
    // A simulation runs on a copy of the deployment (./postgres-schedule-simulate.test.ts): with the database down it
    // says which database it could not read, and makes no copy.
    const simulated = freshrec(workspace, ["--json", "schedule", "run", "--simulate", "--from", "2025-01-01"], { store: { url } });
    expect(simulated.status, simulated.stderr).not.toBe(0);
    expect(simulated.stderr).toMatch(/cannot open the model registry postgres:\/\/me:\*\*\*@127\.0\.0\.1:1\/deployment.*the database of store\.url/);
    expect(simulated.stderr).not.toContain("hunter2");
    expect(existsSync(join(workspace, "simulations"))).toBe(false);
    // A configured model's base version goes to the deployment's registry (./backend-loop.test.ts registers one there):
    // with the database down, pretrain says which database it could not reach and writes nothing to the workspace.
    const pretrained = freshrec(workspace, ["--json", "pretrain"], { store: { url }, llm: { backend: "openai", openai: { model: "some-model" } } });
    expect(pretrained.status, pretrained.stderr).not.toBe(0);
    expect(pretrained.stderr).toMatch(/cannot open the model registry postgres:\/\/me:\*\*\*@127\.0\.0\.1:1\/deployment.*the database of store\.url/);
    expect(pretrained.stderr).not.toContain("hunter2");
    expect(existsSync(join(workspace, "schedule.sqlite"))).toBe(false);
    expect(existsSync(join(workspace, "registry.sqlite"))).toBe(false);
  });

  it("refuses a store.url that is not a PostgreSQL URL, naming the field", () => {
    const workspace = join(tempDir("freshrec-pgcli-"), "ws");
    const r = freshrec(workspace, ["--json", "analyze", "drift"], { store: { url: "mysql://x" } });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/store\.url/);
  });
});

/**
 * A deployment's state in the database at `url`: the serving workspace's events, its tables (same versions, same live
 * one) and a live model whose file is `<worker>/models/m000001/model.gguf`.
 */
async function seedDeployment(url: string, ws: ServingWorkspace, worker: string): Promise<void> {
  await seedPostgres(url, ws);
  const registry = await PostgresModelRegistry.open(url, worker, new VirtualClock(ws.world.endMs));
  try {
    mkdirSync(join(registry.modelsDir, "m000001"), { recursive: true });
    writeFileSync(join(registry.modelsDir, "m000001", "model.gguf"), "weights");
    await registry.makeLive((await registry.register({ kind: "base", filePath: join(registry.modelsDir, "m000001", "model.gguf") })).version, "first");
  } finally {
    await registry.close();
  }
}

describe("store.url: serve, tables and models on PostgreSQL through the CLI", () => {
  it("two serve processes on one database follow tables publish/rollback run by a third; models list reads the database", async () => {
    const ws = await servingWorkspace();
    const url = await database();
    const root = tempDir("freshrec-pgserve-");
    const configFile = join(root, "freshrec.config.json");
    writeFileSync(configFile, JSON.stringify({ store: { url }, serve: { reloadIntervalMs: 50 } }));
    await seedDeployment(url, ws, join(root, "worker"));
    const cli = (workspace: string, args: string[]) => runCli(["--workspace", workspace, "--config", configFile, "--json", ...args], { timeoutMs: 120_000 });

    // Read from the database, not from this (empty) workspace.
    const admin = join(root, "admin");
    const listed = cli(admin, ["tables", "list"]);
    expect(listed.status, listed.stderr).toBe(0);
    expect(listed.json.live).toBe(ws.rag);
    expect(listed.json.tables.map((t: { version: string; status: string }) => [t.version, t.status])).toEqual([
      [ws.plain, "ready"],
      [ws.rag, "live"],
      [ws.fusion, "ready"],
    ]);
    const shown = cli(admin, ["tables", "show", "live", "--limit", "2"]);
    expect(shown.status, shown.stderr).toBe(0);
    expect(shown.json).toMatchObject({ version: ws.rag, status: "live" });
    expect(shown.json.rows).toHaveLength(2);
    const [pair] = shown.json.rows as { c1: string; c2: string; answers: unknown[] }[];
    const one = cli(admin, ["tables", "show", ws.plain, "--pair", `${pair.c1},${pair.c2}`]);
    expect(one.status, one.stderr).toBe(0);
    expect(one.json.rows).toEqual([expect.objectContaining({ c1: pair.c1, c2: pair.c2 })]);
    const models = cli(admin, ["models", "list"]);
    expect(models.status, models.stderr).toBe(0);
    expect(models.json).toMatchObject({ live: "m000001", models: [{ version: "m000001", status: "live" }] });
    expect(existsSync(join(admin, "tables.sqlite"))).toBe(false);
    expect(existsSync(join(admin, "registry.sqlite"))).toBe(false);

    const servers = [await serveCli(join(root, "host-a"), configFile), await serveCli(join(root, "host-b"), configFile)];
    try {
      const user = ws.world.userId(7);
      const answers = await Promise.all(servers.map(async (s) => (await (await fetch(`${s.url}/v1/users/${user}/exploration?n=3`)).json()) as Record<string, unknown>));
      for (const a of answers) delete a.requestId;
      expect(answers[0]).toMatchObject({ table: { version: ws.rag }, model: { live: "m000001" } });
      expect(answers[1]).toEqual(answers[0]);

      const published = cli(admin, ["tables", "publish", ws.plain, "--reason", "from the worker host"]);
      expect(published.status, published.stderr).toBe(0);
      expect(published.json.live).toBe(ws.plain);
      for (const s of servers) expect(await servingLive(s.url, ws.plain)).toBe(ws.plain);
      const rolledBack = cli(admin, ["tables", "rollback", "--reason", "back"]);
      expect(rolledBack.status, rolledBack.stderr).toBe(0);
      for (const s of servers) expect(await servingLive(s.url, ws.rag)).toBe(ws.rag);

      // An experiment created from a third host goes into the database; both servers start serving it.
      const experiment = cli(admin, ["experiment", "create", "pg-cli", "--arm", `control=${ws.plain}`, "--arm", "treatment=live"]);
      expect(experiment.status, experiment.stderr).toBe(0);
      for (const s of servers) {
        let arm: unknown = null;
        for (let attempt = 0; attempt < 600 && arm === null; attempt++) {
          if (attempt) await new Promise((r) => setTimeout(r, 50));
          arm = ((await (await fetch(`${s.url}/v1/users/${user}/exploration?n=3`)).json()) as { experiment: { arm: string } | null }).experiment?.arm ?? null;
        }
        expect(arm).toMatch(/^(control|treatment)$/);
      }
      expect(cli(admin, ["experiment", "list"]).json.experiments.map((e: { name: string }) => e.name)).toEqual(["pg-cli"]);
      // Its analysis reads the database beside the servers; an unknown name is NOT_FOUND (exit 2).
      const analyzed = cli(admin, ["experiment", "analyze", "pg-cli"]);
      expect(analyzed.status, analyzed.stderr).toBe(0);
      expect(analyzed.json).toMatchObject({ experiment: "pg-cli", control: "control", readThrough: null });
      const unknown = cli(admin, ["experiment", "analyze", "pg-nope"]);
      expect(unknown.status).toBe(2);
      expect(unknown.json.error).toMatchObject({ code: "NOT_FOUND", message: expect.stringContaining('"pg-nope" does not exist') });
    } finally {
      for (const s of servers) s.child.kill("SIGINT");
    }
    // Ctrl-C stops each cleanly.
    for (const s of servers) expect(await s.exited).toBe(0);
  }, 600_000);
});

describe("store.url: freshrec doctor checks the database's stores", () => {
  it("reads back the live table and checks the live model's file; a changed file fails naming it; nothing is written to the workspace", async () => {
    const ws = await servingWorkspace({ users: 120, events: 8_000 });
    const url = await database();
    const root = tempDir("freshrec-pgdoctor-");
    await seedDeployment(url, ws, join(root, "host"));
    const configFile = join(root, "freshrec.config.json");
    writeFileSync(configFile, JSON.stringify({ store: { url } }));
    const doctor = () => runCli(["--workspace", join(root, "host"), "--config", configFile, "--json", "doctor"], { timeoutMs: 120_000 });

    const healthy = doctor();
    const byName = (run: typeof healthy): Record<string, { ok: boolean; detail: string }> => Object.fromEntries((run.json.checks as { name: string; ok: boolean; detail: string }[]).map((c) => [c.name, c]));
    expect(byName(healthy).database).toMatchObject({ ok: true, detail: expect.stringMatching(/reachable, \d+ events/) });
    expect(byName(healthy).tables).toMatchObject({ ok: true, detail: expect.stringContaining(`live ${ws.rag} read back whole`) });
    expect(byName(healthy).registry).toMatchObject({ ok: true, detail: expect.stringContaining("live m000001") });
    expect(existsSync(join(root, "host", "events.duckdb"))).toBe(false);
    expect(existsSync(join(root, "host", "tables.sqlite"))).toBe(false);
    // No schedule in the database yet: nothing to check. A paused job is named with what to do; no worker drives it.
    expect(byName(healthy).schedule).toBeUndefined();
    expect(runCli(["--workspace", join(root, "host"), "--config", configFile, "schedule", "pause", "refresh", "--reason", "pipeline outage"]).status).toBe(0);
    const paused = byName(doctor()).schedule;
    expect(paused).toMatchObject({ ok: true, detail: expect.stringContaining("refresh paused (pipeline outage): freshrec schedule resume refresh") });
    expect(paused.detail).toContain("no process drives it");

    const file = join(root, "host", "models", "m000001", "model.gguf");
    writeFileSync(file, "other weights");
    const changed = doctor();
    expect(changed.status).toBe(1);
    expect(byName(changed).registry).toMatchObject({ ok: false, detail: expect.stringContaining(file) });
    expect(byName(changed).registry.detail).toMatch(/sha256/);
  }, 300_000);

  it("fails the database check of a server it cannot reach, naming it without the password (exit 1)", () => {
    const root = tempDir("freshrec-pgdoctor-");
    const configFile = join(root, "freshrec.config.json");
    writeFileSync(configFile, JSON.stringify({ store: { url: "postgres://me:hunter2@127.0.0.1:1/nowhere" } }));
    const run = runCli(["--workspace", join(root, "ws"), "--config", configFile, "--json", "doctor"], { timeoutMs: 120_000 });
    expect(run.status).toBe(1);
    expect(run.json.passed).toBe(false);
    expect(run.json.checks[0]).toMatchObject({ name: "database", ok: false, detail: expect.stringMatching(/^cannot reach postgres:\/\/me:\*\*\*@127\.0\.0\.1:1\/nowhere: /) });
    expect(run.stdout + run.stderr).not.toContain("hunter2");
  });
});
