//! The Docker packaging agrees with the code, checked statically (no Docker engine is
//! needed): every variable docker-compose.yml sets is one the service reads, ports and
//! health checks match `HTTP_ADDR`, start-up order waits for healthy dependencies, the
//! services can be scaled, the Dockerfile builds slim non-root images, and the Kubernetes
//! manifests of `deploy/k8s/` set only settings the services read, from Secrets where secret.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;
use e2e::{compose, repo_file, text};
use serde::Deserialize;
use serde_yaml::Value;

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
        build["target"].as_str(),
        Some(name),
        "{name} is built as itself"
    );
    assert!(
        dockerfile_stages().iter().any(|stage| stage.name == name),
        "the Dockerfile has a stage {name}"
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
fn shipping_service_in_compose_matches_the_code_and_waits_for_its_profile() {
    check_service(
        "shipping-service",
        shipping_service::Settings::command(),
        8082,
    );
    for name in ["shipping-service", "shipping-db"] {
        assert_eq!(
            compose()["services"][name]["profiles"][0].as_str(),
            Some("shipping"),
            "{name} starts only with --profile shipping"
        );
    }
}

#[test]
fn payment_replicas_are_payment_service_unpublished_and_off_by_default() {
    let compose = compose();
    let (first, replica) = (
        &compose["services"]["payment-service"],
        &compose["services"]["payment-replica"],
    );
    for key in ["build", "environment", "depends_on", "healthcheck"] {
        assert_eq!(first[key], replica[key], "payment-replica's {key}");
    }
    assert_eq!(
        first["ports"].as_sequence().map(Vec::len),
        Some(1),
        "one fixed host port: the walkthrough's localhost:8081"
    );
    assert!(
        !text(&first["ports"][0]).contains('-'),
        "no port range: the engine could pick any port of it"
    );
    assert_eq!(replica["ports"].as_sequence().map(Vec::len), Some(0));
    assert_eq!(replica["scale"].as_u64(), Some(0), "none unless scaled");
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

/// A stage of the Dockerfile: `FROM <from> AS <name>` and its lines.
struct Stage {
    from: String,
    name: String,
    body: String,
}

fn dockerfile_stages() -> Vec<Stage> {
    let dockerfile = repo_file("Dockerfile");
    dockerfile
        .split("\nFROM ")
        .skip(1)
        .map(|stage| {
            let (header, body) = stage.split_once('\n').unwrap_or((stage, ""));
            let mut words = header.split_whitespace();
            let from = words.next().unwrap_or_default().to_owned();
            let name = words.nth(1).unwrap_or_default().to_owned();
            Stage {
                from,
                name,
                body: body.to_owned(),
            }
        })
        .collect()
}

#[test]
fn the_dockerfile_builds_slim_non_root_images_from_one_builder() {
    let stages = dockerfile_stages();
    let dockerfile = repo_file("Dockerfile");
    assert!(
        dockerfile.contains("cargo chef cook"),
        "dependencies are cached in their own layer"
    );
    let builds: Vec<&Stage> = stages
        .iter()
        .filter(|s| s.body.contains("cargo build"))
        .collect();
    assert_eq!(builds.len(), 1, "one builder stage builds both services");
    let selection = "--package order-service --package payment-service";
    assert!(
        builds[0].body.contains(selection),
        "both services, selected as the cook selects them (features differ otherwise)"
    );
    assert!(
        dockerfile.contains(&format!("--recipe-path recipe.json \\\n    {selection}")),
        "the cook selects the same packages"
    );
    for service in ["order-service", "payment-service"] {
        // The stage and the stages it is built FROM, down to a base image.
        let mut chain = vec![];
        let mut name = service;
        while let Some(stage) = stages.iter().find(|s| s.name == name) {
            chain.push(stage);
            name = &stage.from;
        }
        assert!(chain.len() >= 2, "{service} is a stage on a runtime stage");
        let base = &chain.last().expect("a base").from;
        assert!(base.contains("-slim"), "{service} is slim: {base}");
        for stage in &chain {
            assert!(
                !stage.from.contains("rust:") && !stage.body.contains("cargo "),
                "no build tools in {service}"
            );
        }
        let user = chain
            .iter()
            .find_map(|s| s.body.lines().find_map(|l| l.strip_prefix("USER ")))
            .expect("a USER");
        assert!(
            user != "root" && user != "0",
            "{service} runs as a non-root user"
        );
        let entrypoint = chain[0]
            .body
            .lines()
            .find_map(|l| l.strip_prefix("ENTRYPOINT "))
            .expect("an ENTRYPOINT");
        assert!(entrypoint.contains(service), "{service} runs {entrypoint}");
    }
    let dockerignore = repo_file(".dockerignore");
    assert!(
        dockerignore.lines().any(|l| l.trim() == "target/"),
        "target/ stays out of the build context"
    );
}

/// The Kubernetes manifests of `deploy/k8s/`, every document of every file.
fn k8s_documents() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s");
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/k8s exists") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        for document in serde_yaml::Deserializer::from_str(&text) {
            documents.push(Value::deserialize(document).expect("valid YAML"));
        }
    }
    documents
}

