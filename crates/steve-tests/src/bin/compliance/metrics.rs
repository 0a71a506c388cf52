//! The metrics against the status: with tokens held (and, where the server sees them, a
//! request waiting and a write refused), `steve metrics`, the `--metrics-listen` Unix socket
//! (Prometheus text) and its loopback TCP port (OpenMetrics, asked for with `Accept`) are parsed
//! by `prometheus_client`'s parsers (from PyPI, in the test venv: `STEVE_TEST_PYTHON`), and each
//! figure must equal the one `steve status --json` gives at the same moment: a status read before
//! and after the metrics, the two identical (else the sampling is tried again).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{ensure, env_path, serve_command, target, Client, Daemon};

/// Parses metrics text with prometheus_client and prints each sample as `name{labels}: value`
/// in a JSON object.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as prometheus
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = openmetrics if sys.argv[1] == "openmetrics" else prometheus
samples = {}
for family in parse(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
        samples[sample.name + ("{" + labels + "}" if labels else "")] = sample.value
json.dump(samples, sys.stdout)
"#;

pub fn metrics_match_status() -> Result<(), String> {
    let jobs = 4;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("metrics.sock");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unix = format!("unix:{}", socket.display());
    let tcp = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_with(serve_command(
        jobs,
        &["--metrics-listen", &unix, "--metrics-listen", &tcp],
    ));
    // Tokens held; where the server sees them, a waiter and a refusal too.
    let mut holder = Client::start(&["hold", "4"]);
    let mut line = String::new();
    BufReader::new(holder.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let _waiter = if target().per_process() {
        // Its writes are refused (and its grace return retired as it exits) before anyone waits.
        let refused = Command::new(std::env::current_exe().unwrap()).arg("grace").output();
        ensure(refused.is_ok_and(|o| o.status.success()), || "the grace client failed".into())?;
        let waiter = Client::start(&["wait-one"]);
        daemon.wait_for_blocking_waiter(u64::from(waiter.pid()));
        Some(waiter)
    } else {
        None
    };
    for attempt in 0.. {
        let before = daemon.status();
        let printed = daemon.ctl(&["metrics"]);
        ensure(printed.status.success(), || {
            format!("steve metrics: {}", String::from_utf8_lossy(&printed.stderr))
        })?;
        let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
        let over_unix = http(UnixStream::connect(&socket).unwrap(), None)?;
        let over_tcp = http(
            TcpStream::connect(("127.0.0.1", port)).unwrap(),
            Some("application/openmetrics-text"),
        )?;
        let after = daemon.status();
        if steady(&before) != steady(&after) {
            ensure(attempt < 5, || "the status never held still for a sample".to_string())?;
            continue;
        }
        for (name, text, format) in [
            ("steve metrics", &printed, "prometheus"),
            ("the Unix socket", &over_unix, "prometheus"),
            ("the TCP port", &over_tcp, "openmetrics"),
        ] {
            let samples = parse(text, format).map_err(|why| format!("{name}: {why}"))?;
            agrees(&samples, &after).map_err(|why| format!("{name}: {why}"))?;
        }
        println!(
            "figure metrics_samples {} lines, {} bytes",
            printed.lines().filter(|line| !line.starts_with('#')).count(),
            printed.len()
        );
        break;
    }
    drop(holder);
    ensure(http_status(&socket, "GET /etc/passwd HTTP/1.1")?.starts_with("HTTP/1.1 404"), || {
        "a path other than /metrics was not refused".into()
    })
}

/// The status without what moves by itself (uptime, the system's readings, waiting times).
fn steady(status: &Value) -> Value {
    let mut steady = status.clone();
    for key in ["uptime_seconds", "system", "holders", "waiters", "builds"] {
        steady[key] = Value::Null;
    }
    steady
}

/// `GET /metrics` over `stream`, with `accept` if given; the body.
fn http(mut stream: impl Read + Write, accept: Option<&str>) -> Result<String, String> {
    let accept = accept.map(|value| format!("Accept: {value}\r\n")).unwrap_or_default();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|error| format!("reading the answer: {error}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no end of headers")?;
    ensure(head.starts_with("HTTP/1.1 200 OK"), || format!("answered {head:?}"))?;
    let wanted = if accept.is_empty() {
        "text/plain; version=0.0.4"
    } else {
        "application/openmetrics-text"
    };
    ensure(head.contains(wanted), || format!("content type not {wanted}: {head:?}"))?;
    Ok(body.to_string())
}

/// The status line answered to `request` on the Unix socket.
fn http_status(socket: &Path, request: &str) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|error| error.to_string())?;
    write!(stream, "{request}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|error| error.to_string())?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

/// The samples prometheus_client finds in `text`.
fn parse(text: &str, format: &str) -> Result<serde_json::Map<String, Value>, String> {
    let mut python = Command::new(env_path("STEVE_TEST_PYTHON"))
        .args(["-c", PARSE, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("python: {error}"))?;
    python.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = python.wait_with_output().unwrap();
    ensure(output.status.success(), || {
        format!("prometheus_client refused it: {}", String::from_utf8_lossy(&output.stderr))
    })?;
    match serde_json::from_slice(&output.stdout) {
        Ok(Value::Object(samples)) => Ok(samples),
        other => Err(format!("the parser printed {other:?}")),
    }
}

/// Every figure the status has, in the samples, equal.
fn agrees(samples: &serde_json::Map<String, Value>, status: &Value) -> Result<(), String> {
    let pool = &status["pool"];
    let counters = &status["counters"];
    let mut expected: Vec<(String, Value)> = vec![
        ("steve_jobs".into(), pool["jobs"].clone()),
        ("steve_pool_size_tokens".into(), pool["size"].clone()),
        ("steve_pool_free_tokens".into(), pool["free"].clone()),
        ("steve_pool_held_tokens".into(), pool["held"].clone()),
        ("steve_pool_withheld_tokens".into(), pool["withheld"].clone()),
        ("steve_reclaimed_tokens_total".into(), counters["reclaimed"].clone()),
        ("steve_holders".into(), status["holders"].as_array().map(Vec::len).into()),
        (format!("steve_server{{backend={}}}", target().backend), 1.into()),
    ];
    if let Some(waiters) = status["waiters"].as_array() {
        expected.push(("steve_waiters".into(), waiters.len().into()));
        for (name, key) in [
            ("steve_grants_total", "grants"),
            ("steve_returns_total", "returns"),
            ("steve_refusals_total", "enospc"),
            ("steve_grace_returns_total", "grace_returns"),
            ("steve_interrupts_total", "interrupts"),
            ("steve_expired_reservations_total", "expired_reservations"),
        ] {
            expected.push((name.into(), counters[key].clone()));
        }
        let waits = &counters["wait_seconds"];
        expected.push(("steve_wait_seconds_count".into(), waits["count"].clone()));
        expected.push(("steve_wait_seconds_sum".into(), waits["sum"].clone()));
        for bucket in waits["buckets"].as_array().ok_or("no wait buckets")? {
            let le = bucket["le"].as_str().ok_or("a bucket without le")?;
            expected
                .push((format!("steve_wait_seconds_bucket{{le={le}}}"), bucket["count"].clone()));
        }
    }
    for (name, want) in expected {
        let have = samples.get(&name).and_then(Value::as_f64);
        let want = want.as_f64();
        ensure(have.is_some() && have == want, || {
            format!("{name} is {have:?}, the status says {want:?}")
        })?;
    }
    Ok(())
}
