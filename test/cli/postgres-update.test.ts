/**
 * The update commands on `store.url` (issue 19): `pretrain`, `refresh` and `finetune` read the deployment's events
 * from PostgreSQL and write its tables and model registry there. On the same data and the same model, a refresh on
 * the database builds the table the embedded workspace builds (fusion and in-prompt RAG, the latter incrementally);
 * a fine-tune curates the same set and registers its candidate in the database; a running `serve` replica follows
 * the table a refresh publishes. Nothing is written to the deployment's workspace but model files.
 */
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SystemClock } from "../../src/domain/clock.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import { PostgresModelRegistry } from "../../src/llm/postgres-registry.js";
import { PostgresTableStore, SqliteTableStore, tableStorePath, type StoredTableRow, type TableStoreContract } from "../../src/tables/index.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { runCli, serveCli, servingLive } from "./run.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();

/** Rows of a table as the stores give them back, without the explanation's encoding (bytes here, a Buffer there). */
async function rowsOf(store: TableStoreContract | SqliteTableStore, version: string): Promise<Omit<StoredTableRow, "explanation">[]> {
  const rows: Omit<StoredTableRow, "explanation">[] = [];
  for await (const { c1, c2, answers, contextKey } of store.rows(version)) rows.push({ c1, c2, answers, contextKey });
  return rows.sort((a, b) => (a.c1 + "\u0000" + a.c2 < b.c1 + "\u0000" + b.c2 ? -1 : 1));
}

