// cloudevents.mjs: validates relay messages as CloudEvents 1.0 using the official
// JS SDK (cloudevents@10.0.0). Called by the Rust integration tests as a subprocess.
//
// stdin: ONE JSON array of messages:
//   { "binding": "kafka" | "amqp",
//     "headers": { "<name>": "<string value>" },
//     "content_type": string | null,   // amqp: the AMQP content_type property;
//                                      // kafka: ignored unless set (then it must
//                                      // equal the "content-type" header)
//     "value": "<body, base64>",
//     "key": string | null }           // optional, kafka only (partitionkey)
//   kafka: the SDK's Kafka binding (Kafka.toEvent). Binary mode = "ce_" headers plus
//          header "content-type"; structured = content-type application/cloudevents+json.
//   amqp:  AMQP 0-9-1 (the SDK has no AMQP binding, so the mapping is done here).
//          Binary mode = "cloudEvents:<attr>" headers, datacontenttype = content_type;
//          structured = content_type starting with application/cloudevents+json.
//   Every event is then rebuilt with `new CloudEvent(attrs, true)` so that the SDK's
//   JSON-schema validation runs, using the raw `time` string from the wire.
//
// stdout (exit 0): a JSON array with one object per message:
//   { specversion, id, source, type, subject?, time?, datacontenttype?, dataschema?,
//     data? | data_base64?, extensions? }   (attributes absent from the message are omitted)
//   data: parsed JSON when datacontenttype is application/json or */*+json; otherwise a
//   UTF-8 string, or data_base64 when the bytes are not valid UTF-8 (or come from a
//   structured event's data_base64).
// On any error: "message <index>: ..." on stderr (plus the SDK's `errors`), exit 1.
import { readFileSync } from "node:fs";
import { CloudEvent, Kafka } from "cloudevents";

const CE_JSON = "application/cloudevents+json";
const AMQP_PREFIX = "cloudEvents:";
const CORE = ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"];

const fail = (msg, err) => {
  // A ValidationError's message already embeds its `errors`; print them once, readably.
  const details = err?.errors?.length ? `${err.message.split("\n")[0]}\nerrors: ${JSON.stringify(err.errors, null, 2)}` : err?.message;
  process.stderr.write(`${msg}${err ? `: ${err.name}: ${details}` : ""}\n`);
  process.exit(1);
};

const isJsonType = (ct) => typeof ct === "string" && /^application\/([^;\s]+\+)?json\s*(;|$)/i.test(ct);
const utf8 = (buf) => {
  try { return new TextDecoder("utf-8", { fatal: true }).decode(buf); } catch { return undefined; }
};

// Returns [attrs, rawTime]: plain CloudEvent attributes, and the `time` exactly as sent.
function kafkaAttrs(m, body) {
  const headers = { ...m.headers };
  if (m.content_type != null) {
    if (headers["content-type"] !== undefined && headers["content-type"] !== m.content_type)
      throw new Error(`content_type ${m.content_type} differs from header content-type ${headers["content-type"]}`);
    headers["content-type"] = m.content_type;
  }
  const structured = headers["content-type"]?.startsWith("application/cloudevents");
  const rawTime = structured ? JSON.parse(body.toString("utf-8")).time : headers["ce_time"];
  if (structured && rawTime == null) {
    // cloudevents 10.0.0's Kafka.toEvent throws a RangeError on a structured event without the
    // (optional) `time`: read the event itself; the strict constructor below still validates it.
    const attrs = JSON.parse(body.toString("utf-8"));
    if (typeof attrs !== "object" || attrs === null || Array.isArray(attrs)) throw new Error("structured body is not a JSON object");
    return [attrs, undefined];
  }
  // The SDK decodes with strict=false; note it also normalises time via new Date().
  let ev;
  try {
    ev = Kafka.toEvent({ key: m.key ?? undefined, headers, value: body });
  } catch (e) {
    if (e instanceof RangeError) // from the SDK's `new Date(time).toISOString()`
      e.message += rawTime == null ? " (cloudevents 10.0.0 Kafka.toEvent rejects structured events without 'time')"
        : ` (Kafka.toEvent cannot parse time ${JSON.stringify(rawTime)})`;
    throw e;
  }
  if (Array.isArray(ev)) throw new Error("batched (application/cloudevents-batch+json) messages are not supported");
  const attrs = { ...ev };
  if (attrs.partitionkey === undefined) delete attrs.partitionkey;
  if (!structured && Buffer.isBuffer(attrs.data)) {
    // The SDK only JSON-parses application/json*; also handle +json, else keep text.
    // (data_base64 is recomputed by the strict constructor if data stays binary.)
    delete attrs.data_base64;
    if (body.length === 0) delete attrs.data;
    else if (isJsonType(attrs.datacontenttype)) attrs.data = JSON.parse(attrs.data.toString("utf-8"));
    else attrs.data = utf8(attrs.data) ?? attrs.data;
  }
  return [attrs, rawTime];
}

