//! The crustd metrics registry, built on prometheus-client, and its two text renderings.
//!
//! Counters and histograms are updated as RPCs, pulls and starts finish; gauges are
//! computed at scrape time by a source callback that a custom collector calls. The
//! HTTP endpoint that serves them is in [`endpoint`].

mod endpoint;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub use endpoint::{bind, serve_listener};

/// Upper bounds of the `crust_rpc_duration_seconds` buckets (seconds; `+Inf` is implicit).
const RPC_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Upper bounds of the `crust_image_pull_duration_seconds` buckets (seconds; `+Inf` is implicit).
const PULL_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Upper bounds of the sandbox and container start buckets (seconds; `+Inf` is implicit).
const START_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Content type of the Prometheus text exposition format 0.0.4.
const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Content type of the OpenMetrics text format 1.0.0.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A text exposition format the registry renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: what a scraper gets unless it asks for OpenMetrics.
    Prometheus,
    /// OpenMetrics text 1.0.0 (`# UNIT` lines, counters typed without `_total`, `# EOF`).
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// The format an `Accept` header prefers: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality at least that of plain text (as
    /// Prometheus does), the 0.0.4 text otherwise, so that `curl` and older scrapers
    /// see what they always saw.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or_default().to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(0.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

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

/// The labels of the per-RPC series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    /// The CRI method, e.g. `RunPodSandbox`.
    method: String,
    /// The gRPC status code name, e.g. `Ok`.
    code: String,
}

/// The label of the image pull series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullLabels {
    /// `success` or `failure`.
    result: &'static str,
}

/// A histogram family whose members all have the same buckets.
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What [`Metrics::timed`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// RunPodSandbox until the pod is ready (netns, CNI, pause running).
    Sandbox,
    /// StartContainer until the container's process runs.
    Container,
}

/// The crustd metrics registry; share it as `Arc<Metrics>`.
pub struct Metrics {
    /// Every metric below plus the scrape-time gauges, as prometheus-client encodes them.
    registry: Registry,
    /// RPC latency by method and code.
    rpc_duration: HistogramFamily<RpcLabels>,
    /// RPCs handled by method and code.
    rpc_requests: Family<RpcLabels, Counter>,
    /// Bytes downloaded by pulls, by result.
    pull_bytes: Family<PullLabels, Counter>,
    /// Pull durations by result.
    pull_duration: HistogramFamily<PullLabels>,
    /// Successful sandbox starts.
    sandbox_start: Histogram,
    /// Successful container starts.
    container_start: Histogram,
    /// Containers seen exiting OOMKilled.
    ooms: Counter,
    /// The scrape-time gauge callback, if installed (shared with the collector).
    gauges: Arc<RwLock<Option<GaugeSource>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Clamp an observed duration to a finite, non-negative number.
fn sane_seconds(seconds: f64) -> f64 {
    if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        0.0
    }
}

/// The RPC latency buckets.
fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BUCKETS.iter().copied())
}

/// The image pull duration buckets.
fn pull_histogram() -> Histogram {
    Histogram::new(PULL_BUCKETS.iter().copied())
}

/// The result label of a pull.
fn pull_result(ok: bool) -> PullLabels {
    PullLabels {
        result: if ok { "success" } else { "failure" },
    }
}

