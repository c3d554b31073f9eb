//! A small, dependency-free Prometheus metrics registry and its HTTP endpoint.
//!
//! Renders the text exposition format 0.0.4. Counters and histograms are updated under a
//! briefly held mutex; gauges are computed at scrape time by a source callback.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Upper bounds of the `crust_rpc_duration_seconds` buckets (seconds; `+Inf` is implicit).
const RPC_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Upper bounds of the `crust_image_pull_duration_seconds` buckets (seconds; `+Inf` is implicit).
const PULL_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Largest accepted HTTP request head, in bytes.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its whole request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client gets to accept the whole response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; further clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// Content type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One gauge sample reported by the gauge source at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauge {
    /// Metric name, e.g. `crust_sandboxes`.
    pub name: &'static str,
    /// Help text (samples sharing a name should share it; the first one wins).
    pub help: &'static str,
    /// Label pairs, e.g. `[("state", "ready".into())]`.
    pub labels: Vec<(&'static str, String)>,
    /// Current value.
    pub value: f64,
}

/// Callback producing the gauges at scrape time.
type GaugeSource = Arc<dyn Fn() -> Vec<Gauge> + Send + Sync>;

/// A fixed-bucket histogram (per-bucket, non-cumulative counts).
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    /// An empty histogram with the given bucket upper bounds.
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    /// Count one observation into its bucket, the count and the sum.
    fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.count += 1;
        self.sum += v;
    }
}

/// Totals of image pulls with one result.
#[derive(Debug, Clone)]
struct PullStats {
    bytes: u64,
    duration: Histogram,
}

/// Image pull totals by result.
#[derive(Debug)]
struct Pulls {
    success: PullStats,
    failure: PullStats,
}

/// The crustd metrics registry; share it as `Arc<Metrics>`.
pub struct Metrics {
    /// RPC latency histograms by method, then code (the request counter is their count).
    rpc: Mutex<HashMap<String, HashMap<String, Histogram>>>,
    /// Image pull totals by result.
    pulls: Mutex<Pulls>,
    /// The scrape-time gauge callback, if installed.
    gauges: RwLock<Option<GaugeSource>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Lock a mutex, ignoring poisoning (every update leaves the data consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Clamp an observed duration to a finite, non-negative number.
fn sane_seconds(seconds: f64) -> f64 {
    if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        0.0
    }
}

impl Metrics {
    /// Create an empty registry.
    pub fn new() -> Self {
        let stats = || PullStats {
            bytes: 0,
            duration: Histogram::new(PULL_BUCKETS),
        };
        Metrics {
            rpc: Mutex::new(HashMap::new()),
            pulls: Mutex::new(Pulls {
                success: stats(),
                failure: stats(),
            }),
            gauges: RwLock::new(None),
        }
    }

    /// Record one finished CRI RPC: its method, status code name and latency.
    pub fn observe_rpc(&self, method: &str, code: &str, seconds: f64) {
        let seconds = sane_seconds(seconds);
        let mut rpc = lock(&self.rpc);
        let by_code = match rpc.get_mut(method) {
            Some(m) => m,
            None => rpc.entry(method.to_owned()).or_default(),
        };
        match by_code.get_mut(code) {
            Some(h) => h.observe(seconds),
            None => by_code
                .entry(code.to_owned())
                .or_insert_with(|| Histogram::new(RPC_BUCKETS))
                .observe(seconds),
        }
    }

    /// Record one finished image pull: bytes downloaded, duration and whether it succeeded.
    pub fn observe_pull(&self, bytes: u64, seconds: f64, ok: bool) {
        let seconds = sane_seconds(seconds);
        let mut pulls = lock(&self.pulls);
        let stats = if ok {
            &mut pulls.success
        } else {
            &mut pulls.failure
        };
        stats.bytes = stats.bytes.saturating_add(bytes);
        stats.duration.observe(seconds);
    }

    /// Install the callback that reports gauges at every scrape (replacing any earlier one).
    pub fn set_gauge_source(&self, f: Box<dyn Fn() -> Vec<Gauge> + Send + Sync>) {
        *self.gauges.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::from(f));
    }

