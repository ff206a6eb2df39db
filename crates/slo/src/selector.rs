//! Prometheus series selectors (`metric{label="value",other!=""}`), the
//! form SLI queries take in our specs. Parsed so the generator can check
//! what an SLI measures and feed synthetic series that match it.

use std::fmt;
use std::str::FromStr;

use crate::SloError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

impl Selector {
    /// The value of an equality matcher on `label`.
    pub fn equal(&self, label: &str) -> Option<&str> {
        self.matchers
            .iter()
            .find(|m| m.label == label && m.op == MatchOp::Equal)
            .map(|m| m.value.as_str())
    }

    pub fn matcher(&self, label: &str) -> Option<&Matcher> {
        self.matchers.iter().find(|m| m.label == label)
    }
}

fn is_name_char(c: char, first: bool) -> bool {
    c == '_' || c == ':' || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit())
}

impl FromStr for Selector {
    type Err = SloError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| SloError::InvalidSelector {
            selector: text.to_owned(),
            why: why.to_owned(),
        };
        let text_trimmed = text.trim();
        let name_end = text_trimmed
            .char_indices()
            .find(|(i, c)| !is_name_char(*c, *i == 0))
            .map(|(i, _)| i)
            .unwrap_or(text_trimmed.len());
        let metric = &text_trimmed[..name_end];
        if metric.is_empty() {
            return Err(invalid("no metric name"));
        }
        let rest = &text_trimmed[name_end..];
        let mut matchers = Vec::new();
        if !rest.is_empty() {
            let body = rest
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .ok_or_else(|| invalid("expected {matchers} after the metric name"))?;
            let mut chars = body.chars().peekable();
            loop {
                while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    break;
                }
                let mut label = String::new();
                while let Some(&c) = chars.peek() {
                    if !is_name_char(c, label.is_empty()) {
                        break;
                    }
                    label.push(c);
                    chars.next();
                }
                if label.is_empty() {
                    return Err(invalid("expected a label name"));
                }
                let mut op = String::new();
                while let Some(&c) = chars.peek() {
                    if !matches!(c, '=' | '!' | '~') {
                        break;
                    }
                    op.push(c);
                    chars.next();
                }
                let op = match op.as_str() {
                    "=" => MatchOp::Equal,
                    "!=" => MatchOp::NotEqual,
                    "=~" => MatchOp::Regex,
                    "!~" => MatchOp::NotRegex,
                    _ => return Err(invalid("expected =, !=, =~ or !~")),
                };
                if chars.next() != Some('"') {
                    return Err(invalid("expected a double-quoted value"));
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(escaped) => value.push(escaped),
                            None => return Err(invalid("unterminated escape")),
                        },
                        Some(c) => value.push(c),
                        None => return Err(invalid("unterminated value")),
                    }
                }
                matchers.push(Matcher { label, op, value });
            }
        }
        Ok(Selector {
            metric: metric.to_owned(),
            matchers,
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.metric)?;
        if self.matchers.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let escaped = m.value.replace('\\', "\\\\").replace('"', "\\\"");
            write!(f, "{}{}\"{}\"", m.label, m.op.as_str(), escaped)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_matchers() {
        let text = r#"rpc_server_call_duration_seconds_count{tp_component="gateway",error_type!="",le=~"1|1\\.0"}"#;
        let selector: Selector = text.parse().unwrap();
        assert_eq!(selector.metric, "rpc_server_call_duration_seconds_count");
        assert_eq!(selector.equal("tp_component"), Some("gateway"));
        assert_eq!(
            selector.matcher("error_type").map(|m| m.op),
            Some(MatchOp::NotEqual)
        );
        assert_eq!(selector.matcher("le").unwrap().value, r"1|1\.0");
        assert_eq!(selector.to_string(), text);
    }

    #[test]
    fn a_bare_metric_name_is_a_selector() {
        let selector: Selector = "tp_coach_replies_total".parse().unwrap();
        assert!(selector.matchers.is_empty());
        assert_eq!(selector.to_string(), "tp_coach_replies_total");
    }

    #[test]
    fn rejects_what_is_not_a_selector() {
        for bad in [
            "",
            "{a=\"b\"}",
            "sum(x)",
            "x{a=b}",
            "x{a=\"b\"",
            "x{a==\"b\"}",
            "rate(x[5m])",
        ] {
            assert!(bad.parse::<Selector>().is_err(), "{bad:?} parsed");
        }
    }
}
