/**
 * Serving: the HTTP API (Fastify), item grounding, event intake, experiments and observability.
 *
 * @example
 * const server = await startServer({ workspace: ".freshrec", port: 0, adminToken: process.env.FRESHREC_ADMIN_TOKEN });
 * console.log(`curl ${server.url}/v1/users/u000123/exploration?n=5`);
 * await server.close();
 */
export * from "./catalog.js";
export * from "./errors.js";
export * from "./exploration.js";
export * from "./exploration-json.js";
export * from "./grounding/index.js";
export * from "./intake.js";
export * from "./metrics.js";
export * from "./schemas.js";
export * from "./server.js";
export * from "./store-queue.js";
export * from "./tables.js";
export * from "./table-loader.js";
export * from "./users.js";
export * from "./experiments/index.js";
