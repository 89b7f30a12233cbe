/**
 * Runs before every test file (vitest.config.ts's setupFiles). Its `afterAll` is the file's first, and vitest runs
 * "after" hooks in reverse order, so the directories go after the file's own hooks have stopped its servers, child
 * processes and PostgreSQL clusters.
 */
import { afterAll } from "vitest";
import { removeTempDirs } from "./temp-dir.js";

afterAll(removeTempDirs);
