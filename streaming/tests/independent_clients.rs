//! The streaming server against clients we did not write: node's
//! spdy-transport (SPDY/3.1) and ws (WebSocket), and Python's
//! websocket-client. `tests/install-clients.sh` installs them under
//! `target/streaming-clients` (npm and PyPI must be reachable the first time).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Once;

use common::{POD, exec_req, http_server, strict_server as server};
use serde_json::Value;
use streaming::PortForwardRequest;
use streaming::protocol::{self, Status};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/streaming-clients")
}

fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/install-clients.sh");
        let status = std::process::Command::new("bash")
            .arg(script)
            .arg(clients_dir())
            .status()
            .expect("run install-clients.sh");
        assert!(
            status.success(),
            "installing the independent clients failed"
        );
    });
}

async fn run_client(program: PathBuf, script: &str, args: &[&str]) -> Value {
    tokio::task::spawn_blocking(install).await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let out = tokio::process::Command::new(program)
        .arg(dir.join(script))
        .args(args)
        .env("NODE_PATH", clients_dir().join("node/node_modules"))
        .output()
        .await
        .expect("start client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

async fn node(args: &[&str]) -> Value {
    run_client(PathBuf::from("node"), "node/client.js", args).await
}

async fn python(args: &[&str]) -> Value {
    run_client(
        clients_dir().join("pyenv/bin/python"),
        "python/ws_exec.py",
        args,
    )
    .await
}

fn status_of(v: &Value) -> Status {
    serde_json::from_str(v["status"].as_str().unwrap()).unwrap()
}

const SCRIPT: &[&str] = &["sh", "-c", "echo out; echo err >&2; exit 3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_spdy_exec_reports_output_and_exit_code() {
    let srv = server().await;
    let url = srv.get_exec(exec_req(SCRIPT, false, false)).unwrap();
    let v = node(&["spdy-exec", &url, protocol::REMOTECOMMAND_V4]).await;
    assert_eq!(v["negotiated"], protocol::REMOTECOMMAND_V4);
    assert_eq!(v["stdout"]["text"], "out\n");
    assert_eq!(v["stderr"]["text"], "err\n");
    assert_eq!(status_of(&v).exit_code_of(), Some(3));
    // v2 reports failures as plain text.
    let url = srv.get_exec(exec_req(SCRIPT, false, false)).unwrap();
    let v = node(&["spdy-exec", &url, protocol::REMOTECOMMAND_V2]).await;
    assert_eq!(v["negotiated"], protocol::REMOTECOMMAND_V2);
    assert!(
        v["status"].as_str().unwrap().contains("non-zero exit code"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_spdy_exec_with_stdin_and_megabytes_of_output() {
    let srv = server().await;
    let url = srv
        .get_exec(exec_req(&["sh", "-c", "cat; seq 1 600000"], true, false))
        .unwrap();
    let v = node(&[
        "spdy-exec",
        &url,
        protocol::REMOTECOMMAND_V5,
        "hello from node\n",
    ])
    .await;
    assert_eq!(status_of(&v).exit_code_of(), Some(0));
    let mut expected = String::from("hello from node\n");
    for i in 1..=600_000u32 {
        expected.push_str(&i.to_string());
        expected.push('\n');
    }
    assert_eq!(v["stdout"]["length"], expected.len());
    let digest = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(expected.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let digest = String::from_utf8(digest.stdout).unwrap();
    assert_eq!(
        v["stdout"]["sha256"].as_str().unwrap(),
        digest.split_whitespace().next().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_spdy_port_forward_three_connections_at_once() {
    let srv = server().await;
    let port = http_server("served").await;
    let url = srv
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: POD.into(),
            ports: vec![port],
        })
        .unwrap();
    let v = node(&["spdy-portforward", &url, &port.to_string(), "3"]).await;
    assert_eq!(v["negotiated"], protocol::PORTFORWARD_V1);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (i, r) in results.iter().enumerate() {
        let resp = r["response"].as_str().unwrap();
        assert!(resp.starts_with("HTTP/1.0 200 OK"), "{resp}");
        assert!(
            resp.ends_with(&format!("served GET /node{i} HTTP/1.0")),
            "{resp}"
        );
        assert_eq!(r["error"], "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ws_exec_v5_closes_stdin_with_the_close_signal() {
    let srv = server().await;
    let url = srv.get_exec(exec_req(&["wc", "-c"], true, false)).unwrap();
    let v = node(&["ws-exec", &url, protocol::REMOTECOMMAND_V5, "twelve bytes"]).await;
    assert_eq!(v["negotiated"], protocol::REMOTECOMMAND_V5);
    assert_eq!(v["stdout"]["text"].as_str().unwrap().trim(), "12");
    assert_eq!(status_of(&v).exit_code_of(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websocket_client_exec_v4_v5_and_base64() {
    let srv = server().await;
    for proto in [protocol::REMOTECOMMAND_V4, protocol::WS_BASE64_V4] {
        let url = srv.get_exec(exec_req(SCRIPT, false, false)).unwrap();
        let v = python(&[&url, proto]).await;
        assert_eq!(v["negotiated"], proto);
        assert_eq!(v["stdout"], "out\n", "{proto}");
        assert_eq!(v["stderr"], "err\n", "{proto}");
        assert_eq!(status_of(&v).exit_code_of(), Some(3), "{proto}");
    }
    let url = srv.get_exec(exec_req(&["cat"], true, false)).unwrap();
    let v = python(&[&url, protocol::REMOTECOMMAND_V5, "from python"]).await;
    assert_eq!(v["stdout"], "from python");
    assert_eq!(status_of(&v).exit_code_of(), Some(0));
}
