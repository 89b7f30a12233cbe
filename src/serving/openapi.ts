/**
 * The OpenAPI 3.1 document of the API, generated from the same route specs (and zod schemas) the server registers,
 * with zod 4's own `z.toJSONSchema`.
 */
import { z } from "zod";
import { errorResponseSchema } from "./schemas.js";

export interface RouteSpec {
  readonly method: "GET" | "POST";
  /** Fastify path (`/v1/users/:id/exploration`). */
  readonly url: string;
  readonly summary: string;
  readonly description?: string;
  readonly tag: string;
  /** Needs the admin bearer token. */
  readonly admin?: boolean;
  readonly params?: z.ZodObject;
  readonly querystring?: z.ZodObject;
  readonly body?: z.ZodType;
  readonly headers?: readonly { readonly name: string; readonly description: string; readonly required?: boolean }[];
  /** Success responses: a zod schema (JSON) or a content type with a description. */
  readonly responses: Readonly<Record<number, z.ZodType | { readonly contentType: string; readonly description: string }>>;
  /** Error statuses the route may answer (bodies follow the error schema). */
  readonly errors?: readonly number[];
}

const ERROR_TEXT: Record<number, string> = {
  400: "Bad input: the body or a parameter does not validate (issues name the index and field).",
  401: "No bearer token.",
  403: "Wrong bearer token, or admin routes are disabled (no token configured).",
  404: "Not found.",
  409: "Conflict (an idempotency key reused with another body).",
  413: "Body too large, or too many events in one batch.",
  415: "Unsupported media type (send application/json).",
  500: "Internal error (the log has the request id).",
  503: "Not ready.",
};

function jsonSchema(schema: z.ZodType, io: "input" | "output"): Record<string, unknown> {
  const out = z.toJSONSchema(schema, { io, unrepresentable: "any" }) as Record<string, unknown>;
  delete out.$schema;
  return out;
}

function parameters(where: "path" | "query", schema: z.ZodObject | undefined): unknown[] {
  if (!schema) return [];
  const json = jsonSchema(schema, "input") as { properties?: Record<string, Record<string, unknown>>; required?: string[] };
  return Object.entries(json.properties ?? {}).map(([name, property]) => {
    const { description, ...rest } = property;
    return { name, in: where, required: where === "path" || (json.required ?? []).includes(name), description, schema: rest };
  });
}

export function openApiDocument(routes: readonly RouteSpec[], info: { title: string; version: string }): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const path = route.url.replace(/:([A-Za-z0-9_]+)/g, "{$1}");
    const responses: Record<string, unknown> = {};
    for (const [status, response] of Object.entries(route.responses)) {
      if ("contentType" in response && typeof response.contentType === "string") {
        responses[status] = { description: response.description, content: { [response.contentType]: { schema: { type: "string" } } } };
      } else {
        responses[status] = { description: "OK", content: { "application/json": { schema: jsonSchema(response as z.ZodType, "output") } } };
      }
    }
    const errors = [...(route.errors ?? []), ...(route.admin ? [401, 403] : []), 500];
    for (const status of [...new Set(errors)].sort()) {
      responses[String(status)] = { description: ERROR_TEXT[status] ?? "Error", content: { "application/json": { schema: { $ref: "#/components/schemas/Error" } } } };
    }
    paths[path] ??= {};
    paths[path][route.method.toLowerCase()] = {
      summary: route.summary,
      ...(route.description ? { description: route.description } : {}),
      tags: [route.tag],
      operationId: `${route.method.toLowerCase()}${path.replace(/[{}]/g, "").replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ? c.toUpperCase() : ""))}`,
      parameters: [
        ...parameters("path", route.params),
        ...parameters("query", route.querystring),
        ...(route.headers ?? []).map((h) => ({ name: h.name, in: "header", required: h.required ?? false, description: h.description, schema: { type: "string" } })),
      ],
      ...(route.body ? { requestBody: { required: true, content: { "application/json": { schema: jsonSchema(route.body, "input") } } } } : {}),
      responses,
      ...(route.admin ? { security: [{ adminToken: [] }] } : {}),
    };
  }
  return {
    openapi: "3.1.0",
    info,
    paths,
    components: {
      securitySchemes: { adminToken: { type: "http", scheme: "bearer", description: "serve.adminToken or FRESHREC_ADMIN_TOKEN" } },
      schemas: { Error: jsonSchema(errorResponseSchema, "output") },
    },
  };
}
