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
 * Whether `item` is already in the list. A list holds at most `items` entries (<= 100, 3 by default): scanning it
 * allocates nothing and touches no catalog-sized memory (the per-item stamp array it replaces did both, for no
 * measurable speed: median throughput ratio 1.00 over 12 alternating load slices).
 */
function chosen(out: readonly GroundedItem[], item: number): boolean {
  for (let k = 0; k < out.length; k++) if (out[k].item === item) return true;
  return false;
}

/** Appends popular items of cluster c not yet chosen nor seen, until `out` holds n. */
function fillFromPopularity(index: GroundingIndex, c: number, n: number, request: GroundingRequest, out: GroundedItem[]): void {
  const end = index.popularStart[c + 1];
  for (let p = index.popularStart[c]; p < end && out.length < n; p++) {
    const item = index.popularEntries[2 * p];
    if (chosen(out, item) || request.isSeen(item)) continue;
    out.push({ item, score: index.popularEntryWeights[2 * p + 1], source: "popularity" });
  }
}

export class PopularityPolicy implements ItemPolicy {
  readonly name = "popularity";
  constructor(private readonly index: () => GroundingIndex) {}

  ground(request: GroundingRequest): GroundedItem[][] {
    const index = this.index();
    const result: GroundedItem[][] = [];
    for (let k = 0; k < request.clusters.length; k++) {
      const out: GroundedItem[] = [];
      fillFromPopularity(index, request.clusters[k], request.n, request, out);
      result.push(out);
    }
    return result;
  }
}

export class CoVisitationPolicy implements ItemPolicy {
  readonly name = "co-visitation";
  /** Scratch: per cluster, 1 + the position of its first request in `clusters`, 0 when not requested. */
  private slotOf = new Int32Array(0);
  /**
   * Scratch: the candidate lists of one request, reused by the next (emptied first): a request allocates only what
   * it returns. `ground` runs to completion without yielding, so one request's lists are never another's.
   */
  private readonly lists: Candidates[] = [];
  /** Scratch: the positions in `clusters` of the distinct requested clusters the index knows. */
  private distinct = new Int32Array(64);

  constructor(private readonly index: () => GroundingIndex) {}

  ground(request: GroundingRequest): GroundedItem[][] {
    const index = this.index();
    const items = index.neighborStart.length - 1;
    const clusterCount = index.popularStart.length - 1;
    if (this.slotOf.length !== clusterCount) this.slotOf = new Int32Array(clusterCount);
    const slotOf = this.slotOf;
    const wanted = request.clusters;
    // Per requested cluster, its candidates and their summed scores, side by side in typed arrays. A request meets a
    // few dozen candidates (45 on the serve bench's world), so finding one in its cluster's short list reads a line
    // or two, where a score array over the catalog cost a random memory access per candidate. A list that grows past
    // LIST_SCAN_LIMIT (many recent items, serve.recentItems up to 100) gets an index, so the cost stays linear.
    const candidates = this.lists;
    if (this.distinct.length < wanted.length) this.distinct = new Int32Array(wanted.length);
    for (let k = 0; k < wanted.length; k++) {
      const c = wanted[k];
      if (c >= 0 && c < clusterCount && slotOf[c] === 0) slotOf[c] = k + 1;
      if (k === candidates.length) candidates.push(new Candidates());
      candidates[k].clear();
    }
    // The distinct requested clusters the index knows, by their first position in `clusters`.
    let distinct = 0;
    for (let k = 0; k < wanted.length; k++) {
      const c = wanted[k];
      if (c >= 0 && c < clusterCount && slotOf[c] === k + 1) this.distinct[distinct++] = k;
    }
    // For each recent item, its run of each requested cluster, found through the item's cluster bits. Recent items
    // are visited in order, so every item's score is summed in the same order as one cluster at a time would: the
    // same floats.
    const { itemRuns, runOffset, neighbors, neighborWeights, itemClusterBits, clusterWords } = index;
    const recent = request.recent;
    for (let r = 0; r < recent.length; r++) {
      const source = recent[r];
      if (source < 0 || source >= items) continue;
      const weight = 1 / (1 + r);
      const bits = source * clusterWords;
      for (let d = 0; d < distinct; d++) {
        const k = this.distinct[d];
        const c = wanted[k];
        const word = itemClusterBits[bits + (c >> 5)];
        const bit = 1 << (c & 31);
        if ((word & bit) === 0) continue;
        // The run's number among the item's runs: how many of its clusters are below c.
        let rank = bitCount(word & (bit - 1));
        for (let w = bits; w < bits + (c >> 5); w++) rank += bitCount(itemClusterBits[w]);
        const q = itemRuns[source] + rank;
        const list = candidates[k];
        const end = runOffset[q + 1];
        for (let p = runOffset[q]; p < end; p++) list.add(neighbors[2 * p], weight * neighborWeights[2 * p + 1]);
      }
    }
    const result: GroundedItem[][] = [];
    for (let k = 0; k < wanted.length; k++) {
      const c = wanted[k];
      // A cluster asked for twice is ranked from its first slot's candidates: the same list again.
      const list = c >= 0 && c < clusterCount ? candidates[slotOf[c] - 1] : NO_CANDIDATES;
      const out: GroundedItem[] = [];
      for (let t = 0; t < list.size && out.length < request.n; t++) {
        // The best remaining candidate moves to t: only as much of the list is ordered as n unseen items need.
        list.takeBest(t);
        const item = list.items[t];
        if (request.isSeen(item)) continue;
        out.push({ item, score: list.scores[t], source: "co-visitation" });
      }
      fillFromPopularity(index, c, request.n, request, out);
      result.push(out);
    }
    for (let k = 0; k < wanted.length; k++) {
      const c = wanted[k];
      if (c >= 0 && c < clusterCount) slotOf[c] = 0;
    }
    return result;
  }
}

