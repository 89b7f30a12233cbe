/**
 * The demo's hybrid loop: a base model trained on everything before the last months of the data, then the real
 * schedule (monthly fine-tunes behind the gates, a refresh every 2 days) simulated over those months on a virtual
 * clock, publishing into the table store the config names (the workspace's, or with store.url the deployment's
 * database), with a summary per month scored on the month's real transitions against the table that was live at
 * each moment.
 */
import { VirtualClock } from "../../domain/clock.js";
import { scoreTransitions, type LiveTableEntry } from "../../evaluation/scoring.js";
import { timedTransitions } from "../../mining/transitions.js";
import type { TableLookup } from "../../tables/index.js";
import { loadLookup } from "../../serving/table-loader.js";
import { Scheduler, SqliteScheduleStore, hybridJobs, scheduleStorePath, type JobRun, type RunRecord } from "../../update/schedule/index.js";
import type { CommandContext } from "../context.js";
import { openLoop, registerConfiguredBase, trainBaseModel } from "../loop-context.js";
import { runLine } from "./refresh.js";
import { iso, pct as pctOf } from "../format.js";
import { runRecordView } from "../../serving/views.js";

/** The demo's base model learns from the most recent 10,000 transitions, so the whole demo stays a few minutes. */
const DEMO_PRETRAIN_SAMPLES = 10_000;
const pct = (x: number) => pctOf(x, 1);

