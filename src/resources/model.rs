//! One declaration per attribute, and the typed models a resource reads its values into.
//!
//! A resource lists its own attributes once, with [`model!`](crate::model): each line
//! gives the name (the Rust field's), the type (the field's), whether it is required,
//! its default, its check, whether a change replaces the resource, whether it is
//! sensitive or write-only, and its description. From that one list come
//! - the schema ([`block`]), with "Default `X`." and "Changing it replaces the
//!   resource." added to the description from the declaration itself;
//! - the plan's defaults ([`set_defaults`]) and replace paths ([`replaced`]);
//! - plan-time validation ([`validate`]);
//! - the struct the resource's code reads: [`Model::decode`] is the one place a value
//!   is looked up by name, and it fails loudly ([`Undecoded::NotInSchema`]) on a name
//!   the object does not have, where `Value::get` would quietly give `Null`.
//!
//! A field's Rust type says how its value converts ([`Field`]): `u16` refuses 70000,
//! `Option<T>` is `None` for null, [`Secret`] keeps a password out of `Debug`.

use std::sync::OnceLock;

use super::validate::{self, Check};
use crate::plugin::{
    AttrPath, Attribute, Block, Diagnostic, Diagnostics, NestedBlock, Nesting, Type, Value,
};
use crate::secret::Secret;

/// One attribute: its schema, and what the plan and validation do with it.
pub(crate) struct Decl {
    attr: Attribute,
    default: Option<Value>,
    check: Option<Check>,
    replaces: bool,
    /// A nested block rather than an attribute: its shape, from the field's type.
    nested: Option<Nested>,
    /// How many blocks: `(min, max)`, `max` 0 for no limit.
    items: (i64, i64),
    /// The description states the default itself ([`Decl::default_in_doc`]).
    default_in_doc: bool,
}

/// The shape of a nested block: how it nests, and its own declarations.
pub(crate) struct Nested {
    nesting: Nesting,
    decls: fn() -> &'static [Decl],
}

impl Decl {
    /// An attribute of type `ty` that is neither required nor optional yet: one of
    /// [`Decl::required`], [`Decl::optional`], [`Decl::default`] or [`Decl::computed`]
    /// says which.
    pub(crate) fn new(name: &'static str, ty: Type) -> Self {
        Decl {
            attr: Attribute::new(name, ty),
            default: None,
            check: None,
            replaces: false,
            nested: None,
            items: (0, 0),
            default_in_doc: false,
        }
    }

    /// A nested block when the field's type is one ([`Blocks`]); set by `model!`.
    pub(crate) fn shaped(mut self, nested: Option<Nested>) -> Self {
        self.nested = nested;
        self
    }

    /// For a nested block: at least `min` blocks, at most `max` (0: no limit).
    #[allow(dead_code)] // with `Blocks`
    pub(crate) fn items(mut self, min: i64, max: i64) -> Self {
        self.items = (min, max);
        self
    }

    /// The attribute's name.
    pub(crate) fn name(&self) -> &str {
        &self.attr.name
    }

    /// The configuration must set it.
    pub(crate) fn required(mut self) -> Self {
        self.attr = self.attr.required();
        self
    }

    /// The configuration may set it; null when it does not.
    pub(crate) fn optional(mut self) -> Self {
        self.attr = self.attr.optional();
        self
    }

    /// The provider sets it.
    pub(crate) fn computed(mut self) -> Self {
        self.attr = self.attr.computed();
        self
    }

    /// The configuration may set it; the plan sets `v` when it does not.
    pub(crate) fn default<T: Field>(mut self, v: T) -> Self {
        self.attr = self.attr.optional().computed();
        self.default = Some(v.to_value());
        self
    }

    /// As [`Decl::default`], for a description that states the default itself where it
    /// reads best (mid-sentence, say): no "Default `X`." is added to it.
    pub(crate) fn default_in_doc<T: Field>(mut self, v: T) -> Self {
        self = self.default(v);
        self.default_in_doc = true;
        self
    }

    /// Checked at plan (see [`validate::Check`]); null and unknown values pass.
    pub(crate) fn check(mut self, c: Check) -> Self {
        self.check = Some(c);
        self
    }

    /// A change replaces the resource.
    pub(crate) fn replaces(mut self) -> Self {
        self.replaces = true;
        self
    }

    /// Hidden in plans and output.
    pub(crate) fn sensitive(mut self) -> Self {
        self.attr = self.attr.sensitive();
        self
    }

    /// Sensitive, and in the configuration only: never in the plan or state.
    pub(crate) fn write_only(mut self) -> Self {
        self.attr = self.attr.sensitive().write_only();
        self
    }

    /// The description (Markdown), without the default or the replacement, which the
    /// declaration adds itself.
    pub(crate) fn doc(mut self, md: impl Into<String>) -> Self {
        self.attr.description = md.into();
        self
    }

    /// `password`: optional, sensitive, kept in the state; `whose` starts the
    /// description ("The role's password").
    pub(crate) fn password_kept(self, whose: &str) -> Self {
        self.optional().sensitive().doc(format!(
            "{whose}, kept (sensitive) in the Terraform state. Prefer `password_wo`; set exactly one."
        ))
    }

    /// `password_wo`: the write-only twin of [`Decl::password_kept`], checked with it.
    pub(crate) fn password_write_only(self, whose: &str) -> Self {
        self.optional()
            .write_only()
            .check(Check::PasswordPair)
            .doc(format!(
            "{whose}, write-only: never stored in the plan or state (Terraform 1.11 or later). \
             Change `password_wo_version` to rotate it."
        ))
    }

    /// `password_wo_version`; `applies_to` says what a rotation changes.
    pub(crate) fn password_version(self, applies_to: &str) -> Self {
        self.optional().doc(format!(
            "Any number; changing it applies the current `password_wo` ({applies_to})."
        ))
    }

