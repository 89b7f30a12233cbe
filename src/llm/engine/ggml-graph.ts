/**
 * The llama architecture as a ggml training graph built directly (not through llama.cpp's `llama_opt_*`), for
 * many samples packed into one window of tokens per optimizer step: engine v2 (issue 17), used by ggml-trainer.ts
 * and through it by the product's trainer (trainer.ts, train-worker.ts), its tests (test/llm/ggml-trainer.test.ts,
 * embedded.test.ts) and the engine bench.
 *
 * The graph is the one llama.cpp v0.4.0 builds for `LLM_ARCH_LLAMA` (src/models/llama.cpp of the bundle): token
 * embeddings (get_rows), per layer RMSNorm * attn_norm, Q/K/V projections, RoPE (normal mode, freq_base from the
 * file, no YaRN: ext_factor 0, attn_factor 1), softmax(K^T Q / sqrt(head_dim) + mask), V, output projection,
 * residual, RMSNorm * ffn_norm, SwiGLU (silu(gate) * up, down), residual; final RMSNorm * output_norm and the separate
 * output matrix. Every one of these tensors is a ggml parameter, so AdamW updates all of them: embeddings, K and V
 * included (the removed llama_opt_epoch path left them out, docs/engine.md fault 2).
 *
 * Packing (one window = one optimizer step): samples are laid end to end in a window of `windowTokens` tokens;
 * positions restart at 0 for each sample (so RoPE sees what the scorer sees), and the attention mask is
 * block-diagonal causal: token j of sample s attends to tokens 0..j of s only. Padding tokens after the last sample
 * attend only to themselves (a row of -inf everywhere would make softmax NaN, and 0 * NaN leaks into other rows).
 * The loss is cross entropy on the answer only: the hidden state at each sample's last prompt token is gathered
 * (get_rows) into `maxSamples` answer rows, and only those rows reach the output matrix. Answer rows a window does
 * not fill are multiplied by 0 before the loss (their logits are all 0, so their cross entropy is exactly ln V and
 * no gradient flows back through them); `GgmlStep.run` removes them from the reported loss. An all-zero label row
 * would not do: CROSS_ENTROPY_LOSS_BACK computes `(softmax(src0f) - src1f) * d / nr` per row
 * (ggml/src/ggml-cpu/ops.cpp), which assumes labels summing to 1, so a zero row still pushes softmax back.
 *
 * Backward passes used, all present in ggml v0.4.0 `ggml_compute_backward` (ggml/src/ggml.c): GET_ROWS (to
 * get_rows_back), MUL_MAT, RMS_NORM (rms_norm_back), MUL and ADD (with repeat_back for broadcasts), ROPE
 * (rope_ext_back; only the frequency factors have none, and none are used), SOFT_MAX (soft_max_ext_back; the
 * mask itself may not need a gradient: `GGML_ASSERT((!src1 || !src1_needs_grads) && "backward pass for softmax
 * mask not implemented")`, which holds for an input mask), UNARY SILU (silu_back), PERMUTE / RESHAPE / CONT /
 * TRANSPOSE, CROSS_ENTROPY_LOSS (cross_entropy_loss_back; its labels may not need a gradient, and they do not).
 */
import { FreshrecError } from "../../domain/errors.js";
import { GGML, type GgmlApi, loadGgmlApi } from "./ggml-api.js";
import type { NativePointer } from "./llama-api.js";

/** The hyper-parameters the graph needs (read from a model file). */
export interface GgmlLlamaShape {
  readonly embedding: number;
  readonly layers: number;
  readonly heads: number;
  readonly feedForward: number;
  readonly vocabulary: number;
  readonly contextLength: number;
  /** @defaultValue 1e-5 */
  readonly rmsEps: number;
  /** @defaultValue 10000 */
  readonly ropeFreqBase: number;
}

/** Tensor names of a llama model file, in the order the graph uses them. */
export function llamaTensorNames(layers: number): string[] {
  const names = ["token_embd.weight", "output_norm.weight", "output.weight"];
  for (let i = 0; i < layers; i++) {
    for (const n of ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]) {
      names.push(`blk.${i}.${n}.weight`);
    }
  }
  return names;
}

