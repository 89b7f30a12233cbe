/**
 * Evidence fusion: the product's hybrid refresh. Each table row is the posterior of a pair's next novel cluster
 * given the LLM's prior for the pair and the fresh evidence of the refresh window, a hierarchical Dirichlet model
 * (empirical Bayes):
 *
 *     popularity    pop(n)    = (users(n) + 1) / (users + K)                           recent novel popularity
 *     second        q2(n)     = (users(c2, n) + beta * pop(n)) / (users(c2) + beta)     backoff to the second cluster
 *     backoff       b(n)      = q2(n)^gamma / sum over n' not in {c1, c2} of q2(n')^gamma
 *     marginal      llm2(n)   = mean over c1' not in {c2, n} of llm(n | c1', c2)        the prior of c2 alone
 *     prior         l(n)      = llm(n | c1, c2) / llm2(n)^lift                          lift in [0, 1]
 *     base measure  m(n)      = b(known) * b(n) * l(n)^tau / sum over known n' of b(n') * l(n')^tau
 *                                                                                      for n the model knows,
 *                   m(n)      = b(n)                                                   for n it does not
 *     posterior     p(n)      = (users(c1, c2, n) + alpha * m(n)) / (users(c1, c2) + alpha)
 *
 * The prior says two things: what follows c2, and what the first cluster c1 changes in that (its lift,
 * llm / llm2). The backoff says the first from fresh counts; where they are many, the model's own version of it is
 * only older, and weighing it again pulls the row towards the past; where they are few it still informs. So `lift`
 * is fitted too: 1 keeps only the lift, 0 the whole prior (README, "What the prior adds").
 *
 * The clusters a model knows are those first seen before its training data ends: the LLM prior only reorders the
 * mass the backoff gives to them, and a cluster launched since keeps what the fresh counts give it (a product of
 * experts over every cluster would let a prior that never saw a cluster veto it).
 *
 * Counts are distinct users per triple (as everywhere in mining). A dense pair follows its own evidence; a sparse
 * one leans on the base measure, where the LLM prior and the second cluster's fresh successors meet in a product
 * of experts whose exponents say how much each is worth. alpha, beta, gamma and tau are fitted by maximum likelihood
 * at every refresh on the transitions just before its as-of time T (the fit slice [T - d, T)), each scored by the
 * posterior of the evidence window the table serves with, [T - W, T), as it stood just before that transition; so
 * the fit reads nothing at or after T, and a window is judged as serving will use it: with the freshest days in it
 * (after a change of successors, evidence that ended where the slice began would be equally stale at every length
 * and favour long windows and the prior). The window length itself is chosen the same way among `windowsDays` (those
 * that hold the slice), and the fit slice is as long as it takes to hold `fitMinTransitions`.
 * With a prior, the slice also never reaches back before the end of its model's training data: a model scores the
 * transitions it was trained on far better than the ones it will serve, so a slice inside them would weigh a
 * memorised prior as if it predicted. Until `fitFloor` transitions lie after that end, the prior is not weighed: it
 * serves with tau = 0 (the counts-backoff posterior) and the fit says so.
 * Without an LLM prior (tau = 0) the same posterior is the `counts-backoff` baseline; a fitted tau that falls
 * towards 0 says the model's prior no longer earns weight against fresh evidence: a drift signal.
 *
 * The prior is the model's ranked top-M answers with probabilities for every pair without context (the rest of
 * the mass spread evenly), computed once per model version: a fusion refresh re-runs no prompt while the model is
 * unchanged, so its cost is counting and fitting.
 *
 * @example
 * const prior = await computePrior(model, clusters, { topM: 32 });
 * const fitted = await fitFusion({ log, asOf, prior, options: {} });
 * const scorer = new FusionScorer(fitted.evidence, prior, fitted.params);
 */
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, renameSync, writeFileSync } from "node:fs";
import { DAY_MS } from "../domain/clock.js";
import { remembered } from "../domain/memo.js";
import { BadInputError, FreshrecError } from "../domain/errors.js";
import type { ScoredCluster, TimeWindow } from "../domain/types.js";
import type { PromptInput } from "../llm/prompt.js";
import type { EventStoreContract } from "../data/event-store.js";
import type { EvidenceLog, WindowCounts } from "../mining/evidence.js";
import { firstSeen } from "../mining/first-seen.js";
import type { PromptScorer } from "./generate.js";
import { ANSWER_BYTES, Words } from "../tables/answer-blob.js";
import type { PackedBuildRows } from "../tables/contract.js";
import type { FusionThread, RowsPart } from "./fusion-thread.js";

export interface FusionOptions {
  /** Evidence window lengths compared at each refresh (days); the best-fitting one serves. @defaultValue [3, 7, 14, 28, 56, 112, 224, 448] */
  readonly windowsDays?: readonly number[];
  /** Transitions (distinct users per triple) the fit slice needs; it grows back in time until it has them. @defaultValue 2000 */
  readonly fitMinTransitions?: number;
  /** Longest fit slice (days). @defaultValue 56 */
  readonly fitMaxDays?: number;
  /** Fewer fit transitions than this: no fit, the defaults serve and the table says so. @defaultValue 50 */
  readonly fitFloor?: number;
  /** Answers of the LLM prior kept per pair (the rest of its mass is spread evenly). @defaultValue 32 */
  readonly priorTopM?: number;
}

export const FUSION_DEFAULTS = {
  windowsDays: [3, 7, 14, 28, 56, 112, 224, 448],
  fitMinTransitions: 2000,
  fitMaxDays: 56,
  fitFloor: 50,
  priorTopM: 32,
} as const;

/** The fitted strengths of the posterior (module comment). */
export interface FusionParams {
  /** Pseudo-count of the base measure at the pair level: a pair with alpha users weighs half evidence, half base. */
  readonly alpha: number;
  /** Pseudo-count of popularity in the second cluster's row. */
  readonly beta: number;
  /** Exponent of the second-cluster backoff in the base measure. */
  readonly gamma: number;
  /** Exponent of the LLM prior in the base measure (0: no LLM, the counts-backoff baseline). */
  readonly tau: number;
  /**
   * How much of the prior's own view of the second cluster's successors is divided out (module comment): 1 leaves
   * only what the first cluster changes, 0 the whole prior. Absent in tables written before it existed (0).
   */
  readonly lift?: number;
}

/** The template hash of fusion tables: prompted tables never copy rows from them, nor they from prompted ones. */
export const FUSION_TEMPLATE = "fusion-1";

/** Used when there is too little data before the refresh to fit (recorded as such in the table). */
export const DEFAULT_FUSION_PARAMS: FusionParams = { alpha: 5, beta: 20, gamma: 1, tau: 1, lift: 0 };

/** What a fit found, recorded in the table version. */
export interface FusionFit {
  readonly params: FusionParams;
  /** "fitted", or "default" with the reason when the slice before the refresh was too small. */
  readonly status: "fitted" | "default";
  /** Why the fit is not the full one: default strengths, or a prior not weighed yet (module comment). */
  readonly reason: string | null;
  /** Whether the LLM prior's weight was fitted (false: it serves with tau = 0, see `reason`); null without a prior. Absent in tables written before it existed. */
  readonly priorWeighed?: boolean | null;
  /** The fit slice and the evidence window it was scored in (the one served: the slice ends it, each transition scored on what came before it). */
  readonly slice: TimeWindow;
  readonly fitEvidence: TimeWindow;
  readonly sliceTransitions: number;
  /** Log-likelihood of the slice under the fitted posterior, total and per transition (nats). */
  readonly logLikelihood: number;
  readonly perTransition: number;
  /** The same with the LLM prior left out (tau = 0, refitted): what the prior earns is the difference. */
  readonly countsOnlyPerTransition: number | null;
  /** Clusters the LLM prior speaks for (those its model knows); null without a prior. */
  readonly priorClusters: number | null;
  /** Evidence window length chosen (days) and the per-transition log-likelihood of each candidate. */
  readonly windowDays: number;
  readonly windows: readonly { readonly days: number; readonly perTransition: number }[];
}

/** The LLM prior of one model version: every pair's top-M answers, the rest of the mass spread evenly. */
export interface LlmPrior {
  readonly clusters: readonly string[];
  readonly topM: number;
  /** answer[(c1 * K + c2) * topM + k]: cluster index of the k-th answer, -1 past the last. */
  readonly answer: Int32Array;
  readonly probability: Float32Array;
  /** Probability of each cluster of the pair outside its top-M (per pair). */
  readonly rest: Float32Array;
  /**
   * known[n] = 1 for the clusters the model's training data could hold (first seen before its data ended): the
   * prior reorders the base measure's mass among these only (module comment). Absent: every cluster.
   */
  readonly known?: Uint8Array;
  /**
   * End of the model's training data: the prior is weighed only on transitions at or after it (module comment).
   * Absent: not known (a model registered without its data window), and the fit slice is not cut.
   */
  readonly dataEnd?: number;
}

/** The prior restricted to the clusters its model knows and weighed only after its data end (see `LlmPrior`). */
export function scopePrior(prior: LlmPrior, known: Uint8Array, dataEnd: number): LlmPrior {
  if (known.length !== prior.clusters.length) throw new FreshrecError("INTERNAL", `fusion: a known-cluster mask of ${known.length} for ${prior.clusters.length} clusters`);
  return { ...prior, known, dataEnd };
}

/** Clusters the prior speaks for. */
export function priorClusters(prior: LlmPrior): number {
  return prior.known ? prior.known.reduce((n, k) => n + k, 0) : prior.clusters.length;
}

/** Scores every pair without context once (the prior of a model version). */
export async function computePrior(
  scorer: PromptScorer,
  clusters: readonly string[],
  options: { topM?: number; signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {},
): Promise<LlmPrior> {
  const K = clusters.length;
  const topM = effectiveTopM(options.topM ?? FUSION_DEFAULTS.priorTopM, K);
  const index = new Map(clusters.map((c, i) => [c, i]));
  const answer = new Int32Array(sharedBytes(K * K * topM * 4)).fill(-1);
  const probability = new Float32Array(sharedBytes(K * K * topM * 4));
  const rest = new Float32Array(sharedBytes(K * K * 4));
  const prompts = priorPrompts(clusters);
  const perCall = scorer.promptsPerCall ?? 1024;
  for (let start = 0; start < prompts.length; start += perCall) {
    if (options.signal?.aborted) throw new FreshrecError("CANCELLED", "prior computation cancelled");
    const batch = prompts.slice(start, start + perCall);
    const ranked = await scorer.score(batch, topM + 2, options.signal);
    batch.forEach((prompt, k) => {
      const i1 = index.get(prompt.history.c1)!;
      const i2 = index.get(prompt.history.c2)!;
      const p = i1 * K + i2;
      let kept = 0;
      let mass = 0;
      for (const a of ranked[k]) {
        const n = index.get(a.cluster);
        if (n === undefined || n === i1 || n === i2 || kept >= topM) continue;
        if (!(a.score >= 0) || !Number.isFinite(a.score)) {
          throw new FreshrecError("ENGINE", `prior: the model scored ${a.cluster} for (${prompt.history.c1}, ${prompt.history.c2}) ${a.score}, not a probability`);
        }
        answer[p * topM + kept] = n;
        probability[p * topM + kept] = a.score;
        mass += a.score;
        kept++;
      }
      if (mass > 1 + 1e-3) {
        throw new FreshrecError("ENGINE", `prior: the model's scores for (${prompt.history.c1}, ${prompt.history.c2}) sum to ${mass}, not a distribution over clusters`);
      }
      const others = K - 2 - kept;
      // A floor keeps every cluster possible: a prior that rules a cluster out can never be outvoted by evidence.
      rest[p] = others > 0 ? Math.max(1 - mass, 1e-4) / others : 0;
    });
    options.onProgress?.(Math.min(start + perCall, prompts.length), prompts.length);
  }
  return derived({ clusters, topM, answer, probability, rest });
}

/**
 * Memory for a prior's arrays and their logs: shared, so a refresh's second thread (`FusionThread`) reads them
 * without a copy (tens of megabytes at 300 clusters).
 */
function sharedBytes(bytes: number): SharedArrayBuffer {
  return new SharedArrayBuffer(bytes);
}

/**
 * What every refresh with a prior reads of it and no refresh changes (its logs and its second-cluster marginal),
 * computed with the prior, once per model version, rather than by the first refresh that needs it.
 */
function derived(prior: LlmPrior): LlmPrior {
  priorLogs(prior);
  priorLogMarginal(prior);
  return prior;
}

/** The prompts a prior scores: every ordered pair of distinct clusters, without context. */
export function priorPrompts(clusters: readonly string[]): PromptInput[] {
  const prompts: PromptInput[] = [];
  for (const c1 of clusters) for (const c2 of clusters) if (c1 !== c2) prompts.push({ history: { c1, c2 } });
  return prompts;
}

/** Answers a prior keeps per pair: at most the K - 2 novel clusters there are. */
function effectiveTopM(requested: number, K: number): number {
  return Math.min(requested, Math.max(1, K - 2));
}

/** Options with defaults, validated (BadInputError naming the `rag.fusion` field). */
export function resolveFusionOptions(options: FusionOptions = {}): Required<FusionOptions> {
  const o = { ...FUSION_DEFAULTS, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) } as Required<FusionOptions>;
  if (o.windowsDays.length === 0 || o.windowsDays.some((d) => !(d > 0))) {
    throw new BadInputError(`rag.fusion.windowsDays: expected positive numbers of days, got ${JSON.stringify(o.windowsDays)}`);
  }
  for (const key of ["fitMinTransitions", "fitFloor", "priorTopM"] as const) {
    if (!Number.isInteger(o[key]) || o[key] < 1) throw new BadInputError(`rag.fusion.${key}: expected a positive integer, got ${o[key]}`);
  }
  if (!(o.fitMaxDays > 0)) throw new BadInputError(`rag.fusion.fitMaxDays: expected a positive number of days, got ${o.fitMaxDays}`);
  // The slice is scored inside the evidence window, so some window must be able to hold the longest slice.
  if (Math.max(...o.windowsDays) < o.fitMaxDays) {
    throw new BadInputError(`rag.fusion.windowsDays: expected a window that holds the longest fit slice (fitMaxDays ${o.fitMaxDays}); the longest is ${Math.max(...o.windowsDays)} days`);
  }
  return { ...o, windowsDays: [...o.windowsDays].sort((a, b) => a - b) };
}

