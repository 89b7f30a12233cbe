/**
 * `freshrec bench SUITE`: the benchmark suites of bench/ (the same runner as `npm run bench -- SUITE`): prints the
 * suite's table (metric, value, unit, target, met) and writes bench/results/SUITE.json. Suites measure on temporary
 * workspaces of their own; the --workspace is not touched. An unknown suite is bad usage (exit code 2).
 *
 * The suites are TypeScript of the source checkout (bench/, not built, not shipped): the CLI, which runs the built
 * JavaScript, imports the runner through tsx (a scoped loader for that import only, not registered for the process)
 * and only when a suite runs. An installed package has no bench/: the command says so (exit code 2).
 */
import { pathToFileURL } from "node:url";
import type { Command } from "commander";
import { BadInputError, FreshrecError } from "../../domain/errors.js";
import { BENCH_RUNNER, benchAvailable, benchSuites, benchTable, isBenchSuite, type BenchRunner } from "../bench-suites.js";
import { action } from "../run.js";

const NO_BENCH = "the bench suites are a development tool of freshrec's source checkout (bench/ beside src/), not part of an installed package: clone the repository, run npm ci, then freshrec bench SUITE (or npm run bench -- SUITE) there";

/** The runner, bench/run.ts, imported through tsx's scoped loader (tsx is present where bench/ is: a checkout). */
async function loadBenchRunner(): Promise<BenchRunner> {
  const { tsImport } = await import("tsx/esm/api");
  return (await tsImport(pathToFileURL(BENCH_RUNNER).href, import.meta.url)) as BenchRunner;
}

export function registerBench(program: Command): void {
  program
    .command("bench <suite>")
    .description("run a benchmark suite (bench/SUITE.ts): print its table and write bench/results/SUITE.json")
    .addHelpText("after", () => `\nSuites: ${benchAvailable() ? `${benchSuites().join(", ")} (the README's Benchmarks section says what each measures)` : "none here (a source checkout's bench/ holds them; an installed package has none)"}.\n\nExamples:\n  freshrec bench serve\n  freshrec bench mining --json`)
    .action(
      action(async (ctx, command) => {
        const suite = command.args[0];
        if (!benchAvailable()) throw new FreshrecError("NOT_FOUND", NO_BENCH);
        if (!isBenchSuite(suite)) throw new BadInputError(`unknown bench suite ${JSON.stringify(suite)}: one of ${benchSuites().join(", ")}`);
        ctx.log(`running bench suite ${suite} (bench/${suite}.ts)`);
        // The runner (and through it the suite and its load tools) is loaded only to run one.
        const outcome = await (await loadBenchRunner()).runBenchSuite(suite);
        const table = benchTable(outcome.rows);
        const width = Math.max(...table.map((r) => r.metric.length));
        const lines = table.map((r) => `${r.metric.padEnd(width)}  ${String(r.value).padStart(10)} ${r.unit}${r.target ? `  (target ${r.target}: ${r.met === "yes" ? "met" : "NOT met"})` : ""}`);
        return {
          json: { suite: outcome.suite, machine: outcome.machine, results: outcome.results, file: outcome.file, rows: table },
          text: [...lines, `wrote ${outcome.file}`].join("\n"),
        };
      }),
    );
}
