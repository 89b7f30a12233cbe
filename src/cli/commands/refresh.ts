/**
 * `refresh` (one RAG refresh now) and `schedule run|status|pause|resume` (the two jobs on their cadences, live or
 * simulated on a virtual clock over past data).
 *
 * `schedule run --simulate` on store.url runs on a copy of the deployment (`simulateOnCopy`): its jobs publish and
 * promote as they would live, which must not reach the deployment's replicas.
 *
 * The `schedule run` worker holds the workspace's event store for its whole life (DuckDB opens a file in one process
 * at a time), so it shares it for reading as `freshrec serve` does: `analyze drift` beside it reads the events
 * through it (../../data/event-store-share.ts); commands that write the events are refused, naming it.
 */
import type { Command } from "commander";
import { DAY_MS, VirtualClock } from "../../domain/clock.js";
import { BadInputError } from "../../domain/errors.js";
import { planRefresh, runRefresh, type RefreshOptions, type RefreshPlan } from "../../update/refresh.js";
import { PROMPT_TEMPLATE_HASH } from "../../llm/prompt.js";
import {
  Scheduler,
  SqliteScheduleStore,
  hybridJobs,
  readScheduleStatus,
  scheduleStorePath,
  type JobDefinition,
  type RunRecord,
  type ScheduleStatus,
} from "../../update/schedule/index.js";
import { EventStoreShare } from "../../data/event-store-share.js";
import { EventStore } from "../../data/event-store.js";
import type { ModelVersion } from "../../llm/registry.js";
import { copyEvents } from "../../data/copy-events.js";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { redactedUrl } from "../../data/postgres-pool.js";
import type { FreshrecConfig } from "../config.js";
import { scratchContext, type CommandContext, type CommandResult } from "../context.js";
import { liveModelFile, openLoop, resolveAsOf, type OpenLoop } from "../loop-context.js";
import { action, timeOption } from "../run.js";
import { iso } from "../format.js";
import { fusionFitView, jobStateView, runRecordView, scheduleStatusView } from "../../serving/views.js";


/** One log line per run: what ran, for which due time, how it ended and what it produced. */
export function runLine(run: RunRecord): string {
  const d = run.detail ?? {};
  const what =
    run.job === "finetune" && d.skipped
      ? `nothing to do (${String(d.skipped)}: model ${String(d.modelVersion ?? "-")})`
      : run.job === "finetune"
      ? `model ${String(d.modelVersion ?? "-")} ${String(d.modelStatus ?? "")} exact-match ${fmt(d.exactMatchRate)} recall ${fmt(d.testRecall)}`
      : d.method === "fusion"
      ? `table ${String(d.tableVersion ?? "-")} (model ${String(d.modelVersion ?? "-")}) fusion: ${String(d.evidenceWindowDays)} d evidence, ${String(d.evidenceTransitions ?? 0)} transitions, ${String(d.pairsWithContext ?? 0)} pairs with evidence; prior weight ${typeof d.priorWeight === "number" ? d.priorWeight.toFixed(2) : "-"}${typeof d.priorLift === "number" ? ` (lift ${d.priorLift.toFixed(2)})` : ""}${typeof d.priorGain === "number" ? ` (+${d.priorGain.toFixed(3)} nats/transition)` : ""}; ${String(d.rescored ?? 0)} prompts`
      : `table ${String(d.tableVersion ?? "-")} (model ${String(d.modelVersion ?? "-")}) rescored ${String(d.rescored ?? 0)} copied ${String(d.copied ?? 0)} contexts ${String(d.pairsWithContext ?? 0)}`;
  const took = run.durationSeconds === null ? "" : ` in ${run.durationSeconds.toFixed(1)} s`;
  return `${iso(run.due).slice(0, 16)}Z ${run.job.padEnd(8)} ${run.status.padEnd(9)} ${run.status === "succeeded" || run.status === "halted" ? what : (run.error ?? "")}${took}${run.status === "halted" ? ` (${run.error ?? ""})` : ""}`;
}

