// asyncapi.mjs: validates an AsyncAPI document with the official parser
// (@asyncapi/parser, spectral ruleset included). Called by the Rust integration tests.
//
// stdin: one AsyncAPI document, YAML or JSON text.
// stderr: every diagnostic, one per line: "<severity> <code> <path>: <message>"
//         (severity: error | warning | info | hint).
// exit 1: if the document could not be parsed or any diagnostic is an error.
// stdout (exit 0): JSON summary:
//   { "version": "3.0.0",
//     "channels":   [{ "id", "address", "messages": [message ids] }],
//     "operations": [{ "id", "action", "channel": channel id }],
//     "messages":   [{ "id", "name", "headers": [header property names], "payload": bool }] }
import { readFileSync } from "node:fs";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const SEVERITY = { [DiagnosticSeverity.Error]: "error", [DiagnosticSeverity.Warning]: "warning",
  [DiagnosticSeverity.Information]: "info", [DiagnosticSeverity.Hint]: "hint" };

let text;
try {
  text = readFileSync(0, "utf-8");
} catch (e) {
  process.stderr.write(`cannot read stdin: ${e.message}\n`);
  process.exit(1);
}

const { document, diagnostics } = await new Parser().parse(text);
for (const d of diagnostics)
  process.stderr.write(`${SEVERITY[d.severity] ?? d.severity} ${d.code} ${(d.path ?? []).join(".") || "<root>"}: ${d.message}\n`);
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).length;
if (document === undefined || errors > 0) {
  process.stderr.write(`invalid AsyncAPI document (${errors} error(s)${document === undefined ? ", no document" : ""})\n`);
  process.exit(1);
}

const summary = {
  version: document.version(),
  channels: document.channels().all().map((c) => ({
    id: c.id(), address: c.address() ?? null, messages: c.messages().all().map((m) => m.id()),
  })),
  operations: document.operations().all().map((o) => ({
    id: o.id(), action: o.action(), channel: o.channels().all()[0]?.id() ?? null,
  })),
  messages: document.messages().all().map((m) => ({
    id: m.id(), name: m.name() ?? null,
    headers: Object.keys(m.headers()?.properties() ?? {}),
    payload: m.hasPayload(),
  })),
};
process.stdout.write(JSON.stringify(summary, null, 2) + "\n");
