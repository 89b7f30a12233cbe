/**
 * Engine v2's training step with a hand-written backward pass (ggml-trainer.ts; the product's trainer with
 * `training.engine` "ggml").
 *
 * Why: with ggml's automatic differentiation (`ggml_build_backward_expand`, used through ggml-opt by `GgmlStep` in
 * ggml-graph.ts) every MUL_MAT's backward is two `ggml_out_prod` nodes (ggml/src/ggml.c, `ggml_compute_backward`,
 * case GGML_OP_MUL_MAT: "ggml_out_prod(ctx, src1, grad)" for the weight and "ggml_out_prod(ctx, src0,
 * ggml_transpose(ctx, grad))" for the input). On the CPU backend OUT_PROD is a loop of `ggml_vec_mad_f32_unroll`
 * rank-1 updates, not the blocked tinyBLAS kernel MUL_MAT uses: `perf` on a reference-shape step (d=128, 2 layers,
 * ff 512, V 2048, 256-token windows, 1 thread) put 51% of all cycles in ggml_vec_mad_f32_unroll under
 * ggml_compute_forward_out_prod, against 12% for every forward matrix product in tinyBLAS.
 *
 * So this step builds the same forward graph and writes the backward graph itself, each gradient of a matrix
 * product as a MUL_MAT of transposed copies (dW = x dy^T as mul_mat(x^T, dy^T), dx = W dy as mul_mat(W^T, dy)), and
 * uses ggml's own backward ops for the rest (rms_norm_back, rope_ext_back, soft_max_ext_back, silu_back,
 * get_rows_back, repeat_back, cross_entropy_loss_back), then one `ggml_opt_step_adamw` (or `ggml_opt_step_sgd`) per
 * weight after the whole backward pass. test/llm/ggml-trainer.test.ts checks its gradients against ggml's autograd.
 *
 * Measured gain, honestly small: OUT_PROD is gone from the profile and tinyBLAS takes 47% of the cycles, but the
 * transposed copies cost 20% (ggml copies a transposed F32 view element by element: `ggml_compute_forward_dup_bytes`
 * calls memcpy per 4-byte element), so a reference-shape step went from ~5.65k to ~5.9k real tokens per CPU-second
 * (1 thread, 256-token windows, single runs on a loaded machine).
 */
import koffi from "koffi";
import { FreshrecError } from "../../domain/errors.js";
import { GGML, type GgmlApi } from "./ggml-api.js";
import { type GgmlWeights, type PackedWindow, type StepResult, llamaTensorDims, llamaTensorNames, loadWindow } from "./ggml-graph.js";
import type { NativePointer } from "./llama-api.js";

export interface ManualStepOptions {
  readonly windowTokens: number;
  readonly maxSamples: number;
  /** @defaultValue "adamw" */
  readonly optimizer?: "adamw" | "sgd";
  /**
   * Precision of the matrix products: "f32", or "bf16" (operands rounded to bfloat16, products accumulated in
   * float32 by tinyBLAS's AVX512-BF16 kernel; weights, gradients, optimizer state and every other op stay float32).
   * Experimental. @defaultValue "f32"
   */
  readonly precision?: "f32" | "bf16";
}

export interface OptimizerSettings {
  readonly learningRate: number;
  /** @defaultValue 0.9 */
  readonly beta1?: number;
  /** @defaultValue 0.999 */
  readonly beta2?: number;
  /** @defaultValue 1e-8 */
  readonly eps?: number;
  /** @defaultValue 0 */
  readonly weightDecay?: number;
}

type T = NativePointer;

export class GgmlManualStep {
  private readonly api: GgmlApi;
  private readonly ioCtx: T;
  private readonly stateCtx: T;
  private readonly computeCtx: T;
  private ioBuffer: T;
  private stateBuffer: T;
  private readonly sched: T;
  private readonly graph: T;
  private readonly inTokens: T;
  private readonly inPositions: T;
  private readonly inMask: T;
  private readonly inRows: T;
  private readonly inRowMask: T;
  private readonly inLabels: T;
  private readonly inOne: T;
  private readonly optParams: T;
  private readonly loss: T;
  /** Argmax of each answer row's logits (training accuracy). */
  private readonly argmax: T;
  private readonly argmaxBuf: Int32Array;
  /** Gradient of each weight (graph nodes; readable after `run` for tests). */
  readonly grads = new Map<string, T>();
  private readonly maskBuf: Float32Array;
  private readonly labelBuf: Float32Array;
  private readonly lossBuf = new Float32Array(1);
  private iteration = 0;
  private allocated = false;

