//! The Docker packaging agrees with the code, checked statically (no Docker engine is
//! needed): every variable docker-compose.yml sets is one the service reads, ports and
//! health checks match `HTTP_ADDR`, start-up order waits for healthy dependencies, the
//! services can be scaled, and the Dockerfile builds a slim non-root image.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;
use serde_yaml::Value;

pub(crate) fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn compose() -> Value {
    let mut compose: Value =
        serde_yaml::from_str(&repo_file("docker-compose.yml")).expect("valid YAML");
    compose.apply_merge().expect("merge keys resolve");
    compose
}

/// Environment variables a service reads: its settings, plus what tracing reads.
fn variables_read(command: clap::Command) -> BTreeSet<String> {
    let mut read: BTreeSet<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    read.insert("RUST_LOG".to_owned());
    read
}

pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn check_service(name: &str, command: clap::Command, default_port: u16) {
    let compose = compose();
    let service = &compose["services"][name];
    assert!(service.is_mapping(), "{name} is in docker-compose.yml");
    assert!(
        service.get("container_name").is_none(),
        "{name} has no fixed container_name, so it scales"
    );

    let environment = service["environment"]
        .as_mapping()
        .expect("an environment map");
    let read = variables_read(command);
    for key in environment.keys() {
        let key = text(key);
        assert!(
            read.contains(&key),
            "{name} is given {key}, which it does not read (it reads {read:?})"
        );
    }
    let required = ["DATABASE_URL", "REDIS_URL", "HTTP_ADDR"];
    for key in required {
        assert!(environment.contains_key(key), "{name} needs {key}");
    }

    let http_addr = text(&environment["HTTP_ADDR"]);
    let port: u16 = http_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("HTTP_ADDR has a port");
    assert_eq!(port, default_port, "{name} listens where its default says");
    let published = service["ports"][0].as_str().expect("a published port");
    assert!(
        published.ends_with(&format!(":{port}")),
        "{name} publishes {published}, but listens on {port}"
    );

    let health: Vec<String> = service["healthcheck"]["test"]
        .as_sequence()
        .expect("a health check")
        .iter()
        .map(text)
        .collect();
    let health = health.join(" ");
    assert!(
        health.contains(&format!("127.0.0.1:{port}/health/ready")),
        "{name} health check: {health}"
    );

    let depends = service["depends_on"].as_mapping().expect("depends_on");
    for url_key in ["DATABASE_URL", "REDIS_URL"] {
        let url = text(&environment[url_key]);
        let host = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.rsplit('@').next())
            .and_then(|h| h.split([':', '/']).next())
            .expect("a host");
        assert!(
            compose["services"][host].is_mapping(),
            "{name}'s {url_key} names {host}, which is not a service"
        );
        assert_eq!(
            depends[host]["condition"].as_str(),
            Some("service_healthy"),
            "{name} waits for {host} to be healthy"
        );
        assert!(
            compose["services"][host]["healthcheck"].is_mapping(),
            "{host} has a health check"
        );
    }
    let build = &service["build"];
    assert_eq!(
        build["args"]["SERVICE"].as_str(),
        Some(name),
        "{name} is built as itself"
    );
}

#[test]
fn order_service_in_compose_matches_the_code() {
    check_service("order-service", order_service::Settings::command(), 8080);
}

#[test]
fn payment_service_in_compose_matches_the_code() {
    check_service(
        "payment-service",
        payment_service::Settings::command(),
        8081,
    );
}

#[test]
fn nothing_is_published_beyond_the_loopback_and_no_secret_is_shipped() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    for (name, service) in services {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = text(port);
            assert!(
                port.starts_with("127.0.0.1:"),
                "{} publishes {port} on every interface",
                text(name)
            );
        }
        let token = &service["environment"]["ADMIN_TOKEN"];
        if !token.is_null() {
            assert_eq!(
                text(token),
                "${ADMIN_TOKEN:-}",
                "{}: the admin token comes from the user, none is shipped",
                text(name)
            );
        }
    }
}

#[test]
fn backing_services_are_the_supported_versions_and_redis_persists() {
    let compose = compose();
    let image = |service: &str| {
        compose["services"][service]["image"]
            .as_str()
            .expect("an image")
            .to_owned()
    };
    let major = |image: &str| -> u32 {
        image
            .split(':')
            .nth(1)
            .and_then(|tag| tag.split(['.', '-']).next())
            .and_then(|m| m.parse().ok())
            .expect("a pinned tag")
    };
    assert!(major(&image("redis")) >= 7, "Redis 7+ (XAUTOCLAIM)");
    for db in ["orders-db", "payments-db"] {
        assert!(major(&image(db)) >= 15, "Postgres 15+");
    }
    let command: Vec<String> = compose["services"]["redis"]["command"]
        .as_sequence()
        .expect("a command")
        .iter()
        .map(text)
        .collect();
    assert!(
        command.windows(2).any(|w| w == ["--appendonly", "yes"]),
        "the demo's Redis persists: {command:?}"
    );
    assert_ne!(
        compose["services"]["orders-db"]["environment"]["POSTGRES_DB"],
        compose["services"]["payments-db"]["environment"]["POSTGRES_DB"],
        "each service has its own database"
    );
}

#[test]
fn the_dockerfile_builds_a_slim_non_root_image() {
    let dockerfile = repo_file("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 3, "multi-stage: {stages:?}");
    assert!(
        dockerfile.contains("cargo chef cook"),
        "dependencies are cached in their own layer"
    );
    let runtime = dockerfile.rsplit("\nFROM ").next().expect("a final stage");
    assert!(
        runtime.contains("-slim"),
        "the final image is slim: {runtime}"
    );
    assert!(
        !runtime.contains("rust:") && !runtime.contains("cargo "),
        "no build tools in the final image"
    );
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(user != "root" && user != "0", "runs as a non-root user");
    let dockerignore = repo_file(".dockerignore");
    assert!(
        dockerignore.lines().any(|l| l.trim() == "target/"),
        "target/ stays out of the build context"
    );
}
