import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import Fastify from "fastify";
import { afterAll, describe, expect, it } from "vitest";
import { MissingApiKeyError, OpenAiLanguageModel, type OpenAiModelOptions } from "../../src/llm/backends/openai.js";
import { OpenAiTrainer } from "../../src/llm/backends/openai-trainer.js";
import type { TrainingEvent } from "../../src/llm/contracts.js";
import { startLlmServer, type RunningLlmServer } from "../../src/llm/openai-server.js";
import { measureGates } from "../../src/update/finetune.js";
import { evaluateGates } from "../../src/update/gates.js";
import { languageModelConformance } from "./conformance.js";
import { CLUSTERS, toySamples } from "./fixtures.js";
import { silentLog, trainTinyModel } from "./tiny-model.js";
import { GENRES, writeWordsModel } from "./multi-token-model.js";
import { loadLlamaApi } from "../../src/llm/engine/llama-api.js";
import { readModelFile } from "../../src/llm/engine/model-file.js";
import { BatchScorer } from "../../src/llm/engine/scorer.js";
import { BOS_ID, BYTE_BASE, EOS_ID } from "../../src/llm/engine/vocabulary.js";
import { renderPrompt } from "../../src/llm/prompt.js";
import { sqliteResponseCache } from "../../src/llm/backends/response-cache.js";
import { SystemClock } from "../../src/domain/clock.js";
import { tempDir } from "../temp-dir.js";

const ws = tempDir("freshrec-openai-");
let serverPromise: Promise<RunningLlmServer> | null = null;
/** One `freshrec llm serve` server (in process, port 0) over a tiny trained model, for every test of this file. */
function llmServer(): Promise<RunningLlmServer> {
  serverPromise ??= trainTinyModel(ws).then((modelPath) => startLlmServer({ modelPath, modelName: "tiny", dataDir: join(ws, "llm-server"), port: 0, logStream: silentLog }));
  return serverPromise;
}
/** `cachePath`: the response cache in that SQLite file. */
async function openModel({ cachePath, ...extra }: Partial<OpenAiModelOptions> & { cachePath?: string } = {}): Promise<OpenAiLanguageModel> {
  const server = await llmServer();
  const openCache = cachePath === undefined ? undefined : sqliteResponseCache(cachePath, new SystemClock());
  // freshrec llm serve takes no API key: declared keyless (apiKeyEnv null), as a config for it would say.
  return OpenAiLanguageModel.open({ baseURL: `${server.url}/v1`, model: "tiny", clusters: CLUSTERS, maxRetries: 0, apiKeyEnv: null, openCache, ...extra });
}
afterAll(async () => {
  await (await serverPromise)?.close();
});

languageModelConformance("openai (json_schema) against freshrec llm serve", async () => ({ model: await openModel() }));
languageModelConformance("openai (guided_choice) against freshrec llm serve", async () => ({ model: await openModel({ answer: "guided_choice" }) }));

