/**
 * `freshrec experiment create|list|stop|analyze|simulate`: live A/B experiments over table versions or strategies,
 * and a simulated A/B on the synthetic platform (control = finetune-monthly, treatment = hybrid).
 *
 * create/list/stop work on the workspace's event store, so the server must be stopped, or pass `--server URL` to go
 * through the running server's admin routes (token from FRESHREC_ADMIN_TOKEN or serve.adminToken); analyze only
 * reads, so beside a running server it reads the log through it (../../data/event-store-share.ts). With store.url they work on the database beside running servers (which pick a new experiment up
 * when they start; --server makes one serve it at once). simulate reads the events and the live model the config
 * names (the workspace's, or the deployment's database) and keeps its simulated traffic, tables and log under
 * <workspace>/experiments/NAME, so neither the workspace nor the deployment changes.
 */
import type { Command } from "commander";
import { join } from "node:path";
import type { EventStoreContract } from "../../data/event-store.js";
import { BadInputError, FreshrecError, type ErrorCode } from "../../domain/errors.js";
import { writeReport, type WrittenReport } from "../../evaluation/report.js";
import type { LlmBackend } from "../../llm/backends/index.js";
import { PROMPT_TEMPLATE_HASH } from "../../llm/prompt.js";
import {
  EXPERIMENT_METRICS,
  openExperimentLog,
  readExperiment,
  type ExperimentLogContract,
  METRIC_LABELS,
  analyzeExperiment,
  parseExperimentDefinition,
  renderExperimentTable,
  resolveBinding,
  runSimulatedExperiment,
  type ExperimentAnalysis,
  type SimulatedExperimentResult,
} from "../../serving/index.js";
import type { CommandContext } from "../context.js";
import { configuredBackend, liveModelFile } from "../loop-context.js";
import { action, positiveInt } from "../run.js";
import { adminToken } from "./serve.js";
import { experimentView } from "../../serving/views.js";


