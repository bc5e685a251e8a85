//! OTLP request bodies to the generated OTLP messages of `opentelemetry-proto`.
//!
//! Protobuf goes through prost. JSON follows the OTLP JSON encoding (trace
//! and span ids in hex, enums as integers, 64-bit integers as strings,
//! attribute values as `AnyValue` objects) but is read leniently, the way
//! agents in the field send it: numbers and booleans may arrive as strings
//! or the other way round, enums may be given by name, keys may be
//! lowerCamelCase or snake_case, ids may be base64 (the protobuf JSON
//! mapping) when their length fits, and unknown fields are ignored.
//! Containers of the wrong JSON type, invalid ids and bodies that are not
//! JSON are rejected with the path of the offending field.

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
    trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status},
};
use prost::Message as _;
use serde_json::{Map, Value};

/// Nesting of `AnyValue` arrays and maps beyond which a JSON body is
/// rejected, so a hostile body cannot recurse deeply.
const MAX_VALUE_DEPTH: usize = 32;

/// Errors of reading a request body.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid OTLP JSON at {path}: {reason}")]
    Field { path: String, reason: String },
}

/// The body encodings the receiver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// Reads a `Content-Type` header value; parameters such as `charset`
    /// are ignored.
    pub fn from_content_type(value: &str) -> Option<Encoding> {
        let media = value.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/x-protobuf") || media.eq_ignore_ascii_case("application/protobuf") {
            Some(Encoding::Protobuf)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }
}

pub fn decode_traces(body: &[u8], encoding: Encoding) -> Result<ExportTraceServiceRequest, DecodeError> {
    match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body).map_err(|e| DecodeError::Protobuf(e.to_string())),
        Encoding::Json => traces_from_json(&parse_json(body)?),
    }
}

pub fn decode_logs(body: &[u8], encoding: Encoding) -> Result<ExportLogsServiceRequest, DecodeError> {
    match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(body).map_err(|e| DecodeError::Protobuf(e.to_string())),
        Encoding::Json => logs_from_json(&parse_json(body)?),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))
}

/// A JSON object being read, with its path for error messages.
struct Object<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

fn field_error(path: &str, key: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Field { path: format!("{path}.{key}"), reason: reason.into() }
}

impl<'a> Object<'a> {
    fn root(value: &'a Value) -> Result<Self, DecodeError> {
        match value {
            Value::Object(map) => Ok(Object { map, path: "$".to_owned() }),
            _ => Err(DecodeError::Field { path: "$".into(), reason: "expected an object".into() }),
        }
    }

