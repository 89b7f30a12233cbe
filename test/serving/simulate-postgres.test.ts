/**
 * The simulated A/B on a deployment's database (issue 19): the events are read from PostgreSQL through the event
 * store contract into the simulation's scratch folder, so the result is the one the embedded workspace gives for the
 * same events, and the deployment's events and experiment log are left exactly as they were.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { PostgresEventStore } from "../../src/data/postgres-event-store.js";
import { countTransitions } from "../../src/mining/transitions.js";
import { openExperimentLog, runSimulatedExperiment, type SimulatedExperimentResult } from "../../src/serving/index.js";
import { novelPopularity, SuccessorScorer } from "../../src/update/baselines.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { servingWorkspace } from "./fixtures.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();

/** The result without what differs by where it ran: the scratch folder and the seconds each refresh took. */
function outcome(result: SimulatedExperimentResult): object {
  const { workDir: _workDir, refreshes, ...rest } = result;
  return { ...rest, refreshes: refreshes.map(({ seconds: _seconds, ...r }) => r) };
}

describe("simulated A/B on PostgreSQL", () => {
  it("gives the embedded workspace's result for the same events, and writes nothing to the deployment", async () => {
    const ws = await servingWorkspace({ users: 1000, events: 100_000 });
    const url = await database();
    const deployment = await PostgresEventStore.open(url);
    try {
      await ingestSynthetic(deployment, ws.world);
      const eventsPath = join(ws.dir, "events.duckdb");
      const local = await EventStore.open(eventsPath);
      const counts = await countTransitions(local, { from: ws.world.endMs - 30 * 86_400_000, to: ws.world.endMs }, { positiveMin: 0.5 });
      local.close();
      const before = await deployment.counts();
      const scratch = tempDir("freshrec-simulate-pg-");
      const common = {
        model: { version: "successor", scorer: new SuccessorScorer(novelPopularity(counts, ws.clusters)) },
        templateHash: "baseline",
        rag: { windowDays: 7, minSupport: 1 },
        days: 4,
        refreshDays: 2,
        resamples: 200,
      };
      const source = await EventStore.openReadOnly(eventsPath);
      const embedded = await runSimulatedExperiment({ ...common, events: source, workDir: join(scratch, "embedded") }).finally(() => source.close());
      const lines: string[] = [];
      const onPostgres = await runSimulatedExperiment({ ...common, events: deployment, workDir: join(scratch, "postgres"), log: (line) => lines.push(line) });

      expect(lines[0]).toMatch(/^copying the events of postgres:\/\/.* into .*events\.duckdb$/);
      expect(onPostgres.simulated.slates).toBeGreaterThan(0);
      expect(onPostgres.tables.treatment).toHaveLength(2);
      expect(onPostgres.arms.control.satisfied + onPostgres.arms.treatment.satisfied).toBeGreaterThan(0);
      expect(outcome(onPostgres)).toEqual(outcome(embedded));
      // The simulated traffic went into the scratch copy only.
      expect(onPostgres.simulated.events).toBeGreaterThan(0);
      expect(await deployment.counts()).toEqual(before);
      expect(await (await openExperimentLog(deployment)).list()).toEqual([]);
      const copy = await EventStore.open(join(scratch, "postgres", "events.duckdb"));
      try {
        expect((await copy.counts()).events).toBe(before.events + onPostgres.simulated.events);
      } finally {
        copy.close();
      }
    } finally {
      await deployment.close();
    }
  }, 300_000);

  it("refuses a database that does not hold the synthetic platform's events before copying anything", async () => {
    const deployment = await PostgresEventStore.open(await database());
    const workDir = join(tempDir("freshrec-simulate-pg-"), "scratch");
    try {
      await expect(
        runSimulatedExperiment({ events: deployment, workDir, model: { version: "none", scorer: new SuccessorScorer([]) }, templateHash: "baseline", rag: {} }),
      ).rejects.toThrow(/not made by `freshrec synth` or `freshrec demo`/);
      expect(existsSync(workDir)).toBe(false);
    } finally {
      await deployment.close();
    }
  });
});
