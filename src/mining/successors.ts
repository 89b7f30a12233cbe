/**
 * Successor lists: for each history pair, its most frequent next clusters. Pure functions over mined counts,
 * shared by drift analysis and (later) RAG retrieval.
 */
import { pairKey, type SuccessorList, type TransitionCount } from "../domain/types.js";

export interface SuccessorOptions {
  /**
   * How many successors to keep per pair.
   * @defaultValue 5
   */
  readonly topK?: number;
  /**
   * Smallest total support (distinct-user transitions summed over successors) a pair needs to be listed.
   * @defaultValue 1
   */
  readonly minSupport?: number;
}


/**
 * Groups counts by pair and keeps the top-k successors, ranked by users descending, ties broken by cluster id
 * so that equal counts always give the same list.
 */
export function successorLists(counts: readonly TransitionCount[], options: SuccessorOptions = {}): Map<string, SuccessorList> {
  const topK = options.topK ?? 5;
  const minSupport = options.minSupport ?? 1;
  const grouped = new Map<string, { c1: string; c2: string; support: number; successors: { cluster: string; users: number }[] }>();
  for (const t of counts) {
    const key = pairKey(t.c1, t.c2);
    let g = grouped.get(key);
    if (!g) grouped.set(key, (g = { c1: t.c1, c2: t.c2, support: 0, successors: [] }));
    g.support += t.users;
    g.successors.push({ cluster: t.next, users: t.users });
  }
  const lists = new Map<string, SuccessorList>();
  for (const [key, g] of grouped) {
    if (g.support < minSupport) continue;
    g.successors.sort((a, b) => b.users - a.users || (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0));
    lists.set(key, { c1: g.c1, c2: g.c2, successors: g.successors.slice(0, topK) });
  }
  return lists;
}

export function jaccard(a: readonly string[], b: readonly string[]): number {
  const sa = new Set(a);
  const sb = new Set(b);
  let inter = 0;
  for (const x of sa) if (sb.has(x)) inter++;
  const union = sa.size + sb.size - inter;
  return union === 0 ? 1 : inter / union;
}
