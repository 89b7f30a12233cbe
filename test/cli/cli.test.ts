import type { Command } from "commander";
import { describe, expect, it } from "vitest";
import { buildProgram } from "../../src/cli/program.js";
import { execFileSync } from "node:child_process";
import { writeFileSync, existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { BIN, ROOT, runCli } from "./run.js";
import { tempDir } from "../temp-dir.js";

const ML_SMALL = join(ROOT, "../shared/datasets/movielens-latest-small");

const freshrec = (args: string[], cwd = ROOT) => runCli(args, { cwd, timeoutMs: 120_000 });

describe("freshrec CLI contract", () => {
  const ws = tempDir("freshrec-cli-");

  it("ingests MovieLens and prints exactly one JSON object with --json", () => {
    const r = freshrec(["--workspace", ws, "--json", "ingest", "--dataset", "movielens", "--path", ML_SMALL]);
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    const result = JSON.parse(lines[0]);
    expect(result).toMatchObject({ events: 100836, items: 9742, badRows: 0, skippedDuplicates: 0 });
    expect(typeof result.clusters).toBe("number");
  });

  it("analyses drift and writes the reports", () => {
    const config = join(ws, "low-support.json");
    writeFileSync(config, JSON.stringify({ drift: { minSupport: 3 } }));
    const r = freshrec(["--workspace", ws, "--config", config, "--json", "analyze", "drift"]);
    expect(r.status).toBe(0);
    const result = JSON.parse(r.stdout);
    expect(result.pairsCompared).toBeGreaterThan(0);
    expect(result.meanJaccard).toBeGreaterThan(0);
    expect(result.meanJaccard).toBeLessThan(1);
    expect(result.months.length).toBeGreaterThan(0);
    expect(result.months[0]).toEqual({ month: expect.stringMatching(/^\d{4}-\d{2}$/), meanJaccard: expect.any(Number), pairs: expect.any(Number) });
    const html = readFileSync(result.reports.html, "utf8");
    expect(html).toContain("<svg");
    expect(existsSync(result.reports.md)).toBe(true);
  });

  it("says there is nothing to compare, not NaN, when no pair has the support", () => {
    const r = freshrec(["--workspace", ws, "analyze", "drift", "--min-support", "100000"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("nothing to compare: no history pair had 100000 or more novel transitions in two consecutive months");
    expect(r.stdout).not.toContain("NaN");
    const md = readFileSync(r.stdout.match(/, (\S+\.md)/)![1], "utf8");
    expect(md).not.toContain("NaN");
  });

  it("exits 2 with the field named on a bad config", () => {
    const config = join(ws, "bad.json");
    writeFileSync(config, JSON.stringify({ drift: { topK: -1 } }));
    const r = freshrec(["--workspace", ws, "--config", config, "--json", "analyze", "drift"]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('field "drift.topK": got -1');
    expect(JSON.parse(r.stdout).error.code).toBe("BAD_CONFIG");
  });

  it("exits 2 on bad usage and bad input, 0 on help", () => {
    expect(freshrec(["no-such-command"]).status).toBe(2);
    expect(freshrec(["--workspace", ws, "analyze", "drift", "--to", "yesterday"]).status).toBe(2);
    const bad = freshrec(["--workspace", ws, "ingest", "--dataset", "movielens", "--path", ws]);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("not a MovieLens folder");
    const help = freshrec(["ingest", "--help"]);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain("Examples:");
  });

  it("prints one JSON error object on stdout for a usage error with --json", () => {
    const r = freshrec(["--json", "ingest", "--evnts", "x.csv"]);
    expect(r.status).toBe(2);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]).error).toEqual({ code: "BAD_INPUT", message: expect.stringContaining("unknown option '--evnts'") });
    expect(r.stderr).toContain("--evnts");
    // Without --json, stdout stays empty (the why is on stderr).
    expect(freshrec(["tables", "show"]).stdout).toBe("");
  });

  it("runs bench suites by name and refuses an unknown one with the list (exit 2)", () => {
    const help = freshrec(["bench", "--help"]);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/Suites: .*mining.*serve/);
    const r = freshrec(["--json", "bench", "no-such-suite"]);
    expect(r.status).toBe(2);
    expect(JSON.parse(r.stdout).error.message).toMatch(/unknown bench suite "no-such-suite": one of .*replay.*serve/);
    expect(freshrec(["bench", "run"]).status).toBe(2); // the runner itself is not a suite
  });

  it("has an example in the help of every command", () => {
    // Walks the command tree in process (spawning the CLI per command would take a minute) and renders each
    // command's help as --help does, text added after it included.
    const missing: string[] = [];
    const visit = (command: Command, path: string[]) => {
      const leaves = command.commands.filter((c) => c.name() !== "help");
      if (leaves.length === 0) {
        let help = "";
        command.configureOutput({ writeOut: (text) => (help += text), writeErr: (text) => (help += text) });
        command.outputHelp();
        if (!help.includes("Example")) missing.push(path.join(" "));
      }
      for (const sub of leaves) visit(sub, [...path, sub.name()]);
    };
    const program = buildProgram();
    expect(program.commands.length).toBeGreaterThan(10);
    visit(program, []);
    expect(missing).toEqual([]);
  });

  it("prints the documented defaults as a valid config", () => {
    const r = freshrec(["config", "--print-defaults"]);
    expect(r.status).toBe(0);
    const defaults = JSON.parse(r.stdout);
    expect(defaults.drift).toEqual({ topK: 5, minSupport: 10 });
    const file = join(ws, "defaults.json");
    writeFileSync(file, r.stdout);
    expect(freshrec(["--config", file, "config"]).status).toBe(0);
    const described = execFileSync(process.execPath, [BIN, "config", "--describe"], { encoding: "utf8" });
    expect(described).toContain("data.badRowThreshold = 0.01");
  });
});
