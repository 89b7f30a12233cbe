/**
 * Replay evaluation: for each strategy, drive the production scheduler with a virtual clock over a past period,
 * calling the very same job functions as `schedule run` (only the clock and the data window differ), capture every
 * table it publishes with its publish time, then score every real novel transition of the period against the
 * table that was live at its moment. Differences between strategies get bootstrap confidence intervals over users.
 *
 * @example
 * const result = await replay({ events, window: { from, to }, strategies: [hybridSetup, baselineSetup] });
 */
import type { EventStoreContract } from "../data/event-store.js";
import { DAY_MS, VirtualClock } from "../domain/clock.js";
import { BadInputError } from "../domain/errors.js";
import type { TimeWindow } from "../domain/types.js";
import { timedTransitions, type MiningOptions, type TimedTransition } from "../mining/transitions.js";
import { segmentLabels, segmentOf } from "./segments.js";
import { TableLookup, type TableStore } from "../tables/index.js";
import { Scheduler, SqliteScheduleStore, type JobDefinition, type RunRecord } from "../update/schedule/index.js";
import { bootstrapRatioDelta, type PairedUnit } from "./bootstrap.js";
import { scoreTransitions, type LiveTableEntry, type ReplayScore } from "./scoring.js";

/** A strategy ready to replay: its jobs (production job functions) and the table store they publish into. */
export interface StrategyInstance {
  readonly jobs: readonly JobDefinition[];
  readonly tables: TableStore;
  close(): Promise<void> | void;
}

export interface StrategySetup {
  readonly name: string;
  /** Builds the strategy's stores and jobs; `clock` is the virtual clock its scheduler will drive. */
  create(clock: VirtualClock): Promise<StrategyInstance>;
  /**
   * Settles when the strategy can start (an LLM strategy: once its start model is trained). Until then the pool
   * replays strategies that are ready, so the baselines run while the start model trains. @defaultValue ready now
   */
  readonly ready?: Promise<unknown>;
  /**
   * The strategy fine-tunes during the period. Fine-tuning strategies start first: their chain of monthly trainings
   * is the replay's longest path, and side by side they share each training (training cache), curated set and gate
   * measurement (FinetuneMemo), so the others fill the remaining slots around them.
   */
  readonly finetunes?: boolean;
  /**
   * The strategy's tables are the truth of the data's world (the synthetic platform's `oracle`): its hit rates are
   * the ceiling, and every strategy's are also given as a share of them (`shareOfOracle`). At most one per replay.
   */
  readonly ceiling?: boolean;
}

export interface ReplayOptions extends MiningOptions {
  readonly events: EventStoreContract;
  readonly window: TimeWindow;
  readonly strategies: readonly StrategySetup[];
  /** Clusters after a transition that count for the horizon hit. @defaultValue 5 */
  readonly horizon?: number;
  /** @defaultValue 5 */
  readonly k?: number;
  /** Price of a million prompt tokens on a hosted LLM, for the cost estimate. @defaultValue 0.1 */
  readonly pricePerMillionTokens?: number;
  /** Prompt tokens per scored pair, for the hosted estimate. @defaultValue 40 */
  readonly tokensPerPrompt?: number;
  /** Bootstrap resamples. @defaultValue 1000 */
  readonly resamples?: number;
  /**
   * Cluster ids whose ordered pairs the churn metrics compare; absent skips churn. Churn against the no-RAG table
   * compares with the first table of the `reference` strategy.
   */
  readonly clusters?: readonly string[];
  /** @defaultValue "static" */
  readonly reference?: string;
  /** Called after each run of each strategy (progress lines). */
  readonly onRun?: (strategy: string, run: RunRecord) => void;
  /**
   * Strategies replayed at once. Each has its own clock, stores and jobs, so results do not depend on it; side by
   * side, one strategy's training (a child process) leaves the main thread to another's table builds. Give the
   * strategies that share fine-tunes one `CachingTrainer`: an identical fine-tune requested twice runs once.
   * @defaultValue 1
   */
  readonly parallel?: number;
}

