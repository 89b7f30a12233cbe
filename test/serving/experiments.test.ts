/**
 * Experiments: deterministic, balanced assignment; the analysis' confidence intervals on cases with known answers;
 * the log's one-active rule; and the simulated A/B end to end on a small synthetic platform (tables built by the
 * production refresh job with the successor baseline as the "model", so no training is needed), its logged outcomes
 * equal to the platform's own counts.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { countTransitions } from "../../src/mining/transitions.js";
import {
  analyzeOutcomes,
  assignArm,
  assignmentPoint,
  ExperimentLog,
  parseExperimentDefinition,
  runSimulatedExperiment,
  type UserOutcomes,
} from "../../src/serving/index.js";
import { novelPopularity, SuccessorScorer } from "../../src/update/baselines.js";
import { servingWorkspace } from "./fixtures.js";

const users = Array.from({ length: 20_000 }, (_, k) => `user-${k}`);

describe("assignment", () => {
  const definition = parseExperimentDefinition({ name: "e1", arms: [{ name: "control", table: "live" }, { name: "treatment", table: "t000002" }] });

  it("is a pure function of salt and user id", () => {
    for (const u of users.slice(0, 200)) expect(assignArm(definition, u).name).toBe(assignArm({ ...definition }, u).name);
    // Pinned values: the hash is part of the contract (the same user lands in the same arm on every server and release).
    expect(assignmentPoint("e1", "u000123")).toBeCloseTo(0.8089481156006002, 15);
    expect([assignArm(definition, "u000001").name, assignArm(definition, "u000002").name, assignArm(definition, "u000003").name]).toEqual(["treatment", "control", "treatment"]);
  });

  it("splits traffic by the weights within statistical tolerance", () => {
    const count = (d: ReturnType<typeof parseExperimentDefinition>) => {
      const n = new Map<string, number>();
      for (const u of users) n.set(assignArm(d, u).name, (n.get(assignArm(d, u).name) ?? 0) + 1);
      return n;
    };
    const tolerance = (p: number) => 4 * Math.sqrt((p * (1 - p)) / users.length);
    const even = count(definition);
    expect(Math.abs(even.get("control")! / users.length - 0.5)).toBeLessThan(tolerance(0.5));
    const canary = count(parseExperimentDefinition({ name: "c", arms: [{ name: "a", table: "live", weight: 90 }, { name: "b", table: "live", weight: 10 }] }));
    expect(Math.abs(canary.get("b")! / users.length - 0.1)).toBeLessThan(tolerance(0.1));
    const three = count(parseExperimentDefinition({ name: "t", arms: [{ name: "a", table: "live" }, { name: "b", table: "live" }, { name: "c", table: "live", weight: 2 }] }));
    expect(Math.abs(three.get("c")! / users.length - 0.5)).toBeLessThan(tolerance(0.5));
    expect(Math.abs(three.get("a")! / users.length - 0.25)).toBeLessThan(tolerance(0.25));
  });

  it("a new salt reshuffles users independently", () => {
    const other = { ...definition, salt: "another salt" };
    const same = users.filter((u) => assignArm(definition, u).name === assignArm(other, u).name).length / users.length;
    expect(Math.abs(same - 0.5)).toBeLessThan(4 * Math.sqrt(0.25 / users.length));
  });

  it("validates definitions naming the field", () => {
    expect(() => parseExperimentDefinition({ name: "x", arms: [{ name: "a", table: "live" }] })).toThrow(/arms/);
    expect(() => parseExperimentDefinition({ name: "x", arms: [{ name: "a", table: "live" }, { name: "a", table: "live" }] })).toThrow(/arms\.1\.name: arm name "a" repeats/);
    expect(() => parseExperimentDefinition({ name: "x", arms: [{ name: "a", table: "yesterday" }, { name: "b", table: "live" }] })).toThrow(/arms\.0\.table/);
    expect(() => parseExperimentDefinition({ name: "x", control: "z", arms: [{ name: "a", table: "live" }, { name: "b", table: "live" }] })).toThrow(/control/);
    expect(parseExperimentDefinition({ name: "x", arms: [{ name: "a", table: "live" }, { name: "b", table: "strategy:hybrid" }] })).toMatchObject({ salt: "x", control: "a" });
  });
});

describe("analysis", () => {
  const experiment = { name: "e", control: "control", arms: [{ name: "control", table: "live", weight: 1 }, { name: "treatment", table: "live", weight: 1 }] };
  const user = (arm: string, satisfied: number, slots = 10, dissatisfied = 0, negative = 0): UserOutcomes => ({ arm, slots, exposures: slots / 10, satisfied, dissatisfied, negative });

  it("sums ratio metrics per arm", () => {
    const a = analyzeOutcomes(experiment, [user("control", 1, 10, 2, 1), user("control", 3, 10, 0, 1), user("treatment", 2, 20, 4, 0)], { resamples: 50 });
    expect(a.arms.control).toMatchObject({ users: 2, slots: 20, satisfied: 4, dissatisfied: 2, negative: 2 });
    expect(a.arms.control.metrics).toEqual({ satisfiedUserOutcomes: 2, satisfactionRate: 0.2, dissatisfactionRate: 0.1, negativeInteractionRate: 0.1, engagementRate: 0.3 });
    expect(a.arms.treatment.metrics.satisfactionRate).toBeCloseTo(0.1, 12);
    const d = a.deltas.find((x) => x.metric === "satisfactionRate")!;
    expect(d.relative).toBeCloseTo(-0.5, 12);
  });

  it("identical arms: delta 0 with a degenerate interval", () => {
    const units = [...Array.from({ length: 300 }, () => user("control", 1)), ...Array.from({ length: 300 }, () => user("treatment", 1))];
    const d = analyzeOutcomes(experiment, units, { resamples: 200 }).deltas.find((x) => x.metric === "satisfactionRate")!;
    expect(d.relative).toBe(0);
    expect(d.ci95[0]).toBeCloseTo(0, 12);
    expect(d.ci95[1]).toBeCloseTo(0, 12);
    expect(d.significant).toBe(false);
  });

  it("matches the delta-method normal interval on a large sample", () => {
    // Control: 20% of 4000 users satisfied on their one slot; treatment: 25%. Relative delta 0.25.
    const n = 4000;
    const units = [
      ...Array.from({ length: n }, (_, k) => user("control", k % 5 === 0 ? 1 : 0, 1)),
      ...Array.from({ length: n }, (_, k) => user("treatment", k % 4 === 0 ? 1 : 0, 1)),
    ];
    const d = analyzeOutcomes(experiment, units, { resamples: 2000, seed: 7 }).deltas.find((x) => x.metric === "satisfactionRate")!;
    expect(d.relative).toBeCloseTo(0.25, 12);
    const [pa, pb] = [0.2, 0.25];
    const se = Math.sqrt((1 / pa) ** 2 * ((pb * (1 - pb)) / n) + (pb / pa ** 2) ** 2 * ((pa * (1 - pa)) / n));
    expect(d.ci95[0]).toBeCloseTo(0.25 - 1.96 * se, 1);
    expect(d.ci95[1]).toBeCloseTo(0.25 + 1.96 * se, 1);
    const width = d.ci95[1] - d.ci95[0];
    expect(width / (2 * 1.96 * se)).toBeGreaterThan(0.85);
    expect(width / (2 * 1.96 * se)).toBeLessThan(1.15);
    expect(d.significant).toBe(true);
  });
});

describe("the experiment log", () => {
  it("keeps one experiment active; names are never reused", async () => {
    const store = await EventStore.open(":memory:");
    try {
      const log = await ExperimentLog.open(store);
      const def = (name: string) => parseExperimentDefinition({ name, arms: [{ name: "a", table: "live" }, { name: "b", table: "live" }] });
      await log.create(def("one"), 1000);
      await expect(log.create(def("two"), 2000)).rejects.toThrow(/"one" is active/);
      await expect(log.create(def("one"), 2000, { replace: true })).rejects.toThrow(/already exists/);
      const two = await log.create(def("two"), 3000, { replace: true });
      expect(two).toMatchObject({ name: "two", status: "active", createdAt: 3000 });
      expect((await log.get("one")).status).toBe("stopped");
      expect((await log.active())?.name).toBe("two");
      await log.stop("two", 4000);
      expect(await log.active()).toBeNull();
      await expect(log.get("three")).rejects.toThrow(/does not exist/);
    } finally {
      store.close();
    }
  });
});

describe("simulated A/B", () => {
  it("runs both arms on the platform's users, refreshes the treatment, and leaves the workspace untouched", async () => {
    const ws = await servingWorkspace({ users: 1000, events: 100_000 });
    const eventsPath = join(ws.dir, "events.duckdb");
    const events = await EventStore.open(eventsPath);
    const before = await events.counts();
    const counts = await countTransitions(events, { from: ws.world.endMs - 30 * 86_400_000, to: ws.world.endMs }, { positiveMin: 0.5 });
    events.close();
    const lines: string[] = [];
    // Read only, as the CLI reads the workspace's file.
    const source = await EventStore.openReadOnly(eventsPath);
    const result = await runSimulatedExperiment({
      events: source,
      workDir: join(ws.dir, "simulation"),
      model: { version: "successor", scorer: new SuccessorScorer(novelPopularity(counts, ws.clusters)) },
      templateHash: "baseline",
      rag: { windowDays: 7, minSupport: 1 },
      days: 4,
      refreshDays: 2,
      resamples: 200,
      log: (line) => lines.push(line),
    });
    expect(Object.keys(result.arms)).toEqual(["control", "treatment"]);
    expect(result.simulated).toMatchObject({ days: 4, users: 1000, model: "successor" });
    expect(result.arms.control.users + result.arms.treatment.users).toBe(result.users);
    expect(result.arms.control.exposures + result.arms.treatment.exposures).toBe(result.simulated.slates);
    expect(result.arms.control.satisfied + result.arms.treatment.satisfied).toBeGreaterThan(0);
    // The four metrics are the platform's responses read back from the experiment log: every slot the users were
    // shown and every outcome they gave must arrive there, in the arm that showed it.
    const { outcomes } = result.simulated;
    const total = (k: "slots" | "satisfied" | "dissatisfied" | "negative") => result.arms.control[k] + result.arms.treatment[k];
    expect(outcomes.slots).toBe(total("slots"));
    expect(outcomes.satisfied).toBe(total("satisfied"));
    expect(outcomes.dissatisfied).toBe(total("dissatisfied"));
    expect(outcomes.negative).toBe(total("negative"));
    expect(outcomes.slots).toBe(outcomes.satisfied + outcomes.dissatisfied + outcomes.negative + outcomes.ignored);
    // Each kind of outcome occurs, so none of the paper's metrics is a constant 0 in either arm.
    for (const arm of [result.arms.control, result.arms.treatment]) {
      expect(arm.satisfied).toBeGreaterThan(0);
      expect(arm.dissatisfied).toBeGreaterThan(0);
      expect(arm.negative).toBeGreaterThan(0);
    }
    expect(result.simulated.salt).toBe("simulated-hybrid-vs-finetune-monthly");
    // Control stays the no-RAG table; the treatment was rebuilt after day 2 on the simulated traffic.
    expect(result.tables.treatment).toHaveLength(2);
    expect(result.refreshes.map((r) => [r.day, r.arm])).toEqual([
      [0, "control"],
      [0, "treatment"],
      [2, "treatment"],
    ]);
    expect(result.refreshes[0].pairsWithContext).toBe(0);
    expect(result.refreshes[1].pairsWithContext).toBeGreaterThan(0);
    expect(result.deltas.map((d) => d.metric)).toEqual(["satisfiedUserOutcomes", "satisfactionRate", "dissatisfactionRate", "negativeInteractionRate", "engagementRate"]);
    for (const d of result.deltas) expect(d.ci95[0]).toBeLessThanOrEqual(d.ci95[1]);
    expect(result.table[0]).toContain("treatment vs control");
    expect(lines.some((l) => /days 0-2/.test(l))).toBe(true);
    source.close();
    const after = await EventStore.open(eventsPath);
    expect(await after.counts()).toEqual(before);
    after.close();
  });
});
