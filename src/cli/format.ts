/** How the CLI prints times and shares in its human output (JSON output keeps raw numbers). */
export const iso = (ms: number): string => new Date(ms).toISOString();

export const pct = (x: number, digits = 2): string => `${(100 * x).toFixed(digits)}%`;
