/**
 * Loads a table version into a serving lookup without stalling requests: rows are read page by page (the store's
 * `rows()` pages through SQLite) and the loader yields to the event loop between pages, so requests keep being
 * answered from the current table while the next one loads; only the final dense layout (`TableLookup.fromPacked`)
 * runs in one piece. The intermediate columns are dropped once the lookup exists, so the resident cost of a table is
 * its lookup (8 bytes per answer slot, clusters^2 x topN).
 *
 * @example
 * const lookup = await loadLookup(store, "t000042");
 */
import { FreshrecError } from "../domain/errors.js";
import { TableLookup, type TableLookupOptions, type TableStore } from "../tables/index.js";

export interface LoadLookupOptions extends TableLookupOptions {
  /** Rows decoded between two yields to the event loop. @defaultValue 2000 */
  readonly rowsPerSlice?: number;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export async function loadLookup(store: TableStore, version: string, options: LoadLookupOptions = {}): Promise<TableLookup> {
  const info = store.get(version);
  const topN = info.topN;
  const n = info.rows;
  const c1 = new Int32Array(n);
  const c2 = new Int32Array(n);
  const answerIds = new Int32Array(n * topN).fill(-1);
  const scores = new Float32Array(n * topN);
  const dictionary = new Map<string, number>();
  const idOf = (cluster: string) => {
    let id = dictionary.get(cluster);
    if (id === undefined) dictionary.set(cluster, (id = dictionary.size));
    return id;
  };
  const slice = options.rowsPerSlice ?? 2000;
  let r = 0;
  for (const row of store.rows(version)) {
    // A table is immutable once finished, so its row count cannot change under the iterator.
    if (r >= n) break;
    c1[r] = idOf(row.c1);
    c2[r] = idOf(row.c2);
    const base = r * topN;
    const answers = row.answers;
    for (let a = 0; a < answers.length && a < topN; a++) {
      answerIds[base + a] = idOf(answers[a].cluster);
      scores[base + a] = answers[a].score;
    }
    r++;
    if (r % slice === 0) await yieldToEventLoop();
  }
  // Fewer rows than recorded: the version was garbage-collected while loading. Never serve a partial table.
  if (r !== n) throw new FreshrecError("NOT_FOUND", `table ${version} disappeared while loading (${r} of ${n} rows read)`);
  return TableLookup.fromPacked(
    { version, modelVersion: info.modelVersion, topN, clusters: [...dictionary.keys()], c1: c1.subarray(0, r), c2: c2.subarray(0, r), answerIds, scores },
    options,
  );
}
