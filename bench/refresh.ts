/**
 * `npm run bench -- refresh`: the RAG refresh job on the synthetic platform with 300 clusters (89,700 ordered
 * pairs, top-10): a full build, then an incremental build two days later (only pairs whose retrieved context
 * changed are re-scored). Targets: full build <= 30 s; incremental cost proportional to the changed pairs. Times
 * include the retrieval (recounting the window) that precedes each build; the incremental build's parts are split
 * into the fixed ones (retrieval, copying unchanged rows) and the model's work, which is what scales with changes.
 * Then a fusion refresh of the same world with the model's prior computed beforehand (as it is once per model
 * version): target <= 1 s beyond its counting (reading the log and counting the windows it compares; beyond it, the
 * fit and the build up to the finished table, its rows committed durably: the build's last commit, which syncs the
 * table store's log, is counted too), run three
 * times (the median by time beyond counting serves; the others are printed, and the spread is in the keys; the first,
 * whose code is not compiled yet, is what a one-off `freshrec refresh` pays, so it is a row of its own). At 300
 * clusters a refresh works on two threads (src/update/fusion-thread.ts): the process's second thread starts with the
 * first refresh, while it reads its log, and serves the three.
 * Keys: refresh_full_300_seconds, refresh_incremental_300_seconds, refresh_incremental_rescored_share,
 * refresh_fusion_300_seconds, refresh_fusion_300_beyond_counting_seconds (and its _min and _max over the runs, and
 * refresh_fusion_300_first_beyond_counting_seconds for the first), and
 * the CPU seconds of the median run's fit and build (the process's, every thread's: on a shared host the wall
 * seconds also measure the host) with the load average before the runs.
 */
import { loadavg } from "node:os";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EventStore } from "../src/data/event-store.js";
import { ingestSynthetic } from "../src/data/ingest/synthetic.js";
import { SyntheticWorld, SYNTHETIC_DEFAULTS } from "../src/data/synthetic/index.js";
import { DAY_MS, VirtualClock } from "../src/domain/clock.js";
import { EmbeddedLanguageModel } from "../src/llm/backends/embedded.js";
import { sampleOf } from "../src/llm/contracts.js";
import { EmbeddedTrainer } from "../src/llm/engine/trainer.js";
import { PROMPT_TEMPLATE_HASH } from "../src/llm/prompt.js";
import { timedTransitions } from "../src/mining/transitions.js";
import { SqliteTableStore } from "../src/tables/index.js";
import { runRefresh } from "../src/update/refresh.js";
import { computePrior } from "../src/update/fusion.js";
import { FUSION_THREAD_MIN_CLUSTERS } from "../src/update/fusion-thread.js";
import type { BenchSuiteResult } from "./run.js";

const FUSION_RUNS = 3;

