/**
 * The embedded item policies over a `GroundingIndex` (see ./contract.ts for the contract):
 * - `CoVisitationPolicy`: items of the cluster co-visited with the user's recent items, the more recent the item the
 *   more its co-visits weigh (1 / (1 + position)); then recent popularity inside the cluster fills the rest;
 * - `PopularityPolicy`: recent popularity inside the cluster alone (the fallback, and a baseline).
 *
 * Both read the index through a getter, so a rebuilt index is swapped in whole and a request reads one version.
 *
 * @example
 * const policy = new CoVisitationPolicy(() => holder.current);
 * policy.ground({ userId: "u1", clusters: [3, 9], n: 3, recent: [120, 44], isSeen: () => false });
 */
import type { GroundedItem, GroundingRequest, ItemPolicy } from "./contract.js";
import type { GroundingIndex } from "./grounding-index.js";

/**
 * Marks "chosen in this list" without allocating a Set per list: an item is chosen when its stamp equals the list's
 * generation. Requests run one at a time on the event loop, so one marker per policy suffices.
 */
class ChosenMarker {
  private stamps = new Uint32Array(0);
  private generation = 0;
  next(items: number): void {
    if (this.stamps.length !== items) {
      this.stamps = new Uint32Array(items);
      this.generation = 0;
    }
    if (++this.generation === 0xffffffff) {
      this.stamps.fill(0);
      this.generation = 1;
    }
  }
  has(item: number): boolean {
    return this.stamps[item] === this.generation;
  }
  add(item: number): void {
    this.stamps[item] = this.generation;
  }
}

/** Appends popular items of cluster c not yet chosen nor seen, until `out` holds n. */
function fillFromPopularity(index: GroundingIndex, c: number, n: number, request: GroundingRequest, out: GroundedItem[], chosen: ChosenMarker): void {
  const end = index.popularStart[c + 1];
  for (let p = index.popularStart[c]; p < end && out.length < n; p++) {
    const item = index.popularItem[p];
    if (chosen.has(item) || request.isSeen(item)) continue;
    chosen.add(item);
    out.push({ item, score: index.popularWeight[p], source: "popularity" });
  }
}

export class PopularityPolicy implements ItemPolicy {
  readonly name = "popularity";
  private readonly chosen = new ChosenMarker();
  constructor(private readonly index: () => GroundingIndex) {}

  ground(request: GroundingRequest): GroundedItem[][] {
    const index = this.index();
    const result: GroundedItem[][] = [];
    for (let k = 0; k < request.clusters.length; k++) {
      const out: GroundedItem[] = [];
      this.chosen.next(index.neighborStart.length - 1);
      fillFromPopularity(index, request.clusters[k], request.n, request, out, this.chosen);
      result.push(out);
    }
    return result;
  }
}

export class CoVisitationPolicy implements ItemPolicy {
  readonly name = "co-visitation";
  /** Scratch score per item: reused across calls (requests run one at a time on the event loop). */
  private scores = new Float64Array(0);
  private readonly chosen = new ChosenMarker();

  constructor(private readonly index: () => GroundingIndex) {}

  ground(request: GroundingRequest): GroundedItem[][] {
    const index = this.index();
    const items = index.neighborStart.length - 1;
    if (this.scores.length !== items) this.scores = new Float64Array(items);
    const scores = this.scores;
    const result: GroundedItem[][] = [];
    const touched: number[] = [];
    for (let k = 0; k < request.clusters.length; k++) {
      const c = request.clusters[k];
      touched.length = 0;
      for (let r = 0; r < request.recent.length; r++) {
        const source = request.recent[r];
        if (source < 0 || source >= items) continue;
        const weight = 1 / (1 + r);
        const end = index.neighborStart[source + 1];
        for (let p = lowerBound(index.neighborCluster, index.neighborStart[source], end, c); p < end && index.neighborCluster[p] === c; p++) {
          const item = index.neighborItem[p];
          if (scores[item] === 0) touched.push(item);
          scores[item] += weight * index.neighborWeight[p];
        }
      }
      if (touched.length > 1) touched.sort((a, b) => scores[b] - scores[a] || a - b);
      const out: GroundedItem[] = [];
      this.chosen.next(items);
      for (let t = 0; t < touched.length && out.length < request.n; t++) {
        const item = touched[t];
        if (request.isSeen(item)) continue;
        this.chosen.add(item);
        out.push({ item, score: scores[item], source: "co-visitation" });
      }
      for (const item of touched) scores[item] = 0;
      fillFromPopularity(index, c, request.n, request, out, this.chosen);
      result.push(out);
    }
    return result;
  }
}

/** First position in [lo, hi) whose value is >= target (values sorted ascending). */
function lowerBound(values: Int32Array, lo: number, hi: number, target: number): number {
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (values[mid] < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
