/**
 * `freshrec bench SUITE`: the benchmark suites of bench/ (the same runner as `npm run bench -- SUITE`): prints the
 * suite's table (metric, value, unit, target, met) and writes bench/results/SUITE.json. Suites measure on temporary
 * workspaces of their own; the --workspace is not touched. bench/ is loaded only when a suite runs. An unknown suite
 * is bad usage (exit code 2).
 */
import type { Command } from "commander";
import { BadInputError } from "../../domain/errors.js";
import { benchSuites, isBenchSuite } from "../bench-suites.js";
import { action } from "../run.js";

export function registerBench(program: Command): void {
  program
    .command("bench <suite>")
    .description("run a benchmark suite (bench/SUITE.ts): print its table and write bench/results/SUITE.json")
    .addHelpText("after", () => `\nSuites: ${benchSuites().join(", ")} (the README's Benchmarks section says what each measures).\n\nExamples:\n  freshrec bench serve\n  freshrec bench mining --json`)
    .action(
      action(async (ctx, command) => {
        const suite = command.args[0];
        if (!isBenchSuite(suite)) throw new BadInputError(`unknown bench suite ${JSON.stringify(suite)}: one of ${benchSuites().join(", ")}`);
        ctx.log(`running bench suite ${suite} (bench/${suite}.ts)`);
        // The runner (and through it the suite and its load tools) is loaded only to run one.
        const { benchTable, runBenchSuite } = await import("../../../bench/run.js");
        const outcome = await runBenchSuite(suite);
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