/** The dry run's report: what would be scored, from which table the rest is copied, and the price. */
function planText(plan: RefreshPlan, windowDays: number, backend: string): string {
  const n = (x: number) => x.toLocaleString("en-US");
  const c = plan.cost;
  const cost = c
    ? `  cost: ${n(c.prompts - c.cached)} prompts to pay for (${n(c.cached)} already in the response cache), ~${n(c.promptTokens)} prompt + ~${n(c.completionTokens)} answer tokens, ${c.usd === null ? "price unknown (set llm.openai.inputPricePerMTok and outputPricePerMTok)" : `~$${c.usd.toFixed(c.usd < 1 ? 4 : 2)}`} via ${c.via}`
    : `  cost: ${backend} backend, scored on this machine (no per-token price)`;
  if (plan.method === "fusion") {
    return [
      `dry run, nothing built: model ${plan.modelVersion}, fusion as of ${iso(plan.asOf)} (${n(plan.transitionsInWindow)} transitions in the fitted evidence window, ${n(plan.pairsWithContext)} pairs with evidence)`,
      `  ${n(plan.pairs)} pairs, each computed from the counts and the model's prior: no prompt is re-run while the model is unchanged`,
      plan.rescore === 0 ? "  cost: counting and fitting only (the prior of this model is computed already)" : `  the prior of ${plan.modelVersion} is not computed yet: ${n(plan.rescore)} prompts, once for this model version`,
      ...(plan.rescore > 0 ? [cost] : []),
    ].join("\n");
  }
  return [
    `dry run, nothing built: model ${plan.modelVersion}, RAG as of ${iso(plan.asOf)} (${windowDays} d, ${n(plan.transitionsInWindow)} transitions, ${n(plan.pairsWithContext)} pairs with context)`,
    `  ${n(plan.pairs)} pairs: ${n(plan.rescore)} to score, ${n(plan.copy)} to copy${plan.copiedFrom ? ` from ${plan.copiedFrom}` : ""}`,
    cost,
  ].join("\n");
}

function fmt(x: unknown): string {
  return typeof x === "number" ? `${(100 * x).toFixed(1)}%` : "-";
}

function statusLines(status: ScheduleStatus): string[] {
  return status.jobs.map((j) => {
    const last = j.lastRun ? `last ${j.lastRun.status} at ${iso(j.lastRun.due).slice(0, 16)}Z` : "never ran";
    const next = j.paused ? `PAUSED: ${j.pauseReason ?? ""}` : `next due ${j.nextDue === null ? "-" : `${iso(j.nextDue).slice(0, 16)}Z`}`;
    const c = j.counters;
    return `${j.job.padEnd(8)} ${j.cadence.padEnd(14)} ${last}; ${next}; runs ${c.runs} (ok ${c.succeeded}, failed ${c.failed}, halted ${c.halted}, skipped ${c.skipped}, missed ${c.missed})`;
  });
}

function schedulerOptions(config: FreshrecConfig["schedule"]) {
  return { overlap: config.overlap, catchupWindowMs: config.catchupWindowDays * DAY_MS, maxConsecutiveFailures: config.maxConsecutiveFailures };
}

function jobsOf(open: OpenLoop, config: FreshrecConfig): JobDefinition[] {
  return hybridJobs({
    finetune: open.loop.finetuneJob(),
    refresh: open.loop.refreshJob(),
    finetuneCadence: config.schedule.finetuneCadence,
    refreshCadence: config.schedule.refreshCadence,
    finetuneTrigger: config.finetune.trigger,
  });
}

