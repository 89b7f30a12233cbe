/**
 * The item policy contract: the low-level half of the 2024 paper's hierarchical design. The table names novel
 * clusters; an item policy turns each into concrete items, restricted to that cluster and never repeating what the
 * user already engaged with.
 *
 * Adapters: `CoVisitationPolicy` (the embedded default: item-to-item co-visitation from the user's recent items,
 * restricted to the cluster, filled up with recent popularity inside the cluster) and `PopularityPolicy` (recent
 * popularity alone). A stronger item model (a sequential recommender restricted to the cluster) implements the same
 * interface. Every adapter runs the shared conformance suite in test/serving/item-policy-conformance.ts.
 *
 * Items and clusters are dense indices of the serving `Catalog`, so a request allocates no strings.
 *
 * @example
 * const policy = new CoVisitationPolicy(() => grounding.current);
 * const [forFirst, forSecond] = await policy.ground({ userId, clusters: [17, 4], n: 3, recent, isSeen });
 */

export interface GroundingRequest {
  readonly userId: string;
  /** Cluster indices to ground, in rank order. */
  readonly clusters: ArrayLike<number>;
  /** Items wanted per cluster. */
  readonly n: number;
  /** The user's most recent positively engaged items (item indices), newest first. */
  readonly recent: ArrayLike<number>;
  /** True for items the user already had an event with; they are never returned. */
  readonly isSeen: (item: number) => boolean;
}

export interface GroundedItem {
  /** Item index in the catalog. */
  readonly item: number;
  readonly score: number;
  /** Which signal chose it ("co-visitation", "popularity", or an adapter's own name). */
  readonly source: string;
}

export interface ItemPolicy {
  readonly name: string;
  /**
   * For each requested cluster (same order), at most `n` distinct items of exactly that cluster that the user has
   * not seen, best first. Deterministic for the same index and request.
   */
  ground(request: GroundingRequest): GroundedItem[][] | Promise<GroundedItem[][]>;
}
