/**
 * Fine-tuning data curation: [(c1, c2) -> next] samples from the fine-tuning window, one per distinct user of each
 * transition (optionally capped, the 2024 paper's "diverse and balanced set of novel interest transitions"), and a
 * time-based split whose test slice is the most recent part of the window and is never trained on.
 *
 * The rule, with its defaults:
 * 1. Window [asOf - windowDays, asOf) (90 days); the test slice is its most recent part: the shortest of 1, 2, 4...
 *    days up to `testDays` (14) holding `testUsers` (1000) held-out users, doubled back beyond testDays while it holds
 *    fewer than `minTestUsers` (5; at most half the window).
 * 2. Each triple of the training part contributes one sample per distinct user, at most `maxPerTriple` (no cap by
 *    default).
 * 3. Samples are visited in a seeded shuffle (deterministic for an as-of time) and kept while their pair has fewer
 *    than `maxPerPair` (no cap by default) and their target fewer than `maxPerTarget` (a share of `maxSamples`; 1,
 *    no cap, by default) samples, until `maxSamples` (6,000, the paper's "thousands") are kept.
 * Uncapped, the set is a uniform sample of the window's transitions by distinct users, so the model learns the
 * successors' true shares: the table ranks by them. The caps diversify the set (no pair, target or single
 * transition can take it over) at the price of those shares: a popular target capped below its share is learnt as
 * a rarer answer than it is, and a capped triple ties with its pair's lesser successors. On the development periods
 * (README, fine-tuning) the caps made fine-tunes worse than the model they continue.
 * 4. Samples carry RAG context the way refreshes will: the training part is cut into weeks (`rag.windowDays`), and
 *    a sample of week w gets, with probability `contextShare` (0.5), the context retrieved from the week before w
 *    (so never from its own or later data). The other samples have no context. The model thus learns to answer
 *    both prompt forms. `relabelShare` (1: all) of the samples with a context have their clusters renamed
 *    (src/llm/relabel.ts), so that memory cannot answer them and the context can: the model learns to follow a
 *    context as far as the context deserves, also where it contradicts what the model learnt.
 * 5. Rehearsal: `rehearsalShare` (0.5) of the final set is drawn from the `rehearsalDays` (3650) before the training
 *    part, in proportion to distinct users and without context, so a fine-tune keeps what its parent learnt from
 *    them (rehearsalSamples says why).
 *
 * @example
 * const set = await curateFineTuningSet(store, Date.parse("2025-07-01"));
 * set.train.length; set.test.length; set.window;
 */
import type { EventStoreContract } from "../data/event-store.js";
import { DAY_MS } from "../domain/clock.js";
import { BadInputError } from "../domain/errors.js";
import { seededRandom, shuffleInPlace } from "../domain/random.js";
import type { TimeWindow, TransitionCount } from "../domain/types.js";
import { sampleOf, type TrainingSample } from "../llm/contracts.js";
import { DEFAULT_RELABEL_SHARE, relabelContextSamples } from "../llm/relabel.js";
import type { PromptContext } from "../llm/prompt.js";
import { contextFor, contextsAlong, resolveRagOptions, type RagOptions } from "./rag.js";
import { countTransitions, futureExamples, type FutureExample, type MiningOptions } from "../mining/transitions.js";