/** How far back a fusion refresh at T reads: its longest evidence window (which holds the longest fit slice). */
export function fusionSpanDays(options: FusionOptions = {}): number {
  return Math.max(...resolveFusionOptions(options).windowsDays);
}

/**
 * The fit slice before `asOf`: the shortest of 1, 2, 4... days (up to fitMaxDays) holding fitMinTransitions, never
 * starting before `notBefore` (a prior's data end).
 */
function fitSlice(log: EvidenceLog, asOf: number, o: Required<FusionOptions>, notBefore = Number.NEGATIVE_INFINITY): TimeWindow {
  const earliest = Math.min(notBefore, asOf);
  for (let days = 1; ; days *= 2) {
    const d = Math.min(days, o.fitMaxDays);
    const slice = { from: Math.max(asOf - d * DAY_MS, earliest), to: asOf };
    if (d >= o.fitMaxDays || slice.from === earliest) return slice;
    // Occurrences bound distinct transitions from above: count only once the cheap bound is met.
    if (log.occurrences(slice) >= o.fitMinTransitions && log.counts(slice).transitions >= o.fitMinTransitions) return slice;
  }
}

/**
 * What a fit slice's likelihood needs that no evidence window changes (`SliceLikelihood`), as plain typed arrays (a
 * second thread receives them as they are): its observations (a user's first transition of a triple in the slice)
 * in time order, their pairs and triples, and the prior's view of them.
 */
export interface SliceObservationsData {
  readonly K: number;
  readonly slice: TimeWindow;
  readonly transitions: number;
  /** Per pair of the slice: its clusters. */
  readonly pairC1: Int32Array;
  readonly pairC2: Int32Array;
  /**
   * Per observation: its pair (index into the arrays above), next cluster, triple (index into the arrays below),
   * and when its user's previous occurrence of the triple was (-Infinity for none).
   */
  readonly obsPair: Int32Array;
  readonly obsNext: Int32Array;
  readonly obsTriple: Int32Array;
  readonly obsPrevious: Float64Array;
  /** Per distinct triple of the observations: its pair and next cluster. */
  readonly triplePair: Int32Array;
  readonly tripleNext: Int32Array;
  /** Per distinct triple: log of the LLM prior's probability of its next cluster (floored as the weights use it). */
  readonly tripleLogPrior: Float64Array;
  /**
   * Per pair, its prior's top-M answers among the known clusters, copied out of the prior (pair i's are at
   * [i * M, i * M + answerCount[i])) with the log of their floored probabilities, and the log of its rest.
   */
  readonly answerNext: Int32Array;
  readonly answerLogP: Float64Array;
  readonly answerCount: Int32Array;
  readonly logRest: Float64Array;
  /** The distinct second clusters of the slice's pairs: the only backoff rows the likelihood reads. */
  readonly rows: Int32Array;
  /** log of the prior's second-cluster marginal (`priorLogMarginal`); null without a prior. */
  readonly logMarginal: Float64Array | null;
}

/** A slice's observations (`SliceObservationsData`) read from the log. */
function observationsOf(log: EvidenceLog, slice: TimeWindow, prior: LlmPrior | null): SliceObservationsData {
  const K = log.clusters.length;
  const walk = log.occurrencesOf(slice);
  let n = 0;
  for (let k = 0; k < walk.ts.length; k++) if (walk.previous[k] < slice.from) n++;
  const obsPair = new Int32Array(n);
  const obsNext = new Int32Array(n);
  const obsTriple = new Int32Array(n);
  const obsPrevious = new Float64Array(n);
  const pairIndex = new Int32Array(K * K).fill(-1);
  const pairs: number[] = [];
  const tripleIndex = new Map<number, number>();
  const triplePair: number[] = [];
  const tripleNext: number[] = [];
  const rowRead = new Uint8Array(K);
  for (let k = 0, o = 0; k < walk.ts.length; k++) {
    if (walk.previous[k] >= slice.from) continue;
    const p = walk.c1[k] * K + walk.c2[k];
    const next = walk.next[k];
    if (pairIndex[p] < 0) pairIndex[p] = pairs.push(p) - 1;
    rowRead[walk.c2[k]] = 1;
    let t = tripleIndex.get(p * K + next);
    if (t === undefined) {
      tripleIndex.set(p * K + next, (t = triplePair.push(pairIndex[p]) - 1));
      tripleNext.push(next);
    }
    obsPair[o] = pairIndex[p];
    obsNext[o] = next;
    obsTriple[o] = t;
    obsPrevious[o++] = walk.previous[k];
  }
  const logMarginal = prior ? priorLogMarginal(prior) : null;
  const topM = prior?.topM ?? 0;
  const answerNext = new Int32Array(pairs.length * topM);
  const answerLogP = new Float64Array(pairs.length * topM);
  const answerCount = new Int32Array(pairs.length);
  const logRest = new Float64Array(pairs.length);
  if (prior) {
    const logs = priorLogs(prior);
    pairs.forEach((p, i) => {
      logRest[i] = logs.rest[p];
      let kept = 0;
      for (let k = 0; k < topM; k++) {
        const n = prior.answer[p * topM + k];
        if (n < 0) break;
        if (prior.known && !prior.known[n]) continue;
        answerNext[i * topM + kept] = n;
        answerLogP[i * topM + kept] = logs.probability[p * topM + k];
        kept++;
      }
      answerCount[i] = kept;
    });
  }
  return {
    K,
    slice,
    transitions: n,
    pairC1: Int32Array.from(pairs, (p) => Math.floor(p / K)),
    pairC2: Int32Array.from(pairs, (p) => p % K),
    obsPair,
    obsNext,
    obsTriple,
    obsPrevious,
    triplePair: Int32Array.from(triplePair),
    tripleNext: Int32Array.from(tripleNext),
    tripleLogPrior: Float64Array.from(triplePair, (i, t) => (prior ? Math.log(Math.max(priorProbability(prior, pairs[i], tripleNext[t]), 1e-12)) : 0)),
    answerNext,
    answerLogP,
    answerCount,
    logRest,
    rows: Int32Array.from(rowRead.keys()).filter((c2) => rowRead[c2] === 1),
    logMarginal,
  };
}

/**
 * A slice's observations (`SliceObservationsData`) with the stage of the prior's weights the candidate windows of a
 * choice share (no evidence window changes it). The data's fields are the class's own (this interface merges with
 * the class; the constructor copies them in), read by the likelihood's loops without a hop through `data`.
 */
export interface SliceObservations extends SliceObservationsData {}
export class SliceObservations {
  /**
   * Stage (tau, lift) of every likelihood of these observations: the prior's weights (l^tau, module comment) of each
   * observation, the marginal's weights (marginal^(-lift * tau)) of the rows' entries, and what each of a pair's top-M
   * answers weighs beyond the rest's weight there (its l^tau less rest^tau x its marginal weight).
   */
  readonly answerExcess: Float64Array;
  readonly obsWeightTau: Float64Array;
  readonly marginalWeight: Float64Array;
  /**
   * Stage tau alone: each pair's rest's probability^tau, and each answer's and each triple's probability^tau. A weight
   * is its probability^tau times its marginal's weight, so a search of lift, which moves only the marginal's weights,
   * takes no exponential per answer or observation.
   */
  readonly restWeight: Float64Array;
  private readonly answerPower: Float64Array;
  private readonly triplePower: Float64Array;
  private stagedPowerTau = Number.NaN;
  private stagedTau = Number.NaN;
  private stagedLift = Number.NaN;

  constructor(
    readonly data: SliceObservationsData,
    readonly prior: LlmPrior | null,
  ) {
    Object.assign(this, data);
    const K = this.K;
    const pairs = this.pairC1.length;
    const topM = prior?.topM ?? 0;
    this.answerExcess = new Float64Array(pairs * topM);
    this.answerPower = new Float64Array(pairs * topM);
    this.restWeight = new Float64Array(pairs);
    this.obsWeightTau = new Float64Array(prior ? this.transitions : 0);
    this.marginalWeight = new Float64Array(prior ? K * K : 0);
    this.triplePower = new Float64Array(prior ? this.triplePair.length : 0);
  }

  static of(log: EvidenceLog, slice: TimeWindow, prior: LlmPrior | null): SliceObservations {
    return new SliceObservations(observationsOf(log, slice, prior), prior);
  }

  /** The prior's weights for (tau, lift) (each probability^tau as exp(tau * log p): one exp where pow costs several). */
  stagePrior(tau: number, lift: number): void {
    if (tau === this.stagedTau && lift === this.stagedLift) return;
    const topM = this.prior!.topM;
    const K = this.K;
    const { marginalWeight, restWeight, answerExcess, answerPower, triplePower, obsWeightTau, logMarginal, answerNext, answerCount, pairC2 } = this;
    if (tau !== this.stagedPowerTau) {
      const { logRest, answerLogP, tripleLogPrior } = this;
      for (let i = 0; i < pairC2.length; i++) {
        restWeight[i] = Math.exp(tau * logRest[i]);
        for (let k = i * topM, end = k + answerCount[i]; k < end; k++) answerPower[k] = Math.exp(tau * answerLogP[k]);
      }
      for (let t = 0; t < triplePower.length; t++) triplePower[t] = Math.exp(tau * tripleLogPrior[t]);
      this.stagedPowerTau = tau;
    }
    const marginalPower = -lift * tau;
    for (const c2 of this.rows) for (let at = c2 * K, end = at + K; at < end; at++) marginalWeight[at] = Math.exp(marginalPower * logMarginal![at]);
    for (let i = 0; i < pairC2.length; i++) {
      const rest = restWeight[i];
      const row = pairC2[i] * K;
      for (let k = i * topM, end = k + answerCount[i]; k < end; k++) answerExcess[k] = marginalWeight[row + answerNext[k]] * (answerPower[k] - rest);
    }
    const { obsTriple, obsPair, obsNext } = this;
    for (let o = 0; o < obsWeightTau.length; o++) obsWeightTau[o] = triplePower[obsTriple[o]] * marginalWeight[pairC2[obsPair[o]] * K + obsNext[o]];
    this.stagedTau = tau;
    this.stagedLift = lift;
  }
}

/**
 * The prequential likelihood of a fit slice as a function of the parameters: each transition of the slice is scored
 * by the posterior of the evidence window the table serves with, [T - W, T), as it stood just before that transition,
 * [T - W, t): what a table built at that moment would have said (the slice lies inside the window). Evidence that
 * ended where the slice began would be equally stale at every length after a change of successors, and favour long
 * windows and the prior.
 *
 * Counts only grow during the slice, so the likelihood walks it in time order: each observation is scored, then
 * counted. The pair counts an observation sees do not depend on the parameters and are taken once; the
 * second-cluster rows are kept as powered entries and row sums, updated entry by entry as the walk counts. Popularity
 * (the rows' smoothing) is the window's before the slice: a popularity that held the slice would let a slice of a
 * few hundred transitions (MovieLens) predict itself through it, and favour the window that is the slice.
 *
 * The base measure's normaliser is the expensive part, so for fixed (beta, gamma, tau) the base measure of each
 * observation is computed in one walk and alpha is profiled out with a cheap one-dimensional search. The searches
 * move one strength at a time, so the work is staged by what each stage depends on and the last result of each stage
 * is kept: the rows' logs depend on beta, their powers on gamma too, and only the prior's weights on tau. Only the
 * rows of second clusters the slice's pairs have are computed.
 */