describe("store.url: pretrain, refresh and finetune on PostgreSQL through the CLI", () => {
  it("build the embedded workspace's tables on the same data and model, register fine-tunes there, and reach a running replica", async () => {
    const url = await database();
    const root = tempDir("freshrec-pgupdate-");
    const deployment = join(root, "deployment");
    const embedded = join(root, "embedded");
    const tiny = {
      model: { embedding: 32, layers: 1, heads: 2, feedForward: 64 },
      pretrain: { epochs: 1, windowDays: 45, heldOutDays: 7, maxSamples: 3000 },
      finetune: { epochs: 1, windowDays: 30, testDays: 7, maxSamples: 600, minExactMatchRate: 0.5, minTestRecall: 0 },
      rag: { minSupport: 1 },
    };
    const configs = {
      embedded: join(root, "embedded.json"),
      embeddedPrompted: join(root, "embedded-prompted.json"),
      pg: join(root, "pg.json"),
      pgPrompted: join(root, "pg-prompted.json"),
    };
    const onPg = { store: { url }, serve: { reloadIntervalMs: 50 } };
    writeFileSync(configs.embedded, JSON.stringify(tiny));
    writeFileSync(configs.embeddedPrompted, JSON.stringify({ ...tiny, rag: { ...tiny.rag, method: "prompt" } }));
    writeFileSync(configs.pg, JSON.stringify({ ...tiny, ...onPg }));
    writeFileSync(configs.pgPrompted, JSON.stringify({ ...tiny, ...onPg, rag: { ...tiny.rag, method: "prompt" } }));
    const cli = (workspace: string, config: string, ...args: string[]) => runCli(["--workspace", workspace, "--config", config, "--json", ...args], { timeoutMs: 600_000 });
    const onBoth = (args: string[], prompted = false) => ({
      pg: cli(deployment, prompted ? configs.pgPrompted : configs.pg, ...args),
      embedded: cli(embedded, prompted ? configs.embeddedPrompted : configs.embedded, ...args),
    });

    const synth = onBoth(["synth", "--quick", "--users", "500", "--events", "60000", "--months", "4"]);
    expect(synth.pg.status, synth.pg.stderr).toBe(0);
    expect(synth.embedded.status, synth.embedded.stderr).toBe(0);

    // The base model is trained from the database's events and registered in its registry; its file goes under the
    // deployment's models folder.
    const base = cli(deployment, configs.pg, "pretrain", "--as-of", "2025-04-01");
    expect(base.status, base.stderr).toBe(0);
    expect(base.json).toMatchObject({ modelVersion: "m000001", status: "live" });
    expect(base.json.modelPath).toBe(join(deployment, "models", "m000001", "model.gguf"));
    // The embedded workspace gets the very same model (same bytes, same data window), so the tables can be compared.
    const pgRegistry = await PostgresModelRegistry.open(url, deployment, new SystemClock());
    const registered = (await pgRegistry.get("m000001"))!;
    await pgRegistry.close();
    mkdirSync(join(embedded, "models", "m000001"), { recursive: true });
    copyFileSync(base.json.modelPath, join(embedded, "models", "m000001", "model.gguf"));
    const embeddedRegistry = new ModelRegistry(embedded, new SystemClock());
    const copy = await embeddedRegistry.register({ kind: "base", filePath: join(embedded, "models", "m000001", "model.gguf"), window: registered.window });
    embeddedRegistry.makeLive(copy.version, "the deployment's base model");
    embeddedRegistry.close();
    expect(copy.sha256).toBe(registered.sha256);

    const pgTables = await PostgresTableStore.open(url, new SystemClock());
    const sqliteTables = SqliteTableStore.open(tableStorePath(embedded), new SystemClock());
    try {
      // The default refresh: the model's prior fused with the fresh counts mined in each store.
      const fused = onBoth(["refresh", "--as-of", "2025-04-05"]);
      expect(fused.pg.status, fused.pg.stderr).toBe(0);
      expect(fused.embedded.status, fused.embedded.stderr).toBe(0);
      expect(fused.pg.json).toMatchObject({ tableVersion: "t000001", modelVersion: "m000001", published: true, fusion: { status: "fitted" } });
      for (const field of ["pairs", "rescored", "copied", "transitionsInWindow", "pairsWithContext", "fusion"]) expect(fused.pg.json[field], field).toEqual(fused.embedded.json[field]);
      expect(fused.pg.json.pairs).toBe(120 * 119);
      expect((await pgTables.live())?.version).toBe("t000001");
      expect(await rowsOf(pgTables, "t000001")).toEqual(await rowsOf(sqliteTables, fused.embedded.json.tableVersion));

      // The paper's in-prompt RAG: every pair scored with its retrieved context, then, unchanged, copied in the database.
      const prompted = onBoth(["refresh", "--as-of", "2025-04-07"], true);
      expect(prompted.pg.status, prompted.pg.stderr).toBe(0);
      expect(prompted.embedded.status, prompted.embedded.stderr).toBe(0);
      expect(prompted.pg.json).toMatchObject({ tableVersion: "t000002", rescored: 120 * 119, copied: 0, published: true });
      for (const field of ["pairs", "rescored", "copied", "transitionsInWindow", "pairsWithContext"]) expect(prompted.pg.json[field], field).toEqual(prompted.embedded.json[field]);
      expect(await rowsOf(pgTables, "t000002")).toEqual(await rowsOf(sqliteTables, prompted.embedded.json.tableVersion));
      const again = cli(deployment, configs.pgPrompted, "refresh", "--as-of", "2025-04-07");
      expect(again.status, again.stderr).toBe(0);
      expect(again.json).toMatchObject({ tableVersion: "t000003", rescored: 0, copied: 120 * 119 });
      expect(await rowsOf(pgTables, "t000003")).toEqual(await rowsOf(pgTables, "t000002"));

      const replica = await serveCli(join(root, "host-a"), configs.pg);
      try {
        expect(await servingLive(replica.url, "t000003")).toBe("t000003");

        // The fine-tune curates the same set from either store; its candidate is registered in the database.
        const tuned = onBoth(["finetune", "--as-of", "2025-04-15"]);
        expect(tuned.pg.status, tuned.pg.stderr).toBe(0);
        expect(tuned.embedded.status, tuned.embedded.stderr).toBe(0);
        expect(tuned.pg.json).toMatchObject({ modelVersion: "m000002", status: "live", parent: "m000001" });
        expect(tuned.pg.json.set).toEqual(tuned.embedded.json.set);
        const models = cli(join(root, "admin"), configs.pg, "models", "list");
        expect(models.json).toMatchObject({ live: "m000002", models: [{ version: "m000001", status: "retired" }, { version: "m000002", status: "live", parent: "m000001" }] });

        // A refresh by another process after the fine-tune: the new model's table reaches the running replica.
        const after = cli(deployment, configs.pg, "refresh", "--as-of", "2025-04-17");
        expect(after.status, after.stderr).toBe(0);
        expect(after.json).toMatchObject({ tableVersion: "t000004", modelVersion: "m000002", published: true });
        expect(await servingLive(replica.url, "t000004")).toBe("t000004");
      } finally {
        replica.child.kill("SIGINT");
      }
      expect(await replica.exited).toBe(0);
    } finally {
      await pgTables.close();
      sqliteTables.close();
    }
    for (const file of ["events.duckdb", "tables.sqlite", "registry.sqlite", "schedule.sqlite"]) expect(existsSync(join(deployment, file)), file).toBe(false);
  }, 1_800_000);

  it("against a database that cannot be reached, pretrain, refresh and finetune fail naming store.url without its password (exit 1) and write nothing", () => {
    const workspace = join(tempDir("freshrec-pgupdate-"), "ws");
    const config = join(workspace, "..", "freshrec.config.json");
    writeFileSync(config, JSON.stringify({ store: { url: "postgres://me:hunter2@127.0.0.1:1/deployment" } }));
    for (const command of ["pretrain", "refresh", "finetune"]) {
      const r = runCli(["--workspace", workspace, "--config", config, "--json", command], { timeoutMs: 120_000 });
      expect(r.status, `${command}: ${r.stderr}`).toBe(1);
      expect(r.stderr).toMatch(/cannot open the event store postgres:\/\/me:\*\*\*@127\.0\.0\.1:1\/deployment: .*\(the database of store\.url/);
      expect(r.stdout + r.stderr).not.toContain("hunter2");
    }
    for (const file of ["events.duckdb", "tables.sqlite", "registry.sqlite"]) expect(existsSync(join(workspace, file)), file).toBe(false);
  });
});

describe("store.url: evaluate replay reads the deployment's events", () => {
  it("gives the embedded workspace's replay on the same data, with the per-strategy state in the workspace, not the database", async () => {
    const url = await database();
    const root = tempDir("freshrec-pgreplay-");
    const config = { pg: join(root, "pg.json"), embedded: join(root, "embedded.json") };
    writeFileSync(config.pg, JSON.stringify({ store: { url } }));
    writeFileSync(config.embedded, JSON.stringify({}));
    const cli = (workspace: string, configFile: string, ...args: string[]) => runCli(["--workspace", join(root, workspace), "--config", configFile, "--json", ...args], { timeoutMs: 600_000 });
    const replayArgs = ["evaluate", "replay", "--from", "2025-03-01", "--to", "2025-04-01", "--strategies", "counts-backoff,successor-top1,popular-novel,oracle", "--resamples", "20"];
    const results: Record<string, any> = {};
    for (const [workspace, configFile] of [["deployment", config.pg], ["embedded", config.embedded]] as const) {
      const synth = cli(workspace, configFile, "synth", "--quick", "--users", "400", "--events", "40000", "--months", "4");
      expect(synth.status, synth.stderr).toBe(0);
      const replayed = cli(workspace, configFile, ...replayArgs);
      expect(replayed.status, replayed.stderr).toBe(0);
      results[workspace] = replayed.json;
    }
    const { deployment, embedded } = results;
    expect(deployment.transitions).toBeGreaterThan(1000);
    expect(deployment.transitions).toBe(embedded.transitions);
    expect(Object.keys(deployment.strategies)).toEqual(["counts-backoff", "successor-top1", "popular-novel", "oracle"]);
    for (const name of Object.keys(embedded.strategies)) {
      const [a, b] = [deployment.strategies[name], embedded.strategies[name]];
      expect({ name, hit1: a.hit1, hit5: a.hit5, coverage: a.coverage, tables: a.tablesPublished, segments: a.segments }).toEqual({
        name,
        hit1: b.hit1,
        hit5: b.hit5,
        coverage: b.coverage,
        tables: b.tablesPublished,
        segments: b.segments,
      });
    }
    expect(deployment.strategies["counts-backoff"].hit1).toBeGreaterThan(0);
    // The replay's own tables are the workspace's scratch; the deployment's live table store is untouched.
    expect(existsSync(join(root, "deployment", "replay", "counts-backoff", "tables.sqlite"))).toBe(true);
    const tables = await PostgresTableStore.open(url, new SystemClock());
    try {
      expect(await tables.list()).toEqual([]);
    } finally {
      await tables.close();
    }
  }, 600_000);
});
