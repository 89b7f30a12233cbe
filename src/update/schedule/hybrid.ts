/**
 * The hybrid strategy's two jobs on their default cadences (arXiv 2510.20260: fine-tuning monthly, RAG refresh
 * every 2 days), in the order that makes a refresh due with a fine-tune use the new model.
 *
 * @example
 * const jobs = hybridJobs({ finetune: (ctx) => runFinetune(ctx), refresh: (ctx) => runRefresh(ctx) });
 * const scheduler = new Scheduler({ jobs, store, clock });
 */
import { DEFAULT_FINETUNE_CADENCE, DEFAULT_REFRESH_CADENCE } from "./cadence.js";
import type { JobDefinition, JobRun } from "./types.js";

export interface HybridJobsOptions {
  readonly finetune: JobRun;
  readonly refresh: JobRun;
  /** @defaultValue "0 0 1 * *" (00:00 UTC on day 1 of each month) */
  readonly finetuneCadence?: string;
  /** @defaultValue "every 2 days" (counted from the Unix epoch; add "from ISO-TIME" to anchor elsewhere) */
  readonly refreshCadence?: string;
  /**
   * `drift`: the fine-tune job decides at each refresh whether the live model has gone stale (UpdateLoop's drift
   * trigger), so it is due on the refresh cadence, right after the refresh whose fit it reads. @defaultValue "schedule"
   */
  readonly finetuneTrigger?: "schedule" | "drift";
}

export function hybridJobs(options: HybridJobsOptions): JobDefinition[] {
  const refreshCadence = options.refreshCadence ?? DEFAULT_REFRESH_CADENCE;
  if (options.finetuneTrigger === "drift") {
    return [
      { name: "refresh", cadence: refreshCadence, run: options.refresh },
      { name: "finetune", cadence: refreshCadence, run: options.finetune },
    ];
  }
  return [
    { name: "finetune", cadence: options.finetuneCadence ?? DEFAULT_FINETUNE_CADENCE, run: options.finetune },
    { name: "refresh", cadence: refreshCadence, run: options.refresh },
  ];
}