export interface CurationOptions extends MiningOptions {
  /** @defaultValue 90 */
  readonly windowDays?: number;
  /** @defaultValue 14 */
  readonly testDays?: number;
  /** Held-out users that make a test slice long enough: the slice is the shortest (1, 2, 4... days) holding them. @defaultValue 1000 */
  readonly testUsers?: number;
  /**
   * Held-out users the test slice needs: with fewer (a sparse log, or one whose timestamps are coarse, such as all
   * events of a month stamped on its first day), the slice doubles back in time until it has them, at most half
   * the window. @defaultValue 5
   */
  readonly minTestUsers?: number;
  /** @defaultValue 6000 */
  readonly maxSamples?: number;
  /** Cap of samples per history pair; null: no cap. @defaultValue null */
  readonly maxPerPair?: number | null;
  /** Share of maxSamples one target cluster may take (1: no cap). @defaultValue 1 */
  readonly maxTargetShare?: number;
  /** Cap of samples per triple and week; null: one per distinct user. @defaultValue null */
  readonly maxPerTriple?: number | null;
  /** Share of samples that carry their week's retrieved context. @defaultValue 0.5 */
  readonly contextShare?: number;
  /** How the context of a sample is retrieved (the refresh's own options). @defaultValue RAG defaults */
  readonly rag?: RagOptions;
  /**
   * Share of the samples with a context that are relabelled (src/llm/relabel.ts: every cluster they name renamed by
   * one random map), so the model learns to read a context that contradicts what it memorised. @defaultValue 1
   */
  readonly relabelShare?: number;
  /**
   * Which week a sample's context comes from. `previous` (the default): the week before the sample's, as a refresh
   * would have served it. `same`: the sample's own week without the sample's own user, so the context is evidence
   * from the answer's own period; an experiment for teaching the model to follow a context that contradicts what it
   * learnt (frequency mode only).
   * @defaultValue "previous"
   */
  readonly contextPeriod?: "previous" | "same";
  /**
   * Where the training part starts at the earliest (ms): the end of the data the model being continued was trained
   * on, so a fine-tune learns the transitions its parent has not seen instead of repeating the ones it has.
   * @defaultValue no bound (the whole window)
   */
  readonly since?: number;
  /**
   * Share of the training set drawn from the transitions before the training part (rehearsal), so the fine-tune
   * keeps practising what its parent learnt. Without it, a model trained on tens of thousands of transitions that
   * continues on a few thousand recent ones of few users unlearns the rest (measured on ml-latest-small's
   * development months: README, fine-tuning).
   * @defaultValue 0.5
   */
  readonly rehearsalShare?: number;
  /** Days before the training part that rehearsal samples come from. @defaultValue 3650 */
  readonly rehearsalDays?: number;
}

export const CURATION_DEFAULTS = { windowDays: 90, testDays: 14, testUsers: 1000, minTestUsers: 5, maxSamples: 6000, maxPerPair: null, maxTargetShare: 1, maxPerTriple: null, contextShare: 0.5, relabelShare: DEFAULT_RELABEL_SHARE, rehearsalShare: 0.5, rehearsalDays: 3650 } as const;

export interface FineTuningSet {
  readonly asOf: number;
  readonly trainWindow: TimeWindow;
  readonly testWindow: TimeWindow;
  readonly train: readonly TrainingSample[];
  /** Held-out users of the test slice, for test recall. */
  readonly test: readonly FutureExample[];
  /** Transitions available before diversification (distinct users per triple, summed). */
  readonly available: number;
  /** Samples of `train` drawn from before the training part (rehearsal); they come last. */
  readonly rehearsed: number;
}

/**
 * Rehearsal: samples of the transitions of the `rehearsalDays` before the training part, drawn in proportion to
 * their distinct users (the distribution the parent learnt, not diversified), with a seeded generator, so that
 * they make `rehearsalShare` of the final set. Drawn from the counts per triple, so a long span of a busy log
 * costs one aggregate query, not a list of every transition.
 */
