/**
 * `freshrec doctor`: checks the workspace's stores (each file read through, so a damaged one shows here rather than
 * halfway through a job), then the configured language-model backend end to end, in the order a failure would show up
 * (configuration, reachability, the model loading, the clusters, one constrained answer, scoring), and says for each
 * failed step what is wrong and what to change. Exit code 0 when every check passes, 1 otherwise.
 */
import Database from "better-sqlite3";
import type { Command } from "commander";
import { existsSync, statSync } from "node:fs";
import { basename } from "node:path";
import pg from "pg";
import { EventStore, EventStoreBusyError } from "../../data/event-store.js";
import type { EventStoreReading } from "../../data/event-store-share.js";
import { PostgresEventStore, redactedUrl } from "../../data/postgres-event-store.js";
import type { Clock } from "../../domain/clock.js";
import type { Cluster } from "../../domain/types.js";
import { type LlmBackendSettings, MissingApiKeyError, PostgresResponseCache, languageModelBackend, openAiClient, remoteError, responseCachePath } from "../../llm/backends/index.js";
import type { LanguageModel } from "../../llm/contracts.js";
import { PostgresModelRegistry } from "../../llm/postgres-registry.js";
import { ModelRegistry } from "../../llm/registry.js";
import { PostgresTableStore } from "../../tables/index.js";
import { PostgresScheduleStore, scheduleStorePath } from "../../update/schedule/index.js";
import { action } from "../run.js";
import type { WorkspacePaths } from "../workspace.js";

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

const RESTORE = "restore it from a backup, or move it aside (freshrec starts an empty one)";

/**
 * Checks every store file the workspace has (one check each, named by the file; a store not created yet has none):
 * SQLite files with PRAGMA quick_check, the DuckDB event store read through (`EventStore.verify`). Files are opened
 * read-only, so the doctor never repairs, creates or migrates anything it looks at. The event store comes from
 * `openEvents`, the CLI's reader (`openEventStoreForReading`: the file read-only, or read through `freshrec serve` or a
 * `schedule run` worker while one holds it, ../../data/event-store-share.ts).
 */
export async function diagnoseStores(paths: WorkspacePaths, openEvents: () => Promise<EventStoreReading>): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  if (existsSync(paths.events)) checks.push(await checkEventStore(paths.events, openEvents));
  for (const file of [paths.tables, paths.registry, scheduleStorePath(paths.root), responseCachePath(paths.root)]) {
    if (existsSync(file)) checks.push(checkSqliteFile(file));
  }
  return checks;
}

async function checkEventStore(file: string, openEvents: () => Promise<EventStoreReading>): Promise<DoctorCheck> {
  const name = basename(file);
  if (statSync(file).size === 0) return { name, ok: false, detail: `${file} is empty (0 bytes): it was truncated or replaced; ${RESTORE}` };
  let reading: EventStoreReading;
  try {
    reading = await openEvents();
  } catch (error) {
    // A process that holds the file without sharing it (an ingest running): no damage, only a check that cannot run now.
    if (error instanceof EventStoreBusyError) return { name, ok: true, warning: true, detail: `${file} is held by another process (PID ${error.holderPid}) that does not share it for reading: not checked (run freshrec doctor again when it has ended)` };
    return { name, ok: false, detail: `${message(error)}; ${RESTORE}` };
  }
  const { store, heldBy, holder } = reading;
  const through = heldBy === null ? "" : ` through ${holder ?? "the process"} (PID ${heldBy}), which holds it`;
  try {
    const rows = await EventStore.verify(store);
    return { name, ok: true, detail: `${file}: every table read back${through} (${rows.events ?? 0} events)` };
  } catch (error) {
    return { name, ok: false, detail: `${message(error)}${through ? ` (read${through})` : ""}; ${RESTORE}` };
  } finally {
    await store.close();
  }
}

