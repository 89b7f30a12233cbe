/**
 * The synthetic short-video platform ("world model"): a taxonomy of interest clusters, items per cluster, and users
 * whose interests evolve under a drifting population transition kernel. It produces event logs in column batches
 * (fast: ~1 µs per event) and also works as a live environment in which a recommendation policy is exposed to
 * simulated users, who respond with the very same behaviour code.
 *
 * ## Latent-interest model
 *
 * Time is split into UTC calendar months m = 0, 1, ... from `start`. Each user u has:
 * - a *latent history* (h1, h2): the last two distinct clusters u engaged with positively (h2 most recent), which is
 *   also what the mining layer reconstructs from positive events, and u's *current* cluster (always h2);
 * - a set of *current interests*: up to 8 clusters in recency order; a newly liked cluster enters at the front and
 *   the least recent interest drops out, so interests evolve;
 * - a *latent taste* t_u(n) = exp(tasteStrength * z_u(n)) * (1.5 if n is in u's favourite domain), z_u(n) ~ N(0, 1)
 *   fixed per user and cluster;
 * - an *activity* level (log-normal, mean 1): sessions arrive as a Poisson process whose rate is
 *   activity * sessionsPerMonth, and a session holds 1 + Geometric(eventsPerSession - 1) events ~15-105 s apart.
 *
 * At each event of a session the user picks a cluster:
 * - *continue* the current cluster (probability `continueRate`, `resumeRate` for a session's first event), if the
 *   cluster exists this month;
 * - *return* to an old interest (`returnRate`): half the time the previous cluster h1 (ping-pong), otherwise an
 *   interest drawn with a preference for recent ones;
 * - otherwise *explore* a novel cluster n not in {h1, h2}, drawn with probability
 *   q_u(n) proportional to P_m(n | h1, h2) * t_u(n), where P_m is the population kernel of `SuccessorKernel`.
 *
 * An item of the cluster is drawn with a heavy-headed popularity (index ~ count * U^2.5), and the user engages:
 * positively with probability 0.82 for familiar clusters and `likeProbability(q)` for novel ones, where
 * s(q) = q / (q + 3/K) measures how well the cluster matches what the kernel and the user's taste predict for the
 * current history. Engagement is a watch fraction: positive values lie in [positiveThreshold, 1], negative ones
 * below (30% of them are immediate skips at 0). Only positive engagement moves the history and the interests.
 *
 * ## Live environment
 *
 * At the start of each session in the simulated window the policy is asked for a slate for the user's *observed*
 * history (null until the user has two distinct positive clusters in the log). For each slot (cluster c, items):
 * s = s(q_u(c)) for a novel c (0.5 for a cluster already in {h1, h2}); the user clicks with probability
 * 0.05 + 0.55 s; a click is *satisfied* with `likeProbability(q)` (the same function as organic exploration) and
 * *dissatisfied* otherwise; without a click the user reports a *negative interaction* with probability
 * 0.15 (1 - s), else ignores the slot. Clicks produce watch events; a satisfied click changes the user's history and
 * interests exactly like an organic positive event, and the session then continues from the new cluster. Responses
 * draw from a second per-user random stream, so organic behaviour is identical across policies until a response
 * changes a history (common random numbers for A/B arms).
 *
 * @example
 * const world = new SyntheticWorld({ ...SYNTHETIC_QUICK, seed: 7 });
 * await world.generate((batch) => store.append(batch));
 * world.topSuccessors(0, "baking", "coffee"); // true top-5 successors in month 0
 * const result = await world.simulateDays(Date.parse("2025-12-01"), 7, myPolicy);
 */
import { DAY_MS } from "../../domain/clock.js";
import { BadInputError } from "../../domain/errors.js";
import type { EngagementEvent, History, Item } from "../../domain/types.js";
import { KERNEL_EXTRA_MONTHS, SuccessorKernel, type KernelCalibration } from "./kernel.js";
import { hashString, mix32, SeededRandom } from "./random.js";
import { buildTaxonomy, itemTitle, SYNTHETIC_DOMAINS, type SyntheticCluster } from "./taxonomy.js";

