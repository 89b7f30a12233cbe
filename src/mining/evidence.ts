/**
 * Fresh evidence for a refresh: distinct-user transition counts of any window, cut in memory from one read of the
 * log. A fusion refresh compares several window lengths and fits on the slice just before its as-of time, so it
 * needs a dozen windows; one query (`transitionColumns`) plus this index answers them all, exactly as
 * `countTransitions` would for each (test/update/fusion.test.ts checks it).
 *
 * A transition counts in a window once per (user, triple): an occurrence is counted when the same user's previous
 * occurrence of the triple lies before the window's start, so each window is one pass over its own rows.
 *
 * @example
 * const log = await EvidenceLog.load(store, { from: asOf - 400 * DAY_MS, to: asOf }, clusters);
 * const counts = log.counts({ from: asOf - 14 * DAY_MS, to: asOf });
 * counts.pairUsers(counts.pairIndex("baking", "coffee"));
 */
import type { EventStoreContract } from "../data/event-store.js";
import { FreshrecError } from "../domain/errors.js";
import type { TimeWindow } from "../domain/types.js";
import { transitionColumns, type MiningOptions, type TransitionColumns } from "./transitions.js";

/** The successors of one history pair in a window: parallel arrays of cluster index and distinct users. */
export interface PairEvidence {
  readonly next: Int32Array;
  readonly users: Float64Array;
  readonly total: number;
}

/** Distinct-user counts of one window over a fixed cluster vocabulary (indexes into `clusters`). */
export interface WindowCounts {
  readonly window: TimeWindow;
  readonly clusters: readonly string[];
  /** Transitions counted (distinct users per triple, summed). */
  readonly transitions: number;
  /** Per history pair (index c1 * K + c2) that has any successor in the window. */
  readonly pairs: ReadonlyMap<number, PairEvidence>;
  /** second[c2 * K + n]: users of triples (any c1, c2, n); the backoff of a sparse pair to its second cluster. */
  readonly second: Float64Array;
  readonly secondTotal: Float64Array;
  /** Users per next cluster: recent novel popularity. */
  readonly popularity: Float64Array;
}

export class EvidenceLog {
  private constructor(
    /** The span the log was read over; windows must lie inside it. */
    readonly span: TimeWindow,
    readonly clusters: readonly string[],
    private readonly ts: Float64Array,
    /** Time of the same user's previous occurrence of the same triple (-Infinity for a first one). */
    private readonly previous: Float64Array,
    private readonly c1: Int32Array,
    private readonly c2: Int32Array,
    private readonly next: Int32Array,
  ) {}

  /** Reads the transitions of `span` once; `clusters` is the vocabulary counts are indexed by (the table's). */
  static async load(store: EventStoreContract, span: TimeWindow, clusters: readonly string[], options: MiningOptions = {}): Promise<EvidenceLog> {
    return EvidenceLog.fromColumns(await transitionColumns(store, span, options), span, clusters);
  }

  /** Transitions of a cluster outside the vocabulary are left out (a table has no row or answer for them). */
  static fromColumns(columns: TransitionColumns, span: TimeWindow, clusters: readonly string[]): EvidenceLog {
    const K = clusters.length;
    const position = new Map(clusters.map((c, i) => [c, i]));
    const remap = Int32Array.from(columns.clusters, (c) => position.get(c) ?? -1);
    const n = columns.ts.length;
    const keep: number[] = [];
    for (let r = 0; r < n; r++) {
      if (remap[columns.c1[r]] >= 0 && remap[columns.c2[r]] >= 0 && remap[columns.next[r]] >= 0) keep.push(r);
    }
    const ts = new Float64Array(keep.length);
    const previous = new Float64Array(keep.length);
    const c1 = new Int32Array(keep.length);
    const c2 = new Int32Array(keep.length);
    const next = new Int32Array(keep.length);
    let maxUser = 0;
    for (const r of keep) maxUser = Math.max(maxUser, columns.users[r]);
    const lastSeen = new Map<number, number>();
    keep.forEach((r, i) => {
      ts[i] = columns.ts[r];
      c1[i] = remap[columns.c1[r]];
      c2[i] = remap[columns.c2[r]];
      next[i] = remap[columns.next[r]];
      // (triple, user) as one exact integer: K^3 * users stays far below 2^53 for any catalog freshrec serves.
      const key = ((c1[i] * K + c2[i]) * K + next[i]) * (maxUser + 1) + columns.users[r];
      previous[i] = lastSeen.get(key) ?? Number.NEGATIVE_INFINITY;
      lastSeen.set(key, ts[i]);
    });
    return new EvidenceLog(span, clusters, ts, previous, c1, c2, next);
  }

  /** Occurrences in the log (not deduplicated). */
  get size(): number {
    return this.ts.length;
  }

  /** Time of the first transition in the log, or null for an empty log. */
  get firstTs(): number | null {
    return this.ts.length ? this.ts[0] : null;
  }

