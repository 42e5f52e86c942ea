//! docs/ is generated from the schema descriptions and examples/ (tfplugindocs needs Go,
//! so the project has its own small generator). `make docs` rewrites the files
//! (UPDATE_DOCS=1); otherwise this test fails when they are stale.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use terraform_provider_circleci::testing::CircleCiProvider;
use terraform_provider_circleci::testing::Provider;
use terraform_provider_circleci::testing::{Attribute, Block, Nesting, Type};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn type_name(t: &Type) -> String {
    match t {
        Type::String => "String".into(),
        Type::Number => "Number".into(),
        Type::Bool => "Boolean".into(),
        Type::Dynamic => "Dynamic".into(),
        Type::List(e) => format!("List of {}", type_name(e)),
        Type::Set(e) => format!("Set of {}", type_name(e)),
        Type::Map(e) => format!("Map of {}", type_name(e)),
        Type::Object(_) => "Object".into(),
    }
}

fn attr_line(a: &Attribute) -> String {
    let mut flags = vec![type_name(&a.ty)];
    if a.sensitive {
        flags.push("Sensitive".into());
    }
    if a.write_only {
        flags.push("Write-only".into());
    }
    if a.deprecated {
        flags.push("Deprecated".into());
    }
    format!("- `{}` ({}) {}\n", a.name, flags.join(", "), a.description)
}

/// The Required / Optional / Read-Only lists of one block, then its nested blocks.
fn block_md(out: &mut String, b: &Block, anchor_prefix: &str) {
    fn required(a: &Attribute) -> bool {
        a.required
    }
    fn optional(a: &Attribute) -> bool {
        a.optional
    }
    fn read_only(a: &Attribute) -> bool {
        a.computed && !a.optional && !a.required
    }
    type Pred = fn(&Attribute) -> bool;
    let groups: [(&str, Pred); 3] = [
        ("Required", required),
        ("Optional", optional),
        ("Read-Only", read_only),
    ];
    for (title, pred) in groups.iter() {
        let attrs: Vec<&Attribute> = b.attributes.iter().filter(|a| pred(a)).collect();
        let blocks: Vec<_> = if *title == "Optional" {
            b.blocks.iter().collect()
        } else {
            vec![]
        };
        if attrs.is_empty() && blocks.is_empty() {
            continue;
        }
        let _ = writeln!(out, "### {title}\n");
        for a in attrs {
            out.push_str(&attr_line(a));
        }
        for nb in &blocks {
            let kind = match nb.nesting {
                Nesting::Single | Nesting::Group => "Block",
                Nesting::List => "Block List",
                Nesting::Set => "Block Set",
            };
            let _ = writeln!(
                out,
                "- `{n}` ({kind}) {d} (see [below for nested schema](#{anchor_prefix}{n}))",
                n = nb.name,
                d = nb.block.description
            );
        }
        out.push('\n');
    }
    for nb in &b.blocks {
        let _ = writeln!(
            out,
            "<a id=\"{anchor_prefix}{}\"></a>\n### Nested Schema for `{}`\n",
            nb.name, nb.name
        );
        let mut inner = String::new();
        block_md(
            &mut inner,
            &nb.block,
            &format!("{anchor_prefix}{}--", nb.name),
        );
        out.push_str(&inner.replace("### ", "#### "));
    }
}

fn provider_doc() -> String {
    let p = CircleCiProvider::new();
    let schema = p.schema();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "---\npage_title: \"circleci Provider\"\ndescription: |-\n  {}\n---\n\n# circleci Provider\n\n{}\n",
        schema.block.description, schema.block.description
    );
    out.push_str("Resources:\n\n");
    let mut names: Vec<_> = p.resources().iter().map(|r| r.type_name()).collect();
    names.sort();
    for n in names {
        let short = n.trim_start_matches("circleci_");
        let _ = writeln!(out, "- [`{n}`](resources/{short}.md)");
    }
    let _ = writeln!(
        out,
        "\n## Example Usage\n\n```terraform\n{}```\n\n## Server versions\n\n{}\n## Schema\n",
        read("examples/provider/provider.tf"),
        read("examples/provider/COMPATIBILITY.md")
    );
    block_md(&mut out, &schema.block, "nestedblock--");
    out.trim_end().to_string() + "\n"
}

fn resource_doc(name: &str) -> String {
    let p = CircleCiProvider::new();
    let r = p
        .resources()
        .into_iter()
        .find(|r| r.type_name() == name)
        .unwrap();
    let schema = r.schema();
    let ex = format!("examples/resources/{name}");
    let mut out = String::new();
    let first_sentence = schema
        .block
        .description
        .split(". ")
        .next()
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "---\npage_title: \"{name} Resource - circleci\"\ndescription: |-\n  {first_sentence}.\n---\n\n# {name} (Resource)\n\n{}\n",
        schema.block.description
    );
    let _ = writeln!(
        out,
        "## Example Usage\n\n```terraform\n{}```\n\n## Schema\n",
        read(&format!("{ex}/resource.tf"))
    );
    block_md(&mut out, &schema.block, "nestedblock--");
    if Path::new(&root().join(format!("{ex}/import.sh"))).exists() {
        let _ = writeln!(
            out,
            "## Import\n\nImport is supported using the following syntax:\n\n```shell\n{}```",
            read(&format!("{ex}/import.sh"))
        );
    }
    out.trim_end().to_string() + "\n"
}

fn check_or_update(rel: &str, want: &str) -> Option<String> {
    let path = root().join(rel);
    if std::env::var("UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, want).unwrap();
        return None;
    }
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => None,
        _ => Some(rel.to_string()),
    }
}

#[test]
fn docs_are_up_to_date() {
    let p = CircleCiProvider::new();
    let mut stale = Vec::new();
    stale.extend(check_or_update("docs/index.md", &provider_doc()));
    for r in p.resources() {
        let name = r.type_name();
        let short = name.trim_start_matches("circleci_");
        // Every resource has its examples, named after it.
        assert!(
            root()
                .join(format!("examples/resources/{name}/resource.tf"))
                .exists(),
            "examples for {name}"
        );
        stale.extend(check_or_update(
            &format!("docs/resources/{short}.md"),
            &resource_doc(name),
        ));
    }
    assert!(
        stale.is_empty(),
        "stale docs: {stale:?}; run `make docs` and commit the result"
    );
}

#[test]
fn every_attribute_is_described() {
    let p = CircleCiProvider::new();
    fn walk(b: &Block, at: &str) {
        for a in &b.attributes {
            assert!(
                !a.description.is_empty(),
                "{at}.{} has no description",
                a.name
            );
        }
        for nb in &b.blocks {
            walk(&nb.block, &format!("{at}.{}", nb.name));
        }
    }
    walk(&p.schema().block, "provider");
    for r in p.resources() {
        walk(&r.schema().block, r.type_name());
    }
}

/// The README shows the same compatibility table as the docs, word for word.
#[test]
fn readme_has_the_compatibility_table() {
    let table = read("examples/provider/COMPATIBILITY.md");
    assert!(
        read("README.md").contains(table.trim()),
        "README.md must contain examples/provider/COMPATIBILITY.md"
    );
}
