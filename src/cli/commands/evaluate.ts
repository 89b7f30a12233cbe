/**
 * `freshrec evaluate replay`: the paper's comparison (fine-tuning, RAG, hybrid and the non-LLM baselines) on the
 * workspace's own logs, through the production scheduler on a virtual clock. `freshrec evaluate context`: whether
 * a model reads its RAG context (src/evaluation/context-use.ts).
 */
import type { Command } from "commander";
import { join } from "node:path";
import { BadInputError } from "../../domain/errors.js";
import { replay } from "../../evaluation/replay.js";
import { writeReplayReport } from "../../evaluation/replay-report.js";
import { ALL_STRATEGIES, defaultStrategies, KNOWN_STRATEGIES, LLM_STRATEGIES, ORACLE_STRATEGY, parseStrategies, WORLD_STRATEGIES, primeSnapshots, strategySetups, type StartModel, type StrategyEnvironment } from "../../evaluation/strategies.js";
import { recordedSyntheticWorld, recordsSyntheticWorld } from "../../data/synthetic/index.js";
import { ModelRegistry } from "../../llm/registry.js";
import { CachingTrainer } from "../../llm/training-cache.js";
import { FinetuneMemo } from "../../update/finetune.js";
import { SnapshotCache } from "../../update/rag.js";
import { EvidenceCache } from "../../update/fusion.js";
import type { FreshrecConfig } from "../config.js";
import { createHash } from "node:crypto";
import { cannotTrain, configuredBackend, configuredModelFile, loopSettings, openLoop, resolveAsOf, trainBaseModel } from "../loop-context.js";
import { measureContextUse, type ContextUse } from "../../evaluation/context-use.js";
import type { LanguageModel } from "../../llm/contracts.js";
import { trainingProgress } from "../progress.js";
import { action, positiveInt, timeOption } from "../run.js";
import { runLine } from "./refresh.js";
import { iso, pct } from "../format.js";
import { replayResultView, windowView } from "../../serving/views.js";


interface ReplayFlags {
  from?: string;
  to?: string;
  strategies?: string;
  refreshDays: string;
  ragTop?: string;
  ragMode?: string;
  ragScope?: string;
  horizon: string;
  resamples: string;
  price?: string;
  label?: string;
  parallel: string;
}

