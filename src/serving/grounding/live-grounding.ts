/**
 * The grounding index a server answers from, and when it is built again: every serve.groundingRebuildMinutes (the
 * recent window moves on), and as soon as the catalog changes. The index files each item under the cluster the catalog
 * gave it when the index was built, so until it is built again an item that a shared store's follower moved to another
 * cluster is still recommended under its old one and a new item under none (./grounding-index.ts; the follower:
 * ../store-follower.ts).
 *
 * Rebuilds run one at a time and off the request path: requests keep reading the index they have until the new one is
 * swapped in whole. A rebuild asked for while one runs makes one more run after it, however many ask meanwhile: a
 * burst of catalog changes costs the running rebuild and one more, and an index whose build began before a change
 * never replaces one whose build began after it. A rebuild after a catalog change that fails leaves the index `stale`,
 * and the server's poll (`rebuildIfStale`, every serve.reloadIntervalMs) tries again: the follower reports a change
 * once, so nothing else would until the periodic rebuild.
 *
 * @example
 * const grounding = new LiveGrounding(await build(), build, { now: () => clock.now() });
 * const follower = new StoreFollower(store, catalog, users, since, { now, onCatalogChange: () => void grounding.catalogChanged().catch(log) });
 * policy.ground(...); // reads grounding.current
 */
import type { GroundingIndex } from "./grounding-index.js";

export interface LiveGroundingOptions {
  /** The server clock's now (epoch ms). */
  readonly now: () => number;
  /** After each rebuild swapped a new index in. */
  readonly onRebuilt?: (index: GroundingIndex) => void;
}

export class LiveGrounding {
  private index: GroundingIndex;
  private built: number;
  private running: Promise<void> | null = null;
  private again = false;
  /** Catalog changes reported so far, and how many of them the current index was built after. */
  private changes = 0;
  private covered = 0;
  private closed = false;

  /**
   * @param initial the index built at start, over the catalog as it was then.
   * @param build builds an index from the event store and the catalog as they are now.
   */
  constructor(
    initial: GroundingIndex,
    private readonly build: () => Promise<GroundingIndex>,
    private readonly options: LiveGroundingOptions,
  ) {
    this.index = initial;
    this.built = options.now();
  }

  /** The index requests read now. */
  get current(): GroundingIndex {
    return this.index;
  }

  /** When the current index was swapped in (epoch ms, the server clock). */
  get builtAt(): number {
    return this.built;
  }

  /** Whether the catalog changed after the build of the current index began (a rebuild is running, or failed). */
  get stale(): boolean {
    return this.covered < this.changes;
  }

  /** The catalog gained or changed clusters or items: rebuilds (see `rebuild`). */
  catalogChanged(): Promise<void> {
    this.changes++;
    return this.rebuild();
  }

  /**
   * Rebuilds when `stale` and no rebuild runs (the one after a catalog change failed). A running rebuild either began
   * after the last change or goes round once more for it, so this asks for nothing more then.
   */
  rebuildIfStale(): Promise<void> {
    if (this.running) return this.running;
    return this.stale ? this.rebuild() : Promise.resolve();
  }

  /**
   * Builds the index again and swaps it in. Resolves when this call's rebuild, or one begun after it, has swapped its
   * index in; rejects with the build's error when that one failed (the previous index keeps serving).
   */
  rebuild(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    const run = (async () => {
      do {
        this.again = false;
        const changes = this.changes;
        const next = await this.build();
        if (this.closed) return;
        this.index = next;
        this.built = this.options.now();
        this.covered = changes;
        this.options.onRebuilt?.(next);
      } while (this.again && !this.closed);
    })();
    this.running = run.finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /** Stops rebuilding; waits for a running rebuild to end (before the event store closes). */
  async close(): Promise<void> {
    this.closed = true;
    await this.running?.catch(() => undefined);
  }
}
