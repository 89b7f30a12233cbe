/** Item grounding: the item policy contract, the embedded policies and the index they read. */
export * from "./contract.js";
export * from "./grounding-index.js";
export * from "./policies.js";
export * from "./live-grounding.js";