export function registerEvaluate(program: Command): void {
  const evaluate = program.command("evaluate").description("offline evaluation on the workspace's logs");
  evaluate
    .command("replay")
    .description("simulate each strategy's schedule over a past period and score every real transition against the table live at its moment")
    .requiredOption("--from <time>", "start of the replayed period (the start model is trained on data before it)")
    .option("--to <time>", "end of the period (default: just after the newest event)")
    .option(
      "--strategies <list>",
      `comma-separated, from: ${KNOWN_STRATEGIES.join(", ")} (default: ${ALL_STRATEGIES.join(",")}, plus ${WORLD_STRATEGIES.join(",")} on a synthetic workspace)`,
    )
    .option("--refresh-days <list>", "RAG refresh cadence in days; several (1,2,4,7) expand each refreshing strategy into one per cadence", "2")
    .option("--rag-top <n>", "retrieved successors per prompt (ablation: 1 vs 3; default rag.topN)")
    .option("--rag-mode <mode>", "frequency | trend (ablation; default rag.mode)")
    .option("--rag-scope <scope>", "instance | global: per-pair contexts or one shared context (ablation)")
    .option("--horizon <n>", "clusters after a transition that count for the horizon hit", "5")
    .option("--resamples <n>", "bootstrap resamples for the confidence intervals", "1000")
    .option("--price <usd>", "price per million tokens for the hosted-cost estimate of prompts a backend does not price itself (the embedded model: 40 tokens a prompt; a hosted backend without configured prices: its own token estimate); a hosted backend with prices is charged its own estimate, as refresh --dry-run", "0.1")
    .option("--label <text>", "data set name in the report (default: the workspace folder)")
    .option("--parallel <n>", "strategies replayed at once (fine-tuning ones share each training and wait for it; others use the time; results do not depend on it)", "3")
    .addHelpText(
      "after",
      [
        "",
        `${ORACLE_STRATEGY}: on a workspace made by \`freshrec synth\` or \`freshrec demo\` only, the synthetic world's true kernel ranks`,
        "every pair's successors (a table at the start and at each month boundary, when the kernel changes; no prompt,",
        "no training). It is the ceiling a table can reach, not a product strategy: every strategy's hit@1 and hit@5 are",
        "also shown as a share of the oracle's (shareOfOracle). oracle-prior, also synthetic only: the hybrid with a perfect",
        "model, its fusion refreshes fusing the kernel of the month each fine-tune's data ended in (schedule.finetuneCadence)",
        "with the fresh evidence: the most better fine-tunes could add. Asked for on other data, the replay stops with exit code 2.",
        "",
        "Examples:",
        "  freshrec evaluate replay --from 2025-10-01 --to 2026-01-01",
        "  freshrec evaluate replay --from 2025-10-01 --strategies hybrid,rag,successor-top1 --refresh-days 1,2,4,7",
        "  freshrec evaluate replay --from 2025-11-01 --strategies counts-backoff,hybrid,oracle",
      ].join("\n"),
    )
    .action(
      action(async (ctx, command) => {
        const f = command.opts<ReplayFlags>();
        const asked = f.strategies === undefined ? null : parseStrategies(f.strategies);
        const refreshDays = f.refreshDays.split(",").map((d) => positiveInt("refresh-days", d.trim())!);
        const horizon = positiveInt("horizon", f.horizon)!;
        const resamples = positiveInt("resamples", f.resamples)!;
        const parallel = positiveInt("parallel", f.parallel)!;
        const price = Number(f.price);
        if (!(price >= 0)) throw new BadInputError(`--price: expected a non-negative number, got ${JSON.stringify(f.price)}`);
        if (f.ragMode !== undefined && f.ragMode !== "frequency" && f.ragMode !== "trend") throw new BadInputError(`--rag-mode: expected frequency or trend, got ${JSON.stringify(f.ragMode)}`);
        if (f.ragScope !== undefined && f.ragScope !== "instance" && f.ragScope !== "global") throw new BadInputError(`--rag-scope: expected instance or global, got ${JSON.stringify(f.ragScope)}`);
        const from = timeOption("from", f.from)!;
        const events = await ctx.openEventStore();
        // The embedded start model trains while the baselines replay; a failure elsewhere stops it before the
        // events store closes under it.
        const stopStart = new AbortController();
        const onInterrupt = () => stopStart.abort();
        ctx.signal.addEventListener("abort", onInterrupt, { once: true });
        let startModel: Promise<StartModel> | null = null;
        try {
          const to = timeOption("to", f.to) ?? (await resolveAsOf(ctx, events, undefined));
          if (!(to > from)) throw new BadInputError(`--to (${iso(to)}) must be after --from (${iso(from)})`);
          let names = asked ?? defaultStrategies(await recordsSyntheticWorld(events));
          // The world of the oracle and the oracle prior is rebuilt (its kernel calibrated) before anything else
          // runs. Asked for, its absence stops the replay before any training; included by default, they are left
          // out and the log says why.
          const readsWorld = names.filter((n) => (WORLD_STRATEGIES as readonly string[]).includes(n));
          const recorded = readsWorld.length > 0 ? await recordedSyntheticWorld(events) : null;
          if (recorded && !recorded.world) {
            if (asked) throw new BadInputError(`--strategies ${readsWorld.join(",")}: ${recorded.reason}; ${readsWorld.length === 1 ? "it exists" : "they exist"} only on the synthetic platform`);
            ctx.log(`no ${readsWorld.join(" or ")} row: ${recorded.reason}`);
            names = names.filter((n) => !readsWorld.includes(n));
          }
          const positiveMin = await ctx.positiveMin(events);
          const rag = {
            ...ctx.config.rag,
            ...(f.ragTop ? { topN: positiveInt("rag-top", f.ragTop)! } : {}),
            ...(f.ragMode ? { mode: f.ragMode as "frequency" | "trend" } : {}),
            ...(f.ragScope === "global" ? { mode: "global" as const } : {}),
          };
          const settings = loopSettings({ ...ctx.config, rag }, positiveMin);
          const workDir = join(ctx.paths.root, "replay");
          // The start model depends on the period's start and on every setting that shapes it: one cache entry each.
          const startKey = createHash("sha256")
            .update(
              JSON.stringify({
                // Without relabelling, as before the option existed, so the start models trained then keep their key.
                pretrain: ctx.config.pretrain.relabelShare === 0 ? { ...ctx.config.pretrain, relabelShare: undefined } : ctx.config.pretrain,
                model: ctx.config.model,
                rag: promptRagSettings(ctx.config.rag),
                positiveMin,
                // Engine v2's start models keep the key they had while a second engine existed.
                training: ctx.config.training,
              }),
            )
            .digest("hex")
            .slice(0, 8);
          const catalog = await events.clusters();
          const backend = configuredBackend(ctx, catalog);
          const needsModel = names.some((n) => (LLM_STRATEGIES as readonly string[]).includes(n));
          // A configured external model is the start model as it is: what it was trained on is outside freshrec's
          // view, so the no-leakage guarantee covers only the tables and fine-tunes made here. The embedded one
          // trains while the baselines replay (the strategies wait for it; a failure fails the replay).
          startModel = !needsModel
            ? null
            : backend.kind === "embedded"
              ? startModelFor(ctx, events, from, join(workDir, `start-${iso(from).slice(0, 10)}-${startKey}`), stopStart.signal)
              : Promise.resolve({ path: configuredModelFile(ctx, workDir, "start"), window: null, version: `configured ${backend.kind} model` });
          // Awaited by the LLM strategies and below; this keeps a failure that comes before them from going unhandled.
          startModel?.catch(() => undefined);
          const clusters = catalog.map((c) => c.id);
          const env: StrategyEnvironment = {
            events,
            window: { from, to },
            clusters,
            settings,
            startModel: startModel ?? { path: "", window: null, version: "-" },
            workDir,
            finetuneCadence: ctx.config.schedule.finetuneCadence,
            drift: { minGain: ctx.config.finetune.driftMinGain, minDays: ctx.config.finetune.driftMinDays },
            // finetune-monthly and hybrid run the same fine-tunes, and so does every re-run of a replay: train once.
            trainer: new CachingTrainer(backend.trainer() ?? cannotTrain(backend.kind), join(workDir, "training-cache"), backend.description),
            openModel: (path) => backend.openModel(path),
            // The store does not change during a replay: strategies retrieving at the same instant share it.
            snapshots: new SnapshotCache(),
            // ...and the fusion strategies one evidence log of the whole period (each refresh counts only before it).
            evidence: new EvidenceCache({ from, to }),
            // ...and the same curated sets and gates for their identical fine-tunes.
            finetuneMemo: new FinetuneMemo(events),
            world: recorded?.world ?? null,
            onTraining: (strategy, e) => trainingProgress(ctx.progress, ctx.log, `${strategy} fine-tuning`)(e),
          };
          const setups = strategySetups(names, env, refreshDays);
          // Every refresh instant's RAG window counted in one query before the strategies start.
          await primeSnapshots(names, env, refreshDays);
          ctx.log(`replaying ${setups.map((s) => s.name).join(", ")} over ${iso(from)} .. ${iso(to)}`);
          const result = await replay({
            events,
            window: { from, to },
            strategies: setups,
            positiveMin,
            horizon,
            resamples,
            pricePerMillionTokens: price,
            clusters,
            parallel,
            onRun: (strategy, run) => ctx.log(`[${strategy}] ${runLine(run)}`),
          });
          const start = startModel && (await startModel);
          const label = f.label ?? ctx.paths.root.split("/").filter(Boolean).at(-1) ?? "workspace";
          const report = writeReplayReport(ctx.paths.reports, result, label, replayResultView(result));
          const s = result.strategies;
          const share = (x: number | null) => (x === null ? "-" : `${(100 * x).toFixed(1)}%`);
          const rows = Object.keys(s).map(
            (n) =>
              `  ${n.padEnd(20)} hit@1 ${pct(s[n].hit1).padStart(7)}  hit@5 ${pct(s[n].hit5).padStart(7)}  horizon ${pct(s[n].horizonHit).padStart(7)}  coverage ${String(s[n].coverage).padStart(4)}  staleness ${s[n].stalenessDays.toFixed(1).padStart(5)} d  tables ${String(s[n].tablesPublished).padStart(3)}  prompts ${String(s[n].cost.promptsScored).padStart(8)}  train tokens ${String(s[n].cost.trainingTokens).padStart(9)}` +
              (s[n].shareOfOracle ? `  of ${result.ceiling}: hit@1 ${share(s[n].shareOfOracle!.hit1).padStart(6)} hit@5 ${share(s[n].shareOfOracle!.hit5).padStart(6)}` : ""),
          );
          const text = [
            `replay ${iso(from).slice(0, 10)} .. ${iso(to).slice(0, 10)}: ${result.transitions} novel transitions of ${result.users} users`,
            ...(start ? [`start model: ${start.version} trained on ${start.window ? `${iso(start.window.from).slice(0, 10)}..${iso(start.window.to).slice(0, 10)}` : "?"}`] : []),
            ...rows,
            `reports: ${report.html}`,
            `         ${report.md}`,
            `         ${report.json}`,
          ].join("\n");
          return { json: { ...replayResultView(result), startModel: start && { ...start, window: windowView(start.window) }, reports: report }, text };
        } catch (error) {
          stopStart.abort();
          throw error;
        } finally {
          ctx.signal.removeEventListener("abort", onInterrupt);
          await startModel?.catch(() => undefined);
          events.close();
        }
      }),
    );

  evaluate
    .command("context")
    .description("does the model read its RAG context? On the days after each time: hit@1 of the retrieved successor, of the model without and with the context, and how often it follows the context")
    .requiredOption("--at <times>", "refresh times the contexts are retrieved at, comma-separated (e.g. the days after month boundaries)")
    .option("--days <n>", "days after each time whose novel transitions are asked", "2")
    .option("--model <file>", "model file of the configured backend (default: the live model)")
    .addHelpText("after", "\nExamples:\n  freshrec evaluate context --at 2025-10-09,2025-11-09\n  freshrec evaluate context --at 2025-10-09 --model models/m000003/model.gguf --json")
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<{ at: string; days: string; model?: string }>();
        const times = opts.at.split(",").map((t) => timeOption("at", t.trim())!);
        const days = positiveInt("days", opts.days)!;
        const open = await openLoop(ctx);
        let external: LanguageModel | null = null;
        try {
          const model = opts.model
            ? (external = await configuredBackend(ctx, await open.events.clusters()).openModel(opts.model))
            : (await open.loop.liveModel()).scorer;
          const rows: ContextUse[] = [];
          for (const at of times) rows.push(await measureContextUse(open.events, model, at, { days, rag: { ...ctx.config.rag, positiveMin: open.positiveMin }, signal: ctx.signal }));
          const rate = (v: number | null) => (v === null ? "-" : pct(v));
          const text = rows
            .map(
              (r) =>
                `${iso(r.at).slice(0, 10)} +${r.days} d: ${r.transitions} novel transitions, ${r.withContext} on pairs with a context; on those hit@1: successor itself ${rate(r.successorHit1)}, ` +
                `model ${rate(r.modelHit1)}, model with the context ${rate(r.modelWithContextHit1)}; follows the context ${rate(r.followsContext)}`,
            )
            .join("\n");
          return { json: { periods: rows.map((r) => ({ ...r, at: iso(r.at) })) }, text };
        } finally {
          await external?.close();
          await open.close();
        }
      }),
    );
}

/** The RAG settings a start model's training reads (its contexts): the fusion ones do not shape it. */
function promptRagSettings(rag: FreshrecConfig["rag"]): Omit<FreshrecConfig["rag"], "method" | "fusion"> {
  const { method: _method, fusion: _fusion, ...prompt } = rag;
  return prompt;
}

/** The model every LLM strategy starts from: trained on data before `from` only, cached per start date. */
async function startModelFor(
  ctx: Parameters<typeof trainBaseModel>[0],
  events: Parameters<typeof trainBaseModel>[1],
  from: number,
  dir: string,
  signal: AbortSignal,
): Promise<StartModel> {
  const registry = new ModelRegistry(dir, ctx.clock);
  try {
    const cached = registry.live();
    if (cached && cached.window && cached.window.to <= from) {
      ctx.log(`start model: reusing ${cached.version} of ${dir}`);
      return { path: registry.modelFile(cached), window: cached.window, version: cached.version };
    }
  } finally {
    registry.close();
  }
  const { result, window } = await trainBaseModel(ctx, events, from, dir, { epochs: ctx.config.pretrain.epochs, heldOut: false, signal });
  return { path: result.modelPath, window, version: result.modelVersion };
}