describe("openai backend", () => {
  const prompts = CLUSTERS.slice(0, 4).flatMap((a) => CLUSTERS.slice(0, 4).filter((b) => b !== a).map((b) => ({ history: { c1: a.id, c2: b.id } })));

  it("ranks like the embedded model it talks to, by echo and by first tokens (one token per cluster: both exact)", async () => {
    const { EmbeddedLanguageModel } = await import("../../src/llm/backends/embedded.js");
    const embedded = await EmbeddedLanguageModel.open(join(ws, "models", "tiny.gguf"));
    const echo = await openModel();
    const firstToken = await openModel({ ranking: "first-token" });
    expect(echo.info.ranking).toMatchObject({ method: "echo", exact: true });
    expect(firstToken.info.ranking).toMatchObject({ method: "first-token", exact: false });
    try {
      const a = await embedded.score(prompts, 5);
      for (const remote of [echo, firstToken]) {
        (await remote.score(prompts, 5)).forEach((ranked, i) => {
          expect(ranked.map((r) => r.cluster)).toEqual(a[i].map((r) => r.cluster));
          ranked.forEach((r, k) => expect(r.score).toBeCloseTo(a[i][k].score, 4));
        });
      }
    } finally {
      await embedded.close();
      await echo.close();
      await firstToken.close();
    }
  });

  it("caches answers by request hash: an unchanged rebuild, even in a new process, sends nothing", async () => {
    const server = await llmServer();
    const cachePath = join(ws, "cache", "llm-cache.sqlite");
    const sent = () => server.stats.completions + server.stats.textCompletions;
    const first = await openModel({ cachePath });
    const before = sent();
    const a = await first.score(prompts, 3);
    expect(server.stats.textCompletions).toBeGreaterThanOrEqual(prompts.length);
    expect(sent() - before).toBe(prompts.length);
    // generate() is a chat request, cached in turn.
    await first.generate(prompts[0]);
    await first.generate(prompts[0]);
    expect(first.cacheStats).toEqual({ hits: 1, misses: prompts.length + 1 });
    expect((await first.estimateCost(prompts)).cached).toBe(prompts.length);
    await first.close();
    const second = await openModel({ cachePath });
    expect(await second.score(prompts, 3)).toEqual(a);
    expect(sent() - before).toBe(prompts.length + 1);
    expect(second.stats).toMatchObject({ requests: prompts.length, cacheHits: prompts.length, httpRequests: 0 });
    // A changed prompt (a RAG context) is a new request.
    await second.score([{ history: { c1: "baking", c2: "hiking" }, context: { successors: ["jazz"] } }], 3);
    expect(sent() - before).toBe(prompts.length + 2);
    await second.close();
    // With first-token ranking, generate() asks the very request score() did: free.
    const chat = await openModel({ cachePath, ranking: "first-token" });
    await chat.score(prompts.slice(1, 2), 3);
    await chat.generate(prompts[1]);
    expect(chat.cacheStats).toEqual({ hits: 1, misses: 1 });
    await chat.close();
  });

  it("estimates the cost of a build before it runs (prompts x tokens x price)", async () => {
    const model = await openModel({ inputPricePerMTok: 0.15, outputPricePerMTok: 0.6 });
    const estimate = await model.estimateCost(prompts);
    expect(estimate.prompts).toBe(prompts.length);
    expect(estimate.cached).toBe(0);
    expect(estimate.promptTokens).toBeGreaterThan(prompts.length * 50);
    expect(estimate.usd).toBeCloseTo((estimate.promptTokens * 0.15 + estimate.completionTokens * 0.6) / 1e6, 10);
    expect((await (await openModel()).estimateCost(prompts)).usd).toBeNull();
  });

  it("maps plain-text answers by exact match only; off-list answers fail the exact-match gate", async () => {
    // Unconstrained and sampled hot, the tiny model often answers words that are not a description.
    const model = await openModel({ answer: "text", temperature: 1.5, seed: 11 });
    const answers = [];
    for (const p of prompts) answers.push(await model.generate(p));
    const offList = answers.filter((a) => a.cluster === null);
    expect(offList.length).toBeGreaterThan(0);
    for (const a of offList) expect(CLUSTERS.map((c) => c.description)).not.toContain(a.text);
    for (const a of answers.filter((x) => x.cluster !== null)) expect(CLUSTERS.find((c) => c.id === a.cluster)?.description).toBe(a.text);
    const gates = evaluateGates(answers.map((a) => a.cluster), [], [], { minExactMatchRate: 0.9 });
    expect(gates.exactMatchRate).toBeCloseTo((answers.length - offList.length) / answers.length, 10);
    expect(gates.passed).toBe(false);
    // Constrained answers always name a cluster.
    const constrained = await openModel();
    for (const p of prompts.slice(0, 4)) expect((await constrained.generate(p)).cluster).not.toBeNull();
    // So the fine-tuning gates measure exact-match on free text only (where it can bite) and report the
    // constrained modes as by construction.
    expect(model.info.answers?.kind).toBe("free-text");
    expect(constrained.info.answers?.kind).toBe("constrained");
    expect((await openModel({ answer: "guided_choice" })).info.answers?.kind).toBe("constrained");
    const test = prompts.map((p, k) => ({ userId: `u${k}`, ...p.history, later: [] }));
    const measured = await measureGates(await openModel({ answer: "text", temperature: 1.5, seed: 11 }), { test }, {});
    expect(measured.exactMatch).toMatchObject({ basis: "measured", probes: prompts.length });
    expect(measured.checks[0]).toMatchObject({ gate: "exact-match", canBite: true });
    const byConstruction = await measureGates(await openModel(), { test }, {});
    expect(byConstruction.exactMatch).toMatchObject({ basis: "by construction", probes: 0 });
    expect(byConstruction.checks[0]).toMatchObject({ gate: "exact-match", canBite: false, passed: true });
  });

  it("retries 429 and 5xx answers with backoff (a real loopback server that is overloaded twice)", async () => {
    const app = Fastify();
    let calls = 0;
    app.post("/v1/chat/completions", async (_request, reply) => {
      calls++;
      if (calls === 1) return reply.status(429).header("retry-after-ms", "20").send({ error: { message: "rate limited", type: "requests", param: null, code: null } });
      if (calls === 2) return reply.status(503).header("retry-after-ms", "20").send({ error: { message: "overloaded", type: "server_error", param: null, code: null } });
      const content = JSON.stringify({ cluster: "jazz, vinyl, saxophone" });
      return {
        id: "x",
        object: "chat.completion",
        created: 0,
        model: "m",
        choices: [{ index: 0, message: { role: "assistant", content, refusal: null }, logprobs: null, finish_reason: "stop" }],
        usage: { prompt_tokens: 10, completion_tokens: 3, total_tokens: 13 },
      };
    });
    await app.listen({ host: "127.0.0.1", port: 0 });
    const port = (app.server.address() as { port: number }).port;
    try {
      const model = await OpenAiLanguageModel.open({ baseURL: `http://127.0.0.1:${port}/v1`, model: "m", clusters: CLUSTERS, maxRetries: 3, apiKeyEnv: null });
      const answer = await model.generate({ history: { c1: "baking", c2: "hiking" } });
      expect(answer).toEqual({ text: "jazz, vinyl, saxophone", cluster: "jazz" });
      expect(calls).toBe(3);
      expect(model.stats.httpRequests).toBe(3);
      // Without logprobs there is no ranking (the answer alone would look like a certain model), and a server
      // without the completions route cannot rank by whole answers: both say so.
      const firstToken = await OpenAiLanguageModel.open({ baseURL: `http://127.0.0.1:${port}/v1`, model: "m", clusters: CLUSTERS, maxRetries: 0, apiKeyEnv: null, ranking: "first-token" });
      await expect(firstToken.score([{ history: { c1: "baking", c2: "hiking" } }], 3)).rejects.toMatchObject({ name: "RankingUnsupportedError", code: "ENGINE", message: expect.stringContaining("without logprobs") });
      await expect(model.score([{ history: { c1: "baking", c2: "hiking" } }], 3)).rejects.toMatchObject({
        name: "RankingUnsupportedError",
        message: expect.stringMatching(/POST \/v1\/completions answered 404.*set ranking "first-token"/),
      });
      const impatient = await OpenAiLanguageModel.open({ baseURL: `http://127.0.0.1:${port}/v1`, model: "m", clusters: CLUSTERS, maxRetries: 0, apiKeyEnv: null });
      calls = 0;
      await expect(impatient.generate({ history: { c1: "baking", c2: "hiking" } })).rejects.toMatchObject({ code: "ENGINE", message: expect.stringMatching(/answered 429/) });
    } finally {
      await app.close();
    }
  });

  it("says which server it cannot reach", async () => {
    const model = await OpenAiLanguageModel.open({ baseURL: "http://127.0.0.1:9/v1", model: "m", clusters: CLUSTERS, maxRetries: 0, apiKeyEnv: null });
    await expect(model.generate({ history: { c1: "baking", c2: "hiking" } })).rejects.toMatchObject({ code: "ENGINE", message: expect.stringMatching(/cannot reach http:\/\/127\.0\.0\.1:9\/v1/) });
  });
});

