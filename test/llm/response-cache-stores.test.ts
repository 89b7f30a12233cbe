/**
 * The response cache contract on both adapters: the workspace's SQLite file and PostgreSQL on a real throwaway
 * server (the deployment's database, shared by hosts); and what only a shared cache has to get right: hosts writing
 * the same answer at once, and a Batch-API job submitted by one host resumed by another.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { OpenAiLanguageModel } from "../../src/llm/backends/openai.js";
import { PostgresResponseCache } from "../../src/llm/backends/postgres-response-cache.js";
import { SqliteResponseCache } from "../../src/llm/backends/response-cache.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { startLlmServer, type RunningLlmServer } from "../../src/llm/openai-server.js";
import { CLUSTERS } from "./fixtures.js";
import { responseCacheConformance } from "./response-cache-conformance.js";
import { silentLog, trainTinyModel } from "./tiny-model.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();

responseCacheConformance("sqlite", async () => {
  const file = join(tempDir("freshrec-cache-sqlite-"), "llm-cache.sqlite");
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
      // A later writer of the same key (a host that asked the same prompt again) changes nothing.
      for (const k of keys) await hosts[3].put(k, { host: 99, k });
      expect(await hosts[1].getMany(keys)).toEqual(seen[0]);
    } finally {
      for (const h of hosts) await h.close();
    }
  });
});

describe("a Batch-API job on a cache in the deployment's database", () => {
  let server: RunningLlmServer | null = null;
  afterAll(async () => {
    await server?.close();
  });

  it("is resumed by another host after the host that submitted it died, instead of paying again", async () => {
    const url = await database();
    const ws = tempDir("freshrec-cache-batch-pg-");
    server = await startLlmServer({ modelPath: await trainTinyModel(ws), modelName: "tiny", dataDir: join(ws, "llm-server"), port: 0, logStream: silentLog });
    const baseURL = `${server.url}/v1`;
    const batches = async () => ((await (await fetch(`${baseURL}/batches`)).json()) as { data: unknown[] }).data.length;
    // Host A: a child process submits the build's batch, records it in the database and is killed while it runs.
    const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "fixtures", "batch-child.ts"), baseURL, url], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (d: Buffer) => d.toString().includes("submitted") && resolve());
      child.on("exit", (code) => reject(new Error(`child exited with ${code} before submitting`)));
    });
    child.kill("SIGKILL");
    expect(await batches()).toBe(1);
    // Host B: the same build on the same database picks that batch up.
    const prompts = CLUSTERS.flatMap((a) => CLUSTERS.filter((b) => b !== a).map((b) => ({ history: { c1: a.id, c2: b.id } })));
    const options = { baseURL, model: "tiny", clusters: CLUSTERS, maxRetries: 0, apiKeyEnv: null } as const;
    const resumed = await OpenAiLanguageModel.open({ ...options, openCache: () => PostgresResponseCache.open(url), batch: { minPrompts: 1, pollIntervalMs: 20 } });
    const direct = await OpenAiLanguageModel.open(options);
    try {
      const ranked = await resumed.score(prompts, 3);
      expect(resumed.stats).toMatchObject({ batches: 0, batchedRequests: prompts.length });
      expect(await batches()).toBe(1);
      expect(ranked).toEqual(await direct.score(prompts, 3));
    } finally {
      await resumed.close();
      await direct.close();
    }
    // Its answers are in the database.
    const cache = await PostgresResponseCache.open(url);
    try {
      expect(await cache.size()).toBe(prompts.length);
    } finally {
      await cache.close();
    }
  }, 300_000);
});
