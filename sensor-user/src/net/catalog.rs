//! The catalog of LLM provider endpoints: which host names, addresses and
//! ports belong to which provider. Built-in entries cover the public APIs
//! and the default ports of local model servers; the configuration adds to
//! them or replaces them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One provider's endpoints, as written in the configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Provider name written into records, such as `openai`.
    pub name: String,
    /// Host names; `*` matches any run of characters, so `*.openai.azure.com`
    /// matches every Azure OpenAI resource.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Address ranges in CIDR notation, such as `10.0.0.0/8`.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// Ports; an entry with only ports matches any address on them and is a
    /// candidate that an HTTP request's API shape must confirm.
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Use only the providers below, not the built-in list.
    pub replace_defaults: bool,
    /// Providers added to (or, with `replace_defaults`, replacing) the
    /// built-in list.
    pub providers: Vec<ProviderConfig>,
}

const BUILT_IN: &[(&str, &[&str], &[u16])] = &[
    ("openai", &["api.openai.com"], &[]),
    ("azure_openai", &["*.openai.azure.com", "*.cognitiveservices.azure.com", "*.services.ai.azure.com"], &[]),
    ("anthropic", &["api.anthropic.com"], &[]),
    ("google_gemini", &["generativelanguage.googleapis.com"], &[]),
    ("google_vertex", &["aiplatform.googleapis.com", "*-aiplatform.googleapis.com"], &[]),
    ("aws_bedrock", &["bedrock-runtime.*.amazonaws.com", "bedrock-runtime-fips.*.amazonaws.com", "bedrock.*.amazonaws.com"], &[]),
    ("mistral", &["api.mistral.ai", "codestral.mistral.ai"], &[]),
    ("cohere", &["api.cohere.ai", "api.cohere.com"], &[]),
    ("groq", &["api.groq.com"], &[]),
    ("deepseek", &["api.deepseek.com"], &[]),
    ("xai", &["api.x.ai"], &[]),
    ("openrouter", &["openrouter.ai"], &[]),
    ("together", &["api.together.xyz", "api.together.ai"], &[]),
    ("fireworks", &["api.fireworks.ai"], &[]),
    ("perplexity", &["api.perplexity.ai"], &[]),
    ("huggingface", &["api-inference.huggingface.co", "router.huggingface.co", "*.endpoints.huggingface.cloud"], &[]),
    ("ollama", &[], &[11434]),
    ("lm_studio", &[], &[1234]),
    ("vllm", &[], &[8000]),
];

#[derive(Debug, Clone)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = text.split_once('/')?;
        let network: IpAddr = address.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { network, prefix })
    }

    fn contains(&self, address: &IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) if self.network.is_ipv4() => v6.to_ipv4_mapped().map_or(*address, IpAddr::V4),
            other => *other,
        };
        match (self.network, address) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
struct Provider {
    name: String,
    hosts: Vec<String>,
    cidrs: Vec<Cidr>,
    ports: Vec<u16>,
}

/// How an endpoint matched the catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderMatch {
    pub provider: String,
    /// `host`, `address` or `port`; a port match is only a candidate.
    pub matched_by: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("catalog provider {provider}: invalid CIDR {cidr:?}; write it as ADDRESS/PREFIX")]
pub struct CatalogError {
    pub provider: String,
    pub cidr: String,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    providers: Vec<Provider>,
}

impl Catalog {
    pub fn new(config: &CatalogConfig) -> Result<Catalog, CatalogError> {
        let mut providers = Vec::new();
        if !config.replace_defaults {
            for (name, hosts, ports) in BUILT_IN {
                providers.push(Provider {
                    name: (*name).to_owned(),
                    hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    cidrs: Vec::new(),
                    ports: ports.to_vec(),
                });
            }
        }
        for entry in &config.providers {
            let mut cidrs = Vec::new();
            for text in &entry.cidrs {
                let cidr = Cidr::parse(text)
                    .ok_or_else(|| CatalogError { provider: entry.name.clone(), cidr: text.clone() })?;
                cidrs.push(cidr);
            }
            providers.push(Provider {
                name: entry.name.clone(),
                hosts: entry.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                cidrs,
                ports: entry.ports.clone(),
            });
        }
        // Configured entries are checked first, so they override built-ins.
        providers.reverse();
        Ok(Catalog { providers })
    }