export function registerRefresh(program: Command): void {
  program
    .command("refresh")
    .description("RAG refresh now: recount the recent window, rebuild the table with the live model (incrementally), publish")
    .option("--as-of <time>", "retrieve from data before this time (default: now, or just after the newest event)")
    .option("--full", "re-score every pair instead of copying those whose context did not change")
    .option("--no-publish", "build and keep the table without making it live")
    .option("--dry-run", "say what the refresh would score and what that would cost (prompts x tokens x price), build nothing")
    .addHelpText("after", "\nExamples:\n  freshrec refresh\n  freshrec refresh --dry-run\n  freshrec refresh --as-of 2025-06-03 --full --json")
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<{ asOf?: string; full?: boolean; publish: boolean; dryRun?: boolean }>();
        const open = await openLoop(ctx);
        try {
          const asOf = await resolveAsOf(ctx, open.events, opts.asOf);
          const model = await open.loop.liveModel();
          const options: RefreshOptions = {
            events: open.events,
            tables: open.tables,
            clusters: open.clusters,
            model,
            templateHash: PROMPT_TEMPLATE_HASH,
            rag: { ...ctx.config.rag, positiveMin: open.positiveMin },
            full: Boolean(opts.full),
            topN: ctx.config.tables.topN,
            keep: ctx.config.tables.keep,
            publish: opts.publish,
            progress: ctx.progress,
            signal: ctx.signal,
          };
          if (opts.dryRun) {
            const plan = await planRefresh(asOf, options);
            return { json: { dryRun: true, ...plan, asOf: iso(asOf) }, text: planText(plan, ctx.config.rag.windowDays, ctx.config.llm.backend) };
          }
          const result = await runRefresh(asOf, options);
          const fit = result.fusion;
          const text = fit
            ? [
                `table ${result.tableVersion} ${result.published ? "published" : "built (not published)"}: model ${result.modelVersion}, fusion as of ${iso(asOf)} (${fit.windowDays} d evidence, ${result.transitionsInWindow} transitions, ${result.pairsWithContext} pairs with evidence)`,
                `  fit on ${fit.sliceTransitions} transitions of ${iso(fit.slice.from)}..${iso(fit.slice.to)} (${fit.status}${fit.reason ? `: ${fit.reason}` : ""}): prior weight ${fit.params.tau.toFixed(2)} (lift ${(fit.params.lift ?? 0).toFixed(2)}), pair strength ${fit.params.alpha.toFixed(1)}, backoff ${fit.params.gamma.toFixed(2)} / ${fit.params.beta.toFixed(1)}; ${Number.isFinite(fit.perTransition) ? `${fit.perTransition.toFixed(3)} nats/transition` : "no likelihood"}${fit.countsOnlyPerTransition === null ? "" : ` (counts alone ${fit.countsOnlyPerTransition.toFixed(3)})`}${fit.priorClusters !== null && fit.priorClusters < open.clusters.length ? `; the prior knows ${fit.priorClusters} of ${open.clusters.length} clusters (the others were first seen after the model's data)` : ""}`,
                `  ${result.pairs} pairs computed; ${result.rescored} prompts scored (the model's prior, once per version); ${(result.retrieveSeconds + result.seconds).toFixed(1)} s`,
              ].join("\n")
            : [
                `table ${result.tableVersion} ${result.published ? "published" : "built (not published)"}: model ${result.modelVersion}, RAG as of ${iso(asOf)} (${ctx.config.rag.windowDays} d, ${result.transitionsInWindow} transitions, ${result.pairsWithContext} pairs with context)`,
                `  ${result.pairs} pairs: ${result.rescored} re-scored, ${result.copied} copied; ${Math.round(result.promptsPerSecond)} prompts/s, ${result.seconds.toFixed(1)} s`,
              ].join("\n");
          return { json: { ...result, asOf: iso(asOf), fusion: fit && fusionFitView(fit) }, text };
        } finally {
          await open.close();
        }
      }),
    );

  const schedule = program.command("schedule").description("the hybrid schedule: monthly fine-tuning behind gates, RAG refresh every few days");
  schedule
    .command("run")
    .description("run both jobs on their cadences until stopped (Ctrl-C), or --simulate them over past data on a virtual clock")
    .option("--simulate", "replay the schedule over [--from, --to) on a virtual clock, with the real jobs, as a new schedule: each job first falls due at its first due time at or after --from (with store.url: on a copy of the deployment under <workspace>/simulations/schedule)")
    .option("--from <time>", "start of the simulated period")
    .option("--to <time>", "end of the simulated period (default: just after the newest event)")
    .addHelpText("after", "\nExamples:\n  freshrec schedule run\n  freshrec schedule run --simulate --from 2025-10-01 --to 2025-12-01")
    .action(action(async (ctx, command) => runSchedule(ctx, command.opts())));

  schedule
    .command("status")
    .description("each job's cadence, last run, next due time, counters and pause state, and which process drives the schedule")
    .addHelpText("after", "\nExample:\n  freshrec schedule status --json")
    .action(
      action(async (ctx) => {
        // The schedule the config names: the workspace's file, or with store.url the deployment's, whichever host runs it.
        const store = await ctx.openScheduleStore();
        try {
          const status = await readScheduleStatus(store, scheduleDefinitions(ctx.config), ctx.clock.now(), null);
          const recent = await store.runs({ limit: 10 });
          const driver = await store.driver();
          const drivenBy = driver === null ? "no process drives the schedule now (freshrec schedule run, or serve --schedule)" : `driven by host ${driver.host} pid ${driver.pid} since ${iso(driver.since)}`;
          return {
            json: { ...scheduleStatusView(status), driver: driver && { ...driver, since: iso(driver.since) }, recent: recent.map(runRecordView) },
            text: [drivenBy, ...statusLines(status), ...(recent.length ? ["recent runs:", ...recent.map(runLine)] : [])].join("\n"),
          };
        } finally {
          await store.close();
        }
      }),
    );

  for (const verb of ["pause", "resume"] as const) {
    const command = schedule
      .command(`${verb} <job>`)
      .description(verb === "pause" ? "pause a job (finetune or refresh) until resumed" : "resume a paused job (after a halted fine-tune was reviewed, for example)");
    if (verb === "pause") command.option("--reason <text>", "why, shown by schedule status");
    command
      .addHelpText("after", verb === "pause" ? "\nExample:\n  freshrec schedule pause refresh --reason 'event pipeline outage'" : "\nExample:\n  freshrec schedule resume finetune")
      .action(
        action(async (ctx, command) => {
          const [job] = command.args;
          if (job !== "finetune" && job !== "refresh") throw new BadInputError(`job must be finetune or refresh, got ${JSON.stringify(job)}`);
          // No lease: a pause or resume is one transaction beside the running worker, which honours it at its next look.
          const store = await ctx.openScheduleStore();
          try {
            const noop = async () => ({ status: "succeeded" as const });
            const scheduler = new Scheduler({
              jobs: hybridJobs({ finetune: noop, refresh: noop, finetuneCadence: ctx.config.schedule.finetuneCadence, refreshCadence: ctx.config.schedule.refreshCadence }),
              store,
              clock: ctx.clock,
            });
            const state = verb === "pause" ? await scheduler.pause(job, command.opts<{ reason?: string }>().reason ?? "paused by hand") : await scheduler.resume(job);
            return { json: jobStateView(state), text: `${job}: ${state.paused ? `paused (${state.pauseReason})` : "running on its cadence"}` };
          } finally {
            await store.close();
          }
        }),
      );
  }
}

