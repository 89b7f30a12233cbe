/**
 * Which benchmark suites there are: the bench/NAME.ts files beside the runner (bench/run.ts; names starting with "_"
 * are scratch). Read from the folder, so `freshrec bench --help` lists them without loading any suite, and the CLI
 * loads bench/ only when a suite runs (nothing else of the CLI depends on it).
 */
import { existsSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";

const BENCH_DIR = fileURLToPath(new URL("../../bench/", import.meta.url));

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