describe("ranking through a tokenizer that splits descriptions (llm serve reading descriptions as words)", () => {
  // "comedy, drama", "comedy, horror" and "comedy, romance" are two tokens each and share the first ("comedy,").
  let words: RunningLlmServer | null = null;
  const modelPath = join(ws, "genres.gguf");
  const wordsServer = async () => {
    if (!words) {
      writeWordsModel(modelPath, GENRES);
      words = await startLlmServer({ modelPath, modelName: "genres", dataDir: join(ws, "llm-server-words"), port: 0, logStream: silentLog, descriptionTokens: "words" });
    }
    return words;
  };
  afterAll(async () => {
    await words?.close();
  });
  const open = async (extra: Partial<OpenAiModelOptions> = {}) =>
    OpenAiLanguageModel.open({ baseURL: `${(await wordsServer()).url}/v1`, model: "genres", clusters: GENRES, maxRetries: 0, apiKeyEnv: null, ...extra });
  const history = { c1: "drama-history", c2: "horror-thriller" };

  /**
   * The reference, computed on the model file without the server or the backend: each candidate's text (prompt,
   * a space, the description) as the server reads it in words, one prefix at a time through llama.cpp, the
   * log-probability of each answer token over the tokens the server can emit, summed; then a softmax over the
   * allowed clusters.
   */
  async function reference(): Promise<Map<string, number>> {
    const info = readModelFile(modelPath);
    const vocab = info.vocabulary;
    const emittable = [EOS_ID, ...Array.from({ length: vocab.size - BYTE_BASE }, (_, i) => BYTE_BASE + i)];
    const scorer = BatchScorer.open(loadLlamaApi(), modelPath, { answerBase: 0, answerCount: vocab.size, sequences: 1, maxPromptTokens: 128 });
    try {
      const promptText = renderPrompt({ history }, new Map(GENRES.map((c) => [c.id, c.description])));
      const promptTokens = [BOS_ID, ...vocab.encode(promptText, { phrases: false })];
      const allowed = GENRES.filter((c) => c.id !== history.c1 && c.id !== history.c2);
      const logps: number[] = [];
      for (const c of allowed) {
        const tokens = [BOS_ID, ...vocab.encode(`${promptText} ${c.description}`, { phrases: false })];
        expect(tokens.slice(0, promptTokens.length)).toEqual(promptTokens);
        expect(tokens.length - promptTokens.length).toBe(c.description.split(" ").length);
        let sum = 0;
        for (let i = promptTokens.length; i < tokens.length; i++) {
          const row = await scorer.score([tokens.slice(0, i)]);
          const max = Math.max(...emittable.map((t) => row[t]));
          const log = Math.log(emittable.reduce((acc, t) => acc + Math.exp(row[t] - max), 0)) + max;
          sum += row[tokens[i]] - log;
        }
        logps.push(sum);
      }
      const max = Math.max(...logps);
      const total = logps.reduce((acc, x) => acc + Math.exp(x - max), 0);
      return new Map(allowed.map((c, k) => [c.id, Math.exp(logps[k] - max) / total]));
    } finally {
      await scorer.close();
    }
  }

  it("echo ranks by whole answers, matching the reference; first-token ranking is off on the same prompt", async () => {
    const exact = await open();
    const expected = await reference();
    const [ranked] = await exact.score([{ history }], GENRES.length);
    expect(ranked.map((r) => r.cluster)).toEqual([...expected].sort((a, b) => b[1] - a[1]).map(([id]) => id));
    for (const r of ranked) expect(r.score).toBeCloseTo(expected.get(r.cluster)!, 5);
    // The old method, through the chat route of the same server: the three comedies share "comedy,", so they share
    // its probability evenly, whatever the model says of the second word.
    const firstToken = await open({ ranking: "first-token" });
    const [old] = await firstToken.score([{ history }], GENRES.length);
    const oldOf = new Map(old.map((r) => [r.cluster, r.score]));
    expect(oldOf.get("comedy-drama")).toBeCloseTo(oldOf.get("comedy-horror")!, 10);
    expect(oldOf.get("comedy-drama")).toBeCloseTo(oldOf.get("comedy-romance")!, 10);
    const error = Math.max(...[...expected].map(([id, p]) => Math.abs((oldOf.get(id) ?? 0) - p)));
    expect(error).toBeGreaterThan(0.05);
  });

  it("refuses a cluster set where one description begins another unless the echo template ends the answer", async () => {
    const clusters = [...GENRES, { id: "documentary-nature", description: "documentary nature" }];
    const base = { baseURL: "http://127.0.0.1:9/v1", model: "m", clusters, apiKeyEnv: null };
    await expect(OpenAiLanguageModel.open(base)).rejects.toMatchObject({ code: "BAD_CONFIG", message: expect.stringMatching(/"documentary" and "documentary nature"/) });
    const ended = await OpenAiLanguageModel.open({ ...base, echoTemplate: { answer: " {answer}</s>" } });
    expect(ended.info.ranking.method).toBe("echo");
    expect((ended.echoBody({ history }).prompt as string[]).at(-1)).toMatch(/\. documentary nature<\/s>$/);
    // First-token ranking does not score whole answers, so it has nothing to refuse.
    await expect(OpenAiLanguageModel.open({ ...base, ranking: "first-token" })).resolves.toBeDefined();
    await expect(OpenAiLanguageModel.open({ ...base, echoTemplate: { prompt: "no slot" } })).rejects.toMatchObject({ code: "BAD_CONFIG", message: expect.stringContaining("echoTemplate.prompt") });
  });
});

