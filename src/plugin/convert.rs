//! Between the protocol's messages and our types: schemas, attribute paths,
//! diagnostics, dynamic values, and write-only attributes.

use super::diag::{AttrPath, Diagnostic, Diagnostics, Severity, Step};
use super::resource::ClientInfo;
use super::schema::{Attribute, Block, NestedBlock, Nesting, Schema};
use super::tfplugin6 as pb;
use super::value::Value;

pub(super) fn attr_to_pb(a: &Attribute) -> pb::schema::Attribute {
    pb::schema::Attribute {
        name: a.name.clone(),
        r#type: serde_json::to_vec(&a.ty.to_json()).unwrap_or_default(),
        nested_type: None,
        description: a.description.clone(),
        required: a.required,
        optional: a.optional,
        computed: a.computed,
        sensitive: a.sensitive,
        description_kind: pb::StringKind::Markdown as i32,
        deprecated: a.deprecated,
        write_only: a.write_only,
    }
}

pub(super) fn block_to_pb(b: &Block, version: i64) -> pb::schema::Block {
    pb::schema::Block {
        version,
        attributes: b.attributes.iter().map(attr_to_pb).collect(),
        block_types: b.blocks.iter().map(nested_to_pb).collect(),
        description: b.description.clone(),
        description_kind: pb::StringKind::Markdown as i32,
        deprecated: b.deprecated,
    }
}

pub(super) fn nested_to_pb(n: &NestedBlock) -> pb::schema::NestedBlock {
    use pb::schema::nested_block::NestingMode;
    let nesting = match n.nesting {
        Nesting::Single => NestingMode::Single,
        Nesting::List => NestingMode::List,
        Nesting::Set => NestingMode::Set,
        Nesting::Group => NestingMode::Group,
    };
    pb::schema::NestedBlock {
        type_name: n.name.clone(),
        block: Some(block_to_pb(&n.block, 0)),
        nesting: nesting as i32,
        min_items: n.min_items,
        max_items: n.max_items,
    }
}

pub(super) fn schema_to_pb(s: &Schema) -> pb::Schema {
    pb::Schema {
        version: s.version,
        block: Some(block_to_pb(&s.block, s.version)),
    }
}

pub(super) fn path_to_pb(p: &AttrPath) -> pb::AttributePath {
    use pb::attribute_path::step::Selector;
    pb::AttributePath {
        steps: p
            .0
            .iter()
            .map(|s| pb::attribute_path::Step {
                selector: Some(match s {
                    Step::Attr(a) => Selector::AttributeName(a.clone()),
                    Step::Key(k) => Selector::ElementKeyString(k.clone()),
                    Step::Index(i) => Selector::ElementKeyInt(*i),
                }),
            })
            .collect(),
    }
}

/// How many leading steps of `path` come before a sensitive or write-only attribute of
/// `block`; None when the path names no such attribute.
fn secret_step(block: &Block, path: &AttrPath) -> Option<usize> {
    let mut block = block;
    for (i, step) in path.0.iter().enumerate() {
        // Index and key steps select an element of the nested block just passed.
        let Step::Attr(name) = step else { continue };
        if let Some(a) = block.attributes.iter().find(|a| &a.name == name) {
            return (a.sensitive || a.write_only).then_some(i);
        }
        block = &block.blocks.iter().find(|b| &b.name == name)?.block;
    }
    None
}

/// Diagnostics for a response about `block` (the provider's or a resource's schema).
/// Terraform prints the source line of the attribute a diagnostic is attached to, so a
/// diagnostic on a sensitive or write-only attribute would print its literal value:
/// such a diagnostic is attached to the enclosing block instead (the resource itself
/// at the top), and its detail names the attribute.
pub(super) fn diags_to_pb_shielded(d: &Diagnostics, block: &Block) -> Vec<pb::Diagnostic> {
    let mut d = d.clone();
    for x in &mut d.0 {
        let Some(path) = &x.path else { continue };
        let Some(keep) = secret_step(block, path) else {
            continue;
        };
        let whole = path.to_string();
        x.detail = format!(
            "{} (This is about {whole}, which is sensitive: Terraform would print its line, \
             so this message points at the enclosing block.)",
            x.detail.trim_end()
        );
        x.path = (keep > 0).then(|| AttrPath(path.0[..keep].to_vec()));
    }
    diags_to_pb(&d)
}

