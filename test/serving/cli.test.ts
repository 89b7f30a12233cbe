/**
 * `freshrec serve` and `freshrec experiment` as a user runs them: the server holds the workspace's event store, the
 * experiment commands that write go through its admin routes with --server (analyze reads through the server without
 * it), and Ctrl-C stops it cleanly.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { SystemClock } from "../../src/domain/clock.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import { servingWorkspace, TOKEN, type ServingWorkspace } from "./fixtures.js";

const ROOT = join(import.meta.dirname, "../..");
const BIN = join(ROOT, "bin/freshrec.js");
const env = { ...process.env, FRESHREC_ADMIN_TOKEN: TOKEN };

function freshrec(args: string[]): { status: number; json: any; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args, "--json"], { cwd: ROOT, encoding: "utf8", timeout: 60_000, env });
  let json: unknown = null;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    json = { unparsable: r.stdout };
  }
  return { status: r.status ?? -1, json, stderr: r.stderr };
}

/** `freshrec serve --port 0 --json ARGS` in a child process, once it says where it listens. */
async function serve(args: string[]): Promise<{ child: ChildProcess; url: string; output: { stdout: string; stderr: string } }> {
  const child = spawn(process.execPath, [BIN, "--workspace", ws.dir, "serve", "--port", "0", ...args, "--json"], { cwd: ROOT, env });
  const output = { stdout: "", stderr: "" };
  child.stdout!.on("data", (d) => (output.stdout += d));
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.on("data", (d) => {
      output.stderr += d;
      const m = /freshrec serving on (http:\/\/[^ ]+)/.exec(output.stderr);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`serve exited ${code}: ${output.stderr}`)));
  });
  return { child, url, output };
}

let ws: ServingWorkspace;
beforeAll(async () => {
  ws = await servingWorkspace();
});

describe("freshrec experiment and serve", () => {
  it("creates experiments on a stopped server's workspace, refusing bad arms with exit 2", () => {
    const created = freshrec(["--workspace", ws.dir, "experiment", "create", "cli-e1", "--arm", `control=${ws.plain}`, "--arm", "treatment=live", "--split", "50,50"]);
    expect(created.status, created.stderr).toBe(0);
    expect(created.json).toMatchObject({ name: "cli-e1", status: "active", control: "control", arms: [{ table: ws.plain }, { table: "live" }] });
    const missing = freshrec(["--workspace", ws.dir, "experiment", "create", "cli-e2", "--arm", "control=t000404", "--arm", "treatment=live"]);
    expect(missing.status).toBe(2);
    expect(missing.json.error.code).toBe("NOT_FOUND");
    const noModel = freshrec(["--workspace", ws.dir, "experiment", "simulate", "--days", "1"]);
    expect(noModel.status).toBe(2);
    expect(noModel.json.error.message).toMatch(/no live model/);
  });

  it("serves until SIGINT; experiment commands reach it with --server and fail clearly without", async () => {
    const { child, url, output } = await serve([]);
    let throughServer: any = null;
    try {
      const explored = (await (await fetch(`${url}/v1/users/${ws.world.userId(1)}/exploration?n=2`)).json()) as any;
      throughServer = freshrec(["--workspace", ws.dir, "experiment", "list", "--server", url]).json;
      expect(explored.experiment).toMatchObject({ name: "cli-e1" });
      expect(explored.table.version).toBe(explored.experiment.arm === "control" ? ws.plain : ws.rag);

      // A command that writes the log needs --server; analyze only reads, through the server that holds the store.
      const locked = freshrec(["--workspace", ws.dir, "experiment", "stop", "cli-e1"]);
      expect(locked.status).toBe(2);
      expect(locked.stderr).toMatch(/--server/);
      const beside = freshrec(["--workspace", ws.dir, "experiment", "analyze", "cli-e1"]);
      expect(beside.status, beside.stderr).toBe(0);
      expect(beside.json.readThrough).toEqual({ pid: child.pid, command: "freshrec serve" });
      const analysis = freshrec(["--workspace", ws.dir, "experiment", "analyze", "cli-e1", "--server", url]);
      expect(analysis.status, analysis.stderr).toBe(0);
      expect(analysis.json).toMatchObject({ experiment: "cli-e1", users: 1, arms: { control: expect.any(Object), treatment: expect.any(Object) } });
      expect(analysis.json.reports.html).toMatch(/experiment-cli-e1\.html$/);
      const noToken = spawnSync(process.execPath, [BIN, "--workspace", ws.dir, "experiment", "list", "--server", url, "--json"], { cwd: ROOT, encoding: "utf8", env: { ...process.env, FRESHREC_ADMIN_TOKEN: "" } });
      expect(noToken.status).toBe(2);
      expect(JSON.parse(noToken.stdout).error.message).toMatch(/401/);
    } finally {
      child.kill("SIGINT");
    }
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    expect(code).toBe(0);
    expect(JSON.parse(output.stdout)).toMatchObject({ stopped: true, url });
    expect(output.stderr).not.toContain(TOKEN);
    // The same experiment reads the same through the server and from the workspace (ISO times in both).
    const local = freshrec(["--workspace", ws.dir, "experiment", "list"]).json;
    const created = (list: any) => list.experiments.find((e: { name: string }) => e.name === "cli-e1").createdAt;
    expect(created(local)).toMatch(/^\d{4}-\d\d-\d\dT.*Z$/);
    expect(created(local)).toBe(created(throughServer));
  });

  it("serve --schedule runs the hybrid schedule in the server (status says scheduling: true), and needs a live model", async () => {
    const refused = freshrec(["--workspace", ws.dir, "serve", "--port", "0", "--schedule"]);
    expect(refused.status).toBe(2);
    expect(refused.json.error.message).toMatch(/--schedule needs a live model/);
    // Any file will do as the live model: a new schedule starts at now, so nothing is due within this test.
    const file = join(ws.dir, "models", "m-test.gguf");
    mkdirSync(join(ws.dir, "models"), { recursive: true });
    writeFileSync(file, "not read: no job is due");
    const registry = new ModelRegistry(ws.dir, new SystemClock());
    try {
      const model = await registry.register({ kind: "base", filePath: file });
      registry.makeLive(model.version, "test");
    } finally {
      registry.close();
    }
    const { child, url } = await serve(["--schedule"]);
    try {
      const response = await fetch(`${url}/v1/schedule/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
      expect(response.status).toBe(200);
      const body = (await response.json()) as any;
      expect(body.scheduling).toBe(true);
      expect(body.status.jobs.map((j: { job: string }) => j.job).sort()).toEqual(["finetune", "refresh"]);
      for (const job of body.status.jobs) expect(Date.parse(job.nextDue)).toBeGreaterThan(Date.parse(body.status.now));
    } finally {
      child.kill("SIGINT");
    }
    expect(await new Promise<number | null>((resolve) => child.on("exit", resolve))).toBe(0);
  });
});
