import type { Command } from "commander";
import { ingestMovieLens } from "../../data/ingest/movielens.js";
import { ingestSynthetic } from "../../data/ingest/synthetic.js";
import { SyntheticWorld } from "../../data/synthetic/index.js";
import { DAY_MS } from "../../domain/clock.js";
import { BadInputError } from "../../domain/errors.js";
import { writeDriftReport } from "../../evaluation/drift-report.js";
import { analyzeDrift } from "../../mining/drift.js";
import { successorLists } from "../../mining/successors.js";
import { countTransitions } from "../../mining/transitions.js";
import { action, positiveInt } from "../run.js";
import { runDemoLoop } from "./demo-loop.js";
import { simulateExperiment } from "./experiment.js";
import { startWorkspaceServer } from "./serve.js";
import { explorationResponseSchema } from "../../serving/schemas.js";
import type { CommandContext } from "../context.js";
import { addSynthFlags, syntheticOptions, type SynthFlags } from "./synth.js";
import { storeCountsView } from "../../serving/views.js";

/** A user with at least two distinct clusters, for the example request. */
async function userWithHistory(ctx: CommandContext): Promise<string | null> {
  const store = await ctx.openEventStore();
  try {
    const rows = await store.query<{ user_id: string }>(
      "SELECT u.user_id FROM events e JOIN users u USING (user_key) JOIN items i USING (item_key) GROUP BY u.user_id HAVING count(DISTINCT i.cluster_key) >= 2 ORDER BY u.user_id LIMIT 1",
    );
    return rows[0]?.user_id ?? null;
  } finally {
    await store.close();
  }
}

