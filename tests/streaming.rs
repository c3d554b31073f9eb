//! End-to-end: Exec, Attach and PortForward through crustd's streaming server, with
//! the SPDY and WebSocket clients of `support::stream_client` playing crictl, kubelet
//! and kubectl, against containers of a real pod (runc, CNI, a busybox image pulled
//! from a registry on loopback).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crust_proto::cri;
use support::oci;
use support::pod::TestPod;
use support::stream_client::{
    self as sc, Dial, ExecInput, PortForward, STDOUT, Session, SpdyConn, Streams, V1, V1_BASE64,
    V2, V3, V4, V4_BASE64, V5, WsPortForward,
};
use tonic::Code;

/// A daemon with a network, a pulled busybox image and one running pod.
type Pod = TestPod;

async fn pod() -> Pod {
    pod_with("").await
}

/// [`pod`] with `extra` TOML tables in crustd's config.
async fn pod_with(extra: &str) -> Pod {
    TestPod::set_up(oci::busybox_image(), extra).await
}

impl Pod {
    /// How every streaming URL starts: `http://127.0.0.1:`, or `https://` with TLS.
    fn url_prefix(&self) -> &'static str {
        if self.extra_config.contains("tls_cert") {
            "https://127.0.0.1:"
        } else {
            "http://127.0.0.1:"
        }
    }
}

fn sh(script: &str) -> Vec<&str> {
    vec!["/bin/sh", "-c", script]
}

fn exec_request(id: &str, cmd: &[&str], s: Streams) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: s.tty,
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
    }
}

fn attach_request(id: &str, s: Streams) -> cri::AttachRequest {
    cri::AttachRequest {
        container_id: id.into(),
        stdin: s.stdin,
        tty: s.tty,
        stdout: s.stdout,
        stderr: s.stderr,
    }
}

impl Pod {
    /// A container that only sleeps, to exec into.
    async fn idle(&mut self, name: &str) -> String {
        self.run(self.config(name, &["sleep", "100000"])).await
    }

    async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.c
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    async fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        self.c
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn try_exec(&mut self, req: cri::ExecRequest) -> Result<String, tonic::Status> {
        self.c.runtime.exec(req).await.map(|r| r.into_inner().url)
    }

    async fn exec_url(&mut self, id: &str, cmd: &[&str], s: Streams) -> String {
        let url = self
            .try_exec(exec_request(id, cmd, s))
            .await
            .unwrap_or_else(|e| panic!("Exec {cmd:?}: {e:?}"));
        assert!(
            url.starts_with(self.url_prefix()) && url.contains("/exec/"),
            "{url}"
        );
        url
    }

    async fn try_attach(&mut self, req: cri::AttachRequest) -> Result<String, tonic::Status> {
        self.c.runtime.attach(req).await.map(|r| r.into_inner().url)
    }

    async fn attach_url(&mut self, id: &str, s: Streams) -> String {
        let url = self
            .try_attach(attach_request(id, s))
            .await
            .unwrap_or_else(|e| panic!("Attach: {e:?}"));
        assert!(
            url.starts_with(self.url_prefix()) && url.contains("/attach/"),
            "{url}"
        );
        url
    }

    async fn try_port_forward(
        &mut self,
        sandbox: &str,
        ports: &[i32],
    ) -> Result<String, tonic::Status> {
        self.c
            .runtime
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: sandbox.into(),
                port: ports.to_vec(),
            })
            .await
            .map(|r| r.into_inner().url)
    }

    async fn port_forward_url(&mut self, ports: &[i32]) -> String {
        let sandbox = self.sandbox.clone();
        let url = self
            .try_port_forward(&sandbox, ports)
            .await
            .unwrap_or_else(|e| panic!("PortForward: {e:?}"));
        assert!(
            url.starts_with(self.url_prefix()) && url.contains("/portforward/"),
            "{url}"
        );
        url
    }
}

/// Polls `check` until it holds or `within` passes.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Host pids of processes whose argv is `args` (argv[0] compared by base name).
fn processes_with_args(args: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if argv.len() == args.len()
            && argv[0].rsplit('/').next() == Some(args[0])
            && argv[1..] == args[1..]
        {
            found.push(pid);
        }
    }
    found
}

