/**
 * The catalog as serving holds it: clusters and items with dense indices, read from the event store at start. Serving
 * works on indices (typed arrays, no per-request allocation of strings); ids go in and out at the edges.
 *
 * On the embedded workspace items only enter the catalog through `freshrec ingest`/`synth`, which cannot run while the
 * server holds the event store, so the catalog never changes while serving. On a shared PostgreSQL store other
 * processes add clusters and items at any time, and change those there are (an ingest that gives an item another
 * cluster or title, a cluster another description): the store follower (./store-follower.ts) appends the new ones
 * here (`extend`) and takes the changes (`revise`). Indices only grow: an index once given keeps naming the same
 * cluster or item, so whatever holds one (a user's state, a grounding index) stays right; structures sized by the
 * counts of their time treat a larger index as one they do not know. What an item's index does not keep is its
 * cluster and its title, nor a cluster's its description: after a revision (`revision` moves), what was derived from
 * them (users' histories, the grounding index, the exploration JSON writer's cached text) is derived again by
 * whoever holds it.
 *
 * @example
 * const catalog = await Catalog.load(events);
 * const i = catalog.itemIndex.get("baking-0007"); // dense index, or undefined
 * catalog.clusterIds[catalog.itemCluster[i]];     // "baking"
 */
import type { EventStoreContract } from "../data/event-store.js";
import { FreshrecError } from "../domain/errors.js";

/** A cluster or item as the store holds it, with its store key. */
export interface StoredCluster {
  readonly key: number;
  readonly id: string;
  readonly description: string;
}

export interface StoredItem {
  readonly key: number;
  readonly id: string;
  readonly clusterKey: number;
  readonly title: string | null;
}

export class Catalog {
  private constructor(
    private readonly clusterIdList: string[],
    private readonly descriptionList: string[],
    private readonly clusterIndexMap: Map<string, number>,
    private readonly itemIdList: string[],
    private readonly itemTitleList: (string | null)[],
    private readonly itemIndexMap: Map<string, number>,
    private itemClusterArray: Int32Array,
    private itemOfKeyArray: Int32Array,
    private clusterOfKeyArray: Int32Array,
  ) {}

  /** Times `revise` changed something: what text derived from descriptions and titles is made again after. */
  private revisions = 0;

  static async load(store: EventStoreContract): Promise<Catalog> {
    const clusters = await store.query<{ k: number; id: string; d: string }>(
      "SELECT cluster_key AS k, cluster_id AS id, description AS d FROM clusters ORDER BY cluster_key",
    );
    const read = await store.queryColumns("SELECT item_key, item_id, cluster_key, title FROM items ORDER BY item_key");
    const [keys, ids, clusterKeys, titles] = read.rowCount ? (read.columns as [number[], string[], number[], (string | null)[]]) : [[], [], [], []];
    const catalog = new Catalog([], [], new Map(), [], [], new Map(), new Int32Array(0), new Int32Array(1).fill(-1), new Int32Array(1).fill(-1));
    catalog.extend(
      clusters.map((c) => ({ key: c.k, id: c.id, description: c.d })),
      keys.map((key, i) => ({ key, id: ids[i], clusterKey: clusterKeys[i], title: titles[i] })),
    );
    return catalog;
  }

  /**
   * Appends clusters and items the store added after those the catalog holds, each list in key order with keys above
   * `lastClusterKey` and `lastItemKey` (the store gives keys in append order, and `Catalog.load` reads them in that
   * order too). Items are taken up to the first whose cluster neither the catalog nor `clusters` holds (its cluster
   * was committed after the clusters were read): it and the items after it come with a later `extend`, which asks
   * for the keys above the last one taken.
   * @returns how many clusters and items were added.
   */
  extend(clusters: readonly StoredCluster[], items: readonly StoredItem[]): { clusters: number; items: number } {
    let clustersAdded = 0;
    let itemsAdded = 0;
    const lastClusterKey = clusters.reduce((m, c) => Math.max(m, c.key), this.lastClusterKey);
    if (lastClusterKey > this.lastClusterKey) {
      const grown = new Int32Array(lastClusterKey + 1).fill(-1);
      grown.set(this.clusterOfKeyArray);
      this.clusterOfKeyArray = grown;
    }
    for (const c of clusters) {
      if (this.clusterOfKeyArray[c.key] >= 0 || this.clusterIndexMap.has(c.id)) continue;
      const index = this.clusterIdList.length;
      this.clusterIdList.push(c.id);
      this.descriptionList.push(c.description);
      this.clusterIndexMap.set(c.id, index);
      this.clusterOfKeyArray[c.key] = index;
      clustersAdded++;
    }
    const fresh: StoredItem[] = [];
    for (const it of items) {
      if (it.key <= this.lastItemKey || this.itemIndexMap.has(it.id)) continue;
      if ((this.clusterOfKeyArray[it.clusterKey] ?? -1) < 0) break;
      fresh.push(it);
    }
    if (fresh.length) {
      const lastItemKey = fresh.reduce((m, it) => Math.max(m, it.key), this.lastItemKey);
      const itemOfKey = new Int32Array(lastItemKey + 1).fill(-1);
      itemOfKey.set(this.itemOfKeyArray);
      const itemCluster = new Int32Array(this.itemIdList.length + fresh.length);
      itemCluster.set(this.itemClusterArray);
      for (const it of fresh) {
        const index = this.itemIdList.length;
        this.itemIdList.push(it.id);
        this.itemTitleList.push(it.title);
        this.itemIndexMap.set(it.id, index);
        itemOfKey[it.key] = index;
        itemCluster[index] = this.clusterOfKeyArray[it.clusterKey];
        itemsAdded++;
      }
      // Swapped whole: a reader holding the old arrays still reads every index it knew.
      this.itemOfKeyArray = itemOfKey;
      this.itemClusterArray = itemCluster;
    }
    return { clusters: clustersAdded, items: itemsAdded };
  }