  constructor(
    readonly weights: GgmlWeights,
    readonly options: ManualStepOptions,
  ) {
    this.api = weights.api;
    const f = this.api.fn;
    const { windowTokens: Tn, maxSamples: S } = options;
    const { embedding: d, heads: H, layers, vocabulary: V, rmsEps: eps, ropeFreqBase, contextLength } = weights.shape;
    const hd = d / H;
    const sgd = options.optimizer === "sgd";
    const overhead = Number(f.ggml_tensor_overhead());
    const names = llamaTensorNames(layers);

    this.ioCtx = f.ggml_init({ mem_size: 16 * overhead, mem_buffer: null, no_alloc: true });
    const io = (t: T, name: string) => {
      f.ggml_set_name(t, name);
      f.ggml_set_input(t);
      return t;
    };
    this.inTokens = io(f.ggml_new_tensor_1d(this.ioCtx, GGML.TYPE_I32, Tn), "tokens");
    this.inPositions = io(f.ggml_new_tensor_1d(this.ioCtx, GGML.TYPE_I32, Tn), "positions");
    this.inMask = io(f.ggml_new_tensor_2d(this.ioCtx, GGML.TYPE_F32, Tn, Tn), "mask");
    this.inRows = io(f.ggml_new_tensor_1d(this.ioCtx, GGML.TYPE_I32, S), "answer_rows");
    this.inRowMask = io(f.ggml_new_tensor_2d(this.ioCtx, GGML.TYPE_F32, 1, S), "answer_row_mask");
    this.inLabels = io(f.ggml_new_tensor_2d(this.ioCtx, GGML.TYPE_F32, V, S), "labels");
    this.inOne = io(f.ggml_new_tensor_1d(this.ioCtx, GGML.TYPE_F32, 1), "dloss");
    this.optParams = io(f.ggml_new_tensor_1d(this.ioCtx, GGML.TYPE_F32, sgd ? 2 : 7), "optimizer_params");
    this.ioBuffer = f.ggml_backend_alloc_ctx_tensors(this.ioCtx, weights.backend);
    f.ggml_backend_tensor_set(this.inOne, new Float32Array([1]), 0, 4);

    // AdamW moments, one pair per weight, zeroed.
    this.stateCtx = f.ggml_init({ mem_size: (2 * names.length + 4) * overhead, mem_buffer: null, no_alloc: true });
    const moments = new Map<string, [T, T]>();
    if (!sgd) {
      for (const n of names) {
        const dims = llamaTensorDims(weights.shape, n);
        const like = () =>
          dims.length === 1 ? f.ggml_new_tensor_1d(this.stateCtx, GGML.TYPE_F32, dims[0]) : f.ggml_new_tensor_2d(this.stateCtx, GGML.TYPE_F32, dims[0], dims[1]);
        moments.set(n, [like(), like()]);
      }
    }
    this.stateBuffer = sgd ? null : f.ggml_backend_alloc_ctx_tensors(this.stateCtx, weights.backend);
    if (this.stateBuffer) f.ggml_backend_buffer_clear(this.stateBuffer, 0);

    const graphSize = 8192;
    this.computeCtx = f.ggml_init({
      mem_size: Number(f.ggml_graph_overhead_custom(graphSize, false)) + 2 * graphSize * overhead,
      mem_buffer: null,
      no_alloc: true,
    });
    const c = this.computeCtx;
    const w = (n: string) => weights.tensor(n);
    const low = options.precision === "bf16";
    const transposed = new Map<unknown, T>();
    const lowered = new Map<unknown, T>();
    const isLow = new Set<unknown>();
    const tr = (x: T): T => {
      // One contiguous transposed copy per tensor (h feeds q, k and v). In bf16 the copy is a conversion, which ggml
      // does element by element without the per-element memcpy of a same-type copy.
      const key = koffi.address(x);
      let t = transposed.get(key);
      if (!t) {
        t = low ? f.ggml_cast(c, f.ggml_transpose(c, x), GGML.TYPE_BF16) : f.ggml_cont(c, f.ggml_transpose(c, x));
        transposed.set(key, t);
        if (low) isLow.add(koffi.address(t));
      }
      return t;
    };
    /** mul_mat with src0 in the chosen precision (ggml converts src1 to src0's dot type itself). */
    const mm = (a: T, b: T): T => {
      if (!low || isLow.has(koffi.address(a))) return f.ggml_mul_mat(c, a, b);
      const key = koffi.address(a);
      let a16 = lowered.get(key);
      if (!a16) lowered.set(key, (a16 = f.ggml_cast(c, a, GGML.TYPE_BF16)));
      return f.ggml_mul_mat(c, a16, b);
    };
    /** y = mul_mat(W, x): returns [dW, dx] for upstream dy (dx only when wanted). */
    const linearBack = (W: T, x: T, dy: T, wantDx = true): [T, T | null] => {
      const dW = mm(tr(x), tr(dy));
      return [dW, wantDx ? mm(tr(W), dy) : null];
    };
    const ropeArgs = [hd, GGML.ROPE_TYPE_NORM, contextLength, ropeFreqBase, 1, 0, 1, 32, 1] as const;
    const rope = (x: T) => f.ggml_rope_ext(c, x, this.inPositions, null, ...ropeArgs);
    const ropeBack = (dy: T) => f.ggml_rope_ext_back(c, dy, this.inPositions, null, ...ropeArgs);
    const scale = 1 / Math.sqrt(hd);

    // ---- forward, keeping what the backward pass needs ----
    interface LayerState {
      x: T; xn: T; h: T; q: T; k: T; v: T; Q: T; K: T; Vp: T; P: T; o: T; x1: T; x1n: T; h2: T; g: T; a: T; u: T; m: T;
    }
    const states: LayerState[] = [];
    let x = f.ggml_get_rows(c, w("token_embd.weight"), this.inTokens); // [d, T]
    for (let i = 0; i < layers; i++) {
      const p = `blk.${i}.`;
      const xn = f.ggml_rms_norm(c, x, eps);
      const h = f.ggml_mul(c, xn, w(`${p}attn_norm.weight`));
      const q = rope(f.ggml_reshape_3d(c, mm(w(`${p}attn_q.weight`), h), hd, H, Tn));
      const k = rope(f.ggml_reshape_3d(c, mm(w(`${p}attn_k.weight`), h), hd, H, Tn));
      const v = f.ggml_reshape_3d(c, mm(w(`${p}attn_v.weight`), h), hd, H, Tn);
      const Q = f.ggml_cont(c, f.ggml_permute(c, q, 0, 2, 1, 3)); // [hd, T, H]
      const K = f.ggml_cont(c, f.ggml_permute(c, k, 0, 2, 1, 3));
      const Vp = f.ggml_cont(c, f.ggml_permute(c, v, 0, 2, 1, 3)); // [hd, T, H]
      const P = f.ggml_soft_max_ext(c, mm(K, Q), this.inMask, scale, 0); // [Tk, Tq, H]
      const O = mm(tr(Vp), P); // [hd, Tq, H]
      const o = f.ggml_cont_2d(c, f.ggml_permute(c, O, 0, 2, 1, 3), d, Tn);
      const x1 = f.ggml_add(c, x, mm(w(`${p}attn_output.weight`), o));
      const x1n = f.ggml_rms_norm(c, x1, eps);
      const h2 = f.ggml_mul(c, x1n, w(`${p}ffn_norm.weight`));
      const g = mm(w(`${p}ffn_gate.weight`), h2);
      const a = f.ggml_silu(c, g);
      const u = mm(w(`${p}ffn_up.weight`), h2);
      const m = f.ggml_mul(c, a, u);
      const x2 = f.ggml_add(c, x1, mm(w(`${p}ffn_down.weight`), m));
      states.push({ x, xn, h, q, k, v, Q, K, Vp, P, o, x1, x1n, h2, g, a, u, m });
      x = x2;
    }
    const rows = f.ggml_get_rows(c, x, this.inRows); // [d, S]
    const rn = f.ggml_rms_norm(c, rows, eps);
    const on = f.ggml_mul(c, rn, w("output_norm.weight"));
    const logits = f.ggml_mul(c, mm(w("output.weight"), on), this.inRowMask); // [V, S]
    this.loss = f.ggml_cross_entropy_loss(c, logits, this.inLabels);
    f.ggml_set_name(this.loss, "loss");
    f.ggml_set_output(this.loss);
    this.argmax = f.ggml_argmax(c, logits); // [S] i32
    f.ggml_set_name(this.argmax, "argmax");
    f.ggml_set_output(this.argmax);

    // ---- backward ----
    const grad = (n: string, t: T) => {
      f.ggml_set_name(t, `grad ${n}`);
      this.grads.set(n, t);
    };
    const normWeightBack = (dy: T, xn: T, gWeight: string) => grad(gWeight, f.ggml_repeat_back(c, f.ggml_mul(c, dy, xn), w(gWeight)));
    // Unused answer rows: logits were multiplied by 0, so their gradient is multiplied by 0 too.
    const dlogits = f.ggml_mul(c, f.ggml_cross_entropy_loss_back(c, this.inOne, logits, this.inLabels), this.inRowMask);
    const [dWout, don] = linearBack(w("output.weight"), on, dlogits);
    grad("output.weight", dWout);
    normWeightBack(don, rn, "output_norm.weight");
    const drows = f.ggml_rms_norm_back(c, f.ggml_mul(c, don, w("output_norm.weight")), rows, eps);
    let dx = f.ggml_get_rows_back(c, drows, this.inRows, x); // [d, T]
    for (let i = layers - 1; i >= 0; i--) {
      const p = `blk.${i}.`;
      const s = states[i];
      // FFN: x2 = x1 + Wd (silu(Wg h2) * Wu h2), h2 = norm(x1) * ffn_norm
      const [dWd, dm] = linearBack(w(`${p}ffn_down.weight`), s.m, dx);
      grad(`${p}ffn_down.weight`, dWd);
      const du = f.ggml_mul(c, dm, s.a);
      const dg = f.ggml_silu_back(c, f.ggml_mul(c, dm, s.u), s.g);
      const [dWg, dh2g] = linearBack(w(`${p}ffn_gate.weight`), s.h2, dg);
      const [dWu, dh2u] = linearBack(w(`${p}ffn_up.weight`), s.h2, du);
      grad(`${p}ffn_gate.weight`, dWg);
      grad(`${p}ffn_up.weight`, dWu);
      const dh2 = f.ggml_add(c, dh2g, dh2u);
      normWeightBack(dh2, s.x1n, `${p}ffn_norm.weight`);
      const dx1 = f.ggml_add(c, dx, f.ggml_rms_norm_back(c, f.ggml_mul(c, dh2, w(`${p}ffn_norm.weight`)), s.x1, eps));
      // Attention: x1 = x + Wo o
      const [dWo, doo] = linearBack(w(`${p}attn_output.weight`), s.o, dx1);
      grad(`${p}attn_output.weight`, dWo);
      const dO = f.ggml_cont(c, f.ggml_permute(c, f.ggml_reshape_3d(c, doo, hd, H, Tn), 0, 2, 1, 3)); // [hd, Tq, H]
      const dP = mm(s.Vp, dO); // [Tk, Tq, H]
      const dVp = mm(tr(dO), tr(s.P)); // [hd, Tk, H]
      const dS = f.ggml_soft_max_ext_back(c, dP, s.P, scale, 0); // [Tk, Tq, H]
      const dQ = mm(tr(s.K), dS); // [hd, Tq, H]
      const dK = mm(tr(s.Q), tr(dS)); // [hd, Tk, H]
      const back = (t: T) => f.ggml_cont(c, f.ggml_permute(c, t, 0, 2, 1, 3)); // [hd, T, H] -> [hd, H, T]
      const dq = f.ggml_reshape_2d(c, ropeBack(back(dQ)), d, Tn);
      const dk = f.ggml_reshape_2d(c, ropeBack(back(dK)), d, Tn);
      const dv = f.ggml_reshape_2d(c, back(dVp), d, Tn);
      const [dWq, dhq] = linearBack(w(`${p}attn_q.weight`), s.h, dq);
      const [dWk, dhk] = linearBack(w(`${p}attn_k.weight`), s.h, dk);
      const [dWv, dhv] = linearBack(w(`${p}attn_v.weight`), s.h, dv);
      grad(`${p}attn_q.weight`, dWq);
      grad(`${p}attn_k.weight`, dWk);
      grad(`${p}attn_v.weight`, dWv);
      const dh = f.ggml_add(c, f.ggml_add(c, dhq, dhk), dhv);
      normWeightBack(dh, s.xn, `${p}attn_norm.weight`);
      dx = f.ggml_add(c, dx1, f.ggml_rms_norm_back(c, f.ggml_mul(c, dh, w(`${p}attn_norm.weight`)), s.x, eps));
    }
    grad("token_embd.weight", f.ggml_get_rows_back(c, dx, this.inTokens, w("token_embd.weight")));

    this.graph = f.ggml_new_graph_custom(c, graphSize, false);
    f.ggml_build_forward_expand(this.graph, this.loss);
    f.ggml_build_forward_expand(this.graph, this.argmax);
    for (const n of names) {
      const g = this.grads.get(n);
      if (!g) throw new FreshrecError("INTERNAL", `no gradient for ${n}`);
      f.ggml_set_output(g);
      f.ggml_build_forward_expand(this.graph, g);
    }
    // Updates only after the whole backward pass (nodes run in the order they were added).
    for (const n of names) {
      const g = this.grads.get(n);
      const mv = moments.get(n);
      const stepNode = sgd ? f.ggml_opt_step_sgd(c, w(n), g, this.optParams) : f.ggml_opt_step_adamw(c, w(n), g, mv?.[0], mv?.[1], this.optParams);
      f.ggml_build_forward_expand(this.graph, stepNode);
    }
    this.sched = f.ggml_backend_sched_new([weights.backend], null, 1, graphSize, false, false);
    this.maskBuf = new Float32Array(Tn * Tn);
    this.labelBuf = new Float32Array(V * S);
    this.argmaxBuf = new Int32Array(S);
  }

