/**
 * The schedule on `store.url` (issue 19) through the CLI, as a deployment runs it: one `schedule run` worker process on
 * the database, and from other processes `schedule status` (reading the worker's runs and naming it), `schedule
 * pause|resume` (which the running worker honours), a second worker and `serve --schedule` refused while it runs
 * (exit 2, naming it); then `serve --schedule` as the one driver. Nothing of the schedule is written to a workspace file.
 *
 * The worker runs live, on the system clock: the refresh falls due every two seconds (a six-field cron pattern), so
 * runs happen within the test; the events are in the past, and each refresh runs as of its due time, as it would live.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PostgresScheduleStore } from "../../src/update/schedule/index.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { BIN, ROOT, runCli } from "./run.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();
const TOKEN = "schedule-admin-token-0123456789";

interface Worker {
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  stderr(): string;
  stdout(): string;
}

/** `freshrec schedule run` (or other `args`) as a long-running process. */
function startWorker(workspace: string, config: string, args = ["schedule", "run"]): Worker {
  const child = spawn(process.execPath, [BIN, "--workspace", workspace, "--config", config, "--json", ...args], { cwd: ROOT, env: { ...process.env, FRESHREC_ADMIN_TOKEN: TOKEN } });
  let stderr = "";
  let stdout = "";
  child.stderr!.on("data", (d) => (stderr += d));
  child.stdout!.on("data", (d) => (stdout += d));
  const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)));
  return { child, exited, stderr: () => stderr, stdout: () => stdout };
}

