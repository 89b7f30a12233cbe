/**
 * The admin token through the CLI: FRESHREC_ADMIN_TOKEN obeys the rule serve.adminToken obeys (at least 16
 * characters), and `freshrec config` never prints the token.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { adminToken } from "../../src/cli/commands/serve.js";
import { parseConfig } from "../../src/cli/config.js";
import { ConfigError } from "../../src/domain/errors.js";
import { runCli } from "./run.js";
import { tempDir } from "../temp-dir.js";

const ws = tempDir("freshrec-admin-token-");

const freshrec = (args: string[], env: Record<string, string> = {}) => runCli(["--workspace", ws, ...args], { env, timeoutMs: 60_000 });

describe("the admin token", () => {
  const saved = process.env.FRESHREC_ADMIN_TOKEN;
  afterEach(() => {
    if (saved === undefined) delete process.env.FRESHREC_ADMIN_TOKEN;
    else process.env.FRESHREC_ADMIN_TOKEN = saved;
  });

  it("FRESHREC_ADMIN_TOKEN is held to serve.adminToken's rule (at least 16 characters), and the refusal does not echo it", () => {
    const config = parseConfig({});
    expect(() => parseConfig({ serve: { adminToken: "short-secret" } })).toThrow(ConfigError);
    process.env.FRESHREC_ADMIN_TOKEN = "short-secret";
    let refusal: unknown = null;
    try {
      adminToken(config);
    } catch (error) {
      refusal = error;
    }
    expect(refusal).toBeInstanceOf(ConfigError);
    expect((refusal as Error).message).toMatch(/FRESHREC_ADMIN_TOKEN.*16 characters/);
    expect((refusal as Error).message).not.toContain("short-secret");
    process.env.FRESHREC_ADMIN_TOKEN = "a-long-enough-admin-token";
    expect(adminToken(config)).toBe("a-long-enough-admin-token");
    process.env.FRESHREC_ADMIN_TOKEN = "";
    expect(adminToken(config)).toBeNull(); // empty: none, as documented
  });

  it("parseConfig never prints an invalid serve.adminToken, only what is wrong with it (its length, or its type)", () => {
    const refusal = (raw: unknown): ConfigError => {
      try {
        parseConfig(raw, "freshrec.config.json");
      } catch (error) {
        expect(error).toBeInstanceOf(ConfigError);
        return error as ConfigError;
      }
      throw new Error("the config was accepted");
    };
    const short = refusal({ serve: { adminToken: "short-secret" } });
    expect(short.message).not.toContain("short-secret");
    expect(short.message).toMatch(/serve\.adminToken/);
    expect(short.message).toMatch(/a string of 12 characters/);
    expect(short.message).toMatch(/16/);
    const issue = short.issues.find((i) => i.path === "serve.adminToken");
    expect(issue?.message).not.toContain("short-secret");
    // A token of the wrong type is not printed either (a number can be a secret too).
    const numeric = refusal({ serve: { adminToken: 918273645 } });
    expect(numeric.message).not.toContain("918273645");
    expect(numeric.message).toMatch(/serve\.adminToken": got a number/);
    // Other fields still show what was given.
    expect(refusal({ serve: { port: "eighty" } }).message).toContain('got "eighty"');
  });

  it("freshrec serve refuses a short FRESHREC_ADMIN_TOKEN with exit 2 before it serves", () => {
    const r = freshrec(["serve", "--port", "0"], { FRESHREC_ADMIN_TOKEN: "short-secret" });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/FRESHREC_ADMIN_TOKEN/);
    expect(r.stderr).not.toContain("short-secret");
  });

  it("freshrec config prints the effective config with the admin token redacted (text and --json)", () => {
    const token = "a-very-secret-admin-token-0123";
    const file = join(ws, "with-token.json");
    writeFileSync(file, JSON.stringify({ serve: { adminToken: token } }));
    const text = freshrec(["--config", file, "config"]);
    expect(text.status).toBe(0);
    expect(text.stdout).not.toContain(token);
    expect(JSON.parse(text.stdout).serve.adminToken).toBe("[redacted]");
    const json = freshrec(["--config", file, "--json", "config"]);
    expect(json.stdout).not.toContain(token);
    expect(JSON.parse(json.stdout).serve.adminToken).toBe("[redacted]");
    // No token configured: nothing to hide, null stays null.
    expect(JSON.parse(freshrec(["config"]).stdout).serve.adminToken).toBeNull();
    // The shared store's URL keeps its host and database but not its password.
    const withStore = join(ws, "with-store.json");
    writeFileSync(withStore, JSON.stringify({ store: { url: "postgres://freshrec:pg-secret-9@db.internal:5432/recs" } }));
    const shown = freshrec(["--config", withStore, "--json", "config"]);
    expect(shown.stdout).not.toContain("pg-secret-9");
    expect(JSON.parse(shown.stdout).store.url).toBe("postgres://freshrec:***@db.internal:5432/recs");
  });
});