/** Options of the synthetic platform. Mirrored in the config schema; `SYNTHETIC_DEFAULTS` holds the defaults. */
export interface SyntheticOptions {
  /** Seed of every random draw; the same seed gives the same world and the same events. @defaultValue 42 */
  seed: number;
  /** First day of month 0 (ISO date, UTC). @defaultValue "2025-01-01" */
  start: string;
  /** Calendar months of generated events. @defaultValue 12 */
  months: number;
  /** Simulated users. @defaultValue 20000 */
  users: number;
  /** Expected number of generated events (sets the session rate). @defaultValue 3000000 */
  targetEvents: number;
  /** Mean events per session. @defaultValue 5 */
  eventsPerSession: number;
  /** Clusters per domain (12 domains; 10 gives 120 clusters, 25 gives 300 with format variants). @defaultValue 10 */
  clustersPerDomain: number;
  /** Mean items per cluster; popular clusters get more (between a quarter and 4x of this). @defaultValue 80 */
  itemsPerCluster: number;
  /** Target month-over-month Jaccard of the true kernel's top-5 successors. @defaultValue 0.17 */
  targetJaccard: number;
  /** Engagement at or above this is positive; generated values straddle it. @defaultValue 0.5 */
  positiveThreshold: number;
  /** Probability of staying in the current cluster for an event inside a session. @defaultValue 0.62 */
  continueRate: number;
  /** Probability of resuming the current cluster at a session's first event. @defaultValue 0.45 */
  resumeRate: number;
  /** Probability of returning to an old interest (explore takes the rest). @defaultValue 0.12 */
  returnRate: number;
  /** Spread of the user's latent taste around the population kernel. @defaultValue 0.5 */
  tasteStrength: number;
  /** Events per batch handed to `generate`'s callback (batches can exceed it by one user's events). @defaultValue 1048576 */
  batchSize: number;
}

export const SYNTHETIC_DEFAULTS: Readonly<SyntheticOptions> = Object.freeze({
  seed: 42,
  start: "2025-01-01",
  months: 12,
  users: 20_000,
  targetEvents: 3_000_000,
  eventsPerSession: 5,
  clustersPerDomain: 10,
  itemsPerCluster: 80,
  targetJaccard: 0.17,
  positiveThreshold: 0.5,
  continueRate: 0.62,
  resumeRate: 0.45,
  returnRate: 0.12,
  tasteStrength: 0.5,
  batchSize: 1 << 20,
});

/** The `--quick` world: same dynamics, ~300k events. */
export const SYNTHETIC_QUICK: Readonly<SyntheticOptions> = Object.freeze({
  ...SYNTHETIC_DEFAULTS,
  users: 3_000,
  targetEvents: 300_000,
});

/**
 * A batch of generated events as columns. Arrays are fresh per batch (the receiver may keep them). Within a batch,
 * and across batches, events are grouped by user in increasing user index; each user's events are in strictly
 * increasing time. There is no global time order across users.
 */
export interface SyntheticEventBatch {
  readonly length: number;
  readonly userIndex: Int32Array;
  readonly itemIndex: Int32Array;
  /** Epoch milliseconds. */
  readonly ts: Float64Array;
  /** Watch fraction in [0, 1]. */
  readonly engagement: Float32Array;
}

export interface GenerationSummary {
  readonly events: number;
  readonly users: number;
  readonly batches: number;
  readonly positiveEvents: number;
}

/** One recommended cluster with the items grounded in it (the first known item is the one shown). */
export interface RecommendationSlot {
  readonly clusterId: string;
  readonly itemIds: readonly string[];
}

/** A recommendation policy plugged into the live environment (a table lookup plus item grounding, usually). */
export interface ExplorationPolicy {
  recommend(
    userId: string,
    history: History | null,
    at: number,
  ): readonly RecommendationSlot[] | Promise<readonly RecommendationSlot[]>;
}

export type ExposureOutcome = "satisfied" | "dissatisfied" | "negative" | "ignored";

export interface Exposure {
  readonly userId: string;
  readonly userIndex: number;
  readonly at: number;
  readonly rank: number;
  readonly clusterId: string;
  /** The item shown; null when the slot named no item of the cluster and the cluster has none. */
  readonly itemId: string | null;
  /** The observed history the policy was given. */
  readonly history: History | null;
  /** Whether the cluster was novel for the user's latent history (not in {h1, h2}). */
  readonly novel: boolean;
  /** True population kernel probability P_m(cluster | h1, h2); 0 for non-novel or absent clusters. */
  readonly kernelProbability: number;
  readonly clicked: boolean;
  readonly outcome: ExposureOutcome;
  /** Watch fraction of the click; null without a click. */
  readonly engagement: number | null;
  /** The observed history right after the response: a satisfied novel click makes the cluster its c2. */
  readonly historyAfter: History | null;
}

export interface LiveSimulationHooks {
  onExposure?: (exposure: Exposure) => void;
  /** Every watch event in the window, organic or from a click. */
  onEvent?: (event: EngagementEvent) => void;
}