/** ggml dims of each tensor (ne0 first), as the GGUF files store them. */
export function llamaTensorDims(shape: GgmlLlamaShape, name: string): number[] {
  const { embedding: d, feedForward: ff, vocabulary: V } = shape;
  const base = name.replace(/^blk\.\d+\./, "").replace(/\.weight$/, "");
  switch (base) {
    case "token_embd":
    case "output":
      return [d, V];
    case "output_norm":
    case "attn_norm":
    case "ffn_norm":
      return [d];
    case "attn_q":
    case "attn_k":
    case "attn_v":
    case "attn_output":
      return [d, d];
    case "ffn_gate":
    case "ffn_up":
      return [d, ff];
    case "ffn_down":
      return [ff, d];
    default:
      throw new FreshrecError("INTERNAL", `unknown llama tensor ${name}`);
  }
}

/** The weights as ggml parameters in one CPU buffer, shared by every step graph built on them. */
export class GgmlWeights {
  readonly api: GgmlApi;
  readonly tensors = new Map<string, NativePointer>();
  readonly backend: NativePointer;
  private readonly ctx: NativePointer;
  private buffer: NativePointer;

  constructor(
    readonly shape: GgmlLlamaShape,
    values: ReadonlyMap<string, Float32Array>,
    threads = 1,
  ) {
    this.api = loadGgmlApi();
    const f = this.api.fn;
    const names = llamaTensorNames(shape.layers);
    this.ctx = f.ggml_init({ mem_size: (names.length + 8) * Number(f.ggml_tensor_overhead()), mem_buffer: null, no_alloc: true });
    for (const name of names) {
      const dims = llamaTensorDims(shape, name);
      const data = values.get(name);
      if (!data) throw new FreshrecError("ENGINE", `model has no tensor ${name}`);
      if (data.length !== dims.reduce((a, b) => a * b, 1)) throw new FreshrecError("ENGINE", `tensor ${name} has ${data.length} values, expected dims ${dims.join("x")}`);
      const t = dims.length === 1 ? f.ggml_new_tensor_1d(this.ctx, GGML.TYPE_F32, dims[0]) : f.ggml_new_tensor_2d(this.ctx, GGML.TYPE_F32, dims[0], dims[1]);
      f.ggml_set_name(t, name);
      f.ggml_set_param(t);
      this.tensors.set(name, t);
    }
    this.backend = this.api.cpuBackend(threads);
    this.buffer = f.ggml_backend_alloc_ctx_tensors(this.ctx, this.backend);
    if (!this.buffer) throw new FreshrecError("ENGINE", "ggml could not allocate the weights");
    for (const [name, t] of this.tensors) {
      const data = values.get(name) as Float32Array;
      f.ggml_backend_tensor_set(t, data, 0, data.byteLength);
    }
  }

  tensor(name: string): NativePointer {
    const t = this.tensors.get(name);
    if (!t) throw new FreshrecError("INTERNAL", `no weight ${name}`);
    return t;
  }

  read(name: string): Float32Array {
    const dims = llamaTensorDims(this.shape, name);
    const out = new Float32Array(dims.reduce((a, b) => a * b, 1));
    this.api.fn.ggml_backend_tensor_get(this.tensor(name), out, 0, out.byteLength);
    return out;
  }

  write(name: string, data: Float32Array): void {
    this.api.fn.ggml_backend_tensor_set(this.tensor(name), data, 0, data.byteLength);
  }

  setThreads(threads: number): void {
    this.api.setThreads(this.backend, threads);
  }

  free(): void {
    if (!this.buffer) return;
    this.api.fn.ggml_backend_buffer_free(this.buffer);
    this.api.fn.ggml_free(this.ctx);
    this.api.fn.ggml_backend_free(this.backend);
    this.buffer = null;
  }
}

/** One window of packed samples: what a step reads. */
export interface PackedWindow {
  /** Token ids, `windowTokens` long (padding included). */
  readonly tokens: Int32Array;
  /** Position of each token inside its own sample. */
  readonly positions: Int32Array;
  /** Sample index of each token, -1 for padding. */
  readonly segment: Int32Array;
  /** Index into `tokens` of each sample's last prompt token (where its answer is predicted). */
  readonly answerRows: readonly number[];
  /** The answer token of each sample. */
  readonly answers: readonly number[];
  /** Real (non-padding) tokens in the window. */
  readonly realTokens: number;
}

