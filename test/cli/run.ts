/** Runs the built CLI (bin/freshrec.js) as a user would: one child process, its exit status, output and JSON; or a `serve` process. */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { join } from "node:path";

export const ROOT = join(import.meta.dirname, "../..");
export const BIN = join(ROOT, "bin/freshrec.js");

export interface CliRun {
  readonly status: number;
  readonly stdout: string;
  readonly stderr: string;
  /** stdout parsed as JSON, or `{ unparsable: stdout }` (what --json promises is one object). */
  readonly json: any;
}

export function runCli(args: readonly string[], options: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {}): CliRun {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: options.cwd ?? ROOT,
    encoding: "utf8",
    timeout: options.timeoutMs ?? 300_000,
    env: options.env ? { ...process.env, ...options.env } : process.env,
  });
  let json: unknown;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    json = { unparsable: r.stdout };
  }
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, json };
}

/** `freshrec serve --port 0` in a child process, once it says where it listens. */
export async function serveCli(workspace: string, configFile: string): Promise<{ child: ChildProcess; url: string; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [BIN, "--workspace", workspace, "--config", configFile, "serve", "--port", "0", "--json"], { cwd: ROOT });
  const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)));
  let stderr = "";
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.on("data", (d) => {
      stderr += d;
      const m = /freshrec serving on (http:\/\/[^ ]+)/.exec(stderr);
      if (m) resolve(m[1]);
    });
    void exited.then((code) => reject(new Error(`serve exited ${code}: ${stderr}`)));
  });
  return { child, url, exited };
}

/** The live table a server holds in memory, asked until it is `version` (a publish reaches it through the database). */
export async function servingLive(url: string, version: string): Promise<string | null> {
  let serving: string | null = null;
  // Bounded by the test's timeout, not by a time this asserts: the servers poll every 50 ms besides listening.
  for (let attempt = 0; attempt < 600 && serving !== version; attempt++) {
    if (attempt) await new Promise((r) => setTimeout(r, 50));
    const body = (await (await fetch(`${url}/v1/tables`)).json()) as { serving: { binding: string; version: string | null }[] };
    serving = body.serving.find((b) => b.binding === "live")?.version ?? null;
  }
  return serving;
}
