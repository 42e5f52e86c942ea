//! Terraform values and their wire encodings (msgpack for plans and state, JSON for
//! stored state being upgraded). See object-wire-format.md in the Terraform repository.
//!
//! The model is deliberately untyped: lists, sets and tuples are `List`; maps and
//! objects are `Map`. The schema (see [`crate::plugin::schema`]) supplies the shape when
//! it matters, through [`Value::conform`].

use std::collections::BTreeMap;
use std::fmt;

use super::schema::{Block, Nesting};

/// One Terraform value.
#[derive(Clone, PartialEq)]
pub enum Value {
    Null,
    /// Not known until apply. Refined unknowns (msgpack ext 12) decode to this too.
    Unknown,
    Bool(bool),
    Number(Number),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

/// A Terraform number. Integers stay exact; everything else is an f64.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Number {
    Int(i64),
    Float(f64),
}

/// `f` as an integer, when it is one and an `f64` holds it exactly (|f| < 2^53).
pub(crate) fn exact_int(f: f64) -> Option<i64> {
    if f.fract() != 0.0 || f.abs() >= 9.0e15 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)] // integral and within ±2^53: exact
    let i = f as i64;
    Some(i)
}

impl Number {
    pub fn as_i64(self) -> Option<i64> {
        match self {
            Number::Int(i) => Some(i),
            Number::Float(f) => exact_int(f),
        }
    }
}

/// Values are printed without string contents: a string may be a secret.
impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Unknown => f.write_str("(unknown)"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) => write!(f, "{n:?}"),
            Value::String(s) => write!(f, "<string, {} bytes>", s.len()),
            Value::List(items) => f.debug_list().entries(items).finish(),
            Value::Map(m) => f.debug_map().entries(m).finish(),
        }
    }
}

#[derive(Debug)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl Value {
    /// An object of these attributes (later names win).
    pub fn object(pairs: &[(&str, Value)]) -> Value {
        let mut v = Value::Null;
        for (k, x) in pairs {
            v.set(k, x.clone());
        }
        v
    }

    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    pub fn int(i: i64) -> Value {
        Value::Number(Number::Int(i))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Value::Unknown)
    }

    /// True when neither this value nor anything inside it is unknown.
    pub fn is_fully_known(&self) -> bool {
        match self {
            Value::Unknown => false,
            Value::List(items) => items.iter().all(Value::is_fully_known),
            Value::Map(m) => m.values().all(Value::is_fully_known),
            _ => true,
        }
    }

    /// The attribute `name` of an object; `Null` when absent or when self is not an object.
    pub fn get(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        match self {
            Value::Map(m) => m.get(name).unwrap_or(&NULL),
            _ => &NULL,
        }
    }

    /// Sets attribute `name` of an object (a null self becomes an empty object first).
    pub fn set(&mut self, name: &str, v: Value) {
        if !matches!(self, Value::Map(_)) {
            *self = Value::Map(BTreeMap::new());
        }
        if let Value::Map(m) = self {
            m.insert(name.to_string(), v);
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    // ------------------------------------------------------------------ msgpack

    pub fn from_msgpack(bytes: &[u8]) -> Result<Value, DecodeError> {
        let mut rd = bytes;
        let v = rmpv::decode::read_value(&mut rd)
            .map_err(|e| DecodeError(format!("invalid msgpack value: {e}")))?;
        from_rmpv(v)
    }

    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        // Writing to a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut out, &to_rmpv(self));
        out
    }

    // ------------------------------------------------------------------ JSON

    pub fn from_json(bytes: &[u8]) -> Result<Value, DecodeError> {
        let j: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError(format!("invalid JSON value: {e}")))?;
        Ok(from_serde_json(j))
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null | Value::Unknown => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(Number::Int(i)) => serde_json::Value::from(*i),
            Value::Number(Number::Float(f)) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::List(items) => {
                serde_json::Value::Array(items.iter().map(|v| v.to_json()).collect())
            }
            Value::Map(m) => {
                serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    // ------------------------------------------------------------------ schema shape

    /// Reshapes an object to exactly the attributes and blocks of `block`: missing ones
    /// become null (GROUP blocks an empty object, LIST/SET blocks an empty list), unknown
    /// names are dropped. Used for stored state written by an older schema.
    pub fn conform(self, block: &Block) -> Value {
        let mut src = match self {
            Value::Map(m) => m,
            Value::Unknown => return Value::Unknown,
            _ => BTreeMap::new(),
        };
        let mut out = BTreeMap::new();
        for a in &block.attributes {
            out.insert(a.name.clone(), src.remove(&a.name).unwrap_or(Value::Null));
        }
        for b in &block.blocks {
            let v = src.remove(&b.name).unwrap_or(Value::Null);
            let v = match b.nesting {
                Nesting::Single => match v {
                    Value::Null => Value::Null,
                    other => other.conform(&b.block),
                },
                Nesting::Group => v.conform(&b.block),
                Nesting::List | Nesting::Set => match v {
                    Value::List(items) => {
                        Value::List(items.into_iter().map(|i| i.conform(&b.block)).collect())
                    }
                    Value::Unknown => Value::Unknown,
                    _ => Value::List(vec![]),
                },
            };
            out.insert(b.name.clone(), v);
        }
        Value::Map(out)
    }
}

fn number_from_str(s: &str) -> Option<Number> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(Number::Int(i));
    }
    s.parse::<f64>().ok().map(Number::Float)
}