  /**
   * Takes the store's changes to clusters and items the catalog holds, each as the store holds it now: a cluster's
   * description, an item's cluster (a move) or title. A row the catalog does not hold is left to `extend`.
   * @returns how many clusters and items changed here, and the store keys of the items that changed cluster (every
   * event of such an item is now in its new cluster, past ones too: the histories holding one are no longer right).
   * @throws FreshrecError when an item's new cluster is one the catalog does not hold (`extend` the catalog first).
   */
  revise(clusters: readonly StoredCluster[], items: readonly StoredItem[]): { clusters: number; items: number; moved: number[] } {
    let clustersChanged = 0;
    for (const c of clusters) {
      const index = this.clusterOfKeyArray[c.key] ?? -1;
      if (index < 0 || this.descriptionList[index] === c.description) continue;
      this.descriptionList[index] = c.description;
      clustersChanged++;
    }
    let itemsChanged = 0;
    const moved: number[] = [];
    for (const it of items) {
      const index = this.itemOfKeyArray[it.key] ?? -1;
      if (index < 0) continue;
      const cluster = this.clusterOfKeyArray[it.clusterKey] ?? -1;
      if (cluster < 0) {
        throw new FreshrecError("INTERNAL", `item ${it.id} moved to the cluster of store key ${it.clusterKey}, which the catalog does not hold`);
      }
      const movedHere = this.itemClusterArray[index] !== cluster;
      if (!movedHere && this.itemTitleList[index] === it.title) continue;
      this.itemClusterArray[index] = cluster;
      this.itemTitleList[index] = it.title;
      if (movedHere) moved.push(it.key);
      itemsChanged++;
    }
    if (clustersChanged + itemsChanged > 0) this.revisions++;
    return { clusters: clustersChanged, items: itemsChanged, moved };
  }

  /**
   * How many times `revise` changed a description, title or cluster in place: what caches text by index (the
   * exploration JSON writer's fragments) makes it again when this moves.
   */
  get revision(): number {
    return this.revisions;
  }

  get clusterIds(): readonly string[] {
    return this.clusterIdList;
  }

  get descriptions(): readonly string[] {
    return this.descriptionList;
  }

  get clusterIndex(): ReadonlyMap<string, number> {
    return this.clusterIndexMap;
  }

  get itemIds(): readonly string[] {
    return this.itemIdList;
  }

  get itemTitles(): readonly (string | null)[] {
    return this.itemTitleList;
  }

  get itemIndex(): ReadonlyMap<string, number> {
    return this.itemIndexMap;
  }

  /** Cluster index of each item. */
  get itemCluster(): Int32Array {
    return this.itemClusterArray;
  }

  /** Event-store item key -> dense item index (-1 for none; undefined past the largest key read). */
  get itemOfKey(): Int32Array {
    return this.itemOfKeyArray;
  }

  /** Event-store cluster key -> dense cluster index (-1 for none; undefined past the largest key read). */
  get clusterOfKey(): Int32Array {
    return this.clusterOfKeyArray;
  }

  /** The largest item key read from the store (0 before any). */
  get lastItemKey(): number {
    return this.itemOfKeyArray.length - 1;
  }

  /** The largest cluster key read from the store (0 before any). */
  get lastClusterKey(): number {
    return this.clusterOfKeyArray.length - 1;
  }

  get clusterCount(): number {
    return this.clusterIdList.length;
  }

  get itemCount(): number {
    return this.itemIdList.length;
  }

  /** Cluster id of an item id, or undefined for an item not in the catalog. */
  clusterOfItem(itemId: string): string | undefined {
    const i = this.itemIndexMap.get(itemId);
    return i === undefined ? undefined : this.clusterIdList[this.itemCluster[i]];
  }
}
