/**
 * The hybrid loop from the CLI on a small synthetic world with a tiny real model: pretrain, refresh (incremental),
 * finetune through the gates (pass and halt), review, a simulated month of the schedule, and replay.
 */
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { BIN, ROOT, runCli } from "./run.js";
import { tempDir } from "../temp-dir.js";


const freshrec = (args: string[]) => runCli([...args, "--json"]);

/** Starts a command, sends SIGINT once its progress has started, and resolves with its exit code and output. */
function interrupted(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args, "--json"], { cwd: ROOT });
    let stdout = "";
    let stderr = "";
    let sent = false;
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => {
      stderr += d;
      if (!sent && /started/.test(stderr)) {
        sent = true;
        child.kill("SIGINT");
      }
    });
    child.on("exit", (status) => resolve({ status, stdout, stderr }));
  });
}

describe("the hybrid loop from the CLI", () => {
  const ws = tempDir("freshrec-loop-");
  const tiny = {
    model: { embedding: 32, layers: 1, heads: 2, feedForward: 64 },
    pretrain: { epochs: 1, windowDays: 45, heldOutDays: 7, maxSamples: 3000 },
    finetune: { epochs: 1, windowDays: 30, testDays: 7, maxSamples: 600, minExactMatchRate: 0.5, minTestRecall: 0 },
    rag: { minSupport: 1 },
  };
  const passing = join(ws, "passing.json");
  const halting = join(ws, "halting.json");
  // The paper's in-prompt RAG, whose table builds are incremental (the default fusion refresh is checked after).
  const prompted = join(ws, "prompted.json");
  writeFileSync(passing, JSON.stringify(tiny));
  writeFileSync(prompted, JSON.stringify({ ...tiny, rag: { ...tiny.rag, method: "prompt" } }));
  writeFileSync(halting, JSON.stringify({ ...tiny, finetune: { ...tiny.finetune, minTestRecall: 1 } }));
  const run = (config: string, ...args: string[]) => freshrec(["--workspace", ws, "--config", config, ...args]);

  it("pretrains, refreshes, fine-tunes behind the gates, reviews and simulates the schedule", async () => {
    expect(run(passing, "synth", "--quick", "--users", "500", "--events", "60000", "--months", "4").status).toBe(0);

    // No model yet: the loop says what to do, as bad usage.
    const early = run(passing, "refresh");
    expect(early.status).toBe(2);
    expect(early.json.error.message).toMatch(/pretrain/);

    const base = run(passing, "pretrain", "--as-of", "2025-04-01");
    expect(base.status, base.stderr).toBe(0);
    expect(base.json).toMatchObject({ modelVersion: "m000001", status: "live" });
    expect(base.json.evaluation.transitions).toBeGreaterThan(0);
    // Held-out top-1 is also measured with the contexts a refresh at the split would retrieve, beside the successor baseline.
    expect(base.json.evaluation.modelTop1WithContext).toBeGreaterThanOrEqual(0);
    expect(base.json.evaluation.successorTop1).toBeGreaterThan(0);
    // Half the transitions carry their retrieved context, as fine-tuning samples do.
    expect(base.stderr).toMatch(/pretraining on \d+ transitions \((\d+) with a retrieved RAG context\)/);
    const withContext = Number(/\((\d+) with a retrieved RAG context\)/.exec(base.stderr)![1]);
    expect(withContext).toBeGreaterThan(0);
    // The base model faces the fine-tuning gates on the held-out days (reported; it goes live regardless).
    expect(base.json.gates).toMatchObject({ exactMatchRate: 1, passed: true, testExamples: expect.any(Number) });
    expect(base.json.gates.testExamples).toBeGreaterThan(0);
    expect(base.json.window.to).toBe("2025-03-25T00:00:00.000Z"); // 7 held-out days before the as-of time

    const first = run(prompted, "refresh", "--as-of", "2025-04-01");
    expect(first.status, first.stderr).toBe(0);
    expect(first.json.pairs).toBe(120 * 119);
    expect(first.json.rescored).toBe(first.json.pairs); // nothing to copy from
    expect(first.json.published).toBe(true);
    // Same model, same window: every context is unchanged, so every pair is copied.
    const again = run(prompted, "refresh", "--as-of", "2025-04-01");
    expect(again.json).toMatchObject({ rescored: 0, copied: first.json.pairs });
    const full = run(prompted, "refresh", "--as-of", "2025-04-01", "--full");
    expect(full.json).toMatchObject({ rescored: first.json.pairs, copied: 0 });
    // A dry run of a later refresh says what it would score; the embedded model has no per-token price; nothing is built.
    const dry = run(prompted, "refresh", "--as-of", "2025-04-03", "--dry-run");
    expect(dry.status, dry.stderr).toBe(0);
    expect(dry.json).toMatchObject({ dryRun: true, pairs: first.json.pairs, copiedFrom: full.json.tableVersion, cost: null });
    expect(dry.json.rescore).toBeGreaterThan(0);
    expect(dry.json.rescore + dry.json.copy).toBe(first.json.pairs);
    expect(run(prompted, "tables", "list").json.tables.at(-1).version).toBe(full.json.tableVersion);

    // Ctrl-C mid-build: the live table stays live, the partial build is marked failed, a re-run builds cleanly.
    const stopped = await interrupted(["--workspace", ws, "--config", prompted, "refresh", "--as-of", "2025-04-03", "--full"]);
    expect(stopped.status, stopped.stderr).toBe(1);
    expect(JSON.parse(stopped.stdout).error.code).toBe("CANCELLED");
    const afterStop = run(prompted, "tables", "list").json;
    expect(afterStop.live).toBe(full.json.tableVersion);
    expect(afterStop.tables.at(-1).status).toBe("failed");
    const rerun = run(prompted, "refresh", "--as-of", "2025-04-03");
    expect(rerun.status, rerun.stderr).toBe(0);
    expect(run(prompted, "tables", "list").json.live).toBe(rerun.json.tableVersion);

    // The default refresh fuses the live model's prior with the fresh counts: the prior is scored once for the
    // model version (every pair), later refreshes and dry runs prompt nothing; rows explain themselves.
    const fused = run(passing, "refresh", "--as-of", "2025-04-05");
    expect(fused.status, fused.stderr).toBe(0);
    expect(fused.json).toMatchObject({ pairs: first.json.pairs, rescored: first.json.pairs, copied: 0, published: true, fusion: { status: "fitted" } });
    expect(fused.json.fusion.slice.to).toBe("2025-04-05T00:00:00.000Z");
    // The window served is the best-fitting candidate, and the fit with the prior is never below counts alone.
    const best = fused.json.fusion.windows.reduce((b: { days: number; perTransition: number }, w: { days: number; perTransition: number }) => (w.perTransition > b.perTransition ? w : b));
    expect(fused.json.fusion.windowDays).toBe(best.days);
    expect(fused.json.fusion.perTransition).toBeGreaterThanOrEqual(fused.json.fusion.countsOnlyPerTransition);
    // The fit records how much of the prior entered as its lift (fusion.ts), between the whole prior and the lift alone.
    expect(fused.json.fusion.params.lift).toBeGreaterThanOrEqual(0);
    expect(fused.json.fusion.params.lift).toBeLessThanOrEqual(1);
    const fusedAgain = run(passing, "refresh", "--as-of", "2025-04-07");
    expect(fusedAgain.json).toMatchObject({ rescored: 0, copied: 0, published: true });
    const fusedDry = run(passing, "refresh", "--as-of", "2025-04-09", "--dry-run");
    expect(fusedDry.json).toMatchObject({ dryRun: true, method: "fusion", rescore: 0, copy: 0, cost: null });
    const shown = run(passing, "tables", "show", "live", "--limit", "1").json.rows[0];
    const explained = run(passing, "tables", "show", "live", "--pair", `${shown.c1},${shown.c2}`).json.rows[0];
    expect(explained.explanation.answers.map((a: { cluster: string }) => a.cluster)).toEqual(explained.answers.map((a: { cluster: string }) => a.cluster));
    expect(explained.explanation.answers[0].llmPrior).toEqual(expect.any(Number));

    const pass = run(passing, "finetune", "--as-of", "2025-04-15");
    expect(pass.status, pass.stderr).toBe(0);
    expect(pass.json).toMatchObject({ modelVersion: "m000002", status: "live", parent: "m000001" });
    // Times in --json output are ISO like the API's (the stores keep epoch ms).
    expect(pass.json.set.trainWindow.to).toMatch(/^\d{4}-\d\d-\d\dT.*Z$/);
    expect(Date.parse(pass.json.set.trainWindow.to)).toBeLessThanOrEqual(Date.parse("2025-04-15"));

    const halt = run(halting, "finetune", "--as-of", "2025-04-20");
    expect(halt.status).toBe(1);
    expect(halt.json).toMatchObject({ modelVersion: "m000003", status: "halted", parent: "m000002" });
    expect(halt.json.gates.reasons.join(" ")).toMatch(/recall/);
    let models = run(passing, "models", "list").json;
    expect(models.live).toBe("m000002");

    const bad = run(passing, "review", "approve", "m000002", "--reason", "already live");
    expect(bad.status).toBe(2);
    const approve = run(passing, "review", "approve", "m000003", "--reason", "recall dip from a holiday week");
    expect(approve.status, approve.stderr).toBe(0);
    expect(approve.json.change).toMatchObject({ to: "live", reason: expect.stringContaining("holiday week") });
    expect(approve.json.change.at).toMatch(/^\d{4}-\d\d-\d\dT.*Z$/);
    models = run(passing, "models", "list").json;
    expect(models.live).toBe("m000003");
    const approved = models.models.find((m: { version: string }) => m.version === "m000003");
    expect(Date.parse(approved.createdAt)).toBeGreaterThan(0);
    expect(Date.parse(approved.window.to)).toBeLessThanOrEqual(Date.parse("2025-04-20"));
    expect(models.models.find((m: { version: string }) => m.version === "m000002").status).toBe("retired");

    // A simulated month of the schedule: refresh every 2 days (from the Unix epoch), fine-tune on May 1st.
    const sim = run(passing, "schedule", "run", "--simulate", "--from", "2025-04-21", "--to", "2025-05-06");
    expect(sim.status, sim.stderr).toBe(0);
    const runs = sim.json.runs as { job: string; status: string; due: string; detail: Record<string, unknown> }[];
    expect(runs.filter((r) => r.job === "finetune").map((r) => r.due)).toEqual(["2025-05-01T00:00:00.000Z"]);
    const refreshes = runs.filter((r) => r.job === "refresh");
    expect(refreshes.length).toBe(7);
    expect(refreshes.every((r) => r.status === "succeeded")).toBe(true);
    // The refresh due with the fine-tune runs after it, with the new model.
    const afterFinetune = refreshes.find((r) => Date.parse(r.due) >= Date.parse("2025-05-01"))!;
    expect(afterFinetune.detail.modelVersion).toBe(runs.find((r) => r.job === "finetune")!.detail.modelVersion);
    // The live schedule's state is untouched by a simulation.
    const status = run(passing, "schedule", "status");
    expect(status.json.recent).toEqual([]);
    expect(status.json.jobs.map((j: { job: string; nextDue: string }) => [j.job, Date.parse(j.nextDue) > 0])).toEqual([
      ["finetune", true],
      ["refresh", true],
    ]);
    // pause and resume answer the job's state, with its times as ISO too.
    const paused = run(passing, "schedule", "pause", "refresh", "--reason", "event pipeline outage");
    expect(paused.json).toMatchObject({ job: "refresh", paused: true, pauseReason: "event pipeline outage", pausedAt: expect.stringMatching(/Z$/) });
    expect(run(passing, "schedule", "resume", "refresh").json).toMatchObject({ paused: false, pausedAt: null });
    // Run details carry their data as-of time as ISO too; tables answer the same view as the API's.
    expect(refreshes[0].detail.dataAsOf).toMatch(/^2025-04-2\dT00:00:00\.000Z$/);
    const listed = run(passing, "tables", "list").json.tables.at(-1);
    expect(listed).toMatchObject({ createdAt: expect.stringMatching(/Z$/), finishedAt: expect.stringMatching(/Z$/), ragAsOf: expect.stringMatching(/Z$/), topN: 10 });
    const rolledBack = run(passing, "tables", "rollback", "--reason", "test");
    expect(rolledBack.status, rolledBack.stderr).toBe(0);
    expect(rolledBack.json.table).toMatchObject({ version: rolledBack.json.live, createdAt: expect.stringMatching(/Z$/) });
  }, 600_000);
});