impl Metrics {
    /// Create a registry with every metric at zero and no gauge source.
    pub fn new() -> Self {
        let rpc_duration: HistogramFamily<RpcLabels> = Family::new_with_constructor(rpc_histogram);
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let pull_bytes = Family::<PullLabels, Counter>::default();
        let pull_duration: HistogramFamily<PullLabels> =
            Family::new_with_constructor(pull_histogram);
        // Both results exist from the start, so a rate over them never begins at a gap.
        for ok in [true, false] {
            drop(pull_bytes.get_or_create(&pull_result(ok)));
            drop(pull_duration.get_or_create(&pull_result(ok)));
        }
        let sandbox_start = Histogram::new(START_BUCKETS.iter().copied());
        let container_start = Histogram::new(START_BUCKETS.iter().copied());
        let ooms = Counter::default();
        let gauges = Arc::new(RwLock::new(None));

        // Names are given without the unit and `_total` suffixes and help without its
        // final period: prometheus-client adds them, and the exposed names are those
        // crustd always had.
        let mut registry = Registry::default();
        registry.register_with_unit(
            "crust_rpc_duration",
            "Latency of CRI RPCs in seconds, by method and status code",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        registry.register(
            "crust_rpc_requests",
            "CRI RPCs handled, by method and status code",
            rpc_requests.clone(),
        );
        registry.register_with_unit(
            "crust_image_pull",
            "Bytes downloaded by image pulls, by result",
            Unit::Bytes,
            pull_bytes.clone(),
        );
        registry.register_with_unit(
            "crust_image_pull_duration",
            "Duration of image pulls in seconds, by result",
            Unit::Seconds,
            pull_duration.clone(),
        );
        registry.register_with_unit(
            "crust_sandbox_start_duration",
            "Time from RunPodSandbox to the pod being ready (network and pause process), successful starts only",
            Unit::Seconds,
            sandbox_start.clone(),
        );
        registry.register_with_unit(
            "crust_container_start_duration",
            "Time StartContainer takes until the container's process runs, successful starts only",
            Unit::Seconds,
            container_start.clone(),
        );
        registry.register(
            "crust_containers_oom",
            "Containers that exited OOMKilled since crustd started",
            ooms.clone(),
        );
        registry.register_collector(Box::new(ScrapeGauges(Arc::clone(&gauges))));

        Metrics {
            registry,
            rpc_duration,
            rpc_requests,
            pull_bytes,
            pull_duration,
            sandbox_start,
            container_start,
            ooms,
            gauges,
        }
    }

    /// Record one finished CRI RPC: its method, status code name and latency.
    pub fn observe_rpc(&self, method: &str, code: &str, seconds: f64) {
        let labels = RpcLabels {
            method: method.to_owned(),
            code: code.to_owned(),
        };
        self.rpc_duration
            .get_or_create(&labels)
            .observe(sane_seconds(seconds));
        self.rpc_requests.get_or_create(&labels).inc();
    }

    /// Record one finished image pull: bytes downloaded, duration and whether it succeeded.
    pub fn observe_pull(&self, bytes: u64, seconds: f64, ok: bool) {
        let labels = pull_result(ok);
        self.pull_bytes.get_or_create(&labels).inc_by(bytes);
        self.pull_duration
            .get_or_create(&labels)
            .observe(sane_seconds(seconds));
    }

    /// Record one successful start of a sandbox or container that took `seconds`.
    pub fn observe_start(&self, what: Start, seconds: f64) {
        let histogram = match what {
            Start::Sandbox => &self.sandbox_start,
            Start::Container => &self.container_start,
        };
        histogram.observe(sane_seconds(seconds));
    }

    /// Run a start to its end and record its duration if it succeeded. Await it in
    /// the task that does the work (not the RPC's), so that a start kubelet gave up
    /// on is still counted when it finishes.
    pub async fn timed<T, E>(
        self: Arc<Self>,
        what: Start,
        start: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let begun = Instant::now();
        let result = start.await;
        if result.is_ok() {
            self.observe_start(what, begun.elapsed().as_secs_f64());
        }
        result
    }

    /// Count one container that exited OOMKilled.
    pub fn observe_oom(&self) {
        self.ooms.inc();
    }

    /// Install the callback that reports gauges at every scrape (replacing any earlier one).
    pub fn set_gauge_source(&self, f: Box<dyn Fn() -> Vec<Gauge> + Send + Sync>) {
        *self.gauges.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::from(f));
    }

    /// Render every metric in `format`. Calls the gauge source: run it off the async
    /// workers.
    pub fn render(&self, format: Format) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8192);
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The collector that asks the gauge source at each scrape.
struct ScrapeGauges(Arc<RwLock<Option<GaugeSource>>>);

impl fmt::Debug for ScrapeGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapeGauges").finish_non_exhaustive()
    }
}