/** Asks `probe` until it answers something, within the test's timeout (the worker's cadence is two seconds). */
async function until<T>(probe: () => T | null | undefined | false, what: string, worker?: Worker): Promise<T> {
  for (let attempt = 0; attempt < 600; attempt++) {
    const answer = probe();
    if (answer) return answer;
    if (worker && worker.child.exitCode !== null) throw new Error(`the worker exited (${worker.child.exitCode}) before ${what}: ${worker.stderr()}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`never: ${what}${worker ? `\n${worker.stderr()}` : ""}`);
}

describe("store.url: the schedule on PostgreSQL through the CLI", () => {
  it("one worker runs the schedule on the database; status, pause and resume from other processes; a second worker is refused", async () => {
    const url = await database();
    const root = tempDir("freshrec-pgschedule-");
    const worker = join(root, "worker");
    const config = join(root, "freshrec.config.json");
    writeFileSync(
      config,
      JSON.stringify({
        store: { url },
        model: { embedding: 32, layers: 1, heads: 2, feedForward: 64 },
        pretrain: { epochs: 1, windowDays: 45, heldOutDays: 7, maxSamples: 3000 },
        rag: { minSupport: 1 },
        // The refresh every two seconds; the fine-tune only on January 1st, so it stays out of the test.
        schedule: { refreshCadence: "*/2 * * * * *", finetuneCadence: "0 0 1 1 *" },
      }),
    );
    const cli = (workspace: string, ...args: string[]) => runCli(["--workspace", workspace, "--config", config, "--json", ...args], { timeoutMs: 600_000 });
    const status = () => {
      const r = cli(join(root, "admin"), "schedule", "status");
      expect(r.status, r.stderr).toBe(0);
      return r.json;
    };
    const refreshOf = (s: any) => s.jobs.find((j: { job: string }) => j.job === "refresh");

    const synth = cli(worker, "synth", "--quick", "--users", "400", "--events", "40000", "--months", "3");
    expect(synth.status, synth.stderr).toBe(0);
    const base = cli(worker, "pretrain");
    expect(base.status, base.stderr).toBe(0);

    // Before any worker: the database's schedule is empty and undriven.
    const empty = status();
    expect(empty).toMatchObject({ driver: null, recent: [] });
    expect(empty.jobs.map((j: { job: string }) => j.job)).toEqual(["finetune", "refresh"]);

    const a = startWorker(worker, config);
    try {
      // Runs logged in the database by the worker, read from another process.
      const ran = await until(() => {
        const s = status();
        return s.recent.filter((r: { job: string; status: string }) => r.job === "refresh" && r.status === "succeeded").length >= 2 && s;
      }, "two refreshes ran", a);
      expect(ran.driver).toMatchObject({ host: hostname(), pid: a.child.pid });
      // The job's last run: the one running now, or the last to end.
      expect(refreshOf(ran).lastRun).toMatchObject({ job: "refresh", status: expect.stringMatching(/^(running|succeeded)$/) });
      const done = ran.recent.filter((r: { job: string; status: string }) => r.job === "refresh" && r.status === "succeeded").at(-1);
      expect(done.detail.tableVersion).toMatch(/^t\d+/);
      // The tables those runs published are the database's, which every replica follows.
      const tables = cli(join(root, "admin"), "tables", "list");
      expect(tables.json.tables.map((t: { version: string }) => t.version)).toContain(done.detail.tableVersion);

      // A second worker, and a server that would run the schedule too, are refused naming the first.
      for (const args of [["schedule", "run"], ["serve", "--port", "0", "--schedule"]]) {
        const second = cli(join(root, "second"), ...args);
        expect(second.status, second.stderr).toBe(2);
        expect(second.json.error.message).toContain(`already driven by host ${hostname()} pid ${a.child.pid}`);
      }
      // The refused ones changed nothing: the worker's run, if one was running, is not failed as interrupted.
      expect(status().recent.filter((r: { status: string }) => r.status === "failed")).toEqual([]);

      // Paused from another process: the worker runs no more refreshes, and counts the due times it skips.
      const paused = cli(join(root, "admin"), "schedule", "pause", "refresh", "--reason", "event pipeline outage");
      expect(paused.status, paused.stderr).toBe(0);
      expect(paused.json).toMatchObject({ job: "refresh", paused: true, pauseReason: "event pipeline outage" });
      const runsAtPause = refreshOf(status()).counters.runs;
      const skipping = await until(() => {
        const refresh = refreshOf(status());
        return refresh.counters.skippedWhilePaused >= 2 && refresh;
      }, "the worker skipped refreshes while paused", a);
      expect(skipping).toMatchObject({ paused: true, pauseReason: "event pipeline outage", nextDue: null });
      expect(skipping.counters.runs).toBe(runsAtPause);

      // Resumed from yet another process: the worker runs refreshes again.
      const resumed = cli(join(root, "other"), "schedule", "resume", "refresh");
      expect(resumed.status, resumed.stderr).toBe(0);
      expect(resumed.json).toMatchObject({ job: "refresh", paused: false });
      await until(() => refreshOf(status()).counters.runs > runsAtPause, "a refresh ran after resume", a);
    } finally {
      a.child.kill("SIGINT");
    }
    expect(await a.exited, a.stderr()).toBe(0);
    const stopped = JSON.parse(a.stdout());

    // After the worker: another process reads exactly the runs it made, and nobody drives the schedule.
    const after = status();
    expect(after.driver).toBeNull();
    const store = await PostgresScheduleStore.open(url);
    try {
      const runs = await store.runs();
      expect(runs).toHaveLength(stopped.runs);
      expect(runs.every((r) => r.status !== "running")).toBe(true);
      expect(after.recent.map((r: { id: number }) => r.id)).toEqual(runs.slice(-10).map((r) => r.id));
      // One run per due time.
      expect(new Set(runs.map((r) => `${r.job}@${r.due}`)).size).toBe(runs.length);
    } finally {
      await store.close();
    }
    expect(after.jobs).toEqual(stopped.status.jobs);

    // The schedule driven by a server instead (serve --schedule): it runs the jobs, answers its status as scheduling,
    // and a worker started beside it is refused naming it.
    const server = startWorker(join(root, "api"), config, ["serve", "--port", "0", "--schedule"]);
    try {
      const url = await until(() => /freshrec serving on (http:\/\/\S+)/.exec(server.stderr())?.[1], "the server listens", server);
      const served = (await (await fetch(`${url}/v1/schedule/status`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as any;
      expect(served.scheduling).toBe(true);
      expect(served.status.jobs.map((j: { job: string }) => j.job)).toEqual(["finetune", "refresh"]);
      expect(status().driver).toMatchObject({ host: hostname(), pid: server.child.pid });
      const refused = cli(join(root, "second"), "schedule", "run");
      expect(refused.status, refused.stderr).toBe(2);
      expect(refused.json.error.message).toContain(`already driven by host ${hostname()} pid ${server.child.pid}`);
      const before = refreshOf(after).counters.runs;
      await until(() => refreshOf(status()).counters.runs > before, "the server ran a refresh", server);
    } finally {
      server.child.kill("SIGINT");
    }
    expect(await server.exited, server.stderr()).toBe(0);
    expect(status().driver).toBeNull();
    for (const dir of [worker, join(root, "admin"), join(root, "other"), join(root, "second"), join(root, "api")]) {
      expect(existsSync(join(dir, "schedule.sqlite")), dir).toBe(false);
    }
  }, 900_000);
});
