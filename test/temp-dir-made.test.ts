/**
 * Makes a temporary directory in each place a test file can make one. Run on its own by test/temp-dir.test.ts, with
 * FRESHREC_TEST_DIRS_LOG naming a file where it lists them, to see whether they are gone after the file's tests;
 * in the suite it only checks that each was made.
 */
import { appendFileSync, existsSync } from "node:fs";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { tempDir } from "./temp-dir.js";

const made: string[] = [];
function make(where: string): string {
  const dir = tempDir(`freshrec-temp-dir-${where}-`);
  made.push(dir);
  const log = process.env.FRESHREC_TEST_DIRS_LOG;
  if (log) appendFileSync(log, `${where} ${dir}\n`);
  return dir;
}

make("module");
beforeAll(() => void make("before-all"));
beforeEach(() => void make("before-each"));
afterAll(() => void make("after-all"));

describe("a test file's temporary directories", () => {
  beforeAll(() => void make("describe-before-all"));

  it("are there while its tests run", () => {
    make("test");
    for (const dir of made) expect(existsSync(dir), dir).toBe(true);
  });

  it("are there in its next test too", () => {
    for (const dir of made) expect(existsSync(dir), dir).toBe(true);
  });
});
