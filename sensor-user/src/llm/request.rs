//! The few members of a request body that describe an LLM call.
//!
//! Only `model`, `stream` and `tools` are deserialised. Messages and other
//! prompt members are skipped byte by byte and never become strings, so the
//! prompt text is not copied out of the body buffer.

use serde_json::Value;

use super::{
    json::{self, ScanEnd},
    providers::{MAX_MODEL_BYTES, bounded},
};

/// Most tool names kept per request.
pub(super) const MAX_TOOLS: usize = 256;
/// Maximum length of a tool name; longer names are cut.
pub(super) const MAX_TOOL_NAME_BYTES: usize = 256;

/// Members of a JSON request body that carry the prompt in one of the
/// supported APIs, used to tell an LLM call on an unknown path.
const PROMPT_MEMBERS: [&str; 5] = ["messages", "prompt", "input", "contents", "system"];

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RequestFields {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub tools: Vec<String>,
    /// More tools were offered than `MAX_TOOLS`.
    pub tools_cut: bool,
    /// The body was a whole JSON object, so absent members are really absent.
    pub complete: bool,
    /// The body has a `model` and a prompt member, or Gemini's `contents`,
    /// which names no model because the path does.
    pub looks_like_llm_call: bool,
}

/// Reads the fields from a JSON body, or from the members before the cut
/// when the body is incomplete.
pub(super) fn extract(body: &[u8]) -> RequestFields {
    let mut fields = RequestFields::default();
    let mut has_prompt = false;
    let mut has_contents = false;
    let end = json::for_each_member(body, |key, value| match (key, value) {
        (key, _) if PROMPT_MEMBERS.contains(&key) => {
            has_prompt = true;
            has_contents |= key == "contents";
        }
        (_, None) => {}
        ("model", Some(value)) => {
            fields.model = serde_json::from_slice::<&str>(value)
                .ok()
                .map(|model| bounded(model, MAX_MODEL_BYTES))
                .or_else(|| serde_json::from_slice::<String>(value).ok().map(|model| bounded(&model, MAX_MODEL_BYTES)));
        }
        ("stream", Some(value)) => fields.stream = serde_json::from_slice::<bool>(value).ok(),
        ("tools", Some(value)) => {
            if let Ok(Value::Array(tools)) = serde_json::from_slice::<Value>(value) {
                fields.tools_cut = collect_tool_names(&tools, &mut fields.tools);
            }
        }
        _ => {}
    });
    fields.complete = end == ScanEnd::Complete;
    fields.looks_like_llm_call = (fields.model.is_some() && has_prompt) || has_contents;
    fields
}

/// Appends the names of the offered tools; returns true when some were left
/// out because of `MAX_TOOLS`.
///
/// Shapes: OpenAI chat completions and Ollama `{"type": "function",
/// "function": {"name"}}`; OpenAI responses and Anthropic `{"name"}`; Gemini
/// `{"functionDeclarations": [{"name"}]}` (or `function_declarations`).
/// A built-in tool without a name is listed by its `type` (OpenAI
/// `web_search`) or, for Gemini, by its single member (`googleSearch`).
fn collect_tool_names(tools: &[Value], names: &mut Vec<String>) -> bool {
    let mut push = |name: &str| {
        if names.len() >= MAX_TOOLS {
            return false;
        }
        names.push(bounded(name, MAX_TOOL_NAME_BYTES));
        true
    };
    for tool in tools {
        let declarations = tool.get("functionDeclarations").or_else(|| tool.get("function_declarations"));
        if let Some(Value::Array(declarations)) = declarations {
            for declaration in declarations {
                if let Some(name) = declaration.get("name").and_then(Value::as_str)
                    && !push(name)
                {
                    return true;
                }
            }
            continue;
        }
        let name = tool
            .get("function")
            .and_then(|function| function.get("name"))
            .or_else(|| tool.get("name"))
            .or_else(|| tool.get("type"))
            .and_then(Value::as_str);
        let name = name.or_else(|| match tool.as_object() {
            Some(object) if object.len() == 1 => object.keys().next().map(String::as_str),
            _ => None,
        });
        if let Some(name) = name
            && !push(name)
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_chat_tools() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o","stream":true,
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}},{"type":"function","function":{"name":"run_shell"}}]}"#;
        let fields = extract(body);
        assert_eq!(fields.model.as_deref(), Some("gpt-4o"));
        assert_eq!(fields.stream, Some(true));
        assert_eq!(fields.tools, ["get_weather", "run_shell"]);
        assert!(fields.complete);
        assert!(fields.looks_like_llm_call);
    }

    #[test]
    fn responses_anthropic_gemini_tools() {
        let responses = br#"{"model":"gpt-4.1","input":"x","tools":[{"type":"function","name":"lookup"},{"type":"web_search"}]}"#;
        assert_eq!(extract(responses).tools, ["lookup", "web_search"]);
        let anthropic = br#"{"model":"claude","max_tokens":10,"tools":[{"name":"bash","input_schema":{}}],"messages":[]}"#;
        assert_eq!(extract(anthropic).tools, ["bash"]);
        let gemini = br#"{"contents":[],"tools":[{"functionDeclarations":[{"name":"a"},{"name":"b"}]},{"googleSearch":{}}]}"#;
        let fields = extract(gemini);
        assert_eq!(fields.tools, ["a", "b", "googleSearch"]);
        assert_eq!(fields.model, None);
        assert!(fields.looks_like_llm_call);
    }

    #[test]
    fn cut_body_keeps_members_before_cut() {
        let fields = extract(br#"{"model":"gpt-4o","stream":false,"messages":[{"role":"user","content":"long te"#);
        assert_eq!(fields.model.as_deref(), Some("gpt-4o"));
        assert_eq!(fields.stream, Some(false));
        assert!(!fields.complete);
        assert!(fields.looks_like_llm_call);
    }

    #[test]
    fn tool_count_is_bounded() {
        let tools: Vec<String> = (0..MAX_TOOLS + 5).map(|i| format!(r#"{{"name":"t{i}"}}"#)).collect();
        let body = format!(r#"{{"tools":[{}]}}"#, tools.join(","));
        let fields = extract(body.as_bytes());
        assert_eq!(fields.tools.len(), MAX_TOOLS);
        assert!(fields.tools_cut);
    }

    #[test]
    fn not_json() {
        assert_eq!(extract(b"\x00\xffgarbage"), RequestFields::default());
        assert_eq!(extract(br#"{"model": 5}"#).model, None);
    }
}
