import type { Command } from "commander";
import { writeDriftReport } from "../../evaluation/drift-report.js";
import { analyzeDrift } from "../../mining/drift.js";
import { BadInputError } from "../../domain/errors.js";
import { action, positiveInt, timeOption } from "../run.js";

export function registerAnalyze(program: Command): void {
  const analyze = program.command("analyze").description("analyses of the event store");
  analyze
    .command("drift")
    .description("month-over-month Jaccard of each pair's top successors (the paper's drift measure)")
    .option("--from <time>", "first event time considered (ISO-8601 or unix s/ms); default: the first event")
    .option("--to <time>", "end of the period, exclusive; default: after the last event")
    .option("--min-support <n>", "transitions a pair needs in a month to be compared (default: drift.minSupport)")
    .option("--top-k <n>", "successors compared per pair (default: drift.topK)")
    .addHelpText("after", "\nExamples:\n  freshrec analyze drift --json\n  freshrec analyze drift --min-support 3   (sparse data such as MovieLens)")
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<{ from?: string; to?: string; minSupport?: string; topK?: string }>();
        const minSupport = positiveInt("min-support", opts.minSupport) ?? ctx.config.drift.minSupport;
        const topK = positiveInt("top-k", opts.topK) ?? ctx.config.drift.topK;
        const { store, heldBy, holder } = await ctx.openEventStoreForReading();
        try {
          const counts = await store.counts();
          if (counts.events === 0) throw new BadInputError(`the event store ${store.location} is empty: run freshrec ingest or freshrec synth first`);
          const window = { from: timeOption("from", opts.from) ?? counts.firstTs!, to: timeOption("to", opts.to) ?? counts.lastTs! + 1 };
          const drift = await analyzeDrift(store, window, { minSupport, topK, positiveMin: await ctx.positiveMin(store) });
          const dataset = (await store.getMeta("dataset")) ?? "events";
          const reports = writeDriftReport(ctx.paths.reports, drift, dataset);
          const text = [
            drift.pairsCompared > 0
              ? `drift (${dataset}): mean Jaccard ${drift.meanJaccard.toFixed(3)}, variance ${drift.varianceJaccard.toFixed(3)}, ${drift.pairsCompared} pair-months compared (paper: 0.17)`
              : `drift (${dataset}): nothing to compare: no history pair had ${minSupport} or more novel transitions in two consecutive months (lower --min-support, now ${minSupport}, or use more data)`,
            ...drift.months.map((m) => `  ${m.month}  ${m.meanJaccard.toFixed(3)}  (${m.pairs} pairs)`),
            `${counts.events} events read${heldBy === null ? "" : ` through ${holder ?? "the process"} (PID ${heldBy}), which holds the event store: everything it has committed included`}`,
            `reports: ${reports.html}, ${reports.md}`,
          ].join("\n");
          // events: what the analysis read; readThrough: the process it was read through while that process held the store
          // (command: what it runs, "freshrec serve" or "freshrec schedule run").
          return { json: { ...drift, reports, events: counts.events, readThrough: heldBy === null ? null : { pid: heldBy, command: holder } }, text };
        } finally {
          await store.close();
        }
      }),
    );
}
