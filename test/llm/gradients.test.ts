/**
 * The workaround for llama.cpp v0.4.0 never clearing its gradient accumulators, checked against the real library:
 * a fixed llama.cpp shows up here as a failing "without the reset" expectation.
 */
import koffi from "koffi";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readGgufFile, readTensorF32 } from "../../src/llm/engine/gguf.js";
import {
  type NativePointer,
  pushThreadCount,
  allocOptimizerParams,
  createContext,
  gradientAccumulators,
  int32View,
  loadLlamaApi,
  loadModel,
  resetGradients,
} from "../../src/llm/engine/llama-api.js";
import { createModelFile } from "../../src/llm/engine/model-file.js";
import { BOS_ID, buildVocabulary } from "../../src/llm/engine/vocabulary.js";
import { CLUSTERS, TINY_SHAPE, tempWorkspace } from "./fixtures.js";

const epochCallback = koffi.proto(
  "void freshrec_test_epoch_cb(bool train, void *opt_ctx, void *dataset, void *result, int64_t ibatch, int64_t ibatch_max, int64_t t_start_us)",
);

/** Trains the same 256-token row `steps` times with plain SGD; returns |ΔW| of output.weight per step. */
function sgdStepSizes(reset: boolean, steps: number): number[] {
  const dir = tempWorkspace("freshrec-grad-");
  const vocab = buildVocabulary({ clusters: CLUSTERS });
  const path = join(dir, "init.gguf");
  createModelFile(path, vocab, TINY_SHAPE);
  const api = loadLlamaApi();
  const model = loadModel(api, path, { writable: true });
  const ctx = createContext(api, model, { nCtx: 256, nBatch: 256, nUbatch: 256, nSeqMax: 1, threads: 1, kvUnified: true });
  pushThreadCount(api, ctx, BOS_ID);
  const optimizer = allocOptimizerParams();
  optimizer.set({ adamw_alpha: 1e-3, adamw_beta1: 0.9, adamw_beta2: 0.999, adamw_eps: 1e-8, adamw_wd: 0, sgd_alpha: 1e-3, sgd_wd: 0 });
  api.fn.llama_opt_init(ctx, model, {
    n_ctx_train: 0,
    param_filter: api.symbol("llama_opt_param_filter_all"),
    param_filter_ud: null,
    get_opt_pars: api.symbol("ggml_opt_get_constant_optimizer_params"),
    get_opt_pars_ud: optimizer.ptr,
    optimizer_type: 1, // SGD: the step is exactly lr x the gradient it is given
  });
  let accumulators: NativePointer[] | null = null;
  const callback = koffi.register((train: boolean, optCtx: NativePointer) => {
    if (!reset || !train) return;
    accumulators ??= gradientAccumulators(api, optCtx);
    resetGradients(api, accumulators);
  }, koffi.pointer(epochCallback));
  const result = api.fn.ggml_opt_result_init();
  const dataset = api.fn.ggml_opt_dataset_init(26, 26, 256, 256, 1, 1);
  const tokens = int32View(api.fn.ggml_get_data(api.fn.ggml_opt_dataset_data(dataset)), 256);
  const labels = int32View(api.fn.ggml_get_data(api.fn.ggml_opt_dataset_labels(dataset)), 256);
  for (let i = 0; i < 256; i++) {
    tokens[i] = 3 + ((i * 7) % 20);
    labels[i] = 3 + (((i + 1) * 7) % 20);
  }
  const weights: Float32Array[] = [];
  const snapshot = (k: number) => {
    const file = join(dir, `step-${k}.gguf`);
    api.fn.llama_model_save_to_file(model, file);
    weights.push(readTensorF32(readGgufFile(file), "output.weight"));
  };
  snapshot(0);
  for (let k = 1; k <= steps; k++) {
    api.fn.llama_opt_epoch(ctx, dataset, result, null, 1, callback, null);
    snapshot(k);
  }
  api.fn.ggml_opt_dataset_free(dataset);
  api.fn.ggml_opt_result_free(result);
  koffi.unregister(callback);
  api.fn.llama_free(ctx);
  api.fn.llama_model_free(model);
  return weights.slice(1).map((w, k) => {
    let sum = 0;
    for (let i = 0; i < w.length; i++) sum += (w[i] - weights[k][i]) ** 2;
    return Math.sqrt(sum);
  });
}

describe("llama.cpp gradient accumulators (v0.4.0)", () => {
  it("without the reset, step k applies the sum of all k gradients (the upstream defect)", () => {
    const [d1, d2, d3] = sgdStepSizes(false, 3);
    expect(d2 / d1).toBeCloseTo(2, 1);
    expect(d3 / d1).toBeCloseTo(3, 1);
  });

  it("with the reset after every step, each step applies only its own gradient", () => {
    const [d1, d2, d3] = sgdStepSizes(true, 3);
    expect(d2 / d1).toBeCloseTo(1, 1);
    expect(d3 / d1).toBeCloseTo(1, 1);
  });
});
