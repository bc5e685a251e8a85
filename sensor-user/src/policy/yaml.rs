//! A YAML document as a tree of nodes that remember their line, built from
//! granit-parser's events, so the validator can name the line of every
//! problem. Anchors, aliases and tags are not part of the policy format.

use std::borrow::Cow;

use granit_parser::{Event, Parser, ScalarStyle, Span};

use super::Problem;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar's text; `quoted` scalars are never null, booleans or numbers.
    Scalar { text: String, quoted: bool },
    Sequence(Vec<Node>),
    /// Entries in file order; each key keeps its own line.
    Mapping(Vec<(String, usize, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line where the node starts.
    pub line: usize,
    pub value: Value,
}

impl Node {
    /// Returns whether the node is YAML's null: empty, `~` or `null`, unquoted.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, quoted: false } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// Describes the node's type for messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            _ if self.is_null() => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a mapping",
        }
    }

    /// Converts the node to JSON as written: scalars stay strings unless
    /// they are unquoted numbers or booleans.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            _ if self.is_null() => serde_json::Value::Null,
            Value::Scalar { text, quoted } => {
                if !quoted {
                    if let Ok(number) = text.parse::<i64>() {
                        return number.into();
                    }
                    if let Some(flag) = parse_bool(text) {
                        return flag.into();
                    }
                }
                text.clone().into()
            }
            Value::Sequence(items) => items.iter().map(Node::to_json).collect(),
            Value::Mapping(entries) => entries.iter().map(|(key, _, node)| (key.clone(), node.to_json())).collect(),
        }
    }
}

pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// Parses one YAML document. A syntax error stops the parse, because the
/// events after it cannot be trusted; it is returned as the only problem.
/// An empty document is an empty mapping.
pub fn parse(text: &str) -> Result<Node, Problem> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|error| Problem {
            key: String::new(),
            line: Some(error.marker().line()),
            message: format!("invalid YAML: {} (column {})", error.info(), error.marker().col() + 1),
        })?;
        builder.event(event, span)?;
    }
    match builder.documents {
        0 => Ok(Node { line: 1, value: Value::Mapping(Vec::new()) }),
        1 => Ok(builder.root.unwrap_or(Node { line: 1, value: Value::Mapping(Vec::new()) })),
        _ => Err(Problem {
            key: String::new(),
            line: builder.second_document_line,
            message: "the file holds more than one YAML document; a policy is one document".into(),
        }),
    }
}

enum Open {
    Sequence(usize, Vec<Node>),
    /// The entries so far, and a key waiting for its value.
    Mapping(usize, Vec<(String, usize, Node)>, Option<(String, usize)>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    root: Option<Node>,
    documents: usize,
    second_document_line: Option<usize>,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), Problem> {
        let line = span.start.line();
        let unsupported = |what: &str| Problem {
            key: String::new(),
            line: Some(line),
            message: format!("{what} are not supported in a policy; write the value out"),
        };
        match event {
            Event::DocumentStart(..) => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second_document_line = Some(line);
                }
            }
            Event::Alias(_) | Event::UnresolvedAlias(_) => return Err(unsupported("aliases (*name)")),
            Event::Scalar(text, style, anchor, _) => {
                if anchor != 0 {
                    return Err(unsupported("anchors (&name)"));
                }
                let quoted = style != ScalarStyle::Plain;
                self.add(Node { line, value: Value::Scalar { text: Cow::into_owned(text), quoted } })?;
            }
            Event::SequenceStart(_, anchor, _) => {
                if anchor != 0 {
                    return Err(unsupported("anchors (&name)"));
                }
                self.stack.push(Open::Sequence(line, Vec::new()));
            }
            Event::MappingStart(_, anchor, _) => {
                if anchor != 0 {
                    return Err(unsupported("anchors (&name)"));
                }
                self.stack.push(Open::Mapping(line, Vec::new(), None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Open::Sequence(line, items)) => Node { line, value: Value::Sequence(items) },
                    Some(Open::Mapping(line, entries, _)) => Node { line, value: Value::Mapping(entries) },
                    None => return Ok(()),
                };
                self.add(node)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn add(&mut self, node: Node) -> Result<(), Problem> {
        match self.stack.last_mut() {
            None => {
                if self.documents <= 1 {
                    self.root = Some(node);
                }
            }
            Some(Open::Sequence(_, items)) => items.push(node),
            Some(Open::Mapping(_, entries, pending)) => match pending.take() {
                Some((key, key_line)) => entries.push((key, key_line, node)),
                None => match node.value {
                    Value::Scalar { text, .. } => *pending = Some((text, node.line)),
                    _ => {
                        return Err(Problem {
                            key: String::new(),
                            line: Some(node.line),
                            message: "a mapping key must be a scalar".into(),
                        })
                    }
                },
            },
        }
        Ok(())
    }
}
