/**
 * The freshrec command tree (every command and its options, help and examples), built without running anything:
 * src/cli/main.ts runs it, tests walk it.
 */
import { Command } from "commander";
import { registerAnalyze } from "./commands/analyze.js";
import { registerBench } from "./commands/bench.js";
import { registerConfig } from "./commands/config.js";
import { registerDemo } from "./commands/demo.js";
import { registerDoctor } from "./commands/doctor.js";
import { registerEvaluate } from "./commands/evaluate.js";
import { registerExperiment } from "./commands/experiment.js";
import { registerIngest } from "./commands/ingest.js";
import { registerLlm } from "./commands/llm.js";
import { registerModels } from "./commands/models.js";
import { registerRefresh } from "./commands/refresh.js";
import { registerServe } from "./commands/serve.js";
import { registerSynth } from "./commands/synth.js";
import { registerTables } from "./commands/tables.js";
import { DEFAULT_WORKSPACE } from "./workspace.js";

export function buildProgram(): Command {
  const program = new Command("freshrec")
    .description("keeps an LLM-powered interest-exploration recommender fresh (fine-tuning + RAG table refreshes)")
    .option("--workspace <dir>", "where freshrec keeps its state", DEFAULT_WORKSPACE)
    .option("--config <file>", "config file (default: freshrec.config.json if present)")
    .option("--json", "print exactly one JSON object with the result on stdout")
    .showHelpAfterError()
    .exitOverride();
  registerDemo(program);
  registerConfig(program);
  registerIngest(program);
  registerSynth(program);
  registerModels(program);
  registerRefresh(program);
  registerTables(program);
  registerAnalyze(program);
  registerEvaluate(program);
  registerExperiment(program);
  registerServe(program);
  registerLlm(program);
  registerDoctor(program);
  registerBench(program);
  for (const command of program.commands) {
    command.exitOverride();
    for (const sub of command.commands) sub.exitOverride();
  }
  return program;
}