/// The end of the first line of `text` that is a `stty size` answer ("rows cols").
fn size_report(text: &str) -> Option<usize> {
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let end = start + line.len();
        // A line editor may redraw with carriage returns: the answer is what follows
        // the last one.
        let last = line
            .trim_end_matches(['\r', '\n'])
            .rsplit('\r')
            .next()
            .unwrap_or("");
        let fields: Vec<&str> = last.split(' ').collect();
        if line.ends_with('\n')
            && fields.len() == 2
            && fields
                .iter()
                .all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        {
            return Some(end);
        }
        start = end;
    }
    None
}

/// The "rows cols" answer at the end of what [`size_report`] matched.
fn last_size(taken: &str) -> String {
    taken
        .trim_end_matches(['\r', '\n'])
        .rsplit(['\r', '\n'])
        .next()
        .unwrap_or("")
        .to_string()
}

/// Asks an interactive shell for `stty size` until it reports `want` (the resize
/// and the shell's reading of stdin race on the server side).
async fn wait_for_size(s: &mut Session, want: &str) {
    let mut seen = Vec::new();
    for _ in 0..50 {
        s.write_stdin(b"stty size\n").await;
        let taken = s
            .read_until_fn(STDOUT, "a stty size answer", size_report)
            .await;
        let size = last_size(&taken);
        if size == want {
            return;
        }
        seen.push(size);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the terminal never reported {want:?}; it said {seen:?}");
}

fn assert_success(r: &sc::ExecResult) {
    assert_eq!(r.exit_code(), Ok(0), "{r:?}");
    if sc::version_of(&r.protocol) >= 4 {
        assert_eq!(r.status()["status"], "Success", "{r:?}");
    } else {
        assert!(r.error.is_empty(), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_spdy_separates_stdout_and_stderr_in_every_protocol_version() {
    let mut p = pod().await;
    let id = p.idle("target").await;
    for protocol in [V5, V4, V3, V2, V1] {
        let url = p
            .exec_url(&id, &sh("echo hello; echo oops >&2"), Streams::OUTPUT)
            .await;
        let r = sc::exec_spdy(&url, protocol, &ExecInput::output()).await;
        assert_eq!(r.stdout_text(), "hello\n", "{protocol}: {r:?}");
        assert_eq!(r.stderr_text(), "oops\n", "{protocol}: {r:?}");
        assert_success(&r);
    }

    // The server picks the first protocol of the client's list that it speaks, as
    // client-go offers them (v5 first); what it cannot speak is refused with 403.
    let url = p.exec_url(&id, &["true"], Streams::OUTPUT).await;
    let s = Session::spdy(&url, &sc::SPDY_REMOTE_COMMAND, Streams::OUTPUT)
        .await
        .unwrap();
    assert_eq!(s.protocol(), V5);
    assert_success(&s.finish().await);
    let url = p.exec_url(&id, &["true"], Streams::OUTPUT).await;
    let s = Session::spdy(&url, &["v9.channel.k8s.io", V3, V4], Streams::OUTPUT)
        .await
        .unwrap();
    assert_eq!(s.protocol(), V3);
    assert_success(&s.finish().await);
    let url = p.exec_url(&id, &["true"], Streams::OUTPUT).await;
    let err = SpdyConn::connect(&url, &["v9.channel.k8s.io"])
        .await
        .err()
        .expect("an unknown protocol was accepted");
    assert_eq!(err.status, 403, "{err}");

    // crictl upgrades with POST; GET is served too (kubelet's server takes both).
    let url = p.exec_url(&id, &sh("echo via-get"), Streams::OUTPUT).await;
    let mut s = Session::spdy_with_method("GET", &url, &[V4], Streams::OUTPUT)
        .await
        .unwrap();
    s.read_until(STDOUT, "via-get\n").await;
    assert_success(&s.finish().await);

    // kubelet's proxy passes the API server's query on (command, input, output, tty):
    // the options still come from the CRI request.
    let url = p.exec_url(&id, &sh("echo from-cri"), Streams::OUTPUT).await;
    let proxied = format!("{url}?command=echo&command=from-query&input=1&output=1&tty=1");
    let r = sc::exec_spdy(&proxied, V4, &ExecInput::output()).await;
    assert_eq!(r.stdout_text(), "from-cri\n", "{r:?}");
    assert_success(&r);

    // After the status the server ends the connection (GOAWAY, then close).
    let url = p.exec_url(&id, &sh("echo bye"), Streams::OUTPUT).await;
    let s = Session::spdy(&url, &[V4], Streams::OUTPUT).await.unwrap();
    let conn_closed = {
        let conn = s.spdy_conn().unwrap();
        conn.wait_closed(sc::TIMEOUT).await
    };
    let trace = s.spdy_conn().unwrap().trace();
    assert!(
        conn_closed,
        "the server kept the connection open; frames:\n{trace}"
    );
    let r = s.finish().await;
    assert_eq!(r.stdout_text(), "bye\n", "{r:?}");
    assert_success(&r);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_stdin_reaches_the_command_and_closing_it_ends_the_input() {
    let mut p = pod().await;
    let id = p.idle("target").await;
    for protocol in [V4, V2] {
        let input = ExecInput::with_stdin(b"some input");
        let url = p.exec_url(&id, &["cat"], input.streams()).await;
        let r = sc::exec_spdy(&url, protocol, &input).await;
        assert_eq!(r.stdout_text(), "some input", "{protocol}: {r:?}");
        assert_success(&r);

        let url = p.exec_url(&id, &["wc", "-c"], input.streams()).await;
        let r = sc::exec_spdy(&url, protocol, &input).await;
        assert_eq!(r.stdout_text().trim(), "10", "{protocol}: {r:?}");
        assert_success(&r);
    }

    // A mebibyte each way, as `kubectl cp` moves tar streams through exec.
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let input = ExecInput::with_stdin(&big);
    let url = p.exec_url(&id, &["cat"], input.streams()).await;
    let mut s = Session::spdy(&url, &[V4], input.streams()).await.unwrap();
    s.feed(&input).await;
    let r = s.finish().await;
    assert_eq!(r.stdout.len(), big.len(), "{r:?}");
    assert!(r.stdout == big, "a mebibyte through cat came back changed");
    assert_success(&r);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_non_zero_exit_code_reaches_the_client() {
    let mut p = pod().await;
    let id = p.idle("target").await;
    for protocol in [V5, V4] {
        let url = p.exec_url(&id, &sh("exit 3"), Streams::OUTPUT).await;
        let r = sc::exec_spdy(&url, protocol, &ExecInput::output()).await;
        assert_eq!(r.exit_code(), Ok(3), "{protocol}: {r:?}");
        let status = r.status();
        assert_eq!(status["status"], "Failure", "{r:?}");
        assert_eq!(status["reason"], "NonZeroExitCode", "{r:?}");
        assert!(
            status["message"]
                .as_str()
                .is_some_and(|m| m.contains("non-zero exit code")),
            "{r:?}"
        );
    }
    // Before v4 the error stream carries text, so the code is only an error.
    for protocol in [V3, V2, V1] {
        let url = p.exec_url(&id, &sh("exit 3"), Streams::OUTPUT).await;
        let r = sc::exec_spdy(&url, protocol, &ExecInput::output()).await;
        assert!(!r.error.is_empty(), "{protocol}: {r:?}");
        assert!(r.exit_code().is_err(), "{protocol}: {r:?}");
    }
    // A command that cannot be run at all is no success either.
    let url = p.exec_url(&id, &["/no/such/binary"], Streams::OUTPUT).await;
    let r = sc::exec_spdy(&url, V4, &ExecInput::output()).await;
    assert_ne!(r.exit_code(), Ok(0), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_with_a_tty_reports_its_size_and_follows_resizes() {
    let mut p = pod().await;
    let id = p.idle("target").await;

    // The size sent first is the one the command finds (it waits for a line first,
    // so the size is in place before it asks).
    let url = p
        .exec_url(&id, &sh("read x; stty size"), Streams::TTY)
        .await;
    let mut s = Session::spdy(&url, &[V4], Streams::TTY).await.unwrap();
    s.resize(100, 30).await;
    s.write_stdin(b"go\n").await;
    let r = s.finish().await;
    assert!(r.stdout_text().contains("30 100"), "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");
    assert_success(&r);

    // An interactive shell: its terminal changes size with every resize, and its exit
    // code comes back.
    let url = p.exec_url(&id, &["/bin/sh"], Streams::TTY).await;
    let mut s = Session::spdy(&url, &[V4], Streams::TTY).await.unwrap();
    s.resize(120, 40).await;
    wait_for_size(&mut s, "40 120").await;
    s.resize(80, 24).await;
    wait_for_size(&mut s, "24 80").await;
    s.write_stdin(b"exit 7\n").await;
    let r = s.finish().await;
    assert_eq!(r.exit_code(), Ok(7), "{r:?}");

    // The same over a WebSocket (resize channel 4).
    let url = p
        .exec_url(&id, &sh("read x; stty size"), Streams::TTY)
        .await;
    let mut s = Session::ws(&url, &[V5], Streams::TTY).await.unwrap();
    s.resize(90, 20).await;
    s.write_stdin(b"go\n").await;
    let r = s.finish().await;
    assert!(r.stdout_text().contains("20 90"), "{r:?}");
    assert_success(&r);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_websocket_binary_and_base64() {
    let mut p = pod().await;
    let id = p.idle("target").await;

    // v5 closes stdin with [255, 0].
    let input = ExecInput::with_stdin(b"some input");
    let url = p.exec_url(&id, &["cat"], input.streams()).await;
    let r = sc::exec_ws(&url, V5, &input).await;
    assert_eq!(r.stdout_text(), "some input", "{r:?}");
    assert_success(&r);

    // v4 cannot close stdin: the command ends by itself.
    for protocol in [V4, V4_BASE64] {
        let input = ExecInput::with_stdin(b"0123456789");
        let url = p
            .exec_url(&id, &["head", "-c", "10"], input.streams())
            .await;
        let r = sc::exec_ws(&url, protocol, &input).await;
        assert_eq!(r.stdout_text(), "0123456789", "{protocol}: {r:?}");
        assert_success(&r);
    }

    // Output on both channels and a non-zero exit code.
    for protocol in [V5, V4, V4_BASE64] {
        let url = p
            .exec_url(&id, &sh("echo out; echo err >&2; exit 5"), Streams::OUTPUT)
            .await;
        let r = sc::exec_ws(&url, protocol, &ExecInput::output()).await;
        assert_eq!(r.stdout_text(), "out\n", "{protocol}: {r:?}");
        assert_eq!(r.stderr_text(), "err\n", "{protocol}: {r:?}");
        assert_eq!(r.exit_code(), Ok(5), "{protocol}: {r:?}");
        assert_eq!(r.status()["reason"], "NonZeroExitCode", "{r:?}");
    }

    // The first protocol version: text on the error channel.
    for protocol in [V1, V1_BASE64] {
        let url = p.exec_url(&id, &sh("echo v1"), Streams::OUTPUT).await;
        let r = sc::exec_ws(&url, protocol, &ExecInput::output()).await;
        assert_eq!(r.stdout_text(), "v1\n", "{protocol}: {r:?}");
        assert_success(&r);
        let url = p.exec_url(&id, &sh("exit 2"), Streams::OUTPUT).await;
        let r = sc::exec_ws(&url, protocol, &ExecInput::output()).await;
        assert!(!r.error.is_empty(), "{protocol}: {r:?}");
    }

    // The server picks the first protocol offered that it speaks.
    let url = p.exec_url(&id, &["true"], Streams::OUTPUT).await;
    let s = Session::ws(&url, &["v9.channel.k8s.io", V4_BASE64, V5], Streams::OUTPUT)
        .await
        .unwrap();
    assert_eq!(s.protocol(), V4_BASE64);
    assert_success(&s.finish().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_writes_stdin_and_reads_output_from_the_moment_it_joins() {
    let mut p = pod().await;

    // A container reading its stdin, which outlives each attach (no stdin_once).
    let mut config = p.config("reader", &sh("while read l; do echo got:$l; done"));
    config.stdin = true;
    let reader = p.run(config).await;
    let url = p.attach_url(&reader, Streams::ALL).await;
    let mut s = Session::spdy(&url, &[V4], Streams::ALL).await.unwrap();
    s.write_stdin(b"x\n").await;
    s.read_until(STDOUT, "got:x\n").await;
    // Closing the attach's stdin leaves the container's stdin open.
    s.close_stdin().await;
    drop(s);
    let url = p.attach_url(&reader, Streams::ALL).await;
    let mut s = Session::ws(&url, &[V5], Streams::ALL).await.unwrap();
    s.write_stdin(b"y\n").await;
    s.read_until(STDOUT, "got:y\n").await;
    drop(s);
    let url = p.attach_url(&reader, Streams::ALL).await;
    let mut s = Session::ws(&url, &[V4_BASE64], Streams::ALL).await.unwrap();
    s.write_stdin(b"z\n").await;
    s.read_until(STDOUT, "got:z\n").await;
    drop(s);
    assert_eq!(
        p.status(&reader).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    // A container counting on stdout: attach sees the output from the moment it joins.
    let counter = p
        .run(p.config(
            "counter",
            &sh("i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"),
        ))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let streams = Streams {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    for transport in ["spdy", "websocket"] {
        let url = p.attach_url(&counter, streams).await;
        let mut s = match transport {
            "spdy" => Session::spdy(&url, &[V4], streams).await.unwrap(),
            _ => Session::ws(&url, &[V5], streams).await.unwrap(),
        };
        let mut numbers = Vec::new();
        for _ in 0..3 {
            let line = s.read_until(STDOUT, "\n").await;
            numbers.push(
                line.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{transport}: not a number: {line:?}")),
            );
        }
        assert!(
            numbers[0] >= 3,
            "{transport}: output was replayed from the start: {numbers:?}"
        );
        assert_eq!(
            numbers,
            vec![numbers[0], numbers[0] + 1, numbers[0] + 2],
            "{transport}"
        );
    }

    // stdin_once: when the first attach closes stdin, the container's stdin closes and
    // cat ends; the attach then finishes with success.
    let mut config = p.config("once", &["cat"]);
    config.stdin = true;
    config.stdin_once = true;
    let once = p.run(config).await;
    let url = p.attach_url(&once, Streams::ALL).await;
    let mut s = Session::spdy(&url, &[V4], Streams::ALL).await.unwrap();
    s.write_stdin(b"hello\n").await;
    s.read_until(STDOUT, "hello\n").await;
    s.close_stdin().await;
    let st = p.wait_exit(&once).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    let r = s.finish().await;
    assert_eq!(r.status()["status"], "Success", "{r:?}");
}

/// A pod serving `hi-from-httpd` with busybox httpd on port 8080, once it answers.
async fn web_pod() -> Pod {
    web_pod_with("").await
}

/// [`web_pod`] with `extra` TOML tables in crustd's config.
async fn web_pod_with(extra: &str) -> Pod {
    let mut p = pod_with(extra).await;
    let web = p
        .run(p.config(
            "web",
            &sh(
                "mkdir -p /tmp/www && echo hi-from-httpd > /tmp/www/index.html && \
                 exec httpd -f -p 8080 -h /tmp/www",
            ),
        ))
        .await;
    let ready = p
        .exec_sync(
            &web,
            &sh(
                "for i in $(seq 100); do busybox wget -q -O - http://127.0.0.1:8080/ && exit 0; \
                 sleep 0.1; done; exit 1",
            ),
        )
        .await;
    assert_eq!(ready.exit_code, 0, "httpd did not come up: {ready:?}");
    p
}

/// An HTTP/1.0 request: the server answers and closes, as curl expects.
const HTTP_GET: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_spdy_reaches_an_http_server_in_the_pod() {
    let mut p = web_pod().await;
    let url = p.port_forward_url(&[8080, 9]).await;
    let mut pf = PortForward::connect(&url).await.unwrap();
    // A port nothing listens on: an error, and the data stream ends.
    let f = pf.request(9, HTTP_GET).await;
    assert!(!f.error.is_empty(), "no error for a closed port: {f:?}");
    assert!(f.data.is_empty(), "{f:?}");
    // Two connections to httpd over the same session (request ids 1 and 2). The pod
    // closing its side must end the data stream: client-go waits for that before it
    // closes the local connection, which curl waits for.
    for _ in 0..2 {
        let f = pf.request(8080, HTTP_GET).await;
        let text = f.text();
        assert!(
            text.starts_with("HTTP/1.") && text.contains(" 200"),
            "{f:?}"
        );
        assert!(text.contains("hi-from-httpd"), "{f:?}");
        assert!(f.error.is_empty(), "{f:?}");
    }
    // A client that half-closes after its request (as nc does) still gets the answer.
    let (mut data, mut error) = pf.open(8080).await;
    data.write(HTTP_GET).await.unwrap();
    data.close_write().await.unwrap();
    let (reply, err) = tokio::join!(data.read_to_end(), error.read_to_end());
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.contains("hi-from-httpd"), "{reply:?} {err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_websocket_reaches_an_http_server_in_the_pod() {
    let mut p = web_pod().await;
    // Binary: two ports at once, one of them closed.
    let url = p.port_forward_url(&[8080, 9]).await;
    let mut pf = WsPortForward::connect(&url, V4, &[8080, 9]).await.unwrap();
    pf.send(0, HTTP_GET).await;
    let got = pf.finish().await;
    let text = got[0].text();
    assert!(
        text.contains(" 200") && text.contains("hi-from-httpd"),
        "{got:?}"
    );
    assert!(got[0].error.is_empty(), "{got:?}");
    assert!(
        !got[1].error.is_empty(),
        "no error for a closed port: {got:?}"
    );

    // Base64.
    let url = p.port_forward_url(&[8080]).await;
    let mut pf = WsPortForward::connect(&url, V4_BASE64, &[8080])
        .await
        .unwrap();
    pf.send(0, HTTP_GET).await;
    let got = pf.finish().await;
    assert!(got[0].text().contains("hi-from-httpd"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_works_once_and_unknown_ones_are_refused() {
    let mut p = pod().await;
    let id = p.idle("target").await;

    let url = p.exec_url(&id, &sh("echo once"), Streams::OUTPUT).await;
    let other = p.exec_url(&id, &sh("echo once"), Streams::OUTPUT).await;
    assert_ne!(url, other);
    let token = url.rsplit('/').next().unwrap();
    assert!(
        token.len() >= 22
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "a token of at least 128 random bits, url-safe: {token:?}"
    );

    let r = sc::exec_spdy(&url, V4, &ExecInput::output()).await;
    assert_eq!(r.stdout_text(), "once\n", "{r:?}");
    let err = SpdyConn::connect(&url, &[V4])
        .await
        .err()
        .expect("reused token");
    assert_eq!(err.status, 404, "{err}");
    let err = Session::ws(&url, &[V5], Streams::OUTPUT)
        .await
        .err()
        .expect("reused token");
    assert_eq!(err.status, 404, "{err}");

    // Used once over a WebSocket, refused over SPDY.
    let r = sc::exec_ws(&other, V5, &ExecInput::output()).await;
    assert_eq!(r.stdout_text(), "once\n", "{r:?}");
    let err = SpdyConn::connect(&other, &[V4])
        .await
        .err()
        .expect("reused token");
    assert_eq!(err.status, 404, "{err}");

    // Attach and port-forward tokens are single-use as well.
    let url = p.attach_url(&id, Streams::OUTPUT).await;
    drop(Session::spdy(&url, &[V4], Streams::OUTPUT).await.unwrap());
    let err = SpdyConn::connect(&url, &[V4])
        .await
        .err()
        .expect("reused token");
    assert_eq!(err.status, 404, "{err}");
    let url = p.port_forward_url(&[80]).await;
    drop(PortForward::connect(&url).await.unwrap());
    let err = PortForward::connect(&url)
        .await
        .err()
        .expect("reused token");
    assert_eq!(err.status, 404, "{err}");

    // Unknown tokens, on every path.
    let base = url.split("/portforward/").next().unwrap();
    let fake = "A".repeat(token.len());
    for path in ["exec", "attach", "portforward"] {
        let url = format!("{base}/{path}/{fake}");
        let err = SpdyConn::connect(&url, &[V4, sc::PORT_FORWARD])
            .await
            .err()
            .expect("unknown token");
        assert_eq!(err.status, 404, "{url}: {err}");
        let err = sc::ws_connect(&url, &[V5])
            .await
            .expect_err("unknown token");
        assert_eq!(err.status, 404, "{url}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refused() {
    let mut p = pod_with("[streaming]\ntoken_ttl_secs = 1\n").await;
    let id = p.idle("target").await;

    // Used before it expires: the session outlives the token.
    let early = p
        .exec_url(&id, &sh("sleep 2; echo still-here"), Streams::OUTPUT)
        .await;
    let s = Session::spdy(&early, &[V4], Streams::OUTPUT).await.unwrap();
    let spdy = p.exec_url(&id, &sh("echo late"), Streams::OUTPUT).await;
    let ws = p.exec_url(&id, &sh("echo late"), Streams::OUTPUT).await;
    let pf = p.port_forward_url(&[80]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let err = SpdyConn::connect(&spdy, &[V4])
        .await
        .err()
        .expect("expired token");
    assert_eq!(err.status, 404, "{err}");
    let err = Session::ws(&ws, &[V5], Streams::OUTPUT)
        .await
        .err()
        .expect("expired token");
    assert_eq!(err.status, 404, "{err}");
    let err = PortForward::connect(&pf)
        .await
        .err()
        .expect("expired token");
    assert_eq!(err.status, 404, "{err}");

    let r = s.finish().await;
    assert_eq!(r.stdout_text(), "still-here\n", "{r:?}");
    assert_success(&r);

    // A fresh token, used at once, works.
    let url = p.exec_url(&id, &sh("echo fresh"), Streams::OUTPUT).await;
    let r = sc::exec_ws(&url, V5, &ExecInput::output()).await;
    assert_eq!(r.stdout_text(), "fresh\n", "{r:?}");
    assert_success(&r);
}

/// A self-signed certificate for IP 127.0.0.1 (and its key), named `CN=common_name`,
/// made with the openssl CLI as `dir/name.crt` and `dir/name.key`. Not a CA: rustls
/// refuses a CA certificate as a server's own.
fn self_signed(dir: &Path, name: &str, common_name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={common_name}"))
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (the openssl package): {e}"));
    assert!(
        out.status.success(),
        "openssl req failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_port_forward_over_tls_with_the_configured_certificate() {
    // The files must exist when crustd starts: a directory of the test's own.
    let certs = tempfile::Builder::new()
        .prefix("crust-e2e-tls-")
        .tempdir()
        .expect("tempdir");
    let (cert, key) = self_signed(certs.path(), "streaming", "crust-test");
    let (stranger, _) = self_signed(certs.path(), "stranger", "someone-else");
    let mut p = web_pod_with(&format!(
        "[streaming]\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
    ))
    .await;
    let id = p.idle("target").await;
    let tls = Dial::trusting(&cert);

    // SPDY: output on both streams, stdin, exit codes.
    let url = p
        .exec_url(&id, &sh("echo over-tls; echo oops >&2"), Streams::OUTPUT)
        .await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let r = sc::exec_spdy_via(&tls, &url, V4, &ExecInput::output()).await;
    assert_eq!(r.stdout_text(), "over-tls\n", "{r:?}");
    assert_eq!(r.stderr_text(), "oops\n", "{r:?}");
    assert_success(&r);
    let input = ExecInput::with_stdin(b"through tls");
    let url = p.exec_url(&id, &["cat"], input.streams()).await;
    let r = sc::exec_spdy_via(&tls, &url, V5, &input).await;
    assert_eq!(r.stdout_text(), "through tls", "{r:?}");
    assert_success(&r);
    let url = p.exec_url(&id, &sh("exit 3"), Streams::OUTPUT).await;
    let r = sc::exec_spdy_via(&tls, &url, V4, &ExecInput::output()).await;
    assert_eq!(r.exit_code(), Ok(3), "{r:?}");

    // WebSocket.
    let url = p
        .exec_url(&id, &sh("echo ws-over-tls; exit 4"), Streams::OUTPUT)
        .await;
    let r = sc::exec_ws_via(&tls, &url, V5, &ExecInput::output()).await;
    assert_eq!(r.stdout_text(), "ws-over-tls\n", "{r:?}");
    assert_eq!(r.exit_code(), Ok(4), "{r:?}");
    let input = ExecInput::with_stdin(b"ws through tls");
    let url = p.exec_url(&id, &["cat"], input.streams()).await;
    let r = sc::exec_ws_via(&tls, &url, V5, &input).await;
    assert_eq!(r.stdout_text(), "ws through tls", "{r:?}");
    assert_success(&r);

    // SPDY port-forward to httpd in the pod.
    let url = p.port_forward_url(&[8080]).await;
    let mut pf = PortForward::connect_via(&tls, &url).await.unwrap();
    let f = pf.request(8080, HTTP_GET).await;
    let text = f.text();
    assert!(
        text.contains(" 200") && text.contains("hi-from-httpd"),
        "{f:?}"
    );
    assert!(f.error.is_empty(), "{f:?}");
    drop(pf);

    // Plain HTTP to the TLS port gets no HTTP answer, let alone a 101.
    let url = p.exec_url(&id, &sh("echo at-last"), Streams::OUTPUT).await;
    let plain = url.replacen("https://", "http://", 1);
    let err = SpdyConn::connect(&plain, &[V4])
        .await
        .err()
        .expect("plain http to the TLS port was upgraded");
    assert_eq!(err.status, 0, "{err}");
    let err = sc::ws_connect(&plain, &[V5])
        .await
        .expect_err("plain http to the TLS port was upgraded");
    assert_eq!(err.status, 0, "{err}");

    // A client that does not trust the certificate fails the handshake.
    let untrusting = Dial::trusting(&stranger);
    let err = SpdyConn::connect_via(&untrusting, "POST", &url, &[V4])
        .await
        .err()
        .expect("a client that does not trust the certificate got through");
    assert_eq!(err.status, 0, "{err}");
    assert!(err.body.contains("certificate"), "{err}");
    let err = sc::ws_connect_via(&untrusting, &url, &[V5])
        .await
        .expect_err("a client that does not trust the certificate got through");
    assert_eq!(err.status, 0, "{err}");
    assert!(err.body.contains("certificate"), "{err}");

    // None of those reached the HTTP server: the token is still unspent.
    let r = sc::exec_spdy_via(&tls, &url, V4, &ExecInput::output()).await;
    assert_eq!(r.stdout_text(), "at-last\n", "{r:?}");
    assert_success(&r);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_attach_and_port_forward_requests_are_validated() {
    let mut p = pod().await;
    let id = p.idle("target").await;
    let code = |r: Result<String, tonic::Status>| r.expect_err("accepted").code();

    let r = p
        .try_exec(exec_request(
            "no-such-container",
            &["true"],
            Streams::OUTPUT,
        ))
        .await;
    assert_eq!(code(r), Code::NotFound);
    let r = p.try_exec(exec_request(&id, &[], Streams::OUTPUT)).await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = p
        .try_exec(exec_request(&id, &["true"], Streams::default()))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);

    let created = p.create(p.config("created", &["true"])).await.unwrap();
    let r = p
        .try_exec(exec_request(&created, &["true"], Streams::OUTPUT))
        .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    let exited = p.run(p.config("exited", &["true"])).await;
    p.wait_exit(&exited).await;
    let r = p
        .try_exec(exec_request(&exited, &["true"], Streams::OUTPUT))
        .await;
    assert_eq!(code(r), Code::FailedPrecondition);

    let r = p
        .try_attach(attach_request("no-such-container", Streams::OUTPUT))
        .await;
    assert_eq!(code(r), Code::NotFound);
    let r = p.try_attach(attach_request(&id, Streams::default())).await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = p.try_attach(attach_request(&exited, Streams::OUTPUT)).await;
    assert_eq!(code(r), Code::FailedPrecondition);

    let r = p.try_port_forward("no-such-sandbox", &[80]).await;
    assert_eq!(code(r), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_execs() {
    let mut p = pod().await;
    let id = p.idle("target").await;
    let mut urls = Vec::new();
    for i in 0..20 {
        urls.push(
            p.exec_url(&id, &sh(&format!("echo {i}")), Streams::OUTPUT)
                .await,
        );
    }
    let runs: Vec<_> = urls
        .into_iter()
        .map(|url| tokio::spawn(async move { sc::exec_spdy(&url, V4, &ExecInput::output()).await }))
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let r = run.await.unwrap_or_else(|e| panic!("exec {i}: {e}"));
        assert_eq!(r.stdout_text(), format!("{i}\n"), "exec {i}: {r:?}");
        assert_success(&r);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_client_leaves_no_process_behind() {
    let mut p = pod().await;
    let id = p.idle("target").await;
    for (transport, streams, seconds) in [
        ("spdy", Streams::ALL, "98765"),
        ("spdy with a tty", Streams::TTY, "98766"),
        ("websocket", Streams::ALL, "98767"),
    ] {
        let args = ["sleep", seconds];
        let url = p.exec_url(&id, &args, streams).await;
        let s = if transport == "websocket" {
            Session::ws(&url, &[V5], streams).await.unwrap()
        } else {
            Session::spdy(&url, &[V4], streams).await.unwrap()
        };
        assert!(
            eventually(sc::TIMEOUT, || !processes_with_args(&args).is_empty()).await,
            "{transport}: the exec'd sleep never started; {}",
            s.summary()
        );
        // The client dies: its TCP connection closes without another frame.
        drop(s);
        if !eventually(Duration::from_secs(10), || {
            processes_with_args(&args).is_empty()
        })
        .await
        {
            let ps = p.exec_sync(&id, &["ps"]).await;
            panic!(
                "{transport}: `sleep {seconds}` outlived its client: pids {:?}; ps in the container:\n{}",
                processes_with_args(&args),
                String::from_utf8_lossy(&ps.stdout)
            );
        }
    }
    // The container is untouched.
    assert_eq!(
        p.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
}
