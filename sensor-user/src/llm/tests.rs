//! End-to-end tests: captured calls in, events out, with fixtures written
//! after each API's documented wire format.

use super::{fingerprint::sha256_hex, *};

const KEY: [u8; 32] = [42; 32];
const SECRET: &str = "sk-proj-SECRETVALUE0123456789abcdef";
const PROMPT: &str = "PROMPT-TEXT-what-is-the-weather-in-paris";
const ANSWER: &str = "RESPONSE-TEXT-it-is-sunny-today";
const ARGUMENTS_TEXT: &str = "ARGUMENT-TEXT-Paris";
const STREAM: StreamKey = StreamKey { pid: 4242, stream: 0x7f00_1234 };

fn new_streams() -> LlmStreams {
    LlmStreams::new(LlmConfig { max_buffer_bytes: 1 << 20, max_streams: 64 }, KEY)
}

fn http_request(method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut text = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

fn http_response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut text = format!("HTTP/1.1 {status}\r\nDate: Tue, 01 Jul 2025 10:00:00 GMT\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Builds a chunked response with one chunk per part, as servers flush
/// each event.
fn chunked_response(content_type: &str, parts: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\nDate: Tue, 01 Jul 2025 10:00:00 GMT\r\nContent-Type: {content_type}\r\n\
         Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    )
    .into_bytes();
    for part in parts {
        bytes.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        bytes.extend_from_slice(part);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

/// Builds server-sent events, one per part. A name adds an `event:` line.
fn sse(events: &[(Option<&str>, &str)], line_end: &str) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|(name, data)| {
            let mut text = String::new();
            if let Some(name) = name {
                text.push_str(&format!("event: {name}{line_end}"));
            }
            text.push_str(&format!("data: {data}{line_end}{line_end}"));
            text.into_bytes()
        })
        .collect()
}

/// A xorshift generator, so the random tests repeat exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

/// Feeds `bytes` as calls of random sizes between 1 and `max_piece`.
fn feed_in_pieces(
    streams: &mut LlmStreams,
    direction: Direction,
    bytes: &[u8],
    rng: &mut Rng,
    max_piece: usize,
) -> Vec<LlmEvent> {
    let mut events = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let size = (1 + rng.below(max_piece)).min(rest.len());
        events.extend(streams.feed(STREAM, direction, &rest[..size], 0, 0));
        rest = &rest[size..];
    }
    events
}

fn feed(streams: &mut LlmStreams, direction: Direction, bytes: &[u8]) -> Vec<LlmEvent> {
    streams.feed(STREAM, direction, bytes, 0, 0)
}

fn only_request(events: Vec<LlmEvent>) -> LlmRequest {
    match <[LlmEvent; 1]>::try_from(events) {
        Ok([LlmEvent::Request(request)]) => request,
        Ok([other]) => panic!("expected a request, got {other:?}"),
        Err(events) => panic!("expected one request, got {events:?}"),
    }
}

fn only_response(events: Vec<LlmEvent>) -> LlmResponse {
    match <[LlmEvent; 1]>::try_from(events) {
        Ok([LlmEvent::Response(response)]) => response,
        Ok([other]) => panic!("expected a response, got {other:?}"),
        Err(events) => panic!("expected one response, got {events:?}"),
    }
}

fn fingerprint_of(secret: &str) -> String {
    fingerprint::Fingerprinter::new(&KEY).fingerprint(secret.as_bytes())
}

// ---- OpenAI chat completions ----