/** Calls an admin route of a running server; its error codes become the CLI's (exit 2 for bad input or auth). */
async function callServer(ctx: CommandContext, server: string, method: "GET" | "POST", path: string, body?: unknown): Promise<any> {
  const token = adminToken(ctx.config);
  let response: Response;
  try {
    response = await fetch(new URL(path, server), {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { "content-type": "application/json" }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new BadInputError(`--server ${server}: cannot connect (${(error as Error).message})`);
  }
  const json = (await response.json().catch(() => null)) as { error?: { code: string; message: string } } | null;
  if (!response.ok) {
    const code = json?.error?.code;
    const known: ErrorCode[] = ["BAD_INPUT", "BAD_CONFIG", "NOT_FOUND", "ENGINE", "GATE_FAILED", "CANCELLED", "INTERNAL"];
    const mapped: ErrorCode = known.includes(code as ErrorCode) ? (code as ErrorCode) : response.status < 500 ? "BAD_INPUT" : "INTERNAL";
    throw new FreshrecError(mapped, `server answered ${response.status}: ${json?.error?.message ?? response.statusText}`);
  }
  return json;
}

/**
 * With the event store open: the experiment log, for a command that runs while no server holds the store (the
 * workspace's DuckDB file), or beside running servers (a PostgreSQL store, which they share).
 */
async function withLog<T>(ctx: CommandContext, body: (log: ExperimentLogContract, events: EventStoreContract) => Promise<T>): Promise<T> {
  let events: EventStoreContract;
  try {
    events = await ctx.openEventStore();
  } catch (error) {
    throw new BadInputError(`${(error as Error).message}\n(is freshrec serve running? then pass --server URL to use its admin routes)`);
  }
  try {
    return await body(await openExperimentLog(events), events);
  } finally {
    await events.close();
  }
}

function experimentLine(e: { name: string; status: string; control: string; salt: string; arms: readonly { name: string; table: string; weight: number }[] }): string {
  const total = e.arms.reduce((s, a) => s + a.weight, 0);
  return `${e.name} (${e.status}, salt ${JSON.stringify(e.salt)}): ${e.arms.map((a) => `${a.name}${a.name === e.control ? " [control]" : ""} -> ${a.table} ${((100 * a.weight) / total).toFixed(0)}%`).join(", ")}`;
}

/** The analysis as report sections (Markdown + HTML + JSON under <workspace>/reports). */
function writeExperimentReport(ctx: CommandContext, name: string, analysis: ExperimentAnalysis, extra: { title: string; paragraphs: string[]; json: unknown }): WrittenReport {
  const arms = Object.keys(analysis.arms);
  const treatments = arms.filter((a) => a !== analysis.control);
  const pct = (x: number | null) => (typeof x === "number" && Number.isFinite(x) ? `${x >= 0 ? "+" : ""}${(100 * x).toFixed(2)}%` : "n/a");
  return writeReport(ctx.paths.reports, {
    name: `experiment-${name}`,
    title: extra.title,
    sections: [
      {
        heading: "Results (relative difference vs the control, 95% bootstrap CI over users)",
        paragraphs: extra.paragraphs,
        table: {
          columns: ["metric", ...arms, ...treatments.flatMap((t) => [`${t} delta`, "95% CI"])],
          rows: EXPERIMENT_METRICS.map((metric) => [
            METRIC_LABELS[metric],
            // NaN (an arm without slots) arrives as null through JSON: both print as n/a.
            ...arms.map((a) => {
              const v = analysis.arms[a].metrics[metric];
              return typeof v === "number" && Number.isFinite(v) ? v : "n/a";
            }),
            ...treatments.flatMap((t) => {
              const d = analysis.deltas.find((x) => x.metric === metric && x.arm === t)!;
              return [pct(d.relative), `[${pct(d.ci95[0])}, ${pct(d.ci95[1])}]`];
            }),
          ]),
        },
      },
      {
        heading: "Arms",
        table: {
          columns: ["arm", "users", "slates", "slots", "satisfied", "dissatisfied", "negative"],
          rows: arms.map((a) => {
            const r = analysis.arms[a];
            return [a, r.users, r.exposures, r.slots, r.satisfied, r.dissatisfied, r.negative];
          }),
        },
      },
    ],
    json: extra.json,
  });
}

export interface SimulateExperimentOptions {
  readonly days?: number;
  readonly refreshDays?: number;
  readonly users?: number | null;
  readonly slateSize?: number;
  readonly name?: string;
  readonly salt?: string;
}

/**
 * The simulated A/B of the workspace or deployment (the demo calls this): control = the table the live model builds
 * without retrieval (finetune-monthly), treatment = the same model refreshed every `refreshDays` with the config's
 * rag.method (hybrid), on the synthetic platform's users for `days` days. The events are copied into
 * <workspace>/experiments/NAME through the event store contract from the store the command reads: with store.url the
 * deployment's database, else the workspace's file, or that file read through the `freshrec serve` or worker holding
 * it. The source is never written.
 */
export async function simulateExperiment(
  ctx: CommandContext,
  overrides: SimulateExperimentOptions = {},
): Promise<SimulatedExperimentResult & { reports: WrittenReport; backend: { kind: string; description: string } }> {
  const e = ctx.config.experiment;
  const deployed = await liveModelFile(ctx);
  if (!deployed) throw new BadInputError("no live model: run freshrec pretrain (or freshrec demo) first");
  const { live, file: liveFile } = deployed;
  const name = overrides.name ?? "simulated-hybrid-vs-finetune-monthly";
  const reading = await ctx.openEventStoreForReading();
  const events = reading.store;
  if (reading.heldBy !== null) ctx.log(`reading the events through ${reading.holder ?? "the process"} (PID ${reading.heldBy}), which holds the event store`);
  let result: SimulatedExperimentResult;
  let backend: LlmBackend;
  try {
    // The backend llm.backend names, as every command opens the live model: a gguf or openai model scores the arms'
    // tables as it scores the deployment's (the copy has the same clusters, read here from the store it copies).
    backend = configuredBackend(ctx, await events.clusters());
    const model = await backend.openModel(liveFile);
    try {
      const positiveMin = ctx.config.data.positiveMin;
      result = await runSimulatedExperiment({
        events,
        workDir: join(ctx.paths.root, "experiments", name),
        model: { version: live.version, scorer: model },
        templateHash: PROMPT_TEMPLATE_HASH,
        rag: ctx.config.rag,
        ...(positiveMin === null ? {} : { positiveMin }),
        topN: ctx.config.tables.topN,
        days: overrides.days ?? e.days,
        refreshDays: overrides.refreshDays ?? e.refreshDays,
        users: overrides.users !== undefined ? overrides.users : e.users,
        slateSize: overrides.slateSize ?? e.slateSize,
        itemsPerCluster: ctx.config.serve.itemsPerCluster,
        name,
        salt: overrides.salt,
        resamples: e.resamples,
        groundingWindowDays: ctx.config.serve.groundingWindowDays,
        log: ctx.log,
        signal: ctx.signal,
      });
    } finally {
      await model.close();
    }
  } finally {
    await events.close();
  }
  const s = result.simulated;
  const reports = writeExperimentReport(ctx, name, result, {
    title: `Simulated A/B: hybrid (refreshed every ${s.refreshDays} days) vs finetune-monthly`,
    paragraphs: [
      `Synthetic platform, ${s.users} users hashed into two arms (salt ${JSON.stringify(s.salt)}), ${s.days} simulated days from ${s.from.slice(0, 10)}; model ${s.model} in both arms (${backend.description}).`,
      `Control: table ${result.tables.control} (no retrieval). Treatment: tables ${result.tables.treatment.join(", ")} (refreshed on the simulated traffic, with the workspace's rag.method).`,
      `${s.slates} slates shown, ${s.clicks} clicks, ${s.events} events. Scratch data: ${result.workDir}.`,
      `The platform's responses to the ${s.outcomes.slots} slots: ${s.outcomes.satisfied} satisfied, ${s.outcomes.dissatisfied} dissatisfied, ${s.outcomes.negative} negative, ${s.outcomes.ignored} ignored (a click is satisfied or dissatisfied; an unclicked slot is negative or ignored).`,
    ],
    json: result,
  });
  // backend: what scored the arms' tables (llm.backend).
  return { ...result, reports, backend: { kind: backend.kind, description: backend.description } };
}

export function registerExperiment(program: Command): void {
  const experiment = program.command("experiment").description("A/B experiments: arms bound to tables, deterministic assignment, analysis with 95% CIs; a simulated A/B");

  experiment
    .command("create <name>")
    .description("define and start an experiment (the one active experiment; arms bound to a table version, live, or strategy:NAME)")
    .requiredOption("--arm <name=table...>", "an arm and what it serves (repeat; the first is the control): control=t000012, treatment=live, x=strategy:hybrid")
    .option("--split <weights>", "traffic weights in arm order, e.g. 50,50 or 90,10 (default: equal)")
    .option("--salt <text>", "assignment salt (default: the name)")
    .option("--replace", "stop the active experiment instead of refusing")
    .option("--server <url>", "create it through a running server's admin route")
    .addHelpText("after", "\nExamples:\n  freshrec experiment create rag-test --arm control=strategy:finetune-monthly --arm treatment=live\n  freshrec experiment create canary --arm stable=t000010 --arm new=t000012 --split 90,10 --server http://127.0.0.1:8080")
    .action(
      action(async (ctx, command) => {
        const [name] = command.args;
        const opts = command.opts<{ arm: string[]; split?: string; salt?: string; replace?: boolean; server?: string }>();
        const weights = opts.split?.split(",").map((w) => Number(w.trim()));
        if (weights && (weights.length !== opts.arm.length || weights.some((w) => !(w > 0)))) {
          throw new BadInputError(`--split: expected ${opts.arm.length} positive weights, got ${JSON.stringify(opts.split)}`);
        }
        const arms = opts.arm.map((spec, i) => {
          const at = spec.indexOf("=");
          if (at <= 0) throw new BadInputError(`--arm: expected NAME=TABLE, got ${JSON.stringify(spec)}`);
          return { name: spec.slice(0, at), table: spec.slice(at + 1), ...(weights ? { weight: weights[i] } : {}) };
        });
        const input = { name, arms, ...(opts.salt ? { salt: opts.salt } : {}) };
        let created: Record<string, unknown>;
        if (opts.server) created = await callServer(ctx, opts.server, "POST", "/v1/experiments", { definition: input, replace: Boolean(opts.replace) });
        else {
          const definition = parseExperimentDefinition(input);
          const tables = await ctx.openTableStore();
          try {
            for (const arm of definition.arms) await resolveBinding(tables, arm.table);
          } finally {
            await tables.close();
          }
          const e = await withLog(ctx, (log) => log.create(definition, ctx.clock.now(), { replace: Boolean(opts.replace) }));
          created = experimentView(e);
        }
        return { json: created, text: `${experimentLine(created as never)}\nstarted: freshrec serve assigns users by hash and logs exposures; analyze with freshrec experiment analyze ${name}` };
      }),
    );

  experiment
    .command("list")
    .description("every experiment and which one is active")
    .option("--server <url>", "ask a running server")
    .addHelpText("after", "\nExamples:\n  freshrec experiment list\n  freshrec experiment list --server http://127.0.0.1:8080 --json")
    .action(
      action(async (ctx, command) => {
        const { server } = command.opts<{ server?: string }>();
        const list: Record<string, unknown>[] = server
          ? (await callServer(ctx, server, "GET", "/v1/experiments")).experiments
          : (await withLog(ctx, (log) => log.list())).map((e) => experimentView(e));
        return { json: { experiments: list }, text: list.length ? list.map((e) => experimentLine(e as never)).join("\n") : "no experiments yet" };
      }),
    );

  experiment
    .command("stop <name>")
    .description("stop an experiment: everyone is served the live table again")
    .option("--server <url>", "through a running server's admin route")
    .addHelpText("after", "\nExamples:\n  freshrec experiment stop hybrid-vs-monthly\n  FRESHREC_ADMIN_TOKEN=... freshrec experiment stop hybrid-vs-monthly --server http://127.0.0.1:8080")
    .action(
      action(async (ctx, command) => {
        const [name] = command.args;
        const { server } = command.opts<{ server?: string }>();
        const stopped = server
          ? await callServer(ctx, server, "POST", `/v1/experiments/${encodeURIComponent(name)}/stop`)
          : experimentView(await withLog(ctx, (log) => log.stop(name, ctx.clock.now())));
        return { json: stopped, text: experimentLine(stopped) };
      }),
    );

  experiment
    .command("analyze <name>")
    .description("per-arm metrics, relative deltas vs the control and 95% bootstrap CIs, as the paper's live-results table")
    .option("--server <url>", "through a running server's admin route")
    .addHelpText("after", "\nExamples:\n  freshrec experiment analyze rag-test\n  freshrec experiment analyze rag-test --json")
    .action(
      action(async (ctx, command) => {
        const [name] = command.args;
        const { server } = command.opts<{ server?: string }>();
        let analysis: ExperimentAnalysis;
        let readThrough: { pid: number; command: string | null } | null = null;
        if (server) analysis = await callServer(ctx, server, "GET", `/v1/experiments/${encodeURIComponent(name)}/analysis`);
        else {
          // Only reads: beside a running freshrec serve (or schedule run worker) the log is read through it.
          const { store, heldBy, holder } = await ctx.openEventStoreForReading();
          try {
            analysis = await analyzeExperiment(store, await readExperiment(store, name), { resamples: ctx.config.experiment.resamples });
          } finally {
            await store.close();
          }
          if (heldBy !== null) readThrough = { pid: heldBy, command: holder };
        }
        const table = renderExperimentTable(analysis);
        const reports = writeExperimentReport(ctx, name, analysis, { title: `Experiment ${name}`, paragraphs: [], json: analysis });
        const through = readThrough === null ? [] : [`read through ${readThrough.command ?? "the process"} (PID ${readThrough.pid}), which holds the event store: every exposure and outcome it has written included`];
        // readThrough: the process the log was read through while it held the event store (null: the store itself, or --server).
        return { json: { ...analysis, table, reports, readThrough }, text: [`experiment ${name}`, ...table, ...through, `reports: ${reports.html}`].join("\n") };
      }),
    );

  experiment
    .command("simulate")
    .description("a simulated A/B on the synthetic platform: control = finetune-monthly table, treatment = hybrid (refreshed every few days), same live model")
    .option("--days <n>", "simulated days (default: experiment.days)")
    .option("--refresh-days <n>", "days between the treatment's refreshes (default: experiment.refreshDays)")
    .option("--users <n>", "the first N users of the platform take part (default: all)")
    .option("--slate <n>", "clusters per exploration slate (default: experiment.slateSize)")
    .option("--name <name>", "experiment name (default: simulated-hybrid-vs-finetune-monthly)")
    .option("--salt <text>", "assignment salt (default: the name); another salt is another random split, to repeat the test")
    .addHelpText("after", "\nExamples:\n  freshrec experiment simulate --days 7\n  freshrec experiment simulate --days 14 --refresh-days 3 --json\n  freshrec experiment simulate --days 28 --name ab-s2 --salt s2")
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<{ days?: string; refreshDays?: string; users?: string; slate?: string; name?: string; salt?: string }>();
        const result = await simulateExperiment(ctx, {
          days: positiveInt("days", opts.days),
          refreshDays: positiveInt("refresh-days", opts.refreshDays),
          ...(opts.users ? { users: positiveInt("users", opts.users)! } : {}),
          slateSize: positiveInt("slate", opts.slate),
          name: opts.name,
          salt: opts.salt,
        });
        const s = result.simulated;
        const text = [
          `simulated A/B, ${s.days} days from ${s.from.slice(0, 10)}, ${s.users} users (salt ${JSON.stringify(s.salt)}), model ${s.model} (${result.backend.description}): control = ${result.tables.control} (finetune-monthly, no retrieval), treatment = hybrid (refreshed every ${s.refreshDays} days: ${result.tables.treatment.join(", ")})`,
          ...result.table,
          `reports: ${result.reports.html}`,
        ].join("\n");
        return { json: result, text };
      }),
    );
}