pub(super) fn diags_to_pb(d: &Diagnostics) -> Vec<pb::Diagnostic> {
    d.0.iter()
        .map(|d| pb::Diagnostic {
            severity: match d.severity {
                Severity::Error => pb::diagnostic::Severity::Error as i32,
                Severity::Warning => pb::diagnostic::Severity::Warning as i32,
            },
            summary: d.summary.clone(),
            detail: d.detail.clone(),
            attribute: d.path.as_ref().map(path_to_pb),
        })
        .collect()
}

pub(super) fn decode(dv: &Option<pb::DynamicValue>, what: &str) -> Result<Value, Diagnostics> {
    let Some(dv) = dv else { return Ok(Value::Null) };
    let r = if !dv.msgpack.is_empty() {
        Value::from_msgpack(&dv.msgpack)
    } else if !dv.json.is_empty() {
        Value::from_json(&dv.json)
    } else {
        Ok(Value::Null)
    };
    r.map_err(|e| Diagnostic::error(format!("Could not decode the {what}"), e.to_string()).into())
}

pub(super) fn encode(v: &Value) -> Option<pb::DynamicValue> {
    Some(pb::DynamicValue {
        msgpack: v.to_msgpack(),
        json: Vec::new(),
    })
}

/// Nulls every write-only attribute of `block` in `v` (top level and nested blocks).
pub(super) fn null_write_only(v: &mut Value, block: &Block) {
    let Value::Map(m) = v else { return };
    for a in &block.attributes {
        if a.write_only {
            m.insert(a.name.clone(), Value::Null);
        }
    }
    for b in &block.blocks {
        match m.get_mut(&b.name) {
            Some(Value::List(items)) => items.iter_mut().for_each(|i| null_write_only(i, &b.block)),
            Some(inner @ Value::Map(_)) => null_write_only(inner, &b.block),
            _ => {}
        }
    }
}

/// Checks that write-only attributes are used only where Terraform supports them.
pub(super) fn check_write_only(
    config: &Value,
    block: &Block,
    client: &ClientInfo,
    diags: &mut Diagnostics,
) {
    for a in block.attributes.iter().filter(|a| a.write_only) {
        if !config.get(&a.name).is_null() && !client.write_only_allowed {
            diags.attr_error(
                AttrPath::root(&a.name),
                "Write-only attribute not supported by this Terraform",
                format!(
                    "{} is write-only, which needs Terraform 1.11 or later; this Terraform is {}. \
                     Use the sensitive (stored in state) alternative instead.",
                    a.name,
                    if client.terraform_version.is_empty() {
                        "older"
                    } else {
                        &client.terraform_version
                    }
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::schema::Type;

    #[test]
    fn diagnostics_on_secrets_point_at_the_enclosing_block() {
        let inner = Block::new()
            .attr(Attribute::new("host", Type::String).optional())
            .attr(Attribute::new("uri", Type::String).optional().sensitive());
        let block = Block::new()
            .attr(
                Attribute::new("password_wo", Type::String)
                    .optional()
                    .write_only(),
            )
            .attr(Attribute::new("name", Type::String).optional())
            .block(NestedBlock::new("mongodb", Nesting::List, inner));
        let d = Diagnostics(vec![
            Diagnostic::error("a", "x").at(AttrPath::root("password_wo")),
            Diagnostic::warning("b", "y").at(AttrPath::root("mongodb").index(0).attr("uri")),
            Diagnostic::error("c", "z").at(AttrPath::root("mongodb").index(0).attr("host")),
            Diagnostic::error("d", "w").at(AttrPath::root("name")),
        ]);
        let pb = diags_to_pb_shielded(&d, &block);
        assert_eq!(pb[0].attribute, None);
        assert!(
            pb[0].detail.contains("about password_wo"),
            "{}",
            pb[0].detail
        );
        assert_eq!(
            pb[1].attribute,
            Some(path_to_pb(&AttrPath::root("mongodb").index(0)))
        );
        assert!(pb[1].detail.contains("mongodb[0].uri"), "{}", pb[1].detail);
        assert_eq!(pb[2], diags_to_pb(&d)[2]);
        assert_eq!(pb[3], diags_to_pb(&d)[3]);
    }
}
