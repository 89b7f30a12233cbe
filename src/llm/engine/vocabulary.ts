/**
 * The embedded model's vocabulary, SentencePiece style so llama.cpp and node-llama-cpp load it as a "llama"
 * tokenizer: `<unk>`, `<s>`, `</s>`, 256 byte-fallback tokens `<0xNN>`, then one dedicated answer token per
 * cluster (its piece is the cluster's description, so decoding an answer token yields exactly the text the
 * exact-match gate expects), then whole words with the `▁` word prefix.
 *
 * Tokenisation is word-level and done here, not by llama.cpp: llama's SPM merge procedure would need every
 * prefix of every word in the vocabulary to reach whole-word pieces, which would multiply the vocabulary (and the
 * output layer) several times. Backends therefore hand token ids, not text, to llama.cpp for freshrec models.
 *
 * A cluster's description inside a prompt becomes its one cluster token (longest match, like a BPE merge of a
 * frequent phrase; decoding gives the same words back). A tiny model trained from scratch with frozen random
 * input embeddings could not learn to read a cluster from three separate word tokens in a few epochs (measured:
 * answers stayed at chance), while one token per cluster is learnt at once, and prompts get shorter.
 *
 * @example
 * const vocab = buildVocabulary({ clusters, extraText: titles });
 * const ids = vocab.encode(renderPrompt(input, vocab.descriptions));
 */
import { createHash } from "node:crypto";
import type { Cluster } from "../../domain/types.js";
import { FreshrecError } from "../../domain/errors.js";
import { templateWords } from "../prompt.js";

export const WORD_PREFIX = "\u2581"; // ▁

export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, BYTE: 6 } as const;

export const UNK_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;
export const BYTE_BASE = 3;
/** First cluster answer token: right after the specials and the 256 byte tokens. */
export const CLUSTER_BASE = BYTE_BASE + 256;

export interface VocabularyOptions {
  readonly clusters: readonly Cluster[];
  /** More text whose words may enter the vocabulary (item titles), most useful first. */
  readonly extraText?: readonly string[];
  /**
   * Upper bound on the vocabulary size. Template words and description words always enter; extra words fill the
   * remainder by frequency. The output layer grows with it, so training and scoring slow down linearly.
   * @defaultValue 2048
   */
  readonly maxSize?: number;
}

export class Vocabulary {
  readonly tokens: readonly string[];
  readonly types: readonly number[];
  /** Cluster ids in answer-token order: cluster i has token CLUSTER_BASE + i. */
  readonly clusterIds: readonly string[];
  readonly descriptions: ReadonlyMap<string, string>;
  /** sha256 (hex, first 16) of the token list and types. */
  readonly hash: string;
  private readonly index: Map<string, number>;
  private readonly clusterIndex: Map<string, number>;
  /** Descriptions as word sequences: first word -> [words, token], longest first. */
  private readonly phrases: Map<string, { words: string[]; token: number }[]>;

  constructor(tokens: readonly string[], types: readonly number[], clusters: readonly Cluster[]) {
    this.tokens = tokens;
    this.types = types;
    this.clusterIds = clusters.map((c) => c.id);
    this.descriptions = new Map(clusters.map((c) => [c.id, c.description]));
    this.index = new Map();
    tokens.forEach((t, i) => {
      // Bytes and specials are never produced from text by `encode`, so only normal pieces are indexed.
      if (types[i] === TokenType.NORMAL && !this.index.has(t)) this.index.set(t, i);
    });
    this.clusterIndex = new Map(this.clusterIds.map((id, i) => [id, i]));
    this.phrases = new Map();
    clusters.forEach((c, i) => {
      const words = c.description.trim().split(/\s+/);
      const list = this.phrases.get(words[0]) ?? [];
      list.push({ words, token: CLUSTER_BASE + i });
      list.sort((a, b) => b.words.length - a.words.length || a.token - b.token);
      this.phrases.set(words[0], list);
    });
    this.hash = createHash("sha256")
      .update(JSON.stringify({ tokens, types }))
      .digest("hex")
      .slice(0, 16);
  }

  get size(): number {
    return this.tokens.length;
  }

  /** Answer token of a cluster id. */
  clusterToken(id: string): number {
    const i = this.clusterIndex.get(id);
    if (i === undefined) throw new FreshrecError("BAD_INPUT", `unknown cluster id ${JSON.stringify(id)}`);
    return CLUSTER_BASE + i;
  }