export class SliceLikelihood {
  readonly K: number;
  readonly transitions: number;
  /** Smoothed popularity of the window before the slice, per cluster. */
  private readonly popularity: Float64Array;
  /** The slice's observations and pairs, and the prior's view of them (`SliceObservations`). */
  private readonly pairC1: Int32Array;
  private readonly pairC2: Int32Array;
  private readonly obsPair: Int32Array;
  private readonly obsNext: Int32Array;
  private readonly answerNext: Int32Array;
  private readonly answerCount: Int32Array;
  private readonly rows: Int32Array;
  /**
   * Per observation: the users of its triple and of its pair in the window before it, and how many row updates
   * (`updateEntry`) were counted before it.
   */
  private readonly obsEvidence: Float64Array;
  private readonly obsPairEvidence: Float64Array;
  private readonly obsUpdates: Int32Array;
  /** Row updates in time order (a transition counted during the slice, in a row the likelihood reads): its entry and the entry's users before it. */
  private readonly updateEntry: Int32Array;
  private readonly updateUsers: Float64Array;
  /** Users of each entry (second cluster, next) of the rows read, before the slice. */
  private readonly second: Float64Array;
  /** Stage beta: log(users + beta * popularity) of the rows' entries before the slice, and after each update. */
  private readonly logEntry: Float64Array;
  private readonly updateLog: Float64Array;
  /**
   * An entry's log and power depend only on its users and its cluster, and most entries (and updates) share them with
   * entries of other rows: the distinct (users, cluster) pairs of few users are levels, whose log (stage beta) and
   * power (stage gamma) are computed once each. Per entry of the rows read and per update: its level, or -1 (many
   * users: computed on its own).
   */
  private readonly entryLevel: Int32Array;
  private readonly updateLevel: Int32Array;
  private readonly levelUsers: Float64Array;
  private readonly levelCluster: Int32Array;
  private readonly levelLog: Float64Array;
  private readonly levelEntry: Float64Array;
  private stagedBeta = Number.NaN;
  /** Stage (beta, gamma): the same powered by gamma; the rows' sums over every cluster and the known ones. */
  private readonly entry: Float64Array;
  private readonly updateExp: Float64Array;
  private readonly rowSum: Float64Array;
  private readonly rowKnown: Float64Array;
  private stagedGamma = Number.NaN;
  private stagedGammaBeta = Number.NaN;
  /** Stage (beta, gamma, tau, lift): the rows' sums over the known clusters of entry x marginal weight. */
  private readonly rowKnownLifted: Float64Array;
  private stagedLiftedRows = "";
  /**
   * The likelihood split for the alpha search: an observation without evidence users contributes
   * log alpha + log base, every observation -log(pair evidence + alpha), grouped by that evidence.
   */
  private readonly obsWithEvidence: Int32Array;
  private readonly withoutEvidence: number;
  /** The evidence users of the observations with some, and their base measures of the evaluation at hand. */
  private readonly evidenceWith: Float64Array;
  private readonly baseWith: Float64Array;
  private readonly groupEvidence: Float64Array;
  private readonly groupWeight: Float64Array;
  /** The walk's current entries and row sums, and the observations' base measures of the last evaluation. */
  private readonly entryNow: Float64Array;
  private readonly rowSumNow: Float64Array;
  private readonly rowKnownNow: Float64Array;
  private readonly rowKnownLiftedNow: Float64Array;
  private readonly base: Float64Array;
  /** The staged entries entryNow holds (null: none yet, or restaged since). */
  private entryNowOf: Float64Array | null = null;
  /** The fit of this likelihood (`fittedStrengths`), once started. */
  fitted: Promise<FittedStrengths> | null = null;

  /** `start`: what the window [T - W, T) that holds the observations' slice had before it (`sliceStart`). */
  constructor(
    readonly observations: SliceObservations,
    readonly start: SliceStart,
  ) {
    const { slice, K } = observations;
    this.K = K;
    const window = start.served;
    if (window.from > slice.from || window.to !== slice.to) throw new FreshrecError("INTERNAL", "fusion: a fit slice that does not end its evidence window");
    ({ pairC1: this.pairC1, pairC2: this.pairC2, obsPair: this.obsPair, obsNext: this.obsNext } = observations);
    ({ answerNext: this.answerNext, answerCount: this.answerCount, rows: this.rows, transitions: this.transitions } = observations);
    // Read-only (the window's own counts, `EvidenceLog.counts`).
    this.second = start.second;
    const { obsTriple, obsPrevious } = observations;
    // Counted below as the walk counts the slice.
    const pairUsers = start.pairUsers.slice();
    const tripleUsers = start.tripleUsers.slice();
    // Score each observation on the counts before it, then count it (once a user's first of its triple in the
    // window): every transition counted during the slice is an observation, in a row the likelihood reads.
    const second = start.second.slice();
    const n = this.transitions;
    this.obsEvidence = new Float64Array(n);
    this.obsPairEvidence = new Float64Array(n);
    this.obsUpdates = new Int32Array(n);
    const updateEntry = new Int32Array(n);
    const updateUsers = new Float64Array(n);
    let updates = 0;
    for (let o = 0; o < n; o++) {
      const t = obsTriple[o];
      const i = this.obsPair[o];
      this.obsEvidence[o] = tripleUsers[t];
      this.obsPairEvidence[o] = pairUsers[i];
      this.obsUpdates[o] = updates;
      if (obsPrevious[o] >= window.from) continue;
      tripleUsers[t]++;
      pairUsers[i]++;
      const at = this.pairC2[i] * K + this.obsNext[o];
      updateEntry[updates] = at;
      updateUsers[updates++] = second[at];
      second[at]++;
    }
    this.updateEntry = updateEntry.slice(0, updates);
    this.updateUsers = updateUsers.slice(0, updates);
    const groups = new Map<number, number>();
    this.obsPairEvidence.forEach((e) => groups.set(e, (groups.get(e) ?? 0) + 1));
    this.groupEvidence = Float64Array.from(groups.keys());
    this.groupWeight = Float64Array.from(groups.values());
    this.obsWithEvidence = Int32Array.from(this.obsEvidence.keys()).filter((o) => this.obsEvidence[o] > 0);
    this.withoutEvidence = this.transitions - this.obsWithEvidence.length;
    this.evidenceWith = Float64Array.from(this.obsWithEvidence, (o) => this.obsEvidence[o]);
    this.baseWith = new Float64Array(this.obsWithEvidence.length);
    this.rowKnownLifted = new Float64Array(K);
    this.rowKnownLiftedNow = new Float64Array(K);
    this.popularity = logPopularityOf(start.popularity, start.transitions).map(Math.exp);
    this.logEntry = new Float64Array(K * K);
    this.updateLog = new Float64Array(updates);
    const levelOf = new Int32Array(LEVEL_USERS * K).fill(-1);
    const levelUsers: number[] = [];
    const levelCluster: number[] = [];
    const level = (users: number, n: number) => {
      if (users >= LEVEL_USERS) return -1;
      const key = users * K + n;
      if (levelOf[key] < 0) {
        levelOf[key] = levelUsers.push(users) - 1;
        levelCluster.push(n);
      }
      return levelOf[key];
    };
    this.entryLevel = new Int32Array(K * K).fill(-1);
    for (const c2 of this.rows) {
      for (let n = 0, at = c2 * K; n < K; n++, at++) if (this.second[at] < LEVEL_USERS) this.entryLevel[at] = level(this.second[at], n);
    }
    // An update's entry after it has its users before it plus one.
    this.updateLevel = Int32Array.from(this.updateEntry, (at, j) => level(this.updateUsers[j] + 1, at % K));
    this.levelUsers = Float64Array.from(levelUsers);
    this.levelCluster = Int32Array.from(levelCluster);
    this.levelLog = new Float64Array(levelUsers.length);
    this.levelEntry = new Float64Array(levelUsers.length);
    this.entry = new Float64Array(K * K);
    this.updateExp = new Float64Array(updates);
    this.rowSum = new Float64Array(K);
    this.rowKnown = new Float64Array(K);
    this.entryNow = new Float64Array(K * K);
    this.rowSumNow = new Float64Array(K);
    this.rowKnownNow = new Float64Array(K);
    this.base = new Float64Array(this.transitions);
  }

  get prior(): LlmPrior | null {
    return this.observations.prior;
  }

  get slice(): TimeWindow {
    return this.observations.slice;
  }

  /** log(users + beta * popularity) of the rows' entries and of each update's result, for `beta`. */
  private stageBeta(beta: number): void {
    if (beta === this.stagedBeta) return;
    const K = this.K;
    const { second, popularity, logEntry, entryLevel, updateLevel, levelUsers, levelCluster, levelLog } = this;
    for (let l = 0; l < levelLog.length; l++) levelLog[l] = Math.log(levelUsers[l] + beta * popularity[levelCluster[l]]);
    for (const c2 of this.rows) {
      for (let n = 0, at = c2 * K; n < K; n++, at++) if (entryLevel[at] < 0) logEntry[at] = Math.log(second[at] + beta * popularity[n]);
    }
    for (let j = 0; j < this.updateEntry.length; j++) {
      if (updateLevel[j] < 0) this.updateLog[j] = Math.log(this.updateUsers[j] + 1 + beta * popularity[this.updateEntry[j] % K]);
    }
    this.stagedBeta = beta;
    this.stagedGamma = Number.NaN;
  }

  /** The entries powered by gamma and the row sums (all clusters, and the known ones) for (beta, gamma). */
  private stageGamma(beta: number, gamma: number, known: Uint8Array | null): void {
    this.stageBeta(beta);
    if (gamma === this.stagedGamma && beta === this.stagedGammaBeta) return;
    const K = this.K;
    const { logEntry, entry, entryLevel, updateLevel, levelLog, levelEntry } = this;
    for (let l = 0; l < levelEntry.length; l++) levelEntry[l] = Math.exp(gamma * levelLog[l]);
    for (const c2 of this.rows) {
      let sum = 0;
      let sumKnown = 0;
      for (let n = 0, at = c2 * K; n < K; n++, at++) {
        const level = entryLevel[at];
        const e = (entry[at] = level >= 0 ? levelEntry[level] : Math.exp(gamma * logEntry[at]));
        sum += e;
        if (!known || known[n]) sumKnown += e;
      }
      this.rowSum[c2] = sum;
      this.rowKnown[c2] = sumKnown;
    }
    for (let j = 0; j < this.updateExp.length; j++) this.updateExp[j] = updateLevel[j] >= 0 ? levelEntry[updateLevel[j]] : Math.exp(gamma * this.updateLog[j]);
    this.entryNowOf = null;
    this.stagedGamma = gamma;
    this.stagedGammaBeta = beta;
  }

  /** The rows' sums over the known clusters of entry x marginal weight, for the staged (beta, gamma) and (tau, lift). */
  private stageLiftedRows(known: Uint8Array | null, tau: number, lift: number): void {
    const key = `${this.stagedGammaBeta} ${this.stagedGamma} ${tau} ${lift}`;
    if (key === this.stagedLiftedRows) return;
    const K = this.K;
    const { marginalWeight } = this.observations;
    for (const c2 of this.rows) {
      let sum = 0;
      for (let n = 0; n < K; n++) if (!known || known[n]) sum += this.entry[c2 * K + n] * marginalWeight[c2 * K + n];
      this.rowKnownLifted[c2] = sum;
    }
    this.stagedLiftedRows = key;
  }

  /**
   * Base-measure probability of every observation under (beta, gamma, tau, lift), on the rows as they stood before it. A
   * pair's normalisers are its second cluster's row sums (all clusters, and the known ones) less its own two
   * clusters, corrected on the prior's top-M answers only (outside them the prior is one constant per pair), so an
   * observation costs O(M), not O(K).
   */
  baseOfObservations(beta: number, gamma: number, tau: number, lift: number): Float64Array {
    const K = this.K;
    // The known-cluster sums are taken over the prior's mask; without a prior they are not read.
    const maskKnown = this.prior?.known ?? null;
    this.stageGamma(beta, gamma, maskKnown);
    const prior = tau > 0 ? this.prior : null;
    const known = prior?.known ?? null;
    if (prior) {
      this.observations.stagePrior(tau, lift);
      this.stageLiftedRows(known, tau, lift);
    }
    const { answerExcess, restWeight, obsWeightTau, marginalWeight } = this.observations;
    const { answerNext, answerCount, entryNow, rowSumNow, rowKnownNow, rowKnownLiftedNow, updateEntry, updateExp } = this;
    const { obsUpdates, obsPair, obsNext, pairC1, pairC2, entry } = this;
    const topM = prior?.topM ?? 0;
    // entryNow holds the staged entries between walks: a walk changes only its updates' entries and puts them back.
    if (this.entryNowOf !== entry) {
      for (const c2 of this.rows) entryNow.set(entry.subarray(c2 * K, c2 * K + K), c2 * K);
      this.entryNowOf = entry;
    }
    for (const c2 of this.rows) {
      rowSumNow[c2] = this.rowSum[c2];
      rowKnownNow[c2] = this.rowKnown[c2];
      rowKnownLiftedNow[c2] = this.rowKnownLifted[c2];
    }
    // Reused between calls: each result is consumed (profileAlpha) before the next evaluation.
    const out = this.base;
    let applied = 0;
    for (let o = 0; o < out.length; o++) {
      for (const end = obsUpdates[o]; applied < end; applied++) {
        const at = updateEntry[applied];
        const change = updateExp[applied] - entryNow[at];
        entryNow[at] = updateExp[applied];
        const c2 = (at - (at % K)) / K;
        rowSumNow[c2] += change;
        if (!maskKnown || maskKnown[at % K]) {
          rowKnownNow[c2] += change;
          if (prior) rowKnownLiftedNow[c2] += change * marginalWeight[at];
        }
      }
      const i = obsPair[o];
      const c1 = pairC1[i];
      const c2 = pairC2[i];
      const row = c2 * K;
      const n = obsNext[o];
      const z = rowSumNow[c2] - entryNow[row + c1] - entryNow[row + c2];
      if (prior && (!known || known[n])) {
        const knownSum = rowKnownNow[c2] - (!known || known[c1] ? entryNow[row + c1] : 0) - (!known || known[c2] ? entryNow[row + c2] : 0);
        const knownLift =
          rowKnownLiftedNow[c2] -
          (!known || known[c1] ? entryNow[row + c1] * marginalWeight[row + c1] : 0) -
          (!known || known[c2] ? entryNow[row + c2] * marginalWeight[row + c2] : 0);
        const rest = restWeight[i];
        let knownZ = knownLift * rest;
        for (let k = i * topM, end = k + answerCount[i]; k < end; k++) knownZ += entryNow[row + answerNext[k]] * answerExcess[k];
        out[o] = ((knownSum / z) * entryNow[row + n] * obsWeightTau[o]) / knownZ;
      } else {
        out[o] = entryNow[row + n] / z;
      }
    }
    for (let u = 0; u < applied; u++) entryNow[updateEntry[u]] = entry[updateEntry[u]];
    return out;
  }

