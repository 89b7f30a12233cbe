/**
 * The embedded workspace while a `freshrec schedule run` worker runs (issue 19, item 2): the worker holds the
 * workspace's event store for its whole life (DuckDB opens a file in one process at a time) and shares it for reading
 * as `freshrec serve` does (src/data/event-store-share.ts), so `analyze drift` beside it reads the events through the
 * worker, with the same result as without it, and says so; a command that writes the events is still refused, naming
 * the worker. test/cli/embedded-serve.test.ts covers the same beside `freshrec serve`.
 *
 * The worker runs live, on the system clock, as test/cli/postgres-schedule.test.ts's does: the refresh falls due every
 * two seconds, so the analysis reads through a worker that is running its jobs.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { shareFilePath } from "../../src/data/event-store-share.js";
import { BIN, ROOT, runCli } from "./run.js";
import { tempDir } from "../temp-dir.js";

interface Worker {
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  stderr(): string;
}

function startWorker(workspace: string, config: string): Worker {
  const child = spawn(process.execPath, [BIN, "--workspace", workspace, "--config", config, "--json", "schedule", "run"], { cwd: ROOT });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  child.stdout!.resume();
  const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)));
  return { child, exited, stderr: () => stderr };
}

/** Asks `probe` until it answers something, within the test's timeout (the worker's cadence is two seconds). */
async function until<T>(probe: () => T | null | undefined | false, what: string, worker: Worker): Promise<T> {
  for (let attempt = 0; attempt < 600; attempt++) {
    const answer = probe();
    if (answer) return answer;
    if (worker.child.exitCode !== null) throw new Error(`the worker exited (${worker.child.exitCode}) before ${what}: ${worker.stderr()}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`never: ${what}\n${worker.stderr()}`);
}

/** An analysis's result without where it was read and where its reports went. */
function analysis(result: Record<string, unknown>) {
  const { reports: _reports, readThrough: _readThrough, ...rest } = result;
  return rest;
}

describe("the embedded workspace while a schedule run worker runs", () => {
  it("analyze drift reads the events through the worker: the same analysis as without it, naming the worker; a writer is refused", async () => {
    const root = tempDir("freshrec-worker-");
    const ws = join(root, "ws");
    const config = join(root, "freshrec.config.json");
    writeFileSync(
      config,
      JSON.stringify({
        model: { embedding: 32, layers: 1, heads: 2, feedForward: 64 },
        pretrain: { epochs: 1, windowDays: 45, heldOutDays: 7, maxSamples: 3000 },
        rag: { minSupport: 1 },
        // The refresh every two seconds; the fine-tune only on January 1st, so it stays out of the test.
        schedule: { refreshCadence: "*/2 * * * * *", finetuneCadence: "0 0 1 1 *" },
      }),
    );
    const cli = (...args: string[]) => runCli(["--workspace", ws, "--config", config, "--json", ...args], { timeoutMs: 600_000 });
    const drift = ["analyze", "drift", "--min-support", "3"];
    for (const args of [["synth", "--quick", "--users", "400", "--events", "40000", "--months", "3"], ["pretrain"]]) {
      const r = cli(...args);
      expect(r.status, r.stderr).toBe(0);
    }
    const before = cli(...drift);
    expect(before.status, before.stderr).toBe(0);
    expect(before.json.readThrough).toBeNull();
    expect(before.json.pairsCompared).toBeGreaterThan(0);

    const worker = startWorker(ws, config);
    try {
      // The worker drives the schedule and has run a refresh (its runs, read from the schedule store beside it).
      await until(
        () => {
          const s = cli("schedule", "status");
          expect(s.status, s.stderr).toBe(0);
          return s.json.driver?.pid === worker.child.pid && s.json.recent.some((r: { job: string; status: string }) => r.job === "refresh" && r.status === "succeeded");
        },
        "the worker ran a refresh",
        worker,
      );
      const beside = cli(...drift);
      expect(beside.status, beside.stderr).toBe(0);
      expect(beside.json.readThrough).toEqual({ pid: worker.child.pid, command: "freshrec schedule run" });
      expect(analysis(beside.json)).toEqual(analysis(before.json));
      const text = runCli(["--workspace", ws, "--config", config, ...drift]);
      expect(text.status, text.stderr).toBe(0);
      expect(text.stdout).toContain(`${before.json.events} events read through freshrec schedule run (PID ${worker.child.pid})`);

      // A writer of the events is refused as before, naming the worker.
      const events = join(root, "more-events.csv");
      writeFileSync(events, `user_id,item_id,ts\nsomeone,x,2025-01-01T00:00:00Z\n`);
      const refused = cli("ingest", "--events", events);
      expect(refused.status).toBe(2);
      expect(refused.json.error.message).toContain(`PID ${worker.child.pid}`);
    } finally {
      worker.child.kill("SIGINT");
    }
    expect(await worker.exited, worker.stderr()).toBe(0);
    // The worker took its share file with it; the file itself is read again.
    expect(existsSync(shareFilePath(join(ws, "events.duckdb")))).toBe(false);
    const alone = cli(...drift);
    expect(alone.status, alone.stderr).toBe(0);
    expect(alone.json.readThrough).toBeNull();
    expect(analysis(alone.json)).toEqual(analysis(before.json));
  }, 900_000);
});