    /// The schema attribute, its description completed from the declaration.
    pub(crate) fn attribute(&self) -> Attribute {
        let mut a = self.attr.clone();
        let mut extra = Vec::new();
        if let Some(d) = self.default.as_ref().filter(|_| !self.default_in_doc) {
            extra.push(format!("Default `{}`.", shown(d)));
        }
        if self.replaces {
            extra.push("Changing it replaces the resource.".to_string());
        }
        for e in extra {
            if !a.description.is_empty() {
                a.description.push(' ');
            }
            a.description.push_str(&e);
        }
        a
    }
}

/// A default as the docs show it: a word bare, a list or map as HCL writes it.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => hcl(other),
    }
}

fn hcl(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Bool(b) => b.to_string(),
        Value::List(items) => {
            format!("[{}]", items.iter().map(hcl).collect::<Vec<_>>().join(", "))
        }
        Value::Map(m) => format!(
            "{{ {} }}",
            m.iter()
                .map(|(k, x)| format!("{k:?} = {}", hcl(x)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => match other.as_i64() {
            Some(i) => i.to_string(),
            None => format!("{other:?}"),
        },
    }
}

/// The block of these attributes.
pub(crate) fn block(decls: &[Decl], description: &str) -> Block {
    decls
        .iter()
        .fold(Block::new().description(description), |b, d| {
            match &d.nested {
                None => b.attr(d.attribute()),
                Some(n) => b.block(
                    NestedBlock::new(d.name(), n.nesting, block((n.decls)(), &d.attr.description))
                        .items(d.items.0, d.items.1),
                ),
            }
        })
}

/// Each declared check on the configuration; in a nested block, on each block, the
/// error naming `block[i].attr`.
pub(crate) fn validate(decls: &[Decl], config: &Value, diags: &mut Diagnostics) {
    for d in decls {
        match &d.nested {
            None => {
                if let Some(c) = d.check {
                    validate::run(config, &[(d.name(), c)], diags);
                }
            }
            Some(n) => {
                let table: Vec<(&str, Check)> = (n.decls)()
                    .iter()
                    .filter_map(|x| x.check.map(|c| (x.name(), c)))
                    .collect();
                match n.nesting {
                    Nesting::List | Nesting::Set => {
                        validate::run_in_each(config, d.name(), &table, diags)
                    }
                    Nesting::Single | Nesting::Group => {
                        validate::run_in(config, d.name(), &table, diags)
                    }
                }
            }
        }
    }
}

/// Every attribute the configuration leaves null gets its default; in a nested list,
/// in each block.
pub(crate) fn set_defaults(decls: &[Decl], config: &Value, planned: &mut Value) {
    for d in decls {
        if let Some(n) = &d.nested {
            let Value::Map(m) = planned else { continue };
            match m.get_mut(d.name()) {
                Some(Value::List(items)) => {
                    let from = config.get(d.name()).as_list().unwrap_or_default();
                    for (item, c) in items.iter_mut().zip(from) {
                        set_defaults((n.decls)(), c, item);
                    }
                }
                Some(item @ Value::Map(_)) => set_defaults((n.decls)(), config.get(d.name()), item),
                _ => {}
            }
        } else if let Some(v) = &d.default {
            if config.get(d.name()).is_null() {
                planned.set(d.name(), v.clone());
            }
        }
    }
}

/// The attributes whose change from `prior` to `planned` replaces the resource.
pub(crate) fn replaced(decls: &[Decl], prior: &Value, planned: &Value) -> Vec<AttrPath> {
    decls
        .iter()
        .filter(|d| d.replaces && prior.get(d.name()) != planned.get(d.name()))
        .map(|d| AttrPath::root(d.name()))
        .collect()
}

/// Why an object did not decode into a model.
#[derive(Debug, Clone, PartialEq)]
pub enum Undecoded {
    /// The value is not an object at all (a null prior state, say).
    NotAnObject,
    /// The object has no such attribute: a name the schema does not have. A defect of
    /// the provider, never of the configuration.
    NotInSchema(&'static str),
    /// Not known yet (at plan).
    Unknown(&'static str),
    /// Null where the model needs a value.
    Null(&'static str),
    /// A value the field's type cannot hold (a port of 70000, say).
    Invalid { name: &'static str, why: String },
}

impl Undecoded {
    /// True when only an unknown value stopped the decode: the plan leaves what depends
    /// on it unknown.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Undecoded::Unknown(_))
    }
}

impl std::fmt::Display for Undecoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undecoded::NotAnObject => f.write_str("the value is not an object"),
            Undecoded::NotInSchema(n) => write!(f, "the object has no attribute {n:?}"),
            Undecoded::Unknown(n) => write!(f, "{n} is not known yet"),
            Undecoded::Null(n) => write!(f, "{n} is not set"),
            Undecoded::Invalid { name, why } => write!(f, "{name}: {why}"),
        }
    }
}

impl std::error::Error for Undecoded {}

impl From<Undecoded> for Diagnostics {
    fn from(e: Undecoded) -> Self {
        match e {
            // The value's own words never appear: a field's `why` names the bound, not
            // the value (see the `Field` impls), so this is safe on any attribute.
            Undecoded::Invalid { name, ref why } => {
                Diagnostic::error(format!("Invalid {name}"), why.clone())
                    .at(AttrPath::root(name))
                    .into()
            }
            Undecoded::Unknown(n) | Undecoded::Null(n) => Diagnostic::error(
                format!("{n} has no value"),
                format!("{e}; set it in the configuration"),
            )
            .into(),
            Undecoded::NotAnObject | Undecoded::NotInSchema(_) => Diagnostic::error(
                "Provider defect",
                format!("{e}. Please report this: the provider read an attribute its schema does not declare."),
            )
            .into(),
        }
    }
}

/// A value of `T` as a configuration or a plan holds it: not set, not known yet, or
/// known.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Known<T> {
    Null,
    Unknown,
    /// Set, and known.
    Value(T),
}

impl<T> Known<T> {
    /// The value, `None` while null or unknown.
    pub(crate) fn known(self) -> Option<T> {
        match self {
            Known::Value(t) => Some(t),
            Known::Null | Known::Unknown => None,
        }
    }

    /// True when the value is known (set, and not waiting for the apply).
    pub(crate) fn is_known(&self) -> bool {
        matches!(self, Known::Value(_))
    }

    /// True when the configuration leaves it to the provider.
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Known::Null)
    }

    /// True while the plan leaves it for the apply to set.
    pub(crate) fn is_unknown(&self) -> bool {
        matches!(self, Known::Unknown)
    }

    /// The value, by reference; `None` while null or unknown.
    pub(crate) fn value(&self) -> Option<&T> {
        match self {
            Known::Value(t) => Some(t),
            Known::Null | Known::Unknown => None,
        }
    }
}

