//! Recognisers for response bodies: model, tool calls, token counts and
//! finish reason, from whole JSON bodies and from streamed events.
//!
//! Each API streams a tool call differently. OpenAI chat completions send
//! argument fragments per `(choice, tool index)`. The responses API sends
//! fragments per output item and repeats the whole arguments when the item
//! is done. Anthropic sends `partial_json` fragments per content block.
//! Gemini and Ollama send each call whole. Fragments are hashed as they
//! arrive, so argument text is never held.

use sha2::{Digest, Sha256};

use super::{
    ToolCall,
    tree::Json,
    fingerprint::{finish_hex, sha256_hex},
    providers::{Api, MAX_MODEL_BYTES, api_from_response_shape, bounded},
    request::MAX_TOOL_NAME_BYTES,
};

/// Most tool calls kept per response.
pub(super) const MAX_TOOL_CALLS: usize = 128;
/// Maximum length of a call id, finish reason or error type.
const MAX_LABEL_BYTES: usize = 128;

/// The fields a response has revealed so far.
pub(super) struct ResponseFields {
    pub api: Api,
    streaming: bool,
    pub model: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    pub error_type: Option<String>,
    /// The stream's last event arrived (`[DONE]`, `message_stop`,
    /// `response.completed`, Ollama's `done`).
    pub done: bool,
    /// More tool calls arrived than `MAX_TOOL_CALLS`.
    pub tool_calls_cut: bool,
    /// Body bytes were lost, so a fragment may belong to a call whose start
    /// was lost.
    after_gap: bool,
    calls: Vec<PendingCall>,
}

/// A tool call being assembled.
struct PendingCall {
    /// The address of this call's fragments: `(choice, tool index)` for
    /// OpenAI chat completions, `(0, output index)` for the responses API,
    /// `(0, content block index)` for Anthropic.
    position: Option<(u64, u64)>,
    /// The responses API's output item id.
    item_id: Option<String>,
    name: String,
    call_id: Option<String>,
    hasher: Sha256,
    fragments_seen: bool,
    /// Arguments given as a JSON object instead of fragments, used when no
    /// fragment arrives (compact `serde_json` text).
    object_arguments: Option<Vec<u8>>,
    /// Hash of the whole arguments text when the API sent it in one piece.
    final_hash: Option<String>,
    /// Still receiving fragments.
    open: bool,
    /// A gap hit while fragments were arriving, so the hash would be wrong.
    broken: bool,
}

impl PendingCall {
    fn new(name: &str, call_id: Option<&str>, position: Option<(u64, u64)>) -> Self {
        PendingCall {
            position,
            item_id: None,
            name: bounded(name, MAX_TOOL_NAME_BYTES),
            call_id: call_id.map(|id| bounded(id, MAX_LABEL_BYTES)),
            hasher: Sha256::new(),
            fragments_seen: false,
            object_arguments: None,
            final_hash: None,
            open: true,
            broken: false,
        }
    }

    fn add_fragment(&mut self, fragment: &str) {
        self.hasher.update(fragment.as_bytes());
        self.fragments_seen = true;
    }

    /// Sets the complete arguments text, which overrides the fragments.
    fn set_arguments(&mut self, text: &[u8]) {
        self.final_hash = Some(sha256_hex(text));
        self.open = false;
    }

    fn finish(self) -> ToolCall {
        let arguments_sha256 = if self.final_hash.is_some() {
            self.final_hash
        } else if self.broken {
            None
        } else if self.fragments_seen {
            Some(finish_hex(self.hasher))
        } else {
            self.object_arguments.as_deref().map(sha256_hex)
        };
        ToolCall { name: self.name, call_id: self.call_id, arguments_sha256 }
    }
}

