import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Removes the temporary directories each test file made (test/temp-dir.ts).
    setupFiles: ["test/setup.ts"],
    // Model training and DuckDB work are CPU-bound on a 2-core machine: run files one at a time
    // so tests do not starve each other into timeouts.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
