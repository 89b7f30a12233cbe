/**
 * RAG retrieval (the fast path): recount novel transitions over a recent window before the as-of time and pick,
 * per history pair, the context the prompt will carry. The paper's choice is the default: instance level (one
 * context per pair), frequency based, top-1 (arXiv 2510.20260 §1.4). The alternatives it compared are options for
 * ablations:
 * - `trend`: per pair, the successors whose count rose most versus the window just before;
 * - `global`: one context for every prompt, the successors that dominate the `globalPairs` most frequent recent
 *   transitions (the paper's "top-100 pairs" variant, rejected there as noisy for the target pair).
 *
 * Counting is by distinct users per triple (see mining), so one account replaying a transition a thousand times
 * weighs as much as one user doing it once: a burst cannot move a pair's context on its own.
 *
 * @example
 * const snapshot = await retrieveContexts(store, asOf, { windowDays: 7, topN: 1 });
 * const context = contextFor(snapshot, "baking", "coffee"); // { successors: ["latte-art"] } or undefined
 */
import { createHash } from "node:crypto";
import type { EventStoreContract } from "../data/event-store.js";
import { DAY_MS } from "../domain/clock.js";
import { BadInputError } from "../domain/errors.js";
import type { TimeWindow, Transition, TransitionCount } from "../domain/types.js";
import { remembered } from "../domain/memo.js";
import { seededRandom } from "../domain/random.js";
import type { PromptContext } from "../llm/prompt.js";
import { pairKey } from "../domain/types.js";
import { countTransitions, countTransitionsForWindows } from "../mining/transitions.js";
import type { FusionOptions } from "./fusion.js";

export type RagMode = "frequency" | "trend" | "global";

export interface RagOptions {
  /** Days of events before the as-of time that are recounted. @defaultValue 7 */
  readonly windowDays?: number;
  /** Successors put into each prompt. @defaultValue 1 (the paper found top-1 sufficient) */
  readonly topN?: number;
  /** Distinct users a successor needs in the window to be retrieved. @defaultValue 2 */
  readonly minSupport?: number;
  /** @defaultValue "frequency" */
  readonly mode?: RagMode;
  /** Global mode: how many of the most frequent transitions build the shared context. @defaultValue 100 */
  readonly globalPairs?: number;
  /** Engagement threshold for positive events (see MiningOptions). @defaultValue null */
  readonly positiveMin?: number | null;
  /**
   * How a refresh uses the fresh transitions: `fusion` (posterior of the LLM prior and the counts, ./fusion.ts) or
   * `prompt` (the paper's in-prompt RAG; `mode` picks the contexts). Curation and pretraining contexts always come
   * from `mode`. @defaultValue "fusion"
   */
  readonly method?: RagMethod;
  /** Options of the fusion method. */
  readonly fusion?: FusionOptions;
}

export type RagMethod = "fusion" | "prompt";

export const RAG_DEFAULTS = { windowDays: 7, topN: 1, minSupport: 2, mode: "frequency", globalPairs: 100, method: "fusion", fusion: {} } as const;

/** The retrieved contexts of one refresh, with what made them. */
export interface RagSnapshot {
  readonly asOf: number;
  readonly window: TimeWindow;
  readonly mode: RagMode;
  readonly topN: number;
  readonly minSupport: number;
  /** Per pair (pairKey) in frequency and trend modes. */
  readonly contexts: ReadonlyMap<string, PromptContext>;
  /** The one shared context in global mode. */
  readonly global: PromptContext | null;
  /** Transitions (distinct users per triple, summed) counted in the window. */
  readonly transitions: number;
  /**
   * Per next cluster, the distinct users of its triples in the window, summed: the recent novel popularity the
   * `popular-novel` and `successor-top1` baselines rank by, kept here so they need no second count of the window.
   */
  readonly nextUsers: ReadonlyMap<string, number>;
}

/** Retrieves contexts from events in [asOf - windowDays, asOf); nothing at or after asOf is read. */
export async function retrieveContexts(
  store: EventStoreContract,
  asOf: number,
  options: RagOptions = {},
  /** Windows counted earlier (SnapshotCache.prime); a window it does not know is counted here. */
  counted?: (window: TimeWindow) => readonly TransitionCount[] | undefined,
): Promise<RagSnapshot> {
  const o = resolveRagOptions(options);
  const window = { from: asOf - o.windowDays * DAY_MS, to: asOf };
  const mining = { positiveMin: options.positiveMin ?? null };
  const count = async (w: TimeWindow) => counted?.(w) ?? (await countTransitions(store, w, mining));
  const recent = await count(window);
  const previous = o.mode === "trend" ? await count({ from: window.from - o.windowDays * DAY_MS, to: window.from }) : [];
  return { asOf, window, ...contextsFromCounts(recent, previous, o) };
}

/**
 * Snapshots by as-of time and options, shared by every refresh that reads the same unchanging event store: in a
 * replay, `rag`, `hybrid` and the baselines retrieve at the very same instants, and a retrieval recounts the window
 * over the whole history (the largest fixed cost of a refresh). Never use one over a store that receives events.
 */
