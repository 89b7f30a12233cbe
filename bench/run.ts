/**
 * Benchmark suites: `npm run bench -- SUITE` or `freshrec bench SUITE` runs bench/SUITE.ts, prints its table and
 * writes bench/results/SUITE.json as `{ suite, machine, results: { KEY: number } }` (README.md, "Benchmarks"). A suite module
 * exports `run(): Promise<BenchSuiteResult>`; targets are reported beside the numbers, never asserted in tests.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { arch, cpus, platform, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { benchSuites, isBenchSuite } from "../src/cli/bench-suites.js";

export interface BenchRow {
  /** What was measured, in words. */
  readonly metric: string;
  readonly value: number;
  readonly unit: string;
  /** The target, e.g. "<= 5 s"; empty when there is none. */
  readonly target?: string;
  readonly met?: boolean;
}

export interface BenchSuiteResult {
  /** The keys named by the issue, written to the JSON file. */
  readonly results: Record<string, number>;
  readonly rows: readonly BenchRow[];
}

export interface BenchOutcome extends BenchSuiteResult {
  readonly suite: string;
  readonly machine: { readonly cpus: number; readonly cpuModel: string; readonly memoryGiB: number; readonly platform: string; readonly node: string };
  /** Where the results were written. */
  readonly file: string;
}

const here = dirname(fileURLToPath(import.meta.url));

/** Runs one suite and writes bench/results/SUITE.json. */
export async function runBenchSuite(suite: string): Promise<BenchOutcome> {
  if (!isBenchSuite(suite)) throw new Error(`no bench suite ${JSON.stringify(suite)}: one of ${benchSuites().join(", ")}`);
  const mod = (await import(pathToFileURL(join(here, `${suite}.ts`)).href)) as { run: () => Promise<BenchSuiteResult> };
  const outcome = await mod.run();
  const machine = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? "unknown",
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    platform: `${platform()}-${arch()}`,
    node: process.version,
  };
  const outDir = join(here, "results");
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${suite}.json`);
  writeFileSync(file, JSON.stringify({ suite, machine, results: outcome.results }, null, 2) + "\n");
  return { suite, machine, results: outcome.results, rows: outcome.rows, file };
}

/** The rows as printed: 4 significant digits, targets and whether each was met. */
export function benchTable(rows: readonly BenchRow[]) {
  return rows.map((r) => ({
    metric: r.metric,
    value: Number(r.value.toPrecision(4)),
    unit: r.unit,
    target: r.target ?? "",
    met: r.met === undefined ? "" : r.met ? "yes" : "NO",
  }));
}

async function main(): Promise<void> {
  const suite = process.argv[2];
  if (!suite || !isBenchSuite(suite)) {
    process.stderr.write(`usage: npm run bench -- SUITE (one of ${benchSuites().join(", ")}); got ${JSON.stringify(suite ?? "")}\n`);
    process.exit(2);
  }
  const outcome = await runBenchSuite(suite);
  console.table(benchTable(outcome.rows));
  console.log(`wrote ${outcome.file}`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
