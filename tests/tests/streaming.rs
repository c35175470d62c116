//! Exec, attach and port-forward against containers in a real pod VM: the
//! CRI returns streaming URLs, our SPDY client (and Python's
//! websocket-client) drive them, and the agent runs the sessions in the guest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cri::proto;
use e2e::workload::TestPod;
use streaming::client::{CommandIo, PortForwarder, exec_spdy};
use streaming::protocol::{REMOTECOMMAND_V4, SPDY_REMOTECOMMAND, Status};
use streaming::{BoxRead, BoxWrite, TerminalSize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tonic::Code;

/// VM tests share two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pod of the shared test workload, with the streaming URLs it hands out.
struct Pod(TestPod);

impl std::ops::Deref for Pod {
    type Target = TestPod;
    fn deref(&self) -> &TestPod {
        &self.0
    }
}

impl std::ops::DerefMut for Pod {
    fn deref_mut(&mut self) -> &mut TestPod {
        &mut self.0
    }
}

async fn pod(name: &str) -> Pod {
    Pod(TestPod::start(name, |_| {}).await.unwrap())
}

impl Pod {
    async fn exec_url(
        &mut self,
        id: &str,
        cmd: &[&str],
        (stdin, tty): (bool, bool),
    ) -> Result<String, tonic::Status> {
        let req = proto::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        };
        Ok(self.rt.exec(req).await?.into_inner().url)
    }

    async fn attach_url(&mut self, id: &str, stdin: bool, tty: bool) -> String {
        let req = proto::AttachRequest {
            container_id: id.into(),
            stdin,
            tty,
            stdout: true,
            stderr: false,
        };
        self.rt.attach(req).await.unwrap().into_inner().url
    }
}

/// A writer for the client and a task that collects what it receives.
fn collector() -> (BoxWrite, JoinHandle<Vec<u8>>) {
    let (w, mut r) = tokio::io::duplex(256 * 1024);
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out).await;
        out
    });
    (Box::new(w), task)
}

/// Output of one remote command.
struct Run {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Status,
}