export interface LiveSimulationResult {
  readonly from: number;
  readonly to: number;
  readonly exposures: number;
  readonly clicks: number;
  readonly outcomes: Readonly<Record<ExposureOutcome, number>>;
  readonly events: number;
}

const MAX_INTERESTS = 8;
const FAVOURITE_DOMAIN_BOOST = 1.5;
const FAMILIAR_LIKE = 0.82;
const FAMILIAR_SHARE = 0.5;
const MONTH_MS = 30.436875 * DAY_MS;
const TASTE_LEVELS = 1024;

/** How well a cluster matches the kernel and taste for the history: q / (q + 3/K), in [0, 1). */
export function matchShare(q: number, clusterCount: number): number {
  return q / (q + 3 / clusterCount);
}

/** Probability that a user likes (engages positively with) a novel cluster of match share s. */
export function likeProbability(share: number): number {
  return 0.25 + 0.65 * share;
}

/** Probability that a user clicks a recommended cluster of match share s. */
export function clickProbability(share: number): number {
  return 0.05 + 0.55 * share;
}

/** Probability of a negative interaction (e.g. "not interested") with an unclicked slot of match share s. */
export function negativeProbability(share: number): number {
  return 0.15 * (1 - share);
}

/** Mutable state of one simulated user. */
class SimulatedUser {
  h1 = -1;
  h2 = -1;
  readonly interests = new Int32Array(MAX_INTERESTS);
  interestCount = 0;
  /** Distinct positive clusters seen in the log so far, capped at 2 (the observed history exists at 2). */
  observedDistinct = 0;
  observedLast = -1;
  nextSessionAt = 0;
  lastTs = 0;
  month = 0;
  constructor(
    readonly index: number,
    readonly rng: SeededRandom,
    readonly liveRng: SeededRandom,
    readonly taste: Float32Array,
    readonly meanSessionGap: number,
  ) {}
}

interface EventSink {
  push(userIndex: number, itemIndex: number, ts: number, engagement: number, positive: boolean): void;
}

/** Growable column buffer; handed out as a batch and replaced, never reused. */
class BatchBuffer implements EventSink {
  length = 0;
  positives = 0;
  userIndex: Int32Array;
  itemIndex: Int32Array;
  ts: Float64Array;
  engagement: Float32Array;
  constructor(private capacity: number) {
    this.userIndex = new Int32Array(capacity);
    this.itemIndex = new Int32Array(capacity);
    this.ts = new Float64Array(capacity);
    this.engagement = new Float32Array(capacity);
  }
  push(userIndex: number, itemIndex: number, ts: number, engagement: number, positive: boolean): void {
    if (this.length === this.capacity) this.grow();
    const i = this.length++;
    this.userIndex[i] = userIndex;
    this.itemIndex[i] = itemIndex;
    this.ts[i] = ts;
    this.engagement[i] = engagement;
    if (positive) this.positives++;
  }
  toBatch(): SyntheticEventBatch {
    const n = this.length;
    return {
      length: n,
      userIndex: this.userIndex.subarray(0, n),
      itemIndex: this.itemIndex.subarray(0, n),
      ts: this.ts.subarray(0, n),
      engagement: this.engagement.subarray(0, n),
    };
  }
  private grow(): void {
    this.capacity *= 2;
    const u = new Int32Array(this.capacity);
    u.set(this.userIndex);
    this.userIndex = u;
    const it = new Int32Array(this.capacity);
    it.set(this.itemIndex);
    this.itemIndex = it;
    const t = new Float64Array(this.capacity);
    t.set(this.ts);
    this.ts = t;
    const e = new Float32Array(this.capacity);
    e.set(this.engagement);
    this.engagement = e;
  }
}

const DISCARD: EventSink = { push() {} };

