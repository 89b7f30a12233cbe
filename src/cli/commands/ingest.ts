import type { Command } from "commander";
import { ingestFiles, type IngestReport } from "../../data/ingest/ingest.js";
import { ingestMovieLens } from "../../data/ingest/movielens.js";
import { BadInputError } from "../../domain/errors.js";
import { action } from "../run.js";
import { storeCountsView } from "../../serving/views.js";

export function registerIngest(program: Command): void {
  program
    .command("ingest")
    .description("append clusters, items and events to the workspace's event store (idempotent)")
    .option("--clusters <file>", "clusters file: cluster_id,description (CSV, JSONL or Parquet)")
    .option("--items <file>", "items file: item_id,cluster_id[,title]")
    .option("--events <files...>", "events files: user_id,item_id,ts[,engagement]")
    .option("--dataset <name>", "a dataset adapter instead of generic files: movielens")
    .option("--path <dir>", "the dataset folder (ml-latest-small or ml-100k)")
    .addHelpText(
      "after",
      "\nExamples:\n  freshrec ingest --dataset movielens --path ../shared/datasets/movielens-latest-small\n  freshrec ingest --clusters clusters.csv --items items.csv --events events.jsonl",
    )
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<{ clusters?: string; items?: string; events?: string[]; dataset?: string; path?: string }>();
        const options = { badRowThreshold: ctx.config.data.badRowThreshold, reportedBadRows: ctx.config.data.reportedBadRows };
        let report: IngestReport & { variant?: string };
        const store = await ctx.openEventStore();
        try {
          if (opts.dataset !== undefined) {
            if (opts.dataset !== "movielens") throw new BadInputError(`--dataset: unknown dataset ${JSON.stringify(opts.dataset)} (known: movielens)`);
            if (!opts.path) throw new BadInputError("--dataset movielens needs --path DIR");
            if (opts.clusters || opts.items || opts.events) throw new BadInputError("--dataset cannot be combined with --clusters/--items/--events");
            report = await ingestMovieLens(store, opts.path, { ...options, ...ctx.config.movielens });
          } else {
            report = await ingestFiles(store, { clusters: opts.clusters, items: opts.items, events: opts.events }, options);
          }
          const totals = await store.counts();
          const json = { ...report, store: storeCountsView(totals) };
          const lines = [
            `ingested into ${store.location}${report.variant ? ` (${report.variant})` : ""}:`,
            `  events added ${report.events}, duplicates skipped ${report.skippedDuplicates}, bad rows ${report.badRows}`,
            `  items ${report.items}, clusters ${report.clusters}`,
            `  store now: ${totals.events} events, ${totals.users} users, ${totals.items} items, ${totals.clusters} clusters`,
            ...report.problems.map((p) => `  bad row ${p.file}:${p.line}${p.field ? ` ${p.field}` : ""}: ${p.problem}`),
          ];
          return { json, text: lines.join("\n") };
        } finally {
          await store.close();
        }
      }),
    );
}