describe("API keys: a key from the named variable, or none for a server declared keyless; never a placeholder", () => {
  /** A real loopback server that answers chat completions and records each request's Authorization header. */
  async function recordingServer() {
    const app = Fastify();
    const seen: (string | undefined)[] = [];
    app.post("/v1/chat/completions", async (request) => {
      seen.push(request.headers.authorization);
      return {
        id: "x",
        object: "chat.completion",
        created: 0,
        model: "m",
        choices: [{ index: 0, message: { role: "assistant", content: JSON.stringify({ cluster: "jazz, vinyl, saxophone" }), refusal: null }, logprobs: null, finish_reason: "stop" }],
        usage: { prompt_tokens: 10, completion_tokens: 3, total_tokens: 13 },
      };
    });
    await app.listen({ host: "127.0.0.1", port: 0 });
    return { app, seen, baseURL: `http://127.0.0.1:${(app.server.address() as { port: number }).port}/v1` };
  }
  const prompt = { history: { c1: "baking", c2: "hiking" } };

  it("an unset or empty key variable is an error naming it, raised before any request (model and trainer)", async () => {
    const server = await recordingServer();
    try {
      delete process.env.FRESHREC_TEST_UNSET_KEY;
      const open = () => OpenAiLanguageModel.open({ baseURL: server.baseURL, model: "m", clusters: CLUSTERS, apiKeyEnv: "FRESHREC_TEST_UNSET_KEY" });
      await expect(open()).rejects.toThrow(MissingApiKeyError);
      await expect(open()).rejects.toMatchObject({ code: "BAD_CONFIG", variable: "FRESHREC_TEST_UNSET_KEY", message: expect.stringMatching(/FRESHREC_TEST_UNSET_KEY \(llm\.openai\.apiKeyEnv\).*not set.*apiKeyEnv to null/) });
      process.env.FRESHREC_TEST_UNSET_KEY = " ";
      await expect(open()).rejects.toThrow(MissingApiKeyError);
      expect(() => new OpenAiTrainer({ baseURL: server.baseURL, model: "m", clusters: CLUSTERS, apiKeyEnv: "FRESHREC_TEST_UNSET_KEY" })).toThrow(MissingApiKeyError);
      expect(server.seen).toEqual([]);
    } finally {
      delete process.env.FRESHREC_TEST_UNSET_KEY;
      await server.app.close();
    }
  });

  it("sends the named variable's key; a server declared keyless (apiKeyEnv null) gets no Authorization header at all", async () => {
    const server = await recordingServer();
    try {
      process.env.FRESHREC_TEST_KEY = "sk-test-123";
      const keyed = await OpenAiLanguageModel.open({ baseURL: server.baseURL, model: "m", clusters: CLUSTERS, apiKeyEnv: "FRESHREC_TEST_KEY", maxRetries: 0 });
      expect((await keyed.generate(prompt)).cluster).toBe("jazz");
      const keyless = await OpenAiLanguageModel.open({ baseURL: server.baseURL, model: "m", clusters: CLUSTERS, apiKeyEnv: null, maxRetries: 0 });
      expect((await keyless.generate(prompt)).cluster).toBe("jazz");
      expect(server.seen).toEqual(["Bearer sk-test-123", undefined]);
    } finally {
      delete process.env.FRESHREC_TEST_KEY;
      await server.app.close();
    }
  });

  it("refuses a keyless declaration for OpenAI's own API, which always needs a key", async () => {
    await expect(OpenAiLanguageModel.open({ baseURL: "https://api.openai.com/v1", model: "gpt-4o-mini", clusters: CLUSTERS, apiKeyEnv: null })).rejects.toMatchObject({
      name: "MissingApiKeyError",
      code: "BAD_CONFIG",
      variable: null,
    });
  });
});

