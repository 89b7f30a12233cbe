import type { Command } from "commander";
import { explanationOf, type RowExplanation } from "../../update/fusion.js";
import { BadInputError } from "../../domain/errors.js";
import type { TableInfo } from "../../tables/index.js";
import { action, positiveInt } from "../run.js";
import { tableView } from "../../serving/views.js";

const day = (ms: number | null) => (ms === null ? "-" : new Date(ms).toISOString().slice(0, 16).replace("T", " "));

function summary(t: TableInfo): string {
  const fit = t.ragOptions?.method === "fusion" ? (t.ragOptions.fit as { params?: { tau?: number; lift?: number } } | undefined) : undefined;
  const rag =
    t.ragAsOf === null
      ? "no RAG"
      : t.ragOptions?.method === "fusion"
        ? `fusion as of ${day(t.ragAsOf)} (${t.ragWindowDays} d evidence${t.ragOptions.prior ? `, prior weight ${fit?.params?.tau?.toFixed(2) ?? "-"}${typeof fit?.params?.lift === "number" ? ` (lift ${fit.params.lift.toFixed(2)})` : ""}` : ", no prior"})`
        : `RAG as of ${day(t.ragAsOf)} (${t.ragWindowDays} d)`;
  return `${t.version}  ${t.status.padEnd(8)} model ${t.modelVersion}  ${rag}  ${t.rows} pairs  built ${day(t.createdAt)}${t.strategy ? `  [${t.strategy}]` : ""}`;
}

export function registerTables(program: Command): void {
  const tables = program.command("tables").description("versioned recommendation tables: list, inspect, publish, roll back");
  tables
    .command("list")
    .description("all table versions, newest last, and which one is live")
    .addHelpText("after", "\nExample:\n  freshrec tables list --json")
    .action(
      action(async (ctx) => {
        const store = await ctx.openTableStore();
        try {
          const list = await store.list();
          const live = (await store.live())?.version ?? null;
          return {
            json: { live, tables: list.map(tableView) },
            text: list.length ? list.map(summary).join("\n") : "no tables yet: run freshrec refresh",
          };
        } finally {
          await store.close();
        }
      }),
    );
  tables
    .command("show <version>")
    .description("one table's metadata and rows (version 'live' for the live one)")
    .option("--pair <c1,c2>", "only this history pair")
    .option("--limit <n>", "rows to print", "20")
    .addHelpText("after", "\nExamples:\n  freshrec tables show live --limit 5\n  freshrec tables show t000003 --pair baking,coffee")
    .action(
      action(async (ctx, command) => {
        const [versionArg] = command.args;
        const opts = command.opts<{ pair?: string; limit: string }>();
        const limit = positiveInt("limit", opts.limit)!;
        const store = await ctx.openTableStore();
        try {
          const version = versionArg === "live" ? (await store.live())?.version : versionArg;
          if (!version) throw new BadInputError("no table is live yet");
          const info = await store.get(version);
          let rows;
          if (opts.pair) {
            const [c1, c2] = opts.pair.split(",");
            if (!c1 || !c2) throw new BadInputError(`--pair: expected c1,c2, got ${JSON.stringify(opts.pair)}`);
            const row = await store.lookup(version, c1, c2);
            rows = row ? [row] : [];
          } else {
            rows = [];
            for await (const row of store.rows(version)) {
              rows.push(row);
              if (rows.length >= limit) break;
            }
          }
          const text = [
            summary(info),
            ...rows.flatMap((r) => [
              `  (${r.c1}, ${r.c2}) -> ${r.answers.map((a) => `${a.cluster} ${a.score.toFixed(3)}`).join(", ")}`,
              ...(opts.pair ? explanationLines(explanationOf(r)) : []),
            ]),
          ].join("\n");
          return { json: { ...tableView(info), rows: rows.map((r) => ({ c1: r.c1, c2: r.c2, answers: r.answers, explanation: explanationOf(r) })) }, text };
        } finally {
          await store.close();
        }
      }),
    );
  tables
    .command("publish <version>")
    .description("make a ready (or retired) table live: an atomic pointer flip")
    .option("--reason <text>", "why, kept in the publish history")
    .addHelpText("after", "\nExample:\n  freshrec tables publish t000004 --reason 'manual refresh'")
    .action(
      action(async (ctx, command) => {
        const store = await ctx.openTableStore();
        try {
          const info = await store.publish(command.args[0], { actor: "cli", reason: command.opts<{ reason?: string }>().reason ?? null });
          return { json: { live: info.version, table: tableView(info) }, text: `live: ${summary(info)}` };
        } finally {
          await store.close();
        }
      }),
    );
  tables
    .command("rollback")
    .description("make the previously live table live again")
    .option("--reason <text>", "why, kept in the publish history")
    .addHelpText("after", "\nExample:\n  freshrec tables rollback --reason 'hit rate dropped'")
    .action(
      action(async (ctx, command) => {
        const store = await ctx.openTableStore();
        try {
          const info = await store.rollback({ actor: "cli", reason: command.opts<{ reason?: string }>().reason ?? null });
          return { json: { live: info.version, table: tableView(info) }, text: `live again: ${summary(info)}` };
        } finally {
          await store.close();
        }
      }),
    );
}

/** A fusion row's explanation for people: how much is the pair's own evidence, and the counts behind each answer. */
function explanationLines(e: RowExplanation | null): string[] {
  if (!e) return ["    (no explanation: a prompted table's row is the model's answer to its prompt)"];
  return [
    `    evidence weight ${(e.evidenceWeight * 100).toFixed(1)}% (pair: ${e.pairUsers} users in the window; second cluster: ${e.secondUsers}), prior and backoff ${((1 - e.evidenceWeight) * 100).toFixed(1)}%`,
    ...e.answers.map(
      (a) =>
        `    ${a.cluster.padEnd(24)} posterior ${a.posterior.toFixed(4)}  pair users ${String(a.pairUsers).padStart(4)}  second-cluster users ${String(a.secondUsers).padStart(5)}  base ${a.base.toFixed(4)}${a.llmPrior === null ? "" : `  llm prior ${a.llmPrior.toFixed(4)}`}`,
    ),
  ];
}
