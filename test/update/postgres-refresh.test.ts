/**
 * The update path on a deployment's stores (issue 19): the refresh jobs and fine-tuning curation run on the
 * PostgreSQL event and table stores exactly as on the embedded workspace (DuckDB events, SQLite tables). Same world,
 * same jobs: the same tables row for row (fusion and in-prompt RAG, an incremental build copying inside the
 * database), the same fit and the same curated set.
 */
import { describe, expect, it } from "vitest";
import { EventStore, type EventStoreContract } from "../../src/data/event-store.js";
import { PostgresEventStore } from "../../src/data/postgres-event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld } from "../../src/data/synthetic/index.js";
import { DAY_MS, VirtualClock } from "../../src/domain/clock.js";
import { countTransitions } from "../../src/mining/transitions.js";
import { PostgresTableStore, SqliteTableStore, tableStorePath, type StoredTableRow, type TableStoreContract } from "../../src/tables/index.js";
import { novelPopularity, SuccessorScorer } from "../../src/update/baselines.js";
import { curateFineTuningSet } from "../../src/update/curation.js";
import { baselineRefreshJob } from "../../src/update/jobs.js";
import { runRefresh } from "../../src/update/refresh.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();

/** Rows in pair order; explanations as bytes (SQLite gives a Uint8Array, PostgreSQL a Buffer of the same bytes). */
async function rowsOf(store: TableStoreContract | SqliteTableStore, version: string): Promise<StoredTableRow[]> {
  const rows: StoredTableRow[] = [];
  for await (const row of store.rows(version)) {
    const e = row.explanation;
    rows.push({ ...row, explanation: e instanceof Uint8Array ? Uint8Array.from(e) : (e ?? null) });
  }
  return rows.sort((a, b) => (`${a.c1}\u0000${a.c2}` < `${b.c1}\u0000${b.c2}` ? -1 : 1));
}

interface Stores {
  readonly events: EventStoreContract;
  readonly tables: TableStoreContract | SqliteTableStore;
  close(): Promise<void>;
}

describe("the update path on PostgreSQL", () => {
  it("refreshes (fusion, in-prompt RAG, incremental) and curates as on the embedded workspace", async () => {
    const world = new SyntheticWorld({ seed: 11, months: 2, users: 300, targetEvents: 20_000, clustersPerDomain: 3, itemsPerCluster: 10 });
    const asOf = world.endMs;
    const clock = new VirtualClock(asOf);
    const url = await database();
    const embedded: Stores = await (async () => {
      const events = await EventStore.open(":memory:");
      const tables = SqliteTableStore.open(tableStorePath(tempDir("freshrec-pgrefresh-")), clock);
      return { events, tables, close: async () => (tables.close(), events.close()) };
    })();
    const deployment: Stores = await (async () => {
      const events = await PostgresEventStore.open(url);
      const tables = await PostgresTableStore.open(url, clock);
      return { events, tables, close: async () => (await tables.close(), await events.close()) };
    })();
    try {
      const positiveMin = world.options.positiveThreshold;
      const results = [];
      for (const stores of [embedded, deployment]) {
        await ingestSynthetic(stores.events, world);
        const clusters = (await stores.events.clusters()).map((c) => c.id);
        const base = { events: stores.events, tables: stores.tables, clusters, templateHash: "baseline", topN: 8 };
        // The counts-backoff posterior: evidence mined in the store, fitted, one explained row per pair.
        const fused = await baselineRefreshJob("counts-backoff", { ...base, rag: { positiveMin } })({ asOf, clock, signal: new AbortController().signal, job: "refresh", trigger: "scheduled" });
        const popularity = novelPopularity(await countTransitions(stores.events, { from: asOf - 14 * DAY_MS, to: asOf }, { positiveMin }), clusters);
        const prompted = { ...base, rag: { windowDays: 14, minSupport: 1, positiveMin, method: "prompt" as const }, model: { version: "successor", scorer: new SuccessorScorer(popularity) } };
        const first = await runRefresh(asOf, prompted);
        // Nothing changed: every row is copied from the previous table inside the store.
        const again = await runRefresh(asOf, prompted);
        const set = await curateFineTuningSet(stores.events, asOf, { positiveMin, windowDays: 30, testDays: 7, maxSamples: 500, contextShare: 0.5, rag: { windowDays: 7, minSupport: 1 } });
        results.push({ stores, fused, first, again, set, pairs: clusters.length * (clusters.length - 1) });
      }
      const [onEmbedded, onPostgres] = results;
      expect(onPostgres.fused.status).toBe("succeeded");
      expect(onPostgres.fused.detail).toEqual(onEmbedded.fused.detail);
      const fusedVersion = onPostgres.fused.detail!.tableVersion as string;
      expect(await rowsOf(onPostgres.stores.tables, fusedVersion)).toEqual(await rowsOf(onEmbedded.stores.tables, fusedVersion));
      expect((await rowsOf(onPostgres.stores.tables, fusedVersion))[0].explanation).toBeInstanceOf(Uint8Array);

      const { seconds: _s1, promptsPerSecond: _p1, retrieveSeconds: _r1, phases: _f1, ...first } = onPostgres.first;
      const { seconds: _s2, promptsPerSecond: _p2, retrieveSeconds: _r2, phases: _f2, ...firstEmbedded } = onEmbedded.first;
      expect(first).toEqual(firstEmbedded);
      expect(first).toMatchObject({ rescored: onPostgres.pairs, copied: 0, published: true });
      expect(onPostgres.again).toMatchObject({ rescored: 0, copied: onPostgres.pairs, published: true });
      expect(await (onPostgres.stores.tables as TableStoreContract).live()).toMatchObject({ version: onPostgres.again.tableVersion, parent: first.tableVersion });
      expect(await rowsOf(onPostgres.stores.tables, onPostgres.again.tableVersion)).toEqual(await rowsOf(onEmbedded.stores.tables, onEmbedded.first.tableVersion));

      expect(onPostgres.set.train.length).toBeGreaterThan(0);
      expect(onPostgres.set).toEqual(onEmbedded.set);
    } finally {
      await embedded.close();
      await deployment.close();
    }
  }, 300_000);
});