export class SnapshotCache {
  private readonly snapshots = new Map<string, Promise<RagSnapshot>>();
  /** Windows counted ahead by `prime`, by end, length and positive threshold. */
  private readonly counts = new Map<string, readonly TransitionCount[]>();

  /**
   * Counts the windows of the retrievals due at `asOfs` (and their trend baselines) in one query, ahead of the
   * refreshes: a replay year of refreshes every 2 days is 183 windows, ~0.5 s each counted one by one over the whole
   * history, and those queries take both cores from the training running beside them.
   */
  async prime(store: EventStoreContract, asOfs: readonly number[], options: RagOptions = {}): Promise<void> {
    const o = resolveRagOptions(options);
    const windowMs = o.windowDays * DAY_MS;
    const positiveMin = options.positiveMin ?? null;
    const ends = o.mode === "trend" ? [...asOfs, ...asOfs.map((t) => t - windowMs)] : [...asOfs];
    const missing = ends.filter((end) => !this.counts.has(countsKey(end, windowMs, positiveMin)));
    const counted = await countTransitionsForWindows(store, missing, windowMs, { positiveMin });
    for (const end of missing) this.counts.set(countsKey(end, windowMs, positiveMin), counted.get(Math.round(end)) ?? []);
  }

  retrieve(store: EventStoreContract, asOf: number, options: RagOptions = {}): Promise<RagSnapshot> {
    const key = JSON.stringify([asOf, resolveRagOptions(options), options.positiveMin ?? null]);
    const positiveMin = options.positiveMin ?? null;
    // A failed retrieval is not remembered: the next refresh tries again.
    return remembered(this.snapshots, key, () => retrieveContexts(store, asOf, options, (w) => this.counts.get(countsKey(w.to, w.to - w.from, positiveMin))));
  }

  get size(): number {
    return this.snapshots.size;
  }
}

function countsKey(end: number, windowMs: number, positiveMin: number | null): string {
  return `${Math.round(end)}|${Math.round(windowMs)}|${positiveMin}`;
}

/** One step of `contextsAlong`: events in [from, to) would have been served with `snapshot`'s contexts. */
export interface ContextStep {
  readonly from: number;
  readonly to: number;
  readonly snapshot: RagSnapshot;
}

/**
 * The contexts refreshes would have put into prompts during a training window: the window is cut into steps of
 * `windowDays` from its start, and each step gets the snapshot retrieved at its start (from the days just before it,
 * so never from its own or later data). Training samples given these contexts read exactly what a refresh builds,
 * for fine-tuning (curation.ts) and the base model alike.
 */
export async function contextsAlong(store: EventStoreContract, window: TimeWindow, options: RagOptions = {}): Promise<ContextStep[]> {
  const o = resolveRagOptions(options);
  const stepMs = o.windowDays * DAY_MS;
  // One query for all the steps' windows (as SnapshotCache.prime counts a replay's): a base model's window may span
  // years (1,200 weekly snapshots for MovieLens), and one query per snapshot took minutes.
  const starts: number[] = [];
  for (let from = window.from; from < window.to; from += stepMs) starts.push(from);
  const ends = o.mode === "trend" ? [...starts, ...starts.map((t) => t - stepMs)] : starts;
  const counts = await countTransitionsForWindows(store, ends, stepMs, { positiveMin: options.positiveMin ?? null });
  const steps: ContextStep[] = [];
  for (const from of starts) {
    // Each step's snapshot reads [from - stepMs, from), as retrieveContexts at its start would.
    const recent = counts.get(from) ?? [];
    const previous = o.mode === "trend" ? (counts.get(from - stepMs) ?? []) : [];
    const snapshot: RagSnapshot = { asOf: from, window: { from: from - stepMs, to: from }, ...contextsFromCounts(recent, previous, o) };
    steps.push({ from, to: Math.min(from + stepMs, window.to), snapshot });
  }
  return steps;
}

/**
 * Gives a `share` of the transitions (a seeded coin per transition) the context a refresh would have retrieved just
 * before them (`contextsAlong`), as fine-tuning curation does: a base model that never saw a context in training has
 * no reason to read one, and RAG refreshes on top of it would change nothing. `transitions` are in time order.
 */
export async function withRetrievedContexts<T extends Transition & { readonly ts: number }>(
  store: EventStoreContract,
  transitions: readonly T[],
  window: TimeWindow,
  options: RagOptions,
  share: number,
  seed: number,
): Promise<(T & { context?: readonly string[] })[]> {
  if (share <= 0 || transitions.length === 0) return [...transitions];
  const steps = await contextsAlong(store, { from: Math.max(window.from, transitions[0].ts), to: window.to }, options);
  const coin = seededRandom((Math.floor(seed / 1000) ^ 0x2545f491) >>> 0);
  return transitions.map((t) => {
    if (coin() >= share) return t;
    const step = stepAt(steps, t.ts);
    const context = step && contextFor(step.snapshot, t.c1, t.c2);
    return context ? { ...t, context: context.successors } : t;
  });
}

