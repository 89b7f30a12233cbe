/**
 * The synthetic platform (world model): taxonomy, drifting population kernel, users, batch generation and the live
 * environment. See README.md beside this file for the latent-interest model.
 */
export * from "./taxonomy.js";
export * from "./kernel.js";
export * from "./world.js";
export { SeededRandom, mix32, hashString } from "./random.js";
export * from "./recorded.js";
