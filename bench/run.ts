/**
 * Benchmark suites: `npm run bench -- SUITE` or `freshrec bench SUITE` runs bench/SUITE.ts, prints its table and
 * writes bench/results/SUITE.json as `{ suite, machine, results: { KEY: number } }` (README.md, "Benchmarks"). A suite module
 * exports `run(): Promise<BenchSuiteResult>`; targets are reported beside the numbers, never asserted in tests.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { arch, cpus, platform, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { benchSuites, benchTable, isBenchSuite, type BenchOutcome, type BenchSuiteResult } from "../src/cli/bench-suites.js";

// The suites' contract lives in src/cli/bench-suites.ts, where the CLI's `bench` command (built into dist/, which
// cannot import bench/) reads it too; the suites keep importing it from here.
export { benchTable, type BenchOutcome, type BenchRow, type BenchSuiteResult } from "../src/cli/bench-suites.js";

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