export interface StrategyCost {
  readonly trainingTokens: number;
  readonly promptsScored: number;
  readonly cpuSeconds: number;
  readonly runs: number;
  /**
   * What the prompts would cost on a hosted LLM: the backend's own estimate where it prices prompts (the one
   * `refresh --dry-run` prints: its tokens, at its prices, or at `pricePerMillionTokens` when it has none), else
   * `tokensPerPrompt` tokens per prompt at `pricePerMillionTokens`.
   */
  readonly hostedEstimateUsd: number;
  readonly hostedTokens: number;
  /** Prompts whose tokens came from the backend's own estimate (the rest: `tokensPerPrompt` each). */
  readonly pricedPrompts: number;
}

export interface StrategyResult {
  readonly hit1: number;
  readonly hit5: number;
  readonly horizonHit: number;
  readonly coverage: number;
  /** Mean popularity rank (1 = most frequent next cluster of the period) of the clusters served as top-1. */
  readonly popularityRank: number;
  readonly cost: StrategyCost;
  /** Mean age, in days, of the newest data behind the live table, over the scored transitions. */
  readonly stalenessDays: number;
  readonly tablesPublished: number;
  /** Wall time of replaying the strategy (its training, refreshes and table loads; strategies may overlap). */
  readonly wallSeconds: number;
  readonly transitions: number;
  readonly unserved: number;
  /**
   * Churn: mean share of pairs whose top-1 is unchanged from one published table to the next (null with fewer than
   * two tables), and mean share of pairs whose top-1 equals the reference no-RAG table's (null without one).
   */
  readonly consecutiveAgreement: number | null;
  readonly agreementWithNoRag: number | null;
  /** Hit@1 per week of the period, for the chart. */
  readonly weekly: { readonly week: string; readonly hit1: number; readonly transitions: number }[];
  /**
   * What the strategy's jobs did, per job: runs by status, and the first reason of each kind of non-success (a
   * fine-tune halted at its gates every month, refreshes that found nothing, shows here, not only in the log).
   */
  readonly outcomes: Record<string, { readonly succeeded: number; readonly idle: number; readonly failed: number; readonly halted: number; readonly skipped: number; readonly firstFailure: string | null; readonly firstHalt: string | null }>;
  /** The same metrics per segment (./segments.ts): where the strategy wins or loses. */
  readonly segments: Record<string, { readonly transitions: number; readonly hit1: number; readonly hit5: number; readonly shareOfOracle: ShareOfCeiling | null }>;
  /**
   * hit@1 and hit@5 as a share of the ceiling strategy's (the oracle's) on the same transitions; null when the replay
   * has no ceiling strategy.
   */
  readonly shareOfOracle: ShareOfCeiling | null;
}

/** A strategy's hits divided by the ceiling's; a share is null where the ceiling hit nothing (nothing to divide by). */
export interface ShareOfCeiling {
  readonly hit1: number | null;
  readonly hit5: number | null;
}

export interface Comparison {
  readonly a: string;
  readonly b: string;
  readonly metric: "hit1" | "hit5" | "horizonHit";
  readonly delta: number;
  readonly ci95: readonly [number, number];
}

export interface ReplayResult {
  readonly window: TimeWindow;
  readonly transitions: number;
  readonly users: number;
  readonly strategies: Record<string, StrategyResult>;
  readonly comparisons: Comparison[];
  /** The ceiling strategy every `shareOfOracle` divides by, or null (no oracle in this replay). */
  readonly ceiling: string | null;
  /**
   * The published tables of each strategy, in order (version, publish time); a fusion table also carries the fitted
   * weight of the LLM prior, how much of it enters as its lift, and what it adds to the likelihood (nats per
   * transition): the drift signal over time.
   */
  readonly timelines: Record<string, { version: string; publishedAt: number; dataAsOf: number; priorWeight?: number | null; priorLift?: number | null; priorGain?: number | null }[]>;
}

interface CapturedTable extends LiveTableEntry {
  readonly dataAsOf: number;
  readonly priorWeight?: number | null;
  readonly priorLift?: number | null;
  readonly priorGain?: number | null;
}