function validate(o: SyntheticOptions): void {
  const bad = (field: string, expected: string): never => {
    throw new BadInputError(`synthetic option ${field} = ${JSON.stringify((o as never)[field])}: expected ${expected}`);
  };
  if (!Number.isInteger(o.seed)) bad("seed", "an integer");
  if (!/^\d{4}-\d{2}-\d{2}/.test(o.start) || Number.isNaN(Date.parse(o.start))) bad("start", "an ISO date");
  if (!Number.isInteger(o.months) || o.months < 1) bad("months", "an integer >= 1");
  if (!Number.isInteger(o.users) || o.users < 1) bad("users", "an integer >= 1");
  if (!(o.targetEvents > 0)) bad("targetEvents", "a number > 0");
  if (!(o.eventsPerSession >= 1)) bad("eventsPerSession", "a number >= 1");
  if (!Number.isInteger(o.clustersPerDomain) || o.clustersPerDomain < 3 || o.clustersPerDomain > 25)
    bad("clustersPerDomain", "an integer in [3, 25]");
  if (!(o.itemsPerCluster >= 4)) bad("itemsPerCluster", "a number >= 4");
  if (!(o.targetJaccard > 0 && o.targetJaccard < 1)) bad("targetJaccard", "a number in (0, 1)");
  if (!(o.positiveThreshold > 0 && o.positiveThreshold < 1)) bad("positiveThreshold", "a number in (0, 1)");
  for (const f of ["continueRate", "resumeRate", "returnRate"] as const) {
    if (!(o[f] >= 0 && o[f] <= 1)) bad(f, "a probability in [0, 1]");
  }
  if (o.continueRate + o.returnRate > 1) bad("returnRate", "continueRate + returnRate <= 1");
  if (o.resumeRate + o.returnRate > 1) bad("returnRate", "resumeRate + returnRate <= 1");
  if (!(o.tasteStrength >= 0)) bad("tasteStrength", "a number >= 0");
  if (!Number.isInteger(o.batchSize) || o.batchSize < 1) bad("batchSize", "an integer >= 1");
}

export class SyntheticWorld {
  readonly options: Readonly<SyntheticOptions>;
  readonly clusters: readonly SyntheticCluster[];
  readonly kernel: SuccessorKernel;
  /** Epoch ms of the start of month m, for m = 0 .. months + KERNEL_EXTRA_MONTHS. */
  readonly monthStarts: Float64Array;
  readonly startMs: number;
  /** End of generated events (start of month `months`), exclusive: no event is at or after it. */
  readonly endMs: number;
  /** Items of cluster c are indices itemOffset[c] .. itemOffset[c] + itemCount[c] - 1. */
  readonly itemOffset: Int32Array;
  readonly itemCount: Int32Array;
  readonly itemCluster: Int32Array;
  readonly itemTotal: number;

  private readonly clusterByIdMap: Map<string, number>;
  private itemByIdMap: Map<string, number> | undefined;
  private readonly clusterDomain: Int32Array;
  private readonly sessionsPerMonth: number;
  private readonly userIdWidth: number;
  private readonly tasteTable: Float32Array;
  private readonly scratch: Float64Array;
  private readonly K: number;
  private readonly continueRate: number;
  private readonly resumeRate: number;
  private readonly returnRate: number;
  private readonly positiveThreshold: number;
  private readonly seedStreamUser = hashString("user");
  private readonly seedStreamLive = hashString("live");

  constructor(options: Partial<SyntheticOptions> = {}) {
    const o: SyntheticOptions = { ...SYNTHETIC_DEFAULTS, ...options };
    validate(o);
    this.options = Object.freeze(o);
    this.clusters = buildTaxonomy({ clustersPerDomain: o.clustersPerDomain });
    const K = this.clusters.length;
    this.K = K;
    this.clusterByIdMap = new Map(this.clusters.map((c, i) => [c.id, i]));
    this.clusterDomain = Int32Array.from(this.clusters, (c) => SYNTHETIC_DOMAINS.indexOf(c.domain));

    const s = new Date(Date.parse(o.start.length === 10 ? `${o.start}T00:00:00Z` : o.start));
    this.startMs = s.getTime();
    const horizon = o.months + KERNEL_EXTRA_MONTHS;
    this.monthStarts = new Float64Array(horizon + 1);
    this.monthStarts[0] = this.startMs;
    for (let m = 1; m <= horizon; m++) this.monthStarts[m] = Date.UTC(s.getUTCFullYear(), s.getUTCMonth() + m, 1);
    this.endMs = this.monthStarts[o.months];

    this.kernel = new SuccessorKernel(this.clusters, this.monthStarts, {
      seed: o.seed,
      months: o.months,
      targetJaccard: o.targetJaccard,
    });

    this.itemCount = new Int32Array(K);
    this.itemOffset = new Int32Array(K);
    let total = 0;
    for (let c = 0; c < K; c++) {
      const n = Math.round(o.itemsPerCluster * Math.exp(0.6 * this.kernel.popularity[c]));
      this.itemCount[c] = Math.max(Math.ceil(o.itemsPerCluster / 4), Math.min(Math.round(o.itemsPerCluster * 4), n));
      this.itemOffset[c] = total;
      total += this.itemCount[c];
    }
    this.itemTotal = total;
    this.itemCluster = new Int32Array(total);
    for (let c = 0; c < K; c++) this.itemCluster.fill(c, this.itemOffset[c], this.itemOffset[c] + this.itemCount[c]);

    this.sessionsPerMonth = o.targetEvents / (o.users * o.months * o.eventsPerSession);
    this.userIdWidth = Math.max(6, String(o.users - 1).length);
    // Quantiles of N(0, 1) mapped through exp(tasteStrength * z): taste is then one table read per cluster.
    const tasteRng = new SeededRandom(o.seed, hashString("taste-table"));
    const z = Array.from({ length: TASTE_LEVELS }, () => tasteRng.normal());
    this.tasteTable = Float32Array.from(z, (v) => Math.exp(o.tasteStrength * v));
    this.scratch = new Float64Array(K);
    this.continueRate = o.continueRate;
    this.resumeRate = o.resumeRate;
    this.returnRate = o.returnRate;
    this.positiveThreshold = o.positiveThreshold;
  }

