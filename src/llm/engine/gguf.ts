/**
 * A small GGUF (version 3) writer and a defensive reader. No npm package writes GGUF tensors, so freshrec writes
 * its own llama-architecture files; the reader validates any file before llama.cpp sees it, because llama.cpp
 * aborts the whole process on some malformed files instead of returning an error.
 *
 * @example
 * writeGguf("/tmp/m.gguf", { kvs: [{ key: "general.architecture", type: "string", value: "llama" }], tensors: [] });
 * const file = readGgufFile("/tmp/m.gguf"); // throws FreshrecError("ENGINE") on corrupt or foreign files
 */
import { closeSync, openSync, readSync, writeSync, fstatSync } from "node:fs";
import { FreshrecError } from "../../domain/errors.js";

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
export const GGUF_VERSION = 3;
const DEFAULT_ALIGNMENT = 32;

/** GGUF metadata value types (gguf.h). */
export const GgufType = {
  U8: 0,
  I8: 1,
  U16: 2,
  I16: 3,
  U32: 4,
  I32: 5,
  F32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  U64: 10,
  I64: 11,
  F64: 12,
} as const;

export type GgufScalarKind = "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "bool" | "string" | "u64" | "i64" | "f64";

export type GgufKv =
  | { readonly key: string; readonly type: Exclude<GgufScalarKind, "string" | "bool">; readonly value: number }
  | { readonly key: string; readonly type: "bool"; readonly value: boolean }
  | { readonly key: string; readonly type: "string"; readonly value: string }
  | {
      readonly key: string;
      readonly type: "array";
      readonly elementType: GgufScalarKind;
      readonly value: readonly (number | string | boolean)[];
    };

export interface GgufTensor {
  readonly name: string;
  /** ggml order: ne0 (innermost, contiguous) first. */
  readonly dims: readonly number[];
  /** F32 only: freshrec trains full-weight F32. */
  readonly data: Float32Array;
}

export interface GgufContent {
  readonly kvs: readonly GgufKv[];
  readonly tensors: readonly GgufTensor[];
}

const KIND_CODE: Record<GgufScalarKind, number> = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  u64: 10,
  i64: 11,
  f64: 12,
};
const CODE_KIND: Record<number, GgufScalarKind> = Object.fromEntries(
  Object.entries(KIND_CODE).map(([k, v]) => [v, k as GgufScalarKind]),
);
const SCALAR_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

