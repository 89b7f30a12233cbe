/**
 * The update loop with the non-embedded backends, from the CLI, switched by config only:
 * - `llm.backend: openai` pointed at a real OpenAI-compatible server on loopback (`freshrec llm serve`'s server over
 *   a tiny trained model, declared keyless): `pretrain` registers the configured model instead of training; `refresh`
 *   builds and publishes the table through HTTP (ranked by echo, the default on any server but OpenAI's: POST
 *   /v1/completions), an unchanged rebuild is answered from the response cache, `--dry-run` prices a build, the Batch
 *   API builds the same table, replay runs, and a hosted fine-tune registers a new version.
 * - `llm.backend: gguf` on a GGUF file read by node-llama-cpp: pretrain, refresh, dry run and replay.
 */
import { spawn } from "node:child_process";
import { cpSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { startLlmServer, type RunningLlmServer } from "../../src/llm/openai-server.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { CLUSTERS } from "../llm/fixtures.js";
import { silentLog, trainTinyModel, writeLora } from "../llm/tiny-model.js";
import { tempDir } from "../temp-dir.js";

const ROOT = join(import.meta.dirname, "../..");
const BIN = join(ROOT, "bin/freshrec.js");

/** Runs the CLI without blocking this process's event loop: the LLM server answering it lives in this process. */
function freshrec(args: string[]): Promise<{ status: number | null; json: any; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args, "--json"], { cwd: ROOT });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("close", (status) => {
      let json: unknown = null;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = { unparsable: stdout };
      }
      resolve({ status, json, stderr });
    });
  });
}

/** A small platform over the tiny model's clusters: 40 users walking through them over three weeks of June 2025. */
function writePlatform(ws: string): void {
  writeFileSync(join(ws, "clusters.csv"), ["cluster_id,description", ...CLUSTERS.map((c) => `${c.id},"${c.description}"`)].join("\n"));
  writeFileSync(join(ws, "items.csv"), ["item_id,cluster_id,title", ...CLUSTERS.map((c) => `${c.id}-1,${c.id},${c.id} for beginners`)].join("\n"));
  const events = ["user_id,item_id,ts"];
  const t0 = Date.UTC(2025, 5, 1);
  for (let u = 0; u < 40; u++) {
    for (let k = 0; k < 6; k++) events.push(`u${u},${CLUSTERS[(u + k * (1 + (u % 3))) % CLUSTERS.length].id}-1,${new Date(t0 + (u * 7 + k * 37) * 3_600_000).toISOString()}`);
  }
  writeFileSync(join(ws, "events.csv"), events.join("\n"));
}

const database = usePostgresCluster();
let server: RunningLlmServer | null = null;
afterAll(async () => {
  await server?.close();
});

