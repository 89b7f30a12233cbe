/**
 * `npm run bench -- replay`: `evaluate replay` of one year of synthetic events, every strategy a product could run
 * (`ALL_STRATEGIES`), refreshes every 2 days, monthly fine-tunes, reference-shape model (d=128, 2 layers). Target:
 * the whole comparison in <= 10 minutes. Key: replay_year_100_seconds (plus replay_<strategy>_seconds each).
 *
 * Sizes: 108 clusters (the taxonomy grows by domain: 9 per domain is the nearest size at or above 100). The
 * fine-tunes are the product's, full size: the loop settings are the config defaults' (`loopSettings`, as `evaluate
 * replay` builds them: curation, rehearsal, gates, epochs, RAG and fusion), the trainer too (engine v2, bf16
 * products). Only the start model is sized down, and the rows say so: 10,000 samples x 2 epochs (the default
 * pretrain is 60,000 x 4, which alone takes about as long as the target).
 * Identical fine-tunes (finetune-monthly and hybrid train the same ones) run once through the replay's training
 * cache, as `freshrec evaluate replay` does; the cache starts empty. Three strategies are replayed at once, as
 * `evaluate replay` does by default (the baselines while the start model trains, then finetune-monthly and the
 * hybrid side by side, sharing each training, curated set and gate measurement): per-strategy wall times overlap
 * and do not add up to the total.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EventStore } from "../src/data/event-store.js";
import { ingestSynthetic } from "../src/data/ingest/synthetic.js";
import { SyntheticWorld, SYNTHETIC_DEFAULTS } from "../src/data/synthetic/index.js";
import { DAY_MS, VirtualClock } from "../src/domain/clock.js";
import { parseConfig } from "../src/cli/config.js";
import { EmbeddedTrainer } from "../src/llm/engine/trainer.js";
import { REFERENCE_SHAPE } from "../src/llm/engine/model-file.js";
import { pretrainBaseModel } from "../src/llm/pretrain.js";
import { CachingTrainer } from "../src/llm/training-cache.js";
import { timedTransitions } from "../src/mining/transitions.js";
import { replay } from "../src/evaluation/replay.js";
import { ALL_STRATEGIES, primeSnapshots, strategySetups, type StrategyEnvironment } from "../src/evaluation/strategies.js";
import { loopSettings } from "../src/cli/loop-context.js";
import { FinetuneMemo } from "../src/update/finetune.js";
import { EvidenceCache } from "../src/update/fusion.js";
import { SnapshotCache, withRetrievedContexts } from "../src/update/rag.js";
import type { BenchSuiteResult, BenchRow } from "./run.js";

const START = { maxSamples: 10_000, epochs: 2, windowDays: 90 };
/** How the product trains (the config's `training` defaults), for the start model and the fine-tunes. */
const DEFAULTS = parseConfig({});
const TRAINING = DEFAULTS.training;
/** Strategies replayed side by side, as `evaluate replay` does by default (`--parallel 3`). */
const PARALLEL = 3;

export async function run(): Promise<BenchSuiteResult> {
  const dir = mkdtempSync(join(tmpdir(), "freshrec-bench-replay-"));
  // Settled before the folder goes, also when the replay fails while the start model still trains.
  let startSettled: Promise<unknown> | undefined;
  try {
    // 15 months: three before the replayed year for the start model and the first fine-tune window.
    const world = new SyntheticWorld({ ...SYNTHETIC_DEFAULTS, clustersPerDomain: 9, months: 15, start: "2025-01-01" });
    const events = await EventStore.open(join(dir, "events.duckdb"));
    await ingestSynthetic(events, world);
    const clusters = await events.clusters();
    const positiveMin = world.options.positiveThreshold;
    const from = Date.UTC(2025, 3, 1);
    const to = Date.UTC(2026, 3, 1);
    const started = process.hrtime.bigint();

    const startWindow = { from: from - START.windowDays * DAY_MS, to: from };
    // As `evaluate replay` trains its start model: half the transitions carry the context retrieved just before
    // them; and as there, the baselines replay while it trains.
    let startSeconds = Number.NaN;
    const startTraining = (async () => {
      const mined = (await timedTransitions(events, startWindow, { positiveMin, horizon: 1 })).slice(-START.maxSamples);
      const transitions = await withRetrievedContexts(events, mined, startWindow, { windowDays: DEFAULTS.rag.windowDays, positiveMin }, 0.5, from);
      const start = await pretrainBaseModel({
        workspace: join(dir, "start"),
        clock: new VirtualClock(from),
        clusters,
        transitions,
        window: startWindow,
        epochs: START.epochs,
        shape: REFERENCE_SHAPE,
        training: TRAINING,
      });
      startSeconds = Number(process.hrtime.bigint() - started) / 1e9;
      return { path: start.modelPath, window: startWindow, version: start.modelVersion, samples: transitions.length };
    })();
    startSettled = startTraining.catch(() => undefined);

    // The product's settings, as `evaluate replay` builds them from a config (here the defaults).
    const settings = loopSettings(DEFAULTS, positiveMin);
    const env: StrategyEnvironment = {
      events,
      window: { from, to },
      clusters: clusters.map((c) => c.id),
      settings,
      startModel: startTraining,
      workDir: join(dir, "replay"),
      trainer: new CachingTrainer(new EmbeddedTrainer(TRAINING), join(dir, "replay", "training-cache"), "embedded"),
      snapshots: new SnapshotCache(),
      evidence: new EvidenceCache({ from, to }),
      finetuneMemo: new FinetuneMemo(events),
      // hybrid-drift's trigger, as `evaluate replay` takes it from the config.
      drift: { minGain: DEFAULTS.finetune.driftMinGain, minDays: DEFAULTS.finetune.driftMinDays },
    };
    const setups = strategySetups([...ALL_STRATEGIES], env);
    await primeSnapshots([...ALL_STRATEGIES], env);
    const result = await replay({
      events,
      window: { from, to },
      strategies: setups,
      positiveMin,
      clusters: clusters.map((c) => c.id),
      resamples: 200,
      parallel: PARALLEL,
    });
    const total = Number(process.hrtime.bigint() - started) / 1e9;
    events.close();

    const results: Record<string, number> = {
      replay_year_100_seconds: total,
      replay_start_model_seconds: startSeconds,
      replay_clusters: clusters.length,
      replay_transitions: result.transitions,
    };
    const rows: BenchRow[] = [
      {
        metric: `replay of a year (${clusters.length} clusters, ${result.transitions} transitions, ${Object.keys(result.strategies).length} strategies, full-size fine-tunes, start model included)`,
        value: total / 60,
        unit: "min",
        target: "<= 10",
        met: total <= 600,
      },
      { metric: `start model (${(await startTraining).samples} samples x ${START.epochs} epochs; the baselines replay meanwhile)`, value: startSeconds, unit: "s" },
      { metric: `replay of the strategies after the start model, ${PARALLEL} at a time (wall)`, value: total - startSeconds, unit: "s" },
    ];
    for (const [name, s] of Object.entries(result.strategies)) {
      results[`replay_${name.replace(/-/g, "_")}_seconds`] = s.wallSeconds;
      rows.push({ metric: `${name}: ${s.tablesPublished} tables, ${s.cost.trainingTokens} training tokens, hit@1 ${(s.hit1 * 100).toFixed(2)}%`, value: s.wallSeconds, unit: "s" });
    }
    return { results, rows };
  } finally {
    await startSettled;
    rmSync(dir, { recursive: true, force: true });
  }
}