/// Not set: a model whose every field is `Known` defaults to an empty object (a
/// configuration block left out).
impl<T> Default for Known<T> {
    fn default() -> Self {
        Known::Null
    }
}

/// How a model field's Rust type converts from and to a Terraform value.
pub(crate) trait Field: Sized {
    /// The type a configuration or plan view holds in its [`Known`]: `Self`, except
    /// for [`Known<T>`] itself, which is already "maybe unknown".
    type Plain: Field;
    /// The Terraform type the schema declares.
    fn ty() -> Type;
    /// From a known, non-null value; the error names the bound, never the value.
    fn from_value(v: &Value) -> Result<Self, String>;
    /// The value for a null: `Some` only for types that can hold "not set".
    fn from_null() -> Option<Self> {
        None
    }
    /// The value for an unknown: `Some` only for [`Known`], the type of a computed
    /// attribute that a plan leaves unknown until the apply sets it.
    fn from_unknown() -> Option<Self> {
        None
    }
    /// From a value that is set but not wholly known (a block with one unknown
    /// attribute): `Some` only for a nested block ([`One`]) whose model holds the
    /// unknowns in [`Known`] fields. `None` reads it as [`Field::from_unknown`].
    fn from_partial(_v: &Value) -> Option<Result<Self, String>> {
        None
    }
    /// The value to store.
    fn to_value(&self) -> Value;
    /// The shape of a nested block, for [`Blocks`]; `None` for an attribute.
    fn nested() -> Option<Nested> {
        None
    }
}

/// A list of nested blocks of model `M`: `client { … }` written once per client.
// Unit-tested here; the resources with nested blocks are the next to move onto models.
#[allow(dead_code)]
pub(crate) struct Blocks<M>(pub Vec<M>);

impl<M: Model> Field for Blocks<M> {
    type Plain = Self;
    fn ty() -> Type {
        Type::list(Type::Dynamic)
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        let items = v.as_list().ok_or("not a list of blocks")?;
        items
            .iter()
            .map(|x| M::decode(x).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()
            .map(Blocks)
    }
    fn from_null() -> Option<Self> {
        Some(Blocks(vec![]))
    }
    fn to_value(&self) -> Value {
        Value::List(
            self.0
                .iter()
                .map(|m| {
                    let mut v = Value::Null;
                    m.encode(&mut v);
                    v
                })
                .collect(),
        )
    }
    fn nested() -> Option<Nested> {
        Some(Nested {
            nesting: Nesting::List,
            decls: M::decls,
        })
    }
}

/// One nested block of model `M`, written at most once (`postgres { … }`); an absent
/// block is `Option::<One<M>>::None` (or `Known::Null`, in a configuration whose blocks
/// may be unknown).
pub(crate) struct One<M>(pub M);

impl<M: Model> Field for One<M> {
    type Plain = Self;
    fn ty() -> Type {
        Type::Dynamic
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        M::decode(v).map(One).map_err(|e| e.to_string())
    }
    /// A block with unknown attributes, when the model can say which: its unknown
    /// attributes are all `Known` fields. Otherwise the whole block is unknown.
    fn from_partial(v: &Value) -> Option<Result<Self, String>> {
        M::decode(v).ok().map(|m| Ok(One(m)))
    }
    fn to_value(&self) -> Value {
        let mut v = Value::Null;
        self.0.encode(&mut v);
        v
    }
    fn nested() -> Option<Nested> {
        Some(Nested {
            nesting: Nesting::Single,
            decls: M::decls,
        })
    }
}

impl Field for String {
    type Plain = Self;
    fn ty() -> Type {
        Type::String
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| "not a string".into())
    }
    fn to_value(&self) -> Value {
        Value::string(self.clone())
    }
}

impl Field for Secret {
    type Plain = Self;
    fn ty() -> Type {
        Type::String
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        v.as_str()
            .map(Secret::from)
            .ok_or_else(|| "not a string".into())
    }
    fn to_value(&self) -> Value {
        Value::string(self.expose())
    }
}

impl Field for bool {
    type Plain = Self;
    fn ty() -> Type {
        Type::Bool
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        v.as_bool().ok_or_else(|| "not a bool".into())
    }
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}

impl Field for i64 {
    type Plain = Self;
    fn ty() -> Type {
        Type::Number
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        crate::plugin::value::coerce_number(v)
            .and_then(|n| n.as_i64())
            .ok_or_else(|| "not a whole number".into())
    }
    fn to_value(&self) -> Value {
        Value::int(*self)
    }
}

/// Any number, whole or not (`password_wo_version`: only compared, never converted).
impl Field for f64 {
    type Plain = Self;
    fn ty() -> Type {
        Type::Number
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        match crate::plugin::value::coerce_number(v) {
            Some(crate::plugin::value::Number::Int(i)) => Ok(i as f64),
            Some(crate::plugin::value::Number::Float(f)) => Ok(f),
            None => Err("not a number".into()),
        }
    }
    fn to_value(&self) -> Value {
        match crate::plugin::value::exact_int(*self) {
            Some(i) => Value::int(i),
            None => Value::Number(crate::plugin::value::Number::Float(*self)),
        }
    }
}

