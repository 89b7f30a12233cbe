/**
 * freshrec model files: a llama-architecture GGUF (F32, separate `output.weight`) whose metadata carries what is
 * needed to use it without any other file: the vocabulary (tokenizer keys), the clusters in answer-token order
 * with their descriptions, and the hashes of the vocabulary and the prompt template.
 *
 * @example
 * createModelFile(path, vocab, REFERENCE_SHAPE, { seed: 1 });
 * const model = readModelFile(path); // refuses foreign or corrupt files with FreshrecError("ENGINE")
 */
import { readFileSync } from "node:fs";
import { FreshrecError } from "../../domain/errors.js";
import { seededRandom } from "../../domain/random.js";
import type { Cluster } from "../../domain/types.js";
import { PROMPT_TEMPLATE, PROMPT_TEMPLATE_HASH } from "../prompt.js";
import { type GgufKv, type GgufTensor, ggufArray, ggufValue, readGgufFile, writeGguf } from "./gguf.js";
import { BOS_ID, CLUSTER_BASE, EOS_ID, UNK_ID, Vocabulary } from "./vocabulary.js";

/** Transformer shape of an embedded model. */
export interface ModelShape {
  /** @defaultValue 128 */
  readonly embedding: number;
  /** @defaultValue 2 */
  readonly layers: number;
  /** @defaultValue 4 */
  readonly heads: number;
  /** @defaultValue 512 */
  readonly feedForward: number;
  /**
   * The model's context length (llama.context_length), a multiple of 256 as llama.cpp pads contexts. Training does
   * not use it: each sample is trained alone in a row as long as the longest sample. @defaultValue 512
   */
  readonly contextLength: number;
}

/** The reference shape of the benchmark: d=128, 2 layers, 4 heads, ff=512. */
export const REFERENCE_SHAPE: ModelShape = { embedding: 128, layers: 2, heads: 4, feedForward: 512, contextLength: 512 };

export const MODEL_FORMAT = 1;

/** freshrec's own package version, recorded in every model file. */
export function freshrecVersion(): string {
  for (const rel of ["../../../package.json", "../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as { name?: string; version?: string };
      if (pkg.name === "freshrec" && pkg.version) return pkg.version;
    } catch {
      // try the next layout (source tree vs. built tree)
    }
  }
  return "unknown";
}

