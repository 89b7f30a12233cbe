/**
 * `npm run bench -- backends`: table-build throughput through each LanguageModel backend on the same model and the
 * same 100-cluster table (9,900 ordered pairs, top-10), and the openai backend's response-cache hit share on an
 * incremental refresh (10% of the pairs get a new RAG context, the rest are unchanged).
 *
 * - embedded: the batched FFI scorer.
 * - openai: the `openai` backend (json_schema, concurrency 4, keyless) against `freshrec llm serve` in this process
 *   over loopback HTTP, so the number is the protocol's cost over the same engine. Measured twice, on one server and
 *   each with its own empty response cache: ranking "first-token" (one chat completion per prompt; the path the
 *   backend took before echo ranking, kept as `openai_prompts_per_s` so earlier results stay comparable) and ranking
 *   "echo" (one POST /v1/completions per prompt carrying one text per cluster, 100 here; `openai_echo_prompts_per_s`),
 *   the default on any server but OpenAI's. The cache-hit share is measured on echo requests.
 * - gguf: node-llama-cpp reading the prompt as text (one description log-probability per candidate, token trie).
 *   A freshrec model file has no text merges, so llama.cpp reads it byte by byte (~120 tokens per prompt): the rate
 *   is measured on `BENCH_BACKENDS_GGUF_PAIRS` pairs (default 200) and says what that path costs, not what a real
 *   GGUF with a normal tokenizer would.
 *
 *   The same pairs are then split over `BENCH_BACKENDS_GGUF_PROCESSES` (default 2) child processes, each with its
 *   own `threads: 1` context (the scale-out the backend's docs suggest), timed from a common start signal after the
 *   models are loaded, against one child process measured the same way: `gguf_processes_speedup` says whether that
 *   is faster than one process on this machine.
 *
 * `BENCH_BACKENDS_PAIRS` limits the pairs of the embedded and openai builds (smoke runs).
 */
import { fork } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { BenchRow, BenchSuiteResult } from "./run.js";
import type { Cluster } from "../src/domain/types.js";
import { EmbeddedLanguageModel } from "../src/llm/backends/embedded.js";
import { GgufLanguageModel } from "../src/llm/backends/gguf.js";
import { OpenAiLanguageModel, type RankingMethod } from "../src/llm/backends/openai.js";
import { sqliteResponseCache } from "../src/llm/backends/response-cache.js";
import { SystemClock } from "../src/domain/clock.js";
import type { LanguageModel, PromptInput, TrainingSample } from "../src/llm/contracts.js";
import { EmbeddedTrainer } from "../src/llm/engine/trainer.js";
import { startLlmServer } from "../src/llm/openai-server.js";

const here = fileURLToPath(import.meta.url);
const CLUSTER_COUNT = 100;
const TOP_N = 10;

function clusters(): Cluster[] {
  const words = ["baking", "hiking", "jazz", "chess", "garden", "cars", "poetry", "space", "film", "yoga"];
  const kinds = ["basics", "history", "gear", "events", "stories", "science", "travel", "craft", "news", "art"];
  return Array.from({ length: CLUSTER_COUNT }, (_, i) => ({ id: `c${String(i).padStart(3, "0")}`, description: `${words[i % 10]}, ${kinds[Math.floor(i / 10)]}` }));
}

function samples(ids: readonly string[], n: number): TrainingSample[] {
  let s = 7;
  const rnd = () => ((s = (s * 1103515245 + 12345) & 0x7fffffff), s / 0x7fffffff);
  const out: TrainingSample[] = [];
  while (out.length < n) {
    const a = Math.floor(rnd() * ids.length);
    const b = Math.floor(rnd() * ids.length);
    const next = (b + 1 + Math.floor(rnd() * 3)) % ids.length;
    if (a === b || next === a || next === b) continue;
    out.push({ prompt: { history: { c1: ids[a], c2: ids[b] } }, answer: ids[next] });
  }
  return out;
}

async function build(model: LanguageModel, prompts: readonly PromptInput[]): Promise<number> {
  const t0 = process.hrtime.bigint();
  await model.score(prompts, TOP_N);
  return prompts.length / (Number(process.hrtime.bigint() - t0) / 1e9);
}