  /**
   * Total log-likelihood for a given alpha: sum over observations of log((e + alpha * base) / (E + alpha)), e the
   * observation's evidence users and E its pair's. `logBase` is the sum of log(base) over the observations without
   * evidence users (it does not depend on alpha); `baseWith` holds the base measures of those with some.
   */
  logLikelihood(alpha: number, logBase: number): number {
    let ll = this.withoutEvidence * Math.log(alpha) + logBase;
    // One log per product of a few terms (a log costs many products): each term lies between 1 and a few
    // thousand users plus alpha, so a product of eight stays far inside the range of a double.
    const { evidenceWith, baseWith } = this;
    let product = 1;
    for (let k = 0; k < evidenceWith.length; k++) {
      product *= evidenceWith[k] + alpha * baseWith[k];
      if ((k & 7) === 7) {
        ll += Math.log(product);
        product = 1;
      }
    }
    ll += Math.log(product);
    for (let g = 0; g < this.groupEvidence.length; g++) ll -= this.groupWeight[g] * Math.log(this.groupEvidence[g] + alpha);
    return ll;
  }

  /**
   * The likelihood at (beta, gamma, tau, lift) with alpha profiled out. The searches come back to points they have
   * been at (a search's best is where the next one starts, a bound is a candidate of every search of its strength,
   * and tau = 0 makes lift irrelevant), also many evaluations later, so every evaluation is kept: a fit makes a few
   * hundred.
   */
  evaluate(beta: number, gamma: number, tau: number, lift: number): { alpha: number; ll: number } {
    const key = `${beta} ${gamma} ${tau} ${tau > 0 ? lift : 0}`;
    const known = this.evaluated.get(key);
    if (known) return known;
    const result = this.profileAlpha(this.baseOfObservations(beta, gamma, tau, lift));
    this.evaluated.set(key, result);
    return result;
  }
  private readonly evaluated = new Map<string, { alpha: number; ll: number }>();

  /** alpha maximising the likelihood for fixed base measures (log-scale line search). */
  profileAlpha(base: Float64Array): { alpha: number; ll: number } {
    let logBase = 0;
    for (let o = 0; o < base.length; o++) if (!(this.obsEvidence[o] > 0)) logBase += Math.log(base[o]);
    for (let k = 0; k < this.obsWithEvidence.length; k++) this.baseWith[k] = base[this.obsWithEvidence[k]];
    const best = brentMax((a) => this.logLikelihood(Math.exp(a), logBase), Math.log(1e-2), Math.log(1e4), 0.05);
    return { alpha: Math.exp(best.x), ll: best.y };
  }
}

/** Users below which a (users, cluster) pair of the fit's backoff rows is a level (`SliceLikelihood.entryLevel`). */
const LEVEL_USERS = 64;

/** log of smoothed popularity, per cluster, of a window's popularity counts and its transitions. */
function logPopularityOf(popularity: Float64Array, transitions: number): Float64Array {
  const total = transitions + popularity.length;
  return Float64Array.from(popularity, (u) => Math.log((u + 1) / total));
}

/**
 * What a slice's likelihood in the evidence window `served` reads of the window's counts before the slice, as plain
 * typed arrays (a second thread receives them as they are): the second-cluster rows, popularity and its total, and
 * the users of each pair and triple of the slice's observations.
 */
export interface SliceStart {
  readonly served: TimeWindow;
  readonly second: Float64Array;
  readonly popularity: Float64Array;
  readonly transitions: number;
  readonly pairUsers: Float64Array;
  readonly tripleUsers: Float64Array;
}

/** The `SliceStart` of `observations` in the evidence window `served` (counted from the log: counting, not fitting). */
export function sliceStart(log: EvidenceLog, observations: SliceObservations, served: TimeWindow): SliceStart {
  const K = observations.K;
  const before = log.counts({ from: served.from, to: observations.slice.from });
  const { pairC1, pairC2, triplePair, tripleNext } = observations;
  const pairUsers = new Float64Array(pairC1.length);
  const owns = Array.from(pairC1, (c1, i) => before.pairs.get(c1 * K + pairC2[i]));
  owns.forEach((own, i) => (pairUsers[i] = own?.total ?? 0));
  const tripleUsers = new Float64Array(triplePair.length);
  for (let t = 0; t < triplePair.length; t++) {
    const own = owns[triplePair[t]];
    const k = own ? own.next.indexOf(tripleNext[t]) : -1;
    if (k >= 0) tripleUsers[t] = own!.users[k];
  }
  return { served, second: before.second, popularity: before.popularity, transitions: before.transitions, pairUsers, tripleUsers };
}

/** log q2(n | c2) for every c2 and n (module comment), for one beta. */
function logSecondRowsOf(second: Float64Array, secondTotal: Float64Array, logPop: Float64Array, beta: number): Float64Array {
  const K = secondTotal.length;
  const out = new Float64Array(K * K);
  const popularity = logPop.map(Math.exp);
  for (let c2 = 0; c2 < K; c2++) {
    const denominator = secondTotal[c2] + beta;
    for (let n = 0; n < K; n++) out[c2 * K + n] = Math.log((second[c2 * K + n] + beta * popularity[n]) / denominator);
  }
  return out;
}

/**
 * Maximum of a unimodal-enough function on [lo, hi] by Brent's method: a parabola through the last three points
 * where its vertex falls well inside the bracket, a golden-section step where it does not, until the bracket is
 * `tolerance` wide. On the likelihood's smooth strengths the parabola lands close, so it takes fewer evaluations than
 * golden sections alone for the same bracket. `from`: the first point (default: the bracket's golden section).
 */
function brentMax(f: (x: number) => number, lo: number, hi: number, tolerance: number, from?: number): { x: number; y: number } {
  const golden = (3 - Math.sqrt(5)) / 2;
  const tol1 = tolerance / 4;
  const tol2 = 2 * tol1;
  let a = lo;
  let b = hi;
  let x = from ?? a + golden * (b - a);
  let w = x;
  let v = x;
  let fx = f(x);
  let fw = fx;
  let fv = fx;
  let d = 0;
  let e = 0;
  for (;;) {
    const xm = (a + b) / 2;
    if (Math.abs(x - xm) <= tol2 - (b - a) / 2) break;
    let parabolic = false;
    if (Math.abs(e) > tol1) {
      // The parabola's vertex through (v, w, x), maximising: the signs are those of minimising -f.
      const r = (x - w) * (fv - fx);
      let q = (x - v) * (fw - fx);
      let p = (x - v) * q - (x - w) * r;
      q = 2 * (q - r);
      if (q > 0) p = -p;
      q = Math.abs(q);
      const previous = e;
      e = d;
      if (Math.abs(p) < Math.abs(0.5 * q * previous) && p > q * (a - x) && p < q * (b - x)) {
        d = p / q;
        const u = x + d;
        if (u - a < tol2 || b - u < tol2) d = xm >= x ? tol1 : -tol1;
        parabolic = true;
      }
    }
    if (!parabolic) {
      e = x >= xm ? a - x : b - x;
      d = golden * e;
    }
    const u = Math.abs(d) >= tol1 ? x + d : x + (d >= 0 ? tol1 : -tol1);
    const fu = f(u);
    if (fu >= fx) {
      if (u >= x) a = x;
      else b = x;
      v = w;
      fv = fw;
      w = x;
      fw = fx;
      x = u;
      fx = fu;
    } else {
      if (u < x) a = u;
      else b = u;
      if (fu >= fw || w === x) {
        v = w;
        fv = fw;
        w = u;
        fw = fu;
      } else if (fu >= fv || v === x || v === w) {
        v = u;
        fv = fu;
      }
    }
  }
  // The ends are candidates too: the optimum of a strength often sits at its bound (tau = 0 for a useless prior).
  const candidates = [{ x: lo, y: f(lo) }, { x: hi, y: f(hi) }, { x, y: fx }];
  return candidates.reduce((best, c) => (c.y > best.y ? c : best));
}

/**
 * The maximum near `x0` on [lo, hi]: a bracket grown from x0 (steps of twice the tolerance, doubling) until the
 * function falls on both sides of its best point or reaches a bound, then Brent's method inside it. For a search that
 * starts at its last optimum: when that is still close, a few evaluations instead of a search of the whole range.
 */
function localMax(f: (x: number) => number, x0: number, lo: number, hi: number, tolerance: number): { x: number; y: number } {
  let h = 2 * tolerance;
  let x = Math.min(hi, Math.max(lo, x0));
  let fx = f(x);
  let a = Math.max(lo, x - h);
  let b = Math.min(hi, x + h);
  let fa = a < x ? f(a) : fx;
  let fb = b > x ? f(b) : fx;
  while (fa > fx && a > lo) {
    b = x;
    fb = fx;
    x = a;
    fx = fa;
    h *= 2;
    a = Math.max(lo, x - h);
    fa = f(a);
  }
  while (fb > fx && b < hi) {
    a = x;
    fa = fx;
    x = b;
    fx = fb;
    h *= 2;
    b = Math.min(hi, x + h);
    fb = f(b);
  }
  // Either the function falls on both sides of x, or it still rises towards a bound the bracket has reached: the
  // maximum lies in [a, b] (whose ends brentMax weighs as candidates) in both cases. The best point so far wins ties,
  // so a strength the likelihood does not depend on (lift at tau = 0) stays where it was instead of drifting.
  const found = b - a > tolerance ? brentMax(f, a, b, tolerance, x) : [{ x: a, y: fa }, { x: b, y: fb }].reduce((best, c) => (c.y > best.y ? c : best), { x, y: fx });
  return found.y > fx ? found : { x, y: fx };
}

/** The strengths a sweep searches, in order, with their ranges and tolerances (beta on a log scale). */
const STRENGTHS = [
  { name: "beta", lo: Math.log(0.1), hi: Math.log(1e4), tolerance: 0.25, logScale: true, prior: false },
  { name: "gamma", lo: 0, hi: 2.5, tolerance: 0.1, logScale: false, prior: false },
  { name: "tau", lo: 0, hi: 3, tolerance: 0.1, logScale: false, prior: true },
  { name: "lift", lo: 0, hi: 1, tolerance: 0.05, logScale: false, prior: true },
] as const;

type Strengths = { beta: number; gamma: number; tau: number; lift: number };

/** Where every search of the strengths starts (`coarsePassOf`, `maximise`); without a prior, tau and lift at 0. */
const SEARCH_START: Readonly<Strengths> = { beta: DEFAULT_FUSION_PARAMS.beta, gamma: DEFAULT_FUSION_PARAMS.gamma, tau: 0.5, lift: 0.5 };

/**
 * Coordinate ascent on (beta, gamma, tau, lift) from `SEARCH_START`, alpha profiled at every point; tau and lift
 * stay 0 without a prior. A sweep searches each strength in turn (`STRENGTHS`); `step` runs the next search, so a caller can stop after a
 * few (the window choice's coarse pass) and resume later with the same result as an uninterrupted sweep.
 */
class StrengthSearch {
  private readonly at: Strengths;
  private readonly strengths: readonly (typeof STRENGTHS)[number][];
  private next = 0;
  private sweeps = 0;

  /**
   * `coarse`: the result of this search's first step (`coarsePassOf`, on this thread or the second), which it then
   * does not repeat.
   */
  constructor(
    private readonly likelihood: SliceLikelihood,
    withPrior: boolean,
    coarse: CoarsePass | null = null,
  ) {
    this.at = withPrior ? { ...SEARCH_START } : { ...SEARCH_START, tau: 0, lift: 0 };
    this.strengths = withPrior ? STRENGTHS : STRENGTHS.filter((s) => !s.prior);
    if (coarse) {
      this.at[this.strengths[0].name] = coarse.found;
      this.next = 1;
    }
  }

  /** The value the last step found for its strength. */
  get found(): number {
    return this.at[this.strengths[(this.next + this.strengths.length - 1) % this.strengths.length].name];
  }

  /** Searches the next strength of the sweep; returns the likelihood at what it found. */
  step(): number {
    const strength = this.strengths[this.next];
    this.next = (this.next + 1) % this.strengths.length;
    const at = { ...this.at };
    const f = (x: number) => {
      at[strength.name] = strength.logScale ? Math.exp(x) : x;
      return this.likelihood.evaluate(at.beta, at.gamma, at.tau, at.lift).ll;
    };
    const x0 = strength.logScale ? Math.log(this.at[strength.name]) : this.at[strength.name];
    // The first sweep searches each strength's whole range; later ones start where the last left it.
    const best = this.sweeps > 0 ? localMax(f, x0, strength.lo, strength.hi, strength.tolerance) : brentMax(f, strength.lo, strength.hi, strength.tolerance);
    if (this.next === 0) this.sweeps++;
    this.at[strength.name] = strength.logScale ? Math.exp(best.x) : best.x;
    return best.y;
  }

  /** Runs the rest of the current sweep. */
  finishSweep(): void {
    do this.step();
    while (this.next !== 0);
  }

  get result(): { params: FusionParams; ll: number } {
    const { beta, gamma, tau, lift } = this.at;
    const { alpha, ll } = this.likelihood.evaluate(beta, gamma, tau, lift);
    return { params: { alpha, beta, gamma, tau, lift }, ll };
  }
}

/** Maximum-likelihood (alpha, beta, gamma, tau, lift) of a slice; tau and lift stay 0 without a prior. */
function maximise(likelihood: SliceLikelihood, withPrior: boolean, coarse: CoarsePass | null = null, sweeps = 2): { params: FusionParams; ll: number } {
  const search = new StrengthSearch(likelihood, withPrior, coarse);
  for (let sweep = 0; sweep < sweeps; sweep++) search.finishSweep();
  return search.result;
}

/** The maximum-likelihood strengths of a slice without the prior (tau = 0: the counts-backoff posterior). */
export function countsOnlyFit(likelihood: SliceLikelihood, coarse: CoarsePass | null = null): { params: FusionParams; ll: number } {
  return maximise(likelihood, false, likelihood.prior ? null : coarse);
}

