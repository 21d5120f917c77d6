//! docker-compose.yml cannot run here (no Docker engine), so this keeps it honest by reading
//! it: every service it names, every file it mounts or builds from, the schema.yaml it serves,
//! the Prometheus target, the Grafana dashboard's metrics (they must exist in /metrics), and
//! the demo SQL (run against a real PostgreSQL, Materialize-only clauses aside).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml::Value;

fn compose() -> Value {
    serde_yaml::from_str(
        &std::fs::read_to_string("docker-compose.yml").expect("docker-compose.yml"),
    )
    .expect("docker-compose.yml is YAML")
}

fn services(compose: &Value) -> &serde_yaml::Mapping {
    compose["services"].as_mapping().expect("services")
}

#[test]
fn every_service_file_and_dependency_exists() {
    let compose = compose();
    let services = services(&compose);
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for wanted in [
        "materialize",
        "postgres",
        "setup",
        "loader",
        "viewcast",
        "prometheus",
        "grafana",
    ] {
        assert!(
            names.contains(wanted),
            "service {wanted} is missing: {names:?}"
        );
    }
    for (name, service) in services {
        let name = name.as_str().unwrap();
        assert!(
            service.get("image").is_some() || service.get("build").is_some(),
            "{name} has neither image nor build"
        );
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with("./") {
                assert!(
                    Path::new(host).exists(),
                    "{name} mounts {host}, which does not exist"
                );
            }
        }
        if let Some(build) = service.get("build") {
            let context = build["context"].as_str().unwrap_or(".");
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(
                Path::new(context).join(dockerfile).is_file(),
                "{name}: no {dockerfile}"
            );
        }
        match &service["depends_on"] {
            Value::Mapping(deps) => {
                for (dep, spec) in deps {
                    let dep = dep.as_str().unwrap();
                    assert!(names.contains(dep), "{name} depends on unknown {dep}");
                    let condition = spec["condition"].as_str().unwrap_or("service_started");
                    assert!(
                        [
                            "service_started",
                            "service_healthy",
                            "service_completed_successfully"
                        ]
                        .contains(&condition),
                        "{name}: unknown condition {condition}"
                    );
                    if condition == "service_healthy" {
                        assert!(
                            services[dep].get("healthcheck").is_some(),
                            "{name} waits for {dep} to be healthy, but it has no healthcheck"
                        );
                    }
                }
            }
            Value::Sequence(deps) => {
                for dep in deps {
                    assert!(
                        names.contains(dep.as_str().unwrap()),
                        "{name}: unknown {dep:?}"
                    );
                }
            }
            _ => {}
        }
    }
    // Files the containers read by their in-container path.
    for file in ["docker/materialize/setup.sql", "docker/materialize/load.sh"] {
        assert!(Path::new(file).is_file(), "{file}");
    }
}

#[test]
fn the_served_schema_is_valid_and_prometheus_scrapes_the_server() {
    let compose = compose();
    let viewcast = &services(&compose)["viewcast"];
    let config_path = viewcast["environment"]["VIEWCAST_CONFIG"].as_str().unwrap();
    let mount = viewcast["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|v| v.split(':').nth(1) == Some(config_path))
        .expect("the config is mounted where VIEWCAST_CONFIG points");
    let config = viewcast::config::load(Path::new(mount.split(':').next().unwrap()))
        .expect("the served schema.yaml is valid");
    assert!(
        viewcast["environment"]["MATERIALIZE_URL"]
            .as_str()
            .unwrap()
            .contains("materialize:6875")
    );
    assert!(
        viewcast["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p.as_str() == Some("4000:4000"))
    );
    assert!(config.source("live_pnl").is_some());

    let prometheus: Value =
        serde_yaml::from_str(&std::fs::read_to_string("docker/prometheus/prometheus.yml").unwrap())
            .unwrap();
    let targets = &prometheus["scrape_configs"][0]["static_configs"][0]["targets"];
    assert_eq!(targets[0].as_str(), Some("viewcast:4000"));
    assert_eq!(
        prometheus["scrape_configs"][0]["metrics_path"].as_str(),
        Some("/metrics")
    );
}

#[test]
fn the_dashboard_uses_only_metrics_the_server_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("docker/grafana/dashboards/viewcast.json").unwrap(),
    )
    .expect("the dashboard is JSON");
    let metrics = viewcast::telemetry::Metrics::default();
    metrics.source("s");
    let exported = metrics.render();
    let name = regex::Regex::new(r"viewcast_[a-z_]+").unwrap();
    let mut used = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for m in name.find_iter(expr) {
                let metric = m.as_str();
                assert!(
                    exported.contains(&format!("# TYPE {} ", metric.trim_end_matches("_bucket"))),
                    "the dashboard queries {metric}, which /metrics does not export"
                );
                used += 1;
            }
        }
    }
    assert!(used > 10, "{used}");
    // Grafana finds it where the provisioning points.
    let provisioning =
        std::fs::read_to_string("docker/grafana/provisioning/dashboards/viewcast.yml").unwrap();
    assert!(provisioning.contains("/var/lib/grafana/dashboards"));
}

#[tokio::test]
async fn the_demo_sql_runs_and_its_view_has_the_served_columns() {
    let db = common::TestDb::new().await;
    let sql = db.client().await;
    // Materialize-only: history retention. The rest is standard SQL.
    let setup: String = std::fs::read_to_string("docker/materialize/setup.sql")
        .unwrap()
        .lines()
        .filter(|l| !l.contains("RETAIN HISTORY"))
        .collect::<Vec<_>>()
        .join("\n");
    sql.batch_execute(&setup).await.expect("setup.sql");
    // One tick and one trade, as load.sh writes them.
    sql.batch_execute(
        "UPDATE prices SET price = greatest(1, price + 0.05), updated_at = now() WHERE instrument_id = 1; \
         INSERT INTO trades SELECT 1, 1, 'buy', 3000, price, now() FROM prices WHERE instrument_id = 1",
    )
    .await
    .expect("load.sh's statements");
    // PostgreSQL's materialized views are snapshots; Materialize maintains them.
    sql.batch_execute("REFRESH MATERIALIZED VIEW live_pnl")
        .await
        .unwrap();
    let rows = sql
        .query("SELECT * FROM live_pnl ORDER BY instrument_id", &[])
        .await
        .expect("live_pnl");
    assert_eq!(rows.len(), 3);
    let columns: Vec<&str> = rows[0]
        .columns()
        .iter()
        .map(tokio_postgres::Column::name)
        .collect();
    let config = viewcast::config::load(Path::new("docker/viewcast/schema.yaml")).unwrap();
    let served: Vec<&str> = config
        .source("live_pnl")
        .unwrap()
        .columns
        .iter()
        .map(|c| c.sql_name.as_str())
        .collect();
    assert_eq!(columns, served, "schema.yaml serves the view's columns");
    let position: i64 = rows[0].get("net_position");
    assert_eq!(position, 3000);
    db.stop().await;
}
