/**
 * One wrapper for every command action: builds the context, runs the command, prints the result (one JSON
 * object with --json) and maps failures to the exit codes of the contract (1 failed run, 2 bad usage or input).
 */
import type { Command } from "commander";
import { parseTime as parseTimeStrict } from "../domain/clock.js";
import { exitCodeFor, FreshrecError, BadInputError } from "../domain/errors.js";
import { contextOf, type CommandContext, type CommandResult } from "./context.js";

export function action(body: (ctx: CommandContext, command: Command) => Promise<CommandResult>) {
  return async (...args: unknown[]): Promise<void> => {
    const command = args[args.length - 1] as Command;
    const json = Boolean(command.optsWithGlobals<{ json?: boolean }>().json);
    try {
      const ctx = contextOf(command);
      const result = await body(ctx, command);
      process.stdout.write(json ? `${JSON.stringify(result.json)}\n` : `${result.text}\n`);
      process.exitCode = result.exitCode ?? 0;
    } catch (error) {
      const code = exitCodeFor(error);
      const message = error instanceof Error ? error.message : String(error);
      if (json) {
        const body: Record<string, unknown> = { error: { code: error instanceof FreshrecError ? error.code : "INTERNAL", message } };
        if (error instanceof BadInputError && error.problems.length) (body.error as Record<string, unknown>).problems = error.problems;
        process.stdout.write(`${JSON.stringify(body)}\n`);
      }
      process.stderr.write(`freshrec: ${message}\n`);
      if (!(error instanceof FreshrecError) && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
      process.exitCode = code;
    }
  };
}

/** Parses a CLI time option (ISO-8601 or unix s/ms) or fails naming the option. */
export function timeOption(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const parsed = parseTimeStrict(value);
  if (Number.isNaN(parsed)) throw new BadInputError(`--${name}: ${JSON.stringify(value)} is not a time (use ISO-8601 like 2025-03-01, or unix seconds/milliseconds)`);
  return parsed;
}

/** Parses a positive integer CLI option or fails naming the option. */
export function positiveInt(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new BadInputError(`--${name}: expected a positive integer, got ${JSON.stringify(value)}`);
  return n;
}
