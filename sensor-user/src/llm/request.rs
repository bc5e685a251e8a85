//! The few members of a request body that describe an LLM call.
//!
//! Only `model`, `stream` and the tool names are deserialised. Messages and
//! other prompt members are skipped byte by byte and never become strings,
//! so the prompt text is not copied out of the body buffer.

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
        ("tools", Some(value)) => fields.tools_cut = collect_tool_names(value, &mut fields.tools),
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
///
/// Walks the array instead of deserialising it. A tool's parameter schema
/// is most of its size and never read, and building it as a tree took
/// about 3% of the daemon's time under an agent's load.
fn collect_tool_names(tools: &[u8], names: &mut Vec<String>) -> bool {
    let mut cut = false;
    json::for_each_element(tools, |tool| {
        if cut {
            return;
        }
        let shape = ToolShape::read(tool);
        if let Some(declarations) = shape.declarations {
            json::for_each_element(declarations, |declaration| {
                if let (false, Some(name)) = (cut, member_string(declaration, "name")) {
                    cut = !push_name(names, &name);
                }
            });
            return;
        }
        let name = shape.function_name.or(shape.name).or(shape.kind).or(shape.only_key);
        if let Some(name) = name {
            cut = !push_name(names, &name);
        }
    });
    cut
}

/// Adds a tool name, cut to `MAX_TOOL_NAME_BYTES`; returns false when the
/// list is full.
fn push_name(names: &mut Vec<String>, name: &str) -> bool {
    if names.len() >= MAX_TOOLS {
        return false;
    }
    names.push(bounded(name, MAX_TOOL_NAME_BYTES));
    true
}

/// The members of one offered tool that can name it.
#[derive(Default)]
struct ToolShape<'a> {
    declarations: Option<&'a [u8]>,
    function_name: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    /// The key of a tool object with exactly one member.
    only_key: Option<String>,
}

impl<'a> ToolShape<'a> {
    fn read(tool: &'a [u8]) -> ToolShape<'a> {
        let mut shape = ToolShape::default();
        let mut members = 0;
        let mut first_key = None;
        json::for_each_member(tool, |key, value| {
            members += 1;
            if first_key.is_none() {
                first_key = Some(key.to_owned());
            }
            let Some(value) = value else { return };
            match key {
                "functionDeclarations" | "function_declarations" if value.starts_with(b"[") => {
                    shape.declarations.get_or_insert(value);
                }
                "function" => shape.function_name = member_string(value, "name"),
                "name" => shape.name = string(value),
                "type" => shape.kind = string(value),
                _ => {}
            }
        });
        if members == 1 {
            shape.only_key = first_key;
        }
        shape
    }
}

/// Decodes a JSON string; `None` for any other value.
fn string(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<String>(value).ok()
}

/// Returns the string member `key` of a JSON object.
fn member_string(object: &[u8], key: &str) -> Option<String> {
    let mut found = None;
    json::for_each_member(object, |member, value| {
        if member == key && found.is_none() {
            found = value.and_then(string);
        }
    });
    found
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
    fn odd_tool_shapes() {
        // An escaped name, the snake_case Gemini key, a name that is not a
        // string, a tool that is not an object and a declaration list that
        // is not an array.
        let body = br#"{"model":"m","input":"x","tools":[{"name":"run\u005fshell"},
            {"function_declarations":[{"name":"c"}]},{"name":5,"type":"custom"},"text",
            {"functionDeclarations":{"name":"d"},"name":"e"}]}"#;
        assert_eq!(extract(body).tools, ["run_shell", "c", "custom", "e"]);
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
