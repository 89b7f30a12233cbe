/**
 * The package as a user gets it: `npm pack` (which builds dist/ from an empty dist/ through prepack), the tarball
 * unpacked into a fresh project's node_modules/freshrec, and a TypeScript program that imports `freshrec` by name,
 * type-checked with the project's own tsconfig (NodeNext resolution, so the package's `exports` and its `types`
 * condition decide what resolves) and run with node. A broken `exports` (a wrong path, a missing condition, dist not
 * shipped) fails the type check or the import. Then the installed package's `freshrec` bin, linked as npm links it,
 * runs the built CLI: help, a command on the workspace the program wrote, and the bench command's refusal (the suites
 * are not shipped).
 *
 * The pack runs in a copy of the package's sources (what `files` names, the manifest and the build configs), not in
 * the repository: prepack empties dist/ before building, and the repository's dist/ is what every CLI test (and
 * anyone working in the checkout) runs meanwhile. The copy, before it is built, also shows the checkout's CLI
 * refusing to run without a build, and after it, refusing a build older than a source file.
 *
 * Dependencies are not installed from the registry (node-llama-cpp alone is hundreds of megabytes): the project's
 * node_modules links every top-level package of the repository's own install, the flat tree `npm install freshrec`
 * would produce from the same lock file, except tsx: the library and the CLI run as JavaScript, with no TypeScript
 * loader to be found. The package itself is a real copy, so its files resolve from the project, as in a user's install.
 *
 * The program (CONSUMER below) ingests a small synthetic world into a real DuckDB event store, runs a counts-backoff
 * refresh (the fusion posterior without an LLM) through the scheduler on a virtual clock into a real SQLite table
 * store, then trains a tiny embedded model (engine v2, on the ggml library llama.cpp ships) in the package's training
 * worker and ranks one prompt with it through llama.cpp (the worker file and the native libraries must be found from
 * an installed package). It prints one JSON object.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { keepTempDir, tempDir } from "../temp-dir.js";

const ROOT = join(import.meta.dirname, "../..");

interface Outcome {
  readonly status: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command and returns how it ended. */
function attempt(command: string, args: readonly string[], cwd: string): Outcome {
  // node first on PATH: npm's scripts and the bin's `#!/usr/bin/env node` find the node running the tests.
  const env = { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ""}` };
  const result = spawnSync(command, args, { cwd, env, encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/** Runs a command; a failure reports its output, so a broken package says why. */
function run(command: string, args: readonly string[], cwd: string): string {
  const result = attempt(command, args, cwd);
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(" ")} failed (${result.status}):\n${result.stdout}\n${result.stderr}`);
  }
  return result.stdout;
}

