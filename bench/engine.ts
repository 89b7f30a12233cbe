/**
 * `npm run bench -- engine`: training throughput on the reference shape (real tokens only: the EOS padding of the
 * one-sample training rows is not counted) through the product's path (llama_opt_epoch) and through engine v2 (the
 * ggml graph built directly, ggml-trainer.ts, not the product's trainer yet) on the same samples in the same run,
 * with the top-1 each reaches on history pairs it did not train on after that one epoch, batched scoring throughput, a full 300-cluster table (89,700 ordered
 * pairs, top-10), and the naive baseline: node-llama-cpp (`threads: 1`, one prompt at a time) generating each
 * answer under a GBNF grammar of the cluster descriptions.
 */
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LlamaCompletion, type Token, getLlama } from "node-llama-cpp";
import type { BenchRow, BenchSuiteResult } from "./run.js";
import { EmbeddedLanguageModel } from "../src/llm/backends/embedded.js";
import type { PromptInput, TrainingSample } from "../src/llm/contracts.js";
import { EmbeddedTrainer, promptTokens } from "../src/llm/engine/trainer.js";
import { REFERENCE_SHAPE, createModelFile, readModelFile } from "../src/llm/engine/model-file.js";
import { GgmlModel, trainGgml } from "../src/llm/engine/ggml-trainer.js";
import { sampleTokens } from "../src/llm/engine/trainer.js";
import { buildVocabulary } from "../src/llm/engine/vocabulary.js";
import { descriptionGrammar } from "../src/llm/backends/gguf.js";

/**
 * The naive path: node-llama-cpp, one context with one sequence and one thread (docs/engine.md, "Threads: the pitfalls": two threads are
 * slower there), each prompt evaluated alone and its answer generated greedily under a grammar that admits exactly
 * the cluster descriptions. Prompts are given as token ids (freshrec's word-level tokenizer), so the model reads
 * what it was trained on.
 */
