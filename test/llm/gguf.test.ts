import { join } from "node:path";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";
import { describe, expect, it, afterAll } from "vitest";
import type { Cluster } from "../../src/domain/types.js";
import { GgufLanguageModel, descriptionGrammar, needsTerminator } from "../../src/llm/backends/gguf.js";
import { renderPrompt } from "../../src/llm/prompt.js";
import { languageModelConformance } from "./conformance.js";
import { CLUSTERS } from "./fixtures.js";
import { GENRES, GENRES_WITH_PREFIX, writeWordPieceGguf } from "./multi-token-model.js";
import { trainTinyModel, writeLora } from "./tiny-model.js";
import { tempDir } from "../temp-dir.js";

const ws = tempDir("freshrec-gguf-");
let modelPromise: Promise<string> | null = null;
/** A GGUF written and trained by freshrec's own engine: to node-llama-cpp it is just another llama GGUF file. */
const tinyGguf = () => (modelPromise ??= trainTinyModel(ws));

languageModelConformance("gguf (node-llama-cpp, freshrec-written GGUF)", async () => ({
  model: await GgufLanguageModel.open({ modelPath: await tinyGguf(), clusters: CLUSTERS, contextSize: 256 }),
}));

describe("gguf backend", () => {
  const opened: GgufLanguageModel[] = [];
  afterAll(async () => {
    for (const m of opened) await m.close();
  });

  it("writes a grammar that admits exactly the descriptions, quotes escaped", () => {
    const g = descriptionGrammar(['say "hi"', "back\\slash"]);
    expect(g).toContain('"say \\"hi\\""');
    expect(g).toContain('"back\\\\slash"');
  });

  it("applies LoRA adapters from files (a fine-tune delivered as an adapter changes the answers' scores)", async () => {
    const modelPath = await tinyGguf();
    const adapter = join(ws, "adapter.gguf");
    writeLora(adapter, 0.5);
    const plain = await GgufLanguageModel.open({ modelPath, clusters: CLUSTERS, contextSize: 256 });
    opened.push(plain);
    const adapted = await GgufLanguageModel.open({ modelPath, clusters: CLUSTERS, contextSize: 256, loraAdapters: [{ path: adapter, scale: 1 }] });
    opened.push(adapted);
    expect(adapted.info.source).toContain("+lora:");
    const prompt = [{ history: { c1: "baking", c2: "hiking" } }];
    const [a] = await plain.score(prompt, 6);
    const [b] = await adapted.score(prompt, 6);
    expect(b.map((r) => r.score)).not.toEqual(a.map((r) => r.score));
    expect((await adapted.generate(prompt[0])).cluster).not.toBeNull();
  });

  it("refuses missing files naming the config field", async () => {
    await expect(GgufLanguageModel.open({ modelPath: join(ws, "missing.gguf"), clusters: CLUSTERS })).rejects.toMatchObject({ code: "BAD_INPUT", message: expect.stringContaining("llm.gguf.modelPath") });
    await expect(GgufLanguageModel.open({ modelPath: await tinyGguf(), clusters: CLUSTERS, loraAdapters: [{ path: join(ws, "nope.gguf") }] })).rejects.toMatchObject({ message: expect.stringContaining("llm.gguf.loraAdapters") });
  });
});

languageModelConformance("gguf (node-llama-cpp, a word-piece tokenizer: descriptions of several tokens)", async () => {
  const path = join(ws, "conformance-word-pieces.gguf");
  writeWordPieceGguf(path, GENRES_WITH_PREFIX);
  return { model: await GgufLanguageModel.open({ modelPath: path, clusters: GENRES_WITH_PREFIX, contextSize: 256 }) };
});