const CONSUMER = `import { mkdirSync } from "node:fs";
import { join } from "node:path";
import {
  DAY_MS,
  EmbeddedLanguageModel,
  EmbeddedTrainer,
  EventStore,
  type RunRecord,
  SYNTHETIC_QUICK,
  Scheduler,
  SqliteScheduleStore,
  SqliteTableStore,
  SyntheticWorld,
  type TrainingSample,
  VirtualClock,
  baselineRefreshJob,
  countTransitions,
  ingestSynthetic,
  tableStorePath,
  workspacePaths,
} from "freshrec";

const workspace = process.argv[2];
if (!workspace) throw new Error("usage: node consumer.js WORKSPACE");
const paths = workspacePaths(workspace);
mkdirSync(paths.root, { recursive: true });

const events = await EventStore.open(paths.events);
const world = new SyntheticWorld({ ...SYNTHETIC_QUICK, users: 400, targetEvents: 30_000, months: 2, clustersPerDomain: 3 });
const ingested = await ingestSynthetic(events, world);
const catalog = await events.clusters();
const clusters = catalog.map((c) => c.id);

// The refresh is due every 2 days; simulating two days from the as-of time runs it at least once.
const asOf = Date.parse("2025-02-21T00:00:00Z");
const clock = new VirtualClock(asOf);
const tables = SqliteTableStore.open(tableStorePath(paths.root), clock);
const refresh = baselineRefreshJob("counts-backoff", { events, tables, clusters, templateHash: "counts-backoff", rag: {} });
const runs: RunRecord[] = [];
const scheduler = new Scheduler({
  jobs: [{ name: "refresh", cadence: "every 2 days", run: refresh }],
  store: SqliteScheduleStore.open(":memory:"),
  clock,
  onRun: (run) => runs.push(run),
});
await scheduler.simulate({ from: asOf, to: asOf + 2 * DAY_MS });

const live = tables.live();
const pairs = live ? [...tables.rows(live.version)].length : 0;
// The pair with the most users moving on to a novel cluster in the last two weeks: its row must follow the counts.
const recent = await countTransitions(events, { from: asOf - 14 * DAY_MS, to: asOf });
const byPair = new Map<string, { c1: string; c2: string; users: number; next: Map<string, number> }>();
for (const t of recent) {
  const key = \`\${t.c1}\\u0000\${t.c2}\`;
  const entry = byPair.get(key) ?? { c1: t.c1, c2: t.c2, users: 0, next: new Map<string, number>() };
  entry.users += t.users;
  entry.next.set(t.next, (entry.next.get(t.next) ?? 0) + t.users);
  byPair.set(key, entry);
}
const busiest = [...byPair.values()].sort((a, b) => b.users - a.users)[0];
const row = live && busiest ? tables.lookup(live.version, busiest.c1, busiest.c2) : undefined;

// The engine from the installed package: a tiny model trained on the mined transitions, then one ranking.
const samples: TrainingSample[] = recent.slice(0, 300).map((t) => ({ prompt: { history: { c1: t.c1, c2: t.c2 } }, answer: t.next }));
const trainer = new EmbeddedTrainer({
  init: { clusters: catalog, shape: { embedding: 32, layers: 1, heads: 2, feedForward: 64, contextLength: 256 } },
});
const trained = await trainer.train(samples, { outputPath: join(paths.models, "tiny.gguf"), epochs: 1 });
const model = await EmbeddedLanguageModel.open(trained.modelPath);
const [ranked] = await model.score([{ history: { c1: clusters[0], c2: clusters[1] } }], 5);
await model.close();

tables.close();
events.close();
console.log(
  JSON.stringify({
    events: ingested,
    clusters,
    runs: runs.map((r) => ({ job: r.job, status: r.status, error: r.error })),
    live: live ? { version: live.version, modelVersion: live.modelVersion } : null,
    pairs,
    busiest: busiest ? { c1: busiest.c1, c2: busiest.c2, users: busiest.users, next: Object.fromEntries(busiest.next) } : null,
    row: row ? row.answers : null,
    trainedEpochs: trained.epochs.length,
    ranked,
  }),
);
`;

const CONSUMER_TSCONFIG = {
  compilerOptions: {
    target: "ES2022",
    module: "NodeNext",
    moduleResolution: "NodeNext",
    lib: ["ES2023"],
    types: ["node"],
    strict: true,
    skipLibCheck: true,
    outDir: "out",
  },
  files: ["consumer.ts"],
};

/** What `npm pack` needs of the repository: the manifest, what its `files` names but dist/, the build configs. */
function copySources(into: string): void {
  const manifest = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { files: string[] };
  const names = ["package.json", "README.md", "tsconfig.json", "tsconfig.build.json", ...manifest.files.filter((f) => !f.startsWith("!") && f !== "dist")];
  for (const name of names) cpSync(join(ROOT, name), join(into, name), { recursive: true });
  symlinkSync(join(ROOT, "node_modules"), join(into, "node_modules"), "dir");
}

