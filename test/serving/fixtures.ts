/**
 * A small real workspace for the serving tests: a synthetic platform in DuckDB and two tables built by the
 * production refresh job with the non-LLM scorers (no model training needed): a table without retrieval
 * (popular-novel answers), a RAG table (the retrieved top successor first) and a fusion table of the counts.
 */
import { join } from "node:path";
import { EventStore } from "../../src/data/event-store.js";
import { PostgresEventStore } from "../../src/data/postgres-event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld } from "../../src/data/synthetic/index.js";
import { DAY_MS, VirtualClock } from "../../src/domain/clock.js";
import { countTransitions } from "../../src/mining/transitions.js";
import { PostgresTableStore, SqliteTableStore, tableStorePath } from "../../src/tables/index.js";
import { novelPopularity, PopularNovelScorer, SuccessorScorer } from "../../src/update/baselines.js";
import { runRefresh } from "../../src/update/refresh.js";
import { tempDir } from "../temp-dir.js";

export interface ServingWorkspace {
  readonly dir: string;
  readonly world: SyntheticWorld;
  /** Version of the table without retrieval ("finetune-monthly" stand-in). */
  readonly plain: string;
  /** Version of the RAG table (published, live). */
  readonly rag: string;
  /** Version of a fusion table of the counts (the counts-backoff posterior; ready, not published). */
  readonly fusion: string;
  readonly clusters: readonly string[];
}

export const TOKEN = "test-admin-token-0123456789";

export async function servingWorkspace(options: { users?: number; events?: number } = {}): Promise<ServingWorkspace> {
  const dir = tempDir("freshrec-serving-");
  const world = new SyntheticWorld({ seed: 5, months: 2, users: options.users ?? 400, targetEvents: options.events ?? 40_000, clustersPerDomain: 3, itemsPerCluster: 20 });
  const events = await EventStore.open(join(dir, "events.duckdb"));
  try {
    await ingestSynthetic(events, world);
    const clusters = (await events.clusters()).map((c) => c.id);
    const asOf = world.endMs;
    const positiveMin = world.options.positiveThreshold;
    const counts = await countTransitions(events, { from: asOf - 14 * DAY_MS, to: asOf }, { positiveMin });
    const popularity = novelPopularity(counts, clusters);
    const tables = SqliteTableStore.open(tableStorePath(dir), new VirtualClock(asOf));
    try {
      const base = { events, tables, clusters, templateHash: "baseline", topN: 10, publish: false };
      const plain = await runRefresh(asOf, { ...base, rag: null, model: { version: "popular", scorer: new PopularNovelScorer(popularity) }, strategy: "finetune-monthly" });
      const rag = await runRefresh(asOf, {
        ...base,
        rag: { windowDays: 14, minSupport: 1, positiveMin, method: "prompt" },
        model: { version: "successor", scorer: new SuccessorScorer(popularity) },
        strategy: "paper-hybrid",
      });
      const fusion = await runRefresh(asOf, {
        ...base,
        rag: { positiveMin, method: "fusion", fusion: { fitMinTransitions: 300 } },
        model: { version: "counts-backoff", scorer: new PopularNovelScorer(popularity), prior: null },
        strategy: "counts-backoff",
      });
      tables.publish(rag.tableVersion, { actor: "test" });
      return { dir, world, plain: plain.tableVersion, rag: rag.tableVersion, fusion: fusion.tableVersion, clusters };
    } finally {
      tables.close();
    }
  } finally {
    events.close();
  }
}

/**
 * A deployment's database at `url` holding the serving workspace's state: its synthetic events, and its tables in
 * version order (same versions), the live one published.
 */
export async function seedPostgres(url: string, ws: ServingWorkspace): Promise<void> {
  const events = await PostgresEventStore.open(url);
  const tables = await PostgresTableStore.open(url, new VirtualClock(ws.world.endMs));
  const source = SqliteTableStore.open(tableStorePath(ws.dir), new VirtualClock(0));
  try {
    await ingestSynthetic(events, ws.world);
    for (const info of source.list()) {
      const build = await tables.beginBuild(info);
      if (build.version !== info.version) throw new Error(`seedPostgres: table ${info.version} became ${build.version}`);
      await build.append(source.rows(info.version));
      await build.finish(info.stats!);
    }
    await tables.publish(source.live()!.version);
  } finally {
    source.close();
    await events.close();
    await tables.close();
  }
}
