/**
 * Loads a table version into a serving lookup without stalling requests: rows are read page by page (the store's
 * `packedPages`) and the loader yields to the event loop between pages, so requests keep being answered from the
 * current table while the next one loads. Pages are decoded straight into the lookup's dense arrays
 * (`TableLookup.builder`), so the resident cost of a table is its lookup (6 bytes per answer slot,
 * clusters^2 x topN) and loading never holds a second copy of the table.
 *
 * @example
 * const lookup = await loadLookup(store, "t000042");
 */
import { TableLookup, type TableLookupOptions, type TableStoreContract } from "../tables/index.js";

export interface LoadLookupOptions extends TableLookupOptions {
  /** Rows decoded between two yields to the event loop. @defaultValue 2000 */
  readonly rowsPerSlice?: number;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export async function loadLookup(store: TableStoreContract, version: string, options: LoadLookupOptions = {}): Promise<TableLookup> {
  const rowsPerSlice = options.rowsPerSlice ?? 2000;
  const pages = store.packedPages(version, rowsPerSlice);
  let builder: ReturnType<typeof TableLookup.builder>;
  try {
    for (let step = await pages.next(); ; step = await pages.next()) {
      if (step.done) {
        // A table without rows yields no page.
        builder ??= TableLookup.builder(step.value, options);
        if (builder) return builder.finish();
        break;
      }
      builder ??= TableLookup.builder(step.value.header, options);
      // Too many clusters in the dictionary for the dense layout over all of them (the table itself may use fewer).
      if (!builder) break;
      builder.add(step.value);
      await yieldToEventLoop();
    }
  } finally {
    // Ends the scan however the loop ends (a full dictionary, an error), so the store's scan settings are restored.
    await pages.return(undefined as never);
  }
  return TableLookup.fromPacked(await store.packed(version), options);
}