interface FittedStrengths {
  readonly countsOnly: { params: FusionParams; ll: number };
  readonly chosen: { params: FusionParams; ll: number };
}

/**
 * The maximum-likelihood strengths of a slice in its window: without the prior (the counts-backoff baseline), with
 * it, and the better of the two. Computed once per likelihood: the window choice fits its best candidates in full,
 * and the refresh serves with the chosen one's fit. The two fits are independent: with a second thread the one
 * without the prior runs there while this thread fits the one with it (the same code on the same inputs, so the same
 * strengths bit for bit). `coarse`: the window choice's coarse pass of this likelihood, the first step of the fit
 * that starts where it started (the one with the prior, or without one the only one).
 */
function fittedStrengths(likelihood: SliceLikelihood, coarse: CoarsePass | null, thread: FusionThread | null): Promise<FittedStrengths> {
  likelihood.fitted ??= (async () => {
    const prior = likelihood.prior;
    const remote = prior && thread ? thread.countsOnlyFit({ observations: likelihood.observations.data, prior, start: likelihood.start }) : null;
    // Settled before this thread's fit can throw, so a failure here leaves no rejection unawaited.
    remote?.catch(() => undefined);
    const fitted = prior ? maximise(likelihood, true, coarse) : null;
    const countsOnly = remote ? await remote : countsOnlyFit(likelihood, coarse);
    // The prior is nested (tau = 0 is the counts-only model), so a fit with it never reports less than without it.
    const chosen = fitted && fitted.ll >= countsOnly.ll ? fitted : countsOnly;
    return { countsOnly, chosen };
  })();
  return likelihood.fitted;
}

export interface FitFusionInput {
  readonly log: EvidenceLog;
  readonly asOf: number;
  /** null: the counts-backoff baseline (tau = 0). */
  readonly prior: LlmPrior | null;
  readonly options?: FusionOptions;
  /** A window length already chosen for this instant (shared by strategies refreshing at the same time). */
  readonly windowChoice?: WindowChoice;
  /**
   * The second thread (`FusionThread`) the window choice shares its coarse pass with, and that fits the chosen
   * window's counts-only strengths; absent: this thread alone.
   */
  readonly thread?: FusionThread | null;
}

/** The evidence window chosen for an instant (by the fit with the prior, when there is one). */
export interface WindowChoice {
  readonly windowDays: number;
  readonly windows: readonly { readonly days: number; readonly perTransition: number }[];
  readonly slice: TimeWindow;
  readonly sliceTransitions: number;
  /**
   * Why the prior given is not weighed at this instant (too few transitions after its data end), or null when it
   * is (or there is none): the choice and the fit are then those of counts alone.
   */
  readonly priorNotWeighed: string | null;
}

/**
 * The fit slice at `asOf` and the prior it can weigh: with a prior whose data end is known, the slice after that
 * end if it holds `fitFloor` transitions; otherwise the slice of counts alone, and the reason.
 */
function weighableSlice(log: EvidenceLog, asOf: number, o: Required<FusionOptions>, prior: LlmPrior | null) {
  if (prior && prior.dataEnd !== undefined) {
    const slice = fitSlice(log, asOf, o, prior.dataEnd);
    const counts = log.counts(slice);
    if (counts.transitions >= o.fitFloor) return { slice, counts, prior, priorNotWeighed: null };
    const since = new Date(Math.min(prior.dataEnd, asOf)).toISOString();
    const priorNotWeighed = `the prior is not weighed yet: ${counts.transitions} transitions since its model's data ended (${since}), fitFloor ${o.fitFloor}; it serves with weight 0`;
    const countsSlice = fitSlice(log, asOf, o);
    return { slice: countsSlice, counts: log.counts(countsSlice), prior: null, priorNotWeighed };
  }
  const slice = fitSlice(log, asOf, o);
  return { slice, counts: log.counts(slice), prior, priorNotWeighed: null };
}

/**
 * Chooses the evidence window at `asOf`: for each candidate length W that holds the fit slice, the posterior (with
 * the prior, when there is one and it can be weighed: a strong prior wants fresher, shorter windows than counts
 * alone) with evidence [asOf - W, asOf), the evidence the table would serve with, is fitted to the slice, each
 * transition scored on that window as it stood just before it; the best per-transition likelihood wins. Candidates are tried
 * shortest first, up to the first that covers all the data there is. Each is fitted coarsely first (beta alone) and
 * in full only when that leaves it within `CHOICE_MARGIN` of the best; a candidate's recorded likelihood is the one
 * it got. With `thread` (a refresh's second thread, src/update/fusion-thread.ts) the coarse fits are shared between
 * the two threads, and each full fit's counts-only strengths are fitted there; the choice is the same.
 */
export async function chooseWindow(
  log: EvidenceLog,
  asOf: number,
  options: FusionOptions = {},
  givenPrior: LlmPrior | null = null,
  thread: FusionThread | null = null,
): Promise<WindowChoice> {
  const o = resolveFusionOptions(options);
  if (asOf > log.span.to) throw new FreshrecError("INTERNAL", `fusion: as-of ${new Date(asOf).toISOString()} lies after the evidence log`);
  const { slice, counts: sliceCounts, prior, priorNotWeighed } = weighableSlice(log, asOf, o, givenPrior);
  // The candidates and what each one's likelihood reads of the log (counting), before any is fitted.
  const candidates: { days: number; start: SliceStart; likelihood: SliceLikelihood | null; coarse: CoarsePass | null; ll: number }[] = [];
  let observations: SliceObservations | undefined;
  const first = log.firstTs ?? asOf;
  for (const days of o.windowsDays) {
    const evidenceWindow = { from: asOf - days * DAY_MS, to: asOf };
    if (evidenceWindow.from > slice.from) continue;
    if (evidenceWindow.from < log.span.from) break;
    if (sliceCounts.transitions < o.fitFloor) break;
    observations ??= SliceObservations.of(log, slice, prior);
    candidates.push({ days, start: sliceStart(log, observations, evidenceWindow), likelihood: null, coarse: null, ll: Number.NaN });
    // Longer windows than the data reaches back hold the same evidence: stop once one covers it all. (No stop at
    // the first dip: on sparse logs the likelihood wobbles at short windows and keeps rising at long ones.)
    if (evidenceWindow.from <= first) break;
  }
  // The coarse pass: beta alone (the strength that moves most with the window's counts), the others at their start.
  // With a second thread both take the next candidate from one shared counter until none is left: each candidate's
  // likelihood is the same whichever thread computes it.
  const next = new Int32Array(new SharedArrayBuffer(4));
  const remote =
    thread && observations && candidates.length > 1 ? thread.coarsePass({ observations: observations.data, prior, starts: candidates.map((c) => c.start), next }) : null;
  for (let k = Atomics.add(next, 0, 1); k < candidates.length; k = Atomics.add(next, 0, 1)) {
    const c = candidates[k];
    c.likelihood = new SliceLikelihood(observations!, c.start);
    c.coarse = coarsePassOf(c.likelihood);
    c.ll = c.coarse.ll;
  }
  if (remote) {
    for (const [k, coarse] of await remote) {
      candidates[k].coarse = coarse;
      candidates[k].ll = coarse.ll;
    }
  }
  const missing = candidates.find((c) => Number.isNaN(c.ll));
  if (missing) throw new FreshrecError("INTERNAL", `fusion: the coarse pass left the ${missing.days}-day window unscored`);
  // The full fit for the candidates the coarse pass leaves in reach of the best: the strengths after beta move a
  // window's likelihood by less than the margin more than they move another's, so the others cannot overtake. The
  // chosen window's fit is the one the refresh serves with (`fitFusion` takes it from its likelihood).
  const reach = Math.max(...candidates.map((c) => c.ll)) - CHOICE_MARGIN * sliceCounts.transitions;
  for (const c of candidates) {
    if (c.ll < reach) continue;
    c.likelihood ??= new SliceLikelihood(observations!, c.start);
    c.ll = (await fittedStrengths(c.likelihood, c.coarse, thread)).chosen.ll;
  }
  const windows = candidates.map((c) => ({ days: c.days, perTransition: c.ll / observations!.transitions }));
  const best = candidates.reduce<(typeof candidates)[number] | null>((b, c) => (b === null || c.ll > b.ll ? c : b), null);
  if (best) chosenLikelihoods.set(log, best.likelihood!);
  return { windowDays: best?.days ?? o.windowsDays[o.windowsDays.length - 1], windows, slice, sliceTransitions: sliceCounts.transitions, priorNotWeighed };
}

/** A candidate window's coarse fit (`chooseWindow`): the first strength's search from `SEARCH_START`. */
export interface CoarsePass {
  /** The likelihood at what the search found. */
  readonly ll: number;
  /** The value it found for the strength (beta), where the full fit's search goes on from. */
  readonly found: number;
}

/** A candidate window's coarse fit (`chooseWindow`), the first step of its full fit (`fittedStrengths`). */
export function coarsePassOf(likelihood: SliceLikelihood): CoarsePass {
  const search = new StrengthSearch(likelihood, likelihood.prior !== null);
  const ll = search.step();
  return { ll, found: search.found };
}

/**
 * Per-transition log-likelihood within which a window's coarse fit (`chooseWindow`) stays a candidate for the full
 * fit: wide enough that the strengths after beta, which favour no window length much, cannot reorder the windows
 * outside it.
 */
const CHOICE_MARGIN = 0.05;

/**
 * The likelihood of the window each log's last choice chose, for the fit that follows it (one per log, so a replay
 * sharing a log over hundreds of refreshes keeps one).
 */
const chosenLikelihoods = new WeakMap<EvidenceLog, SliceLikelihood>();

/** The slice's likelihood in `served`: the chosen window's own when the choice made it with this prior. */
function sliceLikelihood(log: EvidenceLog, slice: TimeWindow, served: TimeWindow, prior: LlmPrior | null): SliceLikelihood {
  const chosen = chosenLikelihoods.get(log);
  const same = (a: TimeWindow, b: TimeWindow) => a.from === b.from && a.to === b.to;
  if (chosen && chosen.prior === prior && same(chosen.slice, slice) && same(chosen.start.served, served)) return chosen;
  const observations = SliceObservations.of(log, slice, prior);
  return new SliceLikelihood(observations, sliceStart(log, observations, served));
}

/** The fitted posterior at `asOf` and the evidence it serves with ([asOf - W, asOf)). */
export interface FusionRefresh {
  readonly fit: FusionFit;
  readonly params: FusionParams;
  readonly evidence: WindowCounts;
}

export async function fitFusion(input: FitFusionInput): Promise<FusionRefresh> {
  const o = resolveFusionOptions(input.options);
  const choice = input.windowChoice ?? (await chooseWindow(input.log, input.asOf, o, input.prior, input.thread ?? null));
  // The slice is scored inside the evidence the table serves with (each transition on what came before it).
  const fitEvidence = { from: Math.max(input.asOf - choice.windowDays * DAY_MS, input.log.span.from), to: input.asOf };
  const evidence = input.log.counts(fitEvidence);
  const base = {
    slice: choice.slice,
    fitEvidence,
    sliceTransitions: choice.sliceTransitions,
    windowDays: choice.windowDays,
    windows: choice.windows,
    priorClusters: input.prior ? priorClusters(input.prior) : null,
  };
  if (choice.sliceTransitions < o.fitFloor) {
    // A prior that could not be weighed serves with weight 0 here too; one whose data end is unknown, with the default.
    const params = input.prior && choice.priorNotWeighed === null ? DEFAULT_FUSION_PARAMS : { ...DEFAULT_FUSION_PARAMS, tau: 0, lift: 0 };
    const reason = [`only ${choice.sliceTransitions} transitions in ${days(choice.slice)} days before the refresh (fitFloor ${o.fitFloor}): default strengths`, choice.priorNotWeighed].filter((r) => r !== null).join("; ");
    return {
      params,
      evidence,
      fit: { ...base, params, status: "default", reason, priorWeighed: input.prior ? false : null, logLikelihood: Number.NaN, perTransition: Number.NaN, countsOnlyPerTransition: null },
    };
  }
  // A prior that cannot be weighed yet is fitted as absent (tau = 0): the counts-backoff posterior serves.
  const prior = choice.priorNotWeighed === null ? input.prior : null;
  const likelihood = sliceLikelihood(input.log, choice.slice, evidence.window, prior);
  const { countsOnly, chosen } = await fittedStrengths(likelihood, null, input.thread ?? null);
  return {
    params: chosen.params,
    evidence,
    fit: {
      ...base,
      params: chosen.params,
      status: "fitted",
      reason: input.prior ? choice.priorNotWeighed : null,
      priorWeighed: input.prior ? prior !== null : null,
      logLikelihood: chosen.ll,
      perTransition: chosen.ll / likelihood.transitions,
      countsOnlyPerTransition: prior ? countsOnly.ll / likelihood.transitions : null,
    },
  };
}

function days(w: TimeWindow): number {
  return Math.round(((w.to - w.from) / DAY_MS) * 100) / 100;
}

/** Why a row says what it says: the weights and the counts behind each answer. */
export type RowExplanation = {
  /** Distinct users of the pair in the evidence window, and of its second cluster. */
  readonly pairUsers: number;
  readonly secondUsers: number;
  /** Share of the posterior from the pair's own evidence (U / (U + alpha)); the rest is the base measure. */
  readonly evidenceWeight: number;
  readonly answers: readonly {
    readonly cluster: string;
    readonly posterior: number;
    readonly pairUsers: number;
    readonly secondUsers: number;
    /** The LLM prior's probability (null without a prior, or for a cluster the model does not know). */
    readonly llmPrior: number | null;
    /** The base measure (second-cluster backoff x LLM prior). */
    readonly base: number;
  }[];
};