export async function replay(options: ReplayOptions): Promise<ReplayResult> {
  const ceilings = options.strategies.filter((s) => s.ceiling);
  if (ceilings.length > 1) throw new BadInputError(`replay: one ceiling strategy at most, got ${ceilings.map((s) => s.name).join(", ")}`);
  const ceiling = ceilings[0]?.name ?? null;
  const horizon = options.horizon ?? 5;
  const transitions = await timedTransitions(options.events, options.window, { positiveMin: options.positiveMin, horizon });
  const bySegment = options.clusters
    ? segmentOf(transitions, await segmentLabels(options.events, transitions, options.clusters, { positiveMin: options.positiveMin }))
    : new Map<string, TimedTransition[]>();
  const popularity = new Map<string, number>();
  for (const t of transitions) popularity.set(t.next, (popularity.get(t.next) ?? 0) + 1);
  const popularityRank = new Map([...popularity].sort((a, b) => b[1] - a[1]).map(([c], k) => [c, k + 1]));

  const strategies: Record<string, StrategyResult> = {};
  const scores = new Map<string, ReplayScore>();
  const timelines: ReplayResult["timelines"] = {};
  const top1s = new Map<string, string[][]>();
  const reference = options.reference ?? "static";
  // The reference strategy comes first (and is scored first) so every other one can be compared with its no-RAG table.
  const ordered = [...options.strategies].sort((a, b) => Number(b.name === reference) - Number(a.name === reference));
  // Each strategy is scored as soon as its replay ends, on the main thread while others may still be training.
  const runs = new Map<string, StrategyRun & { score: ReplayScore; weekly: StrategyResult["weekly"]; staleness: number; segments: StrategyResult["segments"] }>();
  await runPool(ordered, options.parallel ?? 1, async (setup) => {
    const run = await runStrategy(setup, options);
    const segments: Record<string, { transitions: number; hit1: number; hit5: number; shareOfOracle: ShareOfCeiling | null }> = {};
    for (const [name, list] of bySegment) {
      const s = scoreTransitions(list, run.captured, { k: options.k ?? 5 });
      // The share needs the ceiling's score of the segment, known once every strategy ran.
      segments[name] = { transitions: s.transitions, hit1: s.hit1, hit5: s.hitK, shareOfOracle: null };
    }
    runs.set(setup.name, {
      ...run,
      segments,
      score: scoreTransitions(transitions, run.captured, { k: options.k ?? 5 }),
      weekly: weeklyHits(transitions, run.captured, options.window.from),
      staleness: staleness(transitions, run.captured),
    });
  });

  for (const setup of ordered) {
    const { captured, tops, cost, wallSeconds, score, weekly, staleness: stalenessDays, segments, outcomes } = runs.get(setup.name)!;
    top1s.set(setup.name, tops);
    const noRag = top1s.get(reference)?.[0];
    scores.set(setup.name, score);
    timelines[setup.name] = captured.map((c) => ({
      version: c.version,
      publishedAt: c.publishedAt,
      dataAsOf: c.dataAsOf,
      ...(c.priorWeight === undefined ? {} : { priorWeight: c.priorWeight, priorLift: c.priorLift ?? null, priorGain: c.priorGain ?? null }),
    }));
    strategies[setup.name] = {
      hit1: score.hit1,
      hit5: score.hitK,
      horizonHit: score.horizonHit,
      coverage: score.coverage,
      popularityRank: meanServedRank(score.served, popularityRank),
      cost: hostedCost(cost, options),
      stalenessDays,
      consecutiveAgreement: tops.length < 2 ? null : mean(tops.slice(1).map((t, i) => agreement(tops[i], t))),
      agreementWithNoRag: noRag && tops.length ? mean(tops.map((t) => agreement(noRag, t))) : null,
      tablesPublished: captured.length,
      wallSeconds,
      transitions: score.transitions,
      unserved: score.unserved,
      weekly,
      segments,
      outcomes,
      shareOfOracle: null,
    };
  }
  if (ceiling !== null) {
    const top = strategies[ceiling];
    for (const name of Object.keys(strategies)) {
      const s = strategies[name];
      strategies[name] = {
        ...s,
        shareOfOracle: shareOf(s, top),
        segments: Object.fromEntries(Object.entries(s.segments).map(([g, v]) => [g, { ...v, shareOfOracle: shareOf(v, top.segments[g]) }])),
      };
    }
  }
  return {
    window: options.window,
    transitions: transitions.length,
    users: new Set(transitions.map((t) => t.userId)).size,
    strategies,
    comparisons: compare(scores, options.resamples ?? 1000),
    ceiling,
    timelines,
  };
}