export async function run(): Promise<BenchSuiteResult> {
  const dir = mkdtempSync(join(tmpdir(), "freshrec-bench-backends-"));
  try {
    return await runIn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The suite, its models and stores in `dir`. */
async function runIn(dir: string): Promise<BenchSuiteResult> {
  const cs = clusters();
  const ids = cs.map((c) => c.id);
  const trainer = new EmbeddedTrainer({ init: { clusters: cs, shape: { embedding: 64, layers: 1, heads: 2, feedForward: 128, contextLength: 256 } } });
  const trained = await trainer.train(samples(ids, 2000), { outputPath: join(dir, "model.gguf"), epochs: 1 });
  const limit = Number(process.env.BENCH_BACKENDS_PAIRS ?? Infinity);
  const pairs: PromptInput[] = [];
  for (const c1 of ids) for (const c2 of ids) if (c1 !== c2 && pairs.length < limit) pairs.push({ history: { c1, c2 } });

  const embedded = await EmbeddedLanguageModel.open(trained.modelPath);
  await embedded.score(pairs.slice(0, 50), TOP_N); // warm-up
  const embeddedRate = await build(embedded, pairs);
  await embedded.close();

  const server = await startLlmServer({ modelPath: trained.modelPath, modelName: "bench", dataDir: join(dir, "server"), port: 0, logLevel: "silent" });
  // llm serve takes no key: declared keyless, as a config for it says.
  const remoteOptions = (ranking: RankingMethod, cachePath: string) =>
    ({ baseURL: `${server.url}/v1`, model: "bench", clusters: cs, concurrency: 4, openCache: sqliteResponseCache(cachePath, new SystemClock()), maxRetries: 0, apiKeyEnv: null, ranking }) as const;
  const firstToken = await OpenAiLanguageModel.open(remoteOptions("first-token", join(dir, "llm-cache-first-token.sqlite")));
  const openaiRate = await build(firstToken, pairs);
  await firstToken.close();
  const echoCache = join(dir, "llm-cache-echo.sqlite");
  const echo = await OpenAiLanguageModel.open(remoteOptions("echo", echoCache));
  const openaiEchoRate = await build(echo, pairs);
  await echo.close();
  // Incremental refresh: every tenth pair gets a retrieved successor in its prompt; the others are unchanged.
  const refreshed = pairs.map((p, i) => (i % 10 === 0 ? { ...p, context: { successors: [ids[(ids.indexOf(p.history.c2) + 1) % ids.length]] } } : p));
  const again = await OpenAiLanguageModel.open(remoteOptions("echo", echoCache));
  await again.score(refreshed, TOP_N);
  const cacheHitShare = again.stats.cacheHits / again.stats.requests;
  await again.close();
  await server.close();

  const ggufPairs = pairs.slice(0, Number(process.env.BENCH_BACKENDS_GGUF_PAIRS ?? 200));
  const gguf = await GgufLanguageModel.open({ modelPath: trained.modelPath, clusters: cs, contextSize: 512 });
  await gguf.score(ggufPairs.slice(0, 2), TOP_N); // warm-up
  const ggufRate = await build(gguf, ggufPairs);
  await gguf.close();
  const processes = Number(process.env.BENCH_BACKENDS_GGUF_PROCESSES ?? 2);
  // Speed-up against one child process measured the same way, not against the in-process rate above.
  const ggufOneProcessRate = await ggufInProcesses(trained.modelPath, ggufPairs, 1);
  const ggufParallelRate = await ggufInProcesses(trained.modelPath, ggufPairs, processes);

  const rows: BenchRow[] = [
    { metric: `embedded table build (${pairs.length} pairs, top-${TOP_N})`, value: embeddedRate, unit: "prompts/s" },
    { metric: `gguf table build (${ggufPairs.length} of the pairs)`, value: ggufRate, unit: "prompts/s" },
    { metric: `gguf, the same pairs over ${processes} processes (threads: 1 each)`, value: ggufParallelRate, unit: "prompts/s" },
    { metric: "gguf, the same pairs in 1 child process", value: ggufOneProcessRate, unit: "prompts/s" },
    { metric: `gguf speed-up of ${processes} processes over 1`, value: ggufParallelRate / ggufOneProcessRate, unit: "x" },
    { metric: `openai backend via freshrec llm serve, loopback, ranking first-token (${pairs.length} pairs, concurrency 4)`, value: openaiRate, unit: "prompts/s" },
    { metric: `openai backend via freshrec llm serve, loopback, ranking echo (${pairs.length} pairs x ${cs.length} texts, concurrency 4)`, value: openaiEchoRate, unit: "prompts/s" },
    { metric: "response-cache hits on a refresh with 10% of the prompts changed", value: cacheHitShare, unit: "share" },
  ];
  return {
    results: {
      embedded_prompts_per_s: embeddedRate,
      gguf_prompts_per_s: ggufRate,
      openai_prompts_per_s: openaiRate,
      openai_echo_prompts_per_s: openaiEchoRate,
      cache_hit_share: cacheHitShare,
      gguf_processes: processes,
      gguf_processes_prompts_per_s: ggufParallelRate,
      gguf_one_process_prompts_per_s: ggufOneProcessRate,
      gguf_processes_speedup: ggufParallelRate / ggufOneProcessRate,
    },
    rows,
  };
}

/** Scores `pairs` split over `n` child processes started together once all have loaded the model; prompts/s overall. */
async function ggufInProcesses(modelPath: string, pairs: readonly PromptInput[], n: number): Promise<number> {
  const share = Math.ceil(pairs.length / n);
  const children = Array.from({ length: n }, (_, k) => {
    const child = fork(here, ["--gguf-child", modelPath, JSON.stringify(pairs.slice(k * share, (k + 1) * share))], {
      execArgv: ["--import", "tsx"],
      // stdout belongs to `freshrec bench --json`'s one object: the child's output goes to stderr.
      stdio: ["ignore", 2, 2, "ipc"],
    });
    const next = () => new Promise<{ seconds?: number }>((resolve) => child.once("message", (m) => resolve(m as { seconds?: number })));
    return { child, next };
  });
  await Promise.all(children.map((c) => c.next())); // loaded and warmed up
  const done = children.map((c) => c.next());
  const t0 = process.hrtime.bigint();
  for (const c of children) c.child.send("go");
  await Promise.all(done);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  for (const c of children) c.child.kill();
  return pairs.length / seconds;
}

/** Child process of ggufInProcesses: loads the model, warms up, waits for "go", scores its share. */
async function ggufChild(modelPath: string, pairsJson: string): Promise<void> {
  const pairs = JSON.parse(pairsJson) as PromptInput[];
  const model = await GgufLanguageModel.open({ modelPath, clusters: clusters(), contextSize: 512 });
  await model.score(pairs.slice(0, 2), TOP_N);
  process.once("message", async () => {
    const t0 = process.hrtime.bigint();
    await model.score(pairs, TOP_N);
    process.send!({ seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
  });
  process.send!({});
}

if (process.argv[2] === "--gguf-child") await ggufChild(process.argv[3], process.argv[4]);
