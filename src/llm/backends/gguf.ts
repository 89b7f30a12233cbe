/**
 * The `gguf` backend: any llama.cpp GGUF model (Llama, Qwen, Gemma, ... or a freshrec model file) through
 * node-llama-cpp, reading freshrec's prompt template as plain text with the model's own tokenizer.
 *
 * - **Generation:** greedy, under a GBNF grammar whose only sentences are the cluster descriptions (an optional
 *   leading space first, as tokenizers put words after a space); the text maps back to a cluster by exact match.
 * - **Scoring (top-n):** each candidate's whole answer. Every candidate's full text, prompt + " " + description, is
 *   tokenized as the model reads it; the tokens all candidates share (the prompt, and any first answer tokens common
 *   to all) are evaluated once, and a candidate's score is the sum of the log-probabilities of its tokens after
 *   them, so log P(text) up to a constant shared by all candidates. Descriptions of several tokens and descriptions
 *   sharing first tokens each get the probability of their whole text, and where the tokenizer merges the prompt's
 *   end into the answer the sums simply start at the first token that differs. When one description's tokens begin
 *   another's ("documentary" / "documentary nature"), the text alone would credit the shorter with the longer one's
 *   probability, so every candidate is then scored with the model's end-of-sequence token after it (the answer and
 *   nothing more). Then a softmax over the allowed candidates (the history's clusters left out). Candidates are
 *   walked as a token trie, so a prefix shared by several is evaluated once per prompt; the prompt is evaluated from
 *   an empty context every time, so a prompt's scores never depend on what was scored before it. Longer
 *   descriptions are not normalised by length: the probability of the whole answer is what generation would follow.
 *   `info.ranking` reports the method.
 * - One context with one sequence and `threads: 1` (docs/engine.md, "Threads: the pitfalls": two threads were slower on 2 cores;
 *   multi-sequence probability maps were unreliable), calls serialised. Scale out with processes.
 * - LoRA adapters (`loraAdapters`) are applied to the context: a fine-tune delivered as an adapter file is a new
 *   model version without copying the base weights.
 *
 * @example
 * const model = await GgufLanguageModel.open({ modelPath: "/models/qwen2.5-0.5b-instruct-q8_0.gguf", clusters });
 * const [ranked] = await model.score([{ history: { c1: "baking", c2: "hiking" } }], 10);
 * await model.close();
 */
import { existsSync } from "node:fs";
import { getLlama, LlamaCompletion, LlamaLogLevel, type Llama, type LlamaContext, type LlamaContextSequence, type LlamaGrammar, type LlamaModel, type Token } from "node-llama-cpp";
import { FreshrecError } from "../../domain/errors.js";
import { GGUF_DEFAULTS } from "./backend-defaults.js";
import type { Cluster, ScoredCluster } from "../../domain/types.js";
import type { GeneratedAnswer, LanguageModel, LanguageModelInfo, PromptInput, ScoreOptions } from "../contracts.js";
import { PROMPT_TEMPLATE_HASH, renderPrompt } from "../prompt.js";
import { assertPinnedEngine } from "../engine/llama-api.js";

export interface GgufModelOptions {
  readonly modelPath: string;
  /** The clusters the model answers with (the event store's). */
  readonly clusters: readonly Cluster[];
  /** LoRA adapters applied on top of the model. @defaultValue [] */
  readonly loraAdapters?: readonly { readonly path: string; readonly scale?: number }[];
  /** Context length in tokens (prompt plus answer). @defaultValue 1024 */
  readonly contextSize?: number;
}

let llamaPromise: Promise<Llama> | null = null;
/** One llama.cpp instance per process; never a GPU probe, download or build (docs/engine.md, "Pinned versions"). */
function sharedLlama(): Promise<Llama> {
  llamaPromise ??= getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  return llamaPromise;
}

/** GBNF string literal of a text. */
function gbnfLiteral(text: string): string {
  return `"${[...text].map((ch) => (ch === '"' ? '\\"' : ch === "\\" ? "\\\\" : ch === "\n" ? "\\n" : ch === "\r" ? "\\r" : ch)).join("")}"`;
}

/** The grammar whose sentences are exactly the descriptions (after an optional space). */
export function descriptionGrammar(descriptions: readonly string[]): string {
  return `root ::= " "? answer\nanswer ::= ${descriptions.map(gbnfLiteral).join(" | ")}\n`;
}

interface TrieNode {
  readonly children: Map<Token, TrieNode>;
  /** Candidates whose token sequence ends here. */
  readonly ends: number[];
}

export class GgufLanguageModel implements LanguageModel {
  readonly info: LanguageModelInfo & { readonly ranking: { readonly method: "full-answer"; readonly exact: true; readonly detail: string } };
  private queue: Promise<unknown> = Promise.resolve();
  private readonly descriptions: ReadonlyMap<string, string>;
  private readonly idOf: ReadonlyMap<string, string>;