/**
 * What a fusion row stores to explain itself (compact: a 300-cluster table has 89,700 rows): the pair's users, its
 * second cluster's users, the evidence weight, and per answer, in the row's answer order, [pair users,
 * second-cluster users, LLM prior or null, base measure]. `explanationOf` turns it back into a `RowExplanation`.
 */
export type StoredExplanation = {
  readonly u: number;
  readonly s: number;
  readonly w: number;
  readonly a: readonly (readonly [number, number, number | null, number])[];
};

/** A stored row's explanation, or null for a row that has none (a prompted table's). */
export function explanationOf(row: { readonly answers: readonly ScoredCluster[]; readonly explanation?: unknown }): RowExplanation | null {
  // Bytes since the explanations were encoded; tables written before hold the JSON object form.
  const e = row.explanation instanceof Uint8Array ? decodeExplanation(row.explanation) : (row.explanation as StoredExplanation | null | undefined);
  if (!e || !Array.isArray(e.a)) return null;
  return {
    pairUsers: e.u,
    secondUsers: e.s,
    evidenceWeight: e.w,
    answers: row.answers.map((answer, k) => ({
      cluster: answer.cluster,
      posterior: answer.score,
      pairUsers: e.a[k]?.[0] ?? 0,
      secondUsers: e.a[k]?.[1] ?? 0,
      llmPrior: e.a[k]?.[2] ?? null,
      base: e.a[k]?.[3] ?? 0,
    })),
  };
}

/**
 * What the rows of a fitted posterior are computed from, as plain typed arrays (a second thread receives them as
 * they are): the evidence window's counts with each pair's evidence in one column (pair p's successors at
 * [pairStart[p], pairStart[p + 1])), the prior with its logs and second-cluster marginal, and the strengths.
 */
export interface FusionRowsInput {
  readonly clusters: readonly string[];
  readonly transitions: number;
  readonly second: Float64Array;
  readonly secondTotal: Float64Array;
  readonly popularity: Float64Array;
  readonly pairStart: Int32Array;
  readonly pairNext: Int32Array;
  readonly pairUsers: Float64Array;
  /** Users of each pair (0 for a pair without evidence). */
  readonly pairTotal: Float64Array;
  readonly prior: LlmPrior | null;
  /** `priorLogs` and `priorLogMarginal` of the prior (null without one). */
  readonly priorLogs: { readonly probability: Float64Array; readonly rest: Float64Array } | null;
  readonly priorLogMarginal: Float64Array | null;
  readonly params: FusionParams;
}

/** The `FusionRowsInput` of an evidence window, a prior and strengths. */
export function fusionRowsInput(evidence: WindowCounts, prior: LlmPrior | null, params: FusionParams): FusionRowsInput {
  const K = evidence.clusters.length;
  const pairStart = new Int32Array(K * K + 1);
  let entries = 0;
  for (const own of evidence.pairs.values()) entries += own.next.length;
  const pairNext = new Int32Array(entries);
  const pairUsers = new Float64Array(entries);
  const pairTotal = new Float64Array(K * K);
  for (const [p, own] of evidence.pairs) pairStart[p + 1] = own.next.length;
  for (let p = 0; p < K * K; p++) pairStart[p + 1] += pairStart[p];
  for (const [p, own] of evidence.pairs) {
    pairNext.set(own.next, pairStart[p]);
    pairUsers.set(own.users, pairStart[p]);
    pairTotal[p] = own.total;
  }
  const { clusters, transitions, second, secondTotal, popularity } = evidence;
  return {
    clusters,
    transitions,
    second,
    secondTotal,
    popularity,
    pairStart,
    pairNext,
    pairUsers,
    pairTotal,
    prior,
    priorLogs: prior ? priorLogs(prior) : null,
    priorLogMarginal: prior ? priorLogMarginal(prior) : null,
    params,
  };
}

/**
 * A table scorer over a fitted posterior: the build path of every other table (publish, abort, failure marking)
 * with answers computed, not prompted. `score` keeps each row's explanation for the build to store; `explain`
 * gives one row's explanation in full; `scorePacked` gives rows in their stored form, computed on both threads when
 * there is a second (`FusionThread`), so a build writes a batch while the next is computed.
 */
export class FusionScorer implements PromptScorer {
  readonly promptsPerCall = 4096;
  private readonly input: FusionRowsInput;
  private readonly index: Map<string, number>;
  private readonly chunk: number;
  private local: FusionRows | null = null;
  /** The rows' handle on the second thread and their setup (`FusionThread.beginRows`). */
  private remote: { readonly rows: number; readonly ready: Promise<void> } | null = null;
  /**
   * The last `score` call's explanations, encoded (`encodeExplanation`): one buffer of `size` bytes a row, each row's
   * pair (c1 * K + c2) and how many answers it has; `rowOfPair` finds a pair's row (-1 for a pair it did not score).
   */
  private explained: { readonly bytes: Buffer; readonly size: number; readonly pairs: Int32Array; readonly answered: Int32Array } | null = null;
  private rowOfPair: Int32Array | null = null;

  /**
   * @param chunk pairs a thread takes at a time of a batch `scorePacked` shares with the second thread: small enough
   *   that neither waits long for the other at a batch's end, large enough that taking one costs nothing.
   */
  constructor(
    private readonly evidence: WindowCounts,
    prior: LlmPrior | null,
    params: FusionParams,
    private readonly thread: FusionThread | null = null,
    chunk = 256,
  ) {
    if (!(Number.isInteger(chunk) && chunk >= 1)) throw new FreshrecError("INTERNAL", `fusion: a chunk of ${chunk} pairs (a whole number from 1)`);
    this.chunk = chunk;
    this.index = new Map(evidence.clusters.map((c, i) => [c, i]));
    if (prior && (prior.clusters.length !== evidence.clusters.length || prior.clusters.some((c, i) => c !== evidence.clusters[i]))) {
      throw new FreshrecError("INTERNAL", "fusion: the prior and the evidence index different cluster lists");
    }
    this.input = fusionRowsInput(evidence, prior, params);
    // The second thread sets up the rows while the build plans its batches; a failure surfaces at the first batch.
    if (thread) {
      this.remote = thread.beginRows(this.input);
      this.remote.ready.catch(() => undefined);
    }
  }

  /** The rows computed on this thread. */
  private get rows(): FusionRows {
    return (this.local ??= new FusionRows(this.input));
  }

  async score(prompts: readonly PromptInput[], topN: number): Promise<ScoredCluster[][]> {
    const rows = this.rows;
    const K = this.evidence.clusters.length;
    // One buffer for the call's explanations; each row's is a view of its part.
    const size = explanationBytes(Math.min(topN, K - 2));
    const bytes = Buffer.alloc(prompts.length * size);
    const words = new Words(bytes);
    const rowOfPair = (this.rowOfPair ??= new Int32Array(K * K).fill(-1));
    if (this.explained) for (const pair of this.explained.pairs) rowOfPair[pair] = -1;
    const pairs = new Int32Array(prompts.length);
    const answered = new Int32Array(prompts.length);
    const scored = prompts.map((p, k) => {
      const { c1, c2 } = p.history;
      const answers = this.answersOf(rows.row(this.indexOf(c1), this.indexOf(c2), topN, words, (k * size) >> 2));
      pairs[k] = this.indexOf(c1) * K + this.indexOf(c2);
      rowOfPair[pairs[k]] = k;
      answered[k] = answers.length;
      return answers;
    });
    words.toLittleEndian();
    this.explained = { bytes, size, pairs, answered };
    return scored;
  }

  /**
   * The rows of `prompts` straight into their stored form (`PackedBuildRows` without the context keys): at most `topN`
   * answers a row, as `score` ranks them, and each row's explanation as `storedExplanation` gives it, with no object
   * per row or answer (a table build's path). With a second thread both threads compute them (`FusionRows`, the same
   * code), in chunks of `chunk` pairs taken from one counter: the second thread from the start, this one a chunk per
   * turn of the event loop from the next turn on, so the caller may ask for the next batch and write this one meanwhile.
   */
  async scorePacked(prompts: readonly PromptInput[], topN: number): Promise<PackedScores> {
    const c1 = new Int32Array(prompts.length);
    const c2 = new Int32Array(prompts.length);
    for (let k = 0; k < prompts.length; k++) {
      c1[k] = this.indexOf(prompts[k].history.c1);
      c2[k] = this.indexOf(prompts[k].history.c2);
    }
    if (!this.thread) return { ...this.rows.scorePairs(c1, c2, topN), clusters: this.evidence.clusters };
    if (!this.remote) throw new FreshrecError("INTERNAL", "fusion: rows asked for after their scorer was released");
    const { chunk } = this;
    const next = new Int32Array(new SharedArrayBuffer(4));
    // Sent before the first await: the thread starts on this batch while the build writes the last one.
    const theirs = this.thread.scoreRows({ rows: this.remote.rows, c1, c2, topN, chunk, next });
    theirs.catch(() => undefined);
    // A failed setup is the reason to report (the batch then fails for want of its rows).
    await this.remote.ready;
    const parts: RowsPart[] = new Array(Math.ceil(c1.length / chunk));
    // A turn of the event loop before each chunk: the caller writes the last batch first, and a store that writes
    // asynchronously (PostgreSQL) goes on writing it between chunks instead of after this thread's share.
    for (let k = -1; k < parts.length; k = Atomics.add(next, 0, 1)) {
      if (k >= 0) parts[k] = this.rows.scorePairs(c1.subarray(k * chunk, (k + 1) * chunk), c2.subarray(k * chunk, (k + 1) * chunk), topN);
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    for (const [k, part] of await theirs) parts[k] = part;
    return { ...joinedRows(parts), count: c1.length, c1, c2, clusters: this.evidence.clusters };
  }

  /** Lets the second thread forget this posterior's rows (a build calls it when it is done, failed or not). */
  async release(): Promise<void> {
    const remote = this.remote;
    this.remote = null;
    if (remote && (await remote.ready.then(() => true, () => false))) await this.thread!.endRows(remote.rows);
  }

  explain(prompt: PromptInput, topN: number): RowExplanation {
    const { c1, c2 } = prompt.history;
    const bytes = Buffer.alloc(explanationBytes(Math.min(topN, this.evidence.clusters.length - 2)));
    const words = new Words(bytes);
    const answers = this.answersOf(this.rows.row(this.indexOf(c1), this.indexOf(c2), topN, words, 0));
    words.toLittleEndian();
    return explanationOf({ answers, explanation: bytes.subarray(0, explanationBytes(answers.length)) })!;
  }

  /** The first `kept` answers of the row ranked last, as objects. */
  private answersOf(kept: number): ScoredCluster[] {
    const answers: ScoredCluster[] = new Array(kept);
    const { topCluster, topValue } = this.rows;
    for (let k = 0; k < kept; k++) answers[k] = { cluster: this.evidence.clusters[topCluster[k]], score: topValue[k] };
    return answers;
  }

  /**
   * `explain`'s stored form for a prompt scored by the last `score` call, for its first `answers` answers (what a
   * table build keeps and writes), encoded as `encodeExplanation` does.
   */
  storedExplanation(prompt: PromptInput, answers: number): Uint8Array | undefined {
    const last = this.explained;
    const i1 = this.index.get(prompt.history.c1);
    const i2 = this.index.get(prompt.history.c2);
    const k = last && i1 !== undefined && i2 !== undefined ? this.rowOfPair![i1 * this.evidence.clusters.length + i2] : -1;
    if (k < 0) return undefined;
    return last!.bytes.subarray(k * last!.size, k * last!.size + explanationBytes(Math.min(answers, last!.answered[k])));
  }

  private indexOf(cluster: string): number {
    const i = this.index.get(cluster);
    if (i === undefined) throw new FreshrecError("BAD_INPUT", `fusion: cluster ${JSON.stringify(cluster)} is not in the table's vocabulary`);
    return i;
  }
}

/**
 * The rows of a fitted posterior (`FusionRowsInput`), on whichever thread holds them.
 *
 * A table has a row for every pair, so the second-cluster backoff's powers q2(n | c2)^gamma are computed once per
 * second cluster, with the prior's marginal weights (marginal^(-lift * tau), module comment) on the known clusters;
 * a row is then sums and products over them (the module comment's base measure in linear form, the prior's
 * probabilities applied to its top-M answers only).
 */
export class FusionRows {
  private readonly K: number;
  private readonly params: FusionParams;
  private readonly prior: LlmPrior | null;
  /** q2(n | c2)^gamma at [c2 * K + n]. */
  private readonly powered: Float64Array;
  /**
   * The same times the prior's marginal weight, marginal(n | c2)^(-lift * tau), for the clusters the prior knows (the
   * powered backoff elsewhere, and everywhere without prior weights).
   */
  private readonly lifted: Float64Array;
  private readonly users: Float64Array;
  /** The prior's weight of a top-M answer relative to its rest (1 elsewhere), for the row being computed. */
  private readonly boost: Float64Array;
  /** The prior's probability of each of the row's top-M answers (NaN elsewhere: the pair's rest). */
  private readonly answerPrior: Float64Array;
  /** The prior's known-cluster mask, all ones without one (one code path for both). */
  private readonly known: Uint8Array;
  /** The last row's answers, best first (`row`). */
  readonly topCluster: Int32Array;
  readonly topValue: Float64Array;
  private readonly topBase: Float64Array;
  /** Per second cluster: the sum of its powered row, over every cluster and over the known ones, and of its lifted row over the known ones. */
  private readonly rowTotal: Float64Array;
  private readonly rowKnown: Float64Array;
  private readonly rowKnownLifted: Float64Array;
  /**
   * Per second cluster: the clusters by lifted backoff, highest first (ties by index). Outside a pair's own
   * evidence and the prior's boosted answers, a cluster's posterior is its lifted backoff times one scale per
   * class (known or not), so a row's top-n lies among those and the first n of each class in this order.
   */
  private readonly order: Int32Array;
  /** The row being computed: its candidate clusters, which are in, and the prior's answers it boosts. */
  private readonly candidates: Int32Array;
  private readonly candidate: Uint8Array;
  private readonly boosted: Int32Array;
  /** The evidence of each pair, in one column (`FusionRowsInput`). */
  private readonly pairStart: Int32Array;
  private readonly pairNext: Int32Array;
  private readonly pairUsers: Float64Array;
  private readonly pairTotal: Float64Array;
  private readonly second: Float64Array;
  private readonly secondTotal: Float64Array;
  /** The prior's logs (`priorLogs`), when it weighs (tau > 0). */
  private readonly logs: FusionRowsInput["priorLogs"];

