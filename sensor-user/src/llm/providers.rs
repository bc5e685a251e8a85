//! Recognition of the LLM API a request uses and the provider serving it.
//!
//! The API comes from the request path, or from the shape of a response body
//! when the request was not captured. The provider is a guess from the Host
//! header and the path. The network stage's endpoint catalog is the
//! configurable authority on providers. This guess covers plaintext seen
//! without a catalog match, such as a local model server.

use super::tree::Json;

/// An LLM API operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Api {
    OpenAiChatCompletions,
    OpenAiResponses,
    OpenAiCompletions,
    OpenAiEmbeddings,
    AnthropicMessages,
    GeminiGenerateContent,
    GeminiStreamGenerateContent,
    OllamaChat,
    OllamaGenerate,
    Unknown,
}

impl Api {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Api::OpenAiChatCompletions => "openai.chat_completions",
            Api::OpenAiResponses => "openai.responses",
            Api::OpenAiCompletions => "openai.completions",
            Api::OpenAiEmbeddings => "openai.embeddings",
            Api::AnthropicMessages => "anthropic.messages",
            Api::GeminiGenerateContent => "gemini.generate_content",
            Api::GeminiStreamGenerateContent => "gemini.stream_generate_content",
            Api::OllamaChat => "ollama.chat",
            Api::OllamaGenerate => "ollama.generate",
            Api::Unknown => "unknown",
        }
    }

    /// Returns the value of an absent `stream` member. Ollama streams by
    /// default and the other APIs do not.
    pub(super) fn streams_by_default(self) -> bool {
        matches!(self, Api::OllamaChat | Api::OllamaGenerate)
    }
}

/// Facts a request path reveals.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PathInfo {
    pub api: Api,
    /// The model named in the path (Gemini and Vertex AI put it there).
    pub model: Option<String>,
    /// Whether the path itself requests a stream (`:streamGenerateContent`).
    pub stream: Option<bool>,
}

/// Classifies a request path, given without its query string.
pub(super) fn classify_path(path: &str) -> PathInfo {
    let path = path.trim_end_matches('/');
    let last_segment = path.rsplit('/').next().unwrap_or(path);

    // Google puts the model and the method in the last segment:
    // `/v1beta/models/gemini-2.0-flash:generateContent`, or on Vertex AI
    // `.../publishers/google/models/gemini-2.0-flash:streamGenerateContent`.
    // Vertex AI serves Anthropic models as `...:rawPredict` with a Messages body.
    if let Some((model, method)) = last_segment.split_once(':') {
        let model = (!model.is_empty()).then(|| bounded(model, MAX_MODEL_BYTES));
        let (api, stream) = match method {
            "generateContent" => (Api::GeminiGenerateContent, Some(false)),
            "streamGenerateContent" => (Api::GeminiStreamGenerateContent, Some(true)),
            "rawPredict" if path.contains("/publishers/anthropic/") => (Api::AnthropicMessages, None),
            "streamRawPredict" if path.contains("/publishers/anthropic/") => (Api::AnthropicMessages, Some(true)),
            _ => (Api::Unknown, None),
        };
        if api != Api::Unknown {
            return PathInfo { api, model, stream };
        }
    }

    // Ollama's native API lives under `/api/`; its OpenAI-compatible routes
    // are under `/v1/` and are classified as OpenAI below, as are
    // OpenRouter's `/api/v1/...` routes.
    let api = if path.ends_with("/api/chat") {
        Api::OllamaChat
    } else if path.ends_with("/api/generate") {
        Api::OllamaGenerate
    } else if path.ends_with("/api/embed") || path.ends_with("/api/embeddings") {
        // Ollama's native embeddings, not an API reported here.
        Api::Unknown
    } else if path.ends_with("/chat/completions") {
        Api::OpenAiChatCompletions
    } else if path.ends_with("/completions") {
        Api::OpenAiCompletions
    } else if path.ends_with("/responses") {
        Api::OpenAiResponses
    } else if path.ends_with("/embeddings") {
        Api::OpenAiEmbeddings
    } else if path.ends_with("/v1/messages") {
        // Only `/v1/messages`: OpenAI's Assistants API has
        // `/v1/threads/{id}/messages`, which is not an LLM call.
        Api::AnthropicMessages
    } else {
        Api::Unknown
    };
    PathInfo { api, model: None, stream: None }
}