    /// Render every metric in the text exposition format 0.0.4, sorted by name then labels.
    pub fn render(&self) -> String {
        let mut families = Vec::new();

        let mut durations = Vec::new();
        let mut requests = Vec::new();
        for (method, by_code) in lock(&self.rpc).iter() {
            for (code, h) in by_code {
                let labels = vec![
                    ("method".to_owned(), method.clone()),
                    ("code".to_owned(), code.clone()),
                ];
                requests.push(Series {
                    labels: labels.clone(),
                    value: Value::Count(h.count),
                });
                durations.push(Series {
                    labels,
                    value: Value::Histogram(h.clone()),
                });
            }
        }
        families.push(Family::new(
            "crust_rpc_duration_seconds",
            "Latency of CRI RPCs in seconds, by method and status code.",
            "histogram",
            durations,
        ));
        families.push(Family::new(
            "crust_rpc_requests_total",
            "CRI RPCs handled, by method and status code.",
            "counter",
            requests,
        ));

        let (success, failure) = {
            let pulls = lock(&self.pulls);
            (pulls.success.clone(), pulls.failure.clone())
        };
        let result = |r: &str| vec![("result".to_owned(), r.to_owned())];
        families.push(Family::new(
            "crust_image_pull_bytes_total",
            "Bytes downloaded by image pulls, by result.",
            "counter",
            vec![
                Series {
                    labels: result("success"),
                    value: Value::Count(success.bytes),
                },
                Series {
                    labels: result("failure"),
                    value: Value::Count(failure.bytes),
                },
            ],
        ));
        families.push(Family::new(
            "crust_image_pull_duration_seconds",
            "Duration of image pulls in seconds, by result.",
            "histogram",
            vec![
                Series {
                    labels: result("success"),
                    value: Value::Histogram(success.duration),
                },
                Series {
                    labels: result("failure"),
                    value: Value::Histogram(failure.duration),
                },
            ],
        ));

        // Call the source without holding any lock: it may take its own.
        let source = self
            .gauges
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(source) = source {
            let mut by_name: Vec<Family> = Vec::new();
            for g in source() {
                let series = Series {
                    labels: g
                        .labels
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                    value: Value::Gauge(g.value),
                };
                match by_name.iter_mut().find(|f| f.name == g.name) {
                    Some(f) => f.series.push(series),
                    None => by_name.push(Family::new(g.name, g.help, "gauge", vec![series])),
                }
            }
            families.extend(by_name);
        }

        families.sort_by(|a, b| a.name.cmp(b.name));
        let mut out = String::with_capacity(4096);
        for family in &mut families {
            family.render(&mut out);
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The value of one series.
enum Value {
    Count(u64),
    Gauge(f64),
    Histogram(Histogram),
}

/// One labelled series of a family.
struct Series {
    labels: Vec<(String, String)>,
    value: Value,
}

/// A metric family: name, help, type and series.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    series: Vec<Series>,
}

impl Family {
    /// Assemble a family.
    fn new(
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        series: Vec<Series>,
    ) -> Self {
        Family {
            name,
            help,
            kind,
            series,
        }
    }

    /// Append the HELP and TYPE lines and every series, sorted by labels.
    fn render(&mut self, out: &mut String) {
        self.series.sort_by(|a, b| a.labels.cmp(&b.labels));
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for s in &self.series {
            match &s.value {
                Value::Count(v) => sample(out, self.name, "", &s.labels, None, &v.to_string()),
                Value::Gauge(v) => sample(out, self.name, "", &s.labels, None, &fmt_float(*v)),
                Value::Histogram(h) => {
                    let mut cumulative = 0;
                    for (bound, count) in h.bounds.iter().zip(&h.counts) {
                        cumulative += count;
                        let le = fmt_float(*bound);
                        sample(
                            out,
                            self.name,
                            "_bucket",
                            &s.labels,
                            Some(&le),
                            &cumulative.to_string(),
                        );
                    }
                    sample(
                        out,
                        self.name,
                        "_bucket",
                        &s.labels,
                        Some("+Inf"),
                        &h.count.to_string(),
                    );
                    sample(out, self.name, "_sum", &s.labels, None, &fmt_float(h.sum));
                    sample(
                        out,
                        self.name,
                        "_count",
                        &s.labels,
                        None,
                        &h.count.to_string(),
                    );
                }
            }
        }
    }
}

/// Append one sample line `name_suffix{labels[,le]} value`.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(String, String)],
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    out.push_str(suffix);
    let le = le.map(|le| ("le", le));
    let mut pairs = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(le)
        .peekable();
    if pairs.peek().is_some() {
        out.push('{');
        for (i, (k, v)) in pairs.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label_into(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Escape a label value: backslash, double quote and newline.
fn escape_label_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escape help text: backslash and newline.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Format a float the way Prometheus parses it (`+Inf`, `-Inf`, `NaN`, else plain decimal).
fn fmt_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        }
    } else {
        v.to_string()
    }
}

/// Bind the metrics listener, returning it with its actual address (useful with port 0).
pub async fn bind(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serve `GET /metrics` on an already bound listener until `shutdown` completes.
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "metrics endpoint serving");
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => permit.map_err(io::Error::other)?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically EMFILE/ENFILE or an aborted handshake: back off, keep serving.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_connection(stream, &metrics, READ_TIMEOUT).await {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection failed");
            }
            drop(permit);
        });
    }
    tracing::info!("metrics endpoint stopped");
    Ok(())
}