/** Deterministic normal samples (mulberry32 + Box-Muller): equal seeds give byte-identical model files. */
export function normalSampler(seed: number): () => number {
  const uniform = seededRandom(seed >>> 0 || 0x9e3779b9);
  return () => {
    const u = Math.max(uniform(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * uniform());
  };
}

function randomTensor(name: string, dims: number[], std: number, normal: () => number): GgufTensor {
  const n = dims.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = normal() * std;
  return { name, dims, data };
}

function onesTensor(name: string, d: number): GgufTensor {
  return { name, dims: [d], data: new Float32Array(d).fill(1) };
}

/** The freshrec keys of a model file. */
export function freshrecKvs(vocab: Vocabulary, clusters: readonly Cluster[]): GgufKv[] {
  return [
    { key: "freshrec.format", type: "u32", value: MODEL_FORMAT },
    { key: "freshrec.version", type: "string", value: freshrecVersion() },
    { key: "freshrec.vocabulary_hash", type: "string", value: vocab.hash },
    { key: "freshrec.template_id", type: "string", value: PROMPT_TEMPLATE.id },
    { key: "freshrec.template_hash", type: "string", value: PROMPT_TEMPLATE_HASH },
    { key: "freshrec.cluster_token_base", type: "u32", value: CLUSTER_BASE },
    { key: "freshrec.cluster_ids", type: "array", elementType: "string", value: clusters.map((c) => c.id) },
    { key: "freshrec.cluster_descriptions", type: "array", elementType: "string", value: clusters.map((c) => c.description) },
  ];
}

export interface CreateModelOptions {
  /** @defaultValue 1 */
  readonly seed?: number;
  /** general.name of the file. @defaultValue "freshrec" */
  readonly name?: string;
}

/**
 * Writes a freshly initialised model. Input embeddings stay fixed during training (llama.cpp's optimizer leaves
 * `tok_embd` out), so they are unit-variance random codes that keep tokens well apart; every other matrix starts
 * small as usual.
 */
export function createModelFile(path: string, vocab: Vocabulary, shape: ModelShape, options: CreateModelOptions = {}): void {
  const { embedding: d, layers, heads, feedForward: ff, contextLength } = shape;
  if (d % heads !== 0) throw new FreshrecError("BAD_INPUT", `embedding ${d} is not a multiple of heads ${heads}`);
  if (contextLength % 256 !== 0) throw new FreshrecError("BAD_INPUT", `contextLength ${contextLength} is not a multiple of 256`);
  const V = vocab.size;
  const normal = normalSampler(options.seed ?? 1);
  const std = 0.02;
  const tensors: GgufTensor[] = [
    randomTensor("token_embd.weight", [d, V], 1, normal),
    onesTensor("output_norm.weight", d),
    randomTensor("output.weight", [d, V], std, normal),
  ];
  for (let i = 0; i < layers; i++) {
    const p = `blk.${i}.`;
    tensors.push(
      onesTensor(`${p}attn_norm.weight`, d),
      randomTensor(`${p}attn_q.weight`, [d, d], std, normal),
      // Keys and values stay frozen too: llama.cpp trains through its KV cache, whose writes (set_rows) cut the
      // gradient to attn_k/attn_v. Frozen full-rank random projections keep attention fully expressive (the
      // trainable q and output matrices absorb them), but only at unit scale: at 0.02 the keys are so small that
      // the queries would have to grow 50x before attention could focus, and answers stayed at chance.
      randomTensor(`${p}attn_k.weight`, [d, d], 1 / Math.sqrt(d), normal),
      randomTensor(`${p}attn_v.weight`, [d, d], 1 / Math.sqrt(d), normal),
      // Residual outputs start smaller so a fresh stack is close to identity (GPT-2's scaled init).
      randomTensor(`${p}attn_output.weight`, [d, d], std / Math.sqrt(2 * layers), normal),
      onesTensor(`${p}ffn_norm.weight`, d),
      randomTensor(`${p}ffn_gate.weight`, [d, ff], std, normal),
      randomTensor(`${p}ffn_up.weight`, [d, ff], std, normal),
      randomTensor(`${p}ffn_down.weight`, [ff, d], std / Math.sqrt(2 * layers), normal),
    );
  }
  const clusters = vocab.clusterIds.map((id) => ({ id, description: vocab.descriptions.get(id) ?? "" }));
  const kvs: GgufKv[] = [
    { key: "general.architecture", type: "string", value: "llama" },
    { key: "general.name", type: "string", value: options.name ?? "freshrec" },
    { key: "general.alignment", type: "u32", value: 32 },
    { key: "llama.context_length", type: "u32", value: contextLength },
    { key: "llama.embedding_length", type: "u32", value: d },
    { key: "llama.block_count", type: "u32", value: layers },
    { key: "llama.feed_forward_length", type: "u32", value: ff },
    { key: "llama.attention.head_count", type: "u32", value: heads },
    { key: "llama.attention.head_count_kv", type: "u32", value: heads },
    { key: "llama.attention.layer_norm_rms_epsilon", type: "f32", value: 1e-5 },
    { key: "llama.rope.dimension_count", type: "u32", value: d / heads },
    { key: "llama.rope.freq_base", type: "f32", value: 10000 },
    { key: "llama.vocab_size", type: "u32", value: V },
    { key: "tokenizer.ggml.model", type: "string", value: "llama" },
    { key: "tokenizer.ggml.tokens", type: "array", elementType: "string", value: vocab.tokens },
    { key: "tokenizer.ggml.scores", type: "array", elementType: "f32", value: vocab.tokens.map((_, i) => -i) },
    { key: "tokenizer.ggml.token_type", type: "array", elementType: "i32", value: vocab.types },
    { key: "tokenizer.ggml.bos_token_id", type: "u32", value: BOS_ID },
    { key: "tokenizer.ggml.eos_token_id", type: "u32", value: EOS_ID },
    { key: "tokenizer.ggml.unknown_token_id", type: "u32", value: UNK_ID },
    { key: "tokenizer.ggml.add_bos_token", type: "bool", value: true },
    { key: "tokenizer.ggml.add_eos_token", type: "bool", value: false },
    ...freshrecKvs(vocab, clusters),
  ];
  writeGguf(path, { kvs, tensors });
}

/** What a freshrec model file says about itself. */
export interface ModelFileInfo {
  readonly path: string;
  readonly shape: ModelShape;
  readonly vocabulary: Vocabulary;
  readonly clusters: readonly Cluster[];
  readonly freshrecVersion: string;
  readonly vocabularyHash: string;
  readonly templateHash: string;
  readonly templateId: string;
}

/**
 * Validates a model file and reads its freshrec metadata. Foreign GGUFs (any other model), corrupt or truncated
 * files and files made with another prompt template are refused with a FreshrecError("ENGINE") naming the reason.
 */
export function readModelFile(path: string): ModelFileInfo {
  const file = readGgufFile(path);
  const refuse = (why: string) => new FreshrecError("ENGINE", `${path} is not a usable freshrec model: ${why}`);
  if (ggufValue(file, "general.architecture") !== "llama") {
    throw refuse(`architecture ${JSON.stringify(ggufValue(file, "general.architecture"))}, expected "llama"`);
  }
  const format = ggufValue(file, "freshrec.format");
  if (format === undefined) throw refuse("it has no freshrec metadata (a foreign GGUF; use the gguf backend for it)");
  if (format !== MODEL_FORMAT) throw refuse(`freshrec model format ${String(format)}, this version reads ${MODEL_FORMAT}`);
  const ids = ggufArray(file, "freshrec.cluster_ids") as string[] | undefined;
  const descriptions = ggufArray(file, "freshrec.cluster_descriptions") as string[] | undefined;
  const tokens = ggufArray(file, "tokenizer.ggml.tokens") as string[] | undefined;
  const types = ggufArray(file, "tokenizer.ggml.token_type") as number[] | undefined;
  if (!ids || !descriptions || ids.length !== descriptions.length) throw refuse("cluster metadata missing or inconsistent");
  if (!tokens || !types || tokens.length !== types.length) throw refuse("tokenizer metadata missing");
  if (ggufValue(file, "freshrec.cluster_token_base") !== CLUSTER_BASE) throw refuse("unexpected cluster token base");
  const clusters = ids.map((id, i) => ({ id, description: descriptions[i] }));
  const vocabulary = new Vocabulary(tokens, types, clusters);
  const vocabularyHash = String(ggufValue(file, "freshrec.vocabulary_hash"));
  if (vocabulary.hash !== vocabularyHash) throw refuse(`vocabulary hash ${vocabulary.hash} does not match the recorded ${vocabularyHash}`);
  const templateHash = String(ggufValue(file, "freshrec.template_hash"));
  if (templateHash !== PROMPT_TEMPLATE_HASH) {
    throw refuse(`made with prompt template ${templateHash}, this freshrec uses ${PROMPT_TEMPLATE_HASH}`);
  }
  const num = (key: string): number => {
    const v = ggufValue(file, key);
    if (typeof v !== "number") throw refuse(`${key} missing`);
    return v;
  };
  const ffKv = file.kvs.get("llama.feed_forward_length");
  // llama.cpp's saver writes per-layer arrays for some keys (models trained by the removed llama_opt_epoch path were
  // saved by it and still load); the first element is the shape of every layer here.
  const ff = ffKv?.type === "array" ? Number(ffKv.value[0]) : num("llama.feed_forward_length");
  const headKv = file.kvs.get("llama.attention.head_count");
  const heads = headKv?.type === "array" ? Number(headKv.value[0]) : num("llama.attention.head_count");
  const shape: ModelShape = {
    embedding: num("llama.embedding_length"),
    layers: num("llama.block_count"),
    heads,
    feedForward: ff,
    contextLength: num("llama.context_length"),
  };
  const output = file.tensors.find((t) => t.name === "output.weight");
  if (!output) throw refuse("no separate output.weight (tied embeddings cannot be trained here)");
  if (output.dims[1] !== tokens.length) throw refuse("output.weight does not match the vocabulary size");
  return {
    path,
    shape,
    vocabulary,
    clusters,
    freshrecVersion: String(ggufValue(file, "freshrec.version")),
    vocabularyHash,
    templateHash,
    templateId: String(ggufValue(file, "freshrec.template_id")),
  };
}
