#!/usr/bin/env node
// The CLI runs the built JavaScript, dist/cli/main.js (`npm run build`; in a clone, `npm ci` builds it through the
// `prepare` script, and `npm test`, `npm run demo` and `npm run freshrec` build first). No TypeScript loader is
// involved: without a build, or with one older than the sources of a checkout, the CLI refuses (exit code 2, the
// contract's bad-usage code) and says to build, rather than run something other than what the sources say.
import { existsSync, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(fileURLToPath(new URL(".", import.meta.url)), "..");
const entry = join(root, "dist", "cli", "main.js");

/** Exits 2 naming the problem, as one JSON error object on stdout too when --json asked for one. */
function refuse(message) {
  const end = process.argv.indexOf("--");
  if ((end < 0 ? process.argv : process.argv.slice(0, end)).includes("--json")) {
    process.stdout.write(`${JSON.stringify({ error: { code: "NOT_FOUND", message } })}\n`);
  }
  process.stderr.write(`freshrec: ${message}\n`);
  process.exit(2);
}

/** The first .ts file under dir modified after `since` (ms), as a path relative to the package root. */
function changedSince(dir, since) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      const found = changedSince(path, since);
      if (found) return found;
    } else if (entry.name.endsWith(".ts") && statSync(path).mtimeMs > since) {
      return relative(root, path);
    }
  }
  return undefined;
}

if (!existsSync(entry)) {
  refuse(`the CLI is not built (${relative(root, entry)} is missing): run \`npm run build\` in ${root}`);
}
// A source checkout (tsconfig.build.json is not shipped in the package): the build must be newer than every source.
if (existsSync(join(root, "tsconfig.build.json"))) {
  const buildInfo = join(root, "dist", ".tsbuildinfo");
  const builtAt = existsSync(buildInfo) ? statSync(buildInfo).mtimeMs : 0;
  const changed = changedSince(join(root, "src"), builtAt);
  if (changed) refuse(`the build in dist/ is older than ${changed}: run \`npm run build\` in ${root}`);
}
await import(pathToFileURL(entry).href);