describe("hosted fine-tuning (OpenAiTrainer against freshrec llm serve)", () => {
  it("uploads the samples, runs the job with progress, and names the new model in a hosted-model file", async () => {
    const server = await llmServer();
    const trainer = new OpenAiTrainer({ baseURL: `${server.url}/v1`, model: "tiny", clusters: CLUSTERS, pollIntervalMs: 50, maxRetries: 0, apiKeyEnv: null });
    expect(trainer.jsonl(toySamples(1)).split("\n")).toHaveLength(1);
    const events: TrainingEvent[] = [];
    const out = join(ws, "models", "hosted-1.json");
    const result = await trainer.train(toySamples(150, 4), { outputPath: out, epochs: 1, validation: toySamples(20, 8), onProgress: (e) => events.push(e) });
    expect(result.modelPath).toBe(out);
    expect(existsSync(out)).toBe(true);
    const hosted = JSON.parse(readFileSync(out, "utf8")) as { model: string };
    expect(hosted.model).toMatch(/^ft:tiny:freshrec:/);
    expect(result.trainTokens).toBeGreaterThan(0);
    expect(events.some((e) => e.type === "step")).toBe(true);
    // The next fine-tune continues the hosted model, and the backend opens it from the file.
    const model = await openModel({ model: out });
    expect(model.info.source).toContain(hosted.model);
    expect((await model.generate({ history: { c1: "baking", c2: "hiking" } })).cluster).not.toBeNull();
    const next = await trainer.train(toySamples(60, 6), { from: out, outputPath: join(ws, "models", "hosted-2.json"), epochs: 1 });
    expect((JSON.parse(readFileSync(next.modelPath, "utf8")) as { model: string }).model).toMatch(/^ft:tiny:freshrec:/);
  });

  it("reports a failed job with the server's reason", async () => {
    const server = await llmServer();
    const trainer = new OpenAiTrainer({ baseURL: `${server.url}/v1`, model: "no-such-model", clusters: CLUSTERS, pollIntervalMs: 50, maxRetries: 0, apiKeyEnv: null });
    await expect(trainer.train(toySamples(20), { outputPath: join(ws, "models", "never.json"), epochs: 1 })).rejects.toMatchObject({ code: "ENGINE", message: expect.stringMatching(/404.*no-such-model/) });
  });
});