describe("the loop with the non-embedded backends, from the CLI", () => {
  it("registers the configured model as the base, then builds, publishes and rebuilds tables through it", async () => {
    const ws = tempDir("freshrec-backend-loop-");
    server = await startLlmServer({ modelPath: await trainTinyModel(ws), modelName: "tiny", dataDir: join(ws, "llm-server"), port: 0, logStream: silentLog });

    writePlatform(ws);
    const config = join(ws, "freshrec.config.json");
    // freshrec llm serve takes no API key: the config says so (an unset key variable would be an error).
    const openai = { baseURL: `${server.url}/v1`, model: "tiny", apiKeyEnv: null, maxRetries: 0, inputPricePerMTok: 2, outputPricePerMTok: 8, fineTunePollMs: 50 };
    const llmServer = server;
    /** Requests the server answered, per route: chat (answers) and text completions (echo ranking). */
    const sent = () => ({ chat: llmServer.stats.completions, echo: llmServer.stats.textCompletions });
    // The paper's in-prompt RAG: every refresh prompts the backend (fusion, the default, is checked at the end).
    writeFileSync(config, JSON.stringify({ llm: { backend: "openai", openai }, rag: { minSupport: 1, method: "prompt" }, finetune: { testDays: 5, epochs: 1 } }));
    const cli = (...args: string[]) => freshrec(["--workspace", join(ws, "w"), "--config", config, ...args]);

    const ingest = await cli("ingest", "--clusters", join(ws, "clusters.csv"), "--items", join(ws, "items.csv"), "--events", join(ws, "events.csv"));
    expect(ingest.status, ingest.stderr).toBe(0);

    const base = await cli("pretrain");
    expect(base.status, base.stderr).toBe(0);
    expect(base.json).toMatchObject({ modelVersion: "m000001", status: "live", backend: "openai", trained: false });

    const first = await cli("refresh", "--as-of", "2025-06-20");
    expect(first.status, first.stderr).toBe(0);
    const pairs = CLUSTERS.length * (CLUSTERS.length - 1);
    expect(first.json).toMatchObject({ pairs, rescored: pairs, published: true, modelVersion: "m000001" });
    expect(first.json.pairsWithContext).toBeGreaterThan(0);
    expect(existsSync(join(ws, "w", "llm-cache.sqlite"))).toBe(true);
    const table = await cli("tables", "show", first.json.tableVersion);
    expect(table.status, table.stderr).toBe(0);
    // Times as ISO, as in tables list (the RAG as-of is the refresh's).
    expect(table.json.createdAt).toMatch(/^\d{4}-\d{2}-\d{2}T/);
    expect(table.json.ragAsOf).toBe("2025-06-20T00:00:00.000Z");

    // The table was ranked by echo: at least one text completion per pair (one request carries every cluster's text).
    const asked = sent();
    expect(asked.echo).toBeGreaterThanOrEqual(pairs);
    // A full rebuild asks the same questions: every answer comes from the response cache (the server is not asked).
    const again = await cli("refresh", "--as-of", "2025-06-20", "--full");
    expect(again.status, again.stderr).toBe(0);
    expect(again.json).toMatchObject({ pairs, rescored: pairs });
    expect(sent()).toEqual(asked);

    // A dry run prices a build without building or sending anything: all cached, then a day whose contexts changed.
    const tablesBefore = (await cli("tables", "list")).json;
    const cachedRun = await cli("refresh", "--as-of", "2025-06-20", "--full", "--dry-run");
    expect(cachedRun.status, cachedRun.stderr).toBe(0);
    expect(cachedRun.json).toMatchObject({ dryRun: true, pairs, rescore: pairs, copy: 0, cost: { prompts: pairs, cached: pairs, promptTokens: 0, usd: 0 } });
    const changed = await cli("refresh", "--as-of", "2025-06-06", "--dry-run");
    expect(changed.status, changed.stderr).toBe(0);
    const cost = changed.json.cost;
    expect(changed.json.rescore, JSON.stringify(changed.json)).toBeGreaterThan(0);
    expect(changed.json.rescore + changed.json.copy).toBe(pairs);
    expect(cost.prompts).toBe(changed.json.rescore);
    expect(cost.promptTokens).toBeGreaterThan(0);
    // Echo requests generate nothing (max_tokens 0): only prompt tokens are paid, each prompt once per cluster's text.
    expect(cost.completionTokens).toBe(0);
    expect(cost.usd).toBeCloseTo((cost.promptTokens * 2 + cost.completionTokens * 8) / 1e6, 12);
    expect(cost.via).toBe(`completions with echo (${CLUSTERS.length} texts per prompt), 4 at a time`);
    expect((await cli("tables", "list")).json).toEqual(tablesBefore);
    expect(sent()).toEqual(asked);

    // The same build through the Batch API (cache off, so every prompt goes in a batch) gives the same table.
    const batchConfig = join(ws, "batch.config.json");
    writeFileSync(batchConfig, JSON.stringify({ llm: { backend: "openai", openai: { ...openai, cache: false, batch: { enabled: true, minPrompts: 10, pollIntervalMs: 50 } } }, rag: { minSupport: 1, method: "prompt" } }));
    const listBatches = async () => ((await (await fetch(`${llmServer.url}/v1/batches`)).json()) as { data: { endpoint: string; request_counts: { completed: number } }[] }).data;
    const batchesBefore = (await listBatches()).length;
    const viaBatch = await freshrec(["--workspace", join(ws, "w"), "--config", batchConfig, "refresh", "--as-of", "2025-06-20", "--full", "--no-publish"]);
    expect(viaBatch.status, viaBatch.stderr).toBe(0);
    expect(viaBatch.json).toMatchObject({ pairs, rescored: pairs, published: false });
    const batches = await listBatches();
    expect(batches.length).toBe(batchesBefore + 1);
    // The newest batch (listed first) carried the echo requests, one line per pair.
    expect(batches[0]).toMatchObject({ endpoint: "/v1/completions", request_counts: { completed: pairs } });
    const rowsOf = async (version: string) => (await cli("tables", "show", version, "--limit", "100")).json;
    expect((await rowsOf(viaBatch.json.tableVersion)).rows).toEqual((await rowsOf(first.json.tableVersion)).rows);

    // Replay runs the LLM strategies on the configured model too (start model = the server's model).
    const before = sent();
    const replayed = await cli("evaluate", "replay", "--from", "2025-06-08", "--to", "2025-06-16", "--strategies", "static,rag,successor-top1", "--resamples", "10");
    expect(replayed.status, replayed.stderr).toBe(0);
    expect(replayed.json.startModel).toMatchObject({ version: "configured openai model" });
    expect(Object.keys(replayed.json.strategies)).toEqual(["static", "rag", "successor-top1"]);
    expect(replayed.json.strategies.rag.tablesPublished).toBe(4);
    expect(replayed.json.transitions).toBeGreaterThan(0);
    // Priced with the dry run's estimate: the backend's tokens at its prices (echo: prompt tokens only, $2/M), not a
    // flat number of tokens per prompt; a baseline pays for no prompt.
    for (const name of ["static", "rag"]) {
      const c = replayed.json.strategies[name].cost;
      expect(c.promptsScored).toBeGreaterThan(0);
      expect(c.pricedPrompts).toBe(c.promptsScored);
      expect(c.hostedEstimateUsd).toBeCloseTo((c.hostedTokens * 2) / 1e6, 12);
    }
    // The RAG prompts of the replay's days were never sent before (the response cache has none of them).
    expect(replayed.json.strategies.rag.cost.hostedTokens).toBeGreaterThan(0);
    expect(replayed.json.strategies["successor-top1"].cost).toMatchObject({ promptsScored: 0, pricedPrompts: 0, hostedTokens: 0, hostedEstimateUsd: 0 });
    // Its times are ISO, in the --json output and in the report's JSON file alike.
    expect(replayed.json.window).toEqual({ from: "2025-06-08T00:00:00.000Z", to: "2025-06-16T00:00:00.000Z" });
    expect(replayed.json.timelines.rag[0].publishedAt).toMatch(/^2025-06-\d\dT/);
    expect(JSON.parse(readFileSync(replayed.json.reports.json, "utf8")).window).toEqual(replayed.json.window);
    // Its tables were scored by the server: the RAG prompts of other days than the refreshes above were never asked.
    expect(sent().echo).toBeGreaterThan(before.echo);

    // A fusion refresh (the default method) with this backend: the model's prior is asked once per model version,
    // through the server's ranking, then kept beside the registry; later refreshes and their dry runs ask nothing.
    const fusionConfig = join(ws, "fusion.config.json");
    writeFileSync(fusionConfig, JSON.stringify({ llm: { backend: "openai", openai }, rag: { fusion: { fitMinTransitions: 20 } } }));
    const fusionCli = (...args: string[]) => freshrec(["--workspace", join(ws, "w"), "--config", fusionConfig, ...args]);
    const fused = await fusionCli("refresh", "--as-of", "2025-06-20");
    expect(fused.status, fused.stderr).toBe(0);
    expect(fused.json).toMatchObject({ pairs, rescored: pairs, copied: 0, published: true, fusion: { windowDays: expect.any(Number) } });
    const afterPrior = sent();
    const fusedAgain = await fusionCli("refresh", "--as-of", "2025-06-22");
    expect(fusedAgain.status, fusedAgain.stderr).toBe(0);
    expect(fusedAgain.json).toMatchObject({ pairs, rescored: 0 });
    const fusedPlan = await fusionCli("refresh", "--as-of", "2025-06-22", "--dry-run");
    expect(fusedPlan.json).toMatchObject({ method: "fusion", rescore: 0, copy: 0 });
    expect(sent()).toEqual(afterPrior);
    const explained = await fusionCli("tables", "show", "live", "--pair", `${CLUSTERS[0].id},${CLUSTERS[1].id}`);
    expect(explained.json.rows[0].explanation.answers[0].llmPrior).toEqual(expect.any(Number));

    // Fine-tuning with this backend goes through the server's fine-tuning API; no curated data yet is bad input.
    const tune = await cli("finetune", "--as-of", "2025-06-03");
    expect(tune.status).toBe(2);
    expect(tune.json.error.message).toMatch(/no novel transitions/);
    // With data, the hosted job runs and the new version's file is the JSON reference naming the server's model.
    const tuned = await cli("finetune", "--as-of", "2025-06-21");
    expect([0, 1], tuned.stderr).toContain(tuned.status);
    expect(tuned.json.modelVersion).toBe("m000002");
    const listed = (await cli("models", "list")).json.models as { version: string; filePath: string }[];
    const file = listed.find((m) => m.version === "m000002")!.filePath;
    expect(file).toMatch(/\.json$/);
    expect(JSON.parse(readFileSync(file, "utf8"))).toMatchObject({ backend: "openai", model: expect.stringMatching(/^ft:tiny:/) });
  }, 300_000);

  it("runs the same loop on a GGUF file through node-llama-cpp (llm.backend gguf): pretrain, refresh, replay", async () => {
    // The GGUF is one written by freshrec's own engine (no other model ships with the repository); llama.cpp reads it
    // as text with its own tokenizer, which is what the gguf backend does with any model.
    const ws = tempDir("freshrec-backend-gguf-");
    writePlatform(ws);
    const config = join(ws, "freshrec.config.json");
    writeFileSync(config, JSON.stringify({ llm: { backend: "gguf", gguf: { modelPath: await trainTinyModel(ws), contextSize: 512 } }, rag: { minSupport: 1, method: "prompt" } }));
    const cli = (...args: string[]) => freshrec(["--workspace", join(ws, "w"), "--config", config, ...args]);
    expect((await cli("ingest", "--clusters", join(ws, "clusters.csv"), "--items", join(ws, "items.csv"), "--events", join(ws, "events.csv"))).status).toBe(0);
    const base = await cli("pretrain");
    expect(base.status, base.stderr).toBe(0);
    expect(base.json).toMatchObject({ modelVersion: "m000001", status: "live", backend: "gguf", trained: false });
    const pairs = CLUSTERS.length * (CLUSTERS.length - 1);
    const refreshed = await cli("refresh", "--as-of", "2025-06-20");
    expect(refreshed.status, refreshed.stderr).toBe(0);
    expect(refreshed.json).toMatchObject({ pairs, rescored: pairs, published: true });
    const table = (await cli("tables", "show", refreshed.json.tableVersion, "--limit", "100")).json;
    expect(table.rows).toHaveLength(pairs);
    for (const row of table.rows) {
      expect(row.answers.length).toBeGreaterThan(0);
      expect(row.answers.map((a: { cluster: string }) => a.cluster)).not.toContain(row.c1);
    }
    const dry = await cli("refresh", "--as-of", "2025-06-20", "--dry-run");
    expect(dry.json).toMatchObject({ dryRun: true, rescore: 0, copy: pairs, cost: null });
    const replayed = await cli("evaluate", "replay", "--from", "2025-06-10", "--to", "2025-06-14", "--strategies", "static,rag,successor-top1", "--resamples", "10");
    expect(replayed.status, replayed.stderr).toBe(0);
    expect(replayed.json.startModel).toMatchObject({ version: "configured gguf model" });
    expect(replayed.json.strategies.rag.tablesPublished).toBe(2);
    expect(replayed.json.transitions).toBeGreaterThan(0);
    for (const name of ["static", "rag"]) expect(replayed.json.strategies[name].hit1).toBeLessThanOrEqual(1);
    // A gguf model cannot be fine-tuned here: the error says what to do instead.
    const tune = await cli("finetune", "--as-of", "2025-06-21");
    expect(tune.status).toBe(2);
    expect(tune.json.error.message).toMatch(/cannot fine-tune here.*--model FILE.*LoRA adapter/);
    // A fine-tune delivered as a LoRA adapter goes through the same gates and becomes a new version.
    const adapter = join(ws, "adapter-2025-06.gguf");
    writeLora(adapter, 0.5);
    const delivered = await cli("finetune", "--as-of", "2025-06-21", "--model", adapter);
    expect([0, 1], delivered.stderr).toContain(delivered.status);
    expect(delivered.json).toMatchObject({ modelVersion: "m000002", parent: "m000001", trainTokens: 0 });
    expect(delivered.json.gates.testExamples).toBeGreaterThan(0);
    const versions = (await cli("models", "list")).json.models as { version: string; filePath: string }[];
    const copied = versions.find((m) => m.version === "m000002")!.filePath;
    expect(readFileSync(copied).equals(readFileSync(adapter))).toBe(true);
    const missing = await cli("finetune", "--model", join(ws, "missing.gguf"));
    expect(missing.status).toBe(2);
    expect(missing.json.error.message).toMatch(/missing\.gguf does not exist/);
    const notGguf = await cli("finetune", "--model", join(ws, "events.csv"));
    expect(notGguf.status).toBe(2);
    expect(notGguf.json.error.message).toMatch(/events\.csv is not a GGUF file/);
  }, 600_000);

  it("keeps the openai backend's response cache in a deployment's database (store.url): another host's refresh is answered from it", async () => {
    const url = await database();
    const ws = tempDir("freshrec-backend-cache-pg-");
    const llm = await startLlmServer({ modelPath: await trainTinyModel(ws), modelName: "tiny", dataDir: join(ws, "llm-server"), port: 0, logStream: silentLog });
    try {
      writePlatform(ws);
      const config = join(ws, "freshrec.config.json");
      const openai = { baseURL: `${llm.url}/v1`, model: "tiny", apiKeyEnv: null, maxRetries: 0 };
      writeFileSync(config, JSON.stringify({ store: { url }, llm: { backend: "openai", openai }, rag: { minSupport: 1, method: "prompt" } }));
      const [hostA, hostB] = [join(ws, "host-a"), join(ws, "host-b")];
      const on = (host: string, ...args: string[]) => freshrec(["--workspace", host, "--config", config, ...args]);
      const sent = () => ({ chat: llm.stats.completions, echo: llm.stats.textCompletions });
      expect((await on(hostA, "ingest", "--clusters", join(ws, "clusters.csv"), "--items", join(ws, "items.csv"), "--events", join(ws, "events.csv"))).status).toBe(0);
      const base = await on(hostA, "pretrain");
      expect(base.status, base.stderr).toBe(0);
      // Every host has the models folder (a shared mount in a deployment, a copy here).
      cpSync(join(hostA, "models"), join(hostB, "models"), { recursive: true });

      const pairs = CLUSTERS.length * (CLUSTERS.length - 1);
      const first = await on(hostA, "refresh", "--as-of", "2025-06-20");
      expect(first.status, first.stderr).toBe(0);
      expect(first.json).toMatchObject({ pairs, rescored: pairs, published: true });
      const asked = sent();
      expect(asked.echo).toBeGreaterThanOrEqual(pairs);

      // Another host rebuilds the same table: every answer comes from the database, the server is not asked.
      const again = await on(hostB, "refresh", "--as-of", "2025-06-20", "--full");
      expect(again.status, again.stderr).toBe(0);
      expect(again.json).toMatchObject({ pairs, rescored: pairs, published: true });
      expect(sent()).toEqual(asked);
      const rowsOf = async (version: string) => (await on(hostB, "tables", "show", version, "--limit", "100")).json.rows;
      expect(await rowsOf(again.json.tableVersion)).toEqual(await rowsOf(first.json.tableVersion));
      // Its dry run prices nothing: the database has every prompt.
      const plan = await on(hostB, "refresh", "--as-of", "2025-06-20", "--full", "--dry-run");
      expect(plan.json).toMatchObject({ dryRun: true, cost: { prompts: pairs, cached: pairs, promptTokens: 0 } });
      // Neither workspace has a cache file.
      for (const host of [hostA, hostB]) expect(existsSync(join(host, "llm-cache.sqlite"))).toBe(false);

      // The doctor reads the cache table like the other stores of the database.
      const doctor = await on(hostB, "doctor");
      const check = (doctor.json.checks as { name: string; ok: boolean; detail: string }[]).find((c) => c.name === "response cache");
      expect(check, JSON.stringify(doctor.json)).toMatchObject({ ok: true, detail: expect.stringMatching(/: \d+ answers of the openai backend$/) });
      expect(Number(/: (\d+) answers/.exec(check!.detail)![1])).toBeGreaterThanOrEqual(pairs);
      for (const host of [hostA, hostB]) expect(existsSync(join(host, "llm-cache.sqlite"))).toBe(false);
    } finally {
      await llm.close();
    }
  }, 600_000);

  it("registers a configured GGUF in a deployment's database (store.url) and refreshes through it there", async () => {
    const url = await database();
    const ws = tempDir("freshrec-backend-gguf-pg-");
    writePlatform(ws);
    const modelPath = await trainTinyModel(ws);
    const config = join(ws, "freshrec.config.json");
    writeFileSync(config, JSON.stringify({ store: { url }, llm: { backend: "gguf", gguf: { modelPath, contextSize: 512 } }, rag: { minSupport: 1, method: "prompt" } }));
    const deployment = join(ws, "deployment");
    const cli = (...args: string[]) => freshrec(["--workspace", deployment, "--config", config, ...args]);
    expect((await cli("ingest", "--clusters", join(ws, "clusters.csv"), "--items", join(ws, "items.csv"), "--events", join(ws, "events.csv"))).status).toBe(0);
    const base = await cli("pretrain");
    expect(base.status, base.stderr).toBe(0);
    // The database records model files relative to the models folder every host has: the GGUF is placed there.
    const placed = join(deployment, "models", "m000001", "model.gguf");
    expect(base.json).toMatchObject({ modelVersion: "m000001", status: "live", backend: "gguf", trained: false, modelPath: placed });
    expect(readFileSync(placed).equals(readFileSync(modelPath))).toBe(true);
    const listed = await cli("models", "list");
    expect(listed.json.models).toMatchObject([{ version: "m000001", status: "live" }]);
    const pairs = CLUSTERS.length * (CLUSTERS.length - 1);
    const refreshed = await cli("refresh", "--as-of", "2025-06-20");
    expect(refreshed.status, refreshed.stderr).toBe(0);
    expect(refreshed.json).toMatchObject({ pairs, rescored: pairs, published: true });
    // Nothing of the deployment's state is in the workspace: the registry and the tables are in the database.
    expect(existsSync(join(deployment, "registry.sqlite"))).toBe(false);
    expect(existsSync(join(deployment, "tables.sqlite"))).toBe(false);
  }, 600_000);
});