  constructor(input: FusionRowsInput) {
    const { prior, params } = input;
    const K = (this.K = input.clusters.length);
    this.params = params;
    this.prior = prior;
    ({ pairStart: this.pairStart, pairNext: this.pairNext, pairUsers: this.pairUsers, pairTotal: this.pairTotal, second: this.second, secondTotal: this.secondTotal } = input);
    const logQ2 = logSecondRowsOf(input.second, input.secondTotal, logPopularityOf(input.popularity, input.transitions), params.beta);
    this.powered = new Float64Array(K * K);
    for (let k = 0; k < K * K; k++) this.powered[k] = Math.exp(params.gamma * logQ2[k]);
    this.known = prior?.known ?? new Uint8Array(K).fill(1);
    this.logs = prior && params.tau > 0 ? input.priorLogs : null;
    this.lifted = Float64Array.from(this.powered);
    const marginalPower = -(params.lift ?? 0) * params.tau;
    if (prior && marginalPower !== 0) {
      const logMarginal = input.priorLogMarginal!;
      for (let k = 0; k < K * K; k++) if (this.known[k % K]) this.lifted[k] *= Math.exp(marginalPower * logMarginal[k]);
    }
    this.users = new Float64Array(K);
    this.boost = new Float64Array(K).fill(1);
    this.answerPrior = new Float64Array(K).fill(Number.NaN);
    this.topCluster = new Int32Array(K);
    this.topValue = new Float64Array(K);
    this.topBase = new Float64Array(K);
    this.rowTotal = new Float64Array(K);
    this.rowKnown = new Float64Array(K);
    this.rowKnownLifted = new Float64Array(K);
    this.order = new Int32Array(K * K);
    const byIndex = Array.from({ length: K }, (_, n) => n);
    for (let c2 = 0; c2 < K; c2++) {
      const row = c2 * K;
      for (let n = 0; n < K; n++) {
        this.rowTotal[c2] += this.powered[row + n];
        if (this.known[n]) {
          this.rowKnown[c2] += this.powered[row + n];
          this.rowKnownLifted[c2] += this.lifted[row + n];
        }
      }
      this.order.set(byIndex.sort((a, b) => this.lifted[row + b] - this.lifted[row + a] || a - b), row);
    }
    this.candidates = new Int32Array(K);
    this.candidate = new Uint8Array(K);
    this.boosted = new Int32Array(K);
  }

  /** The rows of the pairs (c1[k], c2[k]) in their stored form (`FusionScorer.scorePacked`) but for the cluster list. */
  scorePairs(c1: Int32Array, c2: Int32Array, topN: number): Omit<PackedScores, "clusters"> {
    const count = c1.length;
    const width = Math.max(0, Math.min(topN, this.K - 2));
    const answers = Buffer.alloc(count * width * ANSWER_BYTES);
    const explanation = Buffer.alloc(count * explanationBytes(width));
    const answerWords = new Words(answers);
    const explanationWords = new Words(explanation);
    const answerEnd = new Int32Array(count);
    const explanationEnd = new Int32Array(count);
    const { topCluster, topValue } = this;
    let answerAt = 0;
    let explanationAt = 0;
    for (let k = 0; k < count; k++) {
      const kept = this.row(c1[k], c2[k], width, explanationWords, explanationAt >> 2);
      for (let j = 0, word = answerAt >> 2; j < kept; j++, answerAt += ANSWER_BYTES, word += 2) {
        answerWords.i32[word] = topCluster[j];
        answerWords.f32[word + 1] = topValue[j];
      }
      answerEnd[k] = answerAt;
      explanationEnd[k] = explanationAt += explanationBytes(kept);
    }
    answerWords.toLittleEndian();
    explanationWords.toLittleEndian();
    return { count, c1, c2, answers, answerEnd, explanation, explanationEnd };
  }

  /**
   * Ranks the row of (i1, i2): its top-n answers, best first, into `topCluster` and `topValue` (how many: returned);
   * its explanation is encoded into `out` from word `at` on (`encodeExplanation`'s layout).
   */
  row(i1: number, i2: number, topN: number, out: Words, at: number): number {
    const K = this.K;
    const { alpha, tau } = this.params;
    const prior = tau > 0 ? this.prior : null;
    // Without prior weights every cluster is treated alike (the known mask only matters to the prior).
    const known = this.known;
    const scoped = prior !== null && prior.known !== undefined;
    const { powered, lifted } = this;
    const row = i2 * K;
    const p = i1 * K + i2;
    // The backoff's normaliser over the novel clusters, and the part of it on clusters the prior knows.
    const backoffZ = this.rowTotal[i2] - powered[row + i1] - powered[row + i2];
    const knownSum = this.rowKnown[i2] - (known[i1] ? powered[row + i1] : 0) - (known[i2] ? powered[row + i2] : 0);
    // Base measure: e / backoffZ for a cluster the prior does not know; for a known one, its share of knownSum
    // reweighted by the prior (rest^tau, or p^tau on the pair's top-M answers, times marginal^(-lift * tau)).
    let knownScale = 1 / backoffZ;
    const { boost, answerPrior, boosted } = this;
    let boostedCount = 0;
    if (this.prior) {
      // The prior's probabilities of the pair's top-M answers, for the explanation (first answer of a cluster wins),
      // and with prior weights the reweighting of the known clusters (rest^tau, or p^tau on the pair's top-M
      // answers, times marginal^(-lift * tau)); a repeated answer weighs each time, its last weight boosts it.
      const { answer, probability, topM } = this.prior;
      const logs = prior ? this.logs : null;
      const restWeight = logs ? Math.exp(tau * logs.rest[p]) : 1;
      let knownZ = logs ? (this.rowKnownLifted[i2] - (known[i1] ? lifted[row + i1] : 0) - (known[i2] ? lifted[row + i2] : 0)) * restWeight : 0;
      for (let k = p * topM, end = k + topM; k < end; k++) {
        const n = answer[k];
        if (n < 0) break;
        if (Number.isNaN(answerPrior[n])) {
          answerPrior[n] = probability[k];
          boosted[boostedCount++] = n;
        }
        if (!logs || !known[n]) continue;
        const weight = Math.exp(tau * logs.probability[k]);
        knownZ += lifted[row + n] * (weight - restWeight);
        boost[n] = weight / restWeight;
      }
      if (logs) knownScale = (knownSum * restWeight) / (backoffZ * knownZ);
    }
    const unknownScale = 1 / backoffZ;
    const { pairNext, pairUsers } = this;
    const ownFrom = this.pairStart[p];
    const ownTo = this.pairStart[p + 1];
    const users = this.users;
    for (let k = ownFrom; k < ownTo; k++) users[pairNext[k]] = pairUsers[k];
    const total = this.pairTotal[p];
    const denominator = total + alpha;
    // The candidates (`order`): the pair's evidence, the prior's boosted answers, then the first n of each class.
    const { candidates, candidate, order } = this;
    candidate[i1] = candidate[i2] = 1;
    let count = 0;
    for (let k = ownFrom; k < ownTo; k++) {
      const n = pairNext[k];
      if (!candidate[n]) candidates[count++] = n;
      candidate[n] = 1;
    }
    if (prior) {
      for (let k = 0; k < boostedCount; k++) {
        const n = boosted[k];
        if (!candidate[n] && known[n]) {
          candidates[count++] = n;
          candidate[n] = 1;
        }
      }
    }
    let knownLeft = topN;
    let unknownLeft = scoped ? topN : 0;
    for (let k = row, end = row + K; k < end && knownLeft + unknownLeft > 0; k++) {
      const n = order[k];
      if (candidate[n]) continue;
      if (!scoped || known[n]) {
        if (knownLeft === 0) continue;
        knownLeft--;
      } else {
        if (unknownLeft === 0) continue;
        unknownLeft--;
      }
      candidates[count++] = n;
      candidate[n] = 1;
    }
    candidate[i1] = candidate[i2] = 0;
    // Top-n by insertion into a short sorted list; equal posteriors (clusters nothing has ever been seen for,
    // without a prior) in cluster order, as if every cluster were scored. Their explanations show the zero counts.
    const { topCluster, topValue, topBase } = this;
    let kept = 0;
    for (let c = 0; c < count; c++) {
      const n = candidates[c];
      candidate[n] = 0;
      const base = known[n] || !scoped ? lifted[row + n] * knownScale * boost[n] : powered[row + n] * unknownScale;
      const value = (users[n] + alpha * base) / denominator;
      if (kept === topN && !ranksBefore(value, n, topValue[topN - 1], topCluster[topN - 1])) continue;
      let at = kept < topN ? kept++ : topN - 1;
      while (at > 0 && ranksBefore(value, n, topValue[at - 1], topCluster[at - 1])) {
        topCluster[at] = topCluster[at - 1];
        topValue[at] = topValue[at - 1];
        topBase[at] = topBase[at - 1];
        at--;
      }
      topCluster[at] = n;
      topValue[at] = value;
      topBase[at] = base;
    }
    writeExplanationHead(out, at, total, this.secondTotal[i2], fourDigits(total / denominator));
    for (let k = 0; k < kept; k++) {
      const n = topCluster[k];
      const llm = this.prior && known[n] ? fourDigits(Number.isNaN(answerPrior[n]) ? this.prior.rest[p] : answerPrior[n]) : null;
      writeExplanationAnswer(out, at, k, users[n], this.second[row + n], llm, fourDigits(topBase[k]));
    }
    for (let k = ownFrom; k < ownTo; k++) users[pairNext[k]] = 0;
    for (let k = 0; k < boostedCount; k++) {
      boost[boosted[k]] = 1;
      answerPrior[boosted[k]] = Number.NaN;
    }
    return kept;
  }
}

/** `FusionScorer.scorePacked`'s rows: `PackedBuildRows` of src/tables/contract.ts but for the context keys. */
export type PackedScores = Omit<PackedBuildRows, "contextKeys">;

/** The rows of consecutive chunks of a batch (`FusionScorer.scorePacked`) as one: their bytes end to end, their ends shifted. */
export function joinedRows(parts: readonly RowsPart[]): RowsPart {
  if (parts.length === 1) return parts[0];
  const count = parts.reduce((sum, p) => sum + p.count, 0);
  const answerEnd = new Int32Array(count);
  const explanationEnd = new Int32Array(count);
  const answers: Uint8Array[] = [];
  const explanation: Uint8Array[] = [];
  let row = 0;
  let answerAt = 0;
  let explanationAt = 0;
  for (const p of parts) {
    for (let k = 0; k < p.count; k++, row++) {
      answerEnd[row] = answerAt + p.answerEnd[k];
      explanationEnd[row] = explanationAt + p.explanationEnd[k];
    }
    const [answersUsed, explanationUsed] = p.count ? [p.answerEnd[p.count - 1], p.explanationEnd[p.count - 1]] : [0, 0];
    answers.push(p.answers.subarray(0, answersUsed));
    explanation.push(p.explanation.subarray(0, explanationUsed));
    answerAt += answersUsed;
    explanationAt += explanationUsed;
  }
  return { count, answers: Buffer.concat(answers, answerAt), answerEnd, explanation: Buffer.concat(explanation, explanationAt), explanationEnd };
}

/** Whether a posterior `value` of cluster `n` ranks before `other` of cluster `m`: higher first, ties by index. */
function ranksBefore(value: number, n: number, other: number, m: number): boolean {
  return value > other || (value === other && n < m);
}

/** Layout version of an encoded explanation (its first word). */
const EXPLANATION_FORMAT = 1;
const EXPLANATION_HEAD = 16;
const EXPLANATION_ANSWER = 16;

/** Bytes of an encoded explanation of `answers` answers. */
function explanationBytes(answers: number): number {
  return EXPLANATION_HEAD + answers * EXPLANATION_ANSWER;
}

/** An explanation's head at word `at` of `out`. */
function writeExplanationHead(out: Words, at: number, pairUsers: number, secondUsers: number, evidenceWeight: number): void {
  out.u32[at] = EXPLANATION_FORMAT;
  out.u32[at + 1] = pairUsers;
  out.u32[at + 2] = secondUsers;
  out.f32[at + 3] = evidenceWeight;
}

/** Answer `k` of the explanation at word `at` of `out`. */
function writeExplanationAnswer(out: Words, at: number, k: number, pairUsers: number, secondUsers: number, llmPrior: number | null, base: number): void {
  const o = at + (EXPLANATION_HEAD + k * EXPLANATION_ANSWER) / 4;
  out.u32[o] = pairUsers;
  out.u32[o + 1] = secondUsers;
  out.f32[o + 2] = llmPrior ?? Number.NaN;
  out.f32[o + 3] = base;
}

/**
 * A stored explanation as bytes (a fusion table stores one per row, so it is compact and cheap to write):
 * little-endian uint32 format, uint32 pair users, uint32 second-cluster users, float32 evidence weight, then per
 * answer uint32 pair users, uint32 second-cluster users, float32 LLM prior (NaN for none) and float32 base measure.
 * The rounded values (four significant digits) survive float32 exactly once rounded again, which
 * `decodeExplanation` does.
 */
export function encodeExplanation(e: StoredExplanation, answers = e.a.length): Buffer {
  const n = Math.min(answers, e.a.length);
  const out = Buffer.alloc(explanationBytes(n));
  const words = new Words(out);
  writeExplanationHead(words, 0, e.u, e.s, e.w);
  for (let k = 0; k < n; k++) writeExplanationAnswer(words, 0, k, ...e.a[k]);
  words.toLittleEndian();
  return out;
}

/** The explanation `encodeExplanation` wrote. */
export function decodeExplanation(bytes: Uint8Array): StoredExplanation {
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length < EXPLANATION_HEAD || b.readUInt32LE(0) !== EXPLANATION_FORMAT || (b.length - EXPLANATION_HEAD) % EXPLANATION_ANSWER !== 0) {
    throw new FreshrecError("INTERNAL", `fusion: a stored explanation of ${b.length} bytes in an unknown format`);
  }
  const a: (readonly [number, number, number | null, number])[] = [];
  for (let at = EXPLANATION_HEAD; at < b.length; at += EXPLANATION_ANSWER) {
    const llmPrior = b.readFloatLE(at + 8);
    a.push([b.readUInt32LE(at), b.readUInt32LE(at + 4), Number.isNaN(llmPrior) ? null : fourDigits(llmPrior), fourDigits(b.readFloatLE(at + 12))]);
  }
  return { u: b.readUInt32LE(4), s: b.readUInt32LE(8), w: fourDigits(b.readFloatLE(12)), a };
}

