/**
 * Record readers for the input formats: CSV/TSV (any single-byte delimiter, RFC 4180 quoting), JSON Lines and
 * Parquet. Each yields records with the line (or row) number they came from, so every bad row can be reported
 * as file:line. Encoding is checked per record: a record that is not valid in the declared encoding is a bad
 * row, not a crash and not silently mangled text.
 */
import { readFileSync, statSync } from "node:fs";
import { DuckDBInstance } from "@duckdb/node-api";
import { BadInputError } from "../../domain/errors.js";

export type FieldValue = string | number | Date | null;

export interface InputRecord {
  /** 1-based line in a text file, or 1-based row in a Parquet file. */
  readonly line: number;
  readonly values: Readonly<Record<string, FieldValue>>;
  /** Set when the record could not be read at all (bad encoding, bad JSON, wrong field count). */
  readonly problem?: { readonly field?: string; readonly problem: string };
}

export interface TextFormatOptions {
  /** @defaultValue from the file extension */
  readonly format?: InputFormat;
  /** @defaultValue "," (".tsv" files: tab) */
  readonly delimiter?: string;
  /** Column names when the file has no header line. @defaultValue the first line is the header */
  readonly columns?: readonly string[];
  /** @defaultValue "utf-8" */
  readonly encoding?: "utf-8" | "latin1";
  /** Whether `"` quotes fields; off for formats where it is a plain character (MovieLens 100k). @defaultValue true */
  readonly quoting?: boolean;
}

export type InputFormat = "csv" | "jsonl" | "parquet";

export function formatOf(path: string): InputFormat {
  const lower = path.toLowerCase();
  if (lower.endsWith(".jsonl") || lower.endsWith(".ndjson")) return "jsonl";
  if (lower.endsWith(".parquet")) return "parquet";
  if (lower.endsWith(".csv") || lower.endsWith(".tsv") || lower.endsWith(".txt")) return "csv";
  throw new BadInputError(`${path}: unknown file type; use .csv, .tsv, .jsonl or .parquet`);
}

export interface RecordFile {
  readonly records: InputRecord[];
  /** The header's (or schema's) column names; null for JSON Lines, where each line names its own fields. */
  readonly columns: readonly string[] | null;
}