fn openai_chat_body(stream: bool) -> String {
    format!(
        r#"{{"messages":[{{"role":"system","content":"You are terse."}},{{"role":"user","content":"{PROMPT}"}}],"model":"gpt-4o-mini","stream":{stream},"stream_options":{},"tools":[{{"type":"function","function":{{"name":"get_weather","description":"Current weather","parameters":{{"type":"object","properties":{{"city":{{"type":"string"}}}},"required":["city"]}}}}}},{{"type":"function","function":{{"name":"run_shell","parameters":{{"type":"object","properties":{{"cmd":{{"type":"string"}}}}}}}}}}]}}"#,
        if stream { r#"{"include_usage":true}"# } else { "null" }
    )
}

fn openai_chat_request(stream: bool) -> (Vec<u8>, String) {
    let body = openai_chat_body(stream);
    let authorization = format!("Bearer {SECRET}");
    let headers = [
        ("Host", "api.openai.com"),
        ("Accept-Encoding", "gzip, deflate"),
        ("Connection", "keep-alive"),
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        ("User-Agent", "OpenAI/Python 1.54.0"),
        ("Authorization", authorization.as_str()),
    ];
    (http_request("POST", "/v1/chat/completions", &headers, &body), body)
}

fn openai_chat_stream_events() -> Vec<Vec<u8>> {
    let head = r#"{"id":"chatcmpl-A1","object":"chat.completion.chunk","created":1735000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":"#;
    let chunk = |choices: &str| format!(r#"{head}{choices},"usage":null}}"#);
    let arguments = |index: u32, fragment: &str| {
        chunk(&format!(
            r#"[{{"index":0,"delta":{{"tool_calls":[{{"index":{index},"function":{{"arguments":"{fragment}"}}}}]}},"logprobs":null,"finish_reason":null}}]"#
        ))
    };
    let data = vec![
        chunk(
            r#"[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_Wx1","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]"#,
        ),
        arguments(0, r#"{\"ci"#),
        arguments(0, r#"ty\": \"ARGUMENT-"#),
        arguments(0, r#"TEXT-Paris\"}"#),
        chunk(
            r#"[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_Sh2","type":"function","function":{"name":"run_shell","arguments":""}}]},"logprobs":null,"finish_reason":null}]"#,
        ),
        arguments(1, r#"{\"cmd\": \"ls -la\"}"#),
        chunk(r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]"#),
        format!(r#"{head}[],"usage":{{"prompt_tokens":85,"completion_tokens":40,"total_tokens":125}}}}"#),
        "[DONE]".to_owned(),
    ];
    let events: Vec<(Option<&str>, &str)> = data.iter().map(|data| (None, data.as_str())).collect();
    sse(&events, "\n")
}

fn check_openai_chat_stream_response(response: &LlmResponse) {
    assert_eq!(response.api, "openai.chat_completions");
    assert_eq!(response.provider, Some("openai"));
    assert_eq!(response.status, 200);
    assert_eq!(response.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert!(response.streaming);
    assert_eq!(response.input_tokens, Some(85));
    assert_eq!(response.output_tokens, Some(40));
    assert_eq!(response.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(response.tool_calls.len(), 2);
    assert_eq!(response.tool_calls[0].name, "get_weather");
    assert_eq!(response.tool_calls[0].call_id.as_deref(), Some("call_Wx1"));
    assert_eq!(response.tool_calls[0].arguments_sha256, Some(sha256_hex(br#"{"city": "ARGUMENT-TEXT-Paris"}"#)));
    assert_eq!(response.tool_calls[1].name, "run_shell");
    assert_eq!(response.tool_calls[1].call_id.as_deref(), Some("call_Sh2"));
    assert_eq!(response.tool_calls[1].arguments_sha256, Some(sha256_hex(br#"{"cmd": "ls -la"}"#)));
}

#[test]
fn openai_chat_plain() {
    let mut streams = new_streams();
    let (request_bytes, body) = openai_chat_request(false);
    // Python's HTTP stack writes the head and the body in separate calls.
    let split = request_bytes.len() - body.len();
    assert!(feed(&mut streams, Direction::Write, &request_bytes[..split]).is_empty());
    let request = only_request(feed(&mut streams, Direction::Write, &request_bytes[split..]));
    assert_eq!(request.key, STREAM);
    assert_eq!(request.api, "openai.chat_completions");
    assert_eq!(request.provider, Some("openai"));
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.host.as_deref(), Some("api.openai.com"));
    assert_eq!(request.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(request.stream, Some(false));
    assert_eq!(request.tools_offered, ["get_weather", "run_shell"]);
    assert_eq!(request.prompt_sha256, Some(sha256_hex(body.as_bytes())));
    assert_eq!(request.body_bytes, body.len());
    assert_eq!(request.credential, Some(Credential { kind: "authorization_bearer", fingerprint: fingerprint_of(SECRET) }));
    assert!(!request.truncated);

    let response_body = format!(
        r#"{{"id":"chatcmpl-A2","object":"chat.completion","created":1735000000,"model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"message":{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_Wx1","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"{ARGUMENTS_TEXT}\"}}"}}}}],"refusal":null}},"logprobs":null,"finish_reason":"tool_calls"}}],"usage":{{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99}},"system_fingerprint":"fp_0ba0d124f1"}}"#
    );
    let response_bytes = http_response(
        "200 OK",
        &[("Content-Type", "application/json"), ("openai-processing-ms", "412")],
        response_body.as_bytes(),
    );
    let response = only_response(feed(&mut streams, Direction::Read, &response_bytes));
    assert_eq!(response.api, "openai.chat_completions");
    assert_eq!(response.status, 200);
    assert!(!response.streaming);
    assert_eq!(response.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!((response.input_tokens, response.output_tokens), (Some(82), Some(17)));
    assert_eq!(response.finish_reason.as_deref(), Some("tool_calls"));
    let expected_arguments = format!(r#"{{"city":"{ARGUMENTS_TEXT}"}}"#);
    assert_eq!(
        response.tool_calls,
        [ToolCall {
            name: "get_weather".to_owned(),
            call_id: Some("call_Wx1".to_owned()),
            arguments_sha256: Some(sha256_hex(expected_arguments.as_bytes())),
        }]
    );
    assert_eq!(response.response_sha256, Some(sha256_hex(response_body.as_bytes())));
    assert_eq!(response.body_bytes, response_body.len());
    assert!(!response.truncated);
}

#[test]
fn openai_chat_streaming_awkward_splits() {
    let (request_bytes, _) = openai_chat_request(true);
    let response_bytes = chunked_response("text/event-stream; charset=utf-8", &openai_chat_stream_events());
    for seed in 1..=60_u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut streams = new_streams();
        let request = only_request(feed_in_pieces(&mut streams, Direction::Write, &request_bytes, &mut rng, 97));
        assert_eq!(request.stream, Some(true), "seed {seed}");
        let response = only_response(feed_in_pieces(&mut streams, Direction::Read, &response_bytes, &mut rng, 1 + seed as usize));
        check_openai_chat_stream_response(&response);
        assert!(response.response_sha256.is_some(), "seed {seed}");
        assert!(!response.truncated, "seed {seed}");
    }
}

// ---- OpenAI responses API ----

fn openai_responses_request(stream: bool) -> Vec<u8> {
    let body = format!(
        r#"{{"model":"gpt-4.1","input":[{{"role":"user","content":"{PROMPT}"}}],"stream":{stream},"tools":[{{"type":"function","name":"get_weather","parameters":{{"type":"object","properties":{{}}}}}},{{"type":"web_search_preview"}}]}}"#
    );
    let authorization = format!("Bearer {SECRET}");
    http_request(
        "POST",
        "/v1/responses",
        &[("Host", "api.openai.com"), ("Content-Type", "application/json"), ("Authorization", &authorization)],
        &body,
    )
}

#[test]
fn openai_responses_streaming() {
    let item_added = r#"{"type":"response.output_item.added","sequence_number":3,"output_index":1,"item":{"type":"function_call","id":"fc_68a","call_id":"call_9Kd","name":"get_weather","arguments":"","status":"in_progress"}}"#;
    let full_arguments = format!(r#"{{\"city\":\"{ARGUMENTS_TEXT}\"}}"#);
    let delta_1 = r#"{"type":"response.function_call_arguments.delta","sequence_number":4,"item_id":"fc_68a","output_index":1,"delta":"{\"city\":"}"#.to_owned();
    let delta_2 = format!(
        r#"{{"type":"response.function_call_arguments.delta","sequence_number":5,"item_id":"fc_68a","output_index":1,"delta":"\"{ARGUMENTS_TEXT}\"}}"}}"#
    );
    let arguments_done = format!(
        r#"{{"type":"response.function_call_arguments.done","sequence_number":6,"item_id":"fc_68a","output_index":1,"arguments":"{full_arguments}"}}"#
    );
    let item = format!(
        r#"{{"type":"function_call","id":"fc_68a","call_id":"call_9Kd","name":"get_weather","arguments":"{full_arguments}","status":"completed"}}"#
    );
    let item_done = format!(r#"{{"type":"response.output_item.done","sequence_number":7,"output_index":1,"item":{item}}}"#);
    let message = format!(
        r#"{{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{{"type":"output_text","text":"{ANSWER}"}}]}}"#
    );
    let completed = format!(
        r#"{{"type":"response.completed","sequence_number":8,"response":{{"id":"resp_1","object":"response","status":"completed","error":null,"incomplete_details":null,"model":"gpt-4.1-2025-04-14","output":[{message},{item}],"usage":{{"input_tokens":51,"output_tokens":19,"total_tokens":70}}}}}}"#
    );
    let created = r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","error":null,"model":"gpt-4.1-2025-04-14","output":[],"usage":null}}"#;
    let text_delta = format!(
        r#"{{"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_1","output_index":0,"delta":"{ANSWER}"}}"#
    );
    let events = sse(
        &[
            (Some("response.created"), created),
            (Some("response.output_text.delta"), &text_delta),
            (Some("response.output_item.added"), item_added),
            (Some("response.function_call_arguments.delta"), &delta_1),
            (Some("response.function_call_arguments.delta"), &delta_2),
            (Some("response.function_call_arguments.done"), &arguments_done),
            (Some("response.output_item.done"), &item_done),
            (Some("response.completed"), &completed),
        ],
        "\n",
    );
    let response_bytes = chunked_response("text/event-stream; charset=utf-8", &events);

    let mut rng = Rng(77);
    let mut streams = new_streams();
    let request = only_request(feed_in_pieces(&mut streams, Direction::Write, &openai_responses_request(true), &mut rng, 50));
    assert_eq!(request.api, "openai.responses");
    assert_eq!(request.model.as_deref(), Some("gpt-4.1"));
    assert_eq!(request.stream, Some(true));
    assert_eq!(request.tools_offered, ["get_weather", "web_search_preview"]);

    let response = only_response(feed_in_pieces(&mut streams, Direction::Read, &response_bytes, &mut rng, 33));
    assert_eq!(response.api, "openai.responses");
    assert_eq!(response.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert_eq!((response.input_tokens, response.output_tokens), (Some(51), Some(19)));
    assert_eq!(response.finish_reason.as_deref(), Some("completed"));
    let expected = format!(r#"{{"city":"{ARGUMENTS_TEXT}"}}"#);
    assert_eq!(
        response.tool_calls,
        [ToolCall {
            name: "get_weather".to_owned(),
            call_id: Some("call_9Kd".to_owned()),
            arguments_sha256: Some(sha256_hex(expected.as_bytes())),
        }]
    );
}

#[test]
fn openai_responses_plain() {
    let mut streams = new_streams();
    only_request(feed(&mut streams, Direction::Write, &openai_responses_request(false)));
    let body = r#"{"id":"resp_2","object":"response","created_at":1735000000,"status":"completed","error":null,"model":"gpt-4.1-2025-04-14","output":[{"type":"function_call","id":"fc_1","call_id":"call_1","name":"get_weather","arguments":"{}","status":"completed"},{"type":"local_shell_call","id":"lsh_1","call_id":"call_2","action":{"type":"exec","command":["ls"]},"status":"completed"}],"usage":{"input_tokens":10,"output_tokens":3,"total_tokens":13}}"#;
    let response = only_response(feed(
        &mut streams,
        Direction::Read,
        &http_response("200 OK", &[("Content-Type", "application/json")], body.as_bytes()),
    ));
    assert_eq!(response.api, "openai.responses");
    assert_eq!(response.finish_reason.as_deref(), Some("completed"));
    assert_eq!((response.input_tokens, response.output_tokens), (Some(10), Some(3)));
    let names: Vec<&str> = response.tool_calls.iter().map(|call| call.name.as_str()).collect();
    assert_eq!(names, ["get_weather", "local_shell"]);
    assert_eq!(response.tool_calls[0].arguments_sha256, Some(sha256_hex(b"{}")));
    assert_eq!(response.tool_calls[1].arguments_sha256, Some(sha256_hex(br#"{"command":["ls"],"type":"exec"}"#)));
}

// ---- Anthropic messages ----

fn anthropic_request(stream: bool) -> Vec<u8> {
    let body = format!(
        r#"{{"max_tokens":1024,"messages":[{{"role":"user","content":"{PROMPT}"}}],"model":"claude-sonnet-4-20250514","stream":{stream},"tools":[{{"name":"get_weather","description":"Weather","input_schema":{{"type":"object","properties":{{"location":{{"type":"string"}}}}}}}}]}}"#
    );
    http_request(
        "POST",
        "/v1/messages",
        &[
            ("Host", "api.anthropic.com"),
            ("Content-Type", "application/json"),
            ("anthropic-version", "2023-06-01"),
            ("X-Api-Key", SECRET),
        ],
        &body,
    )
}

fn anthropic_stream_events() -> Vec<Vec<u8>> {
    let start = r#"{"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2}}}"#;
    let text_delta = format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{ANSWER}"}}}}"#);
    let fragment = |text: &str| {
        format!(r#"{{"type":"content_block_delta","index":1,"delta":{{"type":"input_json_delta","partial_json":"{text}"}}}}"#)
    };
    let fragments = [fragment(""), fragment(r#"{\"location\":"#), fragment(r#" \"ARGUMENT-TEXT-"#), fragment(r#"Paris\"}"#)];
    let mut events: Vec<(Option<&str>, String)> = vec![
        (Some("message_start"), start.to_owned()),
        (Some("content_block_start"), r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_owned()),
        (Some("ping"), r#"{"type": "ping"}"#.to_owned()),
        (Some("content_block_delta"), text_delta),
        (Some("content_block_stop"), r#"{"type":"content_block_stop","index":0}"#.to_owned()),
        (
            Some("content_block_start"),
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01A","name":"get_weather","input":{}}}"#.to_owned(),
        ),
    ];
    events.extend(fragments.into_iter().map(|data| (Some("content_block_delta"), data)));
    events.extend([
        (Some("content_block_stop"), r#"{"type":"content_block_stop","index":1}"#.to_owned()),
        (
            Some("message_delta"),
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#
                .to_owned(),
        ),
        (Some("message_stop"), r#"{"type":"message_stop"}"#.to_owned()),
    ]);
    let borrowed: Vec<(Option<&str>, &str)> = events.iter().map(|(name, data)| (*name, data.as_str())).collect();
    sse(&borrowed, "\n")
}

fn check_anthropic_stream_response(response: &LlmResponse) {
    assert_eq!(response.api, "anthropic.messages");
    assert_eq!(response.provider, Some("anthropic"));
    assert_eq!(response.model.as_deref(), Some("claude-sonnet-4-20250514"));
    assert!(response.streaming);
    assert_eq!((response.input_tokens, response.output_tokens), (Some(472), Some(89)));
    assert_eq!(response.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        response.tool_calls,
        [ToolCall {
            name: "get_weather".to_owned(),
            call_id: Some("toolu_01A".to_owned()),
            arguments_sha256: Some(sha256_hex(br#"{"location": "ARGUMENT-TEXT-Paris"}"#)),
        }]
    );
}

#[test]
fn anthropic_plain() {
    let mut streams = new_streams();
    let request = only_request(feed(&mut streams, Direction::Write, &anthropic_request(false)));
    assert_eq!(request.api, "anthropic.messages");
    assert_eq!(request.provider, Some("anthropic"));
    assert_eq!(request.model.as_deref(), Some("claude-sonnet-4-20250514"));
    assert_eq!(request.stream, Some(false));
    assert_eq!(request.tools_offered, ["get_weather"]);
    assert_eq!(request.credential, Some(Credential { kind: "x-api-key", fingerprint: fingerprint_of(SECRET) }));

    let body = format!(
        r#"{{"id":"msg_02","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{{"type":"text","text":"{ANSWER}"}},{{"type":"tool_use","id":"toolu_02","name":"get_weather","input":{{"location":"{ARGUMENTS_TEXT}"}}}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{{"input_tokens":384,"output_tokens":70}}}}"#
    );
    let response = only_response(feed(
        &mut streams,
        Direction::Read,
        &http_response("200 OK", &[("Content-Type", "application/json"), ("request-id", "req_1")], body.as_bytes()),
    ));
    assert_eq!(response.api, "anthropic.messages");
    assert_eq!((response.input_tokens, response.output_tokens), (Some(384), Some(70)));
    assert_eq!(response.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(response.tool_calls.len(), 1);
    assert_eq!(response.tool_calls[0].call_id.as_deref(), Some("toolu_02"));
    let compact = format!(r#"{{"location":"{ARGUMENTS_TEXT}"}}"#);
    assert_eq!(response.tool_calls[0].arguments_sha256, Some(sha256_hex(compact.as_bytes())));
}

#[test]
fn anthropic_streaming_every_split() {
    let request_bytes = anthropic_request(true);
    let response_bytes = chunked_response("text/event-stream; charset=utf-8", &anthropic_stream_events());
    for cut in 1..response_bytes.len() {
        let mut streams = new_streams();
        only_request(feed(&mut streams, Direction::Write, &request_bytes));
        let mut events = feed(&mut streams, Direction::Read, &response_bytes[..cut]);
        events.extend(feed(&mut streams, Direction::Read, &response_bytes[cut..]));
        check_anthropic_stream_response(&only_response(events));
    }
}

// ---- Gemini ----

fn gemini_body() -> String {
    format!(
        r#"{{"contents":[{{"role":"user","parts":[{{"text":"{PROMPT}"}}]}}],"tools":[{{"functionDeclarations":[{{"name":"get_weather","parameters":{{"type":"OBJECT"}}}}]}}]}}"#
    )
}

#[test]
fn gemini_plain() {
    let mut streams = new_streams();
    let request_bytes = http_request(
        "POST",
        "/v1beta/models/gemini-2.0-flash:generateContent",
        &[("Host", "generativelanguage.googleapis.com"), ("Content-Type", "application/json"), ("x-goog-api-key", SECRET)],
        &gemini_body(),
    );
    let request = only_request(feed(&mut streams, Direction::Write, &request_bytes));
    assert_eq!(request.api, "gemini.generate_content");
    assert_eq!(request.provider, Some("google_gemini"));
    assert_eq!(request.model.as_deref(), Some("gemini-2.0-flash"));
    assert_eq!(request.stream, Some(false));
    assert_eq!(request.tools_offered, ["get_weather"]);
    assert_eq!(request.credential, Some(Credential { kind: "x-goog-api-key", fingerprint: fingerprint_of(SECRET) }));

    let body = format!(
        r#"{{
  "candidates": [
    {{
      "content": {{
        "parts": [
          {{ "functionCall": {{ "name": "get_weather", "args": {{ "city": "{ARGUMENTS_TEXT}" }} }} }}
        ],
        "role": "model"
      }},
      "finishReason": "STOP",
      "avgLogprobs": -0.01
    }}
  ],
  "usageMetadata": {{ "promptTokenCount": 30, "candidatesTokenCount": 7, "totalTokenCount": 37 }},
  "modelVersion": "gemini-2.0-flash-001"
}}
"#
    );
    let response = only_response(feed(
        &mut streams,
        Direction::Read,
        &http_response("200 OK", &[("Content-Type", "application/json; charset=UTF-8"), ("Vary", "Origin")], body.as_bytes()),
    ));
    assert_eq!(response.api, "gemini.generate_content");
    assert_eq!(response.model.as_deref(), Some("gemini-2.0-flash-001"));
    assert_eq!((response.input_tokens, response.output_tokens), (Some(30), Some(7)));
    assert_eq!(response.finish_reason.as_deref(), Some("STOP"));
    let compact = format!(r#"{{"city":"{ARGUMENTS_TEXT}"}}"#);
    assert_eq!(
        response.tool_calls,
        [ToolCall { name: "get_weather".to_owned(), call_id: None, arguments_sha256: Some(sha256_hex(compact.as_bytes())) }]
    );
}

#[test]
fn gemini_streaming_with_query_key() {
    let mut streams = new_streams();
    let target = format!("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key={SECRET}");
    let request_bytes = http_request(
        "POST",
        &target,
        &[("Host", "generativelanguage.googleapis.com"), ("Content-Type", "application/json")],
        &gemini_body(),
    );
    let request = only_request(feed(&mut streams, Direction::Write, &request_bytes));
    assert_eq!(request.api, "gemini.stream_generate_content");
    assert_eq!(request.path, "/v1beta/models/gemini-2.5-pro:streamGenerateContent");
    assert_eq!(request.stream, Some(true));
    assert_eq!(request.credential, Some(Credential { kind: "query_key", fingerprint: fingerprint_of(SECRET) }));

    let first = format!(
        r#"{{"candidates": [{{"content": {{"parts": [{{"text": "{ANSWER}"}}],"role": "model"}},"index": 0}}],"usageMetadata": {{"promptTokenCount": 9,"totalTokenCount": 9}},"modelVersion": "gemini-2.5-pro"}}"#
    );
    let second = format!(
        r#"{{"candidates": [{{"content": {{"parts": [{{"functionCall": {{"name": "get_weather","args": {{"city": "{ARGUMENTS_TEXT}"}}}}}},{{"functionCall": {{"name": "run_shell","args": {{"cmd": "ls"}}}}}}],"role": "model"}},"finishReason": "STOP","index": 0}}],"usageMetadata": {{"promptTokenCount": 9,"candidatesTokenCount": 12,"totalTokenCount": 21}},"modelVersion": "gemini-2.5-pro"}}"#
    );
    // Gemini ends its event lines with CRLF.
    let events = sse(&[(None, &first), (None, &second)], "\r\n");
    let mut rng = Rng(5);
    let response = only_response(feed_in_pieces(
        &mut streams,
        Direction::Read,
        &chunked_response("text/event-stream", &events),
        &mut rng,
        7,
    ));
    assert_eq!(response.api, "gemini.stream_generate_content");
    assert!(response.streaming);
    assert_eq!((response.input_tokens, response.output_tokens), (Some(9), Some(12)));
    let names: Vec<&str> = response.tool_calls.iter().map(|call| call.name.as_str()).collect();
    assert_eq!(names, ["get_weather", "run_shell"]);
    assert_eq!(response.tool_calls[1].arguments_sha256, Some(sha256_hex(br#"{"cmd":"ls"}"#)));
}

// ---- Ollama ----

#[test]
fn ollama_chat_ndjson() {
    let mut streams = new_streams();
    let body = format!(
        r#"{{"model":"llama3.2","messages":[{{"role":"user","content":"{PROMPT}"}}],"tools":[{{"type":"function","function":{{"name":"get_weather","parameters":{{}}}}}}]}}"#
    );
    let request_bytes =
        http_request("POST", "/api/chat", &[("Host", "127.0.0.1:11434"), ("Content-Type", "application/json")], &body);
    let request = only_request(feed(&mut streams, Direction::Write, &request_bytes));
    assert_eq!(request.api, "ollama.chat");
    assert_eq!(request.provider, Some("ollama"));
    // Ollama streams unless `stream` is false.
    assert_eq!(request.stream, Some(true));
    assert_eq!(request.credential, None);

    let lines = [
        format!(
            r#"{{"model":"llama3.2","created_at":"2025-07-01T10:00:00.1Z","message":{{"role":"assistant","content":"","tool_calls":[{{"function":{{"name":"get_weather","arguments":{{"city":"{ARGUMENTS_TEXT}"}}}}}}]}},"done":false}}"#
        ),
        format!(r#"{{"model":"llama3.2","created_at":"2025-07-01T10:00:00.2Z","message":{{"role":"assistant","content":"{ANSWER}"}},"done":false}}"#),
        r#"{"model":"llama3.2","created_at":"2025-07-01T10:00:00.3Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}"#.to_owned(),
    ];
    let parts: Vec<Vec<u8>> = lines.iter().map(|line| format!("{line}\n").into_bytes()).collect();
    let response_bytes = chunked_response("application/x-ndjson", &parts);
    let mut rng = Rng(11);
    let response = only_response(feed_in_pieces(&mut streams, Direction::Read, &response_bytes, &mut rng, 20));
    assert_eq!(response.api, "ollama.chat");
    assert!(response.streaming);
    assert_eq!(response.model.as_deref(), Some("llama3.2"));
    assert_eq!((response.input_tokens, response.output_tokens), (Some(26), Some(282)));
    assert_eq!(response.finish_reason.as_deref(), Some("stop"));
    let compact = format!(r#"{{"city":"{ARGUMENTS_TEXT}"}}"#);
    assert_eq!(
        response.tool_calls,
        [ToolCall { name: "get_weather".to_owned(), call_id: None, arguments_sha256: Some(sha256_hex(compact.as_bytes())) }]
    );
}

#[test]
fn ollama_generate_plain() {
    let mut streams = new_streams();
    let body = format!(r#"{{"model":"qwen2.5:7b","prompt":"{PROMPT}","stream":false}}"#);
    let request_bytes =
        http_request("POST", "/api/generate", &[("Host", "localhost:11434"), ("Content-Type", "application/json")], &body);
    let request = only_request(feed(&mut streams, Direction::Write, &request_bytes));
    assert_eq!(request.api, "ollama.generate");
    assert_eq!(request.stream, Some(false));
    let response_body = format!(
        r#"{{"model":"qwen2.5:7b","created_at":"2025-07-01T10:00:00Z","response":"{ANSWER}","done":true,"done_reason":"stop","context":[1,2,3],"prompt_eval_count":12,"eval_count":8}}"#
    );
    let response = only_response(feed(
        &mut streams,
        Direction::Read,
        &http_response("200 OK", &[("Content-Type", "application/json; charset=utf-8")], response_body.as_bytes()),
    ));
    assert_eq!(response.api, "ollama.generate");
    assert!(!response.streaming);
    assert_eq!((response.input_tokens, response.output_tokens), (Some(12), Some(8)));
    assert!(response.tool_calls.is_empty());
}

// ---- Connections ----

#[test]
fn keep_alive_two_exchanges() {
    let mut streams = new_streams();
    let mut events = Vec::new();
    let (first_request, _) = openai_chat_request(false);
    events.extend(feed(&mut streams, Direction::Write, &first_request));
    let error_body = br#"{"error":{"message":"Rate limit reached for gpt-4o-mini","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    events.extend(feed(
        &mut streams,
        Direction::Read,
        &http_response("429 Too Many Requests", &[("Content-Type", "application/json")], error_body),
    ));
    let (second_request, _) = openai_chat_request(true);
    events.extend(feed(&mut streams, Direction::Write, &second_request));
    events.extend(feed(&mut streams, Direction::Read, &chunked_response("text/event-stream", &openai_chat_stream_events())));

    assert_eq!(events.len(), 4);
    let kinds: Vec<&str> = events.iter().map(LlmEvent::kind).collect();
    assert_eq!(kinds, ["llm.request", "llm.response", "llm.request", "llm.response"]);
    let LlmEvent::Response(first) = &events[1] else { unreachable!() };
    assert_eq!(first.status, 429);
    assert_eq!(first.error_type.as_deref(), Some("rate_limit_exceeded"));
    assert!(first.tool_calls.is_empty());
    let LlmEvent::Response(second) = &events[3] else { unreachable!() };
    check_openai_chat_stream_response(second);
    assert_eq!(streams.len(), 1);
}

#[test]
fn interim_and_head_responses() {
    let mut streams = new_streams();
    let head_request = http_request("HEAD", "/v1/models", &[("Host", "api.openai.com")], "");
    only_request(feed(&mut streams, Direction::Write, &head_request));
    // The HEAD response announces a length but has no body.
    let mut bytes = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
    bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n");
    let response = only_response(feed(&mut streams, Direction::Read, &bytes));
    assert_eq!(response.status, 200);
    assert_eq!(response.api, "unknown");
    assert_eq!(response.body_bytes, 0);
    assert_eq!(response.response_sha256, None);
    let (request_bytes, _) = openai_chat_request(false);
    assert_eq!(only_request(feed(&mut streams, Direction::Write, &request_bytes)).api, "openai.chat_completions");
}

#[test]
fn invalid_gzip_response_reports_error() {
    let mut streams = new_streams();
    only_request(feed(&mut streams, Direction::Write, &openai_chat_request(false).0));
    let compressed = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03not really deflate";
    let response_bytes =
        http_response("200 OK", &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")], compressed);
    let response = only_response(feed(&mut streams, Direction::Read, &response_bytes));
    assert_eq!(response.api, "openai.chat_completions");
    assert_eq!(response.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(response.model, None);
    assert!(response.decode_error.as_deref().is_some_and(|e| e.starts_with("invalid gzip body")), "{response:?}");
    assert_eq!(response.response_sha256, Some(sha256_hex(compressed)));
    assert_eq!(response.body_bytes, compressed.len());
}

#[test]
fn gzip_json_response_decoded() {
    use std::io::Write as _;

    let mut streams = new_streams();
    only_request(feed(&mut streams, Direction::Write, &openai_chat_request(false).0));
    let json = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_Z1","type":"function","function":{"name":"run_shell","arguments":"{\"cmd\": \"ls\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(json).unwrap();
    let compressed = encoder.finish().unwrap();
    let response_bytes =
        http_response("200 OK", &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")], &compressed);
    let response = only_response(feed(&mut streams, Direction::Read, &response_bytes));
    assert_eq!(response.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(response.decode_error, None);
    assert_eq!(response.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(response.input_tokens, Some(12));
    assert_eq!(response.output_tokens, Some(7));
    assert_eq!(response.tool_calls.len(), 1);
    assert_eq!(response.tool_calls[0].name, "run_shell");
    assert_eq!(response.tool_calls[0].arguments_sha256, Some(sha256_hex(br#"{"cmd": "ls"}"#)));
    // The hash and length are of the bytes on the wire.
    assert_eq!(response.response_sha256, Some(sha256_hex(&compressed)));
    assert_eq!(response.body_bytes, compressed.len());
    assert!(!response.truncated);
}

#[test]
fn brotli_response_stays_opaque() {
    let mut streams = new_streams();
    only_request(feed(&mut streams, Direction::Write, &openai_chat_request(false).0));
    let response_bytes =
        http_response("200 OK", &[("Content-Type", "application/json"), ("Content-Encoding", "br")], b"\x0b\x02\x80");
    let response = only_response(feed(&mut streams, Direction::Read, &response_bytes));
    assert_eq!(response.content_encoding.as_deref(), Some("br"));
    assert_eq!(response.model, None);
    assert_eq!(response.decode_error, None);
}

#[test]
fn response_without_request_uses_shape() {
    let mut streams = new_streams();
    let response_bytes = chunked_response("text/event-stream", &anthropic_stream_events());
    let response = only_response(feed(&mut streams, Direction::Read, &response_bytes));
    assert_eq!(response.api, "anthropic.messages");
    assert_eq!(response.provider, None);
    assert_eq!(response.tool_calls.len(), 1);
}

#[test]
fn non_llm_traffic_is_silent() {
    let mut streams = new_streams();
    let request = http_request("GET", "/simple/requests/", &[("Host", "pypi.org"), ("Accept", "text/html")], "");
    assert!(feed(&mut streams, Direction::Write, &request).is_empty());
    let response = http_response("200 OK", &[("Content-Type", "text/html")], b"<html>links</html>");
    assert!(feed(&mut streams, Direction::Read, &response).is_empty());
    let json_request = http_request(
        "POST",
        "/graphql",
        &[("Host", "api.github.com"), ("Content-Type", "application/json")],
        r#"{"query":"{ viewer { login } }"}"#,
    );
    assert!(feed(&mut streams, Direction::Write, &json_request).is_empty());
    let json_response = http_response("200 OK", &[("Content-Type", "application/json")], br#"{"data":{"viewer":{"login":"x"}}}"#);
    assert!(feed(&mut streams, Direction::Read, &json_response).is_empty());
}

#[test]
fn llm_body_on_unknown_path_is_reported() {
    let mut streams = new_streams();
    let body = format!(r#"{{"model":"my-model","messages":[{{"role":"user","content":"{PROMPT}"}}]}}"#);
    let request_bytes =
        http_request("POST", "/gateway/invoke", &[("Host", "llm-gw.internal"), ("Content-Type", "application/json")], &body);
    let request = only_request(feed(&mut streams, Direction::Write, &request_bytes));
    assert_eq!(request.api, "unknown");
    assert_eq!(request.model.as_deref(), Some("my-model"));
    assert_eq!(request.stream, None);
    let response_body = br#"{"id":"x","object":"chat.completion","model":"my-model-1","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
    let response = only_response(feed(
        &mut streams,
        Direction::Read,
        &http_response("200 OK", &[("Content-Type", "application/json")], response_body),
    ));
    assert_eq!(response.api, "openai.chat_completions");
    assert_eq!(response.finish_reason.as_deref(), Some("stop"));
}

#[test]
fn http2_stream_is_ignored() {
    let mut streams = new_streams();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&openai_chat_request(false).0);
    assert!(feed(&mut streams, Direction::Write, &bytes).is_empty());
    assert!(feed(&mut streams, Direction::Read, &chunked_response("text/event-stream", &anthropic_stream_events())).is_empty());
    assert_eq!(streams.stats().unsupported_streams, 1);
}

#[test]
fn until_close_sse_ends_at_last_event() {
    let mut streams = new_streams();
    only_request(feed(&mut streams, Direction::Write, &anthropic_request(true)));
    let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n".to_vec();
    for event in anthropic_stream_events() {
        bytes.extend_from_slice(&event);
    }
    let response = only_response(feed(&mut streams, Direction::Read, &bytes));
    check_anthropic_stream_response(&response);
    assert!(!response.truncated);
    assert!(streams.close_stream(STREAM).is_empty());
    assert!(streams.is_empty());
}

#[test]
fn close_stream_reports_unfinished() {
    let mut streams = new_streams();
    only_request(feed(&mut streams, Direction::Write, &anthropic_request(true)));
    let mut bytes = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n".to_vec();
    let events = anthropic_stream_events();
    for event in &events[..events.len() - 1] {
        bytes.extend_from_slice(event);
    }
    assert!(feed(&mut streams, Direction::Read, &bytes).is_empty());
    // The body of an HTTP/1.0 response without length ends at close.
    let response = only_response(streams.close_stream(STREAM));
    assert!(!response.truncated);
    assert_eq!(response.tool_calls.len(), 1);

    let (request_bytes, _) = openai_chat_request(false);
    only_request(feed(&mut streams, Direction::Write, &request_bytes));
    feed(
        &mut streams,
        Direction::Read,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":\"m\",",
    );
    let response = only_response(streams.close_stream(STREAM));
    assert!(response.truncated);
    assert_eq!(response.model.as_deref(), Some("m"));
}

// ---- Gaps and truncation ----

/// The kernel copies at most this much of each call.
const CAPTURE_BOUND: usize = 16 * 1024;

/// Feeds calls as the uprobes deliver them: each call cut to the capture
/// bound, with the rest counted as missing.
fn feed_calls(streams: &mut LlmStreams, direction: Direction, bytes: &[u8], call_sizes: &[usize]) -> Vec<LlmEvent> {
    let mut events = Vec::new();
    let mut rest = bytes;
    for size in call_sizes.iter().copied().chain(std::iter::repeat(4096)) {
        if rest.is_empty() {
            break;
        }
        let call = &rest[..size.min(rest.len())];
        let copied = call.len().min(CAPTURE_BOUND);
        events.extend(streams.feed(STREAM, direction, &call[..copied], call.len() - copied, 0));
        rest = &rest[call.len()..];
    }
    events
}

fn position_of(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|window| window == needle).expect("needle in haystack")
}

/// Builds an OpenAI chat stream that starts with a large text event,
/// before the tool calls. Returns the events and the body length.
fn large_openai_chat_stream(text_bytes: usize) -> (Vec<Vec<u8>>, usize) {
    let mut events = openai_chat_stream_events();
    let text = ANSWER.repeat(text_bytes / ANSWER.len() + 1);
    let big = format!(
        r#"{{"id":"chatcmpl-A1","object":"chat.completion.chunk","created":1735000000,"model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"delta":{{"content":"{text}"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
    );
    events.insert(0, sse(&[(None, &big)], "\n").remove(0));
    let body_len = events.iter().map(Vec::len).sum();
    (events, body_len)
}

#[test]
fn gap_inside_large_event() {
    let (events, body_len) = large_openai_chat_stream(40 * 1024);
    let response_bytes = chunked_response("text/event-stream", &events);
    let mut streams = new_streams();
    only_request(feed(&mut streams, Direction::Write, &openai_chat_request(true).0));
    // One SSL_read returns the head and 30 KiB of the 40 KiB event. The
    // kernel copies the first 16 KiB of that call.
    let big_call = position_of(&response_bytes, &events[0]) + 30 * 1024;
    let response = only_response(feed_calls(&mut streams, Direction::Read, &response_bytes, &[big_call, 100, 3000]));
    assert!(response.truncated);
    assert_eq!(response.response_sha256, None);
    // The gap lay inside one chunk, so its length is known exactly.
    assert_eq!(response.body_bytes, body_len);
    check_openai_chat_stream_response(&response);
    assert!(streams.stats().gaps >= 1);
}

#[test]
fn gap_across_chunks_resyncs() {
    let (events, _) = large_openai_chat_stream(20 * 1024);
    let response_bytes = chunked_response("text/event-stream", &events);
    let mut streams = new_streams();
    only_request(feed(&mut streams, Direction::Write, &openai_chat_request(true).0));
    // One call ends 350 bytes into the event after the large one, so the
    // bytes the kernel did not copy hide the large event's end, its chunk
    // framing and the start of the first tool call.
    let big_end = position_of(&response_bytes, &events[0]) + events[0].len();
    let response = only_response(feed_calls(&mut streams, Direction::Read, &response_bytes, &[big_end + 350]));
    assert!(response.truncated);
    assert_eq!(response.response_sha256, None);
    assert_eq!(response.input_tokens, Some(85));
    assert_eq!(response.output_tokens, Some(40));
    assert_eq!(response.finish_reason.as_deref(), Some("tool_calls"));
    // The first call's start was lost, so its name is unknown and its
    // fragments cannot be trusted. The call that started after the gap is
    // whole.
    assert_eq!(response.tool_calls.len(), 2, "{:?}", response.tool_calls);
    assert_eq!(response.tool_calls[0].name, "");
    assert_eq!(response.tool_calls[0].arguments_sha256, None);
    assert_eq!(response.tool_calls[1].name, "run_shell");
    assert_eq!(response.tool_calls[1].arguments_sha256, Some(sha256_hex(br#"{"cmd": "ls -la"}"#)));
}

#[test]
fn gap_in_content_length_stream() {
    let (events, body_len) = large_openai_chat_stream(40 * 1024);
    let body: Vec<u8> = events.concat();
    let response_bytes = http_response("200 OK", &[("Content-Type", "text/event-stream")], &body);
    let mut streams = new_streams();
    only_request(feed(&mut streams, Direction::Write, &openai_chat_request(true).0));
    let big_call = position_of(&response_bytes, &body) + 30 * 1024;
    let mut events = feed_calls(&mut streams, Direction::Read, &response_bytes, &[big_call]);
    // The next exchange on the connection is parsed normally.
    events.extend(feed(&mut streams, Direction::Write, &anthropic_request(false)));
    assert_eq!(events.len(), 2);
    let LlmEvent::Response(response) = &events[0] else { panic!("{events:?}") };
    assert!(response.truncated);
    assert_eq!(response.body_bytes, body_len);
    check_openai_chat_stream_response(response);
    let LlmEvent::Request(request) = &events[1] else { panic!("{events:?}") };
    assert_eq!(request.api, "anthropic.messages");
}

#[test]
fn cut_request_body() {
    let padding = "x".repeat(30 * 1024);
    let body = format!(
        r#"{{"model":"gpt-4o","stream":true,"messages":[{{"role":"user","content":"{PROMPT}{padding}"}}],"tools":[{{"type":"function","function":{{"name":"late_tool"}}}}]}}"#
    );
    let request_bytes =
        http_request("POST", "/v1/chat/completions", &[("Host", "api.openai.com"), ("Content-Type", "application/json")], &body);
    let mut streams = new_streams();
    let request = only_request(feed_calls(&mut streams, Direction::Write, &request_bytes, &[request_bytes.len()]));
    assert!(request.truncated);
    assert_eq!(request.model.as_deref(), Some("gpt-4o"));
    assert_eq!(request.stream, Some(true));
    // `tools` came after the cut.
    assert!(request.tools_offered.is_empty());
    assert_eq!(request.prompt_sha256, None);
    assert_eq!(request.body_bytes, body.len());
    // The response still pairs with the request.
    let response =
        only_response(feed(&mut streams, Direction::Read, &chunked_response("text/event-stream", &openai_chat_stream_events())));
    assert_eq!(response.provider, Some("openai"));
}

#[test]
fn body_over_buffer_limit() {
    let mut streams = LlmStreams::new(LlmConfig { max_buffer_bytes: 4096, max_streams: 4 }, KEY);
    let padding = "y".repeat(10_000);
    let body = format!(r#"{{"model":"claude-x","messages":[{{"role":"user","content":"{padding}"}}]}}"#);
    let request_bytes = http_request("POST", "/v1/messages", &[("Host", "api.anthropic.com")], &body);
    let request = only_request(feed(&mut streams, Direction::Write, &request_bytes));
    // Nothing was lost, so the hash is whole, but parsing stopped at the limit.
    assert!(request.truncated);
    assert_eq!(request.prompt_sha256, Some(sha256_hex(body.as_bytes())));
    assert_eq!(request.model.as_deref(), Some("claude-x"));
}

#[test]
fn buffers_stay_bounded() {
    let limit = 4096;
    let mut streams = LlmStreams::new(LlmConfig { max_buffer_bytes: limit, max_streams: 4 }, KEY);
    let check = |streams: &LlmStreams| {
        for stream in streams.streams.values() {
            for buffered in stream.buffered() {
                assert!(buffered <= limit + http::MAX_START_LINE, "{buffered}");
            }
        }
    };

    // A head that never ends.
    feed(&mut streams, Direction::Write, b"POST /v1/messages HTTP/1.1\r\n");
    for _ in 0..100 {
        feed(&mut streams, Direction::Write, &[b'a'; 1000]);
        check(&streams);
    }

    // A server-sent event line that never ends.
    only_request(feed(&mut streams, Direction::Write, &anthropic_request(true)));
    feed(&mut streams, Direction::Read, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: ");
    for _ in 0..100 {
        feed(&mut streams, Direction::Read, &[b'b'; 1000]);
        check(&streams);
    }

    let mut events = feed(&mut streams, Direction::Read, b"\n\n");
    for event in anthropic_stream_events() {
        events.extend(feed(&mut streams, Direction::Read, &event));
    }
    // The body is read until close, and message_stop ends it.
    let response = only_response(events);
    assert!(response.truncated);
    assert_eq!(response.tool_calls.len(), 1);
}

// ---- Credentials and privacy ----

#[test]
fn fingerprints_stable_and_keyed() {
    let request_with = |secret: &str| {
        http_request(
            "POST",
            "/v1/messages",
            &[("Host", "api.anthropic.com"), ("x-api-key", secret)],
            r#"{"model":"m","messages":[]}"#,
        )
    };
    let fingerprint = |key: [u8; 32], secret: &str| {
        let mut streams = LlmStreams::new(LlmConfig { max_buffer_bytes: 1 << 16, max_streams: 4 }, key);
        let request = only_request(feed(&mut streams, Direction::Write, &request_with(secret)));
        request.credential.map(|credential| credential.fingerprint)
    };
    let first = fingerprint(KEY, SECRET);
    assert!(first.is_some());
    assert_eq!(first, fingerprint(KEY, SECRET));
    assert_ne!(first, fingerprint(KEY, "sk-other-secret"));
    assert_ne!(first, fingerprint([7; 32], SECRET));
    assert_eq!(first.as_ref().map(String::len), Some(32));
}

#[test]
fn no_secret_or_text_in_output() {
    let mut streams = new_streams();
    let mut events = Vec::new();
    let mut rng = Rng(3);
    events.extend(feed_in_pieces(&mut streams, Direction::Write, &openai_chat_request(true).0, &mut rng, 64));
    events.extend(feed(&mut streams, Direction::Read, &chunked_response("text/event-stream", &openai_chat_stream_events())));
    events.extend(feed(&mut streams, Direction::Write, &anthropic_request(true)));
    events.extend(feed(&mut streams, Direction::Read, &chunked_response("text/event-stream", &anthropic_stream_events())));
    let target = format!("/v1beta/models/gemini-2.0-flash:generateContent?key={SECRET}");
    events.extend(feed(
        &mut streams,
        Direction::Write,
        &http_request("POST", &target, &[("Host", "generativelanguage.googleapis.com")], &gemini_body()),
    ));
    let azure_key = [("Host", "res.openai.azure.com"), ("api-key", SECRET)];
    events.extend(feed(
        &mut streams,
        Direction::Write,
        &http_request(
            "POST",
            "/openai/deployments/d/chat/completions?api-version=2024-10-21",
            &azure_key,
            &openai_chat_body(false),
        ),
    ));
    let error = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {SECRET}. {PROMPT}","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
    );
    events.extend(feed(
        &mut streams,
        Direction::Read,
        &http_response("401 Unauthorized", &[("Content-Type", "application/json")], error.as_bytes()),
    ));
    // A cut body: the secret and prompt are in the part that was kept.
    events.extend(feed_calls(&mut streams, Direction::Write, &anthropic_request(false), &[120]));
    events.extend(streams.close_process(STREAM.pid));
    assert!(events.len() >= 8, "{events:?}");

    let forbidden = [SECRET, PROMPT, ANSWER, ARGUMENTS_TEXT, "SECRETVALUE", "PROMPT-TEXT", "RESPONSE-TEXT", "ARGUMENT-TEXT"];
    for event in &events {
        let debug = format!("{event:?}");
        let json = match event {
            LlmEvent::Request(request) => serde_json::to_string(request),
            LlmEvent::Response(response) => serde_json::to_string(response),
        }
        .expect("events serialise");
        for text in forbidden {
            assert!(!debug.contains(text), "{text} in {debug}");
            assert!(!json.contains(text), "{text} in {json}");
        }
    }
    assert!(!format!("{streams:?}").contains(SECRET));
}

// ---- Streams and robustness ----

#[test]
fn streams_are_bounded() {
    let mut streams = LlmStreams::new(LlmConfig { max_buffer_bytes: 1 << 16, max_streams: 3 }, KEY);
    let key = |stream: u64| StreamKey { pid: 1, stream };
    let (request_bytes, _) = openai_chat_request(false);
    for stream in 0..3 {
        streams.feed(key(stream), Direction::Write, &request_bytes[..10], 0, 0);
    }
    // Stream 0 is fed again, so stream 1 is now the least recently fed.
    streams.feed(key(0), Direction::Write, &request_bytes[10..], 0, 0);
    streams.feed(key(9), Direction::Write, &request_bytes, 0, 0);
    assert_eq!(streams.len(), 3);
    assert!(!streams.streams.contains_key(&key(1)));
    assert!(streams.streams.contains_key(&key(0)));
    assert_eq!(streams.stats().evicted_streams, 1);

    streams.feed(StreamKey { pid: 2, stream: 0 }, Direction::Write, &request_bytes[..10], 0, 0);
    streams.forget_process(1);
    assert_eq!(streams.len(), 1);
    streams.forget_process(2);
    assert!(streams.is_empty());
    assert!(streams.recency.is_empty());
    assert!(streams.streams_per_pid.is_empty());
}

#[test]
fn eviction_reports_unfinished_request() {
    let mut streams = LlmStreams::new(LlmConfig { max_buffer_bytes: 1 << 16, max_streams: 1 }, KEY);
    let (request_bytes, _) = openai_chat_request(false);
    assert!(
        streams
            .feed(StreamKey { pid: 1, stream: 1 }, Direction::Write, &request_bytes[..request_bytes.len() - 5], 0, 0)
            .is_empty()
    );
    let events = streams.feed(StreamKey { pid: 1, stream: 2 }, Direction::Write, b"GET ", 0, 0);
    let request = only_request(events);
    assert_eq!(request.key, StreamKey { pid: 1, stream: 1 });
    assert!(request.truncated);
}

/// Fixtures of every API, both directions, for the robustness tests.
fn all_fixtures() -> Vec<(Direction, Vec<u8>)> {
    vec![
        (Direction::Write, openai_chat_request(true).0),
        (Direction::Read, chunked_response("text/event-stream", &openai_chat_stream_events())),
        (Direction::Write, anthropic_request(true)),
        (Direction::Read, chunked_response("text/event-stream", &anthropic_stream_events())),
        (Direction::Write, openai_responses_request(false)),
        (Direction::Read, http_response("200 OK", &[("Content-Type", "application/x-ndjson")], br#"{"model":"m","done":true}"#)),
    ]
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(0xdead_beef);
    let mut streams = LlmStreams::new(LlmConfig { max_buffer_bytes: 2048, max_streams: 4 }, KEY);
    let alphabet: &[u8] =
        b"HTTP/1.1 200 POST GET\r\n\r\n:data: event: {}[]\"\\,0123456789abcdef;chunked Content-Length Transfer-Encoding \x00\xff";
    for _ in 0..20_000 {
        let key = StreamKey { pid: rng.below(3) as u32, stream: rng.below(3) as u64 };
        let direction = if rng.below(2) == 0 { Direction::Write } else { Direction::Read };
        let len = rng.below(200);
        let data: Vec<u8> =
            (0..len).map(|_| if rng.below(2) == 0 { alphabet[rng.below(alphabet.len())] } else { rng.next() as u8 }).collect();
        let missing = if rng.below(5) == 0 { rng.below(100_000) } else { 0 };
        streams.feed(key, direction, &data, missing, 0);
        assert!(streams.len() <= 4);
        if rng.below(500) == 0 {
            streams.close_process(key.pid);
        }
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let mut rng = Rng(0x1234_5678);
    for round in 0..300 {
        let mut streams = LlmStreams::new(LlmConfig { max_buffer_bytes: 1 << (10 + round % 8), max_streams: 2 }, KEY);
        for (direction, mut bytes) in all_fixtures() {
            for _ in 0..rng.below(8) {
                let at = rng.below(bytes.len());
                bytes[at] = match rng.below(4) {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b'0' + rng.below(10) as u8,
                    _ => rng.next() as u8,
                };
            }
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let size = (1 + rng.below(300)).min(rest.len());
                let missing = if rng.below(6) == 0 { rng.below(2000) } else { 0 };
                // A gap removes bytes: skip them in the input as the kernel would.
                let skipped = missing.min(rest.len() - size);
                streams.feed(STREAM, direction, &rest[..size], missing, 0);
                rest = &rest[size + skipped..];
            }
        }
        streams.close_stream(STREAM);
    }
}

// ---- Responses the kernel passes over ----

#[test]
fn ignored_download_skipped_then_call_read() {
    let mut streams = new_streams();
    let download = http_request("GET", "/files/big.tar", &[("Host", "files.example.org")], "");
    assert!(feed(&mut streams, Direction::Write, &download).is_empty());
    let body = vec![b'z'; 100_000];
    let response = http_response("200 OK", &[("Content-Type", "application/octet-stream")], &body);
    let head_len = response.len() - body.len();
    // The first read carries the head and 16 KiB of body.
    let first = &response[..head_len + 16_384];
    assert!(feed(&mut streams, Direction::Read, first).is_empty());
    let left = streams.ignored_response_left(STREAM);
    assert_eq!(left, Some((body.len() - 16_384) as u64));

    // The kernel skips the rest in two calls.
    let rest = left.unwrap() as usize;
    assert!(streams.skip(STREAM, Direction::Read, rest - 1000, 0).is_empty());
    assert!(streams.skip(STREAM, Direction::Read, 1000, 0).is_empty());
    assert_eq!(streams.stats().skipped_calls, 2);
    assert_eq!(streams.stats().skipped_bytes, rest as u64);
    assert_eq!(streams.stats().gaps, 0, "a skip is not a loss");
    assert_eq!(streams.ignored_response_left(STREAM), None);

    // The next exchange on the stream is read in full.
    let (request, _) = openai_chat_request(false);
    let request = only_request(feed(&mut streams, Direction::Write, &request));
    assert_eq!(request.path, "/v1/chat/completions");
    let reply = br#"{"id":"chatcmpl-B2","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;
    let response = only_response(feed(&mut streams, Direction::Read, &http_response("200 OK", &[("Content-Type", "application/json")], reply)));
    assert_eq!(response.model.as_deref(), Some("gpt-4o-mini"));
    assert!(!response.truncated);
}

#[test]
fn llm_response_never_skippable() {
    let mut streams = new_streams();
    let (request, _) = openai_chat_request(false);
    only_request(feed(&mut streams, Direction::Write, &request));
    let body = vec![b' '; 100_000];
    let response = http_response("200 OK", &[("Content-Type", "application/json")], &body);
    assert!(feed(&mut streams, Direction::Read, &response[..20_000]).is_empty());
    assert_eq!(streams.ignored_response_left(STREAM), None);
}
