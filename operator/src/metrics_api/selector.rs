//! Label selectors in the API server's string syntax (`labelSelector=` of a list request):
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists) and `!k` (does not exist),
//! joined by commas, every requirement must hold. `>` and `<` (which the API server accepts only
//! for numeric values in a few places) are refused, as is anything else this parser does not
//! understand: a selector it cannot evaluate exactly must not silently select more or less.

use std::collections::{BTreeMap, BTreeSet};

/// A parsed selector; the empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Why a selector was refused; the message names the offending part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {problem}")]
pub struct SelectorError {
    selector: String,
    problem: String,
}

impl Selector {
    /// Parses `text`; an empty (or all-blank) text selects everything.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let fail = |problem: String| SelectorError {
            selector: text.to_string(),
            problem,
        };
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(Selector { requirements });
        }
        for part in split_requirements(text).map_err(fail)? {
            requirements.push(parse_requirement(part.trim()).map_err(fail)?);
        }
        Ok(Selector { requirements })
    }

    /// Whether every requirement holds for `labels`. As in Kubernetes, `!=` and `notin` hold
    /// for an object without the label.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements
            .iter()
            .all(|requirement| match requirement {
                Requirement::Equals(key, value) => labels.get(key) == Some(value),
                Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
                Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
                Requirement::NotIn(key, values) => {
                    !labels.get(key).is_some_and(|v| values.contains(v))
                }
                Requirement::Exists(key) => labels.contains_key(key),
                Requirement::DoesNotExist(key) => !labels.contains_key(key),
            })
    }

    /// The values `key` may take for the selector to hold, when a requirement pins them
    /// (`key=v` or `key in (...)`); `None` when any value might do. Lets a request that names
    /// one ScaledApp read only that ScaledApp.
    pub fn allowed_values(&self, key: &str) -> Option<BTreeSet<&str>> {
        let mut allowed: Option<BTreeSet<&str>> = None;
        for requirement in &self.requirements {
            let values: BTreeSet<&str> = match requirement {
                Requirement::Equals(k, value) if k == key => BTreeSet::from([value.as_str()]),
                Requirement::In(k, values) if k == key => {
                    values.iter().map(String::as_str).collect()
                }
                _ => continue,
            };
            allowed = Some(match allowed {
                None => values,
                Some(previous) => previous.intersection(&values).copied().collect(),
            });
        }
        allowed
    }
}

/// Splits on commas outside parentheses.
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        match character {
            '(' => {
                if depth > 0 {
                    return Err("nested parentheses".into());
                }
                depth += 1;
            }
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "unbalanced parentheses".to_string())?;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    parts.push(&text[start..]);
    if parts.iter().any(|part| part.trim().is_empty()) {
        return Err("empty requirement".into());
    }
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        validate_key(key)?;
        return Ok(Requirement::DoesNotExist(key.to_string()));
    }
    if let Some(open) = part.find('(') {
        let close = part
            .rfind(')')
            .filter(|close| *close == part.len() - 1)
            .ok_or_else(|| format!("{part:?} must end with ')'"))?;
        let mut head = part[..open].split_whitespace();
        let (Some(key), Some(operator), None) = (head.next(), head.next(), head.next()) else {
            return Err(format!(
                "{part:?} is not `key in (...)` or `key notin (...)`"
            ));
        };
        validate_key(key)?;
        let values = part[open + 1..close]
            .split(',')
            .map(str::trim)
            .map(|value| validate_value(value).map(|()| value.to_string()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        if part[open + 1..close].trim().is_empty() {
            return Err(format!("{part:?} needs at least one value"));
        }
        return match operator {
            "in" => Ok(Requirement::In(key.to_string(), values)),
            "notin" => Ok(Requirement::NotIn(key.to_string(), values)),
            other => Err(format!("unsupported operator {other:?}")),
        };
    }
    if part.contains('>') || part.contains('<') {
        return Err(format!("{part:?}: the operators > and < are not supported"));
    }
    let (key, operator_length, negated) = if let Some(index) = part.find("!=") {
        (&part[..index], 2, true)
    } else if let Some(index) = part.find("==") {
        (&part[..index], 2, false)
    } else if let Some(index) = part.find('=') {
        (&part[..index], 1, false)
    } else {
        let key = part.trim();
        validate_key(key)?;
        return Ok(Requirement::Exists(key.to_string()));
    };
    let value = part[key.len() + operator_length..].trim();
    let key = key.trim();
    validate_key(key)?;
    validate_value(value)?;
    Ok(if negated {
        Requirement::NotEquals(key.to_string(), value.to_string())
    } else {
        Requirement::Equals(key.to_string(), value.to_string())
    })
}

/// `[prefix/]name`: a DNS subdomain prefix of at most 253 characters, a name of at most 63.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(format!("{key:?} has an invalid prefix"));
        }
    }
    if name.is_empty() || !is_label_text(name) {
        return Err(format!("{key:?} is not a valid label key"));
    }
    Ok(())
}