    /// Returns the value under the lowerCamelCase key or its snake_case form.
    fn get(&self, camel: &str, snake: &str) -> Option<&'a Value> {
        self.map.get(camel).or_else(|| self.map.get(snake)).filter(|v| !v.is_null())
    }

    fn object(&self, camel: &str, snake: &str) -> Result<Option<Object<'a>>, DecodeError> {
        match self.get(camel, snake) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Object { map, path: format!("{}.{camel}", self.path) })),
            Some(_) => Err(field_error(&self.path, camel, "expected an object")),
        }
    }

    /// Returns each element of an array of objects.
    fn objects(&self, camel: &str, snake: &str) -> Result<Vec<Object<'a>>, DecodeError> {
        let Some(value) = self.get(camel, snake) else { return Ok(Vec::new()) };
        let Value::Array(items) = value else { return Err(field_error(&self.path, camel, "expected an array")) };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::Object(map) => Ok(Object { map, path: format!("{}.{camel}[{index}]", self.path) }),
                _ => Err(field_error(&self.path, &format!("{camel}[{index}]"), "expected an object")),
            })
            .collect()
    }

    fn string(&self, camel: &str, snake: &str) -> String {
        match self.get(camel, snake) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) => number.to_string(),
            Some(Value::Bool(flag)) => flag.to_string(),
            _ => String::new(),
        }
    }

    fn u64(&self, camel: &str, snake: &str) -> Result<u64, DecodeError> {
        match self.get(camel, snake) {
            None => Ok(0),
            Some(value) => lenient_u64(value).ok_or_else(|| field_error(&self.path, camel, "expected an unsigned integer")),
        }
    }

    fn u32(&self, camel: &str, snake: &str) -> Result<u32, DecodeError> {
        let value = self.u64(camel, snake)?;
        u32::try_from(value).map_err(|_| field_error(&self.path, camel, format!("{value} does not fit 32 bits")))
    }

    /// Reads an enum given as its number, a numeric string or its name.
    fn enumeration(&self, camel: &str, snake: &str, by_name: fn(&str) -> Option<i32>) -> Result<i32, DecodeError> {
        match self.get(camel, snake) {
            None => Ok(0),
            Some(value) => lenient_i64(value)
                .and_then(|n| i32::try_from(n).ok())
                .or_else(|| value.as_str().and_then(by_name))
                .ok_or_else(|| field_error(&self.path, camel, "expected an enum number or name")),
        }
    }

    /// Reads a trace id (16 bytes) or span id (8 bytes): hex, or base64 of
    /// the right length. An empty string is an absent id.
    fn id(&self, camel: &str, snake: &str, bytes: usize) -> Result<Vec<u8>, DecodeError> {
        let text = match self.get(camel, snake) {
            None => return Ok(Vec::new()),
            Some(Value::String(text)) => text.as_str(),
            Some(_) => return Err(field_error(&self.path, camel, "expected a hex string")),
        };
        if text.is_empty() {
            return Ok(Vec::new());
        }
        decode_id(text, bytes).ok_or_else(|| field_error(&self.path, camel, format!("{text:?} is not {bytes} bytes in hex")))
    }

    fn attributes(&self) -> Result<Vec<KeyValue>, DecodeError> {
        self.objects("attributes", "attributes")?.iter().map(|kv| key_value(kv, 0)).collect()
    }
}

/// Decodes a hex id, or a base64 one whose length fits `bytes` exactly.
pub fn decode_id(text: &str, bytes: usize) -> Option<Vec<u8>> {
    if text.len() == bytes * 2 {
        return decode_hex(text);
    }
    if text.len() == bytes.div_ceil(3) * 4 {
        return decode_base64(text).filter(|decoded| decoded.len() == bytes);
    }
    None
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

/// Standard or URL-safe base64, with or without padding.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

/// Lowercase hex of an id; `None` for an absent (empty or all-zero) one.
pub fn hex_id(bytes: &[u8]) -> Option<String> {
    if bytes.iter().all(|b| *b == 0) {
        return None;
    }
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        use std::fmt::Write as _;
        let _ = write!(text, "{byte:02x}");
    }
    Some(text)
}

fn lenient_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64().or_else(|| number.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64)),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

fn lenient_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64().or_else(|| number.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

fn lenient_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => match text.trim() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            other => other.parse().ok(),
        },
        _ => None,
    }
}

fn lenient_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) if text.eq_ignore_ascii_case("true") => Some(true),
        Value::String(text) if text.eq_ignore_ascii_case("false") => Some(false),
        Value::Number(number) => number.as_u64().filter(|n| *n <= 1).map(|n| n == 1),
        _ => None,
    }
}

fn key_value(object: &Object<'_>, depth: usize) -> Result<KeyValue, DecodeError> {
    let value = match object.object("value", "value")? {
        Some(value) => Some(any_value(&value, depth + 1)?),
        None => None,
    };
    Ok(KeyValue { key: object.string("key", "key"), value, ..Default::default() })
}