  private constructor(
    private readonly options: GgufModelOptions,
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    private readonly sequence: LlamaContextSequence,
    private readonly grammar: LlamaGrammar,
  ) {
    this.descriptions = new Map(options.clusters.map((c) => [c.id, c.description]));
    this.idOf = new Map(options.clusters.map((c) => [c.description, c.id]));
    const adapters = (options.loraAdapters ?? []).map((a) => `+lora:${a.path}@${a.scale ?? 1}`).join("");
    this.info = {
      backend: "gguf",
      source: `${options.modelPath}${adapters}`,
      clusters: [...options.clusters],
      templateHash: PROMPT_TEMPLATE_HASH,
      answers: { kind: "constrained", how: "generation under a grammar that admits only the cluster descriptions" },
      ranking: {
        method: "full-answer",
        exact: true,
        detail: "each candidate's prompt + answer tokenized as the model reads it; summed log-probabilities of its tokens after those all candidates share (end of sequence included when one answer's tokens begin another's), softmax over the allowed clusters",
      },
    };
  }

  static async open(options: GgufModelOptions): Promise<GgufLanguageModel> {
    assertPinnedEngine();
    if (!existsSync(options.modelPath)) throw new FreshrecError("BAD_INPUT", `llm.gguf.modelPath: ${options.modelPath} does not exist`);
    for (const a of options.loraAdapters ?? []) {
      if (!existsSync(a.path)) throw new FreshrecError("BAD_INPUT", `llm.gguf.loraAdapters: ${a.path} does not exist`);
    }
    if (options.clusters.length < 2) throw new FreshrecError("BAD_INPUT", "a gguf backend needs at least two clusters");
    const seen = new Map<string, string>();
    for (const c of options.clusters) {
      const other = seen.get(c.description);
      if (other !== undefined) throw new FreshrecError("BAD_INPUT", `clusters ${JSON.stringify(other)} and ${JSON.stringify(c.id)} share a description: answers could not be mapped back by exact match`);
      seen.set(c.description, c.id);
    }
    const llama = await sharedLlama();
    let model: LlamaModel;
    try {
      model = await llama.loadModel({ modelPath: options.modelPath });
    } catch (error) {
      throw new FreshrecError("ENGINE", `llama.cpp could not load ${options.modelPath}: ${(error as Error).message}`, { cause: error });
    }
    try {
      const adapters = options.loraAdapters ?? [];
      const context = await model.createContext({
        contextSize: options.contextSize ?? GGUF_DEFAULTS.contextSize,
        sequences: 1,
        threads: 1,
        ...(adapters.length > 0 ? { lora: { adapters: adapters.map((a) => ({ filePath: a.path, scale: a.scale ?? 1 })) } } : {}),
      });
      const grammar = await llama.createGrammar({ grammar: descriptionGrammar(options.clusters.map((c) => c.description)) });
      return new GgufLanguageModel(options, model, context, context.getSequence(), grammar);
    } catch (error) {
      await model.dispose();
      throw new FreshrecError("ENGINE", `llama.cpp could not prepare ${options.modelPath}: ${(error as Error).message}`, { cause: error });
    }
  }

  async score(prompts: readonly PromptInput[], topN: number, signal?: AbortSignal, options: ScoreOptions = {}): Promise<ScoredCluster[][]> {
    const texts = prompts.map((p) => renderPrompt(p, this.descriptions));
    const excludeHistory = options.excludeHistory ?? true;
    return this.serial(async () => {
      const out: ScoredCluster[][] = [];
      for (let i = 0; i < prompts.length; i++) {
        if (signal?.aborted) throw new FreshrecError("CANCELLED", "scoring was cancelled");
        const h = prompts[i].history;
        const allowed = this.options.clusters.map((c) => !excludeHistory || (c.id !== h.c1 && c.id !== h.c2));
        const logps = await this.candidateLogProbabilities(texts[i]);
        let max = -Infinity;
        logps.forEach((lp, k) => allowed[k] && lp > max && (max = lp));
        let sum = 0;
        const weights = logps.map((lp, k) => (allowed[k] ? Math.exp(lp - max) : 0));
        for (const w of weights) sum += w;
        const ranked = this.options.clusters
          .map((c, k) => ({ cluster: c.id, score: weights[k] / sum, k }))
          .filter((r) => allowed[r.k] && r.score > 0)
          .sort((a, b) => b.score - a.score || a.k - b.k)
          .slice(0, topN)
          .map(({ cluster, score }) => ({ cluster, score }));
        out.push(ranked);
      }
      return out;
    });
  }

