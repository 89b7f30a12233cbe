/**
 * `freshrec llm serve [--port N] [--host H] [--model FILE]`: the embedded model behind OpenAI-compatible routes
 * (src/llm/openai-server.ts) until Ctrl-C. Any OpenAI client can then use it: freshrec's own `openai` backend (tests,
 * other processes sharing one loaded model), scripts, notebooks. Fine-tuning jobs posted to it train with the
 * embedded trainer and are served under their `ft:` names; their files live in <workspace>/llm-server.
 */
import type { Command } from "commander";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { BadInputError } from "../../domain/errors.js";
import { startLlmServer } from "../../llm/openai-server.js";
import { action, positiveInt } from "../run.js";

export function registerLlm(program: Command): void {
  const llm = program.command("llm").description("language-model tools: serve the embedded model over an OpenAI-compatible API");
  llm
    .command("serve")
    .description("serve the embedded model (the live one, or --model FILE) through OpenAI-compatible routes until Ctrl-C")
    .option("--port <n>", "TCP port (default: llm.serve.port, 8081; 0 = any free port)")
    .option("--host <address>", "interface (default: llm.serve.host, 127.0.0.1)")
    .option("--model <file>", "freshrec model file to serve (default: the workspace's live model)")
    .option("--name <name>", "model name clients use (default: the live model's version, or the file name)")
    .addHelpText(
      "after",
      [
        "",
        "Examples:",
        "  freshrec llm serve --port 8081",
        "  curl localhost:8081/v1/models",
        "  # another process (or freshrec itself) uses it as an openai backend:",
        '  #   "llm": { "backend": "openai", "openai": { "baseURL": "http://127.0.0.1:8081/v1", "model": "m000001" } }',
        "",
        "Routes: GET /v1/models, POST /v1/chat/completions (response_format json_schema enum, guided_choice, logprobs),",
        "POST /v1/files, POST|GET /v1/fine_tuning/jobs[/ID[/events|/cancel]]. One model loaded serves every process.",
      ].join("\n"),
    )
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<{ port?: string; host?: string; model?: string; name?: string }>();
        const port = opts.port === "0" ? 0 : positiveInt("port", opts.port);
        if (port !== undefined && port > 65535) throw new BadInputError(`--port: ${port} is not a TCP port`);
        let modelPath = opts.model;
        let name = opts.name;
        if (modelPath === undefined) {
          // The registry the config names: the workspace's, or with store.url the deployment's database.
          const registry = await ctx.openRegistry();
          try {
            const live = await registry.live();
            if (!live) throw new BadInputError(`no live model in ${registry.location}: run freshrec pretrain (or demo) first, or pass --model FILE`);
            modelPath = await registry.modelFile(live);
            name ??= live.version;
          } finally {
            await registry.close();
          }
        } else if (!existsSync(modelPath)) {
          throw new BadInputError(`--model: ${modelPath} does not exist`);
        }
        const server = await startLlmServer({
          modelPath,
          modelName: name,
          dataDir: join(ctx.paths.root, "llm-server"),
          port: port ?? ctx.config.llm.serve.port,
          host: opts.host ?? ctx.config.llm.serve.host,
          logLevel: ctx.config.serve.logLevel,
          training: ctx.config.training,
        });
        const models = (await (await fetch(`${server.url}/v1/models`)).json()) as { data: { id: string }[] };
        ctx.log(`freshrec llm serving ${models.data.map((m) => m.id).join(", ")} on ${server.url}/v1 (OpenAI-compatible); Ctrl-C stops`);
        ctx.log(`  curl ${server.url}/v1/models`);
        await new Promise<void>((resolve) => {
          if (ctx.signal.aborted) resolve();
          ctx.signal.addEventListener("abort", () => resolve(), { once: true });
        });
        await server.close();
        return { json: { url: server.url, baseURL: `${server.url}/v1`, models: models.data.map((m) => m.id), stopped: true }, text: `stopped serving ${server.url}` };
      }),
    );
}
