/** Runs the built CLI (bin/freshrec.js) as a user would: one child process, its exit status, output and JSON. */
import { spawnSync } from "node:child_process";
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
