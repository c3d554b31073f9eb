//! Scraping crustd's metrics endpoint: a free loopback port to serve it on, one scrape,
//! and the samples of a text exposition.

use std::collections::HashMap;
use std::io::{Read, Write};

/// A loopback port free for `metrics_address` (the listener is closed on return).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The top-level config line serving metrics on `port`.
pub fn config(port: u16) -> String {
    format!("metrics_address = \"127.0.0.1:{port}\"\n")
}

/// One `GET /metrics` with `accept` as the Accept header: the Content-Type and body.
/// Panics unless the answer is 200.
pub fn scrape(port: u16, accept: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// The samples of a text exposition by series (`name{labels}` as written), e.g.
/// `crust_monitors` or `crust_sandboxes{state="ready"}`.
pub fn samples(body: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad sample {line:?}"));
        assert!(
            samples.insert(name.to_string(), value).is_none(),
            "series twice: {line:?}"
        );
    }
    samples
}

/// The family names a text exposition declares in its TYPE lines.
pub fn families(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}
