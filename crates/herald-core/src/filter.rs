//! Payload filters: a JSON document, in the language Outpost's and Convoy's users write, matched
//! against an event (`{id, type, tenant, source, time, data}`) at fan-out.
//!
//! A filter document is an object. Each key is either a field of the event — its value then
//! says what the field must hold — or a logical operator over whole filter documents (`$or`,
//! `$and`, `$not`). What a field must hold is
//! - a plain value: equal to it (an array field: one of its elements equal to it);
//! - an object without `$` keys: a filter document for the sub-object (nested matching);
//! - an object of operators, all of which must hold: `$eq $neq $gt $gte $lt $lte $in $nin
//!   $startsWith $endsWith $exist $not`.
//!
//! A filter is checked and compiled once ([`Filter::parse`], which names the path of whatever is
//! wrong) and evaluated without allocating ([`Filter::matches`]). [`Filter::explain`] says why an
//! event does or does not match, for people writing filters.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Deepest nesting of a filter document.
pub const MAX_DEPTH: usize = 16;
/// Most conditions (field tests and logical operators) in one filter.
pub const MAX_CONDITIONS: usize = 256;
/// Largest filter, as JSON text.
pub const MAX_BYTES: usize = 16 * 1024;

/// What is wrong with a filter, and where (`$or[1].data.amount.$gte`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InvalidFilter {
    /// Where in the filter document, empty for the document itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
}

/// A filter document: every entry must hold.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    /// The field `key` of the current object satisfies `test`.
    Field {
        key: String,
        test: Test,
    },
}

/// What one field must hold.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    /// Every test holds.
    All(Vec<Test>),
    Eq(Value),
    Neq(Value),
    Cmp(Cmp, Value),
    In(Vec<Value>),
    /// `$in` with a string: the field's string contains it.
    Contains(String),
    Nin(Vec<Value>),
    StartsWith(String),
    EndsWith(String),
    Exist(bool),
    Not(Box<Test>),
    /// A nested filter document for an object field (or any object in an array field).
    Doc(Box<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    fn name(self) -> &'static str {
        match self {
            Cmp::Gt => "$gt",
            Cmp::Gte => "$gte",
            Cmp::Lt => "$lt",
            Cmp::Lte => "$lte",
        }
    }
}

struct Parser {
    conditions: usize,
}