export async function run(): Promise<BenchSuiteResult> {
  const dir = mkdtempSync(join(tmpdir(), "freshrec-bench-refresh-"));
  try {
    const world = new SyntheticWorld({ ...SYNTHETIC_DEFAULTS, clustersPerDomain: 25, months: 3, users: 30_000, targetEvents: 3_000_000 });
    const events = await EventStore.open(join(dir, "events.duckdb"));
    await ingestSynthetic(events, world);
    const clusters = await events.clusters();
    const positiveMin = world.options.positiveThreshold;
    const asOf = world.endMs - 7 * DAY_MS;
    // A real model of the reference shape for the 300 clusters; a short training is enough to time table builds.
    const samples = (await timedTransitions(events, { from: asOf - 30 * DAY_MS, to: asOf }, { positiveMin, horizon: 1 })).slice(-20_000).map((t) => sampleOf(t));
    const trained = await new EmbeddedTrainer({ init: { clusters } }).train(samples, { outputPath: join(dir, "model.gguf"), epochs: 1, validationFraction: 0 });
    const model = await EmbeddedLanguageModel.open(trained.modelPath);
    const tables = SqliteTableStore.open(join(dir, "tables.sqlite"), new VirtualClock(asOf));
    const base = {
      events,
      tables,
      clusters: clusters.map((c) => c.id),
      model: { version: "bench", scorer: model },
      templateHash: PROMPT_TEMPLATE_HASH,
      rag: { windowDays: 7, positiveMin, method: "prompt" as const },
      topN: 10,
    };
    const full = await runRefresh(asOf, { ...base, full: true });
    const incremental = await runRefresh(asOf + 2 * DAY_MS, base);
    // Fusion: the model's prior once per version (timed apart), then a refresh that prompts nothing.
    const priorStarted = process.hrtime.bigint();
    const prior = await computePrior(model, base.clusters);
    const priorSeconds = Number(process.hrtime.bigint() - priorStarted) / 1e9;
    // Three fusion refreshes of the same instant, each reading and counting afresh (no shared evidence cache): the
    // machine is shared, so the median serves and the spread is reported beside it.
    const fusedRuns: Awaited<ReturnType<typeof runRefresh>>[] = [];
    const load = loadavg()[0];
    for (let run = 0; run < FUSION_RUNS; run++) {
      fusedRuns.push(
        await runRefresh(asOf + 4 * DAY_MS, {
          ...base,
          rag: { positiveMin, method: "fusion" },
          model: { version: "bench", scorer: model, prior: async () => ({ prior, promptsScored: 0 }), priorKey: "bench" },
        }),
      );
    }
    const beyond = (r: (typeof fusedRuns)[number]) => r.fusionPhases!.fitSeconds + r.fusionPhases!.buildSeconds;
    const byBeyond = [...fusedRuns].sort((x, y) => beyond(x) - beyond(y));
    const fused = byBeyond[Math.floor(byBeyond.length / 2)];
    const fusion = fused.fusionPhases!;
    await model.close();
    tables.close();
    events.close();
    const share = incremental.rescored / incremental.pairs;
    // Proportional cost: the model's work (prompts scored, their seconds) per re-scored pair, incremental vs full.
    // The rest is fixed per refresh whatever changed: recounting the window and copying the unchanged rows.
    const perPairRatio =
      incremental.rescored > 0 ? incremental.phases.scoreSeconds / incremental.rescored / (full.phases.scoreSeconds / full.rescored) : Number.NaN;
    const fixed = (r: typeof full) => r.retrieveSeconds + r.phases.diffSeconds + r.phases.copySeconds;
    return {
      results: {
        refresh_full_300_seconds: full.retrieveSeconds + full.seconds,
        refresh_full_300_prompts_per_s: full.promptsPerSecond,
        refresh_incremental_300_seconds: incremental.retrieveSeconds + incremental.seconds,
        refresh_incremental_rescored_share: share,
        refresh_incremental_cost_per_rescored_pair_ratio: perPairRatio,
        refresh_incremental_fixed_seconds: fixed(incremental),
        refresh_incremental_copy_seconds: incremental.phases.copySeconds,
        refresh_retrieve_seconds: incremental.retrieveSeconds,
        refresh_full_score_seconds: full.phases.scoreSeconds,
        refresh_pairs_with_context: full.pairsWithContext,
        refresh_fusion_300_seconds: fused.retrieveSeconds + fused.seconds,
        refresh_fusion_300_counting_seconds: fusion.countSeconds,
        refresh_fusion_300_beyond_counting_seconds: fusion.fitSeconds + fusion.buildSeconds,
        refresh_fusion_300_fit_seconds: fusion.fitSeconds,
        refresh_fusion_300_build_seconds: fusion.buildSeconds,
        refresh_fusion_300_fit_cpu_seconds: fusion.fitCpuSeconds,
        refresh_fusion_300_build_cpu_seconds: fusion.buildCpuSeconds,
        refresh_fusion_load_average: load,
        refresh_fusion_threads: base.clusters.length >= FUSION_THREAD_MIN_CLUSTERS ? 2 : 1,
        refresh_fusion_prior_300_seconds: priorSeconds,
        refresh_fusion_300_beyond_counting_min_seconds: beyond(byBeyond[0]),
        refresh_fusion_300_beyond_counting_max_seconds: beyond(byBeyond[byBeyond.length - 1]),
        refresh_fusion_300_first_beyond_counting_seconds: beyond(fusedRuns[0]),
      },
      rows: [
        {
          metric: `full refresh, 300 clusters (${full.pairs} pairs, top-10, ${full.pairsWithContext} with RAG context), retrieval included`,
          value: full.retrieveSeconds + full.seconds,
          unit: "s",
          target: "<= 30",
          met: full.retrieveSeconds + full.seconds <= 30,
        },
        { metric: "full build throughput", value: full.promptsPerSecond, unit: "prompts/s" },
        { metric: "incremental refresh two days later, retrieval included", value: incremental.retrieveSeconds + incremental.seconds, unit: "s" },
        { metric: "share of pairs re-scored by the incremental build (= share of prompts scored)", value: share, unit: "share" },
        { metric: "  of which copying the unchanged rows (fixed per refresh)", value: incremental.phases.copySeconds, unit: "s" },
        { metric: "  of which scoring the re-scored pairs", value: incremental.phases.scoreSeconds, unit: "s" },
        { metric: "retrieval before the build: recounting the 7-day window over the whole history (fixed)", value: incremental.retrieveSeconds, unit: "s" },
        {
          // Prompts scored are exactly the changed pairs; each costs more than in a full build, whose dense grid of
          // pairs shares prompt prefixes (decoded once per ~48 prompts) that scattered changed pairs do not share.
          metric: "incremental scoring seconds per re-scored pair / full build's (above 1: less shared prompt prefix)",
          value: perPairRatio,
          unit: "ratio",
        },
        {
          metric: `fusion refresh, 300 clusters (${fused.fusion!.windowDays} d evidence window fitted, prior cached), all included; median of ${FUSION_RUNS} by time beyond counting`,
          value: fused.retrieveSeconds + fused.seconds,
          unit: "s",
        },
        { metric: "  of which reading the log and counting its windows", value: fusion.countSeconds, unit: "s" },
        {
          metric: "  beyond counting: fitting the window and strengths, computing and writing the 89,700 rows (up to the finished table)",
          value: fusion.fitSeconds + fusion.buildSeconds,
          unit: "s",
          target: "<= 1",
          met: fusion.fitSeconds + fusion.buildSeconds <= 1,
        },
        {
          // A one-off `freshrec refresh` is a new process: its refresh runs code not compiled yet, as this first run
          // does (a serving scheduler's later refreshes are the warm ones the median stands for).
          metric: "  beyond counting, the process's first fusion refresh (the fusion code not yet compiled by the JIT, as in a one-off `freshrec refresh`)",
          value: beyond(fusedRuns[0]),
          unit: "s",
          target: "<= 1",
          met: beyond(fusedRuns[0]) <= 1,
        },
        { metric: "    of which fitting the window and strengths", value: fusion.fitSeconds, unit: "s" },
        { metric: "    of which computing and writing the rows, and finishing the table", value: fusion.buildSeconds, unit: "s" },
        { metric: "    CPU seconds of the fit (the process's, every thread's)", value: fusion.fitCpuSeconds, unit: "s" },
        { metric: "    CPU seconds of the build", value: fusion.buildCpuSeconds, unit: "s" },
        { metric: "load average (1 min) before the fusion runs", value: load, unit: "" },
        { metric: "threads of the fusion refresh (coarse pass and each batch's rows shared, a batch written while the next is computed)", value: base.clusters.length >= FUSION_THREAD_MIN_CLUSTERS ? 2 : 1, unit: "" },
        ...fusedRuns.map((r, k) => ({
          metric: `  fusion run ${k + 1}: beyond counting (fit ${r.fusionPhases!.fitSeconds.toFixed(2)} + build ${r.fusionPhases!.buildSeconds.toFixed(2)} s, CPU ${r.fusionPhases!.fitCpuSeconds.toFixed(2)} + ${r.fusionPhases!.buildCpuSeconds.toFixed(2)} s; counting ${r.fusionPhases!.countSeconds.toFixed(2)} s)`,
          value: beyond(r),
          unit: "s",
        })),
        { metric: "the model's prior for every pair (once per model version, not per refresh)", value: priorSeconds, unit: "s" },
      ],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
