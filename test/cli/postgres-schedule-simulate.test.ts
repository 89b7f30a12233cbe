/**
 * `schedule run --simulate` on `store.url` (issue 19). Its jobs are the real ones (refreshes publish, a fine-tune that
 * passes its gates goes live), so on a deployment it runs on a copy, as `experiment simulate` does: the database's
 * events and live model copied into `<workspace>/simulations/schedule`, an embedded workspace with tables, models and
 * run log of its own. The runs are those of an embedded workspace holding the same events and model; the deployment's
 * tables, models, schedule and events are as they were.
 */
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SystemClock } from "../../src/domain/clock.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { runCli } from "./run.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();

/** A run as both places give it: without its id and times (when it ran, how long it took and its CPU time differ). */
function run(r: Record<string, any>) {
  const { id: _id, startedAt: _started, endedAt: _ended, durationSeconds: _duration, detail, cost, ...rest } = r;
  const { seconds: _seconds, retrieveSeconds: _retrieve, promptsPerSecond: _rate, ...kept } = detail ?? {};
  const { cpuSeconds: _cpu, ...work } = cost ?? {};
  return { ...rest, detail: kept, cost: work };
}

describe("store.url: schedule run --simulate", () => {
  it("simulates on a copy of the deployment: the runs an embedded workspace with the same events and model gives, the deployment only read", async () => {
    const url = await database();
    const root = tempDir("freshrec-pgsimulate-");
    const deployment = join(root, "deployment");
    const embedded = join(root, "embedded");
    const tiny = {
      model: { embedding: 32, layers: 1, heads: 2, feedForward: 64 },
      pretrain: { epochs: 1, windowDays: 45, heldOutDays: 7, maxSamples: 2000 },
      rag: { minSupport: 1 },
    };
    const configs = { pg: join(root, "pg.json"), embedded: join(root, "embedded.json") };
    writeFileSync(configs.pg, JSON.stringify({ ...tiny, store: { url } }));
    writeFileSync(configs.embedded, JSON.stringify(tiny));
    const cli = (workspace: string, config: string, ...args: string[]) => runCli(["--workspace", workspace, "--config", config, "--json", ...args], { timeoutMs: 600_000 });
    const world = ["synth", "--quick", "--users", "300", "--events", "20000", "--months", "3"];
    for (const args of [world, ["pretrain"], ["refresh"]]) {
      const r = cli(deployment, configs.pg, ...args);
      expect(r.status, r.stderr).toBe(0);
    }
    const deploymentState = () => ({
      tables: cli(deployment, configs.pg, "tables", "list").json,
      models: cli(deployment, configs.pg, "models", "list").json,
      schedule: cli(deployment, configs.pg, "schedule", "status").json.recent,
    });
    const before = deploymentState();
    expect(before.tables.tables).toHaveLength(1);
    expect(before.schedule).toEqual([]);
    const live = before.models.live as string;

    // The last week of the data (it ends on 2025-04-01): refreshes every two days, no fine-tune (due on the 1st).
    const window = ["schedule", "run", "--simulate", "--from", "2025-03-24", "--to", "2025-04-01"];
    const onPg = cli(deployment, configs.pg, ...window);
    expect(onPg.status, onPg.stderr).toBe(0);
    const copy = join(deployment, "simulations", "schedule");
    expect(onPg.json.copy).toEqual({ dir: copy, deploymentModel: live, model: "m000001" });
    expect(onPg.json.runs.length).toBeGreaterThanOrEqual(3);
    expect(onPg.json.runs.every((r: { job: string; status: string }) => r.job === "refresh" && r.status === "succeeded")).toBe(true);
    for (const file of ["events.duckdb", "tables.sqlite", "registry.sqlite", "schedule.simulated.sqlite"]) expect(existsSync(join(copy, file)), file).toBe(true);

    // The deployment was only read: its tables, models and schedule are as they were; the workspace holds no store.
    expect(deploymentState()).toEqual(before);
    for (const file of ["events.duckdb", "tables.sqlite", "registry.sqlite", "schedule.sqlite", "schedule.simulated.sqlite"]) {
      expect(existsSync(join(deployment, file)), file).toBe(false);
    }

    // The same events and the same live model in an embedded workspace give the same runs.
    const synth = cli(embedded, configs.embedded, ...world);
    expect(synth.status, synth.stderr).toBe(0);
    const model = join(embedded, "models", live, "model.gguf");
    mkdirSync(join(embedded, "models", live), { recursive: true });
    copyFileSync(join(deployment, "models", live, "model.gguf"), model);
    const registry = new ModelRegistry(embedded, new SystemClock());
    try {
      // The window the prior's clusters are read against, as the deployment recorded it (ISO times in the CLI's JSON).
      const { from, to } = before.models.models[0].window as { from: string; to: string };
      const window = { from: Date.parse(from), to: Date.parse(to) };
      registry.makeLive((await registry.register({ kind: "base", filePath: model, window })).version, "the deployment's live model");
    } finally {
      registry.close();
    }
    const onEmbedded = cli(embedded, configs.embedded, ...window);
    expect(onEmbedded.status, onEmbedded.stderr).toBe(0);
    expect(onPg.json.runs.map(run)).toEqual(onEmbedded.json.runs.map(run));
    expect(onPg.json.simulated).toEqual(onEmbedded.json.simulated);

    // Each simulation is a new schedule over its window: the same window again runs the same due times (the jobs
    // first fall due at their first due time at or after --from), not nothing after the last simulation's.
    const again = cli(embedded, configs.embedded, ...window);
    expect(again.status, again.stderr).toBe(0);
    const due = (runs: { job: string; due: string; status: string; trigger: string }[]) => runs.map((r) => [r.job, r.due, r.status, r.trigger]);
    expect(due(again.json.runs)).toEqual(due(onEmbedded.json.runs));
    // "every 2 days" counts from the Unix epoch: its first due time at or after 2025-03-24 is the 25th.
    expect(again.json.runs[0]).toMatchObject({ job: "refresh", due: "2025-03-25T00:00:00.000Z", trigger: "scheduled" });
  }, 900_000);
});
