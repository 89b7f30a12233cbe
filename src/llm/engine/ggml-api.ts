/**
 * ggml's own C API (tensors, graph ops, the CPU backend, the backend scheduler and ggml-opt) through koffi, from the
 * same prebuilt libraries as llama-api.ts (node-llama-cpp 3.21.1, llama.cpp v0.4.0: `libggml-base.so` and
 * `libggml.v0.4.0.so`). Used by the direct ggml trainer (ggml-trainer.ts), which builds the llama training graph
 * itself (llama.cpp's own training API, `llama_opt_epoch`, was the removed first engine).
 *
 * Version-bound like llama-api.ts: `loadLlamaApi` refuses any other node-llama-cpp before anything is bound here,
 * and the two structs passed by value were measured with a C sizeof/offsetof program against the v0.4.0 headers of
 * the bundle (`node_modules/node-llama-cpp/llama/gitRelease.bundle`, ggml/include/ggml.h and ggml-opt.h):
 * `ggml_init_params` 24 bytes, `ggml_opt_params` 72 (pointers at 0, 8, 16, 24; loss_type 32, build_type 36,
 * opt_period 40; get_opt_pars 48, get_opt_pars_ud 56; optimizer 64).
 */
import koffi from "koffi";
import { join } from "node:path";
import { FreshrecError } from "../../domain/errors.js";
import { type NativePointer, loadLlamaApi } from "./llama-api.js";

export const ggmlInitParams = koffi.struct("ggml_init_params", {
  mem_size: "size_t",
  mem_buffer: "void *",
  no_alloc: "bool",
});

export const ggmlOptParams = koffi.struct("ggml_opt_params", {
  backend_sched: "void *",
  ctx_compute: "void *",
  inputs: "void *",
  outputs: "void *",
  loss_type: "int",
  build_type: "int",
  opt_period: "int32_t",
  get_opt_pars: "void *",
  get_opt_pars_ud: "void *",
  optimizer: "int",
});

/** Sizes measured with a C sizeof program against the v0.4.0 headers (module comment). */
export const GGML_EXPECTED_STRUCT_SIZES = { ggml_init_params: 24, ggml_opt_params: 72 } as const;

/** ggml enum values of this version (ggml.h, ggml-opt.h, ggml-backend.h). */
export const GGML = {
  TYPE_F32: 0,
  TYPE_I32: 26,
  TYPE_BF16: 30,
  ROPE_TYPE_NORM: 0,
  LOSS_CROSS_ENTROPY: 2,
  BUILD_FORWARD: 10,
  BUILD_GRAD: 20,
  BUILD_OPT: 30,
  OPTIMIZER_ADAMW: 0,
  OPTIMIZER_SGD: 1,
  DEVICE_CPU: 0,
} as const;

type Fn = (...args: any[]) => any;

