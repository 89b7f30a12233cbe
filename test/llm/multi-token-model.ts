/**
 * Models whose tokenizers split cluster descriptions into several tokens with shared prefixes ("comedy, drama" and
 * "comedy, horror" share their first token), for testing rankings where a first-token probability is not an
 * answer's. Weights are random but deterministic (seeded), and the output layer is scaled up so the next-token
 * distributions are far from uniform: a ranking error then shows in the numbers instead of hiding in near-equal
 * probabilities.
 */
import type { Cluster } from "../../src/domain/types.js";
import { readGgufFile, readTensorF32, writeGguf } from "../../src/llm/engine/gguf.js";
import { createModelFile } from "../../src/llm/engine/model-file.js";
import { TokenType, Vocabulary, WORD_PREFIX, buildVocabulary } from "../../src/llm/engine/vocabulary.js";
import { templateWords } from "../../src/llm/prompt.js";
import { TINY_SHAPE } from "./fixtures.js";

/** Genres whose descriptions share first words; no description begins another. */
export const GENRES: Cluster[] = [
  { id: "comedy-drama", description: "comedy, drama" },
  { id: "comedy-horror", description: "comedy, horror" },
  { id: "comedy-romance", description: "comedy, romance" },
  { id: "drama-history", description: "drama, history" },
  { id: "horror-thriller", description: "horror, thriller" },
  { id: "documentary", description: "documentary" },
];

/** GENRES plus a description whose tokens extend another's ("documentary" then "nature"). */
export const GENRES_WITH_PREFIX: Cluster[] = [...GENRES, { id: "documentary-nature", description: "documentary nature" }];

/** Multiplies output.weight (freshly initialised at std 0.02) so logits spread over several nats. */
function scaleOutput(path: string, factor: number): void {
  const file = readGgufFile(path);
  const tensors = file.tensors.map((t) => {
    const data = readTensorF32(file, t.name);
    if (t.name === "output.weight") for (let i = 0; i < data.length; i++) data[i] *= factor;
    return { name: t.name, dims: t.dims, data };
  });
  writeGguf(path, { kvs: file.kvList, tensors });
}

/**
 * A freshrec model file over `clusters` (its vocabulary holds every description word as a token too), random and
 * peaked; `freshrec llm serve` with descriptionTokens "words" reads each description as its words.
 */
export function writeWordsModel(path: string, clusters: readonly Cluster[], seed = 1): void {
  createModelFile(path, buildVocabulary({ clusters }), TINY_SHAPE, { seed, name: "genres" });
  scaleOutput(path, 25);
}

/**
 * A llama GGUF whose SentencePiece vocabulary holds every prefix of every word ("▁c", "▁co", ... "▁comedy,") of
 * the prompt template and the descriptions, so llama.cpp's tokenizer merges each word into one token: a description
 * of two words is two tokens, and descriptions sharing a first word share a first token.
 */
export function writeWordPieceGguf(path: string, clusters: readonly Cluster[], seed = 11): void {
  const tokens = ["<unk>", "<s>", "</s>"];
  const types: number[] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(TokenType.BYTE);
  }
  const pieces = new Set<string>([WORD_PREFIX]);
  const words = [...templateWords(), ...clusters.flatMap((c) => c.description.split(/\s+/))];
  for (const w of words) {
    const chars = [...(WORD_PREFIX + w)];
    for (let n = 2; n <= chars.length; n++) pieces.add(chars.slice(0, n).join(""));
  }
  for (const p of pieces) {
    tokens.push(p);
    types.push(TokenType.NORMAL);
  }
  createModelFile(path, new Vocabulary(tokens, types, []), TINY_SHAPE, { seed, name: "word-pieces" });
  scaleOutput(path, 25);
}
