/**
 * The response cache contract on both adapters: the workspace's SQLite file and PostgreSQL on a real throwaway
 * server (the deployment's database, shared by hosts); and what only a shared cache has to get right: hosts writing
 * the same answer at once.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PostgresResponseCache } from "../../src/llm/backends/postgres-response-cache.js";
import { SqliteResponseCache } from "../../src/llm/backends/response-cache.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { tempWorkspace } from "./fixtures.js";
import { responseCacheConformance } from "./response-cache-conformance.js";

const database = usePostgresCluster();

responseCacheConformance("sqlite", async () => {
  const file = join(tempWorkspace("freshrec-cache-sqlite-"), "llm-cache.sqlite");
  return async () => SqliteResponseCache.open(file);
});
responseCacheConformance("postgres", async () => {
  const url = await database();
  return () => PostgresResponseCache.open(url);
});

describe("PostgresResponseCache shared by hosts", () => {
  it("keeps one answer when hosts store the same key at once", async () => {
    const url = await database();
    const hosts = await Promise.all([1, 2, 3, 4].map(() => PostgresResponseCache.open(url)));
    try {
      const keys = Array.from({ length: 50 }, (_, i) => `k${i}`);
      await Promise.all(hosts.flatMap((h, n) => keys.map((k) => h.put(k, { host: n, k }))));
      expect(await hosts[0].size()).toBe(keys.length);
      const seen = await Promise.all(hosts.map((h) => h.getMany<{ host: number }>(keys)));
      for (const k of keys) expect(new Set(seen.map((m) => JSON.stringify(m.get(k)))).size).toBe(1);
    } finally {
      for (const h of hosts) await h.close();
    }
  });
});
