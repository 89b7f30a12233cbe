/** Experiments: definitions and assignment, exposure and outcome logs, analysis, the simulated A/B. */
export * from "./analysis.js";
export * from "./definition.js";
export * from "./log.js";
export * from "./simulate.js";