/// A number as the configuration wrote it, whole or not, of any size: for a value
/// checked by hand whose error quotes it (a provider block's `port`, say), so that
/// reading the block never fails on it.
impl Field for crate::plugin::value::Number {
    type Plain = Self;
    fn ty() -> Type {
        Type::Number
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        crate::plugin::value::coerce_number(v).ok_or_else(|| "not a number".into())
    }
    fn to_value(&self) -> Value {
        Value::Number(*self)
    }
}

macro_rules! unsigned_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            type Plain = Self;
            fn ty() -> Type {
                Type::Number
            }
            fn from_value(v: &Value) -> Result<Self, String> {
                let n = i64::from_value(v)?;
                <$t>::try_from(n).map_err(|_| {
                    format!("must be a whole number from 0 to {}", <$t>::MAX)
                })
            }
            fn to_value(&self) -> Value {
                Value::int(i64::from(*self))
            }
        }
    )*};
}
unsigned_field!(u16, u32);

impl<T: Field> Field for Option<T> {
    type Plain = Self;
    fn ty() -> Type {
        T::ty()
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        T::from_value(v).map(Some)
    }
    fn from_null() -> Option<Self> {
        Some(None)
    }
    fn from_unknown() -> Option<Self> {
        T::from_unknown().map(Some)
    }
    fn from_partial(v: &Value) -> Option<Result<Self, String>> {
        T::from_partial(v).map(|r| r.map(Some))
    }
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, Field::to_value)
    }
    fn nested() -> Option<Nested> {
        T::nested()
    }
}

impl<T: Field> Field for Known<T> {
    type Plain = T;
    fn ty() -> Type {
        T::ty()
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        T::from_value(v).map(Known::Value)
    }
    fn from_null() -> Option<Self> {
        Some(Known::Null)
    }
    fn from_unknown() -> Option<Self> {
        Some(Known::Unknown)
    }
    fn from_partial(v: &Value) -> Option<Result<Self, String>> {
        T::from_partial(v).map(|r| r.map(Known::Value))
    }
    fn to_value(&self) -> Value {
        match self {
            Known::Null => Value::Null,
            Known::Unknown => Value::Unknown,
            Known::Value(t) => t.to_value(),
        }
    }
    fn nested() -> Option<Nested> {
        T::nested()
    }
}

impl<T: Field> Field for Vec<T> {
    type Plain = Self;
    fn ty() -> Type {
        Type::list(T::ty())
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        let items = v.as_list().ok_or("not a list")?;
        items
            .iter()
            .map(|x| match x {
                Value::Null => T::from_null().ok_or_else(|| "an element is null".to_string()),
                x => T::from_value(x),
            })
            .collect()
    }
    fn to_value(&self) -> Value {
        Value::List(self.iter().map(Field::to_value).collect())
    }
}

impl<T: Field> Field for std::collections::BTreeMap<String, T> {
    type Plain = Self;
    fn ty() -> Type {
        Type::map(T::ty())
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        let Value::Map(m) = v else {
            return Err("not a map".into());
        };
        m.iter()
            .map(|(k, x)| {
                let t = match x {
                    Value::Null => T::from_null().ok_or_else(|| "an element is null".to_string()),
                    x => T::from_value(x),
                }?;
                Ok((k.clone(), t))
            })
            .collect()
    }
    fn to_value(&self) -> Value {
        Value::Map(
            self.iter()
                .map(|(k, x)| (k.clone(), x.to_value()))
                .collect(),
        )
    }
}

/// A string attribute that holds one of a fixed set of words: `parse` and `as_str`
/// are the enum's own.
#[macro_export]
macro_rules! word_field {
    ($t:ty) => {
        impl $crate::resources::model::Field for $t {
            type Plain = Self;
            fn ty() -> $crate::plugin::Type {
                $crate::plugin::Type::String
            }
            fn from_value(v: &$crate::plugin::Value) -> Result<Self, String> {
                v.as_str()
                    .and_then(<$t>::parse)
                    .ok_or_else(|| "not one of the allowed words".to_string())
            }
            fn to_value(&self) -> $crate::plugin::Value {
                $crate::plugin::Value::string(self.as_str())
            }
        }
    };
}

/// One attribute of an object, converted to `T`.
pub(crate) fn field<T: Field>(obj: &Value, name: &'static str) -> Result<T, Undecoded> {
    let Value::Map(m) = obj else {
        return Err(Undecoded::NotAnObject);
    };
    match m.get(name) {
        None => Err(Undecoded::NotInSchema(name)),
        Some(Value::Null) => T::from_null().ok_or(Undecoded::Null(name)),
        Some(v) if !v.is_fully_known() => match T::from_partial(v).filter(|_| !v.is_unknown()) {
            Some(r) => r.map_err(|why| Undecoded::Invalid { name, why }),
            None => T::from_unknown().ok_or(Undecoded::Unknown(name)),
        },
        Some(v) => T::from_value(v).map_err(|why| Undecoded::Invalid { name, why }),
    }
}

/// As [`field`], with a null value read as the attribute's declared default, if it has
/// one: a state written before the attribute existed holds null there (Terraform's
/// state upgrade fills it so), and reads as an apply of today would have written it.
pub(crate) fn field_or_default<T: Field>(
    obj: &Value,
    name: &'static str,
    decls: &[Decl],
) -> Result<T, Undecoded> {
    if let Value::Map(m) = obj {
        if let Some(Value::Null) = m.get(name) {
            if let Some(d) = decls
                .iter()
                .find(|d| d.name() == name)
                .and_then(|d| d.default.as_ref())
            {
                return T::from_value(d).map_err(|why| Undecoded::Invalid { name, why });
            }
        }
    }
    field(obj, name)
}