describe("the Batch API (freshrec llm serve's /v1/batches and the backend's batch option)", () => {
  const prompts = CLUSTERS.flatMap((a) => CLUSTERS.filter((b) => b !== a).map((b) => ({ history: { c1: a.id, c2: b.id } })));
  const list = async (server: RunningLlmServer) => ((await (await fetch(`${server.url}/v1/batches`)).json()) as { data: { id: string; status: string }[] }).data;

  it("answers every line of an uploaded file, puts failed lines in an error file, and rejects a malformed file whole", async () => {
    const server = await llmServer();
    const { default: OpenAI, toFile } = await import("openai");
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const model = await openModel();
    const line = (id: string, body: Record<string, unknown>) => JSON.stringify({ custom_id: id, method: "POST", url: "/v1/chat/completions", body });
    const good = model.requestBody(prompts[0]);
    const jsonl = [line("a", good), line("b", model.requestBody(prompts[1])), line("c", { ...good, model: "no-such-model" })].join("\n");
    const file = await client.files.create({ file: await toFile(Buffer.from(jsonl), "in.jsonl"), purpose: "batch" });
    let batch = await client.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" });
    while (!["completed", "failed", "cancelled"].includes(batch.status)) {
      await new Promise((r) => setTimeout(r, 20));
      batch = await client.batches.retrieve(batch.id);
    }
    expect(batch.status).toBe("completed");
    expect(batch.request_counts).toEqual({ total: 3, completed: 2, failed: 1 });
    const output = (await (await client.files.content(batch.output_file_id!)).text()).trim().split("\n").map((l) => JSON.parse(l));
    expect(output.map((o) => o.custom_id)).toEqual(["a", "b"]);
    // The same answer as the chat completion route gives for the same request.
    const direct = await client.chat.completions.create(good as never);
    expect(output[0].response.status_code).toBe(200);
    expect(output[0].response.body.choices[0].message.content).toBe((direct as { choices: { message: { content: string } }[] }).choices[0].message.content);
    const errors = (await (await client.files.content(batch.error_file_id!)).text()).trim().split("\n").map((l) => JSON.parse(l));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ custom_id: "c", response: { status_code: 404 } });

    // A line that is not a request fails the batch as a whole, naming the line; nothing is answered.
    const bad = await client.files.create({ file: await toFile(Buffer.from([line("a", good), "{not json", JSON.stringify({ custom_id: "z", method: "GET", url: "/v1/chat/completions", body: {} })].join("\n")), "bad.jsonl"), purpose: "batch" });
    const failed = await client.batches.create({ input_file_id: bad.id, endpoint: "/v1/chat/completions", completion_window: "24h" });
    expect(failed.status).toBe("failed");
    expect(failed.errors?.data?.map((e) => e.line)).toEqual([2, 3]);
    // A fine-tuning file is not a batch file.
    await expect(client.batches.create({ input_file_id: (await client.files.create({ file: await toFile(Buffer.from(jsonl), "ft.jsonl"), purpose: "fine-tune" })).id, endpoint: "/v1/chat/completions", completion_window: "24h" })).rejects.toMatchObject({ status: 400 });

    // Cancelling a running batch stops it before its last line.
    const many = Array.from({ length: 400 }, (_, i) => line(`m${i}`, model.requestBody(prompts[i % prompts.length])));
    const big = await client.files.create({ file: await toFile(Buffer.from(many.join("\n")), "big.jsonl"), purpose: "batch" });
    const running = await client.batches.create({ input_file_id: big.id, endpoint: "/v1/chat/completions", completion_window: "24h" });
    expect((await client.batches.cancel(running.id)).status).toBe("cancelling");
    let cancelled = await client.batches.retrieve(running.id);
    while (cancelled.status === "cancelling") {
      await new Promise((r) => setTimeout(r, 20));
      cancelled = await client.batches.retrieve(running.id);
    }
    expect(cancelled.status).toBe("cancelled");
    expect(cancelled.request_counts!.completed).toBeLessThan(400);
  });

  it("scores a build through batches with the same ranking as one request per prompt, then from the cache", async () => {
    const server = await llmServer();
    const direct = await openModel();
    const expected = await direct.score(prompts, 5);
    const cachePath = join(ws, "batch-cache", "llm-cache.sqlite");
    const batched = await openModel({ cachePath, batch: { minPrompts: 10, pollIntervalMs: 20, maxRequestsPerBatch: 25 } });
    expect(batched.promptsPerCall).toBe(Number.POSITIVE_INFINITY);
    const before = (await list(server)).length;
    const progress: number[] = [];
    expect(await batched.score(prompts, 5, undefined, { onProgress: (d) => progress.push(d) })).toEqual(expected);
    // 56 prompts at most 25 per batch: 3 batches, submitted together.
    expect(batched.stats).toMatchObject({ batches: 3, batchedRequests: prompts.length, cacheHits: 0 });
    expect((await list(server)).length - before).toBe(3);
    expect(progress.at(-1)).toBe(prompts.length);
    // Progress only rises, and never past the prompts there are.
    progress.forEach((p, i) => expect(p).toBeGreaterThanOrEqual(progress[i - 1] ?? 0));
    expect(Math.max(...progress)).toBe(prompts.length);
    // Repeated prompts (held-out users sharing a history) are one batch line each, answered for every copy.
    const twice = await openModel({ cachePath: join(ws, "batch-cache-2", "llm-cache.sqlite"), batch: { minPrompts: 10, pollIntervalMs: 20 } });
    expect(await twice.score([...prompts, ...prompts], 5)).toEqual([...expected, ...expected]);
    expect(twice.stats).toMatchObject({ batches: 1, batchedRequests: prompts.length });
    // The answers went into the response cache: the same build again sends nothing.
    expect(await batched.score(prompts, 5)).toEqual(expected);
    expect(batched.stats).toMatchObject({ batches: 3, cacheHits: prompts.length });
    // Fewer uncached prompts than minPrompts go as ordinary requests.
    const small = [{ history: { c1: "baking", c2: "hiking" }, context: { successors: ["jazz"] } }];
    const asked = server.stats.textCompletions;
    await batched.score(small, 3);
    expect(batched.stats.batches).toBe(3);
    expect(server.stats.textCompletions - asked).toBe(1);
    // The estimate says how the build would go and prices it at the batch discount.
    const priced = await openModel({ inputPricePerMTok: 1, outputPricePerMTok: 4, batch: { minPrompts: 10 } });
    const unbatched = await openModel({ inputPricePerMTok: 1, outputPricePerMTok: 4 });
    const [b, u] = [await priced.estimateCost(prompts), await unbatched.estimateCost(prompts)];
    expect(b.via).toMatch(/batch API/);
    expect(u.via).toMatch(/completions with echo \(8 texts per prompt\), 4 at a time/);
    expect(b.usd).toBeCloseTo(u.usd! * 0.5, 12);
    await batched.close();
  });

  /** Runs the child that submits a build's batch and kills it once the batch is running. */
  async function submitAndDie(server: RunningLlmServer, cachePath: string): Promise<void> {
    const { spawn } = await import("node:child_process");
    const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "fixtures", "batch-child.ts"), `${server.url}/v1`, cachePath], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (d: Buffer) => d.toString().includes("submitted") && resolve());
      child.on("exit", (code) => reject(new Error(`child exited with ${code} before submitting`)));
    });
    child.kill("SIGKILL");
  }

  it("submits again when the server no longer knows the recorded batch", async () => {
    const server = await llmServer();
    const cachePath = join(ws, "forgotten-cache", "llm-cache.sqlite");
    await submitAndDie(server, cachePath);
    const { default: Database } = await import("better-sqlite3");
    const db = new Database(cachePath);
    db.prepare("UPDATE batches SET batch_id = 'batch_forgotten_by_the_server'").run();
    db.close();
    const resumed = await openModel({ cachePath, batch: { minPrompts: 1, pollIntervalMs: 20 } });
    expect(await resumed.score(prompts, 3)).toEqual(await (await openModel()).score(prompts, 3));
    expect(resumed.stats).toMatchObject({ batches: 1, batchedRequests: prompts.length });
  });

  it("takes batch files beyond the 8 MiB body limit of the other routes", async () => {
    const server = await llmServer();
    const { default: OpenAI, toFile } = await import("openai");
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const big = Buffer.alloc(9 * 1024 * 1024, 0x20);
    const file = await client.files.create({ file: await toFile(big, "big.jsonl"), purpose: "batch" });
    expect(file.bytes).toBe(big.length);
  });

  it("picks up its running batch after the process that submitted it died, instead of paying again", async () => {
    const server = await llmServer();
    const cachePath = join(ws, "resume-cache", "llm-cache.sqlite");
    const before = (await list(server)).length;
    await submitAndDie(server, cachePath);
    expect((await list(server)).length - before).toBe(1);
    const resumed = await openModel({ cachePath, batch: { minPrompts: 1, pollIntervalMs: 20 } });
    const ranked = await resumed.score(prompts, 3);
    expect(resumed.stats).toMatchObject({ batches: 0, batchedRequests: prompts.length });
    expect((await list(server)).length - before).toBe(1);
    expect(ranked).toEqual(await (await openModel()).score(prompts, 3));
  });
});