function amqpAttrs(m, body) {
  const ct = m.content_type ?? undefined;
  if (ct?.toLowerCase().startsWith(CE_JSON)) {
    const attrs = JSON.parse(body.toString("utf-8"));
    if (typeof attrs !== "object" || attrs === null || Array.isArray(attrs)) throw new Error("structured body is not a JSON object");
    return [attrs, attrs.time];
  }
  if (ct?.toLowerCase().startsWith("application/cloudevents")) throw new Error(`unsupported structured format ${ct}`);
  const attrs = {};
  for (const [k, v] of Object.entries(m.headers)) if (k.startsWith(AMQP_PREFIX)) attrs[k.slice(AMQP_PREFIX.length)] = v;
  if (ct !== undefined) {
    if (attrs.datacontenttype !== undefined && attrs.datacontenttype !== ct)
      throw new Error(`header ${AMQP_PREFIX}datacontenttype differs from content_type ${ct}`);
    attrs.datacontenttype = ct;
  }
  if (isJsonType(ct)) attrs.data = JSON.parse(body.toString("utf-8"));
  else if (body.length > 0) attrs.data = utf8(body) ?? body; // a Buffer becomes data_base64 in the SDK
  return [attrs, attrs.time];
}

let input;
try {
  input = JSON.parse(readFileSync(0, "utf-8"));
  if (!Array.isArray(input)) throw new Error("input must be a JSON array of messages");
} catch (e) { fail("malformed input", e); }

const out = input.map((m, i) => {
  try {
    if (typeof m !== "object" || m === null || typeof m.headers !== "object" || m.headers === null ||
        typeof m.value !== "string" || !["kafka", "amqp"].includes(m.binding))
      throw new Error(`malformed message: ${JSON.stringify(m)}`);
    for (const [k, v] of Object.entries(m.headers)) if (typeof v !== "string") throw new Error(`header ${k} is not a string`);
    const body = Buffer.from(m.value, "base64");
    const [attrs, rawTime] = (m.binding === "kafka" ? kafkaAttrs : amqpAttrs)(m, body);
    // The CloudEvent constructor silently fills in a missing id (uuid), specversion
    // ("1.0") and time (now), and validates nothing unless specversion is "1.0", so
    // check id/specversion here; the SDK's schema checks everything else.
    for (const a of ["specversion", "id"])
      if (attrs[a] === undefined || attrs[a] === null) throw new Error(`required attribute '${a}' is missing`);
    if (attrs.specversion !== "1.0") throw new Error(`specversion '${attrs.specversion}' is not 1.0`);
    const ev = new CloudEvent({ ...attrs, time: rawTime ?? undefined }, true); // strict: throws ValidationError
    const res = {};
    for (const a of CORE) if (ev[a] !== undefined && ev[a] !== null && (a !== "time" || rawTime != null)) res[a] = ev[a];
    if (ev.data_base64) res.data_base64 = ev.data_base64;
    else if (ev.data !== undefined) res.data = ev.data;
    const ext = Object.fromEntries(Object.entries(ev).filter(([k]) => ![...CORE, "data", "data_base64"].includes(k) && ev[k] !== undefined));
    if (Object.keys(ext).length) res.extensions = ext;
    return res;
  } catch (e) {
    fail(`message ${i} (${m?.binding}) is not a valid CloudEvent`, e);
  }
});
process.stdout.write(JSON.stringify(out, null, 2) + "\n");