/// Empty, or at most 63 of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_text(value) {
        Ok(())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}

fn is_label_text(text: &str) -> bool {
    text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selects(selector: &str, pairs: &[(&str, &str)]) -> bool {
        Selector::parse(selector)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(&labels(pairs))
    }

    #[test]
    fn every_standard_operator_selects_as_kubernetes_does() {
        let pod = [
            ("app.kubernetes.io/instance", "shop"),
            ("app.kubernetes.io/component", "app"),
        ];
        assert!(selects("", &pod));
        assert!(selects("app.kubernetes.io/instance=shop", &pod));
        assert!(selects("app.kubernetes.io/instance==shop", &pod));
        assert!(!selects("app.kubernetes.io/instance=other", &pod));
        assert!(selects("app.kubernetes.io/instance!=other", &pod));
        assert!(!selects("app.kubernetes.io/instance!=shop", &pod));
        assert!(selects(
            "app.kubernetes.io/component in (app, worker)",
            &pod
        ));
        assert!(!selects("app.kubernetes.io/component in (worker)", &pod));
        assert!(selects("app.kubernetes.io/component notin (worker)", &pod));
        assert!(!selects(
            "app.kubernetes.io/component notin (app,worker)",
            &pod
        ));
        assert!(selects("app.kubernetes.io/instance", &pod));
        assert!(!selects("!app.kubernetes.io/instance", &pod));
        assert!(selects("!missing", &pod));
        assert!(!selects("missing", &pod));
        // As in Kubernetes, != and notin hold for an object without the label.
        assert!(selects("missing!=x,missing notin (x)", &pod));
        assert!(selects(
            " app.kubernetes.io/instance = shop , app.kubernetes.io/component in (app) ",
            &pod
        ));
        assert!(!selects(
            "app.kubernetes.io/instance=shop,app.kubernetes.io/component=worker",
            &pod
        ));
        assert!(selects("queue=", &[("queue", "")]));
    }

    #[test]
    fn what_cannot_be_evaluated_exactly_is_refused() {
        for bad in [
            "replicas>3",
            "replicas<3",
            "a in (x",
            "a in x)",
            "a in ()",
            "a exists (x)",
            "a=b,,c=d",
            ",",
            "a=b c",
            "-a=b",
            "a=b/c",
            "UPPER.example/x=y",
            "a in ((b))",
            &format!("a={}", "v".repeat(64)),
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let error = Selector::parse("replicas>3").expect_err("refused");
        assert!(error.to_string().contains("not supported"), "{error}");
    }

    #[test]
    fn a_selector_that_pins_a_key_names_its_values() {
        let selector =
            Selector::parse("scaledapp=shop,queue in (email.send,analytics.track)").expect("valid");
        assert_eq!(
            selector.allowed_values("scaledapp"),
            Some(BTreeSet::from(["shop"]))
        );
        assert_eq!(selector.allowed_values("queue").map(|v| v.len()), Some(2));
        assert_eq!(selector.allowed_values("other"), None);
        let contradictory = Selector::parse("scaledapp=a,scaledapp=b").expect("valid");
        assert_eq!(
            contradictory.allowed_values("scaledapp"),
            Some(BTreeSet::new())
        );
    }
}
