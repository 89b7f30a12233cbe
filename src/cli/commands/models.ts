/**
 * The model side of the loop: `pretrain` (the base model), `finetune` (monthly, behind the gates), `review`
 * (a human decides on a halted candidate) and `models list`.
 */
import type { Command } from "commander";
import { BadInputError } from "../../domain/errors.js";
import type { ModelRegistryContract, ModelVersion } from "../../llm/registry.js";
import { gateReportLines, type GateResult } from "../../update/gates.js";
import { finetuneOutcome } from "../../update/loop.js";
import { deliveredModel, openLoop, registerConfiguredBase, resolveAsOf, trainBaseModel } from "../loop-context.js";
import { action, positiveInt } from "../run.js";
import { iso, pct } from "../format.js";
import { modelView, statusChangeView, windowView } from "../../serving/views.js";


function modelLine(m: ModelVersion): string {
  const window = m.window ? `data ${iso(m.window.from).slice(0, 10)}..${iso(m.window.to).slice(0, 10)}` : "data -";
  return `${m.version}  ${m.status.padEnd(9)} ${m.kind.padEnd(10)} parent ${m.parent ?? "-"}  ${window}  ${m.trainSamples} samples  ${iso(m.createdAt).slice(0, 16)}`;
}

/**
 * What a reviewer needs about a model: why it was halted (the failed gates and their numbers, as recorded when it
 * was), every gate with whether it could have failed, and its status history.
 */
async function reviewRecord(registry: ModelRegistryContract, model: ModelVersion): Promise<{ json: Record<string, unknown>; text: string }> {
  const history = await registry.history(model.version);
  const halt = [...history].reverse().find((c) => c.to === "halted") ?? null;
  const m = model.metrics as Partial<GateResult>;
  // Records written before the gate report existed carry the two rates and the reasons only.
  const gates =
    m.testRecall === undefined
      ? null
      : {
          passed: m.passed ?? null,
          reasons: m.reasons ?? [],
          checks: m.checks ?? null,
          exactMatch: m.exactMatch ?? null,
          regression: m.regression ?? null,
          exactMatchRate: m.exactMatchRate ?? null,
          testRecall: m.testRecall,
          testExamples: m.testExamples ?? null,
        };
  const lines = [modelLine(model)];
  if (halt) lines.push(`  halted ${iso(halt.at).slice(0, 16)}: ${halt.reason}`);
  if (gates?.checks) lines.push("  gates:", ...gateReportLines({ checks: gates.checks }).map((l) => `    ${l}`));
  else if (gates) lines.push(`  gates: exact-match ${gates.exactMatchRate === null ? "-" : pct(gates.exactMatchRate)}, test recall ${pct(gates.testRecall)}${gates.reasons.length ? `; failed: ${gates.reasons.join("; ")}` : ""}`);
  else lines.push("  no gate measurements recorded");
  if (model.status === "halted" || model.status === "candidate") lines.push(`  decide with: freshrec review approve|reject ${model.version} --reason TEXT`);
  return {
    json: { model: modelView(model), haltedBecause: halt?.reason ?? null, gates, history: history.map(statusChangeView) },
    text: lines.join("\n"),
  };
}

