/**
 * The catalog as serving holds it: clusters and items with dense indices, read once from the event store. Serving
 * works on indices (typed arrays, no per-request allocation of strings); ids go in and out at the edges.
 *
 * Items only enter the catalog through `freshrec ingest`/`synth`, which cannot run while the server holds the event
 * store, so the catalog never changes while serving.
 *
 * @example
 * const catalog = await Catalog.load(events);
 * const i = catalog.itemIndex.get("baking-0007"); // dense index, or undefined
 * catalog.clusterIds[catalog.itemCluster[i]];     // "baking"
 */
import type { EventStoreContract } from "../data/event-store.js";

export class Catalog {
  private constructor(
    readonly clusterIds: readonly string[],
    readonly descriptions: readonly string[],
    readonly clusterIndex: ReadonlyMap<string, number>,
    readonly itemIds: readonly string[],
    readonly itemTitles: readonly (string | null)[],
    readonly itemIndex: ReadonlyMap<string, number>,
    /** Cluster index of each item. */
    readonly itemCluster: Int32Array,
    /** Event-store item key -> dense item index (-1 for none); keys are small dense integers. */
    readonly itemOfKey: Int32Array,
    /** Event-store cluster key -> dense cluster index. */
    readonly clusterOfKey: Int32Array,
  ) {}

  static async load(store: EventStoreContract): Promise<Catalog> {
    const clusters = await store.query<{ k: number; id: string; d: string }>(
      "SELECT cluster_key AS k, cluster_id AS id, description AS d FROM clusters ORDER BY cluster_key",
    );
    const read = await store.queryColumns("SELECT item_key, item_id, cluster_key, title FROM items ORDER BY item_key");
    const [keys, ids, clusterKeys, titles] = read.rowCount ? (read.columns as [number[], string[], number[], (string | null)[]]) : [[], [], [], []];
    const maxClusterKey = clusters.reduce((m, c) => Math.max(m, c.k), 0);
    const clusterOfKey = new Int32Array(maxClusterKey + 1).fill(-1);
    clusters.forEach((c, i) => (clusterOfKey[c.k] = i));
    const maxItemKey = keys.reduce((m, k) => Math.max(m, k), 0);
    const itemOfKey = new Int32Array(maxItemKey + 1).fill(-1);
    const itemCluster = new Int32Array(keys.length);
    for (let i = 0; i < keys.length; i++) {
      itemOfKey[keys[i]] = i;
      itemCluster[i] = clusterOfKey[clusterKeys[i]];
    }
    return new Catalog(
      clusters.map((c) => c.id),
      clusters.map((c) => c.d),
      new Map(clusters.map((c, i) => [c.id, i])),
      ids,
      titles,
      new Map(ids.map((id, i) => [id, i])),
      itemCluster,
      itemOfKey,
      clusterOfKey,
    );
  }

  get clusterCount(): number {
    return this.clusterIds.length;
  }

  get itemCount(): number {
    return this.itemIds.length;
  }

  /** Cluster id of an item id, or undefined for an item not in the catalog. */
  clusterOfItem(itemId: string): string | undefined {
    const i = this.itemIndex.get(itemId);
    return i === undefined ? undefined : this.clusterIds[this.itemCluster[i]];
  }
}