  get calibration(): KernelCalibration {
    return this.kernel.calibration;
  }

  get userCount(): number {
    return this.options.users;
  }

  userId(index: number): string {
    return `u${String(index).padStart(this.userIdWidth, "0")}`;
  }

  userIndex(userId: string): number {
    const n = /^u(\d+)$/.test(userId) ? Number(userId.slice(1)) : -1;
    return n >= 0 && n < this.options.users ? n : -1;
  }

  itemId(index: number): string {
    const c = this.itemCluster[index];
    return `${this.clusters[c].id}-${String(index - this.itemOffset[c]).padStart(4, "0")}`;
  }

  /** Item index of an id, or -1. */
  itemIndex(itemId: string): number {
    if (!this.itemByIdMap) {
      this.itemByIdMap = new Map();
      for (let i = 0; i < this.itemTotal; i++) this.itemByIdMap.set(this.itemId(i), i);
    }
    return this.itemByIdMap.get(itemId) ?? -1;
  }

  clusterIndex(clusterId: string): number {
    return this.clusterByIdMap.get(clusterId) ?? -1;
  }

  /** All items with readable titles built from their cluster's keywords. */
  items(): Item[] {
    const out: Item[] = new Array(this.itemTotal);
    for (let i = 0; i < this.itemTotal; i++) {
      const c = this.clusters[this.itemCluster[i]];
      const n = i - this.itemOffset[this.itemCluster[i]];
      out[i] = { id: this.itemId(i), clusterId: c.id, title: itemTitle(c, n, mix32(this.options.seed, i)) };
    }
    return out;
  }

