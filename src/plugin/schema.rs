//! Schemas as resources declare them, independent of the protobuf types.

/// A Terraform type constraint.
#[derive(Clone, Debug, PartialEq)]
pub enum Type {
    /// A string.
    String,
    /// A number.
    Number,
    /// A boolean.
    Bool,
    /// A list of one element type.
    List(Box<Type>),
    /// A set of one element type.
    Set(Box<Type>),
    /// A map from strings to one element type.
    Map(Box<Type>),
    /// An object with these attributes.
    Object(Vec<(String, Type)>),
    /// Any type, decided by the value.
    Dynamic,
}

impl Type {
    /// A list of `t`.
    pub fn list(t: Type) -> Type {
        Type::List(Box::new(t))
    }

    /// A set of `t`.
    pub fn set(t: Type) -> Type {
        Type::Set(Box::new(t))
    }

    /// A map of `t`.
    pub fn map(t: Type) -> Type {
        Type::Map(Box::new(t))
    }

    /// The compact JSON form Terraform expects in `Schema.Attribute.type`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Type::String => json!("string"),
            Type::Number => json!("number"),
            Type::Bool => json!("bool"),
            Type::Dynamic => json!("dynamic"),
            Type::List(t) => json!(["list", t.to_json()]),
            Type::Set(t) => json!(["set", t.to_json()]),
            Type::Map(t) => json!(["map", t.to_json()]),
            Type::Object(attrs) => {
                let m: serde_json::Map<String, serde_json::Value> = attrs
                    .iter()
                    .map(|(k, t)| (k.clone(), t.to_json()))
                    .collect();
                json!(["object", m])
            }
        }
    }
}

/// One attribute of a block, as the schema tells Terraform.
#[derive(Clone, Debug)]
pub struct Attribute {
    /// Its name in the configuration.
    pub name: String,
    /// Its type.
    pub ty: Type,
    /// Markdown.
    pub description: String,
    /// The configuration must set it.
    pub required: bool,
    /// The configuration may set it.
    pub optional: bool,
    /// The provider may set it (with `optional`: when the configuration does not).
    pub computed: bool,
    /// Terraform hides its value in plans and output.
    pub sensitive: bool,
    /// Terraform passes it to the provider and stores it nowhere (Terraform 1.11+).
    pub write_only: bool,
    /// Terraform warns when a configuration sets it.
    pub deprecated: bool,
}

impl Attribute {
    /// An attribute named `name` of type `ty`, with no flag set.
    pub fn new(name: &str, ty: Type) -> Self {
        Attribute {
            name: name.to_string(),
            ty,
            description: String::new(),
            required: false,
            optional: false,
            computed: false,
            sensitive: false,
            write_only: false,
            deprecated: false,
        }
    }

    /// Sets `required`.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Sets `optional`.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// Sets `computed`.
    pub fn computed(mut self) -> Self {
        self.computed = true;
        self
    }

    /// Sets `sensitive`.
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    /// In the configuration only: never in plan or state (protocol 6.8, Terraform 1.11+).
    pub fn write_only(mut self) -> Self {
        self.write_only = true;
        self
    }

    /// Sets `deprecated`.
    pub fn deprecated(mut self) -> Self {
        self.deprecated = true;
        self
    }

    /// Sets the Markdown description.
    pub fn description(mut self, md: &str) -> Self {
        self.description = md.to_string();
        self
    }
}

/// How a nested block repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nesting {
    /// At most one block.
    Single,
    /// An ordered list of blocks.
    List,
    /// A set of blocks.
    Set,
    /// Exactly one block, its attributes set or not one by one.
    Group,
}

#[derive(Clone, Debug)]
pub struct NestedBlock {
    pub name: String,
    pub nesting: Nesting,
    pub block: Block,
    pub min_items: i64,
    pub max_items: i64,
}

impl NestedBlock {
    pub fn new(name: &str, nesting: Nesting, block: Block) -> Self {
        NestedBlock {
            name: name.to_string(),
            nesting,
            block,
            min_items: 0,
            max_items: 0,
        }
    }

    pub fn items(mut self, min: i64, max: i64) -> Self {
        self.min_items = min;
        self.max_items = max;
        self
    }
}

/// A block's attributes and nested blocks.
#[derive(Clone, Debug, Default)]
pub struct Block {
    /// Its attributes.
    pub attributes: Vec<Attribute>,
    /// Its nested blocks.
    pub blocks: Vec<NestedBlock>,
    /// Markdown.
    pub description: String,
    /// Terraform warns when a configuration uses it.
    pub deprecated: bool,
}

impl Block {
    /// An empty block.
    pub fn new() -> Self {
        Block::default()
    }

    /// Adds an attribute.
    pub fn attr(mut self, a: Attribute) -> Self {
        self.attributes.push(a);
        self
    }

    /// Adds a nested block.
    pub fn block(mut self, b: NestedBlock) -> Self {
        self.blocks.push(b);
        self
    }

    /// Sets the Markdown description.
    pub fn description(mut self, md: &str) -> Self {
        self.description = md.to_string();
        self
    }

    /// The attribute named `name`.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Schema {
    pub version: i64,
    pub block: Block,
}

impl Schema {
    pub fn new(version: i64, block: Block) -> Self {
        Schema { version, block }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_json_is_compact() {
        let t = Type::Object(vec![("a".into(), Type::map(Type::list(Type::String)))]);
        assert_eq!(
            serde_json::to_string(&t.to_json()).unwrap(),
            r#"["object",{"a":["map",["list","string"]]}]"#
        );
    }
}
