/**
 * `npm run bench -- SUITE`: runs bench/SUITE.ts, prints its table and writes bench/results/SUITE.json as
 * `{ suite, machine, results: { KEY: number } }` (DESIGN.md). A suite module exports
 * `run(): Promise<BenchSuiteResult>`; targets are reported beside the numbers, never asserted in tests.
 */
import { mkdirSync, writeFileSync, existsSync } from "node:fs";
import { cpus, totalmem, platform, arch } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

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

const here = dirname(fileURLToPath(import.meta.url));

async function main(): Promise<void> {
  const suite = process.argv[2];
  if (!suite || !/^[a-z0-9-]+$/.test(suite) || !existsSync(join(here, `${suite}.ts`))) {
    process.stderr.write(`usage: npm run bench -- SUITE (a file bench/SUITE.ts); got ${JSON.stringify(suite ?? "")}\n`);
    process.exit(2);
  }
  const mod = (await import(join(here, `${suite}.ts`))) as { run: () => Promise<BenchSuiteResult> };
  const outcome = await mod.run();
  const table = outcome.rows.map((r) => ({
    metric: r.metric,
    value: Number(r.value.toPrecision(4)),
    unit: r.unit,
    target: r.target ?? "",
    met: r.met === undefined ? "" : r.met ? "yes" : "NO",
  }));
  console.table(table);
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
  console.log(`wrote ${file}`);
}

await main();
