/**
 * The regression gate from the CLI: a fine-tune made worse on purpose (the live model trained further on its own
 * transitions with every answer shuffled to another cluster) is halted by the regression gate, not by the paper's
 * gates, and `freshrec review` shows which gate and which numbers; an unchanged model passes the same gate.
 */
import { copyFileSync, writeFileSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { DAY_MS } from "../../src/domain/clock.js";
import { sampleOf } from "../../src/llm/contracts.js";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { timedTransitions } from "../../src/mining/transitions.js";
import { runCli } from "./run.js";
import { tempDir } from "../temp-dir.js";


const freshrec = (args: string[]) => runCli(args);

describe("the regression gate from the CLI", () => {
  it("halts a fine-tune trained on shuffled answers, and review shows the gate and its numbers", async () => {
    const ws = tempDir("freshrec-regression-");
    const config = join(ws, "config.json");
    // Only the regression gate can halt here: test recall has no floor, and the embedded model's answers are
    // clusters by construction. maxRegression stays at its default (2 points).
    writeFileSync(
      config,
      JSON.stringify({
        model: { embedding: 32, layers: 1, heads: 2, feedForward: 64 },
        pretrain: { epochs: 1, windowDays: 45, heldOutDays: 7, maxSamples: 2500 },
        finetune: { windowDays: 30, testDays: 7, maxSamples: 600, minTestRecall: 0 },
      }),
    );
    const run = (...args: string[]) => freshrec(["--workspace", ws, "--config", config, ...args, "--json"]);
    expect(run("synth", "--quick", "--users", "500", "--events", "60000", "--months", "4").status).toBe(0);
    const base = run("pretrain", "--as-of", "2025-04-01");
    expect(base.status, base.stderr).toBe(0);
    const live = run("models", "list").json.models[0] as { version: string; filePath: string };
    const livePath = isAbsolute(live.filePath) ? live.filePath : join(ws, live.filePath);

    // An unchanged model, delivered as a fine-tune: delta 0, within the gate.
    const same = join(ws, "same.gguf");
    copyFileSync(livePath, same);
    const kept = run("finetune", "--model", same, "--as-of", "2025-04-15");
    expect(kept.status, kept.stderr).toBe(0);
    expect(kept.json).toMatchObject({ modelVersion: "m000002", status: "live" });
    expect(kept.json.gates.regression).toMatchObject({ live: "m000001", delta: 0, passed: true });

    // Made worse on purpose: the live model trained on the fine-tuning window's transitions with every answer
    // shuffled to another cluster (a fixed permutation), as a fine-tune on a corrupted set would be.
    const events = await EventStore.open(join(ws, "events.duckdb"));
    const asOf = Date.parse("2025-04-15");
    const transitions = await timedTransitions(events, { from: asOf - 30 * DAY_MS, to: asOf - 7 * DAY_MS }, { positiveMin: 0.5, horizon: 1 });
    const ids = (await events.clusters()).map((c) => c.id);
    events.close();
    const shuffled = new Map(ids.map((id, k) => [id, ids[(k + 37) % ids.length]]));
    const bad = join(ws, "shuffled.gguf");
    await new EmbeddedTrainer().train(
      transitions.slice(-2000).map((t) => sampleOf({ ...t, next: shuffled.get(t.next)! })),
      { from: livePath, outputPath: bad, epochs: 2, learningRate: 3e-3 },
    );

    const halted = run("finetune", "--model", bad, "--as-of", "2025-04-15");
    expect(halted.status, halted.stderr).toBe(1);
    expect(halted.json).toMatchObject({ modelVersion: "m000003", status: "halted", parent: "m000002" });
    const gates = halted.json.gates;
    expect(gates.passed).toBe(false);
    expect(gates.checks.map((c: { gate: string; canBite: boolean; passed: boolean }) => [c.gate, c.canBite, c.passed])).toEqual([
      ["exact-match", false, true],
      ["test-recall", true, true],
      ["regression", true, false],
    ]);
    expect(gates.exactMatch).toMatchObject({ basis: "by construction", probes: 0 });
    const r = gates.regression;
    expect(r).toMatchObject({ live: "m000002", maxRegression: 0.02, passed: false });
    expect(r.delta).toBeLessThan(-0.02);
    expect(r.delta).toBeCloseTo(r.candidateRecall - r.liveRecall, 10);
    expect(r.ci95[0]).toBeLessThanOrEqual(r.delta);
    expect(r.ci95[1]).toBeGreaterThanOrEqual(r.delta);
    expect(gates.reasons).toHaveLength(1);
    expect(gates.reasons[0]).toMatch(/^regression gate: test recall [\d.]+% vs live m000002 [\d.]+% on the same \d+ held-out users: -[\d.]+ points \(95% CI/);
    expect(run("models", "list").json.live).toBe("m000002");

    // review: what awaits a decision, and why, from the model's record.
    const waiting = run("review");
    expect(waiting.status, waiting.stderr).toBe(0);
    expect(waiting.json.models.map((m: { model: { version: string } }) => m.model.version)).toEqual(["m000003"]);
    const record = waiting.json.models[0];
    expect(record.haltedBecause).toBe(gates.reasons[0]);
    expect(record.gates.regression).toEqual(r);
    const shown = freshrec(["--workspace", ws, "--config", config, "review", "show", "m000003"]);
    expect(shown.status, shown.stderr).toBe(0);
    expect(shown.stdout).toContain(`halted `);
    expect(shown.stdout).toContain(gates.reasons[0]);
    expect(shown.stdout).toMatch(/FAIL {2}regression +test recall/);
    expect(shown.stdout).toMatch(/pass {2}exact-match +\(cannot bite\) by construction/);
    expect(shown.stdout).toContain("freshrec review approve|reject m000003 --reason TEXT");
    // A decision still needs a reason; with one, it is recorded after the gates it overrode.
    expect(run("review", "approve", "m000003").status).toBe(2);
    const rejected = run("review", "reject", "m000003", "--reason", "trained on a corrupted set");
    expect(rejected.status, rejected.stderr).toBe(0);
    expect(rejected.json).toMatchObject({ model: { status: "rejected" }, haltedBecause: gates.reasons[0] });
    expect(run("review").json.models).toEqual([]);
  }, 300_000);
});