export async function runDemoLoop(ctx: CommandContext, end: number, months: number, epochs: number, steps: number) {
  const last = new Date(end - 1);
  const from = Date.UTC(last.getUTCFullYear(), last.getUTCMonth() - months + 1, 1);
  const lines: string[] = [];
  const open = await openLoop(ctx);
  try {
    const live = await open.registry.live();
    let base: Record<string, unknown>;
    if (ctx.config.llm.backend !== "embedded") {
      // Another backend's model is used as it is (its training is outside freshrec): the demo registers it as the
      // base, like `pretrain` does, and the loop below fine-tunes it through the backend's trainer.
      // Only a base version without data after the demo's start is reused: a fine-tune from an earlier demo run has
      // seen the months it would be scored on.
      const reusable = live && live.kind === "base" && (live.window === null || live.window.to <= from);
      const version = reusable ? live.version : (await registerConfiguredBase(ctx)).version;
      if ((await open.registry.live())?.version !== version) await open.registry.makeLive(version, "demo: the configured model");
      ctx.log(`4/${steps} using the configured ${ctx.config.llm.backend} model as the base model (${version})`);
      base = { modelVersion: version, backend: ctx.config.llm.backend, trained: false };
      lines.push(`base model: ${version}, the configured ${ctx.config.llm.backend} model (not trained here)`);
    } else if (live && live.window && live.window.to <= from) {
      ctx.log(`4/${steps} reusing the live model ${live.version} (trained on data before ${iso(from).slice(0, 10)})`);
      base = { modelVersion: live.version, reused: true };
      lines.push(`base model: ${live.version} (reused)`);
    } else {
      ctx.log(`4/${steps} pretraining the base model on data before ${iso(from).slice(0, 10)}`);
      // Registered in the loop's registry (the workspace's, or the deployment's), which sees the new version at once.
      const { result } = await trainBaseModel(ctx, open.events, from, ctx.paths.root, { epochs, heldOut: true, maxSamples: DEMO_PRETRAIN_SAMPLES, registry: open.registry });
      if ((await open.registry.live())?.version !== result.modelVersion) await open.registry.makeLive(result.modelVersion, "demo: new base model");
      const e = result.evaluation;
      base = { modelVersion: result.modelVersion, evaluation: e, trainTokens: result.trainTokens, seconds: result.seconds };
      lines.push(
        `base model ${result.modelVersion}: ${result.training.trainSamples} samples, ${result.seconds.toFixed(0)} s` +
          (e ? `; held-out top-1 ${pct(e.modelTop1)} vs most-popular-next ${pct(e.mostPopularTop1)} (${e.transitions} transitions)` : ""),
      );
    }

    ctx.log(`5/${steps} simulating the hybrid schedule ${iso(from).slice(0, 10)} .. ${iso(end).slice(0, 10)} (fine-tune ${ctx.config.schedule.finetuneCadence}, refresh ${ctx.config.schedule.refreshCadence})`);
    const finetune = open.loop.finetuneJob({ startModelAt: from });
    const timeline: LiveTableEntry[] = [];
    const runs: RunRecord[] = [];
    // Each published table is read inside its refresh run, before a later refresh's gc can collect it.
    const published = new Map<string, TableLookup>();
    const refresh = open.loop.refreshJob();
    const refreshAndRead: JobRun = async (context) => {
      const outcome = await refresh(context);
      const version = outcome.detail?.publishedTable;
      if (typeof version === "string") published.set(version, await loadLookup(open.tables, version));
      return outcome;
    };
    // The simulated months' run log is the demo's own, never the live schedule's: a file beside it in the workspace,
    // and with store.url a private one (the database's schedule is the deployment worker's).
    const store = SqliteScheduleStore.open(ctx.config.store.url !== null ? ":memory:" : scheduleStorePath(ctx.paths.root).replace(/\.sqlite$/, ".demo.sqlite"));
    try {
      const scheduler = new Scheduler({
        jobs: hybridJobs({ finetune, refresh: refreshAndRead, finetuneCadence: ctx.config.schedule.finetuneCadence, refreshCadence: `every 2 days from ${iso(from)}` }),
        store,
        clock: new VirtualClock(from),
        onRun: (run) => {
          runs.push(run);
          ctx.log(runLine(run));
          const version = run.status === "succeeded" ? (run.detail?.publishedTable as string | undefined) : undefined;
          if (version !== undefined) {
            const lookup = published.get(version)!;
            timeline.push({ version, publishedAt: run.due, answers: (c1, c2) => (lookup.get(c1, c2) ?? []).map((a) => a.cluster) });
          }
        },
      });
      await scheduler.simulate({ from, to: end });
    } finally {
      await store.close();
    }

    const transitions = await timedTransitions(open.events, { from, to: end }, { positiveMin: open.positiveMin });
    const monthly: Record<string, unknown>[] = [];
    for (let m = 0; m < months; m++) {
      const start = Date.UTC(new Date(from).getUTCFullYear(), new Date(from).getUTCMonth() + m, 1);
      const stop = Math.min(end, Date.UTC(new Date(from).getUTCFullYear(), new Date(from).getUTCMonth() + m + 1, 1));
      const inMonth = runs.filter((r) => r.due >= start && r.due < stop);
      const tuned = inMonth.find((r) => r.job === "finetune" && !r.detail?.skipped);
      const refreshes = inMonth.filter((r) => r.job === "refresh" && r.status === "succeeded");
      const rescored = refreshes.reduce((s, r) => s + Number(r.detail?.rescored ?? 0), 0);
      const pairs = refreshes.reduce((s, r) => s + Number(r.detail?.rescored ?? 0) + Number(r.detail?.copied ?? 0), 0);
      const score = scoreTransitions(transitions.filter((t) => t.ts >= start && t.ts < stop), timeline);
      const fine = tuned
        ? `fine-tune ${String(tuned.detail?.modelVersion ?? "-")} ${tuned.status === "succeeded" ? "went live" : tuned.status.toUpperCase()} (exact-match ${pct(Number(tuned.detail?.exactMatchRate ?? 0))}, test recall ${pct(Number(tuned.detail?.testRecall ?? 0))})`
        : "no fine-tune (base model)";
      lines.push(
        `${iso(start).slice(0, 7)}: ${fine}; ${
          ctx.config.rag.method === "fusion"
            ? `${refreshes.length} fusion refreshes, ${rescored} prompts (the model's prior, once per version)`
            : `${refreshes.length} RAG refreshes, ${pairs ? pct(rescored / pairs) : "-"} of pairs re-scored`
        }; served hit@1 ${pct(score.hit1)}, hit@5 ${pct(score.hitK)} on ${score.transitions} transitions`,
      );
      monthly.push({ month: iso(start).slice(0, 7), finetune: tuned ? runRecordView(tuned) : null, refreshes: refreshes.length, rescored, pairs, hit1: score.hit1, hit5: score.hitK, transitions: score.transitions });
    }
    lines.push(`live table ${(await open.tables.live())?.version ?? "-"}, live model ${(await open.registry.live())?.version ?? "-"}; inspect with: freshrec tables list, freshrec models list`);
    return { lines, json: { from: iso(from), to: iso(end), base, monthly, runs: runs.length } };
  } finally {
    await open.close();
  }
}
