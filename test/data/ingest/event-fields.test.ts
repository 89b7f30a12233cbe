/** The shared rules of an event's fields (src/data/ingest/event-fields.ts) and the calendar check of parseTime. */
import { describe, expect, it } from "vitest";
import { decodeUtf8KeepingErrors, eventEngagement, eventTime, idProblem, MAX_ID_LENGTH, textProblem } from "../../../src/data/ingest/event-fields.js";
import { parseTime } from "../../../src/domain/clock.js";

describe("event field rules", () => {
  it("takes only dates the calendar has (leap years included) and says which month is short", () => {
    for (const ok of ["2024-02-29", "2000-02-29T12:00:00Z", "2025-04-30", "2025-12-31T23:59:59Z"]) expect(parseTime(ok), ok).not.toBeNaN();
    for (const bad of ["2025-02-29", "1900-02-29", "2025-04-31", "2025-02-30T10:00:00Z", "2025-13-01", "2025-00-10", "2025-01-00"]) expect(parseTime(bad), bad).toBeNaN();
    expect(eventTime("2025-02-30")).toEqual({ problem: expect.stringContaining("February 2025 has 28 days") });
    expect(eventTime("2025-02-27T10:00:00Z")).toBe(Date.UTC(2025, 1, 27, 10));
    expect(eventTime(1_740_650_400)).toBe(1_740_650_400_000); // unix seconds
    expect(eventTime("yesterday")).toEqual({ problem: expect.stringContaining("not a time") });
    expect(eventTime("2300-01-01")).toEqual({ problem: expect.stringContaining("between") });
    expect(eventTime("")).toEqual({ problem: "missing" });
  });

  it("refuses engagements float32 cannot hold instead of storing Infinity or 0", () => {
    expect(eventEngagement("0.5")).toBe(0.5);
    expect(eventEngagement(3.4e38)).toBe(3.4e38);
    expect(eventEngagement(null)).toBeNull();
    expect(eventEngagement(" ")).toBeNull();
    expect(eventEngagement(1e39)).toEqual({ problem: expect.stringContaining("float32") });
    expect(eventEngagement("-1e39")).toEqual({ problem: expect.stringContaining("float32") });
    expect(eventEngagement(1e-50)).toEqual({ problem: expect.stringContaining("stored as 0") });
    expect(eventEngagement("high")).toEqual({ problem: 'not a number: "high"' });
  });

  it("refuses ids that are empty, too long or not text", () => {
    expect(idProblem("u1")).toBeNull();
    expect(idProblem("x".repeat(MAX_ID_LENGTH))).toBeNull();
    expect(idProblem("x".repeat(MAX_ID_LENGTH + 1))).toMatch(/longer than 256/);
    expect(idProblem("")).toBe("missing");
    expect(idProblem("bad\udc80")).toMatch(/not valid UTF-8/);
    expect(textProblem("emoji 😀 and é")).toBeNull();
  });

  it("decodes valid UTF-8 as TextDecoder does, and keeps each byte of an invalid sequence as a lone surrogate", () => {
    const valid = Buffer.from("plain, é, 中文, 😀, \ufeff", "utf8");
    expect(decodeUtf8KeepingErrors(valid)).toBe(new TextDecoder("utf-8", { ignoreBOM: true }).decode(valid));
    const cases: [number[], string][] = [
      [[0x61, 0xff, 0x62], "a\udcffb"], // never a UTF-8 byte
      [[0xc0, 0x80], "\udcc0\udc80"], // overlong NUL
      [[0xed, 0xa0, 0x80], "\udced\udca0\udc80"], // an encoded UTF-16 surrogate
      [[0xf4, 0x90, 0x80, 0x80], "\udcf4\udc90\udc80\udc80"], // past U+10FFFF
      [[0x61, 0xe4, 0xb8], "a\udce4\udcb8"], // cut short at the end
    ];
    for (const [bytes, expected] of cases) {
      const text = decodeUtf8KeepingErrors(Uint8Array.from(bytes));
      expect(text, bytes.join(" ")).toBe(expected);
      expect(textProblem(text)).not.toBeNull();
    }
  });
});