/// Reads an `AnyValue` object. A bare JSON scalar in its place was already
/// rejected, with its path, by `Object::object`.
fn any_value(object: &Object<'_>, depth: usize) -> Result<AnyValue, DecodeError> {
    use any_value::Value as V;
    if depth > MAX_VALUE_DEPTH {
        return Err(DecodeError::Field { path: object.path.clone(), reason: format!("values nest deeper than {MAX_VALUE_DEPTH}") });
    }
    let invalid = |key: &str, what: &str| field_error(&object.path, key, format!("expected {what}"));
    let value = if let Some(text) = object.get("stringValue", "string_value") {
        Some(V::StringValue(match text {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }))
    } else if let Some(flag) = object.get("boolValue", "bool_value") {
        Some(V::BoolValue(lenient_bool(flag).ok_or_else(|| invalid("boolValue", "a boolean"))?))
    } else if let Some(number) = object.get("intValue", "int_value") {
        Some(V::IntValue(lenient_i64(number).ok_or_else(|| invalid("intValue", "an integer"))?))
    } else if let Some(number) = object.get("doubleValue", "double_value") {
        Some(V::DoubleValue(lenient_f64(number).ok_or_else(|| invalid("doubleValue", "a number"))?))
    } else if let Some(array) = object.object("arrayValue", "array_value")? {
        let values = array.objects("values", "values")?.iter().map(|v| any_value(v, depth + 1)).collect::<Result<_, _>>()?;
        Some(V::ArrayValue(ArrayValue { values }))
    } else if let Some(list) = object.object("kvlistValue", "kvlist_value")? {
        let values = list.objects("values", "values")?.iter().map(|kv| key_value(kv, depth + 1)).collect::<Result<_, _>>()?;
        Some(V::KvlistValue(KeyValueList { values }))
    } else if let Some(bytes) = object.get("bytesValue", "bytes_value") {
        let text = bytes.as_str().ok_or_else(|| invalid("bytesValue", "a base64 string"))?;
        Some(V::BytesValue(decode_base64(text).ok_or_else(|| invalid("bytesValue", "a base64 string"))?))
    } else {
        None
    };
    Ok(AnyValue { value })
}

fn resource(object: Option<Object<'_>>) -> Result<Option<Resource>, DecodeError> {
    let Some(object) = object else { return Ok(None) };
    Ok(Some(Resource {
        attributes: object.attributes()?,
        dropped_attributes_count: object.u32("droppedAttributesCount", "dropped_attributes_count")?,
        ..Default::default()
    }))
}

fn scope(object: Option<Object<'_>>) -> Result<Option<InstrumentationScope>, DecodeError> {
    let Some(object) = object else { return Ok(None) };
    Ok(Some(InstrumentationScope {
        name: object.string("name", "name"),
        version: object.string("version", "version"),
        attributes: object.attributes()?,
        dropped_attributes_count: object.u32("droppedAttributesCount", "dropped_attributes_count")?,
    }))
}

fn span_kind(name: &str) -> Option<i32> {
    span::SpanKind::from_str_name(name).map(|kind| kind as i32)
}

fn status_code(name: &str) -> Option<i32> {
    opentelemetry_proto::tonic::trace::v1::status::StatusCode::from_str_name(name).map(|code| code as i32)
}

fn severity(name: &str) -> Option<i32> {
    opentelemetry_proto::tonic::logs::v1::SeverityNumber::from_str_name(name).map(|s| s as i32)
}