export function registerModels(program: Command): void {
  program
    .command("pretrain")
    .description("train the base model from the catalog and the transitions before the as-of time; report top-1 vs most-popular-next")
    .option("--as-of <time>", "use only data before this time (default: now, or just after the newest event)")
    .option("--epochs <n>", "training epochs (default: pretrain.epochs)")
    .addHelpText("after", "\nExamples:\n  freshrec pretrain\n  freshrec pretrain --as-of 2025-06-01 --epochs 4 --json")
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<{ asOf?: string; epochs?: string }>();
        const epochs = positiveInt("epochs", opts.epochs) ?? ctx.config.pretrain.epochs;
        if (ctx.config.llm.backend !== "embedded") {
          // Nothing to train from scratch: the user's model is the base; fine-tunes and refreshes continue from it.
          const base = await registerConfiguredBase(ctx);
          return {
            json: { modelVersion: base.version, status: base.status, backend: base.backend, modelPath: base.filePath, trained: false },
            text: `base model ${base.version} (${base.status}): the configured ${base.backend} model (${base.filePath}), registered without training`,
          };
        }
        const events = await ctx.openEventStore();
        let registry: ModelRegistryContract | null = null;
        try {
          // The deployment's registry; without store.url pretrain opens the workspace's file itself once the model is
          // trained, as it always did (a failed pretrain leaves no registry file behind).
          registry = ctx.config.store.url !== null ? await ctx.openRegistry() : null;
          const asOf = await resolveAsOf(ctx, events, opts.asOf);
          // The model file goes under this workspace's models folder, where a shared registry records it (relative).
          const { result, window, gates } = await trainBaseModel(ctx, events, asOf, ctx.paths.root, { epochs, heldOut: true, registry: registry ?? undefined });
          const e = result.evaluation;
          const text = [
            `base model ${result.modelVersion} (${result.status}) written to ${result.modelPath}`,
            `  ${result.training.trainSamples} training samples, best epoch ${result.training.bestEpoch}/${result.training.epochs.length}, ${result.trainTokens} tokens at ${Math.round(result.training.tokensPerSecond)} tok/s, ${result.seconds.toFixed(1)} s`,
            e
              ? `  held-out top-1 on ${e.transitions} transitions: model ${pct(e.modelTop1)} vs most-popular-next ${pct(e.mostPopularTop1)}` +
                (e.modelTop1WithContext !== undefined
                  ? `; with retrieved contexts: model ${pct(e.modelTop1WithContext)} vs serving the successor itself ${pct(e.successorTop1!)}`
                  : "")
              : "  no held-out transitions: nothing to compare",
            ...(gates
              ? [`  gates on the held-out days: exact-match ${gates.exactMatch.basis === "by construction" ? "by construction" : pct(gates.exactMatchRate)}, test recall ${pct(gates.testRecall)} on ${gates.testExamples} histories: ${gates.passed ? "would pass" : `would fail (${gates.reasons.join("; ")})`}`]
              : []),
          ].join("\n");
          return { json: { ...result, gates, asOf: iso(asOf), window: windowView(window) }, text };
        } finally {
          await registry?.close();
          await events.close();
        }
      }),
    );

  program
    .command("finetune")
    .description("continue training the live model on curated recent transitions, then gate it: pass goes live, fail halts (exit 1)")
    .option("--as-of <time>", "fine-tune on data before this time (default: now, or just after the newest event)")
    .option("--model <file>", "gate a model fine-tuned elsewhere instead of training (a LoRA adapter or GGUF; for llm.backend openai also a model name on the server); it becomes a new version like a fine-tune made here")
    .addHelpText("after", "\nExamples:\n  freshrec finetune\n  freshrec finetune --as-of 2025-07-01 --json\n  freshrec finetune --model adapters/2025-07.gguf")
    .action(
      action(async (ctx, command) => {
        const opts = command.opts<{ asOf?: string; model?: string }>();
        const open = await openLoop(ctx, opts.model === undefined ? {} : { trainer: deliveredModel(opts.model, ctx.config.llm) });
        try {
          const asOf = await resolveAsOf(ctx, open.events, opts.asOf);
          if (!(await open.registry.live())) throw new BadInputError("no live model to fine-tune: run freshrec pretrain first");
          const result = await open.loop.finetune(asOf, ctx.signal);
          const g = result.gates;
          const text = [
            `${result.modelVersion} (parent ${result.parent ?? "-"}): ${result.status === "live" ? "gates passed, now live" : "HALTED, the previous model stays live"}`,
            opts.model === undefined
              ? `  trained on ${result.set.trainSamples} curated samples of ${iso(result.set.trainWindow.from).slice(0, 10)}..${iso(result.set.trainWindow.to).slice(0, 10)} (${result.set.available} available), ${result.trainTokens} tokens, ${result.seconds.toFixed(1)} s`
              : `  delivered model ${opts.model} (not trained here), gated on the test slice of ${iso(result.set.testWindow.from).slice(0, 10)}..${iso(result.set.testWindow.to).slice(0, 10)}, ${result.seconds.toFixed(1)} s`,
            ...gateReportLines(g).map((line) => `  ${line}`),
            ...(result.status === "halted" ? [`  see why with: freshrec review show ${result.modelVersion}; decide with: freshrec review approve|reject ${result.modelVersion} --reason TEXT`] : []),
          ].join("\n");
          const set = { ...result.set, trainWindow: windowView(result.set.trainWindow), testWindow: windowView(result.set.testWindow) };
          return { json: { ...result, set, outcome: finetuneOutcome(result).status }, text, exitCode: result.status === "live" ? 0 : 1 };
        } finally {
          await open.close();
        }
      }),
    );

  program
    .command("review [decision] [version]")
    .description("see why models were halted (no arguments: every model awaiting review; show VERSION: one), then approve (make it live) or reject (retire it for good)")
    .option("--reason <text>", "why (required to approve or reject; recorded with the time)")
    .addHelpText(
      "after",
      '\nExamples:\n  freshrec review\n  freshrec review show m000003\n  freshrec review approve m000003 --reason "recall dip explained by a holiday week"\n  freshrec review reject m000003 --reason "answers off-list"',
    )
    .action(
      action(async (ctx, command) => {
        const [decision, version] = command.args as (string | undefined)[];
        const { reason } = command.opts<{ reason?: string }>();
        const registry = await ctx.openRegistry();
        try {
          if (decision === undefined) {
            const waiting = (await registry.list()).filter((m) => m.status === "halted" || m.status === "candidate");
            const records: Awaited<ReturnType<typeof reviewRecord>>[] = [];
            for (const m of waiting) records.push(await reviewRecord(registry, m));
            return {
              json: { models: records.map((r) => r.json) },
              text: records.length ? records.map((r) => r.text).join("\n\n") : "no model awaits review (none is halted or a candidate)",
            };
          }
          if (decision !== "approve" && decision !== "reject" && decision !== "show") {
            throw new BadInputError(`decision must be show, approve or reject, got ${JSON.stringify(decision)}`);
          }
          if (version === undefined) throw new BadInputError(`review ${decision} needs a model VERSION (see freshrec review or freshrec models list)`);
          const model = await registry.get(version);
          if (!model) throw new BadInputError(`unknown model version ${JSON.stringify(version)} (see freshrec models list)`);
          if (decision === "show") {
            const record = await reviewRecord(registry, model);
            return { json: record.json, text: record.text };
          }
          if (reason === undefined || reason.trim() === "") throw new BadInputError("--reason must not be empty: say why you approve or reject");
          if (model.status !== "halted" && model.status !== "candidate") {
            throw new BadInputError(`${version} is ${model.status}: only halted or candidate models are reviewed`);
          }
          const before = await reviewRecord(registry, model);
          const decided = decision === "approve" ? await registry.makeLive(version, `approved: ${reason}`) : await registry.setStatus(version, "rejected", `rejected: ${reason}`);
          const change = (await registry.history(version)).at(-1)!;
          return {
            json: { model: modelView(decided), change: statusChangeView(change), haltedBecause: before.json.haltedBecause, gates: before.json.gates },
            text: `${version} is now ${decided.status} (${change.reason}, ${iso(change.at)})`,
          };
        } finally {
          await registry.close();
        }
      }),
    );

  const models = program.command("models").description("the model registry");
  models
    .command("list")
    .description("every model version with lineage, status and data window")
    .addHelpText("after", "\nExample:\n  freshrec models list --json")
    .action(
      action(async (ctx) => {
        const registry = await ctx.openRegistry();
        try {
          const list = await registry.list();
          return { json: { live: (await registry.live())?.version ?? null, models: list.map(modelView) }, text: list.length ? list.map(modelLine).join("\n") : "no models yet: run freshrec pretrain" };
        } finally {
          await registry.close();
        }
      }),
    );
}