/** hit@1 and hit@5 over the ceiling's on the same transitions. */
function shareOf(s: { readonly hit1: number; readonly hit5: number }, top: { readonly hit1: number; readonly hit5: number }): ShareOfCeiling {
  const ratio = (x: number, c: number) => (c > 0 && Number.isFinite(x) ? x / c : null);
  return { hit1: ratio(s.hit1, top.hit1), hit5: ratio(s.hit5, top.hit5) };
}

/**
 * Replays `setups` at most `parallel` at a time: each free slot takes the first strategy that is ready (fine-tuning
 * strategies first, the others in their given order); when none is ready yet, the slot waits for one to become
 * ready. After a failure no new strategy starts; the running ones finish and the first error is thrown.
 *
 * Measured on the replay bench (a year, 7 strategies, FinetuneMemo and training cache shared): finetune-monthly and
 * the hybrid side by side 10.04 min at 2 slots; one fine-tuning strategy at a time (the hybrid after
 * finetune-monthly, reading every fine-tune from the cache) 10.51 min; side by side at 3 slots 9.37 and 9.92 min,
 * as the two fine-tuning strategies spend much of their time waiting for one shared training.
 */
export async function runPool(setups: readonly StrategySetup[], parallel: number, run: (setup: StrategySetup) => Promise<void>): Promise<void> {
  const pending = [...setups].sort((a, b) => Number(b.finetunes ?? false) - Number(a.finetunes ?? false));
  const ready = new Set<StrategySetup>(pending.filter((s) => s.ready === undefined));
  let failed = false;
  // Slots with nothing ready wait on `woken`, which settles when a strategy becomes ready or ends (a failure must
  // wake them to stop).
  let resolveWoken: () => void = () => {};
  let woken = new Promise<void>((resolve) => (resolveWoken = resolve));
  const wakeSlots = () => {
    resolveWoken();
    woken = new Promise<void>((resolve) => (resolveWoken = resolve));
  };
  for (const s of pending) {
    // A rejected readiness counts as ready: the strategy's create() then fails with the cause.
    s.ready?.then(
      () => (ready.add(s), wakeSlots()),
      () => (ready.add(s), wakeSlots()),
    );
  }
  const slot = async () => {
    while (pending.length > 0 && !failed) {
      const k = pending.findIndex((s) => ready.has(s));
      if (k < 0) {
        await woken;
        continue;
      }
      const [setup] = pending.splice(k, 1);
      try {
        await run(setup);
      } catch (error) {
        failed = true;
        throw error;
      } finally {
        wakeSlots();
      }
    }
  };
  const settled = await Promise.allSettled(Array.from({ length: Math.max(1, Math.min(parallel, setups.length)) }, slot));
  const rejected = settled.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (rejected) throw rejected.reason;
}

/** What replaying one strategy produced, before scoring. */
interface StrategyRun {
  readonly outcomes: StrategyResult["outcomes"];
  readonly captured: CapturedTable[];
  readonly tops: string[][];
  readonly cost: RunCosts;
  readonly wallSeconds: number;
}

/** Drives one strategy's scheduler over the window and captures every table it publishes. */
/** A strategy's runs' costs summed; `priced*`: runs whose prompts the backend priced itself (the dry run's estimate). */
interface RunCosts {
  trainingTokens: number;
  promptsScored: number;
  cpuSeconds: number;
  runs: number;
  pricedPrompts: number;
  pricedTokens: number;
  pricedUsd: number;
  /** Tokens of backend-estimated prompts without a price of the backend's own. */
  unpricedTokens: number;
}

