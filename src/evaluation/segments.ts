/**
 * Replay segments: where a strategy wins. Every scored transition is labelled by the evidence its pair had (the
 * pair's distinct users in the 14 days before the transition's day: none 0-1, sparse 2-4, dense 5+), by whether
 * its next cluster was new (first seen within 30 days before), and by whether its user was new (first event within
 * 30 days before). An LLM prior should help most where the counts are thin: sparse pairs, new clusters, new users.
 *
 * @example
 * const labels = await segmentLabels(events, transitions, clusters, { positiveMin });
 * const bySegment = segmentOf(transitions, labels); // Map<"evidence:sparse", TimedTransition[]>
 */
import type { EventStoreContract } from "../data/event-store.js";
import { DAY_MS } from "../domain/clock.js";
import { EvidenceLog } from "../mining/evidence.js";
import { firstSeen } from "../mining/first-seen.js";
import type { MiningOptions, TimedTransition } from "../mining/transitions.js";

/** Days of evidence a transition's pair is judged by, and how recent a "new" cluster or user is. */
export const SEGMENT_EVIDENCE_DAYS = 14;
export const SEGMENT_NEW_DAYS = 30;

export const SEGMENTS = ["evidence:none", "evidence:sparse", "evidence:dense", "cluster:new", "user:new"] as const;
export type SegmentName = (typeof SEGMENTS)[number];

/** The segments each transition (by index) belongs to. */
export async function segmentLabels(
  events: EventStoreContract,
  transitions: readonly TimedTransition[],
  clusters: readonly string[],
  options: MiningOptions = {},
): Promise<SegmentName[][]> {
  if (transitions.length === 0) return [];
  // A loop, not Math.min(...): a replay scores hundreds of thousands of transitions, past the argument limit.
  let first = Number.POSITIVE_INFINITY;
  let last = Number.NEGATIVE_INFINITY;
  for (const t of transitions) {
    if (t.ts < first) first = t.ts;
    if (t.ts > last) last = t.ts;
  }
  const dayOf = (ts: number) => Math.floor(ts / DAY_MS) * DAY_MS;
  const log = await EvidenceLog.load(events, { from: dayOf(first) - SEGMENT_EVIDENCE_DAYS * DAY_MS, to: dayOf(last) + DAY_MS }, clusters, options);
  const index = new Map(clusters.map((c, i) => [c, i]));
  const K = clusters.length;
  const pairUsersByDay = new Map<number, Map<number, number>>();
  const pairUsers = (day: number, p: number) => {
    let users = pairUsersByDay.get(day);
    if (!users) {
      // Only events before the day count: the evidence a refresh at the day's start could have had.
      const counts = log.counts({ from: day - SEGMENT_EVIDENCE_DAYS * DAY_MS, to: day });
      users = new Map([...counts.pairs].map(([pair, e]) => [pair, e.total]));
      pairUsersByDay.set(day, users);
    }
    return users.get(p) ?? 0;
  };
  const clusterFirst = await firstSeen(events, "cluster", options);
  const userFirst = await firstSeen(events, "user", options);
  return transitions.map((t) => {
    const labels: SegmentName[] = [];
    const i1 = index.get(t.c1);
    const i2 = index.get(t.c2);
    const users = i1 === undefined || i2 === undefined ? 0 : pairUsers(dayOf(t.ts), i1 * K + i2);
    labels.push(users >= 5 ? "evidence:dense" : users >= 2 ? "evidence:sparse" : "evidence:none");
    if (t.ts - (clusterFirst.get(t.next) ?? t.ts) <= SEGMENT_NEW_DAYS * DAY_MS) labels.push("cluster:new");
    if (t.ts - (userFirst.get(t.userId) ?? t.ts) <= SEGMENT_NEW_DAYS * DAY_MS) labels.push("user:new");
    return labels;
  });
}

/** The transitions of each segment, in their original order. */
export function segmentOf(transitions: readonly TimedTransition[], labels: readonly SegmentName[][]): Map<SegmentName, TimedTransition[]> {
  const out = new Map<SegmentName, TimedTransition[]>(SEGMENTS.map((s) => [s, []]));
  transitions.forEach((t, i) => {
    for (const s of labels[i]) out.get(s)!.push(t);
  });
  return out;
}