/**
 * Checks a deployment's PostgreSQL database (`store.url`), one check per store in it: reachable with its events, the
 * live table read back whole, the live model's file (under `<workspace>/models`) against its registered sha256, the
 * schedule's jobs (paused or failing ones named) and which process drives it, the response cache read. A store
 * whose tables do not exist yet has no check, and none is created: the doctor only reads. Never throws.
 * @returns the checks, and the live model's file and the clusters for the backend checks (null when unknown).
 */
export async function diagnosePostgresStores(
  url: string,
  workspace: string,
  clock: Clock,
): Promise<{ checks: DoctorCheck[]; liveModel: string | null; clusters: Cluster[] | null }> {
  const where = redactedUrl(url);
  const checks: DoctorCheck[] = [];
  let liveModel: string | null = null;
  let clusters: Cluster[] | null = null;
  const present = new Set<string>();
  const probe = new pg.Client({ connectionString: url });
  try {
    await probe.connect();
    const found = await probe.query<{ name: string }>(
      "SELECT c.relname AS name FROM pg_class c WHERE c.relkind = 'r' AND pg_table_is_visible(c.oid) AND c.relname = ANY($1::TEXT[])",
      [["events", "table_versions", "models", "schedule_jobs", "llm_responses"]],
    );
    for (const r of found.rows) present.add(r.name);
  } catch (error) {
    checks.push({ name: "database", ok: false, detail: `cannot reach ${where}: ${message(error)}; check store.url and that the server accepts connections from here` });
    return { checks, liveModel, clusters };
  } finally {
    await probe.end().catch(() => {});
  }
  if (!present.has("events")) checks.push({ name: "database", ok: true, warning: true, detail: `${where}: reachable, no events yet (run freshrec ingest or synth)` });
  else {
    try {
      const events = await PostgresEventStore.open(url);
      try {
        const counts = await events.counts();
        clusters = await events.clusters();
        checks.push({ name: "database", ok: true, detail: `${where}: reachable, ${counts.events} events, ${counts.items} items, ${counts.clusters} clusters` });
      } finally {
        await events.close();
      }
    } catch (error) {
      checks.push({ name: "database", ok: false, detail: `${where}: the event store cannot be read (${message(error)})` });
    }
  }
  if (present.has("table_versions")) {
    try {
      // No recovery of stale builds: the doctor only reads.
      const tables = await PostgresTableStore.open(url, clock, { recoverOnOpen: false });
      try {
        const all = await tables.list();
        const live = await tables.live();
        const unfinished = all.filter((t) => t.status === "building" || t.status === "failed").length;
        if (!live) checks.push({ name: "tables", ok: true, warning: true, detail: `${where}: ${all.length} table versions, none live yet` });
        else {
          const packed = await tables.packed(live.version);
          if (packed.c1.length !== live.rows) {
            checks.push({ name: "tables", ok: false, detail: `${where}: live table ${live.version} records ${live.rows} rows but ${packed.c1.length} read back; publish another table (freshrec tables publish) or roll back` });
          } else {
            checks.push({ name: "tables", ok: true, detail: `${where}: live ${live.version} read back whole (${live.rows} rows), ${all.length} versions${unfinished ? `, ${unfinished} building or failed` : ""}` });
          }
        }
      } finally {
        await tables.close();
      }
    } catch (error) {
      checks.push({ name: "tables", ok: false, detail: `${where}: the table store cannot be read (${message(error)})` });
    }
  }
  if (present.has("models")) {
    try {
      const registry = await PostgresModelRegistry.open(url, workspace, clock);
      try {
        const live = await registry.live();
        if (!live) checks.push({ name: "registry", ok: true, warning: true, detail: `${where}: no live model yet (run freshrec pretrain)` });
        else {
          liveModel = await registry.modelFile(live);
          checks.push({ name: "registry", ok: true, detail: `${where}: live ${live.version}, its file ${liveModel} holds what was registered (sha256)` });
        }
      } finally {
        await registry.close();
      }
    } catch (error) {
      checks.push({ name: "registry", ok: false, detail: message(error) });
    }
  }
  if (present.has("schedule_jobs")) {
    try {
      const schedule = await PostgresScheduleStore.open(url);
      try {
        const [jobs, driver] = await Promise.all([schedule.jobStates(), schedule.driver()]);
        const paused = jobs.filter((j) => j.paused);
        const failing = jobs.filter((j) => j.consecutiveFailures > 0);
        const by = driver ? `driven by host ${driver.host} pid ${driver.pid}` : "no process drives it (start freshrec schedule run on one worker)";
        const issues = [
          ...paused.map((j) => `${j.job} paused${j.pauseReason ? ` (${j.pauseReason})` : ""}: freshrec schedule resume ${j.job}`),
          ...failing.map((j) => `${j.job} failed its last ${j.consecutiveFailures} run(s): freshrec schedule status`),
        ];
        checks.push({ name: "schedule", ok: true, ...(issues.length || !driver ? { warning: true } : {}), detail: `${where}: ${jobs.length} jobs, ${by}${issues.length ? `; ${issues.join("; ")}` : ""}` });
      } finally {
        await schedule.close();
      }
    } catch (error) {
      checks.push({ name: "schedule", ok: false, detail: `${where}: the schedule store cannot be read (${message(error)})` });
    }
  }
  if (present.has("llm_responses")) {
    try {
      // Its two tables are created together, so opening it finds them and creates nothing.
      const cache = await PostgresResponseCache.open(url, clock);
      try {
        checks.push({ name: "response cache", ok: true, detail: `${where}: ${await cache.size()} answers of the openai backend` });
      } finally {
        await cache.close();
      }
    } catch (error) {
      checks.push({ name: "response cache", ok: false, detail: `${where}: the response cache cannot be read (${message(error)})` });
    }
  }
  return { checks, liveModel, clusters };
}

