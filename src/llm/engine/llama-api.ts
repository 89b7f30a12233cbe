/**
 * The llama.cpp C API through koffi, bound to the libraries that ship with the exactly pinned node-llama-cpp
 * (3.21.1, llama.cpp release v0.4.0). The struct layouts below belong to that version only; `assertPinnedEngine`
 * refuses any other version before a single struct crosses the boundary, and test/llm/engine-guards.test.ts checks
 * the declared sizes against the sizes measured with a C sizeof program (docs/engine.md, "Struct layouts").
 *
 * @example
 * const api = loadLlamaApi();
 * const model = loadModel(api, "/tmp/m.gguf");
 */
import koffi from "koffi";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { FreshrecError } from "../../domain/errors.js";

/** The only node-llama-cpp version whose llama.cpp struct layouts this module declares. */
export const PINNED_NODE_LLAMA_CPP_VERSION = "3.21.1";

const require = createRequire(import.meta.url);

/** Folder of node-llama-cpp's package.json, found through Node's resolver so workspaces and hoisting work. */
function nodeLlamaCppDir(): string {
  // The package's "exports" hide package.json from require.resolve, so walk Node's own search path instead.
  for (const base of require.resolve.paths("node-llama-cpp") ?? []) {
    const dir = join(base, "node-llama-cpp");
    if (existsSync(join(dir, "package.json"))) return dir;
  }
  throw new FreshrecError("ENGINE", "node-llama-cpp is not installed (npm i -E node-llama-cpp@3.21.1)");
}

/** Version of the installed node-llama-cpp, read from its package.json. */
export function installedNodeLlamaCppVersion(): string {
  const pkg = JSON.parse(readFileSync(join(nodeLlamaCppDir(), "package.json"), "utf8")) as { version?: string };
  return pkg.version ?? "unknown";
}

/**
 * Refuses to run against any node-llama-cpp other than the pinned one: a different llama.cpp has different
 * struct layouts, and a wrong layout corrupts memory silently instead of failing.
 */
export function assertPinnedEngine(version: string = installedNodeLlamaCppVersion()): void {
  if (version !== PINNED_NODE_LLAMA_CPP_VERSION) {
    throw new FreshrecError(
      "ENGINE",
      `freshrec's engine needs node-llama-cpp ${PINNED_NODE_LLAMA_CPP_VERSION} exactly (its llama.cpp struct layouts are ` +
        `compiled into freshrec), but ${version} is installed; run: npm i -E node-llama-cpp@${PINNED_NODE_LLAMA_CPP_VERSION}`,
    );
  }
}

/** Folder with the prebuilt llama.cpp shared libraries for this platform. */
export function llamaBinsDir(): string {
  const platformDir = `${process.platform}-${process.arch}`;
  const candidates = [join(nodeLlamaCppDir(), "node_modules"), ...(require.resolve.paths("node-llama-cpp") ?? [])];
  const pkgDir = candidates.map((base) => join(base, "@node-llama-cpp", platformDir)).find((d) => existsSync(d));
  if (!pkgDir) {
    throw new FreshrecError("ENGINE", `no prebuilt llama.cpp for ${platformDir} (@node-llama-cpp/${platformDir} missing)`);
  }
  const bins = join(pkgDir, "bins", platformDir);
  if (!existsSync(join(bins, "libllama.v0.4.0.so"))) {
    throw new FreshrecError("ENGINE", `llama.cpp v0.4.0 libraries not found in ${bins}`);
  }
  return bins;
}

// ---- struct declarations (llama.cpp v0.4.0) ----

export const llamaModelParams = koffi.struct("llama_model_params", {
  devices: "void *",
  tensor_buft_overrides: "void *",
  n_gpu_layers: "int32_t",
  split_mode: "int",
  load_mode: "int",
  lazy_mode: "int",
  main_gpu: "int32_t",
  tensor_split: "void *",
  progress_callback: "void *",
  progress_callback_user_data: "void *",
  kv_overrides: "void *",
  vocab_only: "bool",
  check_tensors: "bool",
  use_extra_bufts: "bool",
  no_host: "bool",
  no_alloc: "bool",
  load_mtp: "bool",
});

export const llamaContextParams = koffi.struct("llama_context_params", {
  n_ctx: "uint32_t",
  n_batch: "uint32_t",
  n_ubatch: "uint32_t",
  n_seq_max: "uint32_t",
  n_rs_seq: "uint32_t",
  n_outputs_max: "uint32_t",
  n_outputs_max_per_seq: "uint32_t",
  n_threads: "int32_t",
  n_threads_batch: "int32_t",
  ctx_type: "int",
  rope_scaling_type: "int",
  pooling_type: "int",
  attention_type: "int",
  flash_attn_type: "int",
  rope_freq_base: "float",
  rope_freq_scale: "float",
  yarn_ext_factor: "float",
  yarn_attn_factor: "float",
  yarn_beta_fast: "float",
  yarn_beta_slow: "float",
  yarn_orig_ctx: "uint32_t",
  defrag_thold: "float",
  cb_eval: "void *",
  cb_eval_user_data: "void *",
  type_k: "int",
  type_v: "int",
  abort_callback: "void *",
  abort_callback_data: "void *",
  embeddings: "bool",
  offload_kqv: "bool",
  no_perf: "bool",
  op_offload: "bool",
  swa_full: "bool",
  kv_unified: "bool",
  samplers: "void *",
  n_samplers: "size_t",
  ctx_other: "void *",
});