/**
 * Packs prompt+answer sequences (the answer is each sequence's last token; it is predicted, never read) into
 * windows of `windowTokens` input tokens and at most `maxSamples` samples, in the given order.
 */
export function packWindows(
  sequences: readonly (readonly number[])[],
  order: readonly number[],
  windowTokens: number,
  maxSamples: number,
  padToken: number,
): PackedWindow[] {
  const windows: PackedWindow[] = [];
  let current: number[] = [];
  let used = 0;
  const flush = () => {
    if (current.length === 0) return;
    const tokens = new Int32Array(windowTokens).fill(padToken);
    const positions = new Int32Array(windowTokens);
    const segment = new Int32Array(windowTokens).fill(-1);
    const answerRows: number[] = [];
    const answers: number[] = [];
    let at = 0;
    current.forEach((idx, s) => {
      const seq = sequences[idx];
      const n = seq.length - 1;
      for (let j = 0; j < n; j++) {
        tokens[at + j] = seq[j];
        positions[at + j] = j;
        segment[at + j] = s;
      }
      answerRows.push(at + n - 1);
      answers.push(seq[n]);
      at += n;
    });
    for (let j = at; j < windowTokens; j++) positions[j] = j - at;
    windows.push({ tokens, positions, segment, answerRows, answers, realTokens: at });
    current = [];
    used = 0;
  };
  for (const idx of order) {
    const n = sequences[idx].length - 1;
    if (n < 1) throw new FreshrecError("BAD_INPUT", `sample ${idx} has no prompt token before its answer`);
    if (n > windowTokens) throw new FreshrecError("BAD_INPUT", `a sample of ${n} prompt tokens does not fit a window of ${windowTokens}`);
    if (used + n > windowTokens || current.length === maxSamples) flush();
    current.push(idx);
    used += n;
  }
  flush();
  return windows;
}

/** The block-diagonal causal mask of a window: mask[q * T + k] = 0 if k may be attended from q, else -inf. */
export function windowMask(segment: Int32Array, out?: Float32Array): Float32Array {
  const T = segment.length;
  const mask = out ?? new Float32Array(T * T);
  mask.fill(Number.NEGATIVE_INFINITY);
  let start = 0;
  for (let q = 0; q < T; q++) {
    if (q > 0 && segment[q] !== segment[q - 1]) start = q;
    if (segment[q] < 0) {
      mask[q * T + q] = 0; // padding: itself only
      continue;
    }
    mask.fill(0, q * T + start, q * T + q + 1);
  }
  return mask;
}

/** A training graph's inputs for one packed window (`labels` null on a forward-only graph). */
export interface WindowInputs {
  readonly tokens: NativePointer;
  readonly positions: NativePointer;
  readonly mask: NativePointer;
  readonly rows: NativePointer;
  readonly rowMask: NativePointer;
  readonly labels: NativePointer | null;
}

/**
 * Loads a window into a graph's inputs: tokens, positions, the block-diagonal mask, the answer rows (unused rows
 * masked out) and one-hot labels, with the caller's reusable buffers (mask T x T, labels V x S). Returns the number
 * of samples. Both training graphs (autograd and hand-written backward) load windows this way.
 */