fn span_from_json(object: &Object<'_>) -> Result<Span, DecodeError> {
    let events = object
        .objects("events", "events")?
        .iter()
        .map(|event| {
            Ok(span::Event {
                time_unix_nano: event.u64("timeUnixNano", "time_unix_nano")?,
                name: event.string("name", "name"),
                attributes: event.attributes()?,
                dropped_attributes_count: event.u32("droppedAttributesCount", "dropped_attributes_count")?,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    let links = object
        .objects("links", "links")?
        .iter()
        .map(|link| {
            Ok(span::Link {
                trace_id: link.id("traceId", "trace_id", 16)?,
                span_id: link.id("spanId", "span_id", 8)?,
                trace_state: link.string("traceState", "trace_state"),
                attributes: link.attributes()?,
                dropped_attributes_count: link.u32("droppedAttributesCount", "dropped_attributes_count")?,
                flags: link.u32("flags", "flags")?,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    let status = match object.object("status", "status")? {
        Some(status) => Some(Status {
            message: status.string("message", "message"),
            code: status.enumeration("code", "code", status_code)?,
        }),
        None => None,
    };
    Ok(Span {
        trace_id: object.id("traceId", "trace_id", 16)?,
        span_id: object.id("spanId", "span_id", 8)?,
        trace_state: object.string("traceState", "trace_state"),
        parent_span_id: object.id("parentSpanId", "parent_span_id", 8)?,
        flags: object.u32("flags", "flags")?,
        name: object.string("name", "name"),
        kind: object.enumeration("kind", "kind", span_kind)?,
        start_time_unix_nano: object.u64("startTimeUnixNano", "start_time_unix_nano")?,
        end_time_unix_nano: object.u64("endTimeUnixNano", "end_time_unix_nano")?,
        attributes: object.attributes()?,
        dropped_attributes_count: object.u32("droppedAttributesCount", "dropped_attributes_count")?,
        events,
        dropped_events_count: object.u32("droppedEventsCount", "dropped_events_count")?,
        links,
        dropped_links_count: object.u32("droppedLinksCount", "dropped_links_count")?,
        status,
    })
}

/// Reads an OTLP JSON trace export request (`ExportTraceServiceRequest`).
pub fn traces_from_json(value: &Value) -> Result<ExportTraceServiceRequest, DecodeError> {
    let root = Object::root(value)?;
    let resource_spans = root
        .objects("resourceSpans", "resource_spans")?
        .iter()
        .map(|rs| {
            let scope_spans = rs
                .objects("scopeSpans", "scope_spans")?
                .iter()
                .map(|ss| {
                    Ok(ScopeSpans {
                        scope: scope(ss.object("scope", "scope")?)?,
                        spans: ss.objects("spans", "spans")?.iter().map(span_from_json).collect::<Result<_, _>>()?,
                        schema_url: ss.string("schemaUrl", "schema_url"),
                    })
                })
                .collect::<Result<_, DecodeError>>()?;
            Ok(ResourceSpans {
                resource: resource(rs.object("resource", "resource")?)?,
                scope_spans,
                schema_url: rs.string("schemaUrl", "schema_url"),
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(ExportTraceServiceRequest { resource_spans })
}

fn log_from_json(object: &Object<'_>) -> Result<LogRecord, DecodeError> {
    let body = match object.object("body", "body")? {
        Some(body) => Some(any_value(&body, 0)?),
        None => None,
    };
    Ok(LogRecord {
        time_unix_nano: object.u64("timeUnixNano", "time_unix_nano")?,
        observed_time_unix_nano: object.u64("observedTimeUnixNano", "observed_time_unix_nano")?,
        severity_number: object.enumeration("severityNumber", "severity_number", severity)?,
        severity_text: object.string("severityText", "severity_text"),
        body,
        attributes: object.attributes()?,
        dropped_attributes_count: object.u32("droppedAttributesCount", "dropped_attributes_count")?,
        flags: object.u32("flags", "flags")?,
        trace_id: object.id("traceId", "trace_id", 16)?,
        span_id: object.id("spanId", "span_id", 8)?,
        event_name: object.string("eventName", "event_name"),
    })
}

/// Reads an OTLP JSON log export request (`ExportLogsServiceRequest`).
pub fn logs_from_json(value: &Value) -> Result<ExportLogsServiceRequest, DecodeError> {
    let root = Object::root(value)?;
    let resource_logs = root
        .objects("resourceLogs", "resource_logs")?
        .iter()
        .map(|rl| {
            let scope_logs = rl
                .objects("scopeLogs", "scope_logs")?
                .iter()
                .map(|sl| {
                    Ok(ScopeLogs {
                        scope: scope(sl.object("scope", "scope")?)?,
                        log_records: sl.objects("logRecords", "log_records")?.iter().map(log_from_json).collect::<Result<_, _>>()?,
                        schema_url: sl.string("schemaUrl", "schema_url"),
                    })
                })
                .collect::<Result<_, DecodeError>>()?;
            Ok(ResourceLogs {
                resource: resource(rl.object("resource", "resource")?)?,
                scope_logs,
                schema_url: rl.string("schemaUrl", "schema_url"),
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(ExportLogsServiceRequest { resource_logs })
}
