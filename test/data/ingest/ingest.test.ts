import { describe, expect, it } from "vitest";
import { writeFileSync, readFileSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { EventStore } from "../../../src/data/event-store.js";
import { ingestFiles } from "../../../src/data/ingest/ingest.js";
import { ingestMovieLens, clusterByGenres } from "../../../src/data/ingest/movielens.js";
import { BadInputError } from "../../../src/domain/errors.js";
import { tempDir } from "../../temp-dir.js";

const DATASETS = join(import.meta.dirname, "../../../../shared/datasets");
const dir = () => tempDir("freshrec-ingest-");

function lineCount(path: string): number {
  return readFileSync(path, "utf8").split("\n").filter((l) => l.trim() !== "").length;
}

function writeCatalog(d: string): { clusters: string; items: string } {
  writeFileSync(join(d, "clusters.csv"), 'cluster_id,description\nbaking,"baking, desserts, pastry"\nhiking,"hiking, trails"\n');
  writeFileSync(join(d, "items.csv"), "item_id,cluster_id,title\ni1,baking,Sourdough\ni2,hiking,Alps\n");
  return { clusters: join(d, "clusters.csv"), items: join(d, "items.csv") };
}

describe("MovieLens adapter", () => {
  it("ingests ml-latest-small with counts matching the files", async () => {
    const path = join(DATASETS, "movielens-latest-small");
    const store = await EventStore.open(":memory:");
    const report = await ingestMovieLens(store, path);
    expect(report.events).toBe(lineCount(join(path, "ratings.csv")) - 1);
    expect(report.items).toBe(lineCount(join(path, "movies.csv")) - 1);
    expect(report.badRows).toBe(0);
    expect(report.clusters).toBeGreaterThanOrEqual(30);
    expect(report.clusters).toBeLessThanOrEqual(300);
    const counts = await store.counts();
    expect(counts.users).toBe(610);
    expect(await store.getMeta("positive_min")).toBe("4");
    // Readable keyword descriptions, one per cluster.
    const clusters = await store.clusters();
    expect(new Set(clusters.map((c) => c.description)).size).toBe(clusters.length);
    expect(clusters.map((c) => c.description)).toContain("comedy, romance");
    // Re-ingesting adds nothing.
    const again = await ingestMovieLens(store, path);
    expect(again.events).toBe(0);
    expect(again.skippedDuplicates).toBe(report.events);
    store.close();
  });

  it("ingests ml-100k with counts matching the files", async () => {
    const path = join(DATASETS, "movielens-100k");
    const store = await EventStore.open(":memory:");
    const report = await ingestMovieLens(store, path);
    expect(report).toMatchObject({ events: 100_000, items: 1682, badRows: 0, variant: "ml-100k" });
    expect(report.clusters).toBeGreaterThanOrEqual(30);
    expect((await store.counts()).users).toBe(943);
    store.close();
  });

  it("reads ml-100k titles as Latin-1", async () => {
    const d = dir();
    const src = join(DATASETS, "movielens-100k");
    for (const f of ["u.genre", "u.data"]) copyFileSync(join(src, f), join(d, f));
    const items = readFileSync(join(src, "u.item"), "latin1").split("\n");
    items[0] = items[0].replace("Toy Story (1995)", "Toy Story (1995) \u00e9t\u00e9");
    writeFileSync(join(d, "u.item"), Buffer.from(items.join("\n"), "latin1"));
    const store = await EventStore.open(":memory:");
    await ingestMovieLens(store, d);
    const [row] = await store.query<{ title: string }>("SELECT title FROM items WHERE item_id = '1'");
    expect(row.title).toBe("Toy Story (1995) \u00e9t\u00e9");
    store.close();
  });

  it("merges rare genre combinations into their nearest frequent parent", () => {
    const movies = [
      ...Array.from({ length: 6 }, (_, k) => ({ id: `cd${k}`, title: "", genres: ["Comedy", "Drama"] })),
      { id: "cdw", title: "", genres: ["Comedy", "Drama", "War"] },
      { id: "w", title: "", genres: ["War"] },
      { id: "none", title: "", genres: [] },
    ];
    const result = clusterByGenres(movies, ["Comedy", "Drama", "War"], 5);
    expect(result.assignment.get("cdw")).toBe("comedy+drama");
    expect(result.assignment.get("cd0")).toBe("comedy+drama");
    expect(result.assignment.get("w")).toBe("war");
    expect(result.assignment.get("none")).toBe("other");
    expect(result.clusters.find((c) => c.id === "comedy+drama")?.description).toBe("comedy, drama");
  });

  it("refuses a folder that is not MovieLens", async () => {
    const store = await EventStore.open(":memory:");
    await expect(ingestMovieLens(store, dir())).rejects.toThrow(/not a MovieLens folder/);
    store.close();
  });
});

describe("generic ingest", () => {
  it("reads CSV, JSONL and Parquet and is idempotent", async () => {
    const d = dir();
    const catalog = writeCatalog(d);
    writeFileSync(join(d, "a.csv"), "user_id,item_id,ts,engagement\nu1,i1,2025-01-01T10:00:00Z,1\nu1,i2,1735729200,0.5\n");
    writeFileSync(join(d, "b.jsonl"), '{"user_id":"u2","item_id":"i1","ts":1735729200000}\n{"user_id":"u2","item_id":"i2","ts":"2025-01-02"}\n');
    const store = await EventStore.open(join(d, "events.duckdb"));
    await store.connection.run(`COPY (SELECT 'u3' AS user_id, 'i2' AS item_id, TIMESTAMP '2025-01-03 00:00:00' AS ts, 0.9 AS engagement) TO '${join(d, "c.parquet")}' (FORMAT parquet)`);
    const files = { ...catalog, events: [join(d, "a.csv"), join(d, "b.jsonl"), join(d, "c.parquet")] };
    const report = await ingestFiles(store, files);
    expect(report).toMatchObject({ events: 5, items: 2, clusters: 2, badRows: 0, skippedDuplicates: 0 });
    const ts = await store.query<{ t: number }>("SELECT epoch_ms(ts) AS t FROM events JOIN users USING (user_key) WHERE user_id = 'u1' ORDER BY ts");
    expect(ts.map((r) => Number(r.t))).toEqual([Date.UTC(2025, 0, 1, 10), 1735729200000]);
    const again = await ingestFiles(store, files);
    expect(again).toMatchObject({ events: 0, skippedDuplicates: 5 });
    store.close();
  });

  it("reports bad rows with file, line and field and keeps the good ones under the threshold", async () => {
    const d = dir();
    const catalog = writeCatalog(d);
    const rows = ["user_id,item_id,ts,engagement"];
    for (let k = 0; k < 300; k++) rows.push(`u${k},i${1 + (k % 2)},${1735689600 + k},1`);
    rows.push("u9,,1735689600,1"); // missing item (line 302)
    rows.push("u9,i1,yesterday,1"); // bad timestamp (line 303)
    rows.push("u9,i7,1735689600,1"); // unknown item (line 304)
    writeFileSync(join(d, "events.csv"), rows.join("\n") + "\n");
    const store = await EventStore.open(":memory:");
    const report = await ingestFiles(store, { ...catalog, events: [join(d, "events.csv")] }, { badRowThreshold: 0.01 });
    expect(report.events).toBe(300);
    expect(report.badRows).toBe(3);
    expect(report.problems).toEqual([
      { file: join(d, "events.csv"), line: 302, field: "item_id", problem: "missing" },
      { file: join(d, "events.csv"), line: 303, field: "ts", problem: expect.stringContaining("bad timestamp") },
      { file: join(d, "events.csv"), line: 304, field: "item_id", problem: 'unknown item "i7"' },
    ]);
    store.close();
  });

  it("fails and writes nothing when a file's bad-row share exceeds the threshold", async () => {
    const d = dir();
    const catalog = writeCatalog(d);
    // Latin-1 bytes in a file read as UTF-8: a wrong-encoding row.
    const text = Buffer.concat([
      Buffer.from("user_id,item_id,ts\nu1,i1,2025-01-01\n"),
      Buffer.from("caf\u00e9,i1,2025-01-02\n", "latin1"),
      Buffer.from("u2,i2,2025-01-02\n"),
    ]);
    writeFileSync(join(d, "events.csv"), text);
    const store = await EventStore.open(":memory:");
    const error = await ingestFiles(store, { ...catalog, events: [join(d, "events.csv")] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BadInputError);
    expect((error as BadInputError).message).toMatch(/1 of 3 rows are bad.*nothing was written/s);
    expect((error as BadInputError).problems).toEqual([{ file: join(d, "events.csv"), line: 3, problem: "not valid UTF-8 (wrong encoding?)" }]);
    expect(await store.counts()).toMatchObject({ events: 0, items: 0, clusters: 0 });
    store.close();
  });

  it("rejects empty files and missing columns by name", async () => {
    const d = dir();
    const catalog = writeCatalog(d);
    const store = await EventStore.open(":memory:");
    writeFileSync(join(d, "empty.csv"), "");
    await expect(ingestFiles(store, { ...catalog, events: [join(d, "empty.csv")] })).rejects.toThrow(/empty\.csv: empty file/);
    writeFileSync(join(d, "header.csv"), "user_id,item_id,ts\n");
    await expect(ingestFiles(store, { ...catalog, events: [join(d, "header.csv")] })).rejects.toThrow(/header\.csv: no data rows/);
    writeFileSync(join(d, "cols.csv"), "user,item_id,ts\nu1,i1,1\n");
    await expect(ingestFiles(store, { ...catalog, events: [join(d, "cols.csv")] })).rejects.toThrow(/cols\.csv: missing column user_id/);
    await expect(ingestFiles(store, { events: [join(d, "nope.csv")] })).rejects.toThrow(/nope\.csv: cannot read \(ENOENT\)/);
    expect((await store.counts()).clusters).toBe(0);
    store.close();
  });
});
