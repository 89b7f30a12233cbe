/**
 * The non-LLM strategies a team would otherwise pick, as table scorers, so that they are built, published and
 * replayed by exactly the same code as the LLM tables:
 * - `popular-novel`: the globally most frequent novel next clusters of the recent window, same for every pair;
 * - `successor-top1`: serve the retrieved context directly (the pair's most frequent recent successors), then
 *   fall back to popular-novel.
 */
import type { ScoredCluster, TransitionCount } from "../domain/types.js";
import type { PromptInput } from "../llm/prompt.js";
import type { PromptScorer } from "./generate.js";

/** Next-cluster popularity over counted transitions, most frequent first (ties by id). */
export function novelPopularity(counts: readonly TransitionCount[], clusters: readonly string[]): ScoredCluster[] {
  const nextUsers = new Map<string, number>();
  for (const t of counts) nextUsers.set(t.next, (nextUsers.get(t.next) ?? 0) + t.users);
  return rankNextClusters(nextUsers, clusters);
}

/** `novelPopularity` from users per next cluster (a RAG snapshot's `nextUsers`): every cluster, shares of the total. */
export function rankNextClusters(nextUsers: ReadonlyMap<string, number>, clusters: readonly string[]): ScoredCluster[] {
  const totals = new Map<string, number>(clusters.map((c) => [c, 0]));
  let sum = 0;
  for (const [next, users] of nextUsers) {
    totals.set(next, (totals.get(next) ?? 0) + users);
    sum += users;
  }
  return [...totals]
    .map(([cluster, n]) => ({ cluster, score: sum ? n / sum : 0 }))
    .sort((a, b) => b.score - a.score || (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0));
}

export class PopularNovelScorer implements PromptScorer {
  readonly computed = true;
  constructor(private readonly popularity: readonly ScoredCluster[]) {}
  async score(prompts: readonly PromptInput[], topN: number): Promise<ScoredCluster[][]> {
    return prompts.map((p) => this.popularity.filter((a) => a.cluster !== p.history.c1 && a.cluster !== p.history.c2).slice(0, topN));
  }
}

export class SuccessorScorer implements PromptScorer {
  readonly computed = true;
  private readonly fallback: PopularNovelScorer;
  constructor(popularity: readonly ScoredCluster[]) {
    this.fallback = new PopularNovelScorer(popularity);
  }
  async score(prompts: readonly PromptInput[], topN: number): Promise<ScoredCluster[][]> {
    const popular = await this.fallback.score(prompts, topN + 8);
    return prompts.map((p, k) => {
      const retrieved = (p.context?.successors ?? []).filter((c) => c !== p.history.c1 && c !== p.history.c2);
      // Retrieved successors rank above every popularity score (which lies in [0, 1]).
      const head = retrieved.map((cluster, rank) => ({ cluster, score: 2 - rank / (retrieved.length + 1) }));
      const seen = new Set(retrieved);
      return [...head, ...popular[k].filter((a) => !seen.has(a.cluster))].slice(0, topN);
    });
  }
}