/// Host names of providers' public API endpoints. A leading `*.` matches
/// any subdomain.
const PROVIDER_HOSTS: &[(&str, &str)] = &[
    ("api.openai.com", "openai"),
    ("*.openai.azure.com", "azure_openai"),
    ("*.cognitiveservices.azure.com", "azure_openai"),
    ("*.services.ai.azure.com", "azure_openai"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "google_gemini"),
    ("aiplatform.googleapis.com", "google_vertex"),
    ("*.aiplatform.googleapis.com", "google_vertex"),
    ("api.mistral.ai", "mistral"),
    ("api.cohere.ai", "cohere"),
    ("api.cohere.com", "cohere"),
    ("api.groq.com", "groq"),
    ("api.deepseek.com", "deepseek"),
    ("api.x.ai", "xai"),
    ("openrouter.ai", "openrouter"),
    ("api.together.xyz", "together"),
    ("api.together.ai", "together"),
    ("api.fireworks.ai", "fireworks"),
    ("api.perplexity.ai", "perplexity"),
    ("api-inference.huggingface.co", "huggingface"),
    ("router.huggingface.co", "huggingface"),
];

/// Default ports of local model servers.
const LOCAL_PORTS: &[(u16, &str)] = &[(11434, "ollama"), (1234, "lm_studio")];

/// Guesses the provider from the Host header value, the path and the API.
pub(super) fn provider(host: Option<&str>, path: &str, api: Api) -> Option<&'static str> {
    let (name, port) = host.map(split_host_port).unwrap_or(("", None));
    let name = name.trim_end_matches('.').to_ascii_lowercase();

    // Regional Vertex AI hosts look like `us-central1-aiplatform.googleapis.com`.
    if name.ends_with("-aiplatform.googleapis.com") {
        return Some("google_vertex");
    }
    if name.starts_with("bedrock-runtime.") && name.ends_with(".amazonaws.com") {
        return Some("aws_bedrock");
    }
    for (pattern, provider) in PROVIDER_HOSTS {
        let matched = match pattern.strip_prefix("*.") {
            Some(suffix) => {
                name.len() > suffix.len() && name.ends_with(suffix) && name[..name.len() - suffix.len()].ends_with('.')
            }
            None => name == *pattern,
        };
        if matched {
            return Some(provider);
        }
    }
    // Azure OpenAI behind a custom domain or gateway still has this path.
    if path.starts_with("/openai/deployments/") {
        return Some("azure_openai");
    }
    if let Some(port) = port
        && let Some((_, provider)) = LOCAL_PORTS.iter().find(|(local, _)| *local == port)
    {
        return Some(provider);
    }
    match api {
        Api::OllamaChat | Api::OllamaGenerate => Some("ollama"),
        _ => None,
    }
}

/// Splits `host[:port]`, including the bracketed IPv6 form `[::1]:11434`.
fn split_host_port(host: &str) -> (&str, Option<u16>) {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((address, tail)) => (address, tail.strip_prefix(':').and_then(|port| port.parse().ok())),
            None => (rest, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (host, None),
    }
}

/// Recognises the API from the shape of one response JSON value (a whole
/// body, one server-sent event's data or one NDJSON line). Used when the
/// request was not captured or its path was not recognised.
pub(super) fn api_from_response_shape(value: &Json<'_>, streaming: bool) -> Api {
    let object = value.get("object").and_then(Json::as_str);
    let kind = value.get("type").and_then(Json::as_str);
    match (object, kind) {
        (Some("chat.completion" | "chat.completion.chunk"), _) => return Api::OpenAiChatCompletions,
        (Some("text_completion"), _) => return Api::OpenAiCompletions,
        (Some("response"), _) => return Api::OpenAiResponses,
        (Some("list"), _) if first_data_object(value) == Some("embedding") => return Api::OpenAiEmbeddings,
        (_, Some(kind)) if kind.starts_with("response.") => return Api::OpenAiResponses,
        (
            _,
            Some(
                "message"
                | "message_start"
                | "message_delta"
                | "message_stop"
                | "content_block_start"
                | "content_block_delta"
                | "content_block_stop",
            ),
        ) => return Api::AnthropicMessages,
        _ => {}
    }
    if value.get("candidates").is_some() || value.get("usageMetadata").is_some() {
        return if streaming { Api::GeminiStreamGenerateContent } else { Api::GeminiGenerateContent };
    }
    if value.get("done").is_some_and(Json::is_boolean) && value.get("model").is_some() {
        if value.get("message").is_some() {
            return Api::OllamaChat;
        }
        if value.get("response").is_some() {
            return Api::OllamaGenerate;
        }
    }
    Api::Unknown
}

fn first_data_object<'v>(value: &'v Json<'_>) -> Option<&'v str> {
    value.get("data")?.at(0)?.get("object")?.as_str()
}

/// Maximum length of a model name; longer values are cut.
pub(super) const MAX_MODEL_BYTES: usize = 256;

