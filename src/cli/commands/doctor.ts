/**
 * `freshrec doctor`: checks the configured language-model backend end to end, in the order a failure would show up
 * (configuration, reachability, the model loading, the clusters, one constrained answer, scoring), and says for each
 * failed step what is wrong and what to change. Exit code 0 when every check passes, 1 otherwise.
 */
import type { Command } from "commander";
import { existsSync } from "node:fs";
import { EventStore } from "../../data/event-store.js";
import type { Clock } from "../../domain/clock.js";
import type { Cluster } from "../../domain/types.js";
import { type LlmBackendSettings, languageModelBackend, openAiClient, remoteError } from "../../llm/backends/index.js";
import type { LanguageModel } from "../../llm/contracts.js";
import { ModelRegistry } from "../../llm/registry.js";
import { action } from "../run.js";

export interface DoctorCheck {
  readonly name: string;
  readonly ok: boolean;
  /** What was found, or what is wrong and how to fix it. */
  readonly detail: string;
  /** Passed, but something deserves attention. */
  readonly warning?: boolean;
}

export interface DoctorReport {
  readonly backend: string;
  readonly passed: boolean;
  readonly checks: readonly DoctorCheck[];
}

export interface DoctorInput {
  readonly settings: LlmBackendSettings;
  readonly workspace: string;
  /** The workspace's live model file, if any (the embedded backend needs one). */
  readonly liveModel: () => string | null;
  /** The clusters answers come from (the event store's); throws with a reason when there are none. */
  readonly clusters: () => Promise<Cluster[]>;
  readonly clock?: Clock;
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** Runs the checks; never throws for a backend problem (each becomes a failed check). */
export async function diagnoseBackend(input: DoctorInput): Promise<DoctorReport> {
  const { settings } = input;
  const checks: DoctorCheck[] = [];
  const pass = (name: string, detail: string, warning = false) => checks.push({ name, ok: true, detail, ...(warning ? { warning } : {}) });
  const fail = (name: string, detail: string) => {
    checks.push({ name, ok: false, detail });
    return { backend: settings.backend, passed: false, checks };
  };

  let clusters: Cluster[] = [];
  let modelPath: string | null = null;
  if (settings.backend === "embedded") {
    modelPath = input.liveModel();
    if (modelPath === null) return fail("model", `no live model in ${input.workspace}: run freshrec pretrain (or freshrec demo) first`);
    if (!existsSync(modelPath)) return fail("model", `the live model's file ${modelPath} is missing`);
    pass("model", modelPath);
  } else if (settings.backend === "gguf") {
    const g = settings.gguf;
    if (g.modelPath === null) return fail("model", 'llm.gguf.modelPath is not set: put the path of a GGUF file there (e.g. "models/qwen2.5-0.5b-instruct-q8_0.gguf")');
    if (!existsSync(g.modelPath)) return fail("model", `llm.gguf.modelPath: ${g.modelPath} does not exist`);
    for (const a of g.loraAdapters) if (!existsSync(a.path)) return fail("model", `llm.gguf.loraAdapters: ${a.path} does not exist`);
    pass("model", `${g.modelPath}${g.loraAdapters.length ? ` + ${g.loraAdapters.length} LoRA adapter(s)` : ""}`);
  } else {
    const o = settings.openai;
    if (o.model === null) return fail("model", "llm.openai.model is not set: put the model name the server serves there (GET <baseURL>/models lists them)");
    const key = process.env[o.apiKeyEnv];
    const hosted = /(^|\.)openai\.com$/.test(new URL(o.baseURL).hostname);
    if (!key) {
      if (hosted) return fail("api key", `the environment variable ${o.apiKeyEnv} (llm.openai.apiKeyEnv) is not set; ${o.baseURL} needs a key`);
      pass("api key", `${o.apiKeyEnv} not set (fine for a local server)`, true);
    } else pass("api key", `${o.apiKeyEnv} is set`);
    const client = openAiClient({ baseURL: o.baseURL, apiKeyEnv: o.apiKeyEnv, maxRetries: 0, timeoutMs: Math.min(o.timeoutMs, 15_000) });
    let served: string[];
    try {
      served = (await client.models.list()).data.map((m) => m.id);
    } catch (error) {
      return fail("server", `${message(remoteError(error, o.baseURL, "GET /models"))} (llm.openai.baseURL)`);
    }
    pass("server", `${o.baseURL} answers; ${served.length} model(s) listed`);
    if (served.includes(o.model)) pass("model", `${o.model} is served`);
    else pass("model", `${o.model} is not among the models ${o.baseURL} lists (${served.slice(0, 5).join(", ") || "none"}${served.length > 5 ? ", ..." : ""}); some servers do not list every model they serve`, true);
  }

  if (settings.backend !== "embedded") {
    try {
      clusters = await input.clusters();
    } catch (error) {
      return fail("clusters", message(error));
    }
    if (clusters.length < 3) return fail("clusters", `${clusters.length} cluster(s) in the event store; a prediction needs at least 3 (run freshrec ingest, synth or demo)`);
    pass("clusters", `${clusters.length} clusters`);
  }

  // The doctor asks the server itself: a cached answer would prove nothing.
  const backend = languageModelBackend(settings.backend === "openai" ? { ...settings, openai: { ...settings.openai, cache: false } } : settings, {
    clusters,
    workspace: input.workspace,
    clock: input.clock,
  });
  let model: LanguageModel;
  try {
    model = await backend.openModel(modelPath);
  } catch (error) {
    return fail("load", message(error));
  }
  try {
    pass("load", `${backend.description}; ${model.info.clusters.length} clusters`);
    const ids = model.info.clusters.map((c) => c.id);
    const prompt = { history: { c1: ids[0], c2: ids[1] } };
    try {
      const answer = await model.generate(prompt);
      if (answer.cluster === null) {
        const hint = settings.backend === "openai" && settings.openai.answer === "text" ? " (llm.openai.answer is text: try json_schema or guided_choice)" : "";
        return fail("answer", `the answer ${JSON.stringify(answer.text)} names no cluster exactly${hint}`);
      }
      pass("answer", `${JSON.stringify(answer.text)} -> cluster ${answer.cluster}`);
    } catch (error) {
      return fail("answer", message(error));
    }
    try {
      const [ranked] = await model.score([prompt], 5);
      if (ranked.length <= 1 && ids.length > 3) pass("scoring", "the server returned no usable logprobs: rankings hold only the answer (top-1)", true);
      else pass("scoring", `top ${ranked.length}: ${ranked.map((r) => `${r.cluster} ${r.score.toFixed(3)}`).join(", ")}`);
    } catch (error) {
      return fail("scoring", message(error));
    }
  } finally {
    await model.close();
  }
  return { backend: settings.backend, passed: true, checks };
}

export function registerDoctor(program: Command): void {
  program
    .command("doctor")
    .description("check the configured language-model backend end to end (reachable, model loads, one constrained answer)")
    .addHelpText("after", "\nExamples:\n  freshrec doctor\n  freshrec --config vllm.json --json doctor")
    .action(
      action(async (ctx) => {
        const report = await diagnoseBackend({
          settings: ctx.config.llm,
          workspace: ctx.paths.root,
          clock: ctx.clock,
          liveModel: () => {
            if (!existsSync(ctx.paths.registry)) return null;
            const registry = new ModelRegistry(ctx.paths.root, ctx.clock);
            try {
              return registry.live()?.filePath ?? null;
            } finally {
              registry.close();
            }
          },
          clusters: async () => {
            if (!existsSync(ctx.paths.events)) throw new Error(`no event store at ${ctx.paths.events}: run freshrec ingest, synth or demo first (the clusters come from it)`);
            let store: EventStore;
            try {
              store = await EventStore.open(ctx.paths.events);
            } catch (error) {
              throw new Error(`cannot open ${ctx.paths.events} (is freshrec serve holding it?): ${message(error)}`);
            }
            try {
              return await store.clusters();
            } finally {
              store.close();
            }
          },
        });
        const text = [
          `llm backend: ${report.backend}`,
          ...report.checks.map((c) => `  ${c.ok ? (c.warning ? "!" : "ok") : "FAIL"}  ${c.name}: ${c.detail}`),
          report.passed ? "all checks passed" : "a check failed: fix it and run freshrec doctor again",
        ].join("\n");
        return { json: report, text, exitCode: report.passed ? 0 : 1 };
      }),
    );
}
