/**
 * The embedded `LanguageModel`: a freshrec model file served through the batched FFI scorer. Every cluster has
 * one answer token, so scoring is one forward pass per prompt and generation is the best allowed answer token
 * (greedy decoding under a grammar of cluster names reduces to exactly that for a one-token answer).
 *
 * @example
 * const model = await EmbeddedLanguageModel.open("/ws/models/m000001.gguf");
 * const ranked = await model.score([{ history: { c1: "a", c2: "b" } }], 10);
 * await model.close();
 */
import { FreshrecError } from "../../domain/errors.js";
import type { ScoredCluster } from "../../domain/types.js";
import type { GeneratedAnswer, LanguageModel, LanguageModelInfo, PromptInput, ScoreOptions } from "../contracts.js";
import { loadLlamaApi } from "../engine/llama-api.js";
import { type ModelFileInfo, readModelFile } from "../engine/model-file.js";
import { BatchScorer, rankAnswers } from "../engine/scorer.js";
import { promptTokens } from "../engine/trainer.js";
import { CLUSTER_BASE } from "../engine/vocabulary.js";

export interface EmbeddedModelOptions {
  /** CPU threads of the scorer (BatchScorerOptions.threads explains the default). @defaultValue 1 */
  readonly threads?: number;
  /** Prompts per llama_decode. @defaultValue 48 */
  readonly sequences?: number;
}

export class EmbeddedLanguageModel implements LanguageModel {
  readonly info: LanguageModelInfo;

  private constructor(
    private readonly file: ModelFileInfo,
    private readonly scorer: BatchScorer,
  ) {
    this.info = {
      backend: "embedded",
      source: file.path,
      clusters: file.clusters,
      templateHash: file.templateHash,
      vocabularyHash: file.vocabularyHash,
      answers: { kind: "constrained", how: "the answer is the most probable cluster token" },
    };
  }

  /** Validates the file (foreign or corrupt files are refused before llama.cpp sees them) and loads it. */
  static async open(path: string, options: EmbeddedModelOptions = {}): Promise<EmbeddedLanguageModel> {
    const file = readModelFile(path);
    const api = loadLlamaApi();
    const scorer = BatchScorer.open(api, path, {
      answerBase: CLUSTER_BASE,
      answerCount: file.clusters.length,
      threads: options.threads,
      sequences: options.sequences,
    });
    return new EmbeddedLanguageModel(file, scorer);
  }

  async score(
    prompts: readonly PromptInput[],
    topN: number,
    signal?: AbortSignal,
    options: ScoreOptions = {},
  ): Promise<ScoredCluster[][]> {
    const vocab = this.file.vocabulary;
    const excludeHistory = options.excludeHistory ?? true;
    const out: ScoredCluster[][] = [];
    // Slices keep cancellation responsive and memory flat on a 90k-pair table.
    const slice = 4096;
    for (let start = 0; start < prompts.length; start += slice) {
      if (signal?.aborted) throw new FreshrecError("CANCELLED", "scoring was cancelled");
      const part = prompts.slice(start, start + slice);
      const logits = await this.scorer.score(part.map((p) => promptTokens(vocab, p)));
      const count = this.scorer.answerCount;
      part.forEach((p, i) => {
        const h1 = vocab.clusterToken(p.history.c1) - CLUSTER_BASE;
        const h2 = vocab.clusterToken(p.history.c2) - CLUSTER_BASE;
        const allowed = excludeHistory ? (k: number) => k !== h1 && k !== h2 : () => true;
        out.push(
          rankAnswers(logits, i * count, count, allowed, topN).map((a) => ({
            cluster: vocab.clusterIds[a.index],
            score: a.probability,
          })),
        );
      });
    }
    return out;
  }

  async generate(prompt: PromptInput, signal?: AbortSignal): Promise<GeneratedAnswer> {
    const [ranked] = await this.score([prompt], 1, signal);
    const best = ranked[0];
    if (!best) return { text: "", cluster: null };
    return { text: this.file.vocabulary.descriptions.get(best.cluster) ?? "", cluster: best.cluster };
  }

  async close(): Promise<void> {
    await this.scorer.close();
  }
}