  /** Cluster id of an answer token, or undefined for any other token. */
  clusterOfToken(token: number): string | undefined {
    return this.clusterIds[token - CLUSTER_BASE];
  }

  /**
   * Word-level encoding; cluster descriptions become their cluster token unless `phrases` is false; words outside
   * the vocabulary fall back to the UTF-8 bytes of `▁word`.
   */
  encode(text: string, options: { phrases?: boolean } = {}): number[] {
    const out: number[] = [];
    const words = text.split(/\s+/).filter((w) => w !== "");
    for (let w = 0; w < words.length; w++) {
      const word = words[w];
      if (options.phrases !== false) {
        const match = this.phrases.get(word)?.find((p) => p.words.every((x, k) => words[w + k] === x));
        if (match) {
          out.push(match.token);
          w += match.words.length - 1;
          continue;
        }
      }
      const piece = WORD_PREFIX + word;
      const id = this.index.get(piece);
      if (id !== undefined) {
        out.push(id);
      } else {
        for (const b of Buffer.from(piece, "utf8")) out.push(BYTE_BASE + b);
      }
    }
    return out;
  }

  /** Inverse of encode (byte tokens are reassembled as UTF-8). */
  decode(tokens: readonly number[]): string {
    const bytes: number[] = [];
    for (const t of tokens) {
      if (t >= BYTE_BASE && t < CLUSTER_BASE) bytes.push(t - BYTE_BASE);
      else if (this.types[t] === TokenType.NORMAL) bytes.push(...Buffer.from(this.tokens[t], "utf8"));
    }
    return Buffer.from(bytes).toString("utf8").split(WORD_PREFIX).join(" ").trim();
  }
}

/** Piece of a cluster's answer token: its description with `▁` for spaces (decodes back to the description). */
export function clusterPiece(description: string): string {
  return WORD_PREFIX + description.trim().split(/\s+/).join(WORD_PREFIX);
}

/** Builds the vocabulary; deterministic for equal inputs, so equal inputs give equal hashes. */
export function buildVocabulary(options: VocabularyOptions): Vocabulary {
  const maxSize = options.maxSize ?? 2048;
  const { clusters } = options;
  if (clusters.length === 0) throw new FreshrecError("BAD_INPUT", "a vocabulary needs at least one cluster");
  const seenIds = new Set<string>();
  for (const c of clusters) {
    if (seenIds.has(c.id)) throw new FreshrecError("BAD_INPUT", `duplicate cluster id ${JSON.stringify(c.id)}`);
    seenIds.add(c.id);
    if (c.description.trim() === "") throw new FreshrecError("BAD_INPUT", `cluster ${JSON.stringify(c.id)} has no description`);
  }
  const tokens: string[] = ["<unk>", "<s>", "</s>"];
  const types: number[] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(TokenType.BYTE);
  }
  const present = new Set<string>();
  for (const c of clusters) {
    let piece = clusterPiece(c.description);
    // Two clusters with one description would make the answer ambiguous; the id keeps the tokens distinct.
    if (present.has(piece)) piece = `${piece}${WORD_PREFIX}(${c.id})`;
    present.add(piece);
    tokens.push(piece);
    types.push(TokenType.NORMAL);
  }
  const addWord = (w: string): boolean => {
    const piece = WORD_PREFIX + w;
    if (present.has(piece)) return false;
    present.add(piece);
    tokens.push(piece);
    types.push(TokenType.NORMAL);
    return true;
  };
  for (const w of templateWords()) addWord(w);
  for (const c of clusters) for (const w of c.description.split(/\s+/)) if (w) addWord(w);
  if (tokens.length > maxSize) {
    throw new FreshrecError(
      "BAD_INPUT",
      `the clusters and their descriptions need ${tokens.length} tokens, more than the vocabulary limit ${maxSize}`,
    );
  }
  if (options.extraText && options.extraText.length > 0) {
    const counts = new Map<string, number>();
    for (const text of options.extraText) {
      for (const w of text.split(/\s+/)) if (w) counts.set(w, (counts.get(w) ?? 0) + 1);
    }
    // Frequency first, then the word itself, so the order never depends on input order ties.
    const ranked = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    for (const [w] of ranked) {
      if (tokens.length >= maxSize) break;
      addWord(w);
    }
  }
  return new Vocabulary(tokens, types, clusters);
}
