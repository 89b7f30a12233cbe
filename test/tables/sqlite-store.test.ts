import { spawn } from "node:child_process";
import Database from "better-sqlite3";
import { mkdirSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { FreshrecError } from "../../src/domain/errors.js";
import { TableLookup } from "../../src/tables/lookup.js";
import { EmbeddedTableStore } from "../../src/tables/embedded-store.js";
import { encodeAnswers } from "../../src/tables/answer-blob.js";
import { SqliteTableStore, tableStorePath } from "../../src/tables/sqlite-store.js";
import { byPair, tableStoreConformance } from "./conformance.js";
import { garbleJsonExplanations, setFirstAnswers, setLastC2 } from "./fixtures/blocks.js";
import { STATS, clusterNames, packedRows, tableRows } from "./fixtures/rows.js";
import { tempDir } from "../temp-dir.js";

const dir = tempDir("freshrec-tables-");
let files = 0;
const nextFile = () => join(dir, `store-${++files}`, "tables.sqlite");
const META = { modelVersion: "m000001", templateHash: "tmpl-a" };

tableStoreConformance("sqlite (file)", (clock) => EmbeddedTableStore.open(nextFile(), clock, { pageSize: 7, batchSize: 20 }));
tableStoreConformance("sqlite (:memory:)", (clock) => EmbeddedTableStore.open(":memory:", clock));

/** A store file of schema 1 (one SQL row per pair, `table_rows`) with its tables and no rows, as that store wrote it; left open. */
function schemaOneFile(file: string): Database.Database {
  mkdirSync(dirname(file), { recursive: true });
  const db = new Database(file);
  db.pragma("page_size = 16384");
  db.pragma("auto_vacuum = INCREMENTAL");
  db.pragma("journal_mode = WAL");
  db.exec(`
    CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE clusters (idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
    CREATE TABLE table_versions (
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      status TEXT NOT NULL CHECK (status IN ('building', 'ready', 'live', 'retired', 'failed')),
      model_version TEXT NOT NULL, template_hash TEXT NOT NULL, rag_as_of INTEGER, rag_window_days REAL, rag_options TEXT,
      strategy TEXT, parent TEXT, stats TEXT, metrics TEXT, created_at INTEGER NOT NULL, finished_at INTEGER, failure TEXT,
      row_count INTEGER NOT NULL DEFAULT 0, top_n INTEGER NOT NULL DEFAULT 0, builder_pid INTEGER, builder_host TEXT
    );
    CREATE TABLE table_rows (
      table_seq INTEGER NOT NULL, c1 INTEGER NOT NULL, c2 INTEGER NOT NULL, context_key TEXT, answers BLOB NOT NULL,
      explanation TEXT, PRIMARY KEY (table_seq, c1, c2)
    ) WITHOUT ROWID;
    CREATE TABLE live_stack (pos INTEGER PRIMARY KEY AUTOINCREMENT, table_seq INTEGER NOT NULL);
    CREATE TABLE publish_log (
      id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL CHECK (action IN ('publish', 'rollback')), version TEXT NOT NULL,
      previous TEXT, at INTEGER NOT NULL, actor TEXT, reason TEXT
    );
    INSERT INTO store_meta (key, value) VALUES ('schema', '1');
  `);
  return db;
}

describe("SqliteTableStore on disk", () => {
  const clusters = clusterNames(12);

  function storeWithLiveTable(file: string): { store: SqliteTableStore; live: string } {
    const store = SqliteTableStore.open(file, new VirtualClock(Date.UTC(2025, 2, 1)));
    const b = store.beginBuild(META);
    b.append(tableRows(clusters, 0));
    const live = b.finish(STATS).version;
    store.publish(live);
    return { store, live };
  }

  it("keeps tables, the live pointer and the publish history across reopen", () => {
    const file = tableStorePath(join(dir, "workspace"));
    const { store, live } = storeWithLiveTable(file);
    const before = store.list();
    store.close();
    const again = SqliteTableStore.open(file, new VirtualClock(Date.UTC(2025, 2, 2)));
    expect(again.list()).toEqual(before);
    expect(again.live()?.version).toBe(live);
    expect(again.publishHistory()).toHaveLength(1);
    expect(again.lookup(live, "c003", "c007")?.answers).toEqual(tableRows(clusters, 0).find((r) => r.c1 === "c003" && r.c2 === "c007")!.answers);
    again.close();
  });

  it("makes a new file with 16 KiB pages and incremental vacuum; a file made with other pages keeps them and works", () => {
    const pragmas = (file: string) => {
      const db = new Database(file, { readonly: true });
      try {
        return { pageSize: db.pragma("page_size", { simple: true }), autoVacuum: db.pragma("auto_vacuum", { simple: true }) };
      } finally {
        db.close();
      }
    };
    const fresh = nextFile();
    storeWithLiveTable(fresh).store.close();
    // auto_vacuum 2: INCREMENTAL.
    expect(pragmas(fresh)).toEqual({ pageSize: 16384, autoVacuum: 2 });
    // A file whose pages were fixed before (as by an earlier version of this store): opened, built into, read back.
    const older = nextFile();
    mkdirSync(dirname(older), { recursive: true });
    const db = new Database(older);
    db.pragma("page_size = 4096");
    db.exec("CREATE TABLE made_before (x)");
    db.close();
    const { store, live } = storeWithLiveTable(older);
    expect(store.lookup(live, "c003", "c007")?.answers).toEqual(tableRows(clusters, 0).find((r) => r.c1 === "c003" && r.c2 === "c007")!.answers);
    store.close();
    expect(pragmas(older).pageSize).toBe(4096);
  });

  it("two connections to one file see each other's builds, publishes and rollbacks", () => {
    const file = nextFile();
    const { store: a, live } = storeWithLiveTable(file);
    const b = SqliteTableStore.open(file, new VirtualClock(Date.UTC(2025, 2, 2)));
    expect(b.live()?.version).toBe(live);
    // b adds clusters a has never seen; a must decode them from the shared dictionary.
    const build = b.beginBuild(META);
    build.append(tableRows(clusterNames(12).map((c) => `${c}-new`), 1));
    const next = build.finish(STATS).version;
    a.publish(next, { actor: "a" });
    expect(b.live()?.version).toBe(next);
    expect(a.lookup(next, "c001-new", "c002-new")).toEqual(b.lookup(next, "c001-new", "c002-new"));
    expect(b.rollback().version).toBe(live);
    expect(a.live()?.version).toBe(live);
    expect(a.get(next).status).toBe("retired");
    a.close();
    b.close();
  });

  it("a build dropped without finishing leaves the live table live and is marked failed on reopen", () => {
    const file = nextFile();
    const { store, live } = storeWithLiveTable(file);
    const b = store.beginBuild(META);
    b.append(tableRows(clusters, 1).slice(0, 40));
    // Another store on the same file in this process must not take a build that is still open for abandoned.
    const other = SqliteTableStore.open(file, new VirtualClock(Date.UTC(2025, 2, 1)));
    expect(other.get(b.version).status).toBe("building");
    other.close();
    store.close(); // what a crash looks like: no finish, no fail

    const reopened = SqliteTableStore.open(file, new VirtualClock(Date.UTC(2025, 2, 3)));
    expect(reopened.get(b.version)).toMatchObject({ status: "failed", rows: 40, finishedAt: Date.UTC(2025, 2, 3) });
    expect(reopened.get(b.version).failure).toMatch(/abandoned/);
    expect(reopened.live()?.version).toBe(live);
    expect(reopened.recoverStale()).toEqual([]);
    expect(() => reopened.publish(b.version)).toThrow(/is failed/);
    reopened.close();
  });

  it("a build process killed mid-append leaves the live table live; the partial build becomes failed", async () => {
    const file = nextFile();
    const { store, live } = storeWithLiveTable(file);
    const liveRows = [...store.rows(live)];
    store.close();

    const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "fixtures", "crash-build.ts"), file], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const exited = new Promise<void>((done) => child.on("exit", () => done()));
    const version = await new Promise<string>((done, fail) => {
      let out = "";
      child.stdout.on("data", (chunk: Buffer) => {
        out += chunk.toString();
        const m = /building (t\d+)/.exec(out);
        if (m) done(m[1]);
      });
      child.on("exit", (code) => fail(new Error(`crash-build exited early with ${code}`)));
    });
    // Let it write more batches, then kill it while it is appending.
    await new Promise((r) => setTimeout(r, 300));
    child.kill("SIGKILL");
    await exited;

    const reopened = SqliteTableStore.open(file, new VirtualClock(Date.UTC(2025, 2, 4)));
    const crashed = reopened.get(version);
    expect(crashed.status).toBe("failed");
    expect(crashed.rows).toBeGreaterThan(0);
    expect(crashed.rows % 50).toBe(0); // whole batches only: a killed transaction left nothing behind
    expect(reopened.live()?.version).toBe(live);
    expect([...reopened.rows(live)]).toEqual(liveRows);
    // The store is usable again: a new build can be published over the live one.
    const b = reopened.beginBuild(META);
    b.append(tableRows(clusters, 2));
    expect(reopened.publish(b.finish(STATS).version).status).toBe("live");
    reopened.close();
  });

  it("reads rows of one c1 written in several batches, in any order, in (c1, c2) order; a pair written twice across batches is named", () => {
    const file = nextFile();
    const rows = tableRows(clusters, 2);
    // A deterministic shuffle: every c1's rows land in several batches of 5, out of order within and across them.
    const shuffled = rows.map((r, k) => ({ r, key: (k * 7919) % rows.length })).sort((a, b) => a.key - b.key).map((x) => x.r);
    const small = SqliteTableStore.open(file, new VirtualClock(0), { batchSize: 5, pageSize: 3 });
    const b = small.beginBuild(META);
    b.append(shuffled.slice(0, 60));
    b.appendPacked(packedRows(shuffled.slice(60), [...clusters].reverse()));
    const others = tableRows(clusters.map((c) => `${c}-x`), 3);
    expect(() => b.append([...others.slice(0, 7), shuffled[17]])).toThrow(new RegExp(`\\(${shuffled[17].c1}, ${shuffled[17].c2}\\) written twice`));
    const v = b.finish(STATS).version;
    // Several parts per c1: the table's rows are more blocks than c1s.
    const db = new Database(file, { readonly: true });
    expect(db.prepare("SELECT count(*) FROM table_blocks WHERE table_seq = 1").pluck().get()).toBeGreaterThan(clusters.length * 2);
    db.close();
    // The batch that failed wrote nothing, and the batch before it (5 other rows) stays in the build.
    // In the order of the store's dictionary (numbered as the shuffled rows met clusters), c1 then c2.
    const number = new Map(small.clusterOrder([...clusters, ...clusters.map((c) => `${c}-x`)]).map((c, k) => [c, k]));
    const expected = [...rows, ...others.slice(0, 5)].sort((x, y) => number.get(x.c1)! - number.get(y.c1)! || number.get(x.c2)! - number.get(y.c2)!);
    expect(small.get(v).rows).toBe(expected.length);
    expect([...small.rows(v)]).toEqual(expected);
    for (const r of expected) expect(small.lookup(v, r.c1, r.c2)?.answers).toEqual(r.answers);
    const packed = small.packed(v);
    expect(Array.from(packed.c1, (c, k) => `${packed.clusters[c]}/${packed.clusters[packed.c2[k]]}`)).toEqual(expected.map((r) => `${r.c1}/${r.c2}`));
    small.close();
  });

  it("refuses a stored block of a layout it does not read, naming the table", () => {
    const file = nextFile();
    const { store, live } = storeWithLiveTable(file);
    const db = new Database(file);
    db.prepare("UPDATE table_blocks SET block = CAST(x'07000000' || substr(block, 5) AS BLOB) WHERE table_seq = 1 AND c1 = (SELECT min(c1) FROM table_blocks WHERE table_seq = 1)").run();
    db.close();
    expect(() => store.packed(live)).toThrow(/t000001 \(c1 #\d+\) have block layout 7, this freshrec reads 1/);
    store.close();
  });

  it("refuses to load a table whose blocks record fewer rows or narrower rows than they hold, naming it", () => {
    const oneBlock = "WHERE table_seq = 1 AND c1 = (SELECT min(c1) FROM table_blocks WHERE table_seq = 1)";
    for (const damage of [`row_count = row_count - 1 ${oneBlock}`, "top_n = 1 WHERE table_seq = 1"]) {
      const file = nextFile();
      const { store, live } = storeWithLiveTable(file);
      expect(store.packed(live).c1.length).toBe(store.get(live).rows);
      const db = new Database(file);
      db.prepare(`UPDATE table_blocks SET ${damage}`).run();
      db.close();
      // A table cut short, or rows spilling into the next row's answers, would be served without a word.
      expect(() => store.packed(live)).toThrow(/the stored rows of t000001.* are damaged/);
      store.close();
    }
  });

  it("refuses a stored cluster index the dictionary does not hold (an answer, a c2, a c1), naming the table, the c1 and the pair", () => {
    const outside = /the stored rows of t000001 \(c1 #\d+\) are damaged .*not one of the 12 clusters of the dictionary/;
    const answers = nextFile();
    const a = storeWithLiveTable(answers);
    expect(setFirstAnswers(answers, a.live, 999)).toBeGreaterThan(0);
    expect(() => a.store.lookup(a.live, "c003", "c007")).toThrow(/t000001 \(c1 #\d+\) are damaged \(row \(c003, c007\) answers cluster #999, not one of the 12 clusters/);
    expect(() => [...a.store.rows(a.live)]).toThrow(outside);
    a.store.close();

    const c2 = nextFile();
    const b = storeWithLiveTable(c2);
    setLastC2(c2, b.live, 999);
    expect(() => [...b.store.rows(b.live)]).toThrow(/t000001 \(c1 #0\) are damaged \(row \(c\d+, #999\) has c2 #999, not one of the 12 clusters/);
    expect(() => b.store.contextKeys(b.live)).toThrow(outside);
    b.store.close();

    const c1 = nextFile();
    const c = storeWithLiveTable(c1);
    const db = new Database(c1);
    db.prepare("UPDATE table_blocks SET c1 = 999 WHERE table_seq = 1 AND c1 = (SELECT max(c1) FROM table_blocks WHERE table_seq = 1)").run();
    db.close();
    expect(() => [...c.store.rows(c.live)]).toThrow(/t000001 \(c1 #999\) are damaged \(row \(#999, c\d+\) has c1 #999, not one of the 12 clusters/);
    expect(() => c.store.contextKeys(c.live)).toThrow(/c1 #999/);
    c.store.close();
  });

  it("refuses a stored JSON explanation that does not parse, and a block stored as TEXT, naming the table, the c1 and the pair", () => {
    const file = nextFile();
    const store = SqliteTableStore.open(file, new VirtualClock(0));
    const b = store.beginBuild(META);
    b.append(tableRows(clusters, 0).map((r) => ({ ...r, explanation: { why: `${r.c1}/${r.c2}` } })));
    const v = b.finish(STATS).version;
    expect(garbleJsonExplanations(file, v)).toBe(132);
    const damaged = (error: unknown) => {
      expect(error).toBeInstanceOf(FreshrecError);
      return (error as Error).message;
    };
    const thrown = (fn: () => unknown) => {
      try {
        fn();
      } catch (error) {
        return damaged(error);
      }
      throw new Error("no error");
    };
    expect(thrown(() => store.lookup(v, "c003", "c007"))).toMatch(/the stored rows of t000001 \(c1 #\d+\) are damaged \(row \(c003, c007\) has an explanation that is not JSON: /);
    expect(thrown(() => [...store.rows(v)])).toMatch(/t000001 \(c1 #0\) are damaged \(row \(c\d+, c\d+\) has an explanation that is not JSON/);

    const db = new Database(file);
    db.prepare("UPDATE table_blocks SET block = hex(block) WHERE table_seq = 1 AND c1 = 0").run();
    db.close();
    expect(thrown(() => [...store.rows(v)])).toMatch(/the stored rows of t000001 \(c1 #0\) are damaged \(a block stored as TEXT, not a BLOB\)/);
    expect(thrown(() => store.packed(v))).toMatch(/t000001 \(c1 #0\) are damaged \(a block stored as TEXT/);
    store.close();
  });

  it("refuses a pair appended after it was copied, naming it, and a copy overlapping appended rows", () => {
    const { store, live } = storeWithLiveTable(nextFile());
    const rows = tableRows(clusters, 0);
    const b = store.beginBuild({ ...META, parent: live });
    expect(b.copyRows(live, rows.slice(0, 30))).toBe(30);
    expect(() => b.append([rows[30], rows[12]])).toThrow(new RegExp(`\\(${rows[12].c1}, ${rows[12].c2}\\) written twice`));
    expect(() => b.appendPacked(packedRows([rows[31], rows[12]], clusters))).toThrow(new RegExp(`\\(${rows[12].c1}, ${rows[12].c2}\\) written twice`));
    // The failed batches wrote nothing: rows 30 and 31 can still be appended, and then a copy of them overlaps.
    b.append([rows[30], rows[31]]);
    expect(() => b.copyRows(live, [rows[31]])).toThrow(/copying from t000001 overlaps rows already in t000002/);
    expect(() => b.copyRows(live)).toThrow(/overlaps rows already in t000002/);
    expect(b.copyRows(live, rows.slice(32))).toBe(rows.length - 32);
    const done = b.finish(STATS);
    expect(done.rows).toBe(rows.length);
    expect([...store.rows(done.version)]).toEqual([...store.rows(live)]);
    store.close();
  });

  it("converts a file of one SQL row per pair (schema 1) to blocks on open: every row reads back as it was written", () => {
    // Written through raw SQL as the store of schema 1 wrote it: its tables, a dictionary numbering clusters as a
    // build meets them, rows with BLOB answers, explanations as BLOBs (bytes), JSON text (objects) or NULL.
    const file = nextFile();
    const db = schemaOneFile(file);
    const names = clusterNames(7);
    const index = new Map<string, number>();
    const idx = (c: string) => {
      if (!index.has(c)) {
        index.set(c, index.size);
        db.prepare("INSERT INTO clusters (idx, id) VALUES (?, ?)").run(index.get(c), c);
      }
      return index.get(c)!;
    };
    // Two versions: the second's rows differ (variant) and it was still building when the old store last ran.
    const written = [tableRows(names, 0, 4), tableRows(names, 1, 3)].map((rows) =>
      rows.map((r, k) => ({
        ...r,
        contextKey: k % 4 === 0 ? null : k % 4 === 1 ? "" : r.contextKey,
        explanation: k % 3 === 0 ? new Uint8Array([k, 0, 255, 7]) : k % 3 === 1 ? { tau: k / 4, counts: [k, 1] } : undefined,
      })),
    );
    written.forEach((rows, v) => {
      db.prepare(`INSERT INTO table_versions (status, model_version, template_hash, created_at, row_count, top_n, builder_pid, builder_host)
        VALUES (?, 'm000001', 'tmpl-a', 1000, ?, ?, ?, ?)`).run(v === 0 ? "live" : "building", v === 0 ? rows.length : 0, v === 0 ? 4 : 0, v === 0 ? null : 2 ** 22 + 1, v === 0 ? null : hostname());
      // Rows in another order than their keys: the file's order is the primary key's whatever the writes.
      for (const r of [...rows].reverse()) {
        const answers = encodeAnswers(r.answers.map((a) => idx(a.cluster)), r.answers.map((a) => a.score));
        const explanation = r.explanation instanceof Uint8Array ? Buffer.from(r.explanation) : r.explanation ? JSON.stringify(r.explanation) : null;
        db.prepare("INSERT INTO table_rows (table_seq, c1, c2, context_key, answers, explanation) VALUES (?, ?, ?, ?, ?, ?)").run(v + 1, idx(r.c1), idx(r.c2), r.contextKey, answers, explanation);
      }
    });
    db.prepare("INSERT INTO live_stack (table_seq) VALUES (1)").run();
    db.close();

    const store = SqliteTableStore.open(file, new VirtualClock(Date.UTC(2025, 2, 5)));
    const expected = (rows: (typeof written)[number]) =>
      byPair(rows.map(({ explanation, ...r }) => (explanation === undefined ? r : { ...r, explanation: explanation instanceof Uint8Array ? Buffer.from(explanation) : explanation })));
    expect(store.live()).toMatchObject({ version: "t000001", rows: written[0].length, topN: 4 });
    // The build left behind is found abandoned, with the rows it had written counted from the blocks.
    expect(store.get("t000002")).toMatchObject({ status: "failed", rows: written[1].length, failure: expect.stringMatching(/abandoned/) });
    written.forEach((rows, v) => {
      const version = `t00000${v + 1}`;
      expect(byPair([...store.rows(version)])).toEqual(expected(rows));
      for (const r of expected(rows)) expect(store.lookup(version, r.c1, r.c2)).toEqual(r);
      expect(store.contextKeys(version)).toEqual(new Map(rows.map((r) => [`${r.c1}\u0000${r.c2}`, r.contextKey])));
      const packed = store.packed(version);
      expect(packed.c1).toHaveLength(rows.length);
    });
    // Converted whole: the rows are gone from their old table and the file says it holds blocks.
    store.close();
    const after = new Database(file, { readonly: true });
    expect(after.prepare("SELECT name FROM sqlite_master WHERE name = 'table_rows'").all()).toEqual([]);
    expect(after.prepare("SELECT value FROM store_meta WHERE key = 'schema'").pluck().get()).toBe("2");
    expect(after.prepare("SELECT sum(row_count) FROM table_blocks").pluck().get()).toBe(written[0].length + written[1].length);
    // The pages of the dropped rows were handed back, not left free in the file.
    expect(after.pragma("freelist_count", { simple: true })).toBe(0);
    after.close();
  });

  it("refuses to convert a schema-1 file with a row blocks cannot hold, naming the file, the table and the pair; the file stays as it was", () => {
    const bad: [string, string][] = [
      ["answers = x'00000000000000'", "row (b, a) has answers of 7 bytes"],
      ["answers = 'abcdefgh'", "row (b, a) has answers stored as TEXT"],
      ["context_key = x'01'", "row (b, a) has a context key stored as a BLOB"],
      ["c2 = 'x'", "row (b, #x) has c2 stored as TEXT"],
    ];
    for (const [damage, problem] of bad) {
      const file = nextFile();
      const db = schemaOneFile(file);
      ["a", "b", "c"].forEach((id, idx) => db.prepare("INSERT INTO clusters (idx, id) VALUES (?, ?)").run(idx, id));
      db.prepare("INSERT INTO table_versions (status, model_version, template_hash, created_at, row_count, top_n) VALUES ('live', 'm000001', 'tmpl-a', 1000, 2, 1)").run();
      const insert = db.prepare("INSERT INTO table_rows (table_seq, c1, c2, context_key, answers, explanation) VALUES (1, ?, ?, '', ?, NULL)");
      insert.run(0, 1, encodeAnswers([2], [0.5]));
      insert.run(1, 0, encodeAnswers([2], [0.25]));
      db.prepare(`UPDATE table_rows SET ${damage} WHERE c1 = 1`).run();
      db.close();
      let message = "";
      try {
        SqliteTableStore.open(file, new VirtualClock(0)).close();
      } catch (error) {
        expect(error).toBeInstanceOf(FreshrecError);
        expect((error as FreshrecError).code).toBe("BAD_INPUT");
        message = (error as Error).message;
      }
      expect(message).toContain(`tables: ${file} cannot be converted to blocks (schema 1 to 2): t000001 ${problem}`);
      const after = new Database(file, { readonly: true });
      expect(after.prepare("SELECT value FROM store_meta WHERE key = 'schema'").pluck().get()).toBe("1");
      expect(after.prepare("SELECT count(*) FROM table_rows").pluck().get()).toBe(2);
      expect(after.prepare("SELECT name FROM sqlite_master WHERE name = 'table_blocks'").all()).toEqual([]);
      after.close();
    }
  });

  it("a second connection opening a schema-1 file while another converts it is told so, and what to do", () => {
    const file = nextFile();
    const db = schemaOneFile(file);
    ["a", "b", "c"].forEach((id, idx) => db.prepare("INSERT INTO clusters (idx, id) VALUES (?, ?)").run(idx, id));
    db.prepare("INSERT INTO table_versions (status, model_version, template_hash, created_at, row_count, top_n) VALUES ('ready', 'm000001', 'tmpl-a', 1000, 1, 1)").run();
    db.prepare("INSERT INTO table_rows (table_seq, c1, c2, context_key, answers) VALUES (1, 0, 1, '', ?)").run(encodeAnswers([2], [0.5]));
    // The converting store's transaction, as it stands while the conversion runs: the write lock held, schema 1 committed.
    db.exec("BEGIN IMMEDIATE");
    db.exec("CREATE TABLE table_blocks (id INTEGER PRIMARY KEY, table_seq INTEGER NOT NULL, c1 INTEGER NOT NULL, row_count INTEGER NOT NULL, top_n INTEGER NOT NULL, block BLOB NOT NULL)");
    let message = "";
    try {
      SqliteTableStore.open(file, new VirtualClock(0), { busyTimeoutMs: 100 }).close();
    } catch (error) {
      expect(error).toBeInstanceOf(FreshrecError);
      message = (error as Error).message;
    }
    expect(message).toBe(
      `tables: ${file} is being converted to blocks (schema 1 to 2) by another process, which held it past the 100 ms this one waits; wait for that process to finish converting, then retry`,
    );
    // Once the other connection lets go, the file opens (and is converted) as usual.
    db.exec("ROLLBACK");
    db.close();
    const store = SqliteTableStore.open(file, new VirtualClock(0), { busyTimeoutMs: 100 });
    expect(store.lookup("t000001", "a", "b")?.answers).toEqual([{ cluster: "c", score: 0.5 }]);
    store.close();
  });

  it("writes 89,700 rows x 10 answers and loads them into a lookup quickly", () => {
    const store = SqliteTableStore.open(nextFile(), new VirtualClock(0));
    const rows = tableRows(clusterNames(300), 1, 10);
    expect(rows).toHaveLength(89_700);
    let t = performance.now();
    const b = store.beginBuild(META);
    b.append(rows);
    const info = b.finish(STATS);
    const writeMs = performance.now() - t;
    t = performance.now();
    const lookup = TableLookup.load(store, info.version);
    const loadMs = performance.now() - t;
    t = performance.now();
    const copy = store.beginBuild({ ...META, parent: info.version });
    copy.copyRows(info.version, rows.slice(0, 80_000));
    copy.finish(STATS);
    const copyMs = performance.now() - t;
    console.log(`tables: wrote 89,700 rows in ${writeMs.toFixed(0)} ms, loaded lookup in ${loadMs.toFixed(0)} ms, copied 80,000 rows in ${copyMs.toFixed(0)} ms`);
    expect(lookup.size).toBe(89_700);
    expect(lookup.get("c010", "c020")).toEqual(rows.find((r) => r.c1 === "c010" && r.c2 === "c020")!.answers);
    // Generous bounds for a shared 2-core machine; the target is < 2 s to write.
    expect(writeMs).toBeLessThan(6000);
    expect(loadMs).toBeLessThan(3000);
    store.close();
  });
});
