/**
 * The tests' temporary directories: `tempDir(prefix)` makes one under the system's temp folder, and test/setup.ts
 * removes every directory made in a test file once that file's tests are done (vitest gives each test file its own
 * copy of this module, so the list holds that file's directories only). With FRESHREC_KEEP_TEST_DIRS=1 they stay,
 * and the file's directories are listed on stderr instead.
 *
 * Outside vitest (the benches import test/data/postgres-cluster.ts) nothing removes them: who makes one there removes it.
 *
 * @example
 * const ws = tempDir("freshrec-cli-"); // /tmp/freshrec-cli-XXXXXX, gone after this file's tests
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const KEEP_TEST_DIRS = "FRESHREC_KEEP_TEST_DIRS";

const made: string[] = [];

/** A new empty directory `<tmp>/<prefix>XXXXXX`, removed after the calling test file's tests. */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

/** Leaves `dir`, made by `tempDir`, in place after the file's tests (what a failed test made, for a look) and says where. */
export function keepTempDir(dir: string): void {
  const at = made.indexOf(dir);
  if (at >= 0) made.splice(at, 1);
  process.stderr.write(`kept the test directory ${dir}\n`);
}

/** Whether the developer asked to keep the tests' directories for a look after the run. */
export function keepingTempDirs(): boolean {
  const value = process.env[KEEP_TEST_DIRS];
  return value !== undefined && value !== "" && value !== "0";
}

/**
 * Removes the directories `tempDir` made in this test file (or, when they are kept, says where they are). A server,
 * child process or database that a test left running may still write into one while it goes: the removal retries, and
 * a directory that still cannot be removed is reported on stderr rather than failing the file's tests.
 */
export function removeTempDirs(): void {
  const dirs = made.splice(0);
  if (dirs.length === 0) return;
  if (keepingTempDirs()) {
    process.stderr.write(`${KEEP_TEST_DIRS} is set: kept ${dirs.length} test director${dirs.length === 1 ? "y" : "ies"}:\n${dirs.map((d) => `  ${d}\n`).join("")}`);
    return;
  }
  for (const dir of dirs) {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    } catch (error) {
      process.stderr.write(`could not remove the test directory ${dir}: ${(error as Error).message}\n`);
    }
  }
}