fn k8s_deployment(name: &str) -> Value {
    k8s_documents()
        .into_iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("a Deployment {name} in deploy/k8s"))
}

fn check_k8s_deployment(name: &str, command: clap::Command, port: u16) {
    let deployment = k8s_deployment(name);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let read = variables_read(command);
    let env = container["env"].as_sequence().expect("env");
    let mut given = BTreeSet::new();
    for variable in env {
        let key = text(&variable["name"]);
        assert!(
            read.contains(&key),
            "{name} is given {key}, which it does not read"
        );
        given.insert(key);
    }
    for key in ["DATABASE_URL", "REDIS_URL", "ADMIN_TOKEN"] {
        let from = &env.iter().find(|v| v["name"] == key).expect(key)["valueFrom"];
        assert!(
            from["secretKeyRef"].is_mapping(),
            "{name}'s {key} comes from a Secret"
        );
    }
    let consumer = &env
        .iter()
        .find(|v| v["name"] == "CONSUMER_NAME")
        .expect("CONSUMER_NAME")["valueFrom"]["fieldRef"]["fieldPath"];
    assert_eq!(text(consumer), "metadata.name", "one consumer name per pod");
    let shutdown_ms: u64 = env
        .iter()
        .find(|v| v["name"] == "SHUTDOWN_TIMEOUT_MS")
        .map(|v| text(&v["value"]).parse().expect("a number"))
        .expect("SHUTDOWN_TIMEOUT_MS");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    assert!(
        grace * 1000 > shutdown_ms,
        "{name}: grace {grace} s <= shutdown {shutdown_ms} ms"
    );
    let http_addr = env
        .iter()
        .find(|v| v["name"] == "HTTP_ADDR")
        .expect("HTTP_ADDR");
    assert!(text(&http_addr["value"]).ends_with(&format!(":{port}")));
    assert_eq!(
        container["ports"][0]["containerPort"].as_u64(),
        Some(u64::from(port))
    );
    assert_eq!(
        text(&container["readinessProbe"]["httpGet"]["path"]),
        "/health/ready"
    );
    assert_eq!(
        text(&container["livenessProbe"]["httpGet"]["path"]),
        "/health/live"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    for bound in ["requests", "limits"] {
        assert!(
            container["resources"][bound]["memory"].is_string(),
            "{name} {bound}"
        );
    }
    let has = |kind: &str| {
        k8s_documents()
            .iter()
            .any(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    };
    assert!(
        has("Service") && has("PodDisruptionBudget") && has("Secret"),
        "{name}"
    );
}

#[test]
fn order_service_on_kubernetes_matches_the_code() {
    check_k8s_deployment("order-service", order_service::Settings::command(), 8080);
}

#[test]
fn payment_service_on_kubernetes_matches_the_code() {
    check_k8s_deployment(
        "payment-service",
        payment_service::Settings::command(),
        8081,
    );
}

#[test]
fn payment_service_scales_on_its_group_lag_on_order_events() {
    let scaled = k8s_documents()
        .into_iter()
        .find(|d| d["kind"] == "ScaledObject")
        .expect("a KEDA ScaledObject");
    assert_eq!(
        text(&scaled["spec"]["scaleTargetRef"]["name"]),
        "payment-service"
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(text(&trigger["type"]), "redis-streams");
    assert_eq!(
        text(&trigger["metadata"]["stream"]),
        events::streams::ORDER_EVENTS
    );
    assert_eq!(
        text(&trigger["metadata"]["consumerGroup"]),
        events::streams::PAYMENT_SERVICE_GROUP
    );
    assert!(trigger["metadata"]["lagCount"].is_string());
    for secret in k8s_documents().iter().filter(|d| d["kind"] == "Secret") {
        for value in secret["stringData"]
            .as_mapping()
            .expect("stringData")
            .values()
        {
            let value = text(value);
            assert!(
                value.contains("CHANGE-ME") || value == "keda",
                "placeholders only: {value}"
            );
        }
    }
}