export function registerDemo(program: Command): void {
  addSynthFlags(
    program
      .command("demo")
      .description("the whole loop on the synthetic platform (or MovieLens): data, transition mining, drift analysis")
      .option("--dataset <name>", "synthetic (default) or movielens")
      .option("--path <dir>", "the MovieLens folder with --dataset movielens")
      .option("--loop-months <n>", "months of the hybrid loop simulated at the end of the data (0 skips the loop)", "2")
      .option("--epochs <n>", "base model training epochs", "2")
      .option("--ab-days <n>", "days of the simulated A/B test (hybrid vs finetune-monthly) on the synthetic platform", "7")
      .option("--serve", "keep serving the API after the demo (Ctrl-C stops it)"),
  )
    .addHelpText("after", "\nExamples:\n  freshrec demo --quick\n  freshrec demo --dataset movielens --path ../shared/datasets/movielens-latest-small")
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<SynthFlags & { dataset?: string; path?: string; loopMonths: string; epochs: string; abDays: string; serve?: boolean }>();
        const abDays = positiveInt("ab-days", opts.abDays)!;
        const loopMonths = opts.loopMonths === "0" ? 0 : positiveInt("loop-months", opts.loopMonths)!;
        const epochs = positiveInt("epochs", opts.epochs)!;
        const steps = loopMonths > 0 ? 7 : 3;
        const dataset = opts.dataset ?? "synthetic";
        // The store the config names: the workspace's, or with store.url the deployment's database, which then holds
        // the demo's data, tables and models as the workspace would (the simulated A/B keeps its scratch in the workspace).
        const store = await ctx.openEventStore();
        let closed = false;
        try {
          const lines: string[] = [];
          let data: Record<string, unknown>;
          if (dataset === "synthetic") {
            const world = new SyntheticWorld(syntheticOptions(ctx.config.synth, opts));
            ctx.log(`1/${steps} synthesizing ${world.options.targetEvents.toLocaleString("en")} events for ${world.options.users} users (seed ${world.options.seed})`);
            data = { ...(await ingestSynthetic(store, world, ctx.progress)) };
          } else if (dataset === "movielens") {
            if (!opts.path) throw new BadInputError("--dataset movielens needs --path DIR");
            ctx.log(`1/${steps} ingesting ${opts.path}`);
            data = { ...(await ingestMovieLens(store, opts.path, { ...ctx.config.data, ...ctx.config.movielens })) };
          } else throw new BadInputError(`--dataset: unknown dataset ${JSON.stringify(dataset)} (known: synthetic, movielens)`);
          const counts = await store.counts();
          if (counts.events === 0) throw new BadInputError("no events to work with");
          const positiveMin = await ctx.positiveMin(store);
          lines.push(`data: ${counts.events} events, ${counts.users} users, ${counts.items} items, ${counts.clusters} clusters (${new Date(counts.firstTs!).toISOString().slice(0, 10)} .. ${new Date(counts.lastTs!).toISOString().slice(0, 10)})`);

          ctx.log(`2/${steps} mining novel transitions of the last 30 days`);
          const end = counts.lastTs! + 1;
          const recent = await countTransitions(store, { from: end - 30 * DAY_MS, to: end }, { positiveMin });
          const descriptions = new Map((await store.clusters()).map((c) => [c.id, c.description]));
          const top = [...successorLists(recent, { topK: 1 }).values()]
            .map((l) => ({ ...l, users: l.successors[0].users }))
            .sort((a, b) => b.users - a.users)
            .slice(0, 5);
          lines.push(`recent novel transitions: ${recent.length} distinct triples, ${recent.reduce((s, t) => s + t.users, 0)} user-transitions in the last 30 days; most frequent:`);
          for (const t of top) {
            lines.push(`  [${descriptions.get(t.c1)}] -> [${descriptions.get(t.c2)}]  =>  [${descriptions.get(t.successors[0].cluster)}]  (${t.users} users)`);
          }

          ctx.log(`3/${steps} analysing month-over-month drift of top successors`);
          const drift = await analyzeDrift(store, { from: counts.firstTs!, to: end }, { ...ctx.config.drift, positiveMin });
          const reports = writeDriftReport(ctx.paths.reports, drift, dataset);
          lines.push(
            `drift: mean Jaccard of top-${drift.topK} successors month over month ${drift.meanJaccard.toFixed(3)} (variance ${drift.varianceJaccard.toFixed(3)}, ${drift.pairsCompared} pair-months with >= ${drift.minSupport} transitions); the paper measured 0.17`,
            `reports: ${reports.html}`,
          );
          let loop: Awaited<ReturnType<typeof runDemoLoop>> | null = null;
          if (loopMonths > 0) {
            await store.close();
            closed = true;
            loop = await runDemoLoop(ctx, end, loopMonths, epochs, steps);
            lines.push(...loop.lines);
          }
          let experiment: Record<string, unknown> | null = null;
          let server: Record<string, unknown> | null = null;
          if (loopMonths > 0) {
            if (dataset === "synthetic") {
              ctx.log(`6/${steps} simulated A/B on the synthetic platform: hybrid (${ctx.config.rag.method} refreshes) vs finetune-monthly, ${abDays} days`);
              const ab = await simulateExperiment(ctx, { days: abDays });
              lines.push(`simulated A/B (${ab.simulated.users} users, ${ab.simulated.days} days):`, ...ab.table.map((l) => `  ${l}`), `  report: ${ab.reports.html}`);
              experiment = { arms: ab.arms, deltas: ab.deltas, reports: ab.reports };
            }
            ctx.log(`7/${steps} starting the API on a free port`);
            // Read before the server opens the event store: one process holds a DuckDB file at a time.
            const user = (await userWithHistory(ctx)) ?? "u1";
            const running = await startWorkspaceServer(ctx, { port: 0 });
            // One real request, so the demo shows the API answering and not only how to ask it.
            const exploration = `${running.url}/v1/users/${encodeURIComponent(user)}/exploration?n=3`;
            const response = await fetch(exploration);
            const answer = explorationResponseSchema.parse(await response.json());
            const clusters = answer.recommendations.map((r) => r.cluster);
            lines.push(
              `API at ${running.url}:`,
              `  curl -s '${exploration}'`,
              `  -> ${response.status}: ${user} ${answer.history ? `(${answer.history.c1}, ${answer.history.c2})` : "(cold start)"} -> ${clusters.join(", ")}, each with ${answer.recommendations[0]?.items.length ?? 0} items (table ${answer.table?.version ?? "none"})`,
              `  curl -s ${running.url}/metrics | grep freshrec_`,
            );
            server = { url: running.url, example: { status: response.status, userId: user, clusters, table: answer.table?.version ?? null } };
            if (opts.serve) {
              // With --json, stdout is kept for the one result object printed when the server stops.
              const out = ctx.json ? process.stderr : process.stdout;
              out.write(`${lines.join("\n")}\nserving until Ctrl-C\n`);
              await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
            }
            await running.close();
            lines.push(opts.serve ? "API stopped" : "API stopped (demo --serve, or freshrec serve, keeps it up)");
          }
          const json = { dataset, data, store: storeCountsView(counts), recentTransitions: recent.length, drift: { ...drift, reports }, loop: loop?.json ?? null, experiment, server };
          return { json, text: lines.join("\n") };
        } finally {
          if (!closed) await store.close();
        }
      }),
    );
}