const NAMES = [
  "ggml_init",
  "ggml_free",
  "ggml_tensor_overhead",
  "ggml_graph_overhead_custom",
  "ggml_new_tensor_1d",
  "ggml_new_tensor_2d",
  "ggml_new_tensor_3d",
  "ggml_set_param",
  "ggml_set_name",
  "ggml_set_input",
  "ggml_set_output",
  "ggml_nbytes",
  "ggml_get_rows",
  "ggml_mul_mat",
  "ggml_rms_norm",
  "ggml_mul",
  "ggml_add",
  "ggml_scale",
  "ggml_reshape_2d",
  "ggml_reshape_3d",
  "ggml_permute",
  "ggml_cont",
  "ggml_cast",
  "ggml_cont_2d",
  "ggml_transpose",
  "ggml_rope_ext",
  "ggml_soft_max_ext",
  "ggml_silu",
  "ggml_rms_norm_back",
  "ggml_rope_ext_back",
  "ggml_soft_max_ext_back",
  "ggml_silu_back",
  "ggml_get_rows_back",
  "ggml_repeat_back",
  "ggml_cross_entropy_loss",
  "ggml_argmax",
  "ggml_cross_entropy_loss_back",
  "ggml_opt_step_adamw",
  "ggml_opt_step_sgd",
  "ggml_backend_buffer_clear",
  "ggml_backend_init_by_type",
  "ggml_backend_dev_by_type",
  "ggml_backend_dev_backend_reg",
  "ggml_backend_reg_get_proc_address",
  "ggml_backend_free",
  "ggml_backend_alloc_ctx_tensors",
  "ggml_backend_buffer_free",
  "ggml_backend_tensor_set",
  "ggml_backend_tensor_get",
  "ggml_backend_sched_new",
  "ggml_backend_sched_free",
  "ggml_new_graph_custom",
  "ggml_build_forward_expand",
  "ggml_backend_sched_alloc_graph",
  "ggml_backend_sched_graph_compute",
  "ggml_backend_sched_reset",
  "ggml_opt_default_params",
  "ggml_opt_init",
  "ggml_opt_free",
  "ggml_opt_alloc",
  "ggml_opt_eval",
  "ggml_opt_loss",
  "ggml_opt_labels",
  "ggml_opt_outputs",
  "ggml_opt_reset",
] as const;

export type GgmlFnName = (typeof NAMES)[number];

export interface GgmlApi {
  readonly fn: Record<GgmlFnName, Fn>;
  /** Address of ggml_opt_get_constant_optimizer_params, the callback ggml-opt calls before every optimizer step. */
  readonly constantOptimizerParams: NativePointer;
  /** A CPU backend with `threads` threads (set through the backend registry's `ggml_backend_set_n_threads`). */
  cpuBackend(threads: number): NativePointer;
  /** Sets the thread count of a CPU backend made by `cpuBackend`. */
  setThreads(backend: NativePointer, threads: number): void;
}

let cached: GgmlApi | undefined;

