/**
 * The scheduler of the hybrid strategy: cadences, the Scheduler (simulate and live drivers over one core), the
 * schedule store contract and its two adapters (SQLite, PostgreSQL). See scheduler.ts for the semantics and a
 * runnable example.
 */
export * from "./cadence.js";
export * from "./errors.js";
export * from "./hybrid.js";
export * from "./postgres-store.js";
export * from "./scheduler.js";
export * from "./sqlite-store.js";
export * from "./store.js";
export * from "./types.js";