/// Sets attribute `name` of `v` from a plan-time view, except that an unknown never
/// replaces a value that is already not wholly known: a map with one unknown element
/// reads as unknown, and must go back as the map it was.
pub(crate) fn set_at_plan<T: Field>(v: &mut Value, name: &str, x: &Known<T>) {
    if matches!(x, Known::Unknown) && !v.get(name).is_fully_known() {
        return;
    }
    v.set(name, x.to_value());
}

/// As [`field`], with a null value as [`Known::Null`] and an unknown one as
/// [`Known::Unknown`]: for a configuration or a plan.
pub(crate) fn field_at_plan<T: Field>(
    obj: &Value,
    name: &'static str,
) -> Result<Known<T>, Undecoded> {
    match field::<Option<T>>(obj, name) {
        Ok(Some(t)) => Ok(Known::Value(t)),
        Ok(None) => Ok(Known::Null),
        Err(Undecoded::Unknown(_)) => Ok(Known::Unknown),
        Err(e) => Err(e),
    }
}

/// The list attribute or list of nested blocks `name` of a configuration or plan,
/// element by element, each read by `each` (a block by its model's plan view,
/// `MAtPlan::decode`; a list attribute's element by [`element_at_plan`]): one element
/// not known yet leaves the others readable, where the list's own [`Known`] would be
/// unknown as a whole. Fails as [`field`] does on a name the object does not have.
pub(crate) fn each_at_plan<P>(
    obj: &Value,
    name: &'static str,
    each: impl Fn(&Value) -> Result<P, Undecoded>,
) -> Result<Known<Vec<P>>, Undecoded> {
    let Value::Map(m) = obj else {
        return Err(Undecoded::NotAnObject);
    };
    match m.get(name) {
        None => Err(Undecoded::NotInSchema(name)),
        Some(Value::Null) => Ok(Known::Null),
        Some(Value::Unknown) => Ok(Known::Unknown),
        Some(Value::List(items)) => items
            .iter()
            .map(each)
            .collect::<Result<_, _>>()
            .map(Known::Value),
        Some(_) => Err(Undecoded::Invalid {
            name,
            why: "not a list".into(),
        }),
    }
}

/// For [`each_at_plan`] on the list attribute `name`: one element, null, unknown or a
/// `T`.
pub(crate) fn element_at_plan<T: Field>(
    name: &'static str,
) -> impl Fn(&Value) -> Result<Known<T>, Undecoded> {
    move |x| match x {
        Value::Null => Ok(Known::Null),
        x if !x.is_fully_known() => Ok(Known::Unknown),
        x => T::from_value(x)
            .map(Known::Value)
            .map_err(|why| Undecoded::Invalid { name, why }),
    }
}

/// A resource's typed view of its own attributes; written by [`model!`](crate::model).
pub(crate) trait Model: Sized {
    /// The declarations, built once.
    fn decls() -> &'static [Decl];
    /// The model of an object whose every attribute is known.
    fn decode(v: &Value) -> Result<Self, Undecoded>;
    /// Sets every attribute of the model on `v`.
    fn encode(&self, v: &mut Value);
}

