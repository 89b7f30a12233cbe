/**
 * Replay scoring: every real novel transition (c1, c2) -> next inside the evaluated period is scored against the
 * table that was live at that moment, i.e. the last one published at or before the transition's time. A
 * transition before any table was live counts as a miss with nothing served (a strategy is not excused for being
 * late).
 *
 * @example
 * const score = scoreTransitions(transitions, [{ publishedAt, version: "t1", answers: (c1, c2) => [...] }]);
 */
import type { TimedTransition } from "../mining/transitions.js";

/** A table as replay sees it: when it went live and what it answers. */
export interface LiveTableEntry {
  readonly publishedAt: number;
  readonly version: string;
  /** Ranked answer cluster ids for a pair (empty when the table has no row for it). */
  answers(c1: string, c2: string): readonly string[];
}

export interface ScoreOptions {
  /** @defaultValue 5 */
  readonly k?: number;
}

/** Per-user counts, kept separate so that differences can be bootstrapped over users. */
export interface UserScore {
  transitions: number;
  hit1: number;
  hitK: number;
  horizonHit: number;
}

export interface ReplayScore {
  readonly transitions: number;
  readonly hit1: number;
  readonly hitK: number;
  readonly horizonHit: number;
  /** Distinct clusters served as top-1. */
  readonly coverage: number;
  /** Transitions that happened before any table of the strategy was live. */
  readonly unserved: number;
  readonly perUser: ReadonlyMap<string, UserScore>;
  /** How many times each cluster was served as top-1 (for popularity bias). */
  readonly served: ReadonlyMap<string, number>;
}

export function scoreTransitions(transitions: readonly TimedTransition[], timeline: readonly LiveTableEntry[], options: ScoreOptions = {}): ReplayScore {
  const k = options.k ?? 5;
  const tables = [...timeline].sort((a, b) => a.publishedAt - b.publishedAt);
  const perUser = new Map<string, UserScore>();
  const served = new Map<string, number>();
  let hit1 = 0;
  let hitK = 0;
  let horizonHit = 0;
  let unserved = 0;
  for (const t of transitions) {
    const table = liveAt(tables, t.ts);
    const answers = table ? table.answers(t.c1, t.c2) : [];
    if (!table) unserved++;
    let user = perUser.get(t.userId);
    if (!user) perUser.set(t.userId, (user = { transitions: 0, hit1: 0, hitK: 0, horizonHit: 0 }));
    user.transitions++;
    const top = answers[0];
    if (top !== undefined) served.set(top, (served.get(top) ?? 0) + 1);
    if (top === t.next) {
      hit1++;
      user.hit1++;
    }
    if (answers.slice(0, k).includes(t.next)) {
      hitK++;
      user.hitK++;
    }
    if (top !== undefined && t.horizon.includes(top)) {
      horizonHit++;
      user.horizonHit++;
    }
  }
  const n = transitions.length;
  return {
    transitions: n,
    hit1: n ? hit1 / n : 0,
    hitK: n ? hitK / n : 0,
    horizonHit: n ? horizonHit / n : 0,
    coverage: served.size,
    unserved,
    perUser,
    served,
  };
}

/** The last table published at or before `ts` (binary search over tables sorted by publish time). */
export function liveAt<T extends { publishedAt: number }>(tables: readonly T[], ts: number): T | null {
  let lo = 0;
  let hi = tables.length - 1;
  let found: T | null = null;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (tables[mid].publishedAt <= ts) {
      found = tables[mid];
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}
