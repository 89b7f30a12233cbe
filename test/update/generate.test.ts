import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { VirtualClock } from "../../src/domain/clock.js";
import { SqliteTableStore } from "../../src/tables/index.js";
import { buildTable, type PromptScorer } from "../../src/update/generate.js";
import { contextsFromCounts } from "../../src/update/rag.js";
import { novelPopularity, PopularNovelScorer, SuccessorScorer } from "../../src/update/baselines.js";
import type { PromptInput } from "../../src/llm/prompt.js";
import { tempDir } from "../temp-dir.js";

const CLUSTERS = ["a", "b", "c", "d", "e", "f"];
const counts = [
  { c1: "a", c2: "b", next: "c", users: 5 },
  { c1: "a", c2: "b", next: "d", users: 3 },
  { c1: "c", c2: "d", next: "e", users: 4 },
  { c1: "e", c2: "f", next: "a", users: 2 },
];

/** Counts how many prompts it scored; answers by popularity. */
class CountingScorer implements PromptScorer {
  scored = 0;
  failAfter = Infinity;
  private readonly inner = new SuccessorScorer(novelPopularity(counts, CLUSTERS));
  async score(prompts: readonly PromptInput[], topN: number) {
    if (this.scored + prompts.length > this.failAfter) throw new Error("scorer died");
    this.scored += prompts.length;
    return this.inner.score(prompts, topN);
  }
}

function store() {
  return SqliteTableStore.open(join(tempDir("freshrec-gen-"), "tables.sqlite"), new VirtualClock(Date.UTC(2025, 0, 1)));
}

const snapshot = (c: typeof counts) => ({ asOf: 1, window: { from: 0, to: 1 }, ...contextsFromCounts(c, [], { minSupport: 1 }) });

describe("bulk table build", () => {
  it("writes every ordered pair with novel answers only", async () => {
    const tables = store();
    const scorer = new CountingScorer();
    const built = await buildTable({ store: tables, clusters: CLUSTERS, scorer, modelVersion: "m1", templateHash: "h", rag: snapshot(counts), topN: 3, batchSize: 7 });
    expect(built).toMatchObject({ pairs: 30, rescored: 30, copied: 0 });
    const rows = [...tables.rows(built.table.version)];
    expect(rows).toHaveLength(30);
    for (const r of rows) {
      expect(r.answers).toHaveLength(3);
      expect(r.answers.map((a) => a.cluster)).not.toContain(r.c1);
      expect(r.answers.map((a) => a.cluster)).not.toContain(r.c2);
    }
    expect(tables.lookup(built.table.version, "a", "b")!.answers[0].cluster).toBe("c"); // retrieved successor first
  });

  it("copies unchanged pairs and gives the same table as a full build when nothing changed", async () => {
    const tables = store();
    const scorer = new CountingScorer();
    const base = { store: tables, clusters: CLUSTERS, scorer, modelVersion: "m1", templateHash: "h", topN: 3 };
    const first = await buildTable({ ...base, rag: snapshot(counts) });
    const same = await buildTable({ ...base, rag: snapshot(counts) });
    expect(same).toMatchObject({ rescored: 0, copied: 30 });
    const full = await buildTable({ ...base, rag: snapshot(counts), full: true });
    expect(full.rescored).toBe(30);
    const rowsOf = (v: string) => [...tables.rows(v)].map(({ c1, c2, answers, contextKey }) => ({ c1, c2, answers, contextKey }));
    expect(rowsOf(same.table.version)).toEqual(rowsOf(first.table.version));
    expect(rowsOf(full.table.version)).toEqual(rowsOf(first.table.version));
    // One pair's context changes: only that pair is scored again.
    const changed = counts.map((t) => (t.next === "d" ? { ...t, users: 9 } : t));
    const incremental = await buildTable({ ...base, rag: snapshot(changed) });
    expect(incremental).toMatchObject({ rescored: 1, copied: 29 });
    expect(tables.lookup(incremental.table.version, "a", "b")!.answers[0].cluster).toBe("d");
    // A different model never copies from another model's table.
    expect(await buildTable({ ...base, modelVersion: "m2", rag: snapshot(counts) })).toMatchObject({ rescored: 30, copied: 0 });
  });

  it("marks a build that fails mid-way failed and leaves the live table live", async () => {
    const tables = store();
    const scorer = new CountingScorer();
    const base = { store: tables, clusters: CLUSTERS, scorer, modelVersion: "m1", templateHash: "h", topN: 3, batchSize: 4 };
    const good = await buildTable({ ...base, rag: snapshot(counts) });
    tables.publish(good.table.version);
    scorer.failAfter = scorer.scored + 10;
    await expect(buildTable({ ...base, rag: null, full: true })).rejects.toThrow("scorer died");
    expect(tables.live()?.version).toBe(good.table.version);
    expect(tables.list().at(-1)).toMatchObject({ status: "failed", failure: "scorer died" });
    // An abort does the same.
    const controller = new AbortController();
    controller.abort();
    await expect(buildTable({ ...base, rag: null, full: true, signal: controller.signal })).rejects.toThrow(/cancelled/);
    expect(tables.live()?.version).toBe(good.table.version);
    scorer.failAfter = Infinity;
    const retry = await buildTable({ ...base, rag: null, full: true });
    expect(retry.table.status).toBe("ready");
  });

  it("popular-novel answers the same ranking for every pair, minus the pair", async () => {
    const scorer = new PopularNovelScorer(novelPopularity(counts, CLUSTERS));
    const [ab, cd] = await scorer.score([{ history: { c1: "a", c2: "b" } }, { history: { c1: "c", c2: "d" } }], 3);
    expect(ab.map((a) => a.cluster)).toEqual(["c", "e", "d"]);
    expect(cd.map((a) => a.cluster)).toEqual(["e", "a", "b"]);
  });
});