impl ResponseFields {
    /// `api` is the request's API, or `Unknown` to recognise it from the body.
    pub(super) fn new(api: Api, streaming: bool) -> Self {
        ResponseFields {
            api,
            streaming,
            model: None,
            input_tokens: None,
            output_tokens: None,
            finish_reason: None,
            error_type: None,
            done: false,
            tool_calls_cut: false,
            after_gap: false,
            calls: Vec::new(),
        }
    }

    /// Reads one server-sent event.
    pub(super) fn on_event(&mut self, name: &str, data: &[u8]) {
        if data.trim_ascii() == b"[DONE]" {
            self.done = true;
            return;
        }
        if let Ok(value) = Json::parse(data) {
            self.on_value(Some(name).filter(|name| !name.is_empty()), &value);
        }
    }

    /// Reads one JSON text: a whole body, one NDJSON line or one element of
    /// a streamed JSON array. A top-level array is read element by element.
    pub(super) fn on_json(&mut self, text: &[u8]) {
        match Json::parse(text) {
            Ok(Json::Array(values)) => values.iter().for_each(|value| self.on_value(None, value)),
            Ok(value) => self.on_value(None, &value),
            Err(_) => {}
        }
    }

    /// Reads one JSON value.
    pub(super) fn on_value(&mut self, event: Option<&str>, value: &Json<'_>) {
        if self.api == Api::Unknown {
            self.api = api_from_response_shape(value, self.streaming);
        }
        // The responses API sends `"error": null` on success.
        if let Some(error) = value.get("error").filter(|error| !error.is_null()) {
            self.read_error(error);
        }
        match self.api {
            Api::OpenAiChatCompletions | Api::OpenAiCompletions | Api::OpenAiEmbeddings => self.read_openai_chat(value),
            Api::OpenAiResponses => self.read_openai_responses(event, value),
            Api::AnthropicMessages => self.read_anthropic(event, value),
            Api::GeminiGenerateContent | Api::GeminiStreamGenerateContent => self.read_gemini(value),
            Api::OllamaChat | Api::OllamaGenerate => self.read_ollama(value),
            Api::Unknown => {}
        }
    }

    /// Notes that body bytes were lost: calls still receiving fragments can
    /// no longer be hashed, unless a later event repeats their arguments.
    pub(super) fn on_gap(&mut self) {
        self.after_gap = true;
        for call in self.calls.iter_mut().filter(|call| call.open) {
            call.broken = true;
        }
    }

    /// Returns the finished tool calls in the order they started.
    pub(super) fn take_tool_calls(&mut self) -> Vec<ToolCall> {
        std::mem::take(&mut self.calls).into_iter().map(PendingCall::finish).collect()
    }

    fn add_call(&mut self, call: PendingCall) -> Option<&mut PendingCall> {
        if self.calls.len() >= MAX_TOOL_CALLS {
            self.tool_calls_cut = true;
            return None;
        }
        self.calls.push(call);
        self.calls.last_mut()
    }

    fn set_model(&mut self, value: Option<&Json<'_>>) {
        if self.model.is_none()
            && let Some(model) = value.and_then(Json::as_str).filter(|model| !model.is_empty())
        {
            self.model = Some(bounded(model, MAX_MODEL_BYTES));
        }
    }

    fn set_finish_reason(&mut self, value: Option<&Json<'_>>) {
        if let Some(reason) = value.and_then(Json::as_str).filter(|reason| !reason.is_empty()) {
            self.finish_reason = Some(bounded(reason, MAX_LABEL_BYTES));
        }
    }

    /// Reads token counts from a usage object; later values replace earlier
    /// ones because streams report running totals.
    fn read_usage(&mut self, usage: Option<&Json<'_>>, input_keys: &[&str], output_keys: &[&str]) {
        let Some(usage) = usage.filter(|usage| usage.is_object()) else {
            return;
        };
        if let Some(count) = input_keys.iter().find_map(|key| usage.get(key).and_then(Json::as_u64)) {
            self.input_tokens = Some(count);
        }
        if let Some(count) = output_keys.iter().find_map(|key| usage.get(key).and_then(Json::as_u64)) {
            self.output_tokens = Some(count);
        }
    }