export function loadWindow(
  api: GgmlApi,
  inputs: WindowInputs,
  window: PackedWindow,
  sizes: { readonly windowTokens: number; readonly maxSamples: number },
  vocabulary: number,
  buffers: { readonly mask: Float32Array; readonly labels: Float32Array },
): number {
  const f = api.fn;
  const { windowTokens: T, maxSamples: S } = sizes;
  const V = vocabulary;
  if (window.tokens.length !== T) throw new FreshrecError("INTERNAL", `window of ${window.tokens.length} tokens for a graph of ${T}`);
  const n = window.answers.length;
  if (n > S) throw new FreshrecError("INTERNAL", `${n} samples for a graph of ${S}`);
  f.ggml_backend_tensor_set(inputs.tokens, window.tokens, 0, T * 4);
  f.ggml_backend_tensor_set(inputs.positions, window.positions, 0, T * 4);
  windowMask(window.segment, buffers.mask);
  f.ggml_backend_tensor_set(inputs.mask, buffers.mask, 0, buffers.mask.byteLength);
  const rows = new Int32Array(S);
  const rowMask = new Float32Array(S);
  buffers.labels.fill(0);
  for (let s = 0; s < S; s++) {
    if (s < n) {
      rows[s] = window.answerRows[s];
      rowMask[s] = 1;
      buffers.labels[s * V + window.answers[s]] = 1;
    } else {
      buffers.labels[s * V] = 1; // logits of an unused row are 0: its loss is ln V whatever the label
    }
  }
  f.ggml_backend_tensor_set(inputs.rows, rows, 0, rows.byteLength);
  f.ggml_backend_tensor_set(inputs.rowMask, rowMask, 0, rowMask.byteLength);
  if (inputs.labels) f.ggml_backend_tensor_set(inputs.labels, buffers.labels, 0, buffers.labels.byteLength);
  return n;
}

export interface GgmlStepOptions {
  readonly windowTokens: number;
  readonly maxSamples: number;
  /** true: forward + backward + AdamW; false: forward only (losses and logits). */
  readonly train: boolean;
  /** Pointer to a ggml_opt_optimizer_params struct (train only); rewritten by the caller between steps. */
  readonly optimizerParams?: NativePointer;
  /** ggml-opt's optimizer (SGD lets tests read a step's gradient from the weights' change). @defaultValue "adamw" */
  readonly optimizer?: "adamw" | "sgd";
}

export interface StepResult {
  /** Mean cross entropy over the window's real answers (before the update when training). */
  readonly loss: number;
  readonly samples: number;
  /** Real answers whose logit is the largest of the whole vocabulary (before the update); the manual step only. */
  readonly correct?: number;
}

/**
 * A static ggml-opt graph for windows of one size over shared weights: forward (and, when training, backward and
 * one AdamW step per run). ggml-opt with static graphs and opt_period 1 computes fresh gradients every step (no
 * persistent accumulators: `accumulate` is false in ggml_opt_build), so llama_opt_epoch's never-cleared
 * accumulators (docs/engine.md fault 1) do not arise here.
 */
export class GgmlStep {
  private readonly api: GgmlApi;
  private readonly ioCtx: NativePointer;
  private readonly computeCtx: NativePointer;
  private ioBuffer: NativePointer;
  private readonly sched: NativePointer;
  private readonly opt: NativePointer;
  private readonly graph: NativePointer;
  private readonly inTokens: NativePointer;
  private readonly inPositions: NativePointer;
  private readonly inMask: NativePointer;
  private readonly inRows: NativePointer;
  private readonly inRowMask: NativePointer;
  private readonly labels: NativePointer;
  private readonly outputs: NativePointer;
  private readonly maskBuf: Float32Array;
  private readonly labelBuf: Float32Array;
  private readonly lossBuf = new Float32Array(1);