    /// Matches a host name (from SNI, DNS or an HTTP Host header).
    pub fn match_host(&self, host: &str) -> Option<ProviderMatch> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host.split(':').next().unwrap_or_default();
        self.providers.iter().find(|p| p.hosts.iter().any(|pattern| glob(pattern, host))).map(|p| ProviderMatch {
            provider: p.name.clone(),
            matched_by: "host",
        })
    }

    /// Matches a destination address and port: a CIDR match first, then a
    /// port-only candidate.
    pub fn match_address(&self, address: &IpAddr, port: u16) -> Option<ProviderMatch> {
        let by_cidr = self.providers.iter().find(|p| {
            p.cidrs.iter().any(|c| c.contains(address)) && (p.ports.is_empty() || p.ports.contains(&port))
        });
        if let Some(provider) = by_cidr {
            return Some(ProviderMatch { provider: provider.name.clone(), matched_by: "address" });
        }
        self.providers
            .iter()
            .find(|p| p.hosts.is_empty() && p.cidrs.is_empty() && p.ports.contains(&port))
            .map(|p| ProviderMatch { provider: p.name.clone(), matched_by: "port" })
    }
}

/// Matches `*` against any run of characters, dots included.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text.ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_hosts() {
        let catalog = Catalog::new(&CatalogConfig::default()).unwrap();
        assert_eq!(catalog.match_host("api.openai.com").unwrap().provider, "openai");
        assert_eq!(catalog.match_host("API.Anthropic.com.").unwrap().provider, "anthropic");
        assert_eq!(catalog.match_host("myres.openai.azure.com").unwrap().provider, "azure_openai");
        assert_eq!(catalog.match_host("bedrock-runtime.us-east-1.amazonaws.com").unwrap().provider, "aws_bedrock");
        assert_eq!(catalog.match_host("us-central1-aiplatform.googleapis.com").unwrap().provider, "google_vertex");
        assert_eq!(catalog.match_host("example.com"), None);
        assert_eq!(catalog.match_host("openai.com"), None);
    }

    #[test]
    fn local_ports_are_candidates() {
        let catalog = Catalog::new(&CatalogConfig::default()).unwrap();
        let found = catalog.match_address(&"127.0.0.1".parse().unwrap(), 11434).unwrap();
        assert_eq!(found, ProviderMatch { provider: "ollama".into(), matched_by: "port" });
        assert_eq!(catalog.match_address(&"127.0.0.1".parse().unwrap(), 22), None);
    }

    #[test]
    fn configured_entries_override_and_cidrs() {
        let config = CatalogConfig {
            replace_defaults: false,
            providers: vec![ProviderConfig {
                name: "internal_gateway".into(),
                hosts: vec!["llm.corp.example".into()],
                cidrs: vec!["10.20.0.0/16".into()],
                ports: vec![443],
            }],
        };
        let catalog = Catalog::new(&config).unwrap();
        assert_eq!(catalog.match_host("llm.corp.example").unwrap().provider, "internal_gateway");
        let found = catalog.match_address(&"::ffff:10.20.3.4".parse().unwrap(), 443).unwrap();
        assert_eq!(found.matched_by, "address");
        assert_eq!(catalog.match_address(&"10.21.0.1".parse().unwrap(), 443), None);
    }

    #[test]
    fn invalid_cidr_named() {
        let config = CatalogConfig {
            replace_defaults: true,
            providers: vec![ProviderConfig { name: "x".into(), hosts: vec![], cidrs: vec!["10.0.0.0/40".into()], ports: vec![] }],
        };
        let error = Catalog::new(&config).unwrap_err();
        assert!(error.to_string().contains("10.0.0.0/40"));
    }

    #[test]
    fn glob_cases() {
        assert!(glob("*.a.com", "x.y.a.com"));
        assert!(!glob("*.a.com", "a.com"));
        assert!(glob("b-*.c", "b-1.c"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXc"));
    }
}