/// Why reading a request head failed.
#[derive(Debug)]
enum HeadError {
    /// The head exceeded [`MAX_HEAD`].
    TooLarge,
    /// The client closed the connection before the head ended.
    Closed,
    /// A socket error.
    Io(io::Error),
}

/// Index just past the blank line ending the head, if the buffer holds one.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            None
        } else if buf.get(i + 1) == Some(&b'\n') {
            Some(i + 2)
        } else if buf.get(i + 1..i + 3) == Some(b"\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

/// Read the request head (up to the blank line), at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let searched = buf.len().saturating_sub(2);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[searched..]) {
            let end = searched + end;
            if end > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Serve one connection: read one request head, answer it, close.
async fn handle_connection(
    mut stream: TcpStream,
    metrics: &Metrics,
    read_timeout: Duration,
) -> io::Result<()> {
    let head = match tokio::time::timeout(read_timeout, read_head(&mut stream)).await {
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received in time",
            ));
        }
        Ok(Err(HeadError::Closed)) => return Ok(()),
        Ok(Err(HeadError::Io(e))) => return Err(e),
        Ok(Err(HeadError::TooLarge)) => {
            let response = response(
                "431 Request Header Fields Too Large",
                "",
                "request head too large\n",
                true,
            );
            return write_response(&mut stream, &response).await;
        }
        Ok(Ok(head)) => head,
    };
    let request_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let request_line = String::from_utf8_lossy(request_line);
    let mut parts = request_line.split_ascii_whitespace();
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let response = match (method, target, version) {
        (Some(method), Some(target), Some(version))
            if version.starts_with("HTTP/1.") && parts.next().is_none() =>
        {
            let path = target.split(['?', '#']).next().unwrap_or_default();
            let with_body = method != "HEAD";
            match (method, path) {
                ("GET" | "HEAD", "/metrics") => {
                    response("200 OK", "", &metrics.render(), with_body)
                }
                ("GET" | "HEAD", _) => {
                    response("404 Not Found", "", "not found; try /metrics\n", with_body)
                }
                _ => response(
                    "405 Method Not Allowed",
                    "Allow: GET, HEAD\r\n",
                    "method not allowed\n",
                    true,
                ),
            }
        }
        _ => response("400 Bad Request", "", "bad request\n", true),
    };
    write_response(&mut stream, &response).await
}