export const ggmlOptOptimizerParams = koffi.struct("ggml_opt_optimizer_params", {
  adamw_alpha: "float",
  adamw_beta1: "float",
  adamw_beta2: "float",
  adamw_eps: "float",
  adamw_wd: "float",
  sgd_alpha: "float",
  sgd_wd: "float",
});

export const llamaBatch = koffi.struct("llama_batch", {
  n_tokens: "int32_t",
  token: "void *",
  embd: "void *",
  pos: "void *",
  n_seq_id: "void *",
  seq_id: "void *",
  logits: "void *",
});

/** Sizes measured with a C sizeof program against llama.cpp v0.4.0 headers (docs/engine.md, "Struct layouts"). */
export const EXPECTED_STRUCT_SIZES = {
  llama_model_params: 80,
  llama_context_params: 160,
  ggml_opt_optimizer_params: 28,
  llama_batch: 56,
} as const;

export const DECLARED_STRUCTS = {
  llama_model_params: llamaModelParams,
  llama_context_params: llamaContextParams,
  ggml_opt_optimizer_params: ggmlOptOptimizerParams,
  llama_batch: llamaBatch,
} as const;

const logCallbackProto = koffi.proto("void freshrec_ggml_log_cb(int level, const char *text, void *user_data)");

/** Opaque native handles; koffi hands them out as externals. */
export type NativePointer = unknown;

export interface LlamaBatchValue {
  n_tokens: number;
  token: NativePointer;
  embd: NativePointer;
  pos: NativePointer;
  n_seq_id: NativePointer;
  seq_id: NativePointer;
  logits: NativePointer;
}

type Fn = ((...args: any[]) => any) & { async: (...args: any[]) => void };

export interface LlamaApi {
  readonly binsDir: string;
  readonly fn: Record<
    | "llama_backend_init"
    | "ggml_backend_load_all_from_path"
    | "llama_log_set"
    | "llama_model_default_params"
    | "llama_context_default_params"
    | "llama_model_load_from_file"
    | "llama_model_free"
    | "llama_init_from_model"
    | "llama_free"
    | "llama_decode"
    | "llama_batch_init"
    | "llama_batch_free"
    | "llama_get_logits_ith"
    | "llama_get_memory"
    | "llama_memory_clear"
    | "llama_model_get_vocab"
    | "llama_vocab_n_tokens"
    | "llama_model_n_embd",
    Fn
  >;
  /** Last lines llama.cpp logged, kept so a refusal can say what llama.cpp complained about. */
  recentLog(): string;
}

let cached: LlamaApi | undefined;

/**
 * Loads the llama.cpp libraries once per process, silences their logging (kept in a small ring for error
 * messages) and initialises the backends.
 */
export function loadLlamaApi(): LlamaApi {
  if (cached) return cached;
  assertPinnedEngine();
  const binsDir = llamaBinsDir();
  // Dependency order: base, then ggml (registers backends), then llama; each resolves its DT_NEEDED against
  // the libraries already loaded.
  koffi.load(join(binsDir, "libggml-base.so"));
  const ggml = koffi.load(join(binsDir, "libggml.v0.4.0.so"));
  const llama = koffi.load(join(binsDir, "libllama.v0.4.0.so"));

  const f = (lib: koffi.IKoffiLib, decl: string) => lib.func(decl) as Fn;
  const fn: LlamaApi["fn"] = {
    ggml_backend_load_all_from_path: f(ggml, "void ggml_backend_load_all_from_path(const char *dir)"),
    llama_backend_init: f(llama, "void llama_backend_init(void)"),
    llama_log_set: f(llama, "void llama_log_set(freshrec_ggml_log_cb *cb, void *user_data)"),
    llama_model_default_params: f(llama, "llama_model_params llama_model_default_params(void)"),
    llama_context_default_params: f(llama, "llama_context_params llama_context_default_params(void)"),
    llama_model_load_from_file: f(llama, "void *llama_model_load_from_file(const char *path, llama_model_params params)"),
    llama_model_free: f(llama, "void llama_model_free(void *model)"),
    llama_init_from_model: f(llama, "void *llama_init_from_model(void *model, llama_context_params params)"),
    llama_free: f(llama, "void llama_free(void *ctx)"),
    llama_decode: f(llama, "int32_t llama_decode(void *ctx, llama_batch batch)"),
    llama_batch_init: f(llama, "llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max)"),
    llama_batch_free: f(llama, "void llama_batch_free(llama_batch batch)"),
    llama_get_logits_ith: f(llama, "float *llama_get_logits_ith(void *ctx, int32_t i)"),
    llama_get_memory: f(llama, "void *llama_get_memory(void *ctx)"),
    llama_memory_clear: f(llama, "void llama_memory_clear(void *mem, bool data)"),
    llama_model_get_vocab: f(llama, "void *llama_model_get_vocab(void *model)"),
    llama_vocab_n_tokens: f(llama, "int32_t llama_vocab_n_tokens(void *vocab)"),
    llama_model_n_embd: f(llama, "int32_t llama_model_n_embd(void *model)"),
  };

  const ring: string[] = [];
  // llama.cpp logs model loading and graph details at info level on every context; keep the last lines only so
  // an error can quote them, and never print them (stdout carries --json output).
  const logCallback = koffi.register((_level: number, text: string) => {
    ring.push(text);
    if (ring.length > 40) ring.shift();
  }, koffi.pointer(logCallbackProto));
  fn.llama_log_set(logCallback, null);
  fn.ggml_backend_load_all_from_path(binsDir);
  fn.llama_backend_init();

  cached = {
    binsDir,
    fn,
    recentLog() {
      return ring.join("").trim().split("\n").slice(-8).join("\n");
    },
  };
  return cached;
}