impl Collector for ScrapeGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // Call the source without holding the lock: it may take its own.
        let source = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(source) = source else {
            return Ok(());
        };
        let gauges = source();
        // One family per name (a format may not repeat one), in first-seen order.
        let mut names: Vec<(&'static str, &'static str)> = Vec::new();
        for g in &gauges {
            if !names.iter().any(|(n, _)| *n == g.name) {
                names.push((g.name, g.help));
            }
        }
        for (name, help) in names {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for g in gauges.iter().filter(|g| g.name == name) {
                family.encode_family(&g.labels)?.encode_gauge(&g.value)?;
            }
        }
        Ok(())
    }
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
    /// Parse a whole exposition, checking HELP/TYPE lines precede each family's samples
    /// and, for OpenMetrics, that it ends with `# EOF`.
    fn parse(text: &str) -> Vec<Sample> {
        let mut typed = Vec::new();
        let mut samples = Vec::new();
        let mut eof = false;
        for line in text.lines() {
            assert!(!eof, "line after # EOF: {line:?}");
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "{line:?}"
                );
                typed.push(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# UNIT ") {
                let (name, unit) = rest.split_once(' ').unwrap();
                assert!(name.ends_with(&format!("_{unit}")), "{line:?}");
            } else if line == "# EOF" {
                eof = true;
            } else if line.starts_with("# HELP ") {
            } else {
                assert!(!line.starts_with('#'), "{line:?}");
                let s = parse_sample(line);
                assert!(
                    typed.last().is_some_and(|t| s.0 == *t
                        || s.0
                            .strip_prefix(t.as_str())
                            .is_some_and(|x| x.starts_with('_'))),
                    "sample outside its family: {line:?}"
                );
                samples.push(s);
            }
        }
        samples
    }

    /// Render in the Prometheus text format and parse.
    fn scrape(m: &Metrics) -> Vec<Sample> {
        parse(&m.render(Format::Prometheus).unwrap())
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
        m.observe_rpc("Version", "Ok", 0.0002);
        m.observe_rpc("Version", "Ok", 0.003);
        m.observe_rpc("Version", "Ok", 0.5);
        m.observe_rpc("Version", "Ok", 100.0);
        m.observe_rpc("Version", "NotFound", 1.0);
        let text = m.render(Format::Prometheus).unwrap();
        let s = parse(&text);
        let ok = [("method", "Version"), ("code", "Ok")];
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
        assert_eq!(bucket("60"), 3.0, "le written as before: 60, not 60.0");
        assert_eq!(bucket("+Inf"), 4.0);
        // 16 finite buckets + Inf, non-decreasing, in order.
        let buckets: Vec<&Sample> = s
            .iter()
            .filter(|(n, l, _)| n == "crust_rpc_duration_seconds_bucket" && l[1].1 == "Ok")
            .collect();
        assert_eq!(buckets.len(), 17);
        assert!(buckets.windows(2).all(|w| w[0].2 <= w[1].2));
        assert_eq!(buckets.last().unwrap().1[2].1, "+Inf");
        let nf = [("method", "Version"), ("code", "NotFound")];
        assert_eq!(get(&s, "crust_rpc_requests_total", &nf), 1.0);
        let nf_bucket = |le| {
            get(
                &s,
                "crust_rpc_duration_seconds_bucket",
                &[nf[0], nf[1], ("le", le)],
            )
        };
        assert_eq!(nf_bucket("0.5"), 0.0);
        assert_eq!(nf_bucket("1"), 1.0);
        assert!(text.contains("# TYPE crust_rpc_duration_seconds histogram\n"));
        assert!(text.contains("# TYPE crust_rpc_requests_total counter\n"));
        // Labels in the order they always had: method, then code.
        assert!(text.contains("crust_rpc_requests_total{method=\"Version\",code=\"Ok\"} 4\n"));
        // Bad durations do not poison the sum.
        m.observe_rpc("x", "Ok", f64::NAN);
        m.observe_rpc("x", "Ok", -1.0);
        let s = scrape(&m);
        let x = [("method", "x"), ("code", "Ok")];
        assert_eq!(get(&s, "crust_rpc_duration_seconds_sum", &x), 0.0);
        assert_eq!(get(&s, "crust_rpc_duration_seconds_count", &x), 2.0);
    }

    #[test]
    fn pulls() {
        let m = Metrics::new();
        let s = scrape(&m);
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
        let s = scrape(&m);
        let ok = ("result", "success");
        let bad = ("result", "failure");
        assert_eq!(get(&s, "crust_image_pull_bytes_total", &[ok]), 1500.0);
        assert_eq!(get(&s, "crust_image_pull_bytes_total", &[bad]), 7.0);
        let bucket = |result, le| {
            get(
                &s,
                "crust_image_pull_duration_seconds_bucket",
                &[result, ("le", le)],
            )
        };
        assert_eq!(bucket(ok, "2.5"), 0.0);
        assert_eq!(bucket(ok, "5"), 1.0);
        assert_eq!(bucket(ok, "300"), 1.0);
        assert_eq!(bucket(ok, "+Inf"), 2.0);
        assert_eq!(bucket(bad, "0.1"), 1.0);
        assert_eq!(
            get(&s, "crust_image_pull_duration_seconds_count", &[ok]),
            2.0
        );
        assert_eq!(
            get(&s, "crust_image_pull_duration_seconds_sum", &[ok]),
            403.0
        );
        assert_eq!(
            s.iter()
                .filter(|x| x.0 == "crust_image_pull_duration_seconds_bucket")
                .count(),
            22
        );
    }

    #[tokio::test]
    async fn starts_and_ooms() {
        let m = Arc::new(Metrics::new());
        let s = scrape(&m);
        assert_eq!(
            get(&s, "crust_sandbox_start_duration_seconds_count", &[]),
            0.0
        );
        assert_eq!(
            get(&s, "crust_container_start_duration_seconds_count", &[]),
            0.0
        );
        assert_eq!(get(&s, "crust_containers_oom_total", &[]), 0.0);

        m.observe_start(Start::Sandbox, 0.3);
        m.observe_start(Start::Sandbox, 70.0);
        let ok: Result<u8, ()> = m.clone().timed(Start::Container, async { Ok(1) }).await;
        assert_eq!(ok, Ok(1));
        let failed: Result<u8, &str> = m
            .clone()
            .timed(Start::Container, async { Err("runc create failed") })
            .await;
        assert!(failed.is_err());
        m.observe_oom();
        m.observe_oom();

        let s = scrape(&m);
        let sandbox = |le| {
            get(
                &s,
                "crust_sandbox_start_duration_seconds_bucket",
                &[("le", le)],
            )
        };
        assert_eq!(sandbox("0.25"), 0.0);
        assert_eq!(sandbox("0.5"), 1.0);
        assert_eq!(sandbox("60"), 1.0);
        assert_eq!(sandbox("120"), 2.0);
        assert_eq!(sandbox("+Inf"), 2.0);
        assert_eq!(
            get(&s, "crust_sandbox_start_duration_seconds_sum", &[]),
            70.3
        );
        assert_eq!(
            get(&s, "crust_container_start_duration_seconds_count", &[]),
            1.0,
            "only the successful start is timed"
        );
        assert_eq!(
            get(
                &s,
                "crust_container_start_duration_seconds_bucket",
                &[("le", "0.01")]
            ),
            1.0
        );
        assert_eq!(get(&s, "crust_containers_oom_total", &[]), 2.0);
    }

    #[test]
    fn label_escaping() {
        let m = Metrics::new();
        let nasty = "a\\b\"c\nd";
        m.observe_rpc(nasty, "Ok", 0.1);
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = m.render(format).unwrap();
            assert!(text.contains(r#"method="a\\b\"c\nd""#), "{text}");
            assert!(text.lines().all(|l| !l.is_empty()));
            let s = parse(&text);
            assert_eq!(
                get(
                    &s,
                    "crust_rpc_requests_total",
                    &[("method", nasty), ("code", "Ok")]
                ),
                1.0
            );
        }
    }

    /// A gauge source like crustd's, counting its calls.
    fn gauge_source(m: &Metrics) -> Arc<std::sync::atomic::AtomicUsize> {
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
        calls
    }

    #[test]
    fn gauges_at_scrape_time() {
        let m = Metrics::new();
        let before = scrape(&m);
        assert!(
            before.iter().all(|s| s.0 != "crust_monitors"),
            "no source, no gauges"
        );
        let calls = gauge_source(&m);
        let text = m.render(Format::Prometheus).unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        let s = parse(&text);
        assert_eq!(get(&s, "crust_sandboxes", &[("state", "ready")]), 3.0);
        assert_eq!(get(&s, "crust_sandboxes", &[("state", "notready")]), 1.0);
        assert_eq!(get(&s, "crust_containers", &[("state", "exited")]), 0.5);
        assert_eq!(get(&s, "crust_monitors", &[]), 2.0);
        assert!(text.contains("# HELP crust_monitors Running container monitors.\n# TYPE crust_monitors gauge\ncrust_monitors 2.0\n"), "{text}");
        // Samples sharing a name form one family, even when the source interleaves them.
        assert_eq!(text.matches("# TYPE crust_sandboxes gauge").count(), 1);
        assert_eq!(text.matches("# TYPE crust_containers gauge").count(), 1);
        m.render(Format::OpenMetrics).unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    /// Every family name in a rendering, from its TYPE lines.
    fn families(text: &str) -> Vec<String> {
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn names_are_the_ones_crustd_always_exposed() {
        let m = Metrics::new();
        gauge_source(&m);
        m.observe_rpc("Version", "Ok", 0.1);
        let text = m.render(Format::Prometheus).unwrap();
        assert_eq!(
            families(&text),
            [
                "crust_container_start_duration_seconds",
                "crust_containers",
                "crust_containers_oom_total",
                "crust_image_pull_bytes_total",
                "crust_image_pull_duration_seconds",
                "crust_monitors",
                "crust_rpc_duration_seconds",
                "crust_rpc_requests_total",
                "crust_sandbox_start_duration_seconds",
                "crust_sandboxes",
            ]
        );
        assert!(text.contains(
            "# HELP crust_rpc_requests_total CRI RPCs handled, by method and status code.\n"
        ));
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("# UNIT"));
    }

    #[test]
    fn openmetrics_has_the_same_series() {
        let m = Metrics::new();
        gauge_source(&m);
        m.observe_rpc("PullImage", "Ok", 2.0);
        m.observe_pull(10, 2.0, true);
        m.observe_start(Start::Sandbox, 1.0);
        m.observe_oom();
        let text = m.render(Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        // OpenMetrics types a counter by its name without `_total` and declares units.
        assert!(text.contains("# TYPE crust_rpc_requests counter\n"));
        assert!(text.contains(
            "# TYPE crust_image_pull_bytes counter\n# UNIT crust_image_pull_bytes bytes\n"
        ));
        assert!(text.contains("# UNIT crust_rpc_duration_seconds seconds\n"));
        assert!(text.contains("crust_containers_oom_total 1\n"));
        // The same samples as in the 0.0.4 text, bucket bounds compared as numbers.
        let key = |s: &Sample| {
            let mut labels: Vec<(String, String)> =
                s.1.iter()
                    .map(|(k, v)| match (k.as_str(), v.parse::<f64>()) {
                        ("le", Ok(le)) => (k.clone(), le.to_string()),
                        _ => (k.clone(), v.clone()),
                    })
                    .collect();
            // OpenMetrics writes `le` first; order carries no meaning.
            labels.sort();
            (s.0.clone(), labels, s.2.to_bits())
        };
        let mut om: Vec<_> = parse(&text).iter().map(key).collect();
        let mut prom: Vec<_> = scrape(&m).iter().map(key).collect();
        om.sort();
        prom.sort();
        assert_eq!(om, prom);
    }

    #[test]
    fn accept_header_picks_the_format() {
        use Format::*;
        let cases = [
            (None, Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("application/openmetrics-text"), OpenMetrics),
            // What Prometheus sends by default.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                OpenMetrics,
            ),
            (
                Some("text/plain;q=1, application/openmetrics-text;q=0.5"),
                Prometheus,
            ),
            (Some("Application/OpenMetrics-Text; q=0"), Prometheus),
            (Some("application/openmetrics-text; q=bogus"), Prometheus),
            (Some("application/json"), Prometheus),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
        assert_eq!(
            Prometheus.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(
            OpenMetrics
                .content_type()
                .starts_with("application/openmetrics-text; version=1.0.0")
        );
    }
}
