import type { Command } from "commander";
import { defaultConfig, describeConfig, type FreshrecConfig } from "../config.js";
import { redactedUrl } from "../../data/postgres-event-store.js";
import { action } from "../run.js";

/**
 * The config as it may be shown: the admin token replaced by a marker and the store URL's password masked
 * (terminals, CI logs and pasted bug reports keep what they print). The marker is shorter than serve.adminToken's
 * minimum, so a printed config saved as a file is refused rather than served with a wrong token.
 */
export function redactSecrets(config: FreshrecConfig): FreshrecConfig {
  const serve = config.serve.adminToken === null ? config.serve : { ...config.serve, adminToken: REDACTED };
  const store = config.store.url === null ? config.store : { ...config.store, url: redactedUrl(config.store.url) };
  return { ...config, serve, store };
}

const REDACTED = "[redacted]";

export function registerConfig(program: Command): void {
  program
    .command("config")
    .description("show the configuration: defaults, documentation, or the validated effective config")
    .option("--print-defaults", "print a complete freshrec.config.json with every default")
    .option("--describe", "list every option with its default and meaning")
    .addHelpText("after", "\nExamples:\n  freshrec config --print-defaults > freshrec.config.json\n  freshrec config --describe\n  freshrec config --config my.json   (validates my.json and prints the effective config)")
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<{ printDefaults?: boolean; describe?: boolean }>();
        if (opts.describe) {
          const rows = describeConfig();
          return { json: { options: rows }, text: rows.map((r) => `${r.path} = ${JSON.stringify(r.default)}\n    ${r.description}`).join("\n") };
        }
        const config = opts.printDefaults ? defaultConfig() : redactSecrets(ctx.config);
        return { json: config, text: JSON.stringify(config, null, 2) };
      }),
    );
}
