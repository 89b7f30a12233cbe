import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { PostgresEventStore, positionalQuery, redactedUrl } from "../../src/data/postgres-event-store.js";
import { eventStoreConformance } from "./event-store-conformance.js";
import { usePostgresCluster } from "./postgres-cluster.js";
import { tempDir } from "../temp-dir.js";

eventStoreConformance("duckdb", async () => {
  const path = join(tempDir("freshrec-store-"), "events.duckdb");
  return () => EventStore.open(path);
});

const database = usePostgresCluster();
eventStoreConformance("postgres", async () => {
  const url = await database();
  return () => PostgresEventStore.open(url);
});

describe("PostgresEventStore", () => {
  it("rewrites named parameters to positions, leaving quotes, comments and casts alone", () => {
    expect(positionalQuery("SELECT '$a', \"$b\", $a::BIGINT, $b -- $c\n, $a, $$ $c $$", { a: 1n, b: "x" })).toEqual({
      text: "SELECT '$a', \"$b\", $1::BIGINT, $2 -- $c\n, $1, $$ $c $$",
      values: [1n, "x"],
    });
    expect(() => positionalQuery("SELECT $missing", {})).toThrow(/\$missing/);
  });

  it("refuses a database it cannot reach, naming it without the password", async () => {
    const error = await PostgresEventStore.open("postgres://me:secret@127.0.0.1:1/nowhere").catch((e: unknown) => e);
    expect((error as Error).message).toMatch(/^cannot open the event store postgres:\/\/me:\*\*\*@127\.0\.0\.1:1\/nowhere: /);
    expect((error as Error).message).not.toContain("secret");
    expect(redactedUrl("postgres://a@h/d")).toBe("postgres://a@h/d");
  });
});