fn at(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn bad(path: &str, message: impl Into<String>) -> InvalidFilter {
    InvalidFilter { path: if path.is_empty() { "(filter)".into() } else { path.to_owned() }, message: message.into() }
}

impl Parser {
    fn count(&mut self, path: &str) -> Result<(), InvalidFilter> {
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(bad(path, format!("a filter may hold at most {MAX_CONDITIONS} conditions")));
        }
        Ok(())
    }

    fn document(&mut self, value: &Value, path: &str, depth: usize) -> Result<Node, InvalidFilter> {
        if depth > MAX_DEPTH {
            return Err(bad(path, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let Value::Object(map) = value else {
            return Err(bad(path, format!("a filter document must be an object, not {}", kind(value))));
        };
        let mut all = Vec::with_capacity(map.len());
        for (key, value) in map {
            let here = at(path, key);
            self.count(&here)?;
            all.push(match key.as_str() {
                "$or" | "$and" => {
                    let Value::Array(items) = value else {
                        return Err(bad(&here, "must be a non-empty array of filter documents"));
                    };
                    if items.is_empty() {
                        return Err(bad(&here, "must be a non-empty array of filter documents"));
                    }
                    let nodes = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.document(item, &format!("{here}[{i}]"), depth + 1))
                        .collect::<Result<Vec<_>, _>>()?;
                    if key == "$or" { Node::Any(nodes) } else { Node::All(nodes) }
                }
                "$not" => Node::Not(Box::new(self.document(value, &here, depth + 1)?)),
                op if op.starts_with('$') => {
                    return Err(bad(
                        &here,
                        format!("{op} is not an operator here; a filter document takes fields, $or, $and and $not"),
                    ));
                }
                _ => Node::Field { key: key.clone(), test: self.test(value, &here, depth + 1)? },
            });
        }
        Ok(Node::All(all))
    }

    fn test(&mut self, value: &Value, path: &str, depth: usize) -> Result<Test, InvalidFilter> {
        if depth > MAX_DEPTH {
            return Err(bad(path, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let Value::Object(map) = value else { return Ok(Test::Eq(value.clone())) };
        // `$or` and `$and` combine nested documents; every other `$` key tests the field itself.
        let operators = map.keys().filter(|k| k.starts_with('$') && *k != "$or" && *k != "$and").count();
        if operators == 0 {
            return Ok(Test::Doc(Box::new(self.document(value, path, depth)?)));
        }
        if operators != map.len() {
            return Err(bad(
                path,
                "mixes operators ($…) with fields or $or/$and; put the fields in a nested document or in $and",
            ));
        }
        self.operators(map, path, depth)
    }

    fn operators(&mut self, map: &Map<String, Value>, path: &str, depth: usize) -> Result<Test, InvalidFilter> {
        let mut all = Vec::with_capacity(map.len());
        for (op, operand) in map {
            let here = at(path, op);
            self.count(&here)?;
            let string = |what: &str| match operand {
                Value::String(s) => Ok(s.clone()),
                other => Err(bad(&here, format!("{what} takes a string, not {}", kind(other)))),
            };
            all.push(match op.as_str() {
                "$eq" => Test::Eq(operand.clone()),
                "$neq" | "$ne" => Test::Neq(operand.clone()),
                "$gt" | "$gte" | "$lt" | "$lte" => {
                    if !matches!(operand, Value::Number(_) | Value::String(_)) {
                        return Err(bad(&here, format!("takes a number or a string, not {}", kind(operand))));
                    }
                    let cmp = match op.as_str() {
                        "$gt" => Cmp::Gt,
                        "$gte" => Cmp::Gte,
                        "$lt" => Cmp::Lt,
                        _ => Cmp::Lte,
                    };
                    Test::Cmp(cmp, operand.clone())
                }
                "$in" => match operand {
                    Value::Array(items) => Test::In(items.clone()),
                    Value::String(s) => Test::Contains(s.clone()),
                    other => {
                        return Err(bad(&here, format!("takes an array (or a string, to match a substring), not {}", kind(other))));
                    }
                },
                "$nin" => match operand {
                    Value::Array(items) => Test::Nin(items.clone()),
                    other => return Err(bad(&here, format!("takes an array, not {}", kind(other)))),
                },
                "$startsWith" => Test::StartsWith(string("$startsWith")?),
                "$endsWith" => Test::EndsWith(string("$endsWith")?),
                "$exist" | "$exists" => match operand {
                    Value::Bool(b) => Test::Exist(*b),
                    other => return Err(bad(&here, format!("takes true or false, not {}", kind(other)))),
                },
                "$not" => Test::Not(Box::new(self.test(operand, &here, depth + 1)?)),
                other => {
                    return Err(bad(
                        &here,
                        format!(
                            "unknown operator {other}; use $eq $neq $gt $gte $lt $lte $in $nin $startsWith $endsWith $exist $not"
                        ),
                    ));
                }
            });
        }
        Ok(if all.len() == 1 { all.pop().expect("one") } else { Test::All(all) })
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Records why a filter matched or not; `()` records nothing (the fan-out's way).
trait Why {
    fn note(&mut self, path: &[&str], say: impl FnOnce() -> String);
}

impl Why for () {
    #[inline]
    fn note(&mut self, _: &[&str], _: impl FnOnce() -> String) {}
}

impl Why for Vec<String> {
    fn note(&mut self, path: &[&str], say: impl FnOnce() -> String) {
        let mut line = if path.is_empty() { "(event)".to_owned() } else { path.join(".") };
        let _ = write!(line, ": {}", say());
        self.push(line);
    }
}

/// Paths are at most [`MAX_DEPTH`] deep, so a fixed stack holds them without allocating.
struct Path<'a> {
    keys: [&'a str; MAX_DEPTH + 2],
    len: usize,
}

impl<'a> Path<'a> {
    fn push(&mut self, key: &'a str) -> bool {
        if self.len == self.keys.len() {
            return false;
        }
        self.keys[self.len] = key;
        self.len += 1;
        true
    }

    fn pop(&mut self) {
        self.len -= 1;
    }

    fn get(&self) -> &[&'a str] {
        &self.keys[..self.len]
    }
}

impl Filter {
    /// Checks and compiles a filter document. `{}` is a filter that matches everything.
    pub fn parse(document: &Value) -> Result<Self, InvalidFilter> {
        let size = serde_json::to_vec(document).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_BYTES {
            return Err(bad("", format!("is {size} bytes; a filter may be at most {MAX_BYTES}")));
        }
        let root = Parser { conditions: 0 }.document(document, "", 0)?;
        Ok(Self { root })
    }

    /// A subscription's stored filter (JSON text, checked when it was stored) compiled; `None`
    /// when there is none, it is `{}`, or — only after a downgrade or a hand-made write — it
    /// no longer compiles (logged): the subscription then gets every event of its types rather
    /// than none.
    pub fn parse_stored(text: &str) -> Option<Self> {
        if text.is_empty() {
            return None;
        }
        let parsed = serde_json::from_str(text).map_err(|e| e.to_string());
        match parsed.and_then(|doc| Self::parse(&doc).map_err(|e| e.to_string())) {
            Ok(filter) if filter.is_empty() => None,
            Ok(filter) => Some(filter),
            Err(e) => {
                tracing::warn!(error = %e, "a stored payload filter does not compile; ignored");
                None
            }
        }
    }

    /// True if the filter holds nothing (`{}`): every event matches.
    pub fn is_empty(&self) -> bool {
        matches!(&self.root, Node::All(nodes) if nodes.is_empty())
    }

    /// True if `event` (the event document, see [`event_document`]) matches.
    pub fn matches(&self, event: &Value) -> bool {
        let mut path = Path { keys: [""; MAX_DEPTH + 2], len: 0 };
        node(&self.root, event, &mut path, &mut ())
    }

    /// Whether `event` matches, and why: the conditions that decided it, one per line.
    pub fn explain(&self, event: &Value) -> (bool, Vec<String>) {
        let mut why = Vec::new();
        let mut path = Path { keys: [""; MAX_DEPTH + 2], len: 0 };
        let matched = node(&self.root, event, &mut path, &mut why);
        if matched && why.is_empty() {
            why.push("every condition holds".into());
        }
        (matched, why)
    }
}

fn node<'a>(n: &'a Node, value: &Value, path: &mut Path<'a>, why: &mut impl Why) -> bool {
    match n {
        Node::All(nodes) => nodes.iter().all(|n| node(n, value, path, why)),
        Node::Any(nodes) => {
            let any = nodes.iter().any(|n| node(n, value, path, &mut ()));
            if !any {
                // Say why each alternative failed.
                for n in nodes {
                    node(n, value, path, why);
                }
                why.note(path.get(), || format!("none of the {} $or alternatives holds", nodes.len()));
            }
            any
        }
        Node::Not(inner) => {
            let held = node(inner, value, path, &mut ());
            if held {
                why.note(path.get(), || "the $not document holds".into());
            }
            !held
        }
        Node::Field { key, test: t } => {
            let field = match value {
                Value::Object(map) => map.get(key.as_str()),
                _ => None,
            };
            if !path.push(key) {
                return false;
            }
            let held = test(t, field, path, why);
            path.pop();
            held
        }
    }
}

/// `field` is `None` when the event has no such field.
fn test<'a>(t: &'a Test, field: Option<&Value>, path: &mut Path<'a>, why: &mut impl Why) -> bool {
    let held = match t {
        Test::All(tests) => return tests.iter().all(|t| test(t, field, path, why)),
        Test::Not(inner) => {
            let held = test(inner, field, path, &mut ());
            if held {
                why.note(path.get(), || "the $not condition holds".into());
            }
            return !held;
        }
        Test::Doc(doc) => {
            let held = match field {
                Some(Value::Array(items)) => items.iter().any(|item| node(doc, item, path, &mut ())),
                Some(v @ Value::Object(_)) => return node(doc, v, path, why),
                _ => false,
            };
            if !held {
                if let Some(Value::Array(items)) = field {
                    why.note(path.get(), || {
                        format!("none of its {} elements matches the nested document", items.len())
                    });
                } else {
                    why.note(path.get(), || format!("is {}, not an object", shown(field)));
                }
            }
            return held;
        }
        Test::Exist(want) => field.is_some() == *want,
        Test::Eq(want) => field.is_some_and(|v| contains_or_equals(v, want)),
        Test::Neq(want) => !field.is_some_and(|v| contains_or_equals(v, want)),
        Test::In(options) => field.is_some_and(|v| options.iter().any(|o| contains_or_equals(v, o))),
        Test::Nin(options) => !field.is_some_and(|v| options.iter().any(|o| contains_or_equals(v, o))),
        Test::Contains(part) => match field {
            Some(Value::String(s)) => s.contains(part.as_str()),
            Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(part.as_str())),
            _ => false,
        },
        Test::StartsWith(prefix) => field.and_then(Value::as_str).is_some_and(|s| s.starts_with(prefix.as_str())),
        Test::EndsWith(suffix) => field.and_then(Value::as_str).is_some_and(|s| s.ends_with(suffix.as_str())),
        Test::Cmp(cmp, bound) => match field {
            Some(Value::Array(items)) => items.iter().any(|i| compare(*cmp, i, bound)),
            Some(v) => compare(*cmp, v, bound),
            None => false,
        },
    };
    if !held {
        why.note(path.get(), || format!("is {}, which fails {}", shown(field), describe(t)));
    }
    held
}

/// Equal, or (for an array field) holding an equal element. Numbers compare by value.
fn contains_or_equals(field: &Value, want: &Value) -> bool {
    equal(field, want)
        || matches!(field, Value::Array(items) if !want.is_array() && items.iter().any(|i| equal(i, want)))
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Numbers against numbers, strings against strings (so RFC 3339 times compare in time order);
/// anything else does not compare.
fn compare(cmp: Cmp, value: &Value, bound: &Value) -> bool {
    let ordering = match (value, bound) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().zip(y.as_f64()).and_then(|(x, y)| x.partial_cmp(&y)),
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        _ => None,
    };
    let Some(ordering) = ordering else { return false };
    match cmp {
        Cmp::Gt => ordering.is_gt(),
        Cmp::Gte => ordering.is_ge(),
        Cmp::Lt => ordering.is_lt(),
        Cmp::Lte => ordering.is_le(),
    }
}

fn shown(field: Option<&Value>) -> String {
    match field {
        None => "missing".into(),
        Some(v) => {
            let text = v.to_string();
            match text.char_indices().nth(80) {
                Some((cut, _)) => format!("{}…", &text[..cut]),
                None => text,
            }
        }
    }
}

fn describe(t: &Test) -> String {
    match t {
        Test::Eq(v) => format!("equal to {v}"),
        Test::Neq(v) => format!("$neq {v}"),
        Test::Cmp(cmp, v) => format!("{} {v}", cmp.name()),
        Test::In(v) => format!("$in {}", Value::Array(v.clone())),
        Test::Contains(s) => format!("$in {s:?} (contains)"),
        Test::Nin(v) => format!("$nin {}", Value::Array(v.clone())),
        Test::StartsWith(s) => format!("$startsWith {s:?}"),
        Test::EndsWith(s) => format!("$endsWith {s:?}"),
        Test::Exist(b) => format!("$exist {b}"),
        Test::All(_) | Test::Not(_) | Test::Doc(_) => "the condition".into(),
    }
}

/// The document a filter sees for an event: `{id, type, tenant, source, time, data}`, with
/// `data` parsed (`null` if it is not JSON).
pub fn event_document(event: &crate::proto::Event) -> Value {
    let data = serde_json::from_slice(&event.data).unwrap_or(Value::Null);
    serde_json::json!({
        "id": event.id, "type": event.r#type, "tenant": event.tenant, "source": event.source, "time": event.time,
        "data": data,
    })
}

#[cfg(test)]
mod tests;