/** The two jobs' names and cadences: all a process that does not run them needs to read the schedule's status. */
export function scheduleDefinitions(config: FreshrecConfig): { name: string; cadence: string }[] {
  return [
    { name: "finetune", cadence: config.schedule.finetuneCadence },
    { name: "refresh", cadence: config.schedule.refreshCadence },
  ];
}

/** Where `schedule run --simulate` on store.url keeps its copy of the deployment: tables, models and run log of its own. */
export function scheduleSimulationDir(workspace: string): string {
  return join(workspace, "simulations", "schedule");
}

type ScheduleOptions = { simulate?: boolean; from?: string; to?: string };

async function runSchedule(ctx: CommandContext, opts: ScheduleOptions): Promise<CommandResult> {
  if (opts.simulate && ctx.config.store.url !== null) return simulateOnCopy(ctx, opts);
  const open = await openLoop(ctx);
  let share: EventStoreShare | null = null;
  try {
    // Before anything slow: a read-only command started meanwhile reads through this process.
    share = await EventStoreShare.startFor(open.events, opts.simulate ? "freshrec schedule run --simulate" : "freshrec schedule run");
    if (!(await open.registry.live())) throw new BadInputError("no live model: run freshrec pretrain first");
    const jobs = jobsOf(open, ctx.config);
    const lines: string[] = [];
    const onRun = (run: RunRecord) => {
      const line = runLine(run);
      lines.push(line);
      ctx.log(line);
    };
    if (opts.simulate) {
      const from = timeOption("from", opts.from);
      if (from === undefined) throw new BadInputError("--simulate needs --from TIME");
      const to = timeOption("to", opts.to) ?? (await resolveAsOf(ctx, open.events, undefined));
      if (!(to > from)) throw new BadInputError(`--to (${iso(to)}) must be after --from (${iso(from)})`);
      // The simulation's run log is its own file, so a simulated month never pollutes the live schedule's state. Each
      // simulation is a schedule of its own over [from, to): the last one's log is replaced, so every job is new at
      // `from` and first falls due at its first due time at or after it (the rule for a job the scheduler has never
      // seen). Continuing the last simulation's log instead would find its jobs past an earlier window: nothing would run.
      // No other process has this file: the simulation holds the workspace's event store, opened above.
      const log = scheduleStorePath(ctx.paths.root).replace(/\.sqlite$/, ".simulated.sqlite");
      for (const file of [log, `${log}-wal`, `${log}-shm`]) rmSync(file, { force: true });
      const store = SqliteScheduleStore.open(log);
      try {
        const scheduler = new Scheduler({ jobs, store, clock: new VirtualClock(from), ...schedulerOptions(ctx.config.schedule), onRun });
        const result = await scheduler.simulate({ from, to });
        return {
          json: { simulated: { from: iso(from), to: iso(to) }, runs: result.runs.map(runRecordView), status: scheduleStatusView(result.status) },
          text: [`simulated ${iso(from)} .. ${iso(to)}: ${result.runs.length} runs`, ...lines, ...statusLines(result.status)].join("\n"),
        };
      } finally {
        await store.close();
      }
    }
    const store = await ctx.openScheduleStore();
    try {
      const scheduler = new Scheduler({ jobs, store, clock: ctx.clock, ...schedulerOptions(ctx.config.schedule), onRun });
      // Before anything is said or run: a second worker on the same schedule is refused here, naming the first.
      await scheduler.claim();
      const stop = () => {
        ctx.log("stopping: the running job is cancelled, its partial table is marked failed");
        void scheduler.stop();
      };
      ctx.signal.addEventListener("abort", stop, { once: true });
      try {
        for (const line of statusLines(await scheduler.status())) ctx.log(line);
        await scheduler.start();
      } finally {
        ctx.signal.removeEventListener("abort", stop);
        // start() gives the lease up when it ends; this covers a failure before it started.
        await scheduler.release();
      }
      const status = await scheduler.status();
      return { json: { runs: lines.length, status: scheduleStatusView(status) }, text: [`stopped after ${lines.length} runs`, ...statusLines(status)].join("\n") };
    } finally {
      await store.close();
    }
  } finally {
    await share?.close();
    await open.close();
  }
}