/// The declarations of `M`, built once by `init` (for [`model!`](crate::model)).
pub(crate) fn once(cell: &'static OnceLock<Vec<Decl>>, init: fn() -> Vec<Decl>) -> &'static [Decl] {
    cell.get_or_init(init)
}

/// Declares a resource's attributes and the struct its code reads them into.
///
/// ```ignore
/// model! {
///     /// circleci_external_redis's own attributes.
///     pub struct Redis / RedisAtPlan {
///         host: String [required, check(Check::Host), doc("Hostname of the Redis.")],
///         port: u16 [default(6379u16), check(Check::Port), doc("Redis port.")],
///     }
/// }
/// ```
///
/// makes `Redis { host: String, port: u16 }` with [`Model`] implemented, and (when a
/// second name follows `/`) `RedisAtPlan { host: Known<String>, port: Known<u16> }`
/// with `RedisAtPlan::decode`, for plan-time values that may be unknown. Each bracket
/// is a chain of [`Decl`] builder calls.
#[macro_export]
macro_rules! model {
    (@main [$(#[$meta:meta])*] $vis:vis $name:ident {
        $(
            $(#[$fmeta:meta])*
            $field:ident : $ty:ty [ $( $m:ident $( ( $($a:expr),* ) )? ),* $(,)? ]
        ),* $(,)?
    }) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $crate::resources::model::Model for $name {
            fn decls() -> &'static [$crate::resources::model::Decl] {
                static DECLS: std::sync::OnceLock<Vec<$crate::resources::model::Decl>> =
                    std::sync::OnceLock::new();
                $crate::resources::model::once(&DECLS, || vec![$(
                    $crate::resources::model::Decl::new(
                        stringify!($field),
                        <$ty as $crate::resources::model::Field>::ty(),
                    )
                    .shaped(<$ty as $crate::resources::model::Field>::nested())
                    $( .$m( $( $($a),* )? ) )*
                ),*])
            }

            fn decode(
                v: &$crate::plugin::Value,
            ) -> Result<Self, $crate::resources::model::Undecoded> {
                Ok($name {
                    $( $field: $crate::resources::model::field_or_default(
                        v,
                        stringify!($field),
                        <Self as $crate::resources::model::Model>::decls(),
                    )?, )*
                })
            }

            fn encode(&self, v: &mut $crate::plugin::Value) {
                $( v.set(
                    stringify!($field),
                    $crate::resources::model::Field::to_value(&self.$field),
                ); )*
            }
        }
    };
    (@plan $vis:vis $plan:ident {
        $(
            $(#[$fmeta:meta])*
            $field:ident : $ty:ty [ $($decl:tt)* ]
        ),* $(,)?
    }) => {
        /// The same attributes as a configuration or a plan holds them: a value may be
        /// null or not known yet.
        #[allow(dead_code, reason = "a plan reads only what it needs")]
        $vis struct $plan {
            $( pub $field: $crate::resources::model::Known<
                <$ty as $crate::resources::model::Field>::Plain
            >, )*
        }

        impl $plan {
            /// The view of a configuration or plan `v`: each value null, unknown or
            /// known.
            pub(crate) fn decode(
                v: &$crate::plugin::Value,
            ) -> Result<Self, $crate::resources::model::Undecoded> {
                Ok($plan {
                    $( $field: $crate::resources::model::field_at_plan(v, stringify!($field))?, )*
                })
            }

            /// Sets every attribute on `v`: a null or unknown one as such, except that
            /// an unknown leaves a value that is not wholly known as it is.
            #[allow(dead_code)] // a resource whose plan hook changes nothing never writes it
            pub(crate) fn encode(&self, v: &mut $crate::plugin::Value) {
                $( $crate::resources::model::set_at_plan(v, stringify!($field), &self.$field); )*
            }
        }
    };
    ($(#[$meta:meta])* $vis:vis struct $name:ident / $plan:ident { $($body:tt)* }) => {
        $crate::model!(@main [$(#[$meta])*] $vis $name { $($body)* });
        $crate::model!(@plan $vis $plan { $($body)* });
    };
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($body:tt)* }) => {
        $crate::model!(@main [$(#[$meta])*] $vis $name { $($body)* });
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::Value;

    #[derive(Debug, PartialEq)]
    enum Colour {
        Red,
        Blue,
    }
    impl Colour {
        fn parse(s: &str) -> Option<Self> {
            match s {
                "red" => Some(Colour::Red),
                "blue" => Some(Colour::Blue),
                _ => None,
            }
        }
        fn as_str(&self) -> &'static str {
            match self {
                Colour::Red => "red",
                Colour::Blue => "blue",
            }
        }
    }
    crate::word_field!(Colour);

    crate::model! {
        /// A test model.
        struct Thing / ThingAtPlan {
            host: String [required, check(Check::Host), doc("The host.")],
            port: u16 [default(6379u16), check(Check::Port), doc("The port.")],
            colour: Colour [default(Colour::Red), check(Check::OneOf(&["red", "blue"])), replaces, doc("A colour.")],
            note: Option<String> [optional],
            token: Option<Secret> [write_only, optional],
            made: Known<String> [computed, doc("Set by the apply.")],
        }
    }

    fn obj(pairs: &[(&str, Value)]) -> Value {
        Value::object(pairs)
    }

    fn full() -> Value {
        obj(&[
            ("host", Value::string("db.internal")),
            ("port", Value::int(6380)),
            ("colour", Value::string("blue")),
            ("note", Value::Null),
            ("token", Value::string("hunter2")),
            ("made", Value::string("x")),
        ])
    }

    #[test]
    fn one_declaration_makes_the_schema_and_its_docs() {
        let b = block(Thing::decls(), "Things.");
        let names: Vec<_> = b.attributes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["host", "port", "colour", "note", "token", "made"]);
        let port = b.attribute("port").unwrap();
        assert!(port.optional && port.computed && !port.required);
        assert_eq!(port.ty, Type::Number);
        assert_eq!(port.description, "The port. Default `6379`.");
        let colour = b.attribute("colour").unwrap();
        assert_eq!(
            colour.description,
            "A colour. Default `red`. Changing it replaces the resource."
        );
        let token = b.attribute("token").unwrap();
        assert!(token.sensitive && token.write_only && token.optional);
        assert!(b.attribute("host").unwrap().required);
    }

    #[test]
    fn decode_reads_every_field_and_encode_writes_it_back() {
        let t = Thing::decode(&full()).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("db.internal", 6380));
        assert_eq!(t.colour, Colour::Blue);
        assert_eq!(t.note, None);
        assert_eq!(t.token.as_ref().map(Secret::expose), Some("hunter2"));
        let mut back = Value::Null;
        t.encode(&mut back);
        assert_eq!(back, full());
    }

    #[test]
    fn a_partly_unknown_value_goes_back_as_it_was() {
        let partial = Value::List(vec![Value::string("a"), Value::Unknown]);
        let v = Value::object(&[("host", Value::string("h")), ("tags", partial.clone())]);
        let p = TaggedAtPlan::decode(&v).unwrap();
        assert_eq!(p.tags, Known::Unknown);
        let mut back = v.clone();
        p.encode(&mut back);
        assert_eq!(back.get("tags"), &partial, "not collapsed to one unknown");
        assert!(Tagged::decode(&v).err().unwrap().is_unknown());
    }

    #[test]
    fn a_null_in_an_older_state_reads_as_the_default() {
        let mut v = full();
        v.set("port", Value::Null);
        v.set("colour", Value::Null);
        let t = Thing::decode(&v).unwrap();
        assert_eq!((t.port, t.colour), (6379, Colour::Red));
        v.set("host", Value::Null);
        assert_eq!(
            Thing::decode(&v).err(),
            Some(Undecoded::Null("host")),
            "no default"
        );
    }

    crate::model! {
        /// A model with a list.
        struct Tagged / TaggedAtPlan {
            host: String [required],
            tags: Vec<String> [optional],
        }
    }

    crate::model! {
        /// One machine of a fleet.
        struct Machine {
            host: String [required, check(Check::Host), doc("Its address.")],
            port: u16 [default(22u16), check(Check::Port), doc("Its SSH port.")],
        }
    }

    crate::model! {
        /// A fleet of machines, as nested blocks.
        struct Fleet {
            name: String [required],
            machine: Blocks<Machine> [items(1, 0), doc("One machine.")],
        }
    }

    #[test]
    fn nested_blocks_are_declared_checked_and_defaulted_once() {
        let b = block(Fleet::decls(), "Fleets.");
        assert!(
            b.attribute("machine").is_none(),
            "a block, not an attribute"
        );
        let nb = &b.blocks[0];
        assert_eq!(
            (nb.name.as_str(), nb.nesting, nb.min_items),
            ("machine", Nesting::List, 1)
        );
        assert_eq!(nb.block.description, "One machine.");
        assert_eq!(
            nb.block.attribute("port").unwrap().description,
            "Its SSH port. Default `22`."
        );

        let machine = |h: &str, p: Value| Value::object(&[("host", Value::string(h)), ("port", p)]);
        let config = Value::object(&[
            ("name", Value::string("f")),
            (
                "machine",
                Value::List(vec![
                    machine("a.internal", Value::Null),
                    machine("not a host", Value::int(70000)),
                ]),
            ),
        ]);
        let mut diags = Diagnostics::new();
        validate(Fleet::decls(), &config, &mut diags);
        let at: Vec<String> = diags
            .0
            .iter()
            .filter_map(|d| d.path.as_ref().map(ToString::to_string))
            .collect();
        assert_eq!(at, ["machine[1].host", "machine[1].port"]);

        let mut planned = config.clone();
        set_defaults(Fleet::decls(), &config, &mut planned);
        assert_eq!(
            planned.get("machine").as_list().unwrap()[0].get("port"),
            &Value::int(22)
        );
        planned.set(
            "machine",
            Value::List(vec![
                machine("a.internal", Value::Null),
                machine("b.internal", Value::int(2222)),
            ]),
        );
        let f = Fleet::decode(&planned).unwrap();
        let got: Vec<(String, u16)> = f
            .machine
            .0
            .iter()
            .map(|m| (m.host.clone(), m.port))
            .collect();
        assert_eq!(
            got,
            [("a.internal".into(), 22), ("b.internal".into(), 2222)]
        );
        assert_eq!(f.name, "f");
        let mut back = Value::Null;
        f.encode(&mut back);
        assert_eq!(
            back.get("machine").as_list().unwrap()[0].get("port"),
            &Value::int(22)
        );
    }

    crate::model! {
        /// A site with at most one gateway block.
        struct Site {
            name: String [required],
            gateway: Option<One<Machine>> [optional, doc("Its gateway.")],
        }
    }

    #[test]
    fn a_single_block_is_declared_checked_and_defaulted_once() {
        let b = block(Site::decls(), "Sites.");
        let nb = &b.blocks[0];
        assert_eq!((nb.name.as_str(), nb.nesting), ("gateway", Nesting::Single));
        assert_eq!(nb.block.description, "Its gateway.");

        let config = Value::object(&[
            ("name", Value::string("s")),
            (
                "gateway",
                Value::object(&[("host", Value::string("not a host")), ("port", Value::Null)]),
            ),
        ]);
        let mut diags = Diagnostics::new();
        validate(Site::decls(), &config, &mut diags);
        let at: Vec<String> = diags
            .0
            .iter()
            .filter_map(|d| d.path.as_ref().map(ToString::to_string))
            .collect();
        assert_eq!(at, ["gateway.host"]);

        let mut planned = config.clone();
        set_defaults(Site::decls(), &config, &mut planned);
        assert_eq!(planned.get("gateway").get("port"), &Value::int(22));
        let s = Site::decode(&planned).unwrap();
        assert_eq!(s.gateway.as_ref().map(|g| g.0.port), Some(22));

        let absent = Value::object(&[("name", Value::string("s")), ("gateway", Value::Null)]);
        let mut planned = absent.clone();
        set_defaults(Site::decls(), &absent, &mut planned);
        assert_eq!(planned, absent, "no block, no defaults");
        assert!(Site::decode(&absent).unwrap().gateway.is_none());
    }

    crate::model! {
        /// A block whose every attribute may be unset or not known yet.
        #[derive(Default)]
        struct Link {
            host: Known<String> [optional, check(Check::Host)],
            port: Known<crate::plugin::value::Number> [optional, check(Check::Port)],
        }
    }

    crate::model! {
        /// A configuration with an optional `link` block.
        struct Wiring {
            link: Known<One<Link>> [optional, doc("The link.")],
        }
    }

    #[test]
    fn a_block_of_known_fields_reads_its_known_attributes_while_others_are_unknown() {
        use crate::plugin::value::Number;
        let link = |host: Value| {
            Value::object(&[(
                "link",
                Value::object(&[("host", host), ("port", Value::int(70000))]),
            )])
        };
        let w = Wiring::decode(&link(Value::Unknown)).unwrap();
        let Known::Value(One(l)) = w.link else {
            panic!("the block is read")
        };
        assert!(l.host.is_unknown());
        assert_eq!(
            l.port.value(),
            Some(&Number::Int(70000)),
            "any number: the check reports it"
        );
        let w = Wiring::decode(&Value::object(&[("link", Value::Unknown)])).unwrap();
        assert!(w.link.is_unknown(), "a wholly unknown block stays unknown");
        let w = Wiring::decode(&Value::object(&[("link", Value::Null)])).unwrap();
        assert!(w.link.is_null());
        let empty = Link::default();
        assert!(empty.host.is_null() && empty.port.is_null());
        // A model that cannot hold an unknown: the whole block is unknown, as before.
        let v = Value::object(&[(
            "gateway",
            Value::object(&[("host", Value::Unknown), ("port", Value::int(22))]),
        )]);
        assert!(field::<Known<One<Machine>>>(&v, "gateway")
            .unwrap()
            .is_unknown());
    }

    #[test]
    fn a_default_the_description_states_is_not_added_again() {
        let d = Decl::new("root", Type::String)
            .default_in_doc("/".to_string())
            .doc("Prefix of the paths. Default `/`. Only tests change it.");
        let a = d.attribute();
        assert_eq!(
            a.description,
            "Prefix of the paths. Default `/`. Only tests change it."
        );
        assert!(a.optional && a.computed && !a.required);
        let config = Value::object(&[("root", Value::Null)]);
        let mut planned = config.clone();
        set_defaults(&[d], &config, &mut planned);
        assert_eq!(
            planned.get("root"),
            &Value::string("/"),
            "still the default"
        );
    }

    #[test]
    fn a_list_is_read_element_by_element_at_plan() {
        let machine = |h: Value| Value::object(&[("host", h), ("port", Value::Null)]);
        let config = Value::object(&[
            ("name", Value::string("f")),
            (
                "machine",
                Value::List(vec![
                    machine(Value::string("a.internal")),
                    machine(Value::Unknown),
                ]),
            ),
            (
                "tags",
                Value::List(vec![Value::string("a"), Value::Unknown, Value::Null]),
            ),
        ]);
        // The whole list is unknown to the plan view; element by element it is not.
        assert!(Fleet::decode(&config).err().unwrap().is_unknown());
        let hosts: Vec<Known<String>> = each_at_plan(&config, "machine", machine_host)
            .unwrap()
            .known()
            .unwrap();
        assert_eq!(
            hosts,
            [Known::Value("a.internal".to_string()), Known::Unknown]
        );
        let tags = each_at_plan(&config, "tags", element_at_plan::<String>("tags")).unwrap();
        assert_eq!(
            tags,
            Known::Value(vec![
                Known::Value("a".to_string()),
                Known::Unknown,
                Known::Null
            ])
        );
        let bad = Value::object(&[("tags", Value::List(vec![Value::Bool(true)]))]);
        assert!(matches!(
            each_at_plan(&bad, "tags", element_at_plan::<String>("tags")),
            Err(Undecoded::Invalid { name: "tags", .. })
        ));
        let unknown = Value::object(&[("tags", Value::Unknown), ("none", Value::Null)]);
        assert_eq!(
            each_at_plan(&unknown, "tags", element_at_plan::<String>("tags")),
            Ok(Known::Unknown)
        );
        assert_eq!(
            each_at_plan(&unknown, "none", element_at_plan::<String>("none")),
            Ok(Known::Null)
        );
        assert_eq!(
            each_at_plan(&unknown, "other", element_at_plan::<String>("other")),
            Err(Undecoded::NotInSchema("other"))
        );
    }

    /// A machine block's host as its plan view reads it.
    fn machine_host(b: &Value) -> Result<Known<String>, Undecoded> {
        field_at_plan(b, "host")
    }

    crate::model! {
        /// A model with a map of maybe-null values.
        struct Labelled {
            tags: Option<std::collections::BTreeMap<String, Option<String>>> [optional],
        }
    }

    #[test]
    fn a_map_element_may_be_null_when_its_type_holds_null() {
        let tags = Value::Map(
            [
                ("a".to_string(), Value::string("x")),
                ("b".to_string(), Value::Null),
            ]
            .into_iter()
            .collect(),
        );
        let t = Labelled::decode(&Value::object(&[("tags", tags)])).unwrap();
        let tags = t.tags.unwrap();
        assert_eq!(tags.get("a"), Some(&Some("x".to_string())));
        assert_eq!(tags.get("b"), Some(&None));
        let strict = Value::Map([("b".to_string(), Value::Null)].into_iter().collect());
        assert!(std::collections::BTreeMap::<String, String>::from_value(&strict).is_err());
    }

    #[test]
    fn a_name_the_object_does_not_have_fails_loudly() {
        let mut v = full();
        if let Value::Map(m) = &mut v {
            m.remove("port");
        }
        assert_eq!(
            Thing::decode(&v).err(),
            Some(Undecoded::NotInSchema("port"))
        );
        assert_eq!(
            Thing::decode(&Value::Null).err(),
            Some(Undecoded::NotAnObject)
        );
    }

    #[test]
    fn bounds_and_unknowns_are_told_apart() {
        let mut v = full();
        v.set("port", Value::int(70000));
        let e = Thing::decode(&v).err().unwrap();
        assert_eq!(
            e,
            Undecoded::Invalid {
                name: "port",
                why: "must be a whole number from 0 to 65535".into()
            }
        );
        let d = Diagnostics::from(e);
        assert_eq!(d.0[0].path, Some(AttrPath::root("port")));
        v.set("port", Value::int(6380));
        v.set("made", Value::Unknown);
        let t = Thing::decode(&v).unwrap();
        assert_eq!(
            t.made,
            Known::Unknown,
            "a computed value the apply sets may be unknown"
        );
        v.set("port", Value::Unknown);
        assert!(Thing::decode(&v).err().unwrap().is_unknown());
        let p = ThingAtPlan::decode(&v).unwrap();
        assert_eq!(p.port, Known::Unknown);
        assert_eq!(p.host, Known::Value("db.internal".to_string()));
        let mut back = Value::Null;
        p.encode(&mut back);
        assert_eq!(
            back, v,
            "the view writes back what it read, unknowns and all"
        );
        v.set("host", Value::Null);
        assert_eq!(ThingAtPlan::decode(&v).unwrap().host, Known::Null);
        assert_eq!(Thing::decode(&v).err(), Some(Undecoded::Null("host")));
    }

    #[test]
    fn defaults_checks_and_replacement_come_from_the_declaration() {
        let config = obj(&[
            ("host", Value::string("bad host!")),
            ("port", Value::Null),
            ("colour", Value::string("green")),
            ("note", Value::Null),
            ("token", Value::Null),
            ("made", Value::Null),
        ]);
        let mut diags = Diagnostics::new();
        validate(Thing::decls(), &config, &mut diags);
        let at: Vec<_> = diags.0.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            at,
            [Some(AttrPath::root("host")), Some(AttrPath::root("colour"))]
        );

        let mut planned = config.clone();
        set_defaults(Thing::decls(), &config, &mut planned);
        assert_eq!(planned.get("port"), &Value::int(6379));
        assert_eq!(
            planned.get("colour"),
            &Value::string("green"),
            "a set value stays"
        );

        let prior = full();
        let mut next = full();
        next.set("port", Value::int(1));
        assert!(replaced(Thing::decls(), &prior, &next).is_empty());
        next.set("colour", Value::string("red"));
        assert_eq!(
            replaced(Thing::decls(), &prior, &next),
            [AttrPath::root("colour")]
        );
    }
}