async function rehearsalSamples(
  store: EventStoreContract,
  seed: number,
  trainWindow: TimeWindow,
  recent: number,
  o: { rehearsalShare: number; rehearsalDays: number },
  mining: MiningOptions,
): Promise<TrainingSample[]> {
  if (!(o.rehearsalShare >= 0 && o.rehearsalShare < 1)) throw new BadInputError(`finetune curation: rehearsalShare must be at least 0 and below 1, got ${o.rehearsalShare}`);
  if (!(o.rehearsalDays > 0)) throw new BadInputError(`finetune curation: rehearsalDays must be a positive number of days, got ${o.rehearsalDays}`);
  if (o.rehearsalShare === 0 || recent === 0) return [];
  const older = await countTransitions(store, { from: trainWindow.from - o.rehearsalDays * DAY_MS, to: trainWindow.from }, mining);
  if (older.length === 0) return [];
  const cumulative: number[] = [];
  let total = 0;
  for (const t of older) cumulative.push((total += t.users));
  const want = Math.min(total, Math.round((recent * o.rehearsalShare) / (1 - o.rehearsalShare)));
  const next = seededRandom((Math.floor(seed / 1000) ^ 0x27d4eb2d) >>> 0);
  const samples: TrainingSample[] = [];
  for (let k = 0; k < want; k++) {
    const target = next() * total;
    let lo = 0;
    let hi = cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cumulative[mid] > target) hi = mid;
      else lo = mid + 1;
    }
    samples.push(sampleOf(older[lo]));
  }
  return samples;
}

/** The options with their defaults, checked. */
function curationOptions(options: CurationOptions) {
  const o = { ...CURATION_DEFAULTS, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) } as Required<
    Omit<CurationOptions, "positiveMin" | "rag" | "since">
  > &
    MiningOptions;
  if (!(o.testDays > 0 && o.windowDays > o.testDays)) {
    throw new BadInputError(`finetune curation: testDays (${o.testDays}) must be positive and below windowDays (${o.windowDays})`);
  }
  return o;
}

/**
 * The test slice of a fine-tune at `asOf`, [split, asOf), and its held-out examples. It is sized by evidence, not
 * only by days. Every day it holds is a day the candidate never trains on, so it is the shortest of 1, 2, 4... days
 * (up to testDays) that holds `testUsers` held-out users: on a busy platform a day measures recall well, and the
 * fine-tune learns up to the day before. An empty slice would halt every fine-tune on its recall: below
 * `minTestUsers` it doubles back beyond testDays.
 */
async function testSliceOf(
  store: EventStoreContract,
  asOf: number,
  o: { testDays: number; testUsers: number; minTestUsers: number; windowDays: number },
  mining: MiningOptions,
): Promise<{ split: number; test: FutureExample[] }> {
  let testDays = Math.min(1, o.testDays);
  let test = await futureExamples(store, { from: asOf - testDays * DAY_MS, to: asOf }, mining);
  while (test.length < o.testUsers && testDays < o.testDays) {
    testDays = Math.min(testDays * 2, o.testDays);
    test = await futureExamples(store, { from: asOf - testDays * DAY_MS, to: asOf }, mining);
  }
  while (test.length < o.minTestUsers && testDays * 2 <= o.windowDays / 2) {
    testDays *= 2;
    test = await futureExamples(store, { from: asOf - testDays * DAY_MS, to: asOf }, mining);
  }
  return { split: asOf - testDays * DAY_MS, test };
}

/** Where the training data of a fine-tune at `asOf` ends: the start of its test slice (`curateFineTuningSet`). */
export async function fineTuningDataEnd(store: EventStoreContract, asOf: number, options: CurationOptions = {}): Promise<number> {
  return (await testSliceOf(store, asOf, curationOptions(options), { positiveMin: options.positiveMin ?? null })).split;
}

