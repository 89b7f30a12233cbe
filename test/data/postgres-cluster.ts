/**
 * A throwaway PostgreSQL server for tests: `initdb` into a temp folder, the server on a free loopback port with its
 * unix socket in that folder and trust authentication, one fresh database per `createDatabase()` (ICU's root
 * collation, so that text sorts as in a production database, not by code point), everything
 * stopped and removed by `stop()`. Tests run it without durability (fsync, synchronous commit and full-page writes off:
 * nothing there survives the run anyway); a benchmark that times commits asks for a `durable` one, configured as a
 * deployment's database is (PostgreSQL's defaults), so that an acknowledged commit has reached the disk there too.
 * The binaries come from Debian's `postgresql` package (`bash scripts/postgres.sh
 * install` puts them there; .ci/run does). PostgreSQL refuses to run as root, so as root the cluster is owned and
 * run by the package's `postgres` user through `runuser`.
 *
 * @example
 * const cluster = await startPostgresCluster();
 * const url = await cluster.createDatabase(); // postgres://postgres@127.0.0.1:PORT/t1
 * await cluster.stop();
 */
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, chownSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import pg from "pg";
import { afterAll, beforeAll } from "vitest";
import { keepingTempDirs, tempDir } from "../temp-dir.js";

export interface PostgresCluster {
  /** A URL of the cluster's `postgres` database (for administration). */
  readonly adminUrl: string;
  /** Creates an empty database and returns its URL. */
  createDatabase(): Promise<string>;
  stop(): Promise<void>;
}

const SCRIPT = resolve(import.meta.dirname, "../../scripts/postgres.sh");

/** The folder holding initdb and pg_ctl, found the way scripts/postgres.sh finds it. */
function binDir(): string {
  const found = spawnSync("bash", [SCRIPT, "bindir"], { encoding: "utf8" });
  if (found.status !== 0) {
    throw new Error(`PostgreSQL's server binaries are missing (${found.stderr.trim()}). Install them with: bash scripts/postgres.sh install`);
  }
  return found.stdout.trim();
}

async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => done(port));
    });
  });
}

/** Runs a server binary as the user that may run it: `postgres` when we are root, ourselves otherwise. */
function runAsServerUser(command: string, args: string[]): string {
  const root = process.getuid?.() === 0;
  const [file, argv] = root ? ["runuser", ["-u", "postgres", "--", command, ...args]] : [command, args];
  try {
    return execFileSync(file, argv, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (error) {
    const e = error as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${command} ${args.join(" ")} failed: ${e.stderr || e.stdout || e.message}`);
  }
}

export interface PostgresClusterOptions {
  /**
   * fsync, synchronous commit and full-page writes on, and PostgreSQL's default 128 MB of shared buffers: commits
   * wait for the disk as in a deployment. Off (the tests'): they never do. @defaultValue false
   */
  readonly durable?: boolean;
}

export async function startPostgresCluster(clusterOptions: PostgresClusterOptions = {}): Promise<PostgresCluster> {
  const bin = binDir();
  const root = tempDir("freshrec-pg-");
  const data = join(root, "data");
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
    chownSync(root, uid, gid);
  }
  chmodSync(root, 0o700);
  runAsServerUser(join(bin, "initdb"), ["-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]);
  let port = 0;
  let started = false;
  for (let attempt = 0; attempt < 5 && !started; attempt++) {
    port = await freePort();
    const durability = clusterOptions.durable
      ? "-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_buffers=128MB"
      : "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB";
    const options = `-p ${port} -k ${root} -c listen_addresses=127.0.0.1 ${durability} -c max_connections=50`;
    try {
      runAsServerUser(join(bin, "pg_ctl"), ["-D", data, "-o", options, "-l", join(root, "server.log"), "-w", "-t", "60", "start"]);
      started = true;
    } catch (error) {
      // Another process may have taken the port between the probe and the start: try another one.
      if (attempt === 4) {
        // Its server log says why it did not start: kept with the other test folders when asked.
        if (!keepingTempDirs()) rmSync(root, { recursive: true, force: true });
        throw error;
      }
    }
  }
  const adminUrl = `postgres://postgres@127.0.0.1:${port}/postgres`;
  let databases = 0;
  return {
    adminUrl,
    async createDatabase() {
      const name = `t${++databases}`;
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      try {
        // A linguistic collation (ICU's root locale), as a production database has, not the cluster's code-point "C":
        // queries that sort text must say how, and the tests must see it when one does not.
        await client.query(`CREATE DATABASE ${name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'und' LOCALE 'C'`);
      } finally {
        await client.end();
      }
      return `postgres://postgres@127.0.0.1:${port}/${name}`;
    },
    async stop() {
      try {
        runAsServerUser(join(bin, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"]);
      } finally {
        // Outside vitest nothing else removes it; FRESHREC_KEEP_TEST_DIRS keeps the server's log and data for a look.
        if (!keepingTempDirs()) rmSync(root, { recursive: true, force: true });
      }
    },
  };
}

/**
 * One cluster for the test file that calls this at its top level: started before its first test, stopped after its
 * last. The returned function gives a fresh empty database's URL.
 */
export function usePostgresCluster(): () => Promise<string> {
  let cluster: PostgresCluster | null = null;
  beforeAll(async () => {
    cluster = await startPostgresCluster();
  }, 120_000);
  afterAll(async () => {
    await cluster?.stop();
  });
  return () => {
    if (!cluster) throw new Error("the PostgreSQL cluster has not started (usePostgresCluster must be called at a test file's top level)");
    return cluster.createDatabase();
  };
}
