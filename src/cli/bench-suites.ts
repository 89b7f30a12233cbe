/**
 * The benchmark suites' contract and where they are. The suites and their runner are a development tool of the source
 * checkout: bench/NAME.ts files beside src/ (bench/run.ts is the runner; names starting with "_" are scratch), run as
 * TypeScript through tsx. They are not compiled into dist/ and not shipped in the package, so an installed freshrec
 * has none. Both src/cli/ and the built dist/cli/ sit one level below the package root, so the same relative path finds
 * bench/ from the sources and from the build. The list is read from the folder, so `freshrec bench --help` lists the
 * suites without loading any, and the CLI loads bench/ only when a suite runs.
 */
import { existsSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** The bench/ folder of a source checkout (absent in an installed package). */
export const BENCH_DIR = fileURLToPath(new URL("../../bench/", import.meta.url));

/** The runner, bench/run.ts: `npm run bench -- SUITE` runs it as a script, `freshrec bench SUITE` imports it. */
export const BENCH_RUNNER = fileURLToPath(new URL("../../bench/run.ts", import.meta.url));

/** Whether the suites are here: a source checkout with bench/ beside src/, not an installed package. */
export function benchAvailable(): boolean {
  return existsSync(BENCH_RUNNER);
}

export function benchSuites(): string[] {
  if (!existsSync(BENCH_DIR)) return [];
  return readdirSync(BENCH_DIR)
    .filter((f) => /^[a-z0-9-]+\.ts$/.test(f) && f !== "run.ts")
    .map((f) => f.slice(0, -3))
    .sort();
}

export function isBenchSuite(suite: string): boolean {
  return benchSuites().includes(suite);
}

export interface BenchRow {
  /** What was measured, in words. */
  readonly metric: string;
  readonly value: number;
  readonly unit: string;
  /** The target, e.g. "<= 5 s"; empty when there is none. */
  readonly target?: string;
  readonly met?: boolean;
}

/** What a suite module's `run()` returns. */
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

/** The runner's surface the CLI uses (bench/run.ts). */
export interface BenchRunner {
  /** Runs one suite and writes bench/results/SUITE.json. */
  runBenchSuite(suite: string): Promise<BenchOutcome>;
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