/** Reads all records of a file in any supported format. */
export async function readRecords(path: string, options: TextFormatOptions = {}): Promise<RecordFile> {
  try {
    if (!statSync(path).isFile()) throw new BadInputError(`${path}: not a file`);
  } catch (error) {
    if (error instanceof BadInputError) throw error;
    throw new BadInputError(`${path}: cannot read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
  const format = options.format ?? formatOf(path);
  if (format === "parquet") return readParquet(path);
  const bytes = readFileSync(path);
  if (format === "jsonl") return { records: readJsonLines(bytes, options.encoding ?? "utf-8"), columns: null };
  const delimiter = options.delimiter ?? (path.toLowerCase().endsWith(".tsv") ? "\t" : ",");
  return readDelimited(path, bytes, { ...options, delimiter });
}

const NEWLINE = 0x0a;
const CR = 0x0d;
const QUOTE = 0x22;

/** Splits bytes into records (a quoted field may span lines), with the line each record starts on. */
function* splitRecords(bytes: Buffer, quoting: boolean): Generator<{ line: number; start: number; end: number }> {
  let line = 1;
  let start = 0;
  let startLine = 1;
  let quoted = false;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b === QUOTE && quoting) quoted = !quoted;
    else if (b === NEWLINE) {
      line++;
      if (!quoted) {
        const end = i > start && bytes[i - 1] === CR ? i - 1 : i;
        yield { line: startLine, start, end };
        start = i + 1;
        startLine = line;
      }
    }
  }
  if (start < bytes.length) yield { line: startLine, start, end: bytes.length };
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function decode(bytes: Buffer, start: number, end: number, encoding: "utf-8" | "latin1"): string | null {
  if (encoding === "latin1") return bytes.toString("latin1", start, end);
  // Pure ASCII is by far the common case and needs no validation.
  let ascii = true;
  for (let i = start; i < end; i++) {
    if (bytes[i] >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return bytes.toString("latin1", start, end);
  try {
    return strictUtf8.decode(bytes.subarray(start, end));
  } catch {
    return null;
  }
}

function splitFields(text: string, delimiter: string): string[] {
  if (!text.includes('"')) return text.split(delimiter);
  const fields: string[] = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i++;
        } else quoted = false;
      } else field += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === delimiter) {
      fields.push(field);
      field = "";
    } else field += ch;
  }
  fields.push(field);
  return fields;
}

function readDelimited(path: string, bytes: Buffer, options: TextFormatOptions & { delimiter: string }): RecordFile {
  const encoding = options.encoding ?? "utf-8";
  const records: InputRecord[] = [];
  let columns = options.columns ? [...options.columns] : null;
  let bom = bytes.length >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
  const quoting = options.quoting ?? true;
  for (const { line, start, end } of splitRecords(bytes, quoting)) {
    const text = decode(bytes, start + bom, end, encoding);
    bom = 0;
    if (text === null) {
      if (!columns) throw new BadInputError(`${path}:${line}: the header is not valid UTF-8`);
      records.push({ line, values: {}, problem: { problem: "not valid UTF-8 (wrong encoding?)" } });
      continue;
    }
    if (text.trim() === "") continue;
    const fields = quoting ? splitFields(text, options.delimiter) : text.split(options.delimiter);
    if (!columns) {
      columns = fields.map((f) => f.trim());
      continue;
    }
    if (fields.length !== columns.length) {
      records.push({ line, values: {}, problem: { problem: `expected ${columns.length} fields, found ${fields.length}` } });
      continue;
    }
    const values: Record<string, FieldValue> = {};
    for (let k = 0; k < columns.length; k++) values[columns[k]] = fields[k];
    records.push({ line, values });
  }
  if (!columns) throw new BadInputError(`${path}: empty file (no header line)`);
  return { records, columns };
}

function readJsonLines(bytes: Buffer, encoding: "utf-8" | "latin1"): InputRecord[] {
  const records: InputRecord[] = [];
  let line = 0;
  let start = 0;
  for (let i = 0; i <= bytes.length; i++) {
    if (i < bytes.length && bytes[i] !== NEWLINE) continue;
    line++;
    const text = decode(bytes, start, i > start && bytes[i - 1] === CR ? i - 1 : i, encoding);
    start = i + 1;
    if (text === null) {
      records.push({ line, values: {}, problem: { problem: "not valid UTF-8 (wrong encoding?)" } });
      continue;
    }
    if (text.trim() === "") continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      records.push({ line, values: {}, problem: { problem: "not valid JSON" } });
      continue;
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      records.push({ line, values: {}, problem: { problem: "a line must be one JSON object" } });
      continue;
    }
    const values: Record<string, FieldValue> = {};
    for (const [k, v] of Object.entries(parsed)) values[k] = typeof v === "number" || typeof v === "string" ? v : v === null ? null : JSON.stringify(v);
    records.push({ line, values });
  }
  return records;
}

async function readParquet(path: string): Promise<RecordFile> {
  const instance = await DuckDBInstance.create(":memory:");
  const connection = await instance.connect();
  try {
    const reader = await connection.runAndReadAll("SELECT * FROM read_parquet($path)", { path });
    const rows = reader.getRowObjectsJS();
    const records = rows.map((row, k) => {
      const values: Record<string, FieldValue> = {};
      for (const [key, v] of Object.entries(row)) {
        values[key] = v === null || v === undefined ? null : typeof v === "bigint" ? Number(v) : v instanceof Date || typeof v === "number" || typeof v === "string" ? v : String(v);
      }
      return { line: k + 1, values };
    });
    return { records, columns: reader.columnNames() };
  } catch (error) {
    throw new BadInputError(`${path}: not a readable Parquet file (${(error as Error).message})`, [], { cause: error });
  } finally {
    connection.closeSync();
    instance.closeSync();
  }
}