  /** Month index (0 = the start month) of a timestamp; clamped to the kernel's horizon. */
  monthIndexAt(ts: number): number {
    const starts = this.monthStarts;
    let lo = 0;
    let hi = starts.length - 2;
    if (ts < starts[0]) return 0;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid] <= ts) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Whether a cluster exists (has items shown) in a month. */
  clusterActive(monthIndex: number, clusterId: string): boolean {
    return this.kernel.isActive(monthIndex, this.requireCluster(clusterId));
  }

  /** The true population kernel P_month(. | c1, c2), non-zero entries, most probable first. */
  successorDistribution(monthIndex: number, c1: string, c2: string): Array<{ clusterId: string; probability: number }> {
    const p = this.kernel.distribution(monthIndex, this.requireCluster(c1), this.requireCluster(c2));
    const out: Array<{ clusterId: string; probability: number }> = [];
    for (let n = 0; n < p.length; n++) if (p[n] > 0) out.push({ clusterId: this.clusters[n].id, probability: p[n] });
    return out.sort((a, b) => b.probability - a.probability || (a.clusterId < b.clusterId ? -1 : 1));
  }

  /** The true top-n successors of (c1, c2) in a month. */
  topSuccessors(monthIndex: number, c1: string, c2: string, n = 5): string[] {
    return this.kernel
      .topSuccessors(monthIndex, this.requireCluster(c1), this.requireCluster(c2), n)
      .map((i) => this.clusters[i].id);
  }

  /**
   * Generates all events of all users over the world's months and hands them out in column batches. Awaits the
   * callback, so a slow consumer (a database append) applies back-pressure.
   */
  async generate(onBatch: (batch: SyntheticEventBatch) => void | Promise<void>): Promise<GenerationSummary> {
    const size = this.options.batchSize;
    let buffer = new BatchBuffer(Math.min(size, 1 << 16) + 4096);
    let events = 0;
    let positives = 0;
    let batches = 0;
    const flush = async (): Promise<void> => {
      if (buffer.length === 0) return;
      events += buffer.length;
      positives += buffer.positives;
      batches++;
      const batch = buffer.toBatch();
      buffer = new BatchBuffer(Math.min(size, 1 << 16) + 4096);
      await onBatch(batch);
    };
    // A session that starts just before the end runs on past it; its events after the end are dropped, so the data
    // ends where the world says (a demo or replay over "the last months" would otherwise get a stub month of
    // minutes). The generator still draws them, so every earlier event is the same.
    const endMs = this.endMs;
    const sink: EventSink = {
      push: (userIndex, itemIndex, ts, engagement, positive) => {
        if (ts < endMs) buffer.push(userIndex, itemIndex, ts, engagement, positive);
      },
    };
    for (let u = 0; u < this.options.users; u++) {
      const user = this.createUser(u);
      this.advanceOrganic(user, endMs, sink);
      if (buffer.length >= size) await flush();
    }
    await flush();
    return { events, users: this.options.users, batches, positiveEvents: positives };
  }

  /** Users advanced organically to `at`, ready to be exposed to policies. `users` defaults to everyone. */
  createLiveEnvironment(at: number, users?: readonly number[]): LiveEnvironment {
    const indices = users ?? Array.from({ length: this.options.users }, (_, i) => i);
    const states = indices.map((i) => {
      if (!(i >= 0 && i < this.options.users)) throw new BadInputError(`user index ${i} is not in [0, ${this.options.users})`);
      const user = this.createUser(i);
      this.advanceOrganic(user, at, DISCARD);
      return user;
    });
    return new LiveEnvironment(this, states, at);
  }

  /** One-shot live simulation of `days` days from `from` (see `createLiveEnvironment` to continue across calls). */
  async simulateDays(
    from: number,
    days: number,
    policy: ExplorationPolicy,
    hooks: LiveSimulationHooks = {},
    users?: readonly number[],
  ): Promise<LiveSimulationResult> {
    return this.createLiveEnvironment(from, users).simulateDays(days, policy, hooks);
  }

  // ---- the user behaviour model (shared by batch generation and the live environment) ----

  /** @internal */
  createUser(index: number): SimulatedUser {
    const o = this.options;
    const rng = new SeededRandom(o.seed, this.seedStreamUser, index);
    const liveRng = new SeededRandom(o.seed, this.seedStreamLive, index);
    const K = this.K;
    // Favourite domain and initial interests follow population appeal, so popular clusters and pairs get traffic.
    const month0 = this.kernel.activeMask(0);
    const appeal = new Float64Array(K);
    for (let c = 0; c < K; c++) appeal[c] = month0[c] ? Math.exp(1.2 * this.kernel.popularity[c]) : 0;
    const favourite = this.clusterDomain[rng.pick(appeal)];
    const tasteKey = rng.nextUint32();
    const taste = new Float32Array(K);
    for (let c = 0; c < K; c++) {
      taste[c] =
        this.tasteTable[mix32(tasteKey, c) & (TASTE_LEVELS - 1)] *
        (this.clusterDomain[c] === favourite ? FAVOURITE_DOMAIN_BOOST : 1);
    }
    const activity = Math.exp(0.9 * rng.normal() - 0.405);
    const user = new SimulatedUser(index, rng, liveRng, taste, MONTH_MS / (this.sessionsPerMonth * activity));
    const inDomain = new Float64Array(K);
    for (let c = 0; c < K; c++) inDomain[c] = this.clusterDomain[c] === favourite ? appeal[c] : 0;
    const first = rng.pick(inDomain);
    appeal[first] = 0;
    const second = rng.pick(rng.next() < 0.5 ? appeal : inDomain.map((w, c) => (c === first ? 0 : w)));
    appeal[second] = 0;
    const third = rng.pick(appeal);
    user.interests[0] = second;
    user.interests[1] = first;
    user.interests[2] = third;
    user.interestCount = 3;
    user.h1 = first;
    user.h2 = second;
    user.lastTs = this.startMs;
    user.nextSessionAt = this.startMs + rng.exponential(user.meanSessionGap);
    return user;
  }

  /** Runs the user's organic sessions that start before `until`. */
  advanceOrganic(user: SimulatedUser, until: number, sink: EventSink): void {
    while (user.nextSessionAt < until) {
      this.runSession(user, user.nextSessionAt, sink);
      this.scheduleNextSession(user);
    }
  }

  /** @internal */
  scheduleNextSession(user: SimulatedUser): void {
    user.nextSessionAt = user.lastTs + user.rng.exponential(user.meanSessionGap);
  }

  /** @internal */
  monthOf(user: SimulatedUser, ts: number): number {
    const starts = this.monthStarts;
    let m = user.month;
    while (m + 2 < starts.length && ts >= starts[m + 1]) m++;
    user.month = m;
    return m;
  }

  /** One organic session: the hot loop of generation. */
  runSession(user: SimulatedUser, start: number, sink: EventSink): void {
    const rng = user.rng;
    const month = this.monthOf(user, start);
    const active = this.kernel.activeMask(month);
    const length = 1 + rng.geometric(this.options.eventsPerSession - 1);
    let ts = Math.max(start, user.lastTs + 1000);
    for (let e = 0; e < length; e++) {
      const r = rng.next();
      const stay = e === 0 ? this.resumeRate : this.continueRate;
      let cluster = -1;
      let positive: boolean;
      if (r < stay && active[user.h2] === 1) {
        cluster = user.h2;
      } else if (r < stay + this.returnRate) {
        cluster = this.pickReturn(user, active, rng);
      }
      if (cluster >= 0) {
        positive = rng.next() < FAMILIAR_LIKE;
      } else {
        const sum = this.novelChoiceWeights(user, month, this.scratch);
        if (sum <= 0) continue;
        cluster = rng.pick(this.scratch, sum);
        const share = matchShare(this.scratch[cluster] / sum, this.K);
        positive = rng.next() < likeProbability(share);
      }
      const item = this.pickItem(cluster, rng);
      sink.push(user.index, item, ts, this.engagementValue(positive, rng), positive);
      if (positive) this.observePositive(user, cluster);
      ts += 15_000 + rng.next() * 90_000;
    }
    user.lastTs = ts;
  }

  /** q_u(n) up to normalisation: kernel weight times the user's taste, for novel clusters of the history. */
  novelChoiceWeights(user: SimulatedUser, month: number, out: Float64Array): number {
    this.kernel.weightsInto(month, user.h1, user.h2, out);
    const taste = user.taste;
    let sum = 0;
    for (let n = 0; n < out.length; n++) {
      const w = out[n] * taste[n];
      out[n] = w;
      sum += w;
    }
    return sum;
  }

  private pickReturn(user: SimulatedUser, active: Uint8Array, rng: SeededRandom): number {
    if (user.h1 >= 0 && active[user.h1] === 1 && rng.next() < 0.5) return user.h1;
    const candidates = this.scratch;
    let count = 0;
    for (let i = 0; i < user.interestCount; i++) {
      const c = user.interests[i];
      if (c !== user.h2 && active[c] === 1) candidates[count++] = c;
    }
    if (count === 0) return -1;
    const u = rng.next();
    return candidates[Math.floor(count * u * u)];
  }

  private pickItem(cluster: number, rng: SeededRandom): number {
    const u = rng.next();
    return this.itemOffset[cluster] + Math.floor(this.itemCount[cluster] * u * u * Math.sqrt(u));
  }

  private engagementValue(positive: boolean, rng: SeededRandom): number {
    const t = this.positiveThreshold;
    const u = rng.next();
    if (positive) return t + (1 - t) * Math.sqrt(u);
    // 30% immediate skips; the rest watch part of the video but stay below the threshold.
    return u < 0.3 ? 0 : t * (0.1 + 0.88 * ((u - 0.3) / 0.7));
  }

  /** @internal A positive engagement with `cluster`: moves the history and the interests. */
  observePositive(user: SimulatedUser, cluster: number): void {
    if (cluster !== user.h2) {
      user.h1 = user.h2;
      user.h2 = cluster;
    }
    if (cluster !== user.observedLast) {
      user.observedLast = cluster;
      if (user.observedDistinct < 2) user.observedDistinct++;
    }
    const list = user.interests;
    let at = -1;
    for (let i = 0; i < user.interestCount; i++) {
      if (list[i] === cluster) {
        at = i;
        break;
      }
    }
    if (at === 0) return;
    if (at < 0) {
      if (user.interestCount < MAX_INTERESTS) user.interestCount++;
      at = user.interestCount - 1;
    }
    for (let i = at; i > 0; i--) list[i] = list[i - 1];
    list[0] = cluster;
  }

  /** @internal The observed history handed to policies. */
  observedHistory(user: SimulatedUser): History | null {
    if (user.observedDistinct < 2) return null;
    return { c1: this.clusters[user.h1].id, c2: this.clusters[user.h2].id };
  }

  /** @internal The response of a user to one recommended slot (the live half of the behaviour model). */
  respond(
    user: SimulatedUser,
    slot: RecommendationSlot,
    rank: number,
    at: number,
    history: History | null,
  ): Omit<Exposure, "historyAfter"> {
    const c = this.clusterIndex(slot.clusterId);
    if (c < 0) throw new BadInputError(`policy recommended unknown cluster "${slot.clusterId}"`);
    const rng = user.liveRng;
    const month = this.monthOf(user, at);
    const active = this.kernel.activeMask(month);
    const novel = c !== user.h1 && c !== user.h2;
    let kernelProbability = 0;
    let share: number;
    if (!novel) {
      share = FAMILIAR_SHARE;
    } else {
      const sum = this.novelChoiceWeights(user, month, this.scratch);
      const q = sum > 0 ? this.scratch[c] / sum : 0;
      share = matchShare(q, this.K);
      kernelProbability = this.kernel.distribution(month, user.h1, user.h2)[c];
    }
    let item = -1;
    for (const id of slot.itemIds) {
      const i = this.itemIndex(id);
      if (i >= 0 && this.itemCluster[i] === c) {
        item = i;
        break;
      }
    }
    if (item < 0 && active[c] === 1) item = this.pickItem(c, rng);
    const clicked = item >= 0 && active[c] === 1 && rng.next() < clickProbability(share);
    let outcome: ExposureOutcome;
    let engagement: number | null = null;
    if (clicked) {
      const liked = rng.next() < (novel ? likeProbability(share) : FAMILIAR_LIKE);
      outcome = liked ? "satisfied" : "dissatisfied";
      engagement = this.engagementValue(liked, rng);
    } else {
      outcome = rng.next() < negativeProbability(share) ? "negative" : "ignored";
    }
    return {
      userId: this.userId(user.index),
      userIndex: user.index,
      at,
      rank,
      clusterId: slot.clusterId,
      itemId: item >= 0 ? this.itemId(item) : null,
      history,
      novel,
      kernelProbability,
      clicked,
      outcome,
      engagement,
    };
  }

  private requireCluster(id: string): number {
    const c = this.clusterIndex(id);
    if (c < 0) throw new BadInputError(`unknown synthetic cluster "${id}"`);
    return c;
  }
}