  /** Seconds spent counting windows so far (a refresh reports its counting apart from its fitting). */
  get countingSeconds(): number {
    return this.countingNs / 1e9;
  }
  private countingNs = 0;

  /** CPU seconds (the process's) spent counting windows so far. */
  get countingCpuSeconds(): number {
    return this.countingCpuUs / 1e6;
  }
  private countingCpuUs = 0;

  /**
   * The last windows counted: a refresh asks for the same few windows several times (the fit slice while sizing it,
   * then for every candidate window; the chosen window again for the fit). Bounded, because a replay shares one log
   * across all its refreshes. Callers treat counts as read-only.
   */
  private readonly recent = new Map<string, WindowCounts>();
  private static readonly RECENT_WINDOWS = 16;

  /** Distinct-user counts of [from, to); the window must lie inside the span the log was read over. */
  counts(window: TimeWindow): WindowCounts {
    const key = `${window.from}|${window.to}`;
    const hit = this.recent.get(key);
    if (hit) {
      // Most recently used last: the oldest entry is the first to go.
      this.recent.delete(key);
      this.recent.set(key, hit);
      return hit;
    }
    const started = process.hrtime.bigint();
    const cpu = process.cpuUsage();
    try {
      const counts = this.countWindow(window);
      this.recent.set(key, counts);
      if (this.recent.size > EvidenceLog.RECENT_WINDOWS) this.recent.delete(this.recent.keys().next().value!);
      return counts;
    } finally {
      this.countingNs += Number(process.hrtime.bigint() - started);
      const used = process.cpuUsage(cpu);
      this.countingCpuUs += used.user + used.system;
    }
  }

  private inSpan(window: TimeWindow): void {
    if (window.from < this.span.from || window.to > this.span.to) {
      throw new FreshrecError(
        "INTERNAL",
        `evidence: window ${iso(window.from)}..${iso(window.to)} lies outside the log read over ${iso(this.span.from)}..${iso(this.span.to)}`,
      );
    }
  }

  private countWindow(window: TimeWindow): WindowCounts {
    this.inSpan(window);
    const K = this.clusters.length;
    const second = new Float64Array(K * K);
    const secondTotal = new Float64Array(K);
    const popularity = new Float64Array(K);
    // One flat map keyed by triple (pair * K + next): nested maps per pair cost more in allocation than counting.
    const byTriple = new Map<number, number>();
    let transitions = 0;
    for (let i = lowerBound(this.ts, window.from); i < this.ts.length && this.ts[i] < window.to; i++) {
      if (this.previous[i] >= window.from) continue;
      const n = this.next[i];
      const triple = (this.c1[i] * K + this.c2[i]) * K + n;
      byTriple.set(triple, (byTriple.get(triple) ?? 0) + 1);
      second[this.c2[i] * K + n]++;
      secondTotal[this.c2[i]]++;
      popularity[n]++;
      transitions++;
    }
    const triples = Float64Array.from(byTriple.keys()).sort();
    const pairs = new Map<number, PairEvidence>();
    for (let start = 0; start < triples.length; ) {
      const p = Math.floor(triples[start] / K);
      let end = start;
      while (end < triples.length && Math.floor(triples[end] / K) === p) end++;
      const next = new Int32Array(end - start);
      const users = new Float64Array(end - start);
      let total = 0;
      for (let k = start; k < end; k++) {
        next[k - start] = triples[k] % K;
        total += users[k - start] = byTriple.get(triples[k])!;
      }
      pairs.set(p, { next, users, total });
      start = end;
    }
    return { window, clusters: this.clusters, transitions, pairs, second, secondTotal, popularity };
  }

  /**
   * The occurrences of `window` in time order (views, not copies): their time, the time of the same user's previous
   * occurrence of the same triple, and the triple's clusters. What a count of any window inside the log reads.
   */
  occurrencesOf(window: TimeWindow): { readonly ts: Float64Array; readonly previous: Float64Array; readonly c1: Int32Array; readonly c2: Int32Array; readonly next: Int32Array } {
    this.inSpan(window);
    const from = lowerBound(this.ts, window.from);
    const to = lowerBound(this.ts, window.to);
    return { ts: this.ts.subarray(from, to), previous: this.previous.subarray(from, to), c1: this.c1.subarray(from, to), c2: this.c2.subarray(from, to), next: this.next.subarray(from, to) };
  }

  /** Occurrences (not deduplicated) with `next` in [from, to): a cheap size test before counting a window. */
  occurrences(window: TimeWindow): number {
    return lowerBound(this.ts, window.to) - lowerBound(this.ts, window.from);
  }
}

/** First index whose value is >= x in an ascending array. */
function lowerBound(a: Float64Array, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function iso(ms: number): string {
  return Number.isFinite(ms) ? new Date(ms).toISOString() : String(ms);
}
