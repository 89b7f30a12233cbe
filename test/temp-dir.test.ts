/**
 * test/temp-dir.ts's directories are gone after the test file that made them (test/setup.ts), wherever in the file
 * they were made, unless FRESHREC_KEEP_TEST_DIRS asks to keep them. Runs test/temp-dir-made.test.ts in its own vitest.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { KEEP_TEST_DIRS, keepTempDir, removeTempDirs, tempDir } from "./temp-dir.js";

const ROOT = join(import.meta.dirname, "..");
const VITEST = join(ROOT, "node_modules/vitest/vitest.mjs");
const WHERE = ["module", "before-all", "describe-before-all", "before-each", "test", "after-all"];

/** The directories test/temp-dir-made.test.ts made in a vitest run of its own, by where in the file it made them. */
function runMadeFile(env: Record<string, string>): { dirs: Map<string, string[]>; output: string } {
  const log = join(tempDir("freshrec-temp-dir-log-"), "made.txt");
  const { [KEEP_TEST_DIRS]: _, ...inherited } = process.env;
  const run = spawnSync(process.execPath, [VITEST, "run", "test/temp-dir-made.test.ts"], {
    cwd: ROOT,
    encoding: "utf8",
    env: { ...inherited, ...env, FRESHREC_TEST_DIRS_LOG: log },
  });
  const output = `${run.stdout}${run.stderr}`;
  expect(run.status, output).toBe(0);
  const dirs = new Map<string, string[]>();
  for (const line of readFileSync(log, "utf8").trim().split("\n")) {
    const [where, dir] = line.split(" ");
    dirs.set(where, [...(dirs.get(where) ?? []), dir]);
  }
  return { dirs, output };
}

describe("tempDir", () => {
  it("makes a new directory named by the prefix under the temp folder", () => {
    const a = tempDir("freshrec-temp-dir-unit-");
    const b = tempDir("freshrec-temp-dir-unit-");
    expect(a).not.toBe(b);
    expect(a).toMatch(/freshrec-temp-dir-unit-[A-Za-z0-9]{6}$/);
    expect(existsSync(a) && existsSync(b)).toBe(true);
  });

  it("removes every directory a test file made, wherever it made it, after the file's tests", () => {
    const { dirs } = runMadeFile({});
    expect([...dirs.keys()].sort()).toEqual([...WHERE].sort());
    expect(dirs.get("before-each")).toHaveLength(2);
    const left = [...dirs.values()].flat().filter((dir) => existsSync(dir));
    expect(left).toEqual([]);
  }, 120_000);

  it(`keeps them with ${KEEP_TEST_DIRS}=1 and says where they are`, () => {
    const { dirs, output } = runMadeFile({ [KEEP_TEST_DIRS]: "1" });
    const all = [...dirs.values()].flat();
    try {
      expect(all).toHaveLength(WHERE.length + 1);
      for (const dir of all) {
        expect(existsSync(dir), dir).toBe(true);
        expect(output).toContain(dir);
      }
    } finally {
      for (const dir of all) rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it("leaves a directory given to keepTempDir (what a failed test made) and removes the file's others", () => {
    const kept = tempDir("freshrec-temp-dir-kept-");
    const gone = tempDir("freshrec-temp-dir-gone-");
    const asked = process.env[KEEP_TEST_DIRS];
    delete process.env[KEEP_TEST_DIRS];
    try {
      keepTempDir(kept);
      removeTempDirs();
      expect(existsSync(gone)).toBe(false);
      expect(existsSync(kept)).toBe(true);
    } finally {
      if (asked !== undefined) process.env[KEEP_TEST_DIRS] = asked;
      rmSync(kept, { recursive: true, force: true });
    }
  });
});