/**
 * A requested cluster's candidates: `scores[i]` is the summed co-visitation score of `items[i]`, for i < size. Typed
 * arrays reused from request to request: emptying one is setting `size` (emptying a JS array is a call into the
 * runtime), and finding an item scans a typed array in place.
 */
class Candidates {
  items = new Int32Array(64);
  scores = new Float64Array(64);
  size = 0;
  /** item -> position, once the list is longer than LIST_SCAN_LIMIT (valid until ranking reorders the list). */
  private index: Map<number, number> | null = null;

  clear(): void {
    this.size = 0;
    this.index = null;
  }

  /** Adds `score` to the item's sum, or appends the item with it. */
  add(item: number, score: number): void {
    const { items, size } = this;
    const index = this.index;
    let at = -1;
    if (index !== null) at = index.get(item) ?? -1;
    else {
      for (let i = 0; i < size; i++) {
        if (items[i] === item) {
          at = i;
          break;
        }
      }
    }
    if (at >= 0) {
      this.scores[at] += score;
      return;
    }
    if (size === items.length) this.grow();
    this.items[size] = item;
    this.scores[size] = score;
    this.size = size + 1;
    if (index !== null) index.set(item, size);
    else if (size + 1 > LIST_SCAN_LIMIT) {
      const made = new Map<number, number>();
      for (let i = 0; i <= size; i++) made.set(this.items[i], i);
      this.index = made;
    }
  }

  /**
   * Swaps the best of the candidates from `from` on to `from`: highest score, ties by lower item index (one step of
   * a selection sort, so the first k steps give the first k items of the fully sorted list).
   */
  takeBest(from: number): void {
    const { items, scores, size } = this;
    let best = from;
    for (let j = from + 1; j < size; j++) {
      if (scores[j] > scores[best] || (scores[j] === scores[best] && items[j] < items[best])) best = j;
    }
    if (best === from) return;
    const item = items[best];
    const score = scores[best];
    items[best] = items[from];
    scores[best] = scores[from];
    items[from] = item;
    scores[from] = score;
  }

  private grow(): void {
    const items = new Int32Array(2 * this.items.length);
    const scores = new Float64Array(2 * this.scores.length);
    items.set(this.items);
    scores.set(this.scores);
    this.items = items;
    this.scores = scores;
  }
}

/** Bits set in a 32-bit word. */
function bitCount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

const LIST_SCAN_LIMIT = 32;
const NO_CANDIDATES = new Candidates();