  constructor(
    readonly weights: GgmlWeights,
    readonly options: GgmlStepOptions,
  ) {
    this.api = weights.api;
    const f = this.api.fn;
    const { windowTokens: T, maxSamples: S } = options;
    const { embedding: d, heads, layers, vocabulary: V, rmsEps, ropeFreqBase, contextLength } = weights.shape;
    const hd = d / heads;
    const overhead = Number(f.ggml_tensor_overhead());
    this.ioCtx = f.ggml_init({ mem_size: 16 * overhead, mem_buffer: null, no_alloc: true });
    this.inTokens = f.ggml_new_tensor_1d(this.ioCtx, GGML.TYPE_I32, T);
    this.inPositions = f.ggml_new_tensor_1d(this.ioCtx, GGML.TYPE_I32, T);
    this.inMask = f.ggml_new_tensor_2d(this.ioCtx, GGML.TYPE_F32, T, T);
    this.inRows = f.ggml_new_tensor_1d(this.ioCtx, GGML.TYPE_I32, S);
    this.inRowMask = f.ggml_new_tensor_2d(this.ioCtx, GGML.TYPE_F32, 1, S);
    for (const [t, name] of [
      [this.inTokens, "tokens"],
      [this.inPositions, "positions"],
      [this.inMask, "mask"],
      [this.inRows, "answer_rows"],
      [this.inRowMask, "answer_row_mask"],
    ] as const) {
      f.ggml_set_name(t, name);
      f.ggml_set_input(t);
    }
    this.ioBuffer = f.ggml_backend_alloc_ctx_tensors(this.ioCtx, weights.backend);

    const graphSize = 2048; // GGML_DEFAULT_GRAPH_SIZE: ggml_opt_init's graphs have this size
    this.computeCtx = f.ggml_init({
      mem_size: 4 * Number(f.ggml_graph_overhead_custom(graphSize, true)) + 6 * graphSize * overhead,
      mem_buffer: null,
      no_alloc: true,
    });
    const c = this.computeCtx;
    const w = (n: string) => weights.tensor(n);
    const norm = (x: NativePointer, g: NativePointer) => f.ggml_mul(c, f.ggml_rms_norm(c, x, rmsEps), g);
    const rope = (x: NativePointer) => f.ggml_rope_ext(c, x, this.inPositions, null, hd, GGML.ROPE_TYPE_NORM, contextLength, ropeFreqBase, 1, 0, 1, 32, 1);
    let x = f.ggml_get_rows(c, w("token_embd.weight"), this.inTokens); // [d, T]
    for (let i = 0; i < layers; i++) {
      const p = `blk.${i}.`;
      const h = norm(x, w(`${p}attn_norm.weight`));
      const q = rope(f.ggml_reshape_3d(c, f.ggml_mul_mat(c, w(`${p}attn_q.weight`), h), hd, heads, T));
      const k = rope(f.ggml_reshape_3d(c, f.ggml_mul_mat(c, w(`${p}attn_k.weight`), h), hd, heads, T));
      const v = f.ggml_reshape_3d(c, f.ggml_mul_mat(c, w(`${p}attn_v.weight`), h), hd, heads, T);
      const Q = f.ggml_permute(c, q, 0, 2, 1, 3); // [hd, T, heads]
      const K = f.ggml_permute(c, k, 0, 2, 1, 3);
      const kq = f.ggml_soft_max_ext(c, f.ggml_mul_mat(c, K, Q), this.inMask, 1 / Math.sqrt(hd), 0); // [Tk, Tq, heads]
      const Vt = f.ggml_cont(c, f.ggml_permute(c, v, 1, 2, 0, 3)); // [T, hd, heads]
      const kqv = f.ggml_mul_mat(c, Vt, kq); // [hd, Tq, heads]
      const o = f.ggml_cont_2d(c, f.ggml_permute(c, kqv, 0, 2, 1, 3), d, T);
      x = f.ggml_add(c, x, f.ggml_mul_mat(c, w(`${p}attn_output.weight`), o));
      const h2 = norm(x, w(`${p}ffn_norm.weight`));
      const gate = f.ggml_silu(c, f.ggml_mul_mat(c, w(`${p}ffn_gate.weight`), h2));
      const up = f.ggml_mul_mat(c, w(`${p}ffn_up.weight`), h2);
      x = f.ggml_add(c, x, f.ggml_mul_mat(c, w(`${p}ffn_down.weight`), f.ggml_mul(c, gate, up)));
    }
    const rows = norm(f.ggml_get_rows(c, x, this.inRows), w("output_norm.weight")); // [d, S]
    const logits = f.ggml_mul_mat(c, w("output.weight"), rows); // [V, S]
    this.outputs = f.ggml_mul(c, logits, this.inRowMask);
    f.ggml_set_name(this.outputs, "answer_logits");

    this.sched = f.ggml_backend_sched_new([weights.backend], null, 1, graphSize * 2, false, false);
    if (options.train) {
      const params = f.ggml_opt_default_params(this.sched, GGML.LOSS_CROSS_ENTROPY) as Record<string, unknown>;
      params.ctx_compute = c;
      params.inputs = this.inTokens;
      params.outputs = this.outputs;
      params.build_type = GGML.BUILD_OPT;
      params.opt_period = 1;
      params.optimizer = options.optimizer === "sgd" ? GGML.OPTIMIZER_SGD : GGML.OPTIMIZER_ADAMW;
      if (!options.optimizerParams) throw new FreshrecError("INTERNAL", "a training step needs optimizer params");
      params.get_opt_pars = this.api.constantOptimizerParams;
      params.get_opt_pars_ud = options.optimizerParams;
      this.opt = f.ggml_opt_init(params);
      this.labels = f.ggml_opt_labels(this.opt);
      this.graph = null;
    } else {
      // Forward only: a plain graph on the scheduler, so the logits tensor itself is allocated and readable
      // (ggml-opt computes a copy of its static graph and keeps only the loss, predictions and labels readable).
      this.opt = null;
      this.labels = null;
      this.graph = f.ggml_new_graph_custom(c, graphSize, false);
      f.ggml_set_output(this.outputs);
      f.ggml_build_forward_expand(this.graph, this.outputs);
    }
    this.maskBuf = new Float32Array(T * T);
    this.labelBuf = new Float32Array(V * S);
  }

