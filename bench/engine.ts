/**
 * `npm run bench -- engine`: training throughput on the reference shape, batched scoring throughput, and a full
 * 300-cluster table (89,700 ordered pairs, top-10). The naive node-llama-cpp baseline (one prompt at a time with
 * a grammar) is not measured yet, so `naive_prompts_per_s` and `score_ratio_vs_naive` are absent.
 */
import { join } from "node:path";
import type { BenchRow, BenchSuiteResult } from "./run.js";
import { EmbeddedLanguageModel } from "../src/llm/backends/embedded.js";
import type { PromptInput, TrainingSample } from "../src/llm/contracts.js";
import { EmbeddedTrainer } from "../src/llm/engine/trainer.js";
import { REFERENCE_SHAPE } from "../src/llm/engine/model-file.js";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";

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
    threads: 2,
  });
  const trained = await trainer.train(samples, { outputPath: join(dir, "bench.gguf"), epochs: 2, validationFraction: 0, patience: 99 });
  const trainTps = trained.tokensPerSecond;

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

  const rows: BenchRow[] = [
    { metric: "training tokens/s (d=128, 2 layers, 4 heads, ff=512, V~2k, 2 threads)", value: trainTps, unit: "tokens/s", target: ">= 10000", met: trainTps >= 10000 },
    { metric: "batched scoring prompts/s", value: scoreRate, unit: "prompts/s", target: ">= 5000", met: scoreRate >= 5000 },
    { metric: "full table, 300 clusters (89,700 pairs, top-10)", value: tableSeconds, unit: "s", target: "<= 30", met: tableSeconds <= 30 },
  ];
  return {
    results: { train_tokens_per_s: trainTps, score_prompts_per_s: scoreRate, table_300_seconds: tableSeconds },
    rows,
  };
}
