/**
 * `experiment simulate` opens the live model with the backend the config names (`llm.backend`), as every other
 * command does: the embedded engine by default, and with `llm.backend: openai` the server the config names, whose
 * failure is the command's (never the embedded engine quietly scoring in its place). Beside a running `freshrec
 * serve` it copies the events through the server that holds them.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runCli, serveCli } from "./run.js";
import { tempDir } from "../temp-dir.js";

const WORLD = ["--quick", "--users", "200", "--events", "12000", "--months", "2"];

function workspace(config: object) {
  const root = tempDir("freshrec-simulate-backend-");
  const file = join(root, "freshrec.config.json");
  writeFileSync(file, JSON.stringify(config));
  const ws = join(root, "ws");
  return { ws, file, cli: (...args: string[]) => runCli(["--workspace", ws, "--config", file, "--json", ...args], { timeoutMs: 600_000 }) };
}

describe("experiment simulate and llm.backend", () => {
  it("scores the arms with the embedded engine when the config says so, and says which backend it used; beside a running serve too", async () => {
    const { ws, file: config, cli } = workspace({
      model: { embedding: 32, layers: 1, heads: 2, feedForward: 64 },
      pretrain: { epochs: 1, windowDays: 45, heldOutDays: 7, maxSamples: 2000 },
      rag: { minSupport: 1 },
      experiment: { resamples: 100 },
    });
    for (const args of [["synth", ...WORLD], ["pretrain"]]) {
      const r = cli(...args);
      expect(r.status, r.stderr).toBe(0);
    }
    const simulated = cli("experiment", "simulate", "--days", "1");
    expect(simulated.status, simulated.stderr).toBe(0);
    expect(simulated.json.backend).toEqual({ kind: "embedded", description: expect.stringContaining("embedded") });
    expect(simulated.json.simulated.slates).toBeGreaterThan(0);

    // Beside a running serve, which holds the workspace's event store: the copy is read through it, and the test on
    // the same users and events is the same test.
    const server = await serveCli(ws, config);
    try {
      const beside = cli("experiment", "simulate", "--days", "1");
      expect(beside.status, beside.stderr).toBe(0);
      expect(beside.stderr).toContain(`reading the events through freshrec serve (PID ${server.child.pid})`);
      expect(beside.json.simulated).toEqual(simulated.json.simulated);
      expect(beside.json.deltas).toEqual(simulated.json.deltas);
    } finally {
      server.child.kill("SIGINT");
    }
    expect(await server.exited).toBe(0);
  }, 600_000);

  it("with llm.backend openai it asks the configured server for the live model's answers: a server that is down fails the command, naming it", () => {
    // Nothing listens on the discard port: what the simulation would have asked reaches no one.
    const baseURL = "http://127.0.0.1:9/v1";
    const { cli } = workspace({ llm: { backend: "openai", openai: { baseURL, model: "tiny", apiKeyEnv: null, maxRetries: 0 } }, rag: { minSupport: 1 } });
    const synth = cli("synth", ...WORLD);
    expect(synth.status, synth.stderr).toBe(0);
    // The configured server model becomes the live version (a hosted-model file in the registry; no request sent).
    const base = cli("pretrain");
    expect(base.status, base.stderr).toBe(0);
    expect(base.json).toMatchObject({ status: "live", backend: "openai" });

    const simulated = cli("experiment", "simulate", "--days", "1");
    expect(simulated.status).not.toBe(0);
    expect(simulated.json.error.message).toContain(`cannot reach ${baseURL}`);
  }, 600_000);
});