/// Build a complete `Connection: close` response.
fn response(status: &str, extra_headers: &str, body: &str, with_body: bool) -> Vec<u8> {
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Write a response and shut the write side down, within [`WRITE_TIMEOUT`].
async fn write_response(stream: &mut TcpStream, response: &[u8]) -> io::Result<()> {
    let write = async {
        stream.write_all(response).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response not accepted in time"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed sample: name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// Parse one sample line `name{k="v",...} value`, undoing label escapes.
    fn parse_sample(line: &str) -> Sample {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
        };
        let (name, rest) = match series.find('{') {
            Some(i) => (&series[..i], Some(&series[i + 1..])),
            None => (series, None),
        };
        assert!(!name.is_empty(), "{line:?}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        let mut labels = Vec::new();
        if let Some(rest) = rest {
            let mut chars = rest.chars();
            loop {
                let mut key = String::new();
                for c in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                if key == "}" {
                    break;
                }
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label {key:?} in {line:?}"
                );
                assert_eq!(chars.next(), Some('"'), "{line:?}");
                let mut value = String::new();
                loop {
                    match chars
                        .next()
                        .unwrap_or_else(|| panic!("unterminated {line:?}"))
                    {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        c => value.push(c),
                    }
                }
                labels.push((key, value));
                match chars.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("unexpected {other:?} in {line:?}"),
                }
            }
            assert_eq!(chars.next(), None, "{line:?}");
        }
        (name.to_owned(), labels, value)
    }

    /// Parse a whole exposition, checking HELP/TYPE lines precede each family's samples.
    fn parse(text: &str) -> Vec<Sample> {
        let mut typed = Vec::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "{line:?}"
                );
                typed.push(name.to_owned());
            } else if line.starts_with("# HELP ") {
            } else {
                assert!(!line.starts_with('#'), "{line:?}");
                let s = parse_sample(line);
                assert!(
                    typed.iter().any(|t| s.0 == *t
                        || s.0
                            .strip_prefix(t.as_str())
                            .is_some_and(|x| x.starts_with('_'))),
                    "sample before its TYPE: {line:?}"
                );
                samples.push(s);
            }
        }
        samples
    }

    /// The value of the single sample with exactly this name and these labels.
    fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.2)
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0]
    }

    #[test]
    fn rpc_counter_and_histogram() {
        let m = Metrics::new();
        m.observe_rpc("/runtime.v1.RuntimeService/Version", "OK", 0.0002);
        m.observe_rpc("/runtime.v1.RuntimeService/Version", "OK", 0.003);
        m.observe_rpc("/runtime.v1.RuntimeService/Version", "OK", 0.5);
        m.observe_rpc("/runtime.v1.RuntimeService/Version", "OK", 100.0);
        m.observe_rpc("/runtime.v1.RuntimeService/Version", "NotFound", 1.0);
        let text = m.render();
        let s = parse(&text);
        let ok = [
            ("method", "/runtime.v1.RuntimeService/Version"),
            ("code", "OK"),
        ];
        assert_eq!(get(&s, "crust_rpc_requests_total", &ok), 4.0);
        assert_eq!(get(&s, "crust_rpc_duration_seconds_count", &ok), 4.0);
        assert!((get(&s, "crust_rpc_duration_seconds_sum", &ok) - 100.5032).abs() < 1e-9);
        let bucket = |le: &str| {
            get(
                &s,
                "crust_rpc_duration_seconds_bucket",
                &[ok[0], ok[1], ("le", le)],
            )
        };
        assert_eq!(bucket("0.0005"), 1.0);
        assert_eq!(bucket("0.0025"), 1.0);
        assert_eq!(bucket("0.005"), 2.0);
        assert_eq!(bucket("0.25"), 2.0);
        assert_eq!(bucket("0.5"), 3.0, "upper bounds are inclusive");
        assert_eq!(bucket("60"), 3.0);
        assert_eq!(bucket("+Inf"), 4.0);
        // 16 finite buckets + Inf, non-decreasing, in order.
        let buckets: Vec<&Sample> = s
            .iter()
            .filter(|(n, l, _)| n == "crust_rpc_duration_seconds_bucket" && l[1].1 == "OK")
            .collect();
        assert_eq!(buckets.len(), 17);
        assert!(buckets.windows(2).all(|w| w[0].2 <= w[1].2));
        assert_eq!(buckets.last().unwrap().1[2].1, "+Inf");
        let nf = [
            ("method", "/runtime.v1.RuntimeService/Version"),
            ("code", "NotFound"),
        ];
        assert_eq!(get(&s, "crust_rpc_requests_total", &nf), 1.0);
        assert_eq!(
            get(
                &s,
                "crust_rpc_duration_seconds_bucket",
                &[nf[0], nf[1], ("le", "0.5")]
            ),
            0.0
        );
        assert_eq!(
            get(
                &s,
                "crust_rpc_duration_seconds_bucket",
                &[nf[0], nf[1], ("le", "1")]
            ),
            1.0
        );
        assert!(text.contains("# TYPE crust_rpc_duration_seconds histogram\n"));
        assert!(text.contains("# TYPE crust_rpc_requests_total counter\n"));
        // Sorted series: NotFound before OK.
        assert!(text.find("code=\"NotFound\"").unwrap() < text.find("code=\"OK\"").unwrap());
        // Bad durations do not poison the sum.
        m.observe_rpc("x", "OK", f64::NAN);
        m.observe_rpc("x", "OK", -1.0);
        let s = parse(&m.render());
        assert_eq!(
            get(
                &s,
                "crust_rpc_duration_seconds_sum",
                &[("method", "x"), ("code", "OK")]
            ),
            0.0
        );
    }

    #[test]
    fn pulls() {
        let m = Metrics::new();
        let s = parse(&m.render());
        assert_eq!(
            get(&s, "crust_image_pull_bytes_total", &[("result", "success")]),
            0.0
        );
        assert_eq!(
            get(
                &s,
                "crust_image_pull_duration_seconds_count",
                &[("result", "failure")]
            ),
            0.0
        );
        m.observe_pull(1000, 3.0, true);
        m.observe_pull(500, 400.0, true);
        m.observe_pull(7, 0.05, false);
        let s = parse(&m.render());
        let ok = ("result", "success");
        let bad = ("result", "failure");
        assert_eq!(get(&s, "crust_image_pull_bytes_total", &[ok]), 1500.0);
        assert_eq!(get(&s, "crust_image_pull_bytes_total", &[bad]), 7.0);
        assert_eq!(
            get(
                &s,
                "crust_image_pull_duration_seconds_bucket",
                &[ok, ("le", "2.5")]
            ),
            0.0
        );
        assert_eq!(
            get(
                &s,
                "crust_image_pull_duration_seconds_bucket",
                &[ok, ("le", "5")]
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                "crust_image_pull_duration_seconds_bucket",
                &[ok, ("le", "300")]
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                "crust_image_pull_duration_seconds_bucket",
                &[ok, ("le", "+Inf")]
            ),
            2.0
        );
        assert_eq!(
            get(&s, "crust_image_pull_duration_seconds_count", &[ok]),
            2.0
        );
        assert_eq!(
            get(&s, "crust_image_pull_duration_seconds_sum", &[ok]),
            403.0
        );
        assert_eq!(
            get(
                &s,
                "crust_image_pull_duration_seconds_bucket",
                &[bad, ("le", "0.1")]
            ),
            1.0
        );
        assert_eq!(
            s.iter()
                .filter(|x| x.0 == "crust_image_pull_duration_seconds_bucket")
                .count(),
            22
        );
    }

    #[test]
    fn label_escaping() {
        let m = Metrics::new();
        let nasty = "a\\b\"c\nd";
        m.observe_rpc(nasty, "OK", 0.1);
        let text = m.render();
        assert!(text.contains(r#"method="a\\b\"c\nd""#), "{text}");
        assert!(text.lines().all(|l| !l.is_empty()));
        let s = parse(&text);
        assert_eq!(
            get(
                &s,
                "crust_rpc_requests_total",
                &[("method", nasty), ("code", "OK")]
            ),
            1.0
        );
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn gauges_and_order() {
        let m = Metrics::new();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        m.set_gauge_source(Box::new(move || {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let g = |name, help, labels: Vec<(&'static str, String)>, value| Gauge {
                name,
                help,
                labels,
                value,
            };
            vec![
                g(
                    "crust_sandboxes",
                    "Pod sandboxes by state.",
                    vec![("state", "ready".into())],
                    3.0,
                ),
                g("crust_monitors", "Running container monitors.", vec![], 2.0),
                g(
                    "crust_containers",
                    "Containers by state.",
                    vec![("state", "running".into())],
                    4.0,
                ),
                g(
                    "crust_sandboxes",
                    "Pod sandboxes by state.",
                    vec![("state", "notready".into())],
                    1.0,
                ),
                g(
                    "crust_containers",
                    "Containers by state.",
                    vec![("state", "exited".into())],
                    0.5,
                ),
            ]
        }));
        let text = m.render();
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        let s = parse(&text);
        assert_eq!(get(&s, "crust_sandboxes", &[("state", "ready")]), 3.0);
        assert_eq!(get(&s, "crust_sandboxes", &[("state", "notready")]), 1.0);
        assert_eq!(get(&s, "crust_containers", &[("state", "exited")]), 0.5);
        assert_eq!(get(&s, "crust_monitors", &[]), 2.0);
        assert!(text.contains("# HELP crust_monitors Running container monitors.\n# TYPE crust_monitors gauge\ncrust_monitors 2\n"));
        assert_eq!(text.matches("# TYPE crust_sandboxes gauge").count(), 1);
        // Families sorted by name, series by labels.
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut sorted = types.clone();
        sorted.sort();
        assert_eq!(types, sorted);
        assert!(text.find("state=\"notready\"").unwrap() < text.find("state=\"ready\"").unwrap());
        // Stable across scrapes.
        assert_eq!(text, m.render());
        assert_eq!(fmt_float(f64::INFINITY), "+Inf");
        assert_eq!(fmt_float(f64::NAN), "NaN");
        assert_eq!(fmt_float(0.0005), "0.0005");
    }

    /// Send raw bytes, half-close, and read the whole response.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request).await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
            .await
            .expect("server closes the connection")?;
        Ok(out)
    }

    /// Split a raw response into status line, lower-cased headers and body.
    fn split_response(raw: &[u8]) -> (String, Vec<(String, String)>, String) {
        let text = String::from_utf8(raw.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("complete head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_owned();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        (status, headers, body.to_owned())
    }

    /// The value of a (lower-cased) header.
    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn http_endpoint() {
        let metrics = Arc::new(Metrics::new());
        metrics.observe_rpc("/runtime.v1.RuntimeService/Status", "OK", 0.01);
        metrics.set_gauge_source(Box::new(|| {
            vec![Gauge {
                name: "crust_monitors",
                help: "Running container monitors.",
                labels: vec![],
                value: 1.0,
            }]
        }));
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_ne!(addr.port(), 0);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_listener(listener, metrics.clone(), async move {
            let _ = stop_rx.await;
        }));

        let raw = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
        )
        .await
        .unwrap();
        let (status, headers, body) = split_response(&raw);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(header(&headers, "content-type"), Some(CONTENT_TYPE));
        assert_eq!(header(&headers, "connection"), Some("close"));
        assert_eq!(
            header(&headers, "content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            body.len()
        );
        let samples = parse(&body);
        assert!(body.lines().filter(|l| !l.starts_with('#')).count() == samples.len());
        let status_ok = [
            ("method", "/runtime.v1.RuntimeService/Status"),
            ("code", "OK"),
        ];
        assert_eq!(get(&samples, "crust_rpc_requests_total", &status_ok), 1.0);
        assert_eq!(get(&samples, "crust_monitors", &[]), 1.0);

        // Query strings are ignored; HEAD gets headers only.
        let raw = exchange(addr, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let (status, headers, body) = split_response(&raw);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            header(&headers, "content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap()
                > 0
        );
        assert!(body.is_empty());

        let raw = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (status, headers, body) = split_response(&raw);
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert_eq!(
            header(&headers, "content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            body.len()
        );

        let raw = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let (status, headers, _) = split_response(&raw);
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));

        let raw = exchange(addr, b"garbage\r\n\r\n").await.unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 400 "));

        // Oversized head: answered 431 (or reset) and closed promptly, long before the read timeout.
        let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        big.resize(3 * MAX_HEAD, b'a');
        let started = std::time::Instant::now();
        match exchange(addr, &big).await {
            Ok(raw) => assert!(
                raw.is_empty() || raw.starts_with(b"HTTP/1.1 431 "),
                "{:?}",
                String::from_utf8_lossy(&raw)
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ),
                "{e}"
            ),
        }
        assert!(started.elapsed() < Duration::from_secs(2));

        // Still serving; then shut down.
        let raw = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"));
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn slow_client_times_out() {
        let metrics = Metrics::new();
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (conn, _) = listener.accept().await.unwrap();
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let err = handle_connection(conn, &metrics, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
        let mut rest = Vec::new();
        assert_eq!(
            client.read_to_end(&mut rest).await.unwrap(),
            0,
            "closed without a response"
        );
    }

    #[tokio::test]
    async fn serving_stops_on_shutdown() {
        let metrics = Arc::new(Metrics::new());
        let (listener, _) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        serve_listener(listener, metrics, async {}).await.unwrap();
    }

    #[test]
    fn head_end_variants() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