  async generate(prompt: PromptInput, signal?: AbortSignal): Promise<GeneratedAnswer> {
    const text = renderPrompt(prompt, this.descriptions);
    return this.serial(async () => {
      await this.sequence.clearHistory();
      const completion = new LlamaCompletion({ contextSequence: this.sequence });
      // Under the grammar the model may spell an answer in other tokens than the tokenizer would (a shorter piece,
      // then bytes), so the budget is the longest answer's bytes (no token is shorter than a byte), not its tokens:
      // a budget in tokens cut such answers short ("docume"), which then failed the exact match.
      const longest = Math.max(...this.options.clusters.map((c) => Buffer.byteLength(` ${c.description}`)));
      const raw = await completion.generateCompletion(text, { grammar: this.grammar, maxTokens: longest + 1, temperature: 0, signal });
      const answer = raw.trim();
      return { text: answer, cluster: this.idOf.get(answer) ?? null };
    });
  }

  async close(): Promise<void> {
    await this.queue;
    await this.context.dispose();
    await this.model.dispose();
  }

  /** One call at a time: the context has one sequence. */
  private serial<T>(run: () => Promise<T>): Promise<T> {
    const next = this.queue.then(run);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private tokensOf(text: string): Token[] {
    const tokens = this.model.tokenize(text);
    const bos = this.model.tokens.bos;
    return this.model.tokens.shouldPrependBosToken && bos !== null ? [bos, ...tokens] : tokens;
  }

  /**
   * log P(prompt + " " + description [+ end of sequence]) for every cluster, in cluster order, up to one constant
   * shared by all (module comment): each candidate's full text is tokenized as the model reads it, the tokens all
   * candidates share are evaluated once, and the rest are walked as a trie.
   */
  private async candidateLogProbabilities(promptText: string): Promise<number[]> {
    const sequences = this.options.clusters.map((c) => this.tokensOf(`${promptText} ${c.description}`));
    if (needsTerminator(sequences)) {
      const eos = this.model.tokens.eos;
      if (eos === null) throw new FreshrecError("ENGINE", `${this.options.modelPath} has no end-of-sequence token, and one description's tokens begin another's: their answers cannot be told apart`);
      for (const s of sequences) s.push(eos);
    }
    const shared = commonPrefixLength(sequences);
    if (shared === 0) throw new FreshrecError("ENGINE", `${this.options.modelPath}: the candidates' texts share no first token (no beginning-of-sequence token?), so their first tokens have no distribution to be read from`);
    const root: TrieNode = { children: new Map(), ends: [] };
    sequences.forEach((tokens, k) => {
      let node = root;
      for (const t of tokens.slice(shared)) {
        let child = node.children.get(t);
        if (!child) node.children.set(t, (child = { children: new Map(), ends: [] }));
        node = child;
      }
      node.ends.push(k);
    });
    const prefix = sequences[0].slice(0, shared);
    await this.sequence.clearHistory();
    const first = await this.sequence.controlledEvaluate(prefix.map((t, i) => (i === prefix.length - 1 ? [t, { generateNext: { probabilities: true } }] : t)));
    const rootProbabilities = first[prefix.length - 1]?.next.probabilities;
    if (!rootProbabilities) throw new FreshrecError("ENGINE", "node-llama-cpp returned no probabilities for the prompt");
    const out = new Array<number>(this.options.clusters.length).fill(-Infinity);
    const walk = async (node: TrieNode, probabilities: Map<Token, number>, logp: number): Promise<void> => {
      for (const [token, child] of node.children) {
        // Probabilities come as float32 (a full softmax at temperature 0); one that underflowed to 0 is floored at
        // the smallest float32, so its answer still ranks, far below every other.
        const lp = logp + Math.log(Math.max(probabilities.get(token) ?? 0, 1e-45));
        for (const k of child.ends) out[k] = lp;
        if (child.children.size === 0) continue;
        const at = this.sequence.nextTokenIndex;
        const next = await this.sequence.controlledEvaluate([[token, { generateNext: { probabilities: true } }]]);
        const childProbabilities = next[0]?.next.probabilities;
        if (!childProbabilities) throw new FreshrecError("ENGINE", "node-llama-cpp returned no probabilities for an answer token");
        await walk(child, childProbabilities, lp);
        await this.sequence.eraseContextTokenRanges([{ start: at, end: this.sequence.nextTokenIndex }]);
      }
    };
    await walk(root, rootProbabilities, 0);
    return out;
  }
}

/** True when one token sequence is a prefix of (or equal to) another: their texts alone cannot tell them apart. */
export function needsTerminator(sequences: readonly (readonly number[])[]): boolean {
  const sorted = [...sequences].sort((a, b) => {
    for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
    return a.length - b.length;
  });
  for (let i = 1; i < sorted.length; i++) {
    const [a, b] = [sorted[i - 1], sorted[i]];
    if (a.length <= b.length && a.every((t, k) => t === b[k])) return true;
  }
  return false;
}

/** Tokens every sequence begins with. */
function commonPrefixLength(sequences: readonly (readonly number[])[]): number {
  let n = Math.min(...sequences.map((s) => s.length));
  for (const s of sequences) {
    let k = 0;
    while (k < n && s[k] === sequences[0][k]) k++;
    n = k;
  }
  return n;
}
