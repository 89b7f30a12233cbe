/**
 * The freshrec CLI. Global options on every command: --workspace, --config, --json. Exit codes: 0 success,
 * 1 failed run, 2 bad usage or bad input.
 */
import { CommanderError } from "commander";
import { buildProgram } from "./program.js";

/** Whether --json is among the options (before a "--" that ends them). */
function jsonRequested(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end < 0 ? argv : argv.slice(0, end)).includes("--json");
}

export async function main(argv: readonly string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv as string[]);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version are successes; anything else commander rejects is bad usage.
      const success = error.code === "commander.helpDisplayed" || error.code === "commander.version" || error.code === "commander.help";
      process.exitCode = success ? 0 : 2;
      // --json promises one JSON object on stdout, a usage error included (commander printed the why to stderr); a wrong
      // argument is BAD_INPUT, the code of every exit-2 input error.
      if (!success && jsonRequested(argv)) {
        process.stdout.write(`${JSON.stringify({ error: { code: "BAD_INPUT", message: error.message.replace(/^error: /, "") } })}\n`);
      }
      return;
    }
    throw error;
  }
}

await main(process.argv);