async function naivePromptsPerSecond(modelPath: string, prompts: readonly PromptInput[]): Promise<{ rate: number; exact: number }> {
  const info = readModelFile(modelPath);
  const llama = await getLlama({ gpu: false, build: "never" });
  const model = await llama.loadModel({ modelPath });
  const context = await model.createContext({ contextSize: 256, threads: 1, sequences: 1 });
  // Token pieces of answer tokens decode with a leading space (the "▁" word prefix).
  const grammar = await llama.createGrammar({
    grammar: descriptionGrammar(info.clusters.map((c) => c.description)),
  });
  const sequence = context.getSequence();
  const completion = new LlamaCompletion({ contextSequence: sequence });
  const descriptions = new Set(info.clusters.map((c) => c.description));
  const tokens = prompts.map((p) => promptTokens(info.vocabulary, p) as Token[]);
  await completion.generateCompletion(tokens[0], { grammar, maxTokens: 8, temperature: 0 }); // warm-up
  let exact = 0;
  const t0 = process.hrtime.bigint();
  for (const t of tokens) {
    await sequence.clearHistory();
    const text = await completion.generateCompletion(t, { grammar, maxTokens: 8, temperature: 0 });
    if (descriptions.has(text.trim())) exact++;
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await context.dispose();
  await model.dispose();
  await llama.dispose();
  return { rate: tokens.length / seconds, exact: exact / tokens.length };
}

/** CPU seconds of this process's exited children (Linux /proc/self/stat cutime + cstime, 100 ticks per second). */
function childCpuSeconds(): number {
  try {
    const stat = readFileSync("/proc/self/stat", "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[13]) + Number(fields[14])) / 100;
  } catch {
    return Number.NaN;
  }
}

export async function run(): Promise<BenchSuiteResult> {
  const dir = mkdtempSync(join(tmpdir(), "freshrec-bench-engine-"));
  const K = 300;
  const words = Array.from({ length: 1500 }, (_, i) => `w${i}`);
  // Three words per description and 1,500 extra words: a vocabulary of ~2k, the reference size.
  const clusters = Array.from({ length: K }, (_, i) => ({ id: `c${i}`, description: `${words[i]}, ${words[K + i]}, ${words[2 * K + i]}` }));
  let s = 1;
  const rnd = () => ((s = (s * 1103515245 + 12345) & 0x7fffffff), s / 0x7fffffff);
  const samples: TrainingSample[] = [];
  while (samples.length < 20000) {
    const a = Math.floor(rnd() * K);
    const b = Math.floor(rnd() * K);
    const n = (b * 7 + 1) % K;
    if (a === b || n === a || n === b) continue;
    samples.push({ prompt: { history: { c1: `c${a}`, c2: `c${b}` } }, answer: `c${n}` });
  }
  const trainer = new EmbeddedTrainer({
    init: { clusters, extraText: words.slice(3 * K).map((w) => w), shape: REFERENCE_SHAPE },
    threads: 1, // the trainer's default (trainer.ts explains why)
  });
  const childCpu0 = childCpuSeconds();
  const trained = await trainer.train(samples, { outputPath: join(dir, "bench.gguf"), epochs: 1, validationFraction: 0, patience: 99 });
  // Real tokens (sample tokens, padding excluded) per second of llama_opt_epoch.
  const trainTps = trained.tokensPerSecond;
  // CPU seconds of the training child (model load and save included): wall-clock rates on a shared 2-core machine
  // say as much about the other processes as about the trainer.
  const optEpochCpu = childCpuSeconds() - childCpu0;

  // Engine v2 on the same samples, vocabulary (built as EmbeddedTrainer builds it) and shape, one epoch, one
  // thread (two threads spin in ggml's barriers whenever another process shares the cores).
  const ggmlThreads = Number(process.env.FRESHREC_BENCH_GGML_THREADS ?? 1);
  const vocab = buildVocabulary({ clusters, extraText: words.slice(3 * K) });
  const ggmlInit = join(dir, "ggml-init.gguf");
  createModelFile(ggmlInit, vocab, REFERENCE_SHAPE, { seed: 1 });
  const sequences = samples.map((x) => sampleTokens(vocab, x));
  const trainV2 = (precision: "f32" | "bf16", out: string) => {
    const cpu0 = process.cpuUsage();
    const model = GgmlModel.load(ggmlInit, ggmlThreads);
    try {
      const stats = trainGgml(model, sequences, { epochs: 1, learningRate: 2e-3, windowTokens: 256, precision });
      model.save(out);
      const cpu = process.cpuUsage(cpu0);
      return { ...stats, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
    } finally {
      model.free();
    }
  };
  const ggmlPath = join(dir, "bench-ggml.gguf");
  const ggmlStats = trainV2("f32", ggmlPath);
  const bf16Path = join(dir, "bench-ggml-bf16.gguf");
  const bf16Stats = trainV2("bf16", bf16Path);
  const ggmlTps = ggmlStats.tokensPerSecond;
  const bf16Tps = bf16Stats.tokensPerSecond;
  const speedup = ggmlTps / trainTps;
  const bf16Speedup = bf16Tps / trainTps;
  // Per CPU-second (same tokens: the samples are tokenized alike on both paths).
  const optEpochTpc = ggmlStats.tokens / optEpochCpu;
  const ggmlTpc = ggmlStats.tokens / ggmlStats.cpuSeconds;
  const bf16Tpc = bf16Stats.tokens / bf16Stats.cpuSeconds;
  // What each epoch taught: top-1 over the allowed answers on 2,000 history pairs that are not in the training
  // samples (the rule n = 7b + 1 mod K decides their answer).
  const seen = new Set(samples.map((x) => `${x.prompt.history.c1}|${x.prompt.history.c2}`));
  const probe: TrainingSample[] = [];
  for (let i = 0; probe.length < 2000 && i < K * K; i++) {
    const j = (i * 40507) % (K * K); // every pair once, scrambled (40507 is coprime to K * K = 90,000)
    const a = Math.floor(j / K);
    const b = j % K;
    const n = (b * 7 + 1) % K;
    if (a === b || n === a || n === b || seen.has(`c${a}|c${b}`)) continue;
    seen.add(`c${a}|c${b}`);
    probe.push({ prompt: { history: { c1: `c${a}`, c2: `c${b}` } }, answer: `c${n}` });
  }
  const top1 = async (path: string) => {
    const m = await EmbeddedLanguageModel.open(path);
    try {
      const ranked = await m.score(probe.map((x) => x.prompt), 1);
      return ranked.filter((r, i) => r[0]?.cluster === probe[i].answer).length / probe.length;
    } finally {
      await m.close();
    }
  };
  const top1OptEpoch = await top1(trained.modelPath);
  const top1Ggml = await top1(ggmlPath);
  const top1Bf16 = await top1(bf16Path);

  const model = await EmbeddedLanguageModel.open(trained.modelPath);
  const prompts: PromptInput[] = [];
  for (let a = 0; a < K; a++) for (let b = 0; b < K; b++) if (a !== b) prompts.push({ history: { c1: `c${a}`, c2: `c${b}` } });
  await model.score(prompts.slice(0, 2000), 10); // warm-up
  const t0 = process.hrtime.bigint();
  const table = await model.score(prompts, 10);
  const tableSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await model.close();
  if (table.length !== prompts.length) throw new Error("table incomplete");
  const scoreRate = prompts.length / tableSeconds;

  // 300 prompts spread over the table (every 299th pair: many first clusters, no shared-prefix luck).
  const naivePrompts = prompts.filter((_, i) => i % 299 === 0);
  const naive = await naivePromptsPerSecond(trained.modelPath, naivePrompts);
  const ratio = scoreRate / naive.rate;

  const rows: BenchRow[] = [
    { metric: "training tokens/s (d=128, 2 layers, 4 heads, ff=512, V~2k, 1 thread, real tokens)", value: trainTps, unit: "tokens/s", target: ">= 10000", met: trainTps >= 10000 },
    { metric: `engine v2 (ggml graph, not the product's trainer yet) training tokens/s (same shape and samples, ${ggmlThreads} thread, ${ggmlStats.windowTokens}-token windows, up to ${ggmlStats.maxSamples} samples per step)`, value: ggmlTps, unit: "tokens/s", target: ">= 10000", met: ggmlTps >= 10000 },
    { metric: "engine v2 training speed vs llama_opt_epoch (same run)", value: speedup, unit: "x", target: ">= 4", met: speedup >= 4 },
    { metric: "engine v2 with bf16 matrix products, training tokens/s (same settings)", value: bf16Tps, unit: "tokens/s", target: ">= 10000", met: bf16Tps >= 10000 },
    { metric: "engine v2 bf16 training speed vs llama_opt_epoch (same run)", value: bf16Speedup, unit: "x", target: ">= 4", met: bf16Speedup >= 4 },
    { metric: "held-out top-1 (2,000 unseen pairs) after the epoch: llama_opt_epoch", value: top1OptEpoch, unit: "share" },
    { metric: "held-out top-1 (2,000 unseen pairs) after the epoch: engine v2", value: top1Ggml, unit: "share" },
    { metric: "held-out top-1 (2,000 unseen pairs) after the epoch: engine v2, bf16 products", value: top1Bf16, unit: "share" },
    { metric: "training tokens per CPU-second: llama_opt_epoch (child process, load and save included)", value: optEpochTpc, unit: "tokens/cpu-s" },
    { metric: "training tokens per CPU-second: engine v2 (load and save included)", value: ggmlTpc, unit: "tokens/cpu-s" },
    { metric: "training tokens per CPU-second: engine v2, bf16 products", value: bf16Tpc, unit: "tokens/cpu-s" },
    { metric: "engine v2 vs llama_opt_epoch per CPU-second", value: ggmlTpc / optEpochTpc, unit: "x" },
    { metric: "engine v2 bf16 vs llama_opt_epoch per CPU-second", value: bf16Tpc / optEpochTpc, unit: "x" },
    { metric: "batched scoring prompts/s", value: scoreRate, unit: "prompts/s", target: ">= 5000", met: scoreRate >= 5000 },
    { metric: "full table, 300 clusters (89,700 pairs, top-10)", value: tableSeconds, unit: "s", target: "<= 30", met: tableSeconds <= 30 },
    { metric: "naive node-llama-cpp prompts/s (1 thread, one prompt at a time, GBNF answer)", value: naive.rate, unit: "prompts/s" },
    { metric: "naive answers naming a cluster exactly", value: naive.exact, unit: "share" },
    { metric: "batched scoring vs naive", value: ratio, unit: "x", target: ">= 10", met: ratio >= 10 },
  ];
  return {
    results: {
      // Still the product's trainer (llama_opt_epoch) until engine v2 replaces it.
      train_tokens_per_s: trainTps,
      train_tokens_per_s_opt_epoch: trainTps,
      train_tokens_per_s_ggml: ggmlTps,
      train_speedup_vs_opt_epoch: speedup,
      train_tokens_per_s_ggml_bf16: bf16Tps,
      train_speedup_vs_opt_epoch_bf16: bf16Speedup,
      train_top1_opt_epoch: top1OptEpoch,
      train_top1_ggml: top1Ggml,
      train_top1_ggml_bf16: top1Bf16,
      train_tokens_per_cpu_s_opt_epoch: optEpochTpc,
      train_tokens_per_cpu_s_ggml: ggmlTpc,
      train_tokens_per_cpu_s_ggml_bf16: bf16Tpc,
      score_prompts_per_s: scoreRate,
      table_300_seconds: tableSeconds,
      naive_prompts_per_s: naive.rate,
      score_ratio_vs_naive: ratio,
    },
    rows,
  };
}