/**
 * Simulated users exposed to a policy over time. State persists across calls, so a caller can switch policies
 * (e.g. a refreshed table) between days. Users are processed one after another: hooks see events and exposures grouped
 * by user, each user's in time order.
 */
export class LiveEnvironment {
  constructor(
    private readonly world: SyntheticWorld,
    private readonly users: SimulatedUser[],
    private now: number,
  ) {}

  get at(): number {
    return this.now;
  }

  async simulateDays(days: number, policy: ExplorationPolicy, hooks: LiveSimulationHooks = {}): Promise<LiveSimulationResult> {
    if (!(days > 0)) throw new BadInputError(`days = ${days}: expected a number > 0`);
    const world = this.world;
    const from = this.now;
    const to = from + days * DAY_MS;
    const outcomes: Record<ExposureOutcome, number> = { satisfied: 0, dissatisfied: 0, negative: 0, ignored: 0 };
    let exposures = 0;
    let clicks = 0;
    let events = 0;
    let currentUser = "";
    const onEvent = hooks.onEvent;
    const sink: EventSink = {
      push(_userIndex, itemIndex, ts, engagement) {
        events++;
        onEvent?.({ userId: currentUser, itemId: world.itemId(itemIndex), ts, engagement });
      },
    };
    for (const user of this.users) {
      currentUser = world.userId(user.index);
      while (user.nextSessionAt < to) {
        const start = Math.max(user.nextSessionAt, user.lastTs + 1000);
        const history = world.observedHistory(user);
        const slate = await policy.recommend(currentUser, history, start);
        let ts = start;
        for (let rank = 0; rank < slate.length; rank++) {
          const response = world.respond(user, slate[rank], rank, ts, history);
          exposures++;
          outcomes[response.outcome]++;
          if (response.clicked && response.itemId !== null && response.engagement !== null) {
            clicks++;
            const satisfied = response.outcome === "satisfied";
            sink.push(user.index, world.itemIndex(response.itemId), ts, response.engagement, satisfied);
            // The same history update as an organic positive event: one model for both paths.
            if (satisfied) world.observePositive(user, world.clusterIndex(response.clusterId));
            ts += 15_000 + user.liveRng.next() * 90_000;
            user.lastTs = ts;
          }
          hooks.onExposure?.({ ...response, historyAfter: world.observedHistory(user) });
        }
        world.runSession(user, ts, sink);
        world.scheduleNextSession(user);
      }
    }
    this.now = to;
    return { from, to, exposures, clicks, outcomes, events };
  }
}