/** Four significant digits: what an explanation needs, at a fraction of the stored size of full doubles. */
export function fourDigits(x: number): number {
  // Number(x.toPrecision(4)) without the string when the digits are clear: m / 10^k is the correctly rounded
  // double of the decimal m * 10^-k, as the string's parse is; a product within 1e-6 of a half goes the slow way.
  // The decimal exponent comes from comparisons with the powers of ten (a row rounds some twenty numbers, and a
  // logarithm costs more than the rest of the rounding); next to a power of ten, where it could differ from the
  // exact one by one, both give m / 10^k equal to that power.
  if (x > 0 && x < 1e15) {
    let e = 0;
    if (x < 1) {
      e = -1;
      while (e > -EXPONENT_FLOOR && x < TENTHS[-e]) e--;
    } else {
      while (x >= POWERS_OF_TEN[e + 1]) e++;
    }
    const k = 3 - e;
    if (k >= 0 && k <= 22) {
      const scaled = x * POWERS_OF_TEN[k];
      const m = Math.round(scaled);
      if (Math.abs(Math.abs(scaled - Math.floor(scaled)) - 0.5) > 1e-6 && m >= 1000 && m <= 10000) return m / POWERS_OF_TEN[k];
    }
  }
  return Number(x.toPrecision(4));
}

const POWERS_OF_TEN = Array.from({ length: 23 }, (_, k) => Number(`1e${k}`));
/** TENTHS[j] = 10^-j (as its double) down to 10^-EXPONENT_FLOOR; a number below goes the slow way (k > 22). */
const EXPONENT_FLOOR = 20;
const TENTHS = Array.from({ length: EXPONENT_FLOOR + 1 }, (_, j) => Number(`1e-${j}`));

/**
 * The logs of a prior's probabilities (floored at 1e-12, at the index of each answer) and of its rests (a zero rest
 * read as 1e-12), as the fit and the rows weigh them (p^tau as exp(tau * log p)); computed once per prior (keyed by
 * its probabilities, which its scoped copies share), so a refresh while the model is unchanged takes no log of them.
 * They hold a double per answer: as much memory again as the prior's answers and probabilities together.
 */
export function priorLogs(prior: LlmPrior): { readonly probability: Float64Array; readonly rest: Float64Array } {
  const cached = priorLogCache.get(prior.probability);
  if (cached) return cached;
  const { answer } = prior;
  const probability = new Float64Array(sharedBytes(prior.probability.length * 8));
  const given = prior.probability;
  for (let k = 0; k < probability.length; k++) if (answer[k] >= 0) probability[k] = Math.log(Math.max(given[k], 1e-12));
  const rest = new Float64Array(sharedBytes(prior.rest.length * 8));
  for (let p = 0; p < rest.length; p++) rest[p] = Math.log(prior.rest[p] || 1e-12);
  const logs = { probability, rest };
  priorLogCache.set(prior.probability, logs);
  return logs;
}

const priorLogCache = new WeakMap<Float32Array, { readonly probability: Float64Array; readonly rest: Float64Array }>();

/** `priorLogMarginal`'s results, per prior (keyed by its probabilities, which its scoped copies share). */
const logMarginals = new WeakMap<Float32Array, Float64Array>();

/**
 * log of the prior's successors of the second cluster alone, the mean over c1 not in {c2, n} of llm(n | c1, c2),
 * at [c2 * K + n] (the module comment's lift divides by it); computed once per prior. The first of a pair's
 * answers naming a cluster counts, as everywhere the prior is read.
 */
export function priorLogMarginal(prior: LlmPrior): Float64Array {
  const cached = logMarginals.get(prior.probability);
  if (cached) return cached;
  const K = prior.clusters.length;
  const { topM } = prior;
  // Every pair's rest goes to its whole second-cluster row at once, taken back where n is the pair's own c1 or
  // replaced by the answer's probability on its top-M answers.
  const sum = new Float64Array(K * K);
  const rowRest = new Float64Array(K);
  const seen = new Uint8Array(K);
  for (let c1 = 0; c1 < K; c1++) {
    for (let c2 = 0; c2 < K; c2++) {
      if (c1 === c2) continue;
      const p = c1 * K + c2;
      const rest = prior.rest[p];
      rowRest[c2] += rest;
      sum[c2 * K + c1] -= rest;
      const answers = p * topM;
      for (let k = 0; k < topM; k++) {
        const n = prior.answer[answers + k];
        if (n < 0) break;
        if (n === c1 || n === c2 || seen[n]) continue;
        seen[n] = 1;
        sum[c2 * K + n] += prior.probability[answers + k] - rest;
      }
      for (let k = 0; k < topM && prior.answer[answers + k] >= 0; k++) seen[prior.answer[answers + k]] = 0;
    }
  }
  const out = new Float64Array(sharedBytes(K * K * 8));
  for (let c2 = 0; c2 < K; c2++) {
    for (let n = 0; n < K; n++) out[c2 * K + n] = n === c2 ? 0 : Math.log(Math.max((sum[c2 * K + n] + rowRest[c2]) / Math.max(K - 2, 1), 1e-12));
  }
  logMarginals.set(prior.probability, out);
  return out;
}

function priorProbability(prior: LlmPrior, p: number, n: number): number {
  for (let k = 0; k < prior.topM; k++) {
    const a = prior.answer[p * prior.topM + k];
    if (a < 0) break;
    if (a === n) return prior.probability[p * prior.topM + k];
  }
  return prior.rest[p];
}

/**
 * Evidence logs and window choices shared by every fusion refresh over one unchanging store (a replay): the log of
 * the whole replay span is read once, and strategies refreshing at the same instant with the same prior (or none)
 * share the window choice. Each refresh still reads only windows before its own as-of time. In production
 * (`cover` absent) every refresh reads its own log, so events ingested since the last refresh count.
 */
export class EvidenceCache {
  private readonly logs = new Map<string, Promise<EvidenceLog>>();
  private readonly choices = new Map<string, Promise<WindowChoice>>();
  private readonly firsts = new Map<string, Promise<Map<string, number>>>();

  /** `cover`: the as-of times to expect (a replay's window); the log then spans it once. */
  constructor(private readonly cover: TimeWindow | null = null) {}

  log(asOf: number, read: (span: TimeWindow) => Promise<EvidenceLog>, spanDays: number, key: string): Promise<EvidenceLog> {
    const span =
      this.cover && asOf >= this.cover.from && asOf <= this.cover.to
        ? { from: this.cover.from - spanDays * DAY_MS, to: this.cover.to }
        : { from: asOf - spanDays * DAY_MS, to: asOf };
    return remembered(this.logs, `${key}|${span.from}|${span.to}`, () => read(span));
  }

  /**
   * Each cluster's first positive event (`firstSeen`), read once per cache and positive rule: a cache lives over
   * one unchanging store (a replay) or one refresh, never across ingests (a cluster launched later would be missed).
   */
  firstSeen(events: EventStoreContract, positiveMin: number | null, key: string): Promise<Map<string, number>> {
    return remembered(this.firsts, key, () => firstSeen(events, "cluster", { positiveMin }));
  }

  /** `priorKey` names the prior (its model version; "" for none): strategies with the same one share the choice. */
  windowChoice(log: EvidenceLog, asOf: number, options: FusionOptions, key: string, prior: LlmPrior | null, priorKey: string, thread: FusionThread | null = null): Promise<WindowChoice> {
    const id = `${key}|${priorKey}|${asOf}|${JSON.stringify(resolveFusionOptions(options))}`;
    let choice = this.choices.get(id);
    if (!choice) this.choices.set(id, (choice = chooseWindow(log, asOf, options, prior, thread)));
    return choice;
  }
}

const PRIOR_MAGIC = "freshrec-prior-1";

/**
 * Writes a prior next to its model (`<models>/<version>.prior`): a JSON header line (format, clusters, topM) and
 * the three arrays. Written to a temporary name and renamed, so a reader never sees half a file.
 */
export function savePrior(path: string, prior: LlmPrior, modelSha256: string): void {
  const header = Buffer.from(`${JSON.stringify({ format: PRIOR_MAGIC, model: modelSha256, clusters: prior.clusters, topM: prior.topM })}\n`);
  const body = [prior.answer, prior.probability, prior.rest].map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength));
  const partial = `${path}.partial`;
  writeFileSync(partial, Buffer.concat([header, ...body]));
  renameSync(partial, path);
}

interface PriorHeader {
  readonly format?: string;
  readonly model?: string;
  readonly clusters?: string[];
  readonly topM?: number;
}

/**
 * The header line of a prior file, the offset its body starts at and the file's size, read without the body
 * (megabytes at 300 clusters): what `priorFileReady` needs to answer a dry run. Null when there is no file.
 */
function readPriorHeader(path: string): { header: PriorHeader; bodyStart: number; size: number } | null {
  if (!existsSync(path)) return null;
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    const chunks: Buffer[] = [];
    for (let at = 0; at < size; ) {
      const chunk = Buffer.alloc(Math.min(1 << 16, size - at));
      const read = readSync(fd, chunk, 0, chunk.length, at);
      const newline = chunk.subarray(0, read).indexOf(10);
      chunks.push(chunk.subarray(0, newline < 0 ? read : newline));
      at += read;
      if (newline >= 0 || read === 0) break;
    }
    const line = Buffer.concat(chunks);
    try {
      return { header: JSON.parse(line.toString("utf8")) as PriorHeader, bodyStart: line.length + 1, size };
    } catch (error) {
      throw new FreshrecError("ENGINE", `prior file ${path} is corrupt (bad header): delete it to compute the prior again`, { cause: error });
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * The file's topM when its header is this model file's prior over these clusters (a version name reused by a new
 * registry, other clusters or another topM: null, computed again, never served as this model's); a matching file
 * of the wrong size is an error naming it.
 */
function matchingTopM(path: string, read: { header: PriorHeader; bodyStart: number; size: number }, clusters: readonly string[], topM: number, modelSha256: string): number | null {
  const { header } = read;
  const K = clusters.length;
  if (header.format !== PRIOR_MAGIC || header.model !== modelSha256 || header.topM !== effectiveTopM(topM, K) || JSON.stringify(header.clusters) !== JSON.stringify(clusters)) return null;
  if (read.size - read.bodyStart !== K * K * header.topM * 8 + K * K * 4) {
    throw new FreshrecError("ENGINE", `prior file ${path} is truncated: delete it to compute the prior again`);
  }
  return header.topM;
}

/** Whether a prior saved by `savePrior` for this model file, clusters and topM is there (reads its header only). */
export function priorFileReady(path: string, clusters: readonly string[], topM: number, modelSha256: string): boolean {
  const read = readPriorHeader(path);
  return read !== null && matchingTopM(path, read, clusters, topM, modelSha256) !== null;
}

/**
 * Reads a prior saved by `savePrior`; null when there is none or it was made for another model file, other
 * clusters or another topM (it is then computed again). A file that is there but unreadable is an error naming it.
 */
export function loadPrior(path: string, clusters: readonly string[], topM: number, modelSha256: string): LlmPrior | null {
  const read = readPriorHeader(path);
  if (read === null) return null;
  const kept = matchingTopM(path, read, clusters, topM, modelSha256);
  if (kept === null) return null;
  const K = clusters.length;
  const data = readFileSync(path);
  const sizes = [K * K * kept * 4, K * K * kept * 4, K * K * 4];
  // Copied out of the file buffer: typed arrays need aligned offsets.
  let at = read.bodyStart;
  const take = (bytes: number) => {
    const copy = new Uint8Array(sharedBytes(bytes));
    copy.set(data.subarray(at, at + bytes));
    at += bytes;
    return copy.buffer;
  };
  return derived({ clusters, topM: kept, answer: new Int32Array(take(sizes[0])), probability: new Float32Array(take(sizes[1])), rest: new Float32Array(take(sizes[2])) });
}