/** Growable little-endian byte sink for the header. */
class ByteSink {
  private buf = Buffer.alloc(1 << 16);
  length = 0;
  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u32(v: number): void {
    this.ensure(4);
    this.buf.writeUInt32LE(v >>> 0, this.length);
    this.length += 4;
  }
  u64(v: number | bigint): void {
    this.ensure(8);
    this.buf.writeBigUInt64LE(BigInt(v), this.length);
    this.length += 8;
  }
  str(s: string): void {
    const b = Buffer.from(s, "utf8");
    this.u64(b.length);
    this.bytes(b);
  }
  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  scalar(kind: GgufScalarKind, v: number | string | boolean): void {
    this.ensure(8);
    const o = this.length;
    switch (kind) {
      case "u8": this.buf.writeUInt8(Number(v), o); this.length += 1; break;
      case "i8": this.buf.writeInt8(Number(v), o); this.length += 1; break;
      case "u16": this.buf.writeUInt16LE(Number(v), o); this.length += 2; break;
      case "i16": this.buf.writeInt16LE(Number(v), o); this.length += 2; break;
      case "u32": this.buf.writeUInt32LE(Number(v) >>> 0, o); this.length += 4; break;
      case "i32": this.buf.writeInt32LE(Number(v), o); this.length += 4; break;
      case "f32": this.buf.writeFloatLE(Number(v), o); this.length += 4; break;
      case "bool": this.buf.writeUInt8(v ? 1 : 0, o); this.length += 1; break;
      case "u64": this.buf.writeBigUInt64LE(BigInt(v as number), o); this.length += 8; break;
      case "i64": this.buf.writeBigInt64LE(BigInt(v as number), o); this.length += 8; break;
      case "f64": this.buf.writeDoubleLE(Number(v), o); this.length += 8; break;
      case "string": this.str(String(v)); break;
    }
  }
  pad(alignment: number): void {
    const n = (alignment - (this.length % alignment)) % alignment;
    this.bytes(new Uint8Array(n));
  }
  view(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function writeKv(sink: ByteSink, kv: GgufKv): void {
  sink.str(kv.key);
  if (kv.type === "array") {
    sink.u32(GgufType.ARRAY);
    sink.u32(KIND_CODE[kv.elementType]);
    sink.u64(kv.value.length);
    for (const v of kv.value) sink.scalar(kv.elementType, v);
  } else {
    sink.u32(KIND_CODE[kv.type]);
    sink.scalar(kv.type, kv.value);
  }
}

function alignmentOf(kvs: readonly GgufKv[]): number {
  const kv = kvs.find((k) => k.key === "general.alignment");
  return kv && kv.type !== "array" && typeof kv.value === "number" ? kv.value : DEFAULT_ALIGNMENT;
}

/** Writes a GGUF v3 file with F32 tensors. */
export function writeGguf(path: string, content: GgufContent): void {
  const alignment = alignmentOf(content.kvs);
  const header = new ByteSink();
  header.u32(GGUF_MAGIC);
  header.u32(GGUF_VERSION);
  header.u64(content.tensors.length);
  header.u64(content.kvs.length);
  for (const kv of content.kvs) writeKv(header, kv);
  let offset = 0;
  const offsets: number[] = [];
  for (const t of content.tensors) {
    const count = t.dims.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw new FreshrecError("INTERNAL", `tensor ${t.name}: dims ${t.dims.join("x")} do not match ${t.data.length} values`);
    }
    header.str(t.name);
    header.u32(t.dims.length);
    for (const d of t.dims) header.u64(d);
    header.u32(0); // GGML_TYPE_F32
    header.u64(offset);
    offsets.push(offset);
    offset += Math.ceil((t.data.byteLength) / alignment) * alignment;
  }
  header.pad(alignment);
  const fd = openSync(path, "w");
  try {
    writeSync(fd, header.view());
    const zeros = new Uint8Array(alignment);
    for (const t of content.tensors) {
      const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      writeSync(fd, bytes);
      const pad = (alignment - (bytes.length % alignment)) % alignment;
      if (pad) writeSync(fd, zeros, 0, pad);
    }
  } finally {
    closeSync(fd);
  }
}

// ---- reader ----

export interface GgufTensorInfo {
  readonly name: string;
  readonly dims: readonly number[];
  readonly type: number;
  /** Offset relative to the start of the data section. */
  readonly offset: number;
}

export interface GgufFile {
  readonly path: string;
  readonly version: number;
  readonly kvs: ReadonlyMap<string, GgufKv>;
  /** KVs in file order (for rewriting). */
  readonly kvList: readonly GgufKv[];
  readonly tensors: readonly GgufTensorInfo[];
  readonly alignment: number;
  /** Absolute file offset of the data section. */
  readonly dataOffset: number;
  readonly fileSize: number;
}

/** Bytes per element for the ggml types a llama GGUF may use; block types give [blockBytes, blockSize]. */
const GGML_TYPE_BLOCK: Record<number, [number, number]> = {
  0: [4, 1], // F32
  1: [2, 1], // F16
  2: [18, 32], // Q4_0
  3: [20, 32], // Q4_1
  6: [22, 32], // Q5_0
  7: [24, 32], // Q5_1
  8: [34, 32], // Q8_0
  9: [36, 32], // Q8_1
  10: [84, 256], // Q2_K
  11: [110, 256], // Q3_K
  12: [144, 256], // Q4_K
  13: [176, 256], // Q5_K
  14: [210, 256], // Q6_K
  15: [292, 256], // Q8_K
  24: [1, 1], // I8
  25: [2, 1], // I16
  26: [4, 1], // I32
  27: [8, 1], // I64
  28: [8, 1], // F64
  30: [2, 1], // BF16
};

/** Reads header bytes on demand so a multi-GB foreign model is never loaded whole just to check it. */
class FileCursor {
  private chunk = Buffer.alloc(0);
  private chunkStart = 0;
  pos = 0;
  constructor(
    private readonly fd: number,
    readonly size: number,
    private readonly path: string,
  ) {}
  private need(n: number): number {
    if (n < 0 || this.pos + n > this.size) {
      throw corrupt(this.path, `truncated at byte ${this.pos} (needs ${n} more bytes, file has ${this.size})`);
    }
    if (this.pos < this.chunkStart || this.pos + n > this.chunkStart + this.chunk.length) {
      const len = Math.min(Math.max(n, 1 << 20), this.size - this.pos);
      this.chunk = Buffer.alloc(len);
      readSync(this.fd, this.chunk, 0, len, this.pos);
      this.chunkStart = this.pos;
    }
    const at = this.pos - this.chunkStart;
    this.pos += n;
    return at;
  }
  u8(): number { const o = this.need(1); return this.chunk.readUInt8(o); }
  u32(): number { const o = this.need(4); return this.chunk.readUInt32LE(o); }
  u64(): number {
    const o = this.need(8);
    const v = this.chunk.readBigUInt64LE(o);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(this.path, `implausible 64-bit value ${v}`);
    return Number(v);
  }
  str(): string {
    const len = this.u64();
    if (len > 1 << 24) throw corrupt(this.path, `implausible string length ${len}`);
    const o = this.need(len);
    return this.chunk.toString("utf8", o, o + len);
  }
  scalar(code: number): number | string | boolean {
    switch (code) {
      case 0: return this.u8();
      case 1: { const o = this.need(1); return this.chunk.readInt8(o); }
      case 2: { const o = this.need(2); return this.chunk.readUInt16LE(o); }
      case 3: { const o = this.need(2); return this.chunk.readInt16LE(o); }
      case 4: return this.u32();
      case 5: { const o = this.need(4); return this.chunk.readInt32LE(o); }
      case 6: { const o = this.need(4); return this.chunk.readFloatLE(o); }
      case 7: return this.u8() !== 0;
      case 8: return this.str();
      case 10: return this.u64();
      case 11: { const o = this.need(8); return Number(this.chunk.readBigInt64LE(o)); }
      case 12: { const o = this.need(8); return this.chunk.readDoubleLE(o); }
      default: throw corrupt(this.path, `unknown metadata value type ${code}`);
    }
  }
}

function corrupt(path: string, detail: string): FreshrecError {
  return new FreshrecError("ENGINE", `${path} is not a valid GGUF model file: ${detail}`);
}

/**
 * Parses and validates a GGUF file's header, metadata and tensor table (not the tensor data). Any problem
 * (wrong magic, truncation, tensors pointing past the end, unknown types) is a FreshrecError with code ENGINE.
 */
export function readGgufFile(path: string): GgufFile {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (cause) {
    throw new FreshrecError("ENGINE", `cannot open model file ${path}`, { cause });
  }
  try {
    const size = fstatSync(fd).size;
    const c = new FileCursor(fd, size, path);
    if (size < 24) throw corrupt(path, `only ${size} bytes`);
    const magic = c.u32();
    if (magic !== GGUF_MAGIC) throw corrupt(path, "wrong magic (not a GGUF file)");
    const version = c.u32();
    if (version !== 2 && version !== 3) throw corrupt(path, `unsupported GGUF version ${version}`);
    const nTensors = c.u64();
    const nKv = c.u64();
    if (nTensors > 1_000_000 || nKv > 1_000_000) throw corrupt(path, `implausible counts (${nTensors} tensors, ${nKv} keys)`);
    const kvList: GgufKv[] = [];
    const kvs = new Map<string, GgufKv>();
    for (let i = 0; i < nKv; i++) {
      const key = c.str();
      const type = c.u32();
      let kv: GgufKv;
      if (type === GgufType.ARRAY) {
        const elementCode = c.u32();
        const kind = CODE_KIND[elementCode];
        if (!kind) throw corrupt(path, `key ${key}: unknown array element type ${elementCode}`);
        const n = c.u64();
        if (n > 50_000_000) throw corrupt(path, `key ${key}: implausible array length ${n}`);
        const minBytes = elementCode === GgufType.STRING ? 8 : SCALAR_SIZE[elementCode];
        if (c.pos + n * minBytes > size) throw corrupt(path, `key ${key}: array runs past the end of the file`);
        const value: (number | string | boolean)[] = new Array(n);
        for (let j = 0; j < n; j++) value[j] = c.scalar(elementCode);
        kv = { key, type: "array", elementType: kind, value };
      } else {
        const kind = CODE_KIND[type];
        if (!kind) throw corrupt(path, `key ${key}: unknown value type ${type}`);
        kv = { key, type: kind, value: c.scalar(type) } as GgufKv;
      }
      kvList.push(kv);
      kvs.set(key, kv);
    }
    const tensors: GgufTensorInfo[] = [];
    for (let i = 0; i < nTensors; i++) {
      const name = c.str();
      const nDims = c.u32();
      if (nDims < 1 || nDims > 4) throw corrupt(path, `tensor ${name}: ${nDims} dimensions`);
      const dims: number[] = [];
      for (let d = 0; d < nDims; d++) dims.push(c.u64());
      const type = c.u32();
      const offset = c.u64();
      tensors.push({ name, dims, type, offset });
    }
    const alignKv = kvs.get("general.alignment");
    const alignment = alignKv && alignKv.type !== "array" && typeof alignKv.value === "number" ? alignKv.value : DEFAULT_ALIGNMENT;
    if (!(alignment > 0 && (alignment & (alignment - 1)) === 0)) throw corrupt(path, `bad alignment ${alignment}`);
    const dataOffset = Math.ceil(c.pos / alignment) * alignment;
    for (const t of tensors) {
      const block = GGML_TYPE_BLOCK[t.type];
      if (!block) throw corrupt(path, `tensor ${t.name}: unsupported ggml type ${t.type}`);
      const elements = t.dims.reduce((a, b) => a * b, 1);
      const bytes = Math.ceil(elements / block[1]) * block[0];
      if (t.offset % alignment !== 0) throw corrupt(path, `tensor ${t.name}: misaligned data offset ${t.offset}`);
      if (dataOffset + t.offset + bytes > size) {
        throw corrupt(path, `tensor ${t.name} needs ${bytes} bytes at ${dataOffset + t.offset} but the file has ${size} (truncated?)`);
      }
    }
    return { path, version, kvs, kvList, tensors, alignment, dataOffset, fileSize: size };
  } finally {
    closeSync(fd);
  }
}

/** A scalar metadata value, or undefined when absent or of another shape. */
export function ggufValue(file: GgufFile, key: string): number | string | boolean | undefined {
  const kv = file.kvs.get(key);
  return kv && kv.type !== "array" ? kv.value : undefined;
}

export function ggufArray(file: GgufFile, key: string): readonly (number | string | boolean)[] | undefined {
  const kv = file.kvs.get(key);
  return kv && kv.type === "array" ? kv.value : undefined;
}

/** Reads one F32 tensor's values (used to copy weights when re-stamping metadata). */
export function readTensorF32(file: GgufFile, name: string): Float32Array {
  const t = file.tensors.find((x) => x.name === name);
  if (!t) throw corrupt(file.path, `tensor ${name} missing`);
  if (t.type !== 0) throw corrupt(file.path, `tensor ${name} is not F32`);
  const count = t.dims.reduce((a, b) => a * b, 1);
  const out = new Float32Array(count);
  const fd = openSync(file.path, "r");
  try {
    readSync(fd, new Uint8Array(out.buffer), 0, count * 4, file.dataOffset + t.offset);
  } finally {
    closeSync(fd);
  }
  return out;
}
