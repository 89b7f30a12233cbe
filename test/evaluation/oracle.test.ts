/**
 * The replay's oracle on the synthetic platform: tables of the world's true kernel, one at the start and one at each
 * month boundary, beating the strongest counting baseline; every strategy's share of it is its hits over the
 * oracle's; a store the synthetic platform did not make refuses it, naming why.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { ingestFiles } from "../../src/data/ingest/ingest.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { recordedSyntheticWorld, SyntheticWorld, SYNTHETIC_QUICK } from "../../src/data/synthetic/index.js";
import { BadInputError } from "../../src/domain/errors.js";
import { replay } from "../../src/evaluation/replay.js";
import { defaultStrategies, strategySetups } from "../../src/evaluation/strategies.js";
import { TableLookup } from "../../src/tables/index.js";
import { SqliteTableStore } from "../../src/tables/index.js";
import { VirtualClock } from "../../src/domain/clock.js";
import { oracleRefreshJob } from "../../src/evaluation/oracle.js";
import { modelFreeEnvironment } from "./fixtures.js";
import { readFileSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { writeReplayReport } from "../../src/evaluation/replay-report.js";
import { tempDir } from "../temp-dir.js";

const BIN = join(import.meta.dirname, "../../bin/freshrec.js");
function freshrec(args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 600_000 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

// Mid-February to mid-March: the replay starts inside a month and crosses a month boundary.
const from = Date.UTC(2025, 1, 15);
const to = Date.UTC(2025, 2, 15);


const environment = (events: EventStore, clusters: string[], world: SyntheticWorld | null, reason?: string) => modelFreeEnvironment(events, clusters, { from, to }, world, reason);

describe("the oracle", () => {
  it("serves the true kernel of each month and beats the counting baseline; shares are hits over the oracle's", async () => {
    const events = await EventStore.open(":memory:");
    await ingestSynthetic(events, new SyntheticWorld({ ...SYNTHETIC_QUICK, users: 1500, targetEvents: 150_000, months: 4 }));
    // The replay's world is the one rebuilt from what the store recorded, as `evaluate replay` does.
    const recorded = await recordedSyntheticWorld(events);
    expect(recorded.reason).toBeNull();
    const world = recorded.world!;
    const clusters = (await events.clusters()).map((c) => c.id);
    const result = await replay({
      events,
      window: { from, to },
      positiveMin: 0.5,
      resamples: 200,
      clusters,
      strategies: strategySetups(["counts-backoff", "popular-novel", "oracle"], environment(events, clusters, world)),
    });
    expect(result.ceiling).toBe("oracle");
    // One table at the start, one at each kernel month boundary (Mar 1), nothing in between.
    expect(result.timelines.oracle.map((t) => new Date(t.publishedAt).toISOString().slice(0, 10))).toEqual(["2025-02-15", "2025-03-01"]);
    const s = result.strategies;
    expect(s.oracle.cost).toMatchObject({ promptsScored: 0, trainingTokens: 0 });
    expect(s.oracle.unserved).toBe(0);
    // Knowing the truth beats the strongest counting baseline, and by a margin the bootstrap can tell.
    expect(s.oracle.hit1).toBeGreaterThan(s["counts-backoff"].hit1);
    expect(s.oracle.hit5).toBeGreaterThan(s["counts-backoff"].hit5);
    const cmp = result.comparisons.find((c) => c.a === "counts-backoff" && c.b === "oracle" && c.metric === "hit1")!;
    expect(cmp.ci95[0]).toBeGreaterThan(0);
    for (const name of Object.keys(s)) {
      expect(s[name].shareOfOracle!.hit1).toBeCloseTo(s[name].hit1 / s.oracle.hit1, 12);
      expect(s[name].shareOfOracle!.hit5).toBeCloseTo(s[name].hit5 / s.oracle.hit5, 12);
      for (const [g, v] of Object.entries(s[name].segments)) {
        const top = s.oracle.segments[g];
        expect(v.shareOfOracle).toEqual({ hit1: top.hit1 > 0 ? v.hit1 / top.hit1 : null, hit5: top.hit5 > 0 ? v.hit5 / top.hit5 : null });
      }
    }
    expect(s.oracle.shareOfOracle).toEqual({ hit1: 1, hit5: 1 });
    // Every oracle run published: none found its month's table already live.
    expect(Object.values(s.oracle.outcomes).map((o) => o.idle)).toEqual([0, 0]);
    // A replay starting on a month boundary gets one table there, not two.
    const boundary = Date.UTC(2025, 2, 1);
    const onBoundary = await replay({
      events,
      window: { from: boundary, to },
      positiveMin: 0.5,
      resamples: 10,
      strategies: strategySetups(["oracle"], { ...environment(events, clusters, world), window: { from: boundary, to } }),
    });
    expect(onBoundary.timelines.oracle.map((t) => t.publishedAt)).toEqual([boundary]);
    expect(onBoundary.strategies.oracle.outcomes.refresh).toMatchObject({ succeeded: 1, idle: 0 });
    const md = readFileSync(writeReplayReport(tempDir("freshrec-oracle-report-"), result, "synthetic").md, "utf8");
    expect(md).toContain("hit@1 of oracle");
    expect(md).toContain("Segments as a share of the oracle");
    events.close();
  });

  it("ranks every pair by the kernel of the month of its as-of time", async () => {
    const world = new SyntheticWorld({ ...SYNTHETIC_QUICK, users: 10, targetEvents: 100, months: 3, clustersPerDomain: 3 });
    const clusters = world.clusters.map((c) => c.id);
    const tables = SqliteTableStore.open(":memory:", new VirtualClock(from));
    const run = oracleRefreshJob(world, { tables, clusters, topN: 5 });
    const at = (ts: number) => run({ asOf: ts, clock: new VirtualClock(ts), signal: new AbortController().signal, job: "refresh", trigger: "scheduled" });
    const feb = await at(Date.UTC(2025, 1, 3));
    // Later in the same month the kernel has not changed: nothing to publish.
    expect((await at(Date.UTC(2025, 1, 20))).detail).toMatchObject({ skipped: expect.any(String) });
    const mar = await at(Date.UTC(2025, 2, 1));
    for (const [outcome, month] of [[feb, 1], [mar, 2]] as const) {
      const lookup = TableLookup.load(tables, outcome.detail!.publishedTable as string);
      for (const [c1, c2] of [[clusters[0], clusters[5]], [clusters[7], clusters[2]], [clusters[30], clusters[11]]]) {
        expect(lookup.get(c1, c2)!.map((a) => a.cluster)).toEqual(world.topSuccessors(month, c1, c2, 5));
      }
    }
    tables.close();
  });

  it("is refused on a store the synthetic platform did not make, naming why", async () => {
    const dir = tempDir("freshrec-oracle-files-");
    writeFileSync(join(dir, "clusters.csv"), "cluster_id,description\na,alpha\nb,beta\nc,gamma\n");
    writeFileSync(join(dir, "items.csv"), "item_id,cluster_id\ni1,a\ni2,b\ni3,c\n");
    writeFileSync(join(dir, "events.csv"), "user_id,item_id,ts\nu1,i1,2025-02-01T00:00:00Z\nu1,i2,2025-02-02T00:00:00Z\nu1,i3,2025-02-20T00:00:00Z\n");
    const events = await EventStore.open(":memory:");
    await ingestFiles(events, { clusters: join(dir, "clusters.csv"), items: join(dir, "items.csv"), events: [join(dir, "events.csv")] });
    const recorded = await recordedSyntheticWorld(events);
    expect(recorded.world).toBeNull();
    expect(recorded.reason).toMatch(/records no synthetic world .*not made by `freshrec synth`/);
    const env = environment(events, ["a", "b", "c"], null, recorded.reason!);
    expect(() => strategySetups(["counts-backoff", "oracle"], env)).toThrow(BadInputError);
    expect(() => strategySetups(["oracle"], env)).toThrow(/oracle: the event store records no synthetic world.*only on the synthetic platform/);
    // The default list holds the oracle only where it can run.
    expect(defaultStrategies(false)).not.toContain("oracle");
    expect(defaultStrategies(true)).toContain("oracle");
    events.close();
  });

  it("on the CLI: shares in the JSON and the text on a synthetic workspace, exit 2 on other data", () => {
    const ws = tempDir("freshrec-oracle-cli-");
    expect(freshrec(["--workspace", ws, "synth", "--quick", "--users", "600", "--events", "40000", "--months", "3"]).status).toBe(0);
    const args = ["--workspace", ws, "evaluate", "replay", "--from", "2025-02-20", "--to", "2025-03-10", "--strategies", "successor-top1,oracle", "--resamples", "20"];
    // One run: the text on stdout, the JSON (the --json object's wire form) in the report it writes.
    const r = freshrec(args);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/successor-top1 .* of oracle: hit@1 +\d+\.\d% hit@5 +\d+\.\d%/);
    const json = JSON.parse(readFileSync(r.stdout.match(/(\S+replay\.json)/)![1], "utf8"));
    expect(json.ceiling).toBe("oracle");
    expect(json.timelines.oracle.map((t: { publishedAt: string }) => t.publishedAt)).toEqual(["2025-02-20T00:00:00.000Z", "2025-03-01T00:00:00.000Z"]);
    const top = json.strategies["successor-top1"];
    expect(top.shareOfOracle.hit1).toBeCloseTo(top.hit1 / json.strategies.oracle.hit1, 12);
    expect(top.segments["evidence:dense"].shareOfOracle.hit5).toBeCloseTo(top.segments["evidence:dense"].hit5 / json.strategies.oracle.segments["evidence:dense"].hit5, 12);

    const files = tempDir("freshrec-oracle-files-");
    writeFileSync(join(files, "clusters.csv"), "cluster_id,description\na,alpha\nb,beta\nc,gamma\n");
    writeFileSync(join(files, "items.csv"), "item_id,cluster_id\ni1,a\ni2,b\ni3,c\n");
    writeFileSync(join(files, "events.csv"), "user_id,item_id,ts\nu1,i1,2025-02-01T00:00:00Z\nu1,i2,2025-02-02T00:00:00Z\nu1,i3,2025-02-20T00:00:00Z\n");
    const other = tempDir("freshrec-oracle-other-");
    expect(freshrec(["--workspace", other, "ingest", "--clusters", join(files, "clusters.csv"), "--items", join(files, "items.csv"), "--events", join(files, "events.csv")]).status).toBe(0);
    const refused = freshrec(["--workspace", other, "--json", "evaluate", "replay", "--from", "2025-02-10", "--strategies", "counts-backoff,oracle"]);
    expect(refused.status).toBe(2);
    expect(JSON.parse(refused.stdout).error).toMatchObject({ code: "BAD_INPUT", message: expect.stringMatching(/oracle: the event store records no synthetic world/) });
    // The oracle prior reads the same world: refused the same way, naming it.
    const refusedPrior = freshrec(["--workspace", other, "--json", "evaluate", "replay", "--from", "2025-02-10", "--strategies", "counts-backoff,oracle-prior"]);
    expect(refusedPrior.status).toBe(2);
    expect(JSON.parse(refusedPrior.stdout).error).toMatchObject({ code: "BAD_INPUT", message: expect.stringMatching(/--strategies oracle-prior: the event store records no synthetic world/) });
  }, 900_000);
});