export function loadGgmlApi(): GgmlApi {
  if (cached) return cached;
  const llama = loadLlamaApi(); // version pin, backends loaded, logging silenced
  // Same files llama-api.ts loaded: dlopen returns the handles already in the process.
  const base = koffi.load(join(llama.binsDir, "libggml-base.so"));
  const ggml = koffi.load(join(llama.binsDir, "libggml.v0.4.0.so"));
  const f = (lib: koffi.IKoffiLib, decl: string) => lib.func(decl) as Fn;
  const T = "void *";
  const fn: Record<GgmlFnName, Fn> = {
    ggml_init: f(base, "void *ggml_init(ggml_init_params params)"),
    ggml_free: f(base, "void ggml_free(void *ctx)"),
    ggml_tensor_overhead: f(base, "size_t ggml_tensor_overhead(void)"),
    ggml_graph_overhead_custom: f(base, "size_t ggml_graph_overhead_custom(size_t size, bool grads)"),
    ggml_new_tensor_1d: f(base, `${T}ggml_new_tensor_1d(void *ctx, int type, int64_t ne0)`),
    ggml_new_tensor_2d: f(base, `${T}ggml_new_tensor_2d(void *ctx, int type, int64_t ne0, int64_t ne1)`),
    ggml_new_tensor_3d: f(base, `${T}ggml_new_tensor_3d(void *ctx, int type, int64_t ne0, int64_t ne1, int64_t ne2)`),
    ggml_set_param: f(base, "void ggml_set_param(void *t)"),
    ggml_set_name: f(base, `${T}ggml_set_name(void *t, const char *name)`),
    ggml_set_input: f(base, "void ggml_set_input(void *t)"),
    ggml_set_output: f(base, "void ggml_set_output(void *t)"),
    ggml_nbytes: f(base, "size_t ggml_nbytes(void *t)"),
    ggml_get_rows: f(base, `${T}ggml_get_rows(void *ctx, void *a, void *b)`),
    ggml_mul_mat: f(base, `${T}ggml_mul_mat(void *ctx, void *a, void *b)`),
    ggml_rms_norm: f(base, `${T}ggml_rms_norm(void *ctx, void *a, float eps)`),
    ggml_mul: f(base, `${T}ggml_mul(void *ctx, void *a, void *b)`),
    ggml_add: f(base, `${T}ggml_add(void *ctx, void *a, void *b)`),
    ggml_scale: f(base, `${T}ggml_scale(void *ctx, void *a, float s)`),
    ggml_reshape_2d: f(base, `${T}ggml_reshape_2d(void *ctx, void *a, int64_t ne0, int64_t ne1)`),
    ggml_reshape_3d: f(base, `${T}ggml_reshape_3d(void *ctx, void *a, int64_t ne0, int64_t ne1, int64_t ne2)`),
    ggml_permute: f(base, `${T}ggml_permute(void *ctx, void *a, int ax0, int ax1, int ax2, int ax3)`),
    ggml_cont: f(base, `${T}ggml_cont(void *ctx, void *a)`),
    ggml_cast: f(base, `${T}ggml_cast(void *ctx, void *a, int type)`),
    ggml_cont_2d: f(base, `${T}ggml_cont_2d(void *ctx, void *a, int64_t ne0, int64_t ne1)`),
    ggml_transpose: f(base, `${T}ggml_transpose(void *ctx, void *a)`),
    ggml_rope_ext: f(
      base,
      `${T}ggml_rope_ext(void *ctx, void *a, void *b, void *c, int n_dims, int mode, int n_ctx_orig, float freq_base, float freq_scale, float ext_factor, float attn_factor, float beta_fast, float beta_slow)`,
    ),
    ggml_soft_max_ext: f(base, `${T}ggml_soft_max_ext(void *ctx, void *a, void *mask, float scale, float max_bias)`),
    ggml_silu: f(base, `${T}ggml_silu(void *ctx, void *a)`),
    ggml_rms_norm_back: f(base, `${T}ggml_rms_norm_back(void *ctx, void *dy, void *x, float eps)`),
    ggml_rope_ext_back: f(
      base,
      `${T}ggml_rope_ext_back(void *ctx, void *dy, void *pos, void *c, int n_dims, int mode, int n_ctx_orig, float freq_base, float freq_scale, float ext_factor, float attn_factor, float beta_fast, float beta_slow)`,
    ),
    ggml_soft_max_ext_back: f(base, `${T}ggml_soft_max_ext_back(void *ctx, void *dy, void *y, float scale, float max_bias)`),
    ggml_silu_back: f(base, `${T}ggml_silu_back(void *ctx, void *dy, void *x)`),
    ggml_get_rows_back: f(base, `${T}ggml_get_rows_back(void *ctx, void *dy, void *rows, void *like)`),
    ggml_repeat_back: f(base, `${T}ggml_repeat_back(void *ctx, void *a, void *like)`),
    ggml_argmax: f(base, `${T}ggml_argmax(void *ctx, void *a)`),
    ggml_cross_entropy_loss: f(base, `${T}ggml_cross_entropy_loss(void *ctx, void *logits, void *labels)`),
    // Argument order as ggml.c's implementation and autograd use it (the header's comments name them differently).
    ggml_cross_entropy_loss_back: f(base, `${T}ggml_cross_entropy_loss_back(void *ctx, void *dloss, void *logits, void *labels)`),
    ggml_opt_step_adamw: f(base, `${T}ggml_opt_step_adamw(void *ctx, void *a, void *grad, void *m, void *v, void *params)`),
    ggml_opt_step_sgd: f(base, `${T}ggml_opt_step_sgd(void *ctx, void *a, void *grad, void *params)`),
    ggml_backend_buffer_clear: f(base, "void ggml_backend_buffer_clear(void *buffer, uint8_t value)"),
    ggml_backend_init_by_type: f(ggml, `${T}ggml_backend_init_by_type(int type, const char *params)`),
    ggml_backend_dev_by_type: f(ggml, `${T}ggml_backend_dev_by_type(int type)`),
    ggml_backend_dev_backend_reg: f(base, `${T}ggml_backend_dev_backend_reg(void *dev)`),
    ggml_backend_reg_get_proc_address: f(base, `${T}ggml_backend_reg_get_proc_address(void *reg, const char *name)`),
    ggml_backend_free: f(base, "void ggml_backend_free(void *backend)"),
    ggml_backend_alloc_ctx_tensors: f(base, `${T}ggml_backend_alloc_ctx_tensors(void *ctx, void *backend)`),
    ggml_backend_buffer_free: f(base, "void ggml_backend_buffer_free(void *buffer)"),
    ggml_backend_tensor_set: f(base, "void ggml_backend_tensor_set(void *t, const void *data, size_t offset, size_t size)"),
    ggml_backend_tensor_get: f(base, "void ggml_backend_tensor_get(void *t, void *data, size_t offset, size_t size)"),
    ggml_backend_sched_new: f(
      base,
      `${T}ggml_backend_sched_new(void **backends, void **bufts, int n_backends, size_t graph_size, bool parallel, bool op_offload)`,
    ),
    ggml_backend_sched_free: f(base, "void ggml_backend_sched_free(void *sched)"),
    ggml_new_graph_custom: f(base, `${T}ggml_new_graph_custom(void *ctx, size_t size, bool grads)`),
    ggml_build_forward_expand: f(base, "void ggml_build_forward_expand(void *graph, void *t)"),
    ggml_backend_sched_alloc_graph: f(base, "bool ggml_backend_sched_alloc_graph(void *sched, void *graph)"),
    ggml_backend_sched_graph_compute: f(base, "int ggml_backend_sched_graph_compute(void *sched, void *graph)"),
    ggml_backend_sched_reset: f(base, "void ggml_backend_sched_reset(void *sched)"),
    ggml_opt_default_params: f(base, "ggml_opt_params ggml_opt_default_params(void *sched, int loss_type)"),
    ggml_opt_init: f(base, `${T}ggml_opt_init(ggml_opt_params params)`),
    ggml_opt_free: f(base, "void ggml_opt_free(void *opt)"),
    ggml_opt_alloc: f(base, "void ggml_opt_alloc(void *opt, bool backward)"),
    ggml_opt_eval: f(base, "void ggml_opt_eval(void *opt, void *result)"),
    ggml_opt_loss: f(base, `${T}ggml_opt_loss(void *opt)`),
    ggml_opt_labels: f(base, `${T}ggml_opt_labels(void *opt)`),
    ggml_opt_outputs: f(base, `${T}ggml_opt_outputs(void *opt)`),
    ggml_opt_reset: f(base, "void ggml_opt_reset(void *opt, bool optimizer)"),
  };
  const setThreadsProto = koffi.proto("void freshrec_ggml_set_n_threads(void *backend, int n_threads)");
  const setThreads = (backend: NativePointer, threads: number) => {
    const dev = fn.ggml_backend_dev_by_type(GGML.DEVICE_CPU);
    const reg = fn.ggml_backend_dev_backend_reg(dev);
    const ptr = fn.ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
    if (!ptr) throw new FreshrecError("ENGINE", "the CPU backend does not export ggml_backend_set_n_threads");
    koffi.call(ptr, setThreadsProto, backend, threads);
  };
  cached = {
    fn,
    constantOptimizerParams: base.symbol("ggml_opt_get_constant_optimizer_params", "char"),
    cpuBackend(threads) {
      const backend = fn.ggml_backend_init_by_type(GGML.DEVICE_CPU, null);
      if (!backend) throw new FreshrecError("ENGINE", `ggml could not create a CPU backend: ${llama.recentLog() || "no detail"}`);
      setThreads(backend, threads);
      return backend;
    },
    setThreads,
  };
  return cached;
}