fn from_rmpv(v: rmpv::Value) -> Result<Value, DecodeError> {
    Ok(match v {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(b) => Value::Bool(b),
        rmpv::Value::Integer(i) => match i.as_i64() {
            Some(i) => Value::Number(Number::Int(i)),
            None => Value::Number(Number::Float(i.as_f64().unwrap_or(f64::NAN))),
        },
        rmpv::Value::F32(f) => Value::Number(Number::Float(f as f64)),
        rmpv::Value::F64(f) => Value::Number(Number::Float(f)),
        rmpv::Value::String(s) => match s.into_str() {
            Some(s) => Value::String(s),
            None => return Err(DecodeError("msgpack string is not UTF-8".into())),
        },
        rmpv::Value::Binary(b) => match String::from_utf8(b) {
            Ok(s) => Value::String(s),
            Err(_) => return Err(DecodeError("msgpack binary is not UTF-8".into())),
        },
        rmpv::Value::Array(items) => {
            Value::List(items.into_iter().map(from_rmpv).collect::<Result<_, _>>()?)
        }
        rmpv::Value::Map(entries) => {
            let mut m = BTreeMap::new();
            for (k, v) in entries {
                let k = match k {
                    rmpv::Value::String(s) => s
                        .into_str()
                        .ok_or_else(|| DecodeError("msgpack map key is not UTF-8".into()))?,
                    other => {
                        return Err(DecodeError(format!(
                            "msgpack map key is not a string: {other}"
                        )))
                    }
                };
                m.insert(k, from_rmpv(v)?);
            }
            Value::Map(m)
        }
        // Any extension is an unknown value: code 0 plain, code 12 refined (the
        // refinements only narrow what the value may become; we need none of them).
        rmpv::Value::Ext(_, _) => Value::Unknown,
    })
}

/// Large numbers arrive from Terraform as strings; the schema says when a string is a
/// number, so callers that expect numbers use [`Value::as_i64`] on the result of this.
pub(crate) fn coerce_number(v: &Value) -> Option<Number> {
    match v {
        Value::Number(n) => Some(*n),
        Value::String(s) => number_from_str(s),
        _ => None,
    }
}

fn to_rmpv(v: &Value) -> rmpv::Value {
    match v {
        Value::Null => rmpv::Value::Nil,
        // fixext1, type 0, one zero byte: what Terraform itself writes for unknown.
        Value::Unknown => rmpv::Value::Ext(0, vec![0]),
        Value::Bool(b) => rmpv::Value::Boolean(*b),
        Value::Number(Number::Int(i)) => rmpv::Value::from(*i),
        Value::Number(Number::Float(f)) => rmpv::Value::F64(*f),
        Value::String(s) => rmpv::Value::String(s.as_str().into()),
        Value::List(items) => rmpv::Value::Array(items.iter().map(to_rmpv).collect()),
        Value::Map(m) => rmpv::Value::Map(
            m.iter()
                .map(|(k, v)| (rmpv::Value::String(k.as_str().into()), to_rmpv(v)))
                .collect(),
        ),
    }
}

fn from_serde_json(j: serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => Value::Number(match n.as_i64() {
            Some(i) => Number::Int(i),
            None => Number::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        serde_json::Value::String(s) => Value::String(s),
        serde_json::Value::Array(items) => {
            Value::List(items.into_iter().map(from_serde_json).collect())
        }
        serde_json::Value::Object(m) => Value::Map(
            m.into_iter()
                .map(|(k, v)| (k, from_serde_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::schema::{Attribute, Block, NestedBlock, Nesting, Type};

    #[test]
    fn msgpack_round_trip() {
        let mut v = Value::Null;
        v.set("s", Value::string("héllo \"$x\""));
        v.set("n", Value::int(-42));
        v.set("f", Value::Number(Number::Float(1.5)));
        v.set("b", Value::Bool(true));
        v.set("u", Value::Unknown);
        v.set("l", Value::List(vec![Value::int(1), Value::Null]));
        let back = Value::from_msgpack(&v.to_msgpack()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn unknown_is_encoded_as_terraform_does() {
        assert_eq!(Value::Unknown.to_msgpack(), vec![0xd4, 0x00, 0x00]);
    }

    #[test]
    fn refined_unknown_decodes_as_unknown() {
        // ext 12 carrying a map {1: true} (a "definitely not null" refinement)
        let mut payload = Vec::new();
        rmpv::encode::write_value(
            &mut payload,
            &rmpv::Value::Map(vec![(rmpv::Value::from(1), rmpv::Value::Boolean(true))]),
        )
        .unwrap();
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &rmpv::Value::Ext(12, payload)).unwrap();
        assert_eq!(Value::from_msgpack(&buf).unwrap(), Value::Unknown);
    }

    #[test]
    fn big_number_string_is_coerced() {
        assert_eq!(
            coerce_number(&Value::string("6379")).and_then(Number::as_i64),
            Some(6379)
        );
        assert_eq!(coerce_number(&Value::string("x")), None);
    }

    #[test]
    fn debug_hides_strings() {
        let s = format!("{:?}", Value::string("hunter2"));
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn conform_fills_and_drops() {
        let block = Block::new()
            .attr(Attribute::new("a", Type::String).optional())
            .attr(Attribute::new("b", Type::Number).optional())
            .block(NestedBlock::new("g", Nesting::List, Block::new()));
        let v = Value::from_json(br#"{"a":"x","old":1}"#)
            .unwrap()
            .conform(&block);
        assert_eq!(v.get("a"), &Value::string("x"));
        assert_eq!(v.get("b"), &Value::Null);
        assert_eq!(v.get("g"), &Value::List(vec![]));
        assert!(matches!(&v, Value::Map(m) if !m.contains_key("old")));
    }
}