function hostedCost(cost: RunCosts, options: ReplayOptions): StrategyCost {
  const price = options.pricePerMillionTokens ?? 0.1;
  const flatTokens = (cost.promptsScored - cost.pricedPrompts) * (options.tokensPerPrompt ?? 40);
  return {
    trainingTokens: cost.trainingTokens,
    promptsScored: cost.promptsScored,
    cpuSeconds: cost.cpuSeconds,
    runs: cost.runs,
    hostedEstimateUsd: cost.pricedUsd + ((cost.unpricedTokens + flatTokens) * price) / 1e6,
    hostedTokens: cost.pricedTokens + flatTokens,
    pricedPrompts: cost.pricedPrompts,
  };
}

async function runStrategy(setup: StrategySetup, options: ReplayOptions): Promise<StrategyRun> {
  const started = process.hrtime.bigint();
  const clock = new VirtualClock(options.window.from);
  const instance = await setup.create(clock);
  const scheduleStore = SqliteScheduleStore.open(":memory:");
  const captured: CapturedTable[] = [];
  const tops: string[][] = [];
  const cost: RunCosts = { trainingTokens: 0, promptsScored: 0, cpuSeconds: 0, runs: 0, pricedPrompts: 0, pricedTokens: 0, pricedUsd: 0, unpricedTokens: 0 };
  const outcomes: Record<string, { succeeded: number; idle: number; failed: number; halted: number; skipped: number; firstFailure: string | null; firstHalt: string | null }> = {};
  const outcome = (job: string) => (outcomes[job] ??= { succeeded: 0, idle: 0, failed: 0, halted: 0, skipped: 0, firstFailure: null, firstHalt: null });
  try {
    const scheduler = new Scheduler({
      jobs: instance.jobs,
      store: scheduleStore,
      clock,
      onRun: (run) => {
        cost.runs++;
        cost.trainingTokens += run.cost?.tokensTrained ?? 0;
        cost.promptsScored += run.cost?.promptsScored ?? 0;
        if (run.cost?.promptTokens !== undefined) {
          const tokens = run.cost.promptTokens + (run.cost.completionTokens ?? 0);
          cost.pricedPrompts += run.cost.promptsScored ?? 0;
          cost.pricedTokens += tokens;
          if (typeof run.cost.usd === "number") cost.pricedUsd += run.cost.usd;
          else cost.unpricedTokens += tokens;
        }
        cost.cpuSeconds += run.cost?.cpuSeconds ?? 0;
        const o = outcome(run.job);
        // A run that decided there was nothing to do (the start model's month, a drift check) did no work.
        if (run.status === "succeeded" && run.detail?.skipped) o.idle++;
        else if (run.status === "succeeded") o.succeeded++;
        else if (run.status === "halted") {
          o.halted++;
          o.firstHalt ??= `${new Date(run.due).toISOString()}: ${run.error ?? "halted"}`;
        } else if (run.status === "failed" || run.status === "cancelled") {
          o.failed++;
          o.firstFailure ??= `${new Date(run.due).toISOString()}: ${run.error ?? run.status}`;
        }
        const published = run.status === "succeeded" ? (run.detail?.publishedTable as string | undefined) : undefined;
        if (published) {
          const lookup = TableLookup.load(instance.tables, published);
          captured.push({
            version: published,
            publishedAt: run.due,
            dataAsOf: Number(run.detail?.dataAsOf ?? run.due),
            ...(run.detail?.method === "fusion"
              ? {
                  priorWeight: (run.detail.priorWeight as number | null) ?? null,
                  priorLift: (run.detail.priorLift as number | null) ?? null,
                  priorGain: (run.detail.priorGain as number | null) ?? null,
                }
              : {}),
            answers: (c1, c2) => (lookup.get(c1, c2) ?? []).map((a) => a.cluster),
          });
          if (options.clusters) tops.push(topOnes(options.clusters, (c1, c2) => lookup.get(c1, c2)?.[0]?.cluster ?? ""));
        }
        options.onRun?.(setup.name, run);
      },
    });
    await scheduler.simulate({ from: options.window.from, to: options.window.to });
    // Due times dropped by the overlap policy are counted in the job states, not as runs.
    for (const state of await scheduleStore.jobStates()) outcome(state.job).skipped = state.counters.skipped;
  } finally {
    await scheduleStore.close();
    await instance.close();
  }
  return { captured, tops, cost, outcomes, wallSeconds: Number(process.hrtime.bigint() - started) / 1e9 };
}