  /** Forward, backward and one optimizer step on a window; the loss is over its real answers, before the update. */
  run(window: PackedWindow, settings: OptimizerSettings): StepResult {
    const f = this.api.fn;
    const S = this.options.maxSamples;
    const V = this.weights.shape.vocabulary;
    const inputs = { tokens: this.inTokens, positions: this.inPositions, mask: this.inMask, rows: this.inRows, rowMask: this.inRowMask, labels: this.inLabels };
    const n = loadWindow(this.api, inputs, window, this.options, V, { mask: this.maskBuf, labels: this.labelBuf });
    this.iteration++;
    const lr = settings.learningRate;
    const wd = settings.weightDecay ?? 0;
    if (this.options.optimizer === "sgd") {
      f.ggml_backend_tensor_set(this.optParams, new Float32Array([lr, wd]), 0, 8);
    } else {
      const b1 = settings.beta1 ?? 0.9;
      const b2 = settings.beta2 ?? 0.999;
      // As ggml_opt_eval: alpha, beta1, beta2, eps, wd, then the bias corrections 1/(1 - beta^iter).
      const params = new Float32Array([lr, b1, b2, settings.eps ?? 1e-8, wd, 1 / (1 - b1 ** this.iteration), 1 / (1 - b2 ** this.iteration)]);
      f.ggml_backend_tensor_set(this.optParams, params, 0, params.byteLength);
    }
    if (!this.allocated) {
      // Once: the graph and its shapes never change, and the inputs live in this step's own buffer, so the
      // scheduler's allocation stays valid from step to step (as ggml-opt keeps its allocated graph).
      f.ggml_backend_sched_reset(this.sched);
      if (!f.ggml_backend_sched_alloc_graph(this.sched, this.graph)) throw new FreshrecError("ENGINE", "ggml could not allocate the training graph");
      this.allocated = true;
    }
    const status = f.ggml_backend_sched_graph_compute(this.sched, this.graph);
    if (status !== 0) throw new FreshrecError("ENGINE", `ggml training graph failed with status ${status}`);
    f.ggml_backend_tensor_get(this.loss, this.lossBuf, 0, 4);
    f.ggml_backend_tensor_get(this.argmax, this.argmaxBuf, 0, this.argmaxBuf.byteLength);
    let correct = 0;
    for (let s = 0; s < n; s++) if (this.argmaxBuf[s] === window.answers[s]) correct++;
    return { loss: (this.lossBuf[0] * S - (S - n) * Math.log(V)) / n, samples: n, correct };
  }

  /** A weight's gradient from the last `run`. */
  gradient(name: string): Float32Array {
    const t = this.grads.get(name);
    if (!t) throw new FreshrecError("INTERNAL", `no gradient ${name}`);
    const out = new Float32Array(Number(this.api.fn.ggml_nbytes(t)) / 4);
    this.api.fn.ggml_backend_tensor_get(t, out, 0, out.byteLength);
    return out;
  }

  free(): void {
    if (!this.ioBuffer) return;
    const f = this.api.fn;
    f.ggml_backend_sched_free(this.sched);
    f.ggml_free(this.computeCtx);
    if (this.stateBuffer) f.ggml_backend_buffer_free(this.stateBuffer);
    f.ggml_free(this.stateCtx);
    f.ggml_backend_buffer_free(this.ioBuffer);
    f.ggml_free(this.ioCtx);
    this.ioBuffer = null;
    this.stateBuffer = null;
  }
}