export async function curateFineTuningSet(store: EventStoreContract, asOf: number, options: CurationOptions = {}): Promise<FineTuningSet> {
  const o = curationOptions(options);
  const mining = { positiveMin: o.positiveMin ?? null };
  const { split, test } = await testSliceOf(store, asOf, o, mining);
  const trainWindow = { from: Math.min(split, Math.max(asOf - o.windowDays * DAY_MS, options.since ?? -Infinity)), to: split };
  const testWindow = { from: split, to: asOf };
  const pool: (TransitionCount & { context?: PromptContext })[] = [];
  const rag = { ...options.rag, positiveMin: mining.positiveMin };
  for (const step of await contextsAlong(store, trainWindow, rag)) {
    const week = await countTransitions(store, step, mining);
    const sameWeek = options.contextPeriod === "same" ? contextsExcludingOneUser(week, rag) : null;
    for (const t of week) pool.push({ ...t, context: sameWeek ? sameWeek(t) : contextFor(step.snapshot, t.c1, t.c2) });
  }
  const chosen = diversify(pool, o, asOf);
  const coin = seededRandom((Math.floor(asOf / 1000) ^ 0x5bd1e995) >>> 0);
  const withContexts = chosen.map((t) => sampleOf(t, t.context && coin() < o.contextShare ? t.context.successors : undefined));
  const train = relabelContextSamples(withContexts, (await store.clusters()).map((c) => c.id), { share: o.relabelShare, seed: asOf });
  const rehearsed = await rehearsalSamples(store, asOf, trainWindow, train.length, o, mining);
  return { asOf, trainWindow, testWindow, train: [...train, ...rehearsed], test, available: pool.reduce((s, t) => s + t.users, 0), rehearsed: rehearsed.length };
}

/**
 * Contexts from a week's own counts, each computed as if one user of the sample's triple were not there (that user
 * is the sample): a triple seen by a single user is then not its own context.
 */
export function contextsExcludingOneUser(week: readonly TransitionCount[], rag: RagOptions): (t: TransitionCount) => PromptContext | undefined {
  const o = resolveRagOptions(rag);
  if (o.mode !== "frequency") throw new BadInputError(`finetune curation: contextPeriod "same" needs rag.mode "frequency", got ${JSON.stringify(o.mode)}`);
  const byPair = new Map<string, TransitionCount[]>();
  for (const t of week) {
    const key = `${t.c1}\u0000${t.c2}`;
    let list = byPair.get(key);
    if (!list) byPair.set(key, (list = []));
    list.push(t);
  }
  return (sample) => {
    const successors = (byPair.get(`${sample.c1}\u0000${sample.c2}`) ?? [])
      .map((t) => ({ cluster: t.next, users: t.users - (t.next === sample.next ? 1 : 0) }))
      .filter((t) => t.users >= o.minSupport)
      .sort((a, b) => b.users - a.users || (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0))
      .slice(0, o.topN)
      .map((t) => t.cluster);
    return successors.length ? { successors } : undefined;
  };
}

/** The diversification step (pure): counts in, capped samples out, in a seeded order. */
export function diversify<T extends TransitionCount>(
  counts: readonly T[],
  options: Required<Pick<CurationOptions, "maxSamples" | "maxPerPair" | "maxTargetShare" | "maxPerTriple">>,
  seed: number,
): T[] {
  const pool: T[] = [];
  for (const t of counts) {
    const n = Math.min(t.users, options.maxPerTriple ?? Infinity);
    for (let k = 0; k < n; k++) pool.push(t);
  }
  shuffle(pool, seed);
  const maxPerTarget = Math.max(1, Math.floor(options.maxTargetShare * options.maxSamples));
  const perPair = new Map<string, number>();
  const perTarget = new Map<string, number>();
  const kept: T[] = [];
  for (const s of pool) {
    if (kept.length >= options.maxSamples) break;
    const pair = `${s.c1}\u0000${s.c2}`;
    if ((perPair.get(pair) ?? 0) >= (options.maxPerPair ?? Infinity) || (perTarget.get(s.next) ?? 0) >= maxPerTarget) continue;
    perPair.set(pair, (perPair.get(pair) ?? 0) + 1);
    perTarget.set(s.next, (perTarget.get(s.next) ?? 0) + 1);
    kept.push(s);
  }
  return kept;
}

/** Fisher-Yates with a seeded generator, so a curation is reproducible for its as-of time. */
function shuffle<T>(items: T[], seed: number): void {
  shuffleInPlace(items, seededRandom((Math.floor(seed / 1000) ^ 0x9e3779b9) >>> 0));
}
