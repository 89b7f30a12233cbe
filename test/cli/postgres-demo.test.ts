/**
 * `demo` and `experiment simulate` on `store.url` (issue 19). The demo ingests the synthetic platform into the
 * deployment's database, trains its base model into the database's registry (the file under the workspace's models
 * folder), publishes the loop's tables there, runs the simulated A/B and answers a request from an API over the
 * database; the workspace gets no store file of its own. `experiment simulate` then reads the database's events and
 * live model and gives what an embedded workspace with the same events and model gives, writing nothing to the
 * deployment.
 */
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PostgresEventStore } from "../../src/data/postgres-event-store.js";
import { SystemClock } from "../../src/domain/clock.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import { PostgresModelRegistry } from "../../src/llm/postgres-registry.js";
import { openExperimentLog } from "../../src/serving/index.js";
import { PostgresTableStore } from "../../src/tables/index.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { runCli } from "./run.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();

/** A simulate result without what differs by where it ran: its scratch folder, report files and refresh seconds. */
function simulated(json: Record<string, any>): object {
  const { workDir: _workDir, reports: _reports, refreshes, ...rest } = json;
  return { ...rest, refreshes: refreshes.map(({ seconds: _seconds, ...r }: Record<string, unknown>) => r) };
}

describe("store.url: demo and experiment simulate on PostgreSQL through the CLI", () => {
  it("the demo leaves its data, tables and models in the database; simulate gives the embedded result for the same events and model", async () => {
    const url = await database();
    const root = tempDir("freshrec-pgdemo-");
    const deployment = join(root, "deployment");
    const embedded = join(root, "embedded");
    const tiny = {
      model: { embedding: 32, layers: 1, heads: 2, feedForward: 64 },
      pretrain: { windowDays: 45, heldOutDays: 7, maxSamples: 2000 },
      finetune: { epochs: 1, windowDays: 30, testDays: 7, maxSamples: 500, minExactMatchRate: 0.5, minTestRecall: 0 },
      rag: { minSupport: 1 },
      experiment: { refreshDays: 2, resamples: 200 },
    };
    const configs = { pg: join(root, "pg.json"), embedded: join(root, "embedded.json") };
    writeFileSync(configs.pg, JSON.stringify({ ...tiny, store: { url } }));
    writeFileSync(configs.embedded, JSON.stringify(tiny));
    const cli = (workspace: string, config: string, ...args: string[]) => runCli(["--workspace", workspace, "--config", config, "--json", ...args], { timeoutMs: 600_000 });
    const world = ["--quick", "--users", "400", "--events", "40000", "--months", "3"];

    const demo = cli(deployment, configs.pg, "demo", ...world, "--loop-months", "1", "--epochs", "1", "--ab-days", "4");
    expect(demo.status, demo.stderr).toBe(0);
    const events = await PostgresEventStore.open(url);
    const tables = await PostgresTableStore.open(url, new SystemClock());
    const registry = await PostgresModelRegistry.open(url, deployment, new SystemClock());
    let live: Awaited<ReturnType<typeof registry.live>>;
    try {
      // The data is the database's.
      const counts = await events.counts();
      expect(counts.events).toBe(demo.json.store.events);
      expect(counts.events).toBeGreaterThan(10_000);
      // The loop's tables were published there, and the demo's API served the live one from there.
      const published = await tables.list();
      expect(published.length).toBeGreaterThan(5);
      const liveTable = (await tables.live())!.version;
      expect(demo.json.server.example).toMatchObject({ status: 200, table: liveTable });
      expect(demo.json.loop.monthly).toHaveLength(1);
      expect(demo.json.loop.monthly[0].refreshes).toBeGreaterThan(5);
      // The base model is in the database's registry, its file under the workspace's models folder.
      live = await registry.live();
      expect(live?.version).toBe(demo.json.loop.base.modelVersion);
      expect(await registry.modelFile(live!)).toBe(join(deployment, "models", live!.version, "model.gguf"));
      // The simulated A/B ran on a copy: its traffic and experiment are not the deployment's.
      expect(Object.keys(demo.json.experiment.arms)).toEqual(["control", "treatment"]);
      expect(await (await openExperimentLog(events)).list()).toEqual([]);
    } finally {
      await registry.close();
      await tables.close();
      await events.close();
    }
    for (const file of ["events.duckdb", "tables.sqlite", "registry.sqlite", "schedule.sqlite", "schedule.demo.sqlite", "llm-cache.sqlite"]) {
      expect(existsSync(join(deployment, file)), file).toBe(false);
    }
    expect(existsSync(join(deployment, "experiments", "simulated-hybrid-vs-finetune-monthly", "events.duckdb"))).toBe(true);

    // The same events and the same live model in an embedded workspace.
    const synth = cli(embedded, configs.embedded, "synth", ...world);
    expect(synth.status, synth.stderr).toBe(0);
    mkdirSync(join(embedded, "models", live!.version), { recursive: true });
    copyFileSync(join(deployment, "models", live!.version, "model.gguf"), join(embedded, "models", live!.version, "model.gguf"));
    const local = new ModelRegistry(embedded, new SystemClock());
    const copy = await local.register({ kind: "base", filePath: join(embedded, "models", live!.version, "model.gguf"), window: live!.window });
    local.makeLive(copy.version, "the deployment's live model");
    local.close();
    expect([copy.version, copy.sha256]).toEqual([live!.version, live!.sha256]);

    const args = ["experiment", "simulate", "--days", "4", "--name", "ab-compare"];
    // From the worker's workspace: the live model's file is under its models folder (model files stay files).
    const onPg = cli(deployment, configs.pg, ...args);
    expect(onPg.status, onPg.stderr).toBe(0);
    const onEmbedded = cli(embedded, configs.embedded, ...args);
    expect(onEmbedded.status, onEmbedded.stderr).toBe(0);
    expect(onPg.json.simulated.slates).toBeGreaterThan(0);
    expect(onPg.json.tables.treatment).toHaveLength(2);
    expect(simulated(onPg.json)).toEqual(simulated(onEmbedded.json));
    // Only the scratch folder and the reports were written in the workspace.
    expect(existsSync(join(deployment, "events.duckdb"))).toBe(false);
    expect(existsSync(join(deployment, "experiments", "ab-compare", "events.duckdb"))).toBe(true);
    const after = await PostgresEventStore.open(url);
    try {
      expect((await after.counts()).events).toBe(demo.json.store.events);
    } finally {
      await after.close();
    }
  }, 900_000);
});