// Not openStoreFile (src/data/store-file.ts): a check must neither create nor migrate the file it looks at, and it
// reports what it finds (quick_check) instead of throwing.
function checkSqliteFile(file: string): DoctorCheck {
  const name = basename(file);
  // SQLite reads an empty file as a new, empty database (quick_check says ok); freshrec never leaves one.
  if (statSync(file).size === 0) return { name, ok: false, detail: `${file} is empty (0 bytes): it was truncated or replaced; ${RESTORE}` };
  let db: Database.Database | null = null;
  try {
    db = new Database(file, { readonly: true, fileMustExist: true, timeout: 5000 });
    const found = (db.pragma("quick_check(10)") as { quick_check: string }[]).map((r) => r.quick_check);
    if (found.length === 1 && found[0] === "ok") return { name, ok: true, detail: `${file}: quick_check ok` };
    // One row may hold several lines; the first few say enough, the header line says nothing.
    const lines = found.flatMap((f) => f.split("\n")).filter((l) => l.trim() !== "" && !l.startsWith("*** in database"));
    const shown = lines.slice(0, 4).join("; ") + (lines.length > 4 ? `; and ${lines.length - 4} more` : "");
    return { name, ok: false, detail: `${file} is damaged (PRAGMA quick_check: ${shown}); ${RESTORE}` };
  } catch (error) {
    return { name, ok: false, detail: `${file} cannot be read as a SQLite database (${message(error)}); ${RESTORE}` };
  } finally {
    db?.close();
  }
}

