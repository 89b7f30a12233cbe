import type { Command } from "commander";
import { ingestSynthetic } from "../../data/ingest/synthetic.js";
import { SYNTHETIC_DEFAULTS, SYNTHETIC_QUICK, SyntheticWorld, type SyntheticOptions } from "../../data/synthetic/index.js";
import type { FreshrecConfig } from "../config.js";
import { action, positiveInt } from "../run.js";

export interface SynthFlags {
  quick?: boolean;
  seed?: string;
  users?: string;
  events?: string;
  months?: string;
}


/** The synthetic world's options: the scale preset, then the config, then flags. */
export function syntheticOptions(config: FreshrecConfig["synth"], flags: SynthFlags): SyntheticOptions {
  const base = flags.quick ? SYNTHETIC_QUICK : SYNTHETIC_DEFAULTS;
  return {
    ...base,
    seed: positiveInt("seed", flags.seed) ?? config.seed,
    start: config.start,
    months: positiveInt("months", flags.months) ?? config.months,
    users: positiveInt("users", flags.users) ?? config.users ?? base.users,
    targetEvents: positiveInt("events", flags.events) ?? config.targetEvents ?? base.targetEvents,
    targetJaccard: config.targetJaccard,
  };
}

export function addSynthFlags(command: Command): Command {
  return command
    .option("--quick", "a small world (~300k events) with the same dynamics")
    .option("--seed <n>", "seed (default: synth.seed)")
    .option("--users <n>", "simulated users (default: synth.users or the scale's)")
    .option("--events <n>", "expected number of events (default: synth.targetEvents or the scale's)")
    .option("--months <n>", "calendar months of history (default: synth.months)");
}

export function registerSynth(program: Command): void {
  addSynthFlags(program.command("synth").description("generate the synthetic platform into the event store (deterministic for a seed)"))
    .addHelpText("after", "\nExamples:\n  freshrec synth --quick\n  freshrec synth --seed 7 --events 10000000")
    .action(
      action(async (ctx, command) => {
        const options = syntheticOptions(ctx.config.synth, command.opts<SynthFlags>());
        const world = new SyntheticWorld(options);
        const store = await ctx.openEventStore();
        try {
          const started = process.hrtime.bigint();
          const report = await ingestSynthetic(store, world, ctx.progress);
          const seconds = Number(process.hrtime.bigint() - started) / 1e9;
          const json = { ...report, seconds, calibration: world.calibration, options };
          const text = [
            `synthetic platform (seed ${options.seed}, ${options.months} months from ${options.start}) written to ${store.location}:`,
            `  ${report.events} events (${report.positiveEvents} positive), ${report.users} users, ${report.items} items, ${report.clusters} clusters in ${seconds.toFixed(1)} s`,
            `  duplicates skipped ${report.skippedDuplicates}`,
          ].join("\n");
          return { json, text };
        } finally {
          await store.close();
        }
      }),
    );
}
