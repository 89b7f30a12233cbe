/**
 * An experiment: named arms, each bound to a table (a version, the live table, or the newest table of a strategy),
 * a traffic split by weights, and a salt. A user's arm is a pure function of (salt, user id): sha256 of both, read as
 * a number in [0, 1), placed on the cumulative weights. The same user always lands in the same arm, on every server
 * and after every restart; a new salt reshuffles everyone independently of earlier experiments.
 *
 * @example
 * const experiment = parseExperimentDefinition({
 *   name: "rag-vs-monthly", salt: "2025-12",
 *   arms: [{ name: "control", table: "strategy:finetune-monthly" }, { name: "treatment", table: "live" }],
 * });
 * assignArm(experiment, "u000123"); // "treatment", forever
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { BadInputError } from "../../domain/errors.js";

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export const experimentArmSchema = z
  .object({
    name: z.string().regex(NAME, "1-64 letters, digits, '.', '_' or '-'").describe("Arm name (the first arm is the control unless `control` says otherwise)."),
    table: z
      .string()
      .regex(/^(live|t\d+|strategy:.+)$/, 'expected "live", a table version like t000042, or strategy:NAME')
      .describe('What the arm serves: "live", a table version, or "strategy:NAME" (the newest finished table of that strategy).'),
    weight: z.number().positive().default(1).describe("Share of traffic, relative to the other arms' weights."),
  })
  .strict();

export const experimentDefinitionSchema = z
  .object({
    name: z.string().regex(NAME, "1-64 letters, digits, '.', '_' or '-'").describe("Experiment name."),
    salt: z.string().min(1).max(200).optional().describe("Hash salt of the assignment; default: the name."),
    control: z.string().optional().describe("The arm the others are compared with; default: the first arm."),
    description: z.string().max(2000).optional(),
    arms: z.array(experimentArmSchema).min(2).max(10),
  })
  .strict()
  .superRefine((d, ctx) => {
    const names = d.arms.map((a) => a.name);
    names.forEach((n, i) => {
      if (names.indexOf(n) !== i) ctx.addIssue({ code: "custom", path: ["arms", i, "name"], message: `arm name ${JSON.stringify(n)} repeats` });
    });
    if (d.control !== undefined && !names.includes(d.control)) {
      ctx.addIssue({ code: "custom", path: ["control"], message: `control ${JSON.stringify(d.control)} is not an arm` });
    }
  });

export type ExperimentDefinitionInput = z.input<typeof experimentDefinitionSchema>;

export interface ExperimentArm {
  readonly name: string;
  readonly table: string;
  readonly weight: number;
}

export interface ExperimentDefinition {
  readonly name: string;
  readonly salt: string;
  readonly control: string;
  readonly description: string | null;
  readonly arms: readonly ExperimentArm[];
}

export type ExperimentStatus = "active" | "stopped";

export interface Experiment extends ExperimentDefinition {
  readonly status: ExperimentStatus;
  readonly createdAt: number;
  readonly stoppedAt: number | null;
}

/** Validates a definition; errors name the field (arms.1.table) and what was expected. */
export function parseExperimentDefinition(input: unknown): ExperimentDefinition {
  const result = experimentDefinitionSchema.safeParse(input);
  if (!result.success) {
    const problems = result.error.issues.map((i) => ({ file: "experiment", line: 0, field: i.path.join("."), problem: i.message }));
    throw new BadInputError(`experiment definition: ${problems.map((p) => `${p.field || "(root)"}: ${p.problem}`).join("; ")}`, problems);
  }
  const d = result.data;
  return {
    name: d.name,
    salt: d.salt ?? d.name,
    control: d.control ?? d.arms[0].name,
    description: d.description ?? null,
    arms: d.arms.map((a) => ({ name: a.name, table: a.table, weight: a.weight })),
  };
}

/** A uniform number in [0, 1) from (salt, user id): 48 bits of sha256. */
export function assignmentPoint(salt: string, userId: string): number {
  const digest = createHash("sha256").update(salt).update("\u0000").update(userId).digest();
  return digest.readUIntBE(0, 6) / 2 ** 48;
}

/** The arm of a user: deterministic for (salt, user id, arms and weights). */
export function assignArm(definition: Pick<ExperimentDefinition, "salt" | "arms">, userId: string): ExperimentArm {
  const total = definition.arms.reduce((s, a) => s + a.weight, 0);
  const point = assignmentPoint(definition.salt, userId) * total;
  let cumulative = 0;
  for (const arm of definition.arms) {
    cumulative += arm.weight;
    if (point < cumulative) return arm;
  }
  return definition.arms[definition.arms.length - 1];
}