/** "ranking echo (auto; exact): " for a model that says how it ranks (the openai and gguf backends), else "". */
function rankingOf(model: LanguageModel): string {
  const ranking = (model.info as { ranking?: { method?: unknown; configured?: unknown; exact?: unknown } }).ranking;
  if (!ranking || typeof ranking.method !== "string") return "";
  const auto = ranking.configured === "auto" ? "auto; " : "";
  return `ranking ${ranking.method} (${auto}${ranking.exact === true ? "exact" : "approximate"}): `;
}

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
    try {
      modelPath = input.liveModel();
    } catch (error) {
      return fail("model", `cannot read the live model from the registry: ${message(error)}`);
    }
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
    // The backend's own rule (resolveApiKey): a named variable must be set, null declares a keyless server (refused
    // for OpenAI's API). Checked here so a missing key is a failed check naming the variable, not a crash.
    const connection = { baseURL: o.baseURL, apiKeyEnv: o.apiKeyEnv, maxRetries: 0, timeoutMs: Math.min(o.timeoutMs, 15_000) };
    let client: ReturnType<typeof openAiClient>;
    try {
      client = openAiClient(connection);
    } catch (error) {
      return fail(error instanceof MissingApiKeyError ? "api key" : "server", message(error));
    }
    pass("api key", o.apiKeyEnv === null ? "none (llm.openai.apiKeyEnv is null: a server that takes no key; no Authorization header is sent)" : `${o.apiKeyEnv} is set`);
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
      const ranking = rankingOf(model);
      if (ranked.length <= 1 && ids.length > 3) pass("scoring", `${ranking}the server returned no usable logprobs: rankings hold only the answer (top-1)`, true);
      else pass("scoring", `${ranking}top ${ranked.length}: ${ranked.map((r) => `${r.cluster} ${r.score.toFixed(3)}`).join(", ")}`);
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
    .description("check the workspace's stores (integrity) and the configured language-model backend end to end (reachable, model loads, one constrained answer)")
    .addHelpText("after", "\nExamples:\n  freshrec doctor\n  freshrec --config vllm.json --json doctor")
    .action(
      action(async (ctx) => {
        const storeUrl = ctx.config.store.url;
        if (storeUrl !== null) {
          // The deployment's state is the database's; the workspace only holds model files.
          const database = await diagnosePostgresStores(storeUrl, ctx.paths.root, ctx.clock);
          const backend = await diagnoseBackend({
            settings: ctx.config.llm,
            workspace: ctx.paths.root,
            clock: ctx.clock,
            liveModel: () => database.liveModel,
            clusters: async () => {
              if (!database.clusters?.length) throw new Error(`no clusters in ${redactedUrl(storeUrl)}: run freshrec ingest or synth first (the clusters come from it)`);
              return database.clusters;
            },
          });
          return doctorResult(`database: ${redactedUrl(storeUrl)}`, database.checks, backend);
        }
        const stores = await diagnoseStores(ctx.paths, () => ctx.openEventStoreForReading());
        const backend = await diagnoseBackend({
          settings: ctx.config.llm,
          workspace: ctx.paths.root,
          clock: ctx.clock,
          liveModel: () => {
            if (!existsSync(ctx.paths.registry)) return null;
            const registry = new ModelRegistry(ctx.paths.root, ctx.clock);
            try {
              const live = registry.live();
              return live ? registry.modelFile(live) : null;
            } finally {
              registry.close();
            }
          },
          clusters: async () => {
            if (!existsSync(ctx.paths.events)) throw new Error(`no event store at ${ctx.paths.events}: run freshrec ingest, synth or demo first (the clusters come from it)`);
            // Read-only, or through freshrec serve (or a schedule run worker) while it holds the file.
            const { store } = await ctx.openEventStoreForReading();
            try {
              return await store.clusters();
            } finally {
              await store.close();
            }
          },
        });
        return doctorResult(`workspace stores: ${ctx.paths.root}`, stores, backend);
      }),
    );
}

/** The command's result: the store checks (under `heading`) and the backend's, passed only when all pass. */
function doctorResult(heading: string, stores: readonly DoctorCheck[], backend: DoctorReport): { json: DoctorReport; text: string; exitCode: 0 | 1 } {
  const report: DoctorReport = { ...backend, passed: backend.passed && stores.every((c) => c.ok), checks: [...stores, ...backend.checks] };
  const line = (c: DoctorCheck) => `  ${c.ok ? (c.warning ? "!" : "ok") : "FAIL"}  ${c.name}: ${c.detail}`;
  const text = [
    heading,
    ...(stores.length ? stores.map(line) : ["  (none yet)"]),
    `llm backend: ${report.backend}`,
    ...backend.checks.map(line),
    report.passed ? "all checks passed" : "a check failed: fix it and run freshrec doctor again",
  ].join("\n");
  return { json: report, text, exitCode: report.passed ? 0 : 1 };
}