/** Default model params with the weights mmapped (llama.cpp only reads them: training is engine v2's, on ggml). */
export function modelParams(api: LlamaApi): Record<string, unknown> {
  const p = api.fn.llama_model_default_params() as Record<string, unknown>;
  p.n_gpu_layers = 0;
  p.load_mode = 1;
  p.use_extra_bufts = false;
  return p;
}

export interface ContextShape {
  readonly nCtx: number;
  readonly nBatch: number;
  readonly nUbatch: number;
  readonly nSeqMax: number;
  readonly threads: number;
  /** One KV buffer shared by all sequences (true) or one per sequence (false). */
  readonly kvUnified: boolean;
}

export function contextParams(api: LlamaApi, shape: ContextShape): Record<string, unknown> {
  const p = api.fn.llama_context_default_params() as Record<string, unknown>;
  p.n_ctx = shape.nCtx;
  p.n_batch = shape.nBatch;
  p.n_ubatch = shape.nUbatch;
  p.n_seq_max = shape.nSeqMax;
  p.n_outputs_max_per_seq = 1;
  p.n_threads = shape.threads;
  p.n_threads_batch = shape.threads;
  p.flash_attn_type = 0; // disabled, so results stay identical across modes
  p.type_k = 0; // F32 KV cache: the logits match engine v2's float32 forward pass (test/llm/ggml-trainer.test.ts)
  p.type_v = 0;
  p.no_perf = true;
  p.kv_unified = shape.kvUnified;
  p.op_offload = false;
  p.swa_full = true;
  return p;
}

/** Loads a model or throws an ENGINE error quoting llama.cpp's own complaint. */
export function loadModel(api: LlamaApi, path: string): NativePointer {
  const model = api.fn.llama_model_load_from_file(path, modelParams(api));
  if (!model) {
    throw new FreshrecError("ENGINE", `llama.cpp could not load the model ${path}: ${api.recentLog() || "no detail"}`);
  }
  return model;
}

export function createContext(api: LlamaApi, model: NativePointer, shape: ContextShape): NativePointer {
  const ctx = api.fn.llama_init_from_model(model, contextParams(api, shape));
  if (!ctx) {
    throw new FreshrecError("ENGINE", `llama.cpp could not create a context: ${api.recentLog() || "no detail"}`);
  }
  return ctx;
}

/** Views over the native arrays of a `llama_batch` from `llama_batch_init(capacity, 0, seqMax)`. */
export interface BatchViews {
  readonly value: LlamaBatchValue;
  readonly capacity: number;
  readonly token: Int32Array;
  readonly pos: Int32Array;
  readonly nSeqId: Int32Array;
  readonly seqId: Int32Array[];
  readonly logits: Int8Array;
}

export function allocBatch(api: LlamaApi, capacity: number, seqMax = 1): BatchViews {
  const value = api.fn.llama_batch_init(capacity, 0, seqMax) as LlamaBatchValue;
  const seqPtrs = koffi.decode(value.seq_id, "void *", capacity) as NativePointer[];
  return {
    value,
    capacity,
    token: new Int32Array(koffi.view(value.token, capacity * 4)),
    pos: new Int32Array(koffi.view(value.pos, capacity * 4)),
    nSeqId: new Int32Array(koffi.view(value.n_seq_id, capacity * 4)),
    seqId: seqPtrs.map((p) => new Int32Array(koffi.view(p, 4 * seqMax))),
    logits: new Int8Array(koffi.view(value.logits, capacity)),
  };
}

export function freeBatch(api: LlamaApi, batch: BatchViews): void {
  api.fn.llama_batch_free(batch.value);
}

/** A float32 view over `count` floats at a native address. */
export function floatView(ptr: NativePointer, count: number): Float32Array {
  return new Float32Array(koffi.view(ptr, count * 4));
}

export function allocOptimizerParams(): { ptr: NativePointer; set(p: Record<string, number>): void } {
  const ptr = koffi.alloc(ggmlOptOptimizerParams, 1);
  return {
    ptr,
    set(p) {
      koffi.encode(ptr, ggmlOptOptimizerParams, p);
    },
  };
}