/**
 * `schedule run --simulate` on store.url. The simulated jobs are the real ones: their refreshes publish tables built
 * from past data and a fine-tune that passes its gates goes live, which in the deployment's stores every serve replica
 * would follow. So the simulation runs on a copy, an embedded workspace at scheduleSimulationDir (emptied first), as
 * `experiment simulate` does: the deployment's events copied through the event store contract, its live model
 * registered there as the live version (its file read where it is, checked against the registered sha256), and
 * tables, models, run log and response cache of the copy's own. The deployment's database is only read.
 */
async function simulateOnCopy(ctx: CommandContext, opts: ScheduleOptions): Promise<CommandResult> {
  // What is wrong with the window is said before anything is copied.
  if (timeOption("from", opts.from) === undefined) throw new BadInputError("--simulate needs --from TIME");
  timeOption("to", opts.to);
  const deployed = await liveModelFile(ctx);
  if (!deployed) throw new BadInputError(`no live model in the deployment's registry (store.url = ${redactedUrl(ctx.config.store.url!)}): run freshrec pretrain first`);
  const { live, file: liveFile } = deployed;
  const dir = scheduleSimulationDir(ctx.paths.root);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const copy = scratchContext(ctx, dir);
  const events = await ctx.openEventStore();
  try {
    const target = await EventStore.open(copy.paths.events);
    try {
      ctx.log(`simulating on a copy of the deployment in ${dir}: copying the events of ${events.location}`);
      await copyEvents(events, target);
    } finally {
      target.close();
    }
  } finally {
    await events.close();
  }
  const copied = await copy.openRegistry();
  let model: ModelVersion;
  try {
    const registered = await copied.register({
      kind: live.kind,
      filePath: liveFile,
      sha256: live.sha256,
      window: live.window,
      trainSamples: live.trainSamples,
      validationSamples: live.validationSamples,
      metrics: live.metrics,
      templateHash: live.templateHash,
      vocabularyHash: live.vocabularyHash,
      reason: `the deployment's live model ${live.version}`,
    });
    model = await copied.makeLive(registered.version, `the deployment's live model ${live.version}`);
  } finally {
    await copied.close();
  }
  const result = await runSchedule(copy, opts);
  // copy: where the simulation ran, and the deployment's live model under the version it has there.
  const where = { dir, deploymentModel: live.version, model: model.version };
  return {
    ...result,
    json: { ...result.json, copy: where },
    text: `${result.text}\nsimulated on a copy of the deployment in ${dir} (its live model ${live.version} is ${model.version} there); the deployment was only read`,
  };
}