  /** Loads a window into the graph's inputs (tokens, positions, mask, answer rows, labels). */
  private load(window: PackedWindow): number {
    const inputs = { tokens: this.inTokens, positions: this.inPositions, mask: this.inMask, rows: this.inRows, rowMask: this.inRowMask, labels: this.labels };
    return loadWindow(this.api, inputs, window, this.options, this.weights.shape.vocabulary, { mask: this.maskBuf, labels: this.labelBuf });
  }

  /**
   * Training graphs: forward, backward and one AdamW step on one window; the loss (over the window's real answers)
   * is the one computed before the update. Forward graphs: the logits of the answer rows, and the same loss
   * computed from them in JavaScript (log-softmax over the whole vocabulary, float64).
   */
  run(window: PackedWindow): StepResult {
    const f = this.api.fn;
    const n = this.load(window);
    const S = this.options.maxSamples;
    const V = this.weights.shape.vocabulary;
    if (this.opt) {
      f.ggml_opt_alloc(this.opt, true);
      f.ggml_opt_eval(this.opt, null);
      f.ggml_backend_tensor_get(f.ggml_opt_loss(this.opt), this.lossBuf, 0, 4);
      // Unused answer rows have all-zero logits: their cross entropy is exactly ln V each (see the module comment).
      return { loss: (this.lossBuf[0] * S - (S - n) * Math.log(V)) / n, samples: n };
    }
    f.ggml_backend_sched_reset(this.sched);
    if (!f.ggml_backend_sched_alloc_graph(this.sched, this.graph)) throw new FreshrecError("ENGINE", "ggml could not allocate the forward graph");
    const status = f.ggml_backend_sched_graph_compute(this.sched, this.graph);
    if (status !== 0) throw new FreshrecError("ENGINE", `ggml forward graph failed with status ${status}`);
    const logits = this.logits();
    let total = 0;
    for (let s = 0; s < n; s++) total += crossEntropy(logits, s * V, V, window.answers[s]);
    return { loss: total / n, samples: n };
  }

  /** Logits [maxSamples x V] of the answer rows after `run` (forward graphs only). */
  logits(): Float32Array {
    if (this.opt) throw new FreshrecError("INTERNAL", "a training graph does not keep its logits");
    const V = this.weights.shape.vocabulary;
    const out = new Float32Array(V * this.options.maxSamples);
    this.api.fn.ggml_backend_tensor_get(this.outputs, out, 0, out.byteLength);
    return out;
  }

  free(): void {
    if (!this.ioBuffer) return;
    const f = this.api.fn;
    if (this.opt) f.ggml_opt_free(this.opt);
    f.ggml_backend_sched_free(this.sched);
    f.ggml_free(this.computeCtx);
    f.ggml_backend_buffer_free(this.ioBuffer);
    f.ggml_free(this.ioCtx);
    this.ioBuffer = null;
  }
}

/** -log softmax(logits[from..from+V])[target], in float64. */
export function crossEntropy(logits: Float32Array, from: number, V: number, target: number): number {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < V; i++) max = Math.max(max, logits[from + i]);
  let sum = 0;
  for (let i = 0; i < V; i++) sum += Math.exp(logits[from + i] - max);
  return Math.log(sum) + max - logits[from + target];
}