describe("the packed package", () => {
  const tmp = tempDir("freshrec-package-");
  const checkout = join(tmp, "checkout");
  const project = join(tmp, "project");
  const installed = join(project, "node_modules", "freshrec");
  const workspace = join(tmp, "workspace");
  let unbuilt: Outcome;
  // Kept when something fails, to look at what was packed and installed.
  let keep = true;
  const keepOnFailure = ({ onTestFailed }: { onTestFailed: (fn: () => void) => void }) => onTestFailed(() => void (keep = true));

  beforeAll(() => {
    mkdirSync(checkout);
    copySources(checkout);
    unbuilt = attempt(process.execPath, [join(checkout, "bin", "freshrec.js"), "--help"], checkout);
    run("npm", ["pack", "--pack-destination", tmp], checkout);
    const tarballs = readdirSync(tmp).filter((f) => f.endsWith(".tgz"));
    expect(tarballs).toHaveLength(1);
    mkdirSync(installed, { recursive: true });
    run("tar", ["-xzf", join(tmp, tarballs[0]), "-C", installed, "--strip-components=1"], tmp);
    for (const name of readdirSync(join(ROOT, "node_modules"))) {
      if (name === ".bin" || name.startsWith(".") || name === "freshrec" || name === "tsx") continue;
      symlinkSync(join(ROOT, "node_modules", name), join(project, "node_modules", name), "dir");
    }
    // The bin as npm links it: node_modules/.bin/freshrec, its target made executable.
    const manifest = JSON.parse(readFileSync(join(installed, "package.json"), "utf8")) as { bin: Record<string, string> };
    mkdirSync(join(project, "node_modules", ".bin"));
    for (const [name, target] of Object.entries(manifest.bin)) {
      chmodSync(join(installed, target), 0o755);
      symlinkSync(join("..", "freshrec", target), join(project, "node_modules", ".bin", name));
    }
    keep = false;
  }, 600_000);

  afterAll(() => {
    if (keep) keepTempDir(tmp);
  });

  it("a checkout's CLI refuses to run without a build, and with a build older than a source (exit 2)", (context) => {
    keepOnFailure(context);
    expect(unbuilt.status).toBe(2);
    expect(unbuilt.stderr).toMatch(/the CLI is not built \(dist\/cli\/main\.js is missing\): run `npm run build`/);
    const bin = join(checkout, "bin", "freshrec.js");
    expect(attempt(process.execPath, [bin, "--help"], checkout).status).toBe(0);
    const later = new Date(Date.now() + 60_000);
    utimesSync(join(checkout, "src", "cli", "main.ts"), later, later);
    const stale = attempt(process.execPath, [bin, "--json", "tables", "list"], checkout);
    expect(stale.status).toBe(2);
    expect(stale.stderr).toContain("the build in dist/ is older than src/cli/main.ts: run `npm run build`");
    expect(JSON.parse(stale.stdout).error.code).toBe("NOT_FOUND");
  });

  it("installs into a fresh TypeScript project that imports `freshrec` and runs a refresh with it", (context) => {
    keepOnFailure(context);
    const shipped = readdirSync(installed);
    expect(shipped).toContain("dist");
    expect(shipped).not.toContain("test");
    expect(shipped).not.toContain("bench");
    expect(existsSync(join(installed, "dist", "cli", "main.js"))).toBe(true);
    expect(existsSync(join(installed, "dist", ".tsbuildinfo"))).toBe(false);
    // Every file `exports` names is in the tarball: TypeScript would fall back from a missing `types` target to the
    // declarations beside the JavaScript, so the type check alone does not catch a wrong `types` path.
    const manifest = JSON.parse(readFileSync(join(installed, "package.json"), "utf8")) as { exports: unknown; types: string };
    const targets: string[] = [manifest.types];
    const collect = (value: unknown): void => {
      if (typeof value === "string") targets.push(value);
      else if (value && typeof value === "object") Object.values(value).forEach(collect);
    };
    collect(manifest.exports);
    expect(targets.filter((t) => !existsSync(join(installed, t)))).toEqual([]);
    writeFileSync(join(project, "package.json"), JSON.stringify({ name: "freshrec-consumer", private: true, type: "module", dependencies: { freshrec: "0.1.0" } }));
    writeFileSync(join(project, "tsconfig.json"), JSON.stringify(CONSUMER_TSCONFIG));
    writeFileSync(join(project, "consumer.ts"), CONSUMER);

    run(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", project], project);
    const output = run(process.execPath, [join(project, "out", "consumer.js"), workspace], project);
      const result = JSON.parse(output.trim().split("\n").at(-1)!) as {
        events: { events: number; clusters: number };
        clusters: string[];
        runs: { job: string; status: string; error: string | null }[];
        live: { version: string; modelVersion: string } | null;
        pairs: number;
        busiest: { c1: string; c2: string; users: number; next: Record<string, number> } | null;
        row: { cluster: string; score: number }[] | null;
        trainedEpochs: number;
        ranked: { cluster: string; score: number }[];
      };

      expect(result.events.events).toBeGreaterThan(10_000);
      const k = result.clusters.length;
      expect(k).toBe(result.events.clusters);
      // The scheduler ran the refresh, and it published a full counts-backoff table: one row per ordered pair.
      expect(result.runs.length).toBeGreaterThan(0);
      expect(result.runs.every((r) => r.job === "refresh" && r.status === "succeeded")).toBe(true);
      expect(result.live?.modelVersion).toMatch(/^counts-backoff@2025-02-2/);
      expect(result.pairs).toBe(k * (k - 1));
      // The busiest pair's row: ten novel clusters, best first, probabilities of one posterior, led by what the
      // most users did next.
      const { busiest, row } = result;
      expect(busiest && row).toBeTruthy();
      expect(row!).toHaveLength(Math.min(10, k - 2));
      expect(row!.some((a) => a.cluster === busiest!.c1 || a.cluster === busiest!.c2)).toBe(false);
      for (let i = 1; i < row!.length; i++) expect(row![i - 1].score).toBeGreaterThanOrEqual(row![i].score);
      expect(row!.reduce((s, a) => s + a.score, 0)).toBeLessThanOrEqual(1 + 1e-6);
      const mostFollowed = Math.max(...Object.values(busiest!.next));
      expect(busiest!.next[row![0].cluster]).toBe(mostFollowed);
      // The engine from the installed package: a model trained in its worker ranks novel clusters.
      expect(result.trainedEpochs).toBe(1);
      expect(result.ranked).toHaveLength(5);
      expect(result.ranked.every((a) => result.clusters.includes(a.cluster) && a.cluster !== result.clusters[0] && a.cluster !== result.clusters[1])).toBe(true);
  }, 600_000);

  it("runs the built CLI from the installed bin, with no TypeScript loader installed", (context) => {
    keepOnFailure(context);
    expect(existsSync(join(project, "node_modules", "tsx"))).toBe(false);
    const freshrec = (...args: string[]) => attempt(join(project, "node_modules", ".bin", "freshrec"), args, project);
    const help = freshrec("--help");
    expect(help.status).toBe(0);
    expect(help.stdout).toContain("Usage: freshrec");
    // A command on the workspace the program above wrote (a run of this test alone starts from an empty one).
    const list = freshrec("--workspace", workspace, "--json", "tables", "list");
    expect(list.status).toBe(0);
    const tables = JSON.parse(list.stdout) as { live: string | null; tables: { version: string; modelVersion: string; status: string }[] };
    if (existsSync(join(workspace, "events.duckdb"))) {
      expect(tables.live).toBeTruthy();
      expect(tables.tables.find((t) => t.version === tables.live)?.modelVersion).toMatch(/^counts-backoff@/);
    }
    // The bench suites stay in the source checkout: the installed command says so (exit 2), not "unknown suite".
    const bench = freshrec("--json", "bench", "mining");
    expect(bench.status).toBe(2);
    expect(JSON.parse(bench.stdout).error.code).toBe("NOT_FOUND");
    expect(bench.stderr).toContain("development tool of freshrec's source checkout");
    expect(freshrec("bench", "--help").stdout).toContain("Suites: none here");
  });
});
