/**
 * Loads a table version into a serving lookup without stalling requests: rows are read page by page (the store's
 * `packedInPages`) and the loader yields to the event loop between pages, so requests keep being answered from the
 * current table while the next one loads; only the final dense layout (`TableLookup.fromPacked`) runs in one
 * piece. The intermediate columns are dropped once the lookup exists, so the resident cost of a table is its lookup
 * (6 bytes per answer slot, clusters^2 x topN).
 *
 * @example
 * const lookup = await loadLookup(store, "t000042");
 */
import { TableLookup, type TableLookupOptions, type TableStore } from "../tables/index.js";

export interface LoadLookupOptions extends TableLookupOptions {
  /** Rows decoded between two yields to the event loop. @defaultValue 2000 */
  readonly rowsPerSlice?: number;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export async function loadLookup(store: TableStore, version: string, options: LoadLookupOptions = {}): Promise<TableLookup> {
  const pages = store.packedInPages(version, options.rowsPerSlice ?? 2000);
  for (;;) {
    const step = pages.next();
    if (step.done) return TableLookup.fromPacked(step.value, options);
    await yieldToEventLoop();
  }
}