describe("gguf ranking through a tokenizer that splits descriptions ('comedy, drama' is two tokens, 'comedy,' shared)", () => {
  const softmax = (logps: readonly number[]) => {
    const max = Math.max(...logps);
    const w = logps.map((x) => Math.exp(x - max));
    const sum = w.reduce((a, b) => a + b, 0);
    return w.map((x) => x / sum);
  };

  /**
   * The reference, computed without the backend's trie: each candidate's full text evaluated from an empty context
   * on its own, the log-probabilities of its tokens after the prompt summed (end of sequence appended when asked).
   * Also the old first-token method: the first answer token's probability credited to the candidates beginning
   * with it, split evenly.
   */
  async function reference(path: string, clusters: readonly Cluster[], promptText: string, withEnd: boolean) {
    const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    const model = await llama.loadModel({ modelPath: path });
    const context = await model.createContext({ contextSize: 256, sequences: 1, threads: 1 });
    const sequence = context.getSequence();
    try {
      const bos = model.tokens.bos!;
      const prompt = [bos, ...model.tokenize(promptText)];
      const full: number[] = [];
      const firstTokens: number[] = [];
      let firstDistribution: Map<number, number> | null = null;
      for (const c of clusters) {
        const tokens = [bos, ...model.tokenize(`${promptText} ${c.description}`), ...(withEnd ? [model.tokens.eos!] : [])];
        // This tokenizer keeps the prompt's tokens whole: the answer starts right after them.
        expect(tokens.slice(0, prompt.length)).toEqual(prompt);
        await sequence.clearHistory();
        const evaluated = await sequence.controlledEvaluate(tokens.map((t, i) => (i >= prompt.length - 1 && i < tokens.length - 1 ? [t, { generateNext: { probabilities: true } }] : t)));
        let sum = 0;
        for (let i = prompt.length; i < tokens.length; i++) sum += Math.log(evaluated[i - 1]!.next.probabilities!.get(tokens[i]) ?? 0);
        full.push(sum);
        firstTokens.push(tokens[prompt.length]);
        firstDistribution ??= evaluated[prompt.length - 1]!.next.probabilities!;
      }
      const firstToken = firstTokens.map((t) => (firstDistribution!.get(t) ?? 0) / firstTokens.filter((u) => u === t).length);
      return { full, firstToken, answerTokens: clusters.map((c) => model.tokenize(` ${c.description}`).length - 1) };
    } finally {
      await context.dispose();
      await model.dispose();
    }
  }

  it("adds an end to the answers only when one answer's tokens begin (or equal) another's", () => {
    expect(needsTerminator([[1, 2], [1, 3], [2]])).toBe(false);
    expect(needsTerminator([[1, 2, 3], [1, 3], [1, 2]])).toBe(true);
    expect(needsTerminator([[4], [4]])).toBe(true);
  });

  for (const [name, clusters, withEnd] of [
    ["descriptions sharing first tokens", GENRES, false],
    ["one description's tokens beginning another's (the end of sequence then ends every answer)", GENRES_WITH_PREFIX, true],
  ] as const) {
    it(`ranks by whole answers, matching a one-at-a-time reference; the first-token method is off: ${name}`, async () => {
      const path = join(ws, `word-pieces-${clusters.length}.gguf`);
      writeWordPieceGguf(path, clusters);
      const history = { c1: "drama-history", c2: "horror-thriller" };
      const promptText = renderPrompt({ history }, new Map(clusters.map((c) => [c.id, c.description])));
      const ref = await reference(path, clusters, promptText, withEnd);
      // The descriptions really are several tokens (" comedy, drama": "▁comedy," + "▁drama"; the leading "▁" of a
      // text tokenized alone not counted), and three share their first.
      expect(ref.answerTokens).toEqual(clusters.map((c) => c.description.split(" ").length));

      const model = await GgufLanguageModel.open({ modelPath: path, clusters, contextSize: 256 });
      try {
        expect(model.info.ranking).toMatchObject({ method: "full-answer", exact: true });
        const [ranked] = await model.score([{ history }], clusters.length);
        const allowed = clusters.map((c, k) => k).filter((k) => clusters[k].id !== history.c1 && clusters[k].id !== history.c2);
        const exact = softmax(allowed.map((k) => ref.full[k]));
        const old = ref.firstToken.filter((_, k) => allowed.includes(k));
        const oldSum = old.reduce((a, b) => a + b, 0);
        const byId = new Map(ranked.map((r) => [r.cluster, r.score]));
        allowed.forEach((k, j) => expect(byId.get(clusters[k].id)).toBeCloseTo(exact[j], 4));
        expect(ranked.map((r) => r.cluster)).toEqual(allowed.map((k, j) => ({ id: clusters[k].id, p: exact[j], k })).sort((a, b) => b.p - a.p || a.k - b.k).map((x) => x.id));
        // The old method gives every "comedy, ..." the same score, and is off by this much on the same prompt.
        const oldScores = allowed.map((_, j) => old[j] / oldSum);
        const comedies = allowed.map((k, j) => [clusters[k].id, j] as const).filter(([id]) => id.startsWith("comedy-"));
        for (const [, j] of comedies) expect(oldScores[j]).toBeCloseTo(oldScores[comedies[0][1]], 10);
        const error = Math.max(...allowed.map((_, j) => Math.abs(oldScores[j] - exact[j])));
        expect(error).toBeGreaterThan(0.05);
      } finally {
        await model.close();
      }
    });
  }
});