impl Run {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

async fn run_command(
    url: &str,
    stdin: Option<Vec<u8>>,
    tty: bool,
    size: Option<TerminalSize>,
) -> Run {
    let (stdout, out_task) = collector();
    let (stderr, err_task) = collector();
    let stdin = stdin.map(|data| Box::new(std::io::Cursor::new(data)) as BoxRead);
    let resize = size.map(|s| {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(s).unwrap();
        // Kept open so the resize stream stays up for the whole command.
        std::mem::forget(tx);
        rx
    });
    let io = CommandIo {
        stdin,
        stdout: Some(stdout),
        stderr: (!tty).then_some(stderr),
        resize,
        tty,
    };
    let status = tokio::time::timeout(
        Duration::from_secs(120),
        exec_spdy(url, SPDY_REMOTECOMMAND, io),
    )
    .await
    .expect("command timed out")
    .expect("exec session failed");
    Run {
        stdout: out_task.await.unwrap(),
        stderr: err_task.await.unwrap_or_default(),
        status,
    }
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/streaming-clients")
}

/// Installs the independent clients (as `make test` does).
fn install_clients() {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../streaming/tests/install-clients.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(clients_dir())
        .status()
        .expect("run install-clients.sh");
    assert!(
        status.success(),
        "installing the independent clients failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_in_a_pod_vm() {
    let _serial = SERIAL.lock().await;
    let mut pod = pod("exec").await;
    let config = pod.container("box", &["sleep 3600"]);
    let id = pod.run(config).await;

    // Pipes: stdout, stderr and a non-zero exit code.
    let url = pod
        .exec_url(
            &id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            (false, false),
        )
        .await
        .unwrap();
    let run = run_command(&url, None, false, None).await;
    assert_eq!(run.out(), "out\n");
    assert_eq!(String::from_utf8_lossy(&run.stderr), "err\n");
    assert_eq!(run.status.exit_code_of(), Some(3), "{:?}", run.status);

    // Zero exit, stdin piped in and closed.
    let url = pod
        .exec_url(&id, &["sh", "-c", "tr a-z A-Z; echo done"], (true, false))
        .await
        .unwrap();
    let run = run_command(&url, Some(b"hello stdin\n".to_vec()), false, None).await;
    assert_eq!(run.out(), "HELLO STDIN\ndone\n");
    assert_eq!(run.status.exit_code_of(), Some(0), "{:?}", run.status);

    // A terminal, and its size set by the client.
    let url = pod
        .exec_url(&id, &["sh", "-c", "tty; echo on-a-tty"], (false, true))
        .await
        .unwrap();
    let run = run_command(&url, None, true, None).await;
    let out = run.out();
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert!(out.contains("on-a-tty\r\n"), "{out:?}");
    let url = pod
        .exec_url(&id, &["sh", "-c", e2e::PRINT_TERMINAL_SIZE], (false, true))
        .await
        .unwrap();
    let size = TerminalSize {
        width: 123,
        height: 45,
    };
    let run = run_command(&url, None, true, Some(size)).await;
    assert_eq!(run.out(), "45 123\r\n");

    // A terminal exec with stdin: EOF reaches the shell as ^D.
    let url = pod.exec_url(&id, &["cat"], (true, true)).await.unwrap();
    let run = run_command(&url, Some(b"typed\n".to_vec()), true, None).await;
    assert!(run.out().contains("typed\r\n"), "{:?}", run.out());
    assert_eq!(run.status.exit_code_of(), Some(0));

    // 20 MB of output arrive intact.
    let url = pod
        .exec_url(&id, &["seq", "1", "2700000"], (false, false))
        .await
        .unwrap();
    let started = Instant::now();
    let run = run_command(&url, None, false, None).await;
    let expected: String = (1..=2_700_000).map(|i| format!("{i}\n")).collect();
    assert!(expected.len() > 20_000_000);
    assert_eq!(run.stdout.len(), expected.len());
    assert!(run.stdout == expected.as_bytes(), "20 MB output differs");
    eprintln!(
        "20 MB exec output in {:?} ({:.1} MB/s)",
        started.elapsed(),
        expected.len() as f64 / 1e6 / started.elapsed().as_secs_f64()
    );

    // Right after a container restarted (the kubelet's new attempt), 10
    // streaming Execs and 10 ExecSyncs at once: each gets its own output.
    let mut restarting = pod.container("restarting", &["sleep 3600"]);
    let first = pod.run(restarting.clone()).await;
    pod.rt
        .stop_container(proto::StopContainerRequest {
            container_id: first.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    pod.rt
        .remove_container(proto::RemoveContainerRequest {
            container_id: first,
        })
        .await
        .unwrap();
    if let Some(m) = restarting.metadata.as_mut() {
        m.attempt = 1;
    }
    let again = pod.run(restarting).await;
    let mut calls = Vec::new();
    for n in 0..10 {
        let url = pod
            .exec_url(
                &again,
                &["sh", "-c", &format!("echo stream-{n}")],
                (false, false),
            )
            .await
            .unwrap();
        calls.push(tokio::spawn(async move {
            let run = run_command(&url, None, false, None).await;
            (run.status.exit_code_of(), run.out())
        }));
        let mut rt = pod.rt.clone();
        let req = proto::ExecSyncRequest {
            container_id: again.clone(),
            cmd: vec!["sh".into(), "-c".into(), format!("echo sync-{n}")],
            timeout: 120,
        };
        calls.push(tokio::spawn(async move {
            let out = rt
                .exec_sync(req)
                .await
                .expect("a concurrent ExecSync")
                .into_inner();
            (
                Some(out.exit_code),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let kind = if i % 2 == 0 { "stream" } else { "sync" };
        let expected = (Some(0), format!("{kind}-{}\n", i / 2));
        assert_eq!(call.await.unwrap(), expected);
    }

    // The CRI refuses what cannot work.
    let err = pod.exec_url("nonexistent", &["true"], (false, false)).await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound);
    let created = pod.container("created", &["sleep 1"]);
    let created = pod.create(created).await.unwrap();
    let err = pod.exec_url(&created, &["true"], (false, false)).await;
    assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition);
    let bad = pod
        .rt
        .exec(proto::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            tty: true,
            stderr: true,
            stdout: true,
            stdin: false,
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    let bad = pod
        .rt
        .exec(proto::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);

    // A client we did not write: Python's websocket-client over v4.
    tokio::task::spawn_blocking(install_clients).await.unwrap();
    let url = pod
        .exec_url(
            &id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            (false, false),
        )
        .await
        .unwrap();
    let out = tokio::process::Command::new(clients_dir().join("pyenv/bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../streaming/tests/python/ws_exec.py"))
        .args([url.as_str(), REMOTECOMMAND_V4])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["stdout"], "out\n");
    assert_eq!(v["stderr"], "err\n");
    let status: Status = serde_json::from_str(v["status"].as_str().unwrap()).unwrap();
    assert_eq!(status.exit_code_of(), Some(3));
}

/// Reads from `r` into `seen` until it contains `needle`.
async fn read_until(r: &mut tokio::io::DuplexStream, seen: &mut Vec<u8>, needle: &str) {
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(seen).contains(needle) {
            let n = r.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "EOF before {needle:?}: {:?}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "{needle:?} not seen in {:?}",
        String::from_utf8_lossy(seen)
    );
}

/// A `stdin_once` container running `script`, and a piped attach to it:
/// the container id, the session, its stdin and its stdout.
async fn stdin_once_attach(
    pod: &mut Pod,
    name: &str,
    script: &str,
) -> (
    String,
    JoinHandle<Result<Status, streaming::client::ClientError>>,
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
) {
    let mut config = pod.container(name, &[script]);
    config.stdin = true;
    config.stdin_once = true;
    let id = pod.run(config).await;
    let url = pod.attach_url(&id, true, false).await;
    let (out_w, out_r) = tokio::io::duplex(64 * 1024);
    let (in_w, in_r) = tokio::io::duplex(4096);
    let io = CommandIo {
        stdin: Some(Box::new(in_r)),
        stdout: Some(Box::new(out_w)),
        stderr: None,
        resize: None,
        tty: false,
    };
    let session = tokio::spawn(async move { exec_spdy(&url, SPDY_REMOTECOMMAND, io).await });
    (id, session, in_w, out_r)
}

/// An attach session whose stdin and stdout the test holds.
struct Attached {
    stdin: Option<tokio::io::DuplexStream>,
    stdout: tokio::io::DuplexStream,
    seen: Vec<u8>,
    session: JoinHandle<Result<Status, streaming::client::ClientError>>,
}

fn attach(url: String, stdin: bool) -> Attached {
    let (out_w, out_r) = tokio::io::duplex(256 * 1024);
    let (in_w, in_r) = tokio::io::duplex(4096);
    let io = CommandIo {
        stdin: stdin.then(|| Box::new(in_r) as BoxRead),
        stdout: Some(Box::new(out_w)),
        stderr: None,
        resize: None,
        tty: true,
    };
    Attached {
        stdin: stdin.then_some(in_w),
        stdout: out_r,
        seen: Vec::new(),
        session: tokio::spawn(async move { exec_spdy(&url, SPDY_REMOTECOMMAND, io).await }),
    }
}

impl Attached {
    async fn type_line(&mut self, line: &str) {
        let w = self.stdin.as_mut().unwrap();
        w.write_all(line.as_bytes()).await.unwrap();
    }

    async fn expect(&mut self, needle: &str) {
        read_until(&mut self.stdout, &mut self.seen, needle).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_and_port_forward_in_a_pod_vm() {
    let _serial = SERIAL.lock().await;
    let mut pod = pod("attach").await;

    // Port-forward to a server bound to 127.0.0.1 inside the pod.
    let web = pod.container(
        "web",
        &["mkdir -p /tmp/www && echo pod-page > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"],
    );
    pod.run(web).await;
    let pod_id = pod.id.clone();
    let url = pod
        .rt
        .port_forward(proto::PortForwardRequest {
            pod_sandbox_id: pod_id,
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let forwarder = PortForwarder::connect(&url).await.unwrap();
    // httpd may still be starting: the first connections are retried.
    e2e::workload::get_through_forward(&forwarder, 8080, "pod-page").await;
    // Two connections at once.
    let a = forwarder.open(8080).await.unwrap();
    let b = forwarder.open(8080).await.unwrap();
    a.writer()
        .write(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    b.writer()
        .write(b"GET /missing HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    let (mut rda, mut rdb) = (a.reader(), b.reader());
    let (x, y) = tokio::join!(rda.read_to_end(&mut ra), rdb.read_to_end(&mut rb));
    x.unwrap();
    y.unwrap();
    let (ra, rb) = (String::from_utf8_lossy(&ra), String::from_utf8_lossy(&rb));
    assert!(ra.starts_with("HTTP/1.") && ra.contains("pod-page"), "{ra}");
    assert!(rb.starts_with("HTTP/1.") && rb.contains("404"), "{rb}");
    // A port nobody listens on is an error on that connection only.
    let dead = forwarder.open(8081).await.unwrap();
    let msg = dead.error_message().await.unwrap();
    assert!(msg.contains("8081"), "{msg}");
    forwarder.close().await;

    // Attach to a shell on a terminal: two clients see the same output.
    let mut shell = pod.container("shell", &["exec sh"]);
    shell.stdin = true;
    shell.tty = true;
    let shell = pod.run(shell).await;
    let url = pod.attach_url(&shell, false, true).await;
    let mut watcher = attach(url, false);
    let url = pod.attach_url(&shell, true, true).await;
    let mut typist = attach(url, true);
    // The shell may not be reading yet: repeat until the answer shows.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        typist.type_line("echo marker-$((6*7))\n").await;
        let seen = tokio::time::timeout(
            Duration::from_secs(3),
            read_until(&mut typist.stdout, &mut typist.seen, "marker-42"),
        )
        .await;
        if seen.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the shell never answered");
    }
    watcher.expect("marker-42").await;
    // Detaching (the client goes away) leaves the container running.
    typist.session.abort();
    drop(typist);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pod.status(&shell).await.state,
        proto::ContainerState::ContainerRunning as i32
    );
    let url = pod.attach_url(&shell, true, true).await;
    let mut second = attach(url, true);
    second.type_line("echo again-$((5*5))\n").await;
    watcher.expect("again-25").await;
    second.expect("again-25").await;
    // The shell exits: attached sessions end.
    second.type_line("exit\n").await;
    let status = tokio::time::timeout(Duration::from_secs(30), watcher.session)
        .await
        .expect("attach did not end with the container")
        .unwrap()
        .unwrap();
    assert_eq!(status.status, "Success", "{status:?}");
    pod.wait_exit(&shell).await;

    // stdin_once: the container's stdin closes when the first attach ends.
    let (once, session, mut in_w, mut out_r) =
        stdin_once_attach(&mut pod, "once", "cat; echo cat-done").await;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        in_w.write_all(b"piped\n").await.unwrap();
        let got = tokio::time::timeout(
            Duration::from_secs(3),
            read_until(&mut out_r, &mut seen, "piped"),
        )
        .await;
        if got.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "cat never echoed");
    }
    session.abort();
    drop(in_w);
    pod.wait_exit(&once).await;

    // stdin_once with the client closing its stdin alone (the session stays):
    // cat reaches EOF and exits, and the attach ends by itself.
    let (eof, session, mut in_w, mut out_r) = stdin_once_attach(&mut pod, "eof", "cat").await;
    let mut seen = Vec::new();
    in_w.write_all(b"hello\n").await.unwrap();
    read_until(&mut out_r, &mut seen, "hello").await;
    drop(in_w);
    let status = tokio::time::timeout(Duration::from_secs(60), session)
        .await
        .expect("the attach did not end after the client closed stdin")
        .unwrap()
        .unwrap();
    assert_eq!(status.status, "Success", "{status:?}");
    let s = pod.wait_exit(&eof).await;
    assert_eq!(s.exit_code, 0, "cat saw EOF and exited: {s:?}");
    // Attaching to an exited container is refused.
    let err = pod
        .rt
        .attach(proto::AttachRequest {
            container_id: eof.clone(),
            stdin: false,
            tty: false,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}