/** The step of `steps` (ordered, as `contextsAlong` returns them) whose interval holds `ts`, or undefined. */
export function stepAt(steps: readonly ContextStep[], ts: number): ContextStep | undefined {
  let lo = 0;
  let hi = steps.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (ts < steps[mid].from) hi = mid - 1;
    else if (ts >= steps[mid].to) lo = mid + 1;
    else return steps[mid];
  }
  return undefined;
}

/** Options with their defaults, validated (BadInputError naming the field). */
export function resolveRagOptions(options: RagOptions): Required<Omit<RagOptions, "positiveMin">> {
  const o = { ...RAG_DEFAULTS, ...stripUndefined(options) } as Required<Omit<RagOptions, "positiveMin">>;
  if (!(o.windowDays > 0)) throw new BadInputError(`rag.windowDays: expected a positive number of days, got ${o.windowDays}`);
  for (const key of ["topN", "minSupport", "globalPairs"] as const) {
    if (!Number.isInteger(o[key]) || o[key] < 1) throw new BadInputError(`rag.${key}: expected a positive integer, got ${o[key]}`);
  }
  if (!["frequency", "trend", "global"].includes(o.mode)) throw new BadInputError(`rag.mode: expected frequency, trend or global, got ${JSON.stringify(o.mode)}`);
  if (!["fusion", "prompt"].includes(o.method)) throw new BadInputError(`rag.method: expected fusion or prompt, got ${JSON.stringify(o.method)}`);
  return o;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

const byCount = (a: { cluster: string; score: number }, b: { cluster: string; score: number }) =>
  b.score - a.score || (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0);

/** The pure part of retrieval: window counts in, contexts out. */
export function contextsFromCounts(
  recent: readonly TransitionCount[],
  previous: readonly TransitionCount[],
  options: RagOptions = {},
): Omit<RagSnapshot, "asOf" | "window"> {
  const o = resolveRagOptions(options);
  const transitions = recent.reduce((s, t) => s + t.users, 0);
  const nextUsers = new Map<string, number>();
  for (const t of recent) nextUsers.set(t.next, (nextUsers.get(t.next) ?? 0) + t.users);
  const base = { mode: o.mode, topN: o.topN, minSupport: o.minSupport, transitions, nextUsers };
  if (o.mode === "global") {
    const top = [...recent].sort((a, b) => b.users - a.users || (pairKey(a.c1, a.c2) + a.next < pairKey(b.c1, b.c2) + b.next ? -1 : 1)).slice(0, o.globalPairs);
    const totals = new Map<string, number>();
    for (const t of top) if (t.users >= o.minSupport) totals.set(t.next, (totals.get(t.next) ?? 0) + t.users);
    const ranked = [...totals].map(([cluster, score]) => ({ cluster, score })).sort(byCount);
    // Keep spares: a pair's own clusters are dropped from the shared context when its prompt is built.
    const successors = ranked.slice(0, o.topN + 2).map((r) => r.cluster);
    return { ...base, contexts: new Map(), global: successors.length ? { successors } : null };
  }
  const earlier = new Map<string, number>();
  if (o.mode === "trend") for (const t of previous) earlier.set(`${pairKey(t.c1, t.c2)}\u0000${t.next}`, t.users);
  const candidates = new Map<string, { cluster: string; score: number }[]>();
  for (const t of recent) {
    if (t.users < o.minSupport) continue;
    const score = o.mode === "trend" ? t.users - (earlier.get(`${pairKey(t.c1, t.c2)}\u0000${t.next}`) ?? 0) : t.users;
    if (o.mode === "trend" && score <= 0) continue;
    const key = pairKey(t.c1, t.c2);
    let list = candidates.get(key);
    if (!list) candidates.set(key, (list = []));
    list.push({ cluster: t.next, score });
  }
  const contexts = new Map<string, PromptContext>();
  for (const [key, list] of candidates) contexts.set(key, { successors: list.sort(byCount).slice(0, o.topN).map((c) => c.cluster) });
  return { ...base, contexts, global: null };
}

/** The context a pair's prompt carries under a snapshot, or undefined (the prompt then has no RAG part). */
export function contextFor(snapshot: Pick<RagSnapshot, "contexts" | "global" | "topN">, c1: string, c2: string): PromptContext | undefined {
  if (snapshot.global) {
    const successors = snapshot.global.successors.filter((s) => s !== c1 && s !== c2).slice(0, snapshot.topN);
    return successors.length ? { successors } : undefined;
  }
  return snapshot.contexts.get(pairKey(c1, c2));
}

/**
 * A short stable key of a context: equal keys mean equal prompts, which is what lets an incremental table build
 * copy a pair's answers instead of scoring it again. No context has the key "".
 */
export function contextKey(context: PromptContext | undefined): string {
  if (!context || context.successors.length === 0) return "";
  return createHash("sha1").update(context.successors.join("\u0000")).digest("hex").slice(0, 16);
}