/// Copies `text`, cut to at most `max` bytes on a character boundary.
pub(super) fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths() {
        let cases = [
            ("/v1/chat/completions", Api::OpenAiChatCompletions, None),
            ("/openai/deployments/gpt4o-prod/chat/completions", Api::OpenAiChatCompletions, None),
            ("/api/v1/chat/completions", Api::OpenAiChatCompletions, None),
            ("/v1/responses", Api::OpenAiResponses, None),
            ("/v1/completions", Api::OpenAiCompletions, None),
            ("/v1/embeddings", Api::OpenAiEmbeddings, None),
            ("/v1/messages", Api::AnthropicMessages, None),
            ("/v1/threads/thread_1/messages", Api::Unknown, None),
            ("/v1beta/models/gemini-2.0-flash:generateContent", Api::GeminiGenerateContent, Some("gemini-2.0-flash")),
            (
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-1.5-pro:streamGenerateContent",
                Api::GeminiStreamGenerateContent,
                Some("gemini-1.5-pro"),
            ),
            (
                "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-3-5-sonnet:rawPredict",
                Api::AnthropicMessages,
                Some("claude-3-5-sonnet"),
            ),
            ("/v1beta/models/gemini-pro:countTokens", Api::Unknown, None),
            ("/api/chat", Api::OllamaChat, None),
            ("/api/generate/", Api::OllamaGenerate, None),
            ("/api/embeddings", Api::Unknown, None),
            ("/v1/models", Api::Unknown, None),
            ("", Api::Unknown, None),
        ];
        for (path, api, model) in cases {
            let info = classify_path(path);
            assert_eq!(info.api, api, "{path}");
            assert_eq!(info.model.as_deref(), model, "{path}");
        }
    }

    #[test]
    fn providers() {
        let cases = [
            (Some("api.openai.com"), "/v1/models", Api::Unknown, Some("openai")),
            (Some("API.OpenAI.com:443"), "/v1/chat/completions", Api::OpenAiChatCompletions, Some("openai")),
            (Some("myres.openai.azure.com"), "/x", Api::Unknown, Some("azure_openai")),
            (Some("openai.azure.com"), "/x", Api::Unknown, None),
            (Some("gw.example.com"), "/openai/deployments/d/chat/completions", Api::OpenAiChatCompletions, Some("azure_openai")),
            (Some("api.anthropic.com"), "/v1/messages", Api::AnthropicMessages, Some("anthropic")),
            (Some("generativelanguage.googleapis.com"), "/", Api::Unknown, Some("google_gemini")),
            (Some("europe-west4-aiplatform.googleapis.com"), "/", Api::Unknown, Some("google_vertex")),
            (Some("bedrock-runtime.us-east-1.amazonaws.com"), "/", Api::Unknown, Some("aws_bedrock")),
            (Some("localhost:11434"), "/v1/chat/completions", Api::OpenAiChatCompletions, Some("ollama")),
            (Some("[::1]:11434"), "/api/tags", Api::Unknown, Some("ollama")),
            (Some("127.0.0.1:1234"), "/v1/chat/completions", Api::OpenAiChatCompletions, Some("lm_studio")),
            (Some("model-box:8080"), "/api/chat", Api::OllamaChat, Some("ollama")),
            (Some("example.com"), "/v1/chat/completions", Api::OpenAiChatCompletions, None),
            (None, "/", Api::Unknown, None),
        ];
        for (host, path, api, expected) in cases {
            assert_eq!(provider(host, path, api), expected, "{host:?} {path}");
        }
    }

    #[test]
    fn response_shapes() {
        let cases = [
            (json!({"object": "chat.completion.chunk", "choices": []}), false, Api::OpenAiChatCompletions),
            (json!({"object": "list", "data": [{"object": "embedding"}]}), false, Api::OpenAiEmbeddings),
            (json!({"object": "list", "data": [{"object": "model"}]}), false, Api::Unknown),
            (json!({"type": "response.output_item.added"}), true, Api::OpenAiResponses),
            (json!({"type": "message_start", "message": {}}), true, Api::AnthropicMessages),
            (json!({"candidates": []}), true, Api::GeminiStreamGenerateContent),
            (json!({"model": "llama3", "message": {}, "done": false}), true, Api::OllamaChat),
            (json!({"model": "llama3", "response": "", "done": true}), false, Api::OllamaGenerate),
            (json!({"hello": 1}), false, Api::Unknown),
            (json!([1, 2]), false, Api::Unknown),
        ];
        for (value, streaming, api) in cases {
            let text = value.to_string();
            assert_eq!(api_from_response_shape(&Json::parse(text.as_bytes()).unwrap(), streaming), api, "{value}");
        }
    }

    #[test]
    fn bounded_cuts_on_char_boundary() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("aé", 2), "a");
    }
}
