import { isoTime } from "../serving/views.js";

/** How the CLI prints times and shares in its human output; --json output takes the views of src/serving/views.ts. */
export const iso = (ms: number): string => isoTime(ms);

export const pct = (x: number, digits = 2): string => `${(100 * x).toFixed(digits)}%`;