    /// Keeps the error's type or code. The message is not kept: providers
    /// echo parts of the request in it, such as a masked API key.
    fn read_error(&mut self, error: &Json<'_>) {
        // The most specific label first: OpenAI's string `code`
        // (`invalid_api_key`), then `type` (Anthropic), then Gemini's
        // `status` (`INVALID_ARGUMENT`), then a numeric `code`.
        let text = |key: &str| error.get(key).and_then(Json::as_str).map(str::to_owned);
        let label = text("code")
            .or_else(|| text("type"))
            .or_else(|| text("status"))
            .or_else(|| error.get("code").and_then(Json::as_u64).map(|code| code.to_string()));
        let safe = |label: &String| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_BYTES
                && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"_-.".contains(&byte))
        };
        if let Some(label) = label.filter(safe) {
            self.error_type = Some(label);
        } else if self.error_type.is_none() {
            self.error_type = Some("error".to_owned());
        }
    }

    /// Reads OpenAI chat completions (whole or `chat.completion.chunk`),
    /// legacy completions and embeddings.
    fn read_openai_chat(&mut self, value: &Json<'_>) {
        self.set_model(value.get("model"));
        self.read_usage(value.get("usage"), &["prompt_tokens", "input_tokens"], &["completion_tokens", "output_tokens"]);
        let Some(Json::Array(choices)) = value.get("choices") else {
            return;
        };
        for (position, choice) in choices.iter().enumerate() {
            let choice_index = choice.get("index").and_then(Json::as_u64).unwrap_or(position as u64);
            let (message, streamed) = match (choice.get("delta"), choice.get("message")) {
                (Some(delta), _) => (delta, true),
                (None, Some(message)) => (message, false),
                (None, None) => (&Json::Null, false),
            };
            if let Some(Json::Array(tool_calls)) = message.get("tool_calls") {
                for (position, tool_call) in tool_calls.iter().enumerate() {
                    let tool_index = tool_call.get("index").and_then(Json::as_u64).unwrap_or(position as u64);
                    self.read_openai_tool_call(tool_call, (choice_index, tool_index), streamed);
                }
            }
            // The deprecated `functions` API: one call per choice.
            if let Some(function_call) = message.get("function_call").filter(|call| call.is_object()) {
                let wrapped = Json::Object(vec![("function".into(), function_call.clone())]);
                self.read_openai_tool_call(&wrapped, (choice_index, u64::MAX), streamed);
            }
            if choice.get("finish_reason").is_some_and(|reason| !reason.is_null()) {
                self.set_finish_reason(choice.get("finish_reason"));
                for call in self.calls.iter_mut().filter(|call| call.position.is_some_and(|(choice, _)| choice == choice_index)) {
                    call.open = false;
                }
            }
        }
    }

    fn read_openai_tool_call(&mut self, tool_call: &Json<'_>, position: (u64, u64), streamed: bool) {
        let function = tool_call.get("function");
        let name = function.and_then(|function| function.get("name")).and_then(Json::as_str);
        let arguments = function.and_then(|function| function.get("arguments"));
        let id = tool_call.get("id").and_then(Json::as_str).filter(|id| !id.is_empty());
        if !streamed {
            if let Some(call) = self.add_call(PendingCall::new(name.unwrap_or(""), id, Some(position))) {
                match arguments {
                    Some(Json::String(text)) => call.set_arguments(text.as_bytes()),
                    // Some compatible servers send an object.
                    Some(other @ Json::Object(_)) => call.set_arguments(&compact(other)),
                    _ => call.open = false,
                }
            }
            return;
        }
        // A new id at a known position starts a new call: compatible
        // servers sometimes omit `index`, so positions repeat.
        let existing = self.calls.iter().rposition(|call| {
            call.open
                && call.position == Some(position)
                && (id.is_none() || call.call_id.is_none() || call.call_id.as_deref() == id)
        });
        let after_gap = self.after_gap;
        let call = match existing {
            Some(index) => &mut self.calls[index],
            None => match self.add_call(PendingCall::new("", id, Some(position))) {
                Some(call) => {
                    // A call's first fragment carries its id; one without it
                    // after a gap continues a call whose start was lost.
                    call.broken = after_gap && id.is_none();
                    call
                }
                None => return,
            },
        };
        if call.call_id.is_none() {
            call.call_id = id.map(|id| bounded(id, MAX_LABEL_BYTES));
        }
        // The name arrives whole in the first fragment; some servers repeat it.
        if call.name.is_empty()
            && let Some(name) = name
        {
            call.name = bounded(name, MAX_TOOL_NAME_BYTES);
        }
        if let Some(Json::String(fragment)) = arguments {
            call.add_fragment(fragment);
        }
    }

    /// Reads the OpenAI responses API: a whole `response` object or stream events.
    fn read_openai_responses(&mut self, event: Option<&str>, value: &Json<'_>) {
        let kind = value.get("type").and_then(Json::as_str).or(event).unwrap_or("");
        let output_index = value.get("output_index").and_then(Json::as_u64);
        match kind {
            "response.created" | "response.in_progress" | "response.queued" => {
                self.read_response_object(value.get("response").unwrap_or(&Json::Null), false);
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.read_response_object(value.get("response").unwrap_or(&Json::Null), true);
                self.done = true;
            }
            "response.output_item.added" | "response.output_item.done" => {
                if let Some(item) = value.get("item") {
                    self.read_output_item(item, output_index, kind.ends_with(".done"));
                }
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                let item_id = value.get("item_id").and_then(Json::as_str);
                if let Some(call) = self.find_output_call(item_id, output_index, None)
                    && let Some(delta) = value.get("delta").and_then(Json::as_str)
                    && call.open
                {
                    call.add_fragment(delta);
                }
            }
            "response.function_call_arguments.done" | "response.custom_tool_call_input.done" => {
                let item_id = value.get("item_id").and_then(Json::as_str);
                let text = value.get("arguments").or_else(|| value.get("input")).and_then(Json::as_str);
                if let Some(call) = self.find_output_call(item_id, output_index, None)
                    && let Some(text) = text
                {
                    call.set_arguments(text.as_bytes());
                }
            }
            "error" => self.read_error(value),
            _ if value.get("object").and_then(Json::as_str) == Some("response") => {
                self.read_response_object(value, true);
            }
            _ => {}
        }
    }

    fn read_response_object(&mut self, response: &Json<'_>, last: bool) {
        self.set_model(response.get("model"));
        if let Some(error) = response.get("error").filter(|error| !error.is_null()) {
            self.read_error(error);
        }
        self.read_usage(response.get("usage"), &["input_tokens", "prompt_tokens"], &["output_tokens", "completion_tokens"]);
        if !last {
            return;
        }
        let reason =
            response.get("incomplete_details").and_then(|details| details.get("reason")).or_else(|| response.get("status"));
        self.set_finish_reason(reason);
        if let Some(Json::Array(output)) = response.get("output") {
            for (index, item) in output.iter().enumerate() {
                self.read_output_item(item, Some(index as u64), true);
            }
        }
    }

    /// Reads one output item. Only items the client executes are tool
    /// calls: function and custom tool calls, local shell and computer use.
    /// Hosted tools (web search, file search, MCP) run at the provider.
    fn read_output_item(&mut self, item: &Json<'_>, output_index: Option<u64>, done: bool) {
        let kind = item.get("type").and_then(Json::as_str).unwrap_or("");
        let (name, arguments): (Option<&str>, Option<Vec<u8>>) = match kind {
            "function_call" => (
                item.get("name").and_then(Json::as_str),
                item.get("arguments").and_then(Json::as_str).map(|text| text.as_bytes().to_vec()),
            ),
            "custom_tool_call" => (
                item.get("name").and_then(Json::as_str),
                item.get("input").and_then(Json::as_str).map(|text| text.as_bytes().to_vec()),
            ),
            "local_shell_call" => (Some("local_shell"), item.get("action").map(compact)),
            "computer_call" => (Some("computer"), item.get("action").map(compact)),
            _ => return,
        };
        let item_id = item.get("id").and_then(Json::as_str);
        let call_id = item.get("call_id").and_then(Json::as_str);
        let call = match self.find_output_call(item_id, output_index, call_id) {
            Some(call) => call,
            None => {
                let mut call = PendingCall::new(name.unwrap_or(""), call_id, output_index.map(|index| (0, index)));
                call.item_id = item_id.map(|id| bounded(id, MAX_LABEL_BYTES));
                match self.add_call(call) {
                    Some(call) => call,
                    None => return,
                }
            }
        };
        if call.name.is_empty()
            && let Some(name) = name
        {
            call.name = bounded(name, MAX_TOOL_NAME_BYTES);
        }
        if call.call_id.is_none() {
            call.call_id = call_id.map(|id| bounded(id, MAX_LABEL_BYTES));
        }
        match arguments {
            Some(text) if done => call.set_arguments(&text),
            // An added item usually has empty arguments; fragments follow.
            Some(text) if !text.is_empty() => {
                call.hasher.update(&text);
                call.fragments_seen = true;
            }
            _ => {}
        }
    }

    /// Finds a responses-API call by item id, then call id, then output index.
    fn find_output_call(
        &mut self,
        item_id: Option<&str>,
        output_index: Option<u64>,
        call_id: Option<&str>,
    ) -> Option<&mut PendingCall> {
        let index = item_id
            .and_then(|id| self.calls.iter().position(|call| call.item_id.as_deref() == Some(id)))
            .or_else(|| call_id.and_then(|id| self.calls.iter().position(|call| call.call_id.as_deref() == Some(id))))
            .or_else(|| {
                let index = output_index?;
                self.calls.iter().position(|call| call.position == Some((0, index)))
            })?;
        self.calls.get_mut(index)
    }

    /// Reads Anthropic messages: a whole `message` or stream events.
    fn read_anthropic(&mut self, event: Option<&str>, value: &Json<'_>) {
        let kind = value.get("type").and_then(Json::as_str).or(event).unwrap_or("");
        let block_index = value.get("index").and_then(Json::as_u64);
        match kind {
            "message_start" => {
                let message = value.get("message").unwrap_or(&Json::Null);
                self.set_model(message.get("model"));
                self.read_usage(message.get("usage"), &["input_tokens"], &["output_tokens"]);
            }
            "content_block_start" => {
                let block = value.get("content_block").unwrap_or(&Json::Null);
                if block.get("type").and_then(Json::as_str) == Some("tool_use") {
                    let name = block.get("name").and_then(Json::as_str).unwrap_or("");
                    let id = block.get("id").and_then(Json::as_str);
                    let object_arguments = block.get("input").map(compact);
                    let position = block_index.map(|index| (0, index));
                    if let Some(call) = self.add_call(PendingCall::new(name, id, position)) {
                        call.object_arguments = object_arguments;
                    }
                }
            }
            "content_block_delta" => {
                let delta = value.get("delta").unwrap_or(&Json::Null);
                if delta.get("type").and_then(Json::as_str) == Some("input_json_delta")
                    && let Some(fragment) = delta.get("partial_json").and_then(Json::as_str)
                    && let Some(call) = self.open_call_at(block_index)
                {
                    call.add_fragment(fragment);
                }
            }
            "content_block_stop" => {
                if let Some(call) = self.open_call_at(block_index) {
                    call.open = false;
                }
            }
            "message_delta" => {
                self.set_finish_reason(value.get("delta").and_then(|delta| delta.get("stop_reason")));
                self.read_usage(value.get("usage"), &["input_tokens"], &["output_tokens"]);
            }
            "message_stop" => self.done = true,
            "message" => {
                self.set_model(value.get("model"));
                self.read_usage(value.get("usage"), &["input_tokens"], &["output_tokens"]);
                self.set_finish_reason(value.get("stop_reason"));
                if let Some(Json::Array(content)) = value.get("content") {
                    for block in content.iter().filter(|block| block.get("type").and_then(Json::as_str) == Some("tool_use")) {
                        let name = block.get("name").and_then(Json::as_str).unwrap_or("");
                        let id = block.get("id").and_then(Json::as_str);
                        if let Some(call) = self.add_call(PendingCall::new(name, id, None)) {
                            call.set_arguments(&compact(block.get("input").unwrap_or(&Json::Null)));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn open_call_at(&mut self, block_index: Option<u64>) -> Option<&mut PendingCall> {
        let position = (0, block_index?);
        self.calls.iter_mut().rev().find(|call| call.open && call.position == Some(position))
    }

    /// Reads a Gemini `GenerateContentResponse`, whole or one streamed chunk.
    fn read_gemini(&mut self, value: &Json<'_>) {
        self.set_model(value.get("modelVersion"));
        self.read_usage(value.get("usageMetadata"), &["promptTokenCount"], &["candidatesTokenCount"]);
        let Some(Json::Array(candidates)) = value.get("candidates") else {
            return;
        };
        for candidate in candidates {
            self.set_finish_reason(candidate.get("finishReason"));
            let parts = candidate.get("content").and_then(|content| content.get("parts"));
            let Some(Json::Array(parts)) = parts else {
                continue;
            };
            for function_call in parts.iter().filter_map(|part| part.get("functionCall")) {
                let name = function_call.get("name").and_then(Json::as_str).unwrap_or("");
                let id = function_call.get("id").and_then(Json::as_str);
                let arguments = function_call.get("args").map(compact);
                if let Some(call) = self.add_call(PendingCall::new(name, id, None)) {
                    match arguments {
                        Some(text) => call.set_arguments(&text),
                        None => call.open = false,
                    }
                }
            }
        }
    }

    /// Reads Ollama `/api/chat` and `/api/generate`, whole or one NDJSON line.
    fn read_ollama(&mut self, value: &Json<'_>) {
        self.set_model(value.get("model"));
        let tool_calls = value.get("message").and_then(|message| message.get("tool_calls"));
        if let Some(Json::Array(tool_calls)) = tool_calls {
            for tool_call in tool_calls {
                let function = tool_call.get("function").unwrap_or(&Json::Null);
                let name = function.get("name").and_then(Json::as_str).unwrap_or("");
                let id = tool_call.get("id").and_then(Json::as_str);
                let arguments = match function.get("arguments") {
                    Some(Json::String(text)) => Some(text.as_bytes().to_vec()),
                    Some(other) => Some(compact(other)),
                    None => None,
                };
                if let Some(call) = self.add_call(PendingCall::new(name, id, None)) {
                    match arguments {
                        Some(text) => call.set_arguments(&text),
                        None => call.open = false,
                    }
                }
            }
        }
        if value.get("done").and_then(Json::as_bool) == Some(true) {
            self.done = true;
            self.set_finish_reason(value.get("done_reason"));
            self.read_usage(Some(value), &["prompt_eval_count"], &["eval_count"]);
        }
    }
}

/// Serialises a JSON value without whitespace. Arguments sent as objects
/// are hashed in this form. `serde_json` without `preserve_order` sorts
/// object keys, so the text does not depend on the sender's key order.
fn compact(value: &Json<'_>) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_chunks_join_fragments_per_index() {
        let mut fields = ResponseFields::new(Api::OpenAiChatCompletions, true);
        let events = [
            r#"{"object":"chat.completion.chunk","model":"gpt-4o-2024","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","function":{"name":"get_weather","arguments":""}},{"index":1,"id":"call_b","function":{"name":"run","arguments":"{\"c"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}},{"index":1,"function":{"arguments":"md\":1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34}}"#,
        ];
        for event in events {
            fields.on_event("", event.as_bytes());
        }
        fields.on_event("", b"[DONE]");
        assert!(fields.done);
        assert_eq!(fields.model.as_deref(), Some("gpt-4o-2024"));
        assert_eq!((fields.input_tokens, fields.output_tokens), (Some(12), Some(34)));
        assert_eq!(fields.finish_reason.as_deref(), Some("tool_calls"));
        let calls = fields.take_tool_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].call_id.as_deref(), Some("call_a"));
        assert_eq!(calls[0].arguments_sha256, Some(sha256_hex(br#"{"city":"Paris"}"#)));
        assert_eq!(calls[1].arguments_sha256, Some(sha256_hex(br#"{"cmd":1}"#)));
    }

    #[test]
    fn gap_breaks_open_call_hash_only() {
        let mut fields = ResponseFields::new(Api::AnthropicMessages, true);
        fields.on_event("", br#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"a","input":{}}}"#);
        fields.on_event(
            "",
            br#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"x\":"}}"#,
        );
        fields.on_gap();
        fields.on_event("", br#"{"type":"content_block_stop","index":1}"#);
        fields.on_event("", br#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_2","name":"b","input":{}}}"#);
        fields.on_event("", br#"{"type":"content_block_stop","index":2}"#);
        let calls = fields.take_tool_calls();
        assert_eq!(calls[0].arguments_sha256, None);
        // No fragments: the start's `input` object is the arguments.
        assert_eq!(calls[1].arguments_sha256, Some(sha256_hex(b"{}")));
    }

    #[test]
    fn responses_done_event_repairs_broken_hash() {
        let mut fields = ResponseFields::new(Api::OpenAiResponses, true);
        fields.on_event(
            "response.output_item.added",
            br#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","id":"fc_1","call_id":"call_1","name":"f","arguments":""}}"#,
        );
        fields.on_event(
            "",
            br#"{"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":0,"delta":"{\"a\""}"#,
        );
        fields.on_gap();
        fields.on_event(
            "",
            br#"{"type":"response.function_call_arguments.done","item_id":"fc_1","output_index":0,"arguments":"{\"a\":1}"}"#,
        );
        let calls = fields.take_tool_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].arguments_sha256, Some(sha256_hex(br#"{"a":1}"#)));
    }

    #[test]
    fn error_keeps_type_not_message() {
        let mut fields = ResponseFields::new(Api::OpenAiChatCompletions, false);
        fields.on_json(br#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz","type":"invalid_request_error","code":"invalid_api_key"}}"#);
        assert_eq!(fields.error_type.as_deref(), Some("invalid_api_key"));
        let mut fields = ResponseFields::new(Api::OllamaChat, false);
        fields.on_json(br#"{"error":"model 'x y' not found"}"#);
        assert_eq!(fields.error_type.as_deref(), Some("error"));
    }

    #[test]
    fn tool_call_count_is_bounded() {
        let mut fields = ResponseFields::new(Api::GeminiGenerateContent, false);
        let parts: Vec<String> =
            (0..MAX_TOOL_CALLS + 3).map(|i| format!(r#"{{"functionCall":{{"name":"f{i}","args":{{}}}}}}"#)).collect();
        let body = format!(r#"{{"candidates":[{{"content":{{"parts":[{}]}}}}]}}"#, parts.join(","));
        fields.on_json(body.as_bytes());
        assert!(fields.tool_calls_cut);
        assert_eq!(fields.take_tool_calls().len(), MAX_TOOL_CALLS);
    }
}