/** Top-1 answer of every ordered pair, in a fixed pair order. */
function topOnes(clusters: readonly string[], top: (c1: string, c2: string) => string): string[] {
  const out: string[] = [];
  for (const c1 of clusters) for (const c2 of clusters) if (c1 !== c2) out.push(top(c1, c2));
  return out;
}

function agreement(a: readonly string[], b: readonly string[]): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return a.length ? same / a.length : Number.NaN;
}

function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((s, x) => s + x, 0) / xs.length : Number.NaN;
}

function meanServedRank(served: ReadonlyMap<string, number>, rank: ReadonlyMap<string, number>): number {
  let sum = 0;
  let n = 0;
  for (const [cluster, count] of served) {
    sum += (rank.get(cluster) ?? rank.size + 1) * count;
    n += count;
  }
  return n ? sum / n : Number.NaN;
}

function staleness(transitions: readonly { ts: number }[], tables: readonly CapturedTable[]): number {
  const sorted = [...tables].sort((a, b) => a.publishedAt - b.publishedAt);
  let sum = 0;
  let n = 0;
  let k = -1;
  for (const t of [...transitions].sort((a, b) => a.ts - b.ts)) {
    while (k + 1 < sorted.length && sorted[k + 1].publishedAt <= t.ts) k++;
    if (k < 0) continue;
    sum += (t.ts - sorted[k].dataAsOf) / DAY_MS;
    n++;
  }
  return n ? sum / n : Number.NaN;
}

function weeklyHits(transitions: readonly import("../mining/transitions.js").TimedTransition[], tables: readonly CapturedTable[], from: number) {
  const weeks = new Map<number, import("../mining/transitions.js").TimedTransition[]>();
  for (const t of transitions) {
    const w = Math.floor((t.ts - from) / (7 * DAY_MS));
    let list = weeks.get(w);
    if (!list) weeks.set(w, (list = []));
    list.push(t);
  }
  return [...weeks.keys()].sort((a, b) => a - b).map((w) => {
    const s = scoreTransitions(weeks.get(w)!, tables);
    return { week: new Date(from + w * 7 * DAY_MS).toISOString().slice(0, 10), hit1: s.hit1, transitions: s.transitions };
  });
}

/** Every pair of strategies, every metric: b - a with a 95% bootstrap interval over users. */
function compare(scores: ReadonlyMap<string, ReplayScore>, resamples: number): Comparison[] {
  const names = [...scores.keys()];
  const out: Comparison[] = [];
  const field = { hit1: "hit1", hit5: "hitK", horizonHit: "horizonHit" } as const;
  for (let i = 0; i < names.length; i++) {
    for (let j = i + 1; j < names.length; j++) {
      const a = scores.get(names[i])!;
      const b = scores.get(names[j])!;
      for (const metric of ["hit1", "hit5", "horizonHit"] as const) {
        const units: PairedUnit[] = [];
        for (const [user, ua] of a.perUser) {
          const ub = b.perUser.get(user)!;
          units.push({ a: [ua[field[metric]], ua.transitions], b: [ub[field[metric]], ub.transitions] });
        }
        const r = bootstrapRatioDelta(units, { resamples, seed: 17 });
        out.push({ a: names[i], b: names[j], metric, delta: r.delta, ci95: r.ci95 });
      }
    }
  }
  return out;
}
