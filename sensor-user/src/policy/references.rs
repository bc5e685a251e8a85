//! The frameworks each finding maps to, in one table, so the mapping is
//! reviewed in one place: OWASP Top 10 for Agentic Applications (2026
//! list), CSA MAESTRO layers, and NIST AI RMF 1.0 subcategories.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reference {
    pub framework: &'static str,
    pub id: &'static str,
    pub name: &'static str,
}

const fn owasp(id: &'static str, name: &'static str) -> Reference {
    Reference { framework: "owasp_agentic_top10_2026", id, name }
}

const fn maestro(id: &'static str, name: &'static str) -> Reference {
    Reference { framework: "csa_maestro", id, name }
}

const fn nist(id: &'static str, name: &'static str) -> Reference {
    Reference { framework: "nist_ai_rmf", id, name }
}

const ASI02: Reference = owasp("ASI02", "Tool Misuse and Exploitation");
const ASI03: Reference = owasp("ASI03", "Identity and Privilege Abuse");
const ASI04: Reference = owasp("ASI04", "Agentic Supply Chain Vulnerabilities");
const ASI05: Reference = owasp("ASI05", "Unexpected Code Execution");
const ASI09: Reference = owasp("ASI09", "Human-Agent Trust Exploitation");
const ASI10: Reference = owasp("ASI10", "Rogue Agents");

const L1: Reference = maestro("L1", "Foundation Models");
const L2: Reference = maestro("L2", "Data Operations");
const L3: Reference = maestro("L3", "Agent Frameworks");
const L4: Reference = maestro("L4", "Deployment and Infrastructure");
const L5: Reference = maestro("L5", "Evaluation and Observability");
const L7: Reference = maestro("L7", "Agent Ecosystem");

const GOVERN_1_6: Reference = nist("GOVERN-1.6", "Mechanisms are in place to inventory AI systems");
const GOVERN_6_1: Reference = nist("GOVERN-6.1", "Policies address risks of third-party entities");
const MANAGE_3_1: Reference = nist("MANAGE-3.1", "Risks from third-party resources are monitored");
const MANAGE_4_1: Reference = nist("MANAGE-4.1", "Post-deployment monitoring is implemented");
const MEASURE_2_4: Reference = nist("MEASURE-2.4", "System behavior is monitored in production");
const MEASURE_2_7: Reference = nist("MEASURE-2.7", "Security and resilience are evaluated");
const MEASURE_2_10: Reference = nist("MEASURE-2.10", "Privacy risk is examined");

/// What a finding is about, which decides its references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Tool,
    Egress,
    Llm,
    SensitiveAccess,
    ShadowAgent,
    UnreportedAction,
    UnobservedClaim,
}

const TABLE: &[(Subject, &[Reference])] = &[
    (Subject::Tool, &[ASI02, ASI05, L3, MEASURE_2_7, MANAGE_4_1]),
    (Subject::Egress, &[ASI02, ASI10, L4, MEASURE_2_7, MANAGE_4_1]),
    (Subject::Llm, &[ASI04, L1, GOVERN_6_1, MANAGE_3_1]),
    (Subject::SensitiveAccess, &[ASI03, L2, MEASURE_2_10, MANAGE_4_1]),
    (Subject::ShadowAgent, &[ASI10, L7, GOVERN_1_6, MANAGE_4_1]),
    (Subject::UnreportedAction, &[ASI10, ASI02, L5, MEASURE_2_4]),
    (Subject::UnobservedClaim, &[ASI09, L5, MEASURE_2_4]),
];

pub fn references(subject: Subject) -> &'static [Reference] {
    TABLE.iter().find(|(s, _)| *s == subject).map_or(&[], |(_, refs)| refs)
}

/// Returns the references as the `finding.references` array.
pub fn to_json(subject: Subject) -> serde_json::Value {
    serde_json::to_value(references(subject)).unwrap_or_default()
}
