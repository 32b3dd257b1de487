//! The repository's files as the packaging tests read them.

use std::path::Path;

use serde_yaml::Value;

pub fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn compose() -> Value {
    let mut compose: Value =
        serde_yaml::from_str(&repo_file("docker-compose.yml")).expect("valid YAML");
    compose.apply_merge().expect("merge keys resolve");
    compose
}

pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}
