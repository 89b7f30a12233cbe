/**
 * `placeModelFile`: a model file from outside a registry's workspace placed under its models folder, linked where the
 * filesystem allows and copied (once, whole) from another filesystem, replacing a partial file a crash left.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { placeModelFile } from "../../src/llm/registry.js";
import { tempDir } from "../temp-dir.js";

describe("placeModelFile", () => {
  it("links a file on the same filesystem, creating the folders and replacing a partial file left before", () => {
    const dir = tempDir("freshrec-place-");
    const source = join(dir, "model.gguf");
    writeFileSync(source, "weights");
    const target = join(dir, "ws", "models", "start", "model.gguf");
    // A crash between the link and the rename left a partial file: the next placement is not stopped by it.
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(`${target}.partial`, "half");
    expect(placeModelFile(source, target)).toBe(target);
    expect(statSync(target).ino).toBe(statSync(source).ino);
    expect(existsSync(`${target}.partial`)).toBe(false);
  });

  // /dev/shm is a filesystem of its own on most Linux machines: there a link fails (EXDEV) and the file is copied.
  const shm = "/dev/shm";
  const otherDevice = existsSync(shm) && statSync(shm).dev !== statSync(tempDir("freshrec-place-")).dev;
  it.skipIf(!otherDevice)("copies a file from another filesystem, whole", () => {
    const from = mkdtempSync(join(shm, "freshrec-place-"));
    try {
      const source = join(from, "model.gguf");
      writeFileSync(source, "weights from elsewhere");
      const target = join(tempDir("freshrec-place-"), "models", "model.gguf");
      placeModelFile(source, target);
      expect(statSync(target).ino).not.toBe(statSync(source).ino);
      expect(readFileSync(target, "utf8")).toBe("weights from elsewhere");
    } finally {
      rmSync(from, { recursive: true, force: true });
    }
  });
});
