/**
 * The replay's `oracle` on the synthetic platform: tables that rank, for every history pair, the novel clusters by
 * the world's true successor kernel P_m(next | c1, c2) of the calendar month m of the moment. No table built from
 * logs can know more about the population's dynamics, so its hit rates are the ceiling the other strategies are
 * shown as a share of.
 *
 * The kernel is constant within a UTC calendar month and changes at 00:00 UTC on the 1st (src/data/synthetic/
 * kernel.ts), so a table published at the replay's start and one at each month boundary is the kernel's answer at
 * every moment. It is a ceiling of the kernel, not of the log: users also return to older interests and follow
 * their own taste, neither of which is in the kernel, so a strategy can exceed it on some segment by catching those.
 * Costs: it scores no prompt and trains nothing; it reads the truth, which no product can.
 *
 * @example
 * const run = oracleRefreshJob(world, { tables, clusters, topN: 10 });
 * const jobs = [{ name: "start-table", cadence: "every 36500 days from 2025-11-01", run }, { name: "month", cadence: "0 0 1 * *", run }];
 */
import { BadInputError } from "../domain/errors.js";
import type { SyntheticWorld } from "../data/synthetic/index.js";
import type { TableStore } from "../tables/index.js";
import { TABLE_DEFAULTS, type TableBuildRow } from "../tables/contract.js";
import type { JobRun } from "../update/schedule/index.js";

export interface OracleOptions {
  readonly tables: TableStore;
  /** The store's clusters: every ordered pair of them gets a row. */
  readonly clusters: readonly string[];
  /** Answers per row. */
  readonly topN: number;
  /** Strategy label recorded with the table. @defaultValue "oracle" */
  readonly strategy?: string;
  /** Table versions kept after publishing. @defaultValue 20 */
  readonly keep?: number;
}

/** The kernel's month a table of this job serves, as its model version names it (the month's first day). */
function monthLabel(world: SyntheticWorld, month: number): string {
  return new Date(world.monthStarts[month]).toISOString().slice(0, 7);
}

/**
 * A refresh job publishing the true kernel's table of the month of its as-of time. A run whose live table is
 * already that month's publishes nothing (reported as nothing to do), so the replay start falling on a month
 * boundary gives one table, not two.
 */
export function oracleRefreshJob(world: SyntheticWorld, options: OracleOptions): JobRun {
  const index = options.clusters.map((id) => world.clusterIndex(id));
  const unknown = options.clusters.filter((_, k) => index[k] < 0);
  if (unknown.length > 0) {
    throw new BadInputError(`oracle: clusters ${unknown.slice(0, 3).join(", ")} are not the synthetic world's: its kernel says nothing about them`);
  }
  const modelOf = (month: number) => `world kernel ${monthLabel(world, month)}`;
  return async ({ asOf }) => {
    const month = world.monthIndexAt(asOf);
    const model = modelOf(month);
    if (options.tables.live()?.modelVersion === model) {
      return { status: "succeeded", cost: { promptsScored: 0 }, detail: { skipped: `the live table is already the kernel of ${monthLabel(world, month)}` } };
    }
    const started = process.hrtime.bigint();
    const builder = options.tables.beginBuild({ modelVersion: model, templateHash: "oracle", strategy: options.strategy ?? "oracle" });
    try {
      const weights = new Float64Array(world.kernel.size);
      const order: number[] = [];
      const rows: TableBuildRow[] = [];
      for (let a = 0; a < options.clusters.length; a++) {
        for (let b = 0; b < options.clusters.length; b++) {
          if (a === b) continue;
          const sum = world.kernel.weightsInto(month, index[a], index[b], weights);
          order.length = 0;
          // Only the store's clusters can be answered; weight 0 marks c1, c2 and clusters absent this month.
          for (let k = 0; k < index.length; k++) if (weights[index[k]] > 0) order.push(k);
          order.sort((x, y) => weights[index[y]] - weights[index[x]] || x - y);
          rows.push({
            c1: options.clusters[a],
            c2: options.clusters[b],
            answers: order.slice(0, options.topN).map((k) => ({ cluster: options.clusters[k], score: weights[index[k]] / sum })),
            contextKey: null,
          });
        }
      }
      builder.append(rows);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const table = builder.finish({ pairs: rows.length, rescored: 0, copied: 0, seconds });
      options.tables.publish(table.version, { actor: "oracle", reason: `the true kernel of ${monthLabel(world, month)}` });
      options.tables.gc(options.keep ?? TABLE_DEFAULTS.keep);
      return {
        status: "succeeded",
        cost: { promptsScored: 0 },
        // The table holds the truth of its month as of now: its data is as fresh as the moment.
        detail: { publishedTable: table.version, tableVersion: table.version, modelVersion: model, kernelMonth: monthLabel(world, month), dataAsOf: asOf },
      };
    } catch (error) {
      builder.fail(error instanceof Error ? error.message : String(error));
      throw error;
    }
  };
}
