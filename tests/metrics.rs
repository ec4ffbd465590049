//! Metrics: `stats --prometheus` parses with a real parser (the `prometheus_client` Python
//! package's text parser, Debian `python3-prometheus-client`), the `-o metrics=` HTTP endpoint
//! answers curl with the same metrics, every numeric stats figure is exported or deliberately
//! not, and `stats --watch` draws frames with rates and buckets by state.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{pattern, Mount, BIN};

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        key = s.name + "".join("{%s=%s}" % kv for kv in sorted(s.labels.items()))
        out[key] = {"type": fam.type, "value": s.value}
print(json.dumps(out))
"#;

/// Parses exposition text with prometheus_client; returns sample -> (type, value).
fn parse(text: &str) -> std::collections::HashMap<String, (String, f64)> {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (make deps installs python3-prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                (
                    s["type"].as_str().unwrap().to_string(),
                    s["value"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}

fn mount(extra: &str) -> Mount {
    let (dir, backing, cache) = common::backing_and_cache("bcl-metrics");
    fs::write(backing.join("f"), pattern(2 << 20, 5)).unwrap();
    let mut opts = format!("cache={},cache_size=64M", cache.display());
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    let m = Mount::over(dir, backing, &opts, &[]);
    common::stats(&m.mnt);
    m
}

fn prometheus(mnt: &Path) -> String {
    let out = Command::new(BIN)
        .args(["stats", "--prometheus"])
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn stats_prometheus_parses_with_a_real_parser_and_matches_stats() {
    require_fuse!();
    let m = mount("");
    fs::read(m.m("f")).unwrap();
    fs::read(m.m("f")).unwrap();
    let stats = common::stats(&m.mnt);
    let samples = parse(&prometheus(&m.mnt));
    // counters: the parser strips _total from the family, not from the sample
    let (kind, hits) = &samples["bcachefs_lite_cache_hits_total"];
    assert_eq!(kind, "counter");
    assert!(*hits >= stats["cache_hits"].as_f64().unwrap());
    assert_eq!(
        samples["bcachefs_lite_bucket_count"].1,
        stats["buckets_total"].as_f64().unwrap()
    );
    let (kind, data) = &samples["bcachefs_lite_buckets{state=data}"];
    assert_eq!(kind, "gauge");
    assert_eq!(*data, stats["buckets_data"].as_f64().unwrap());
    assert!(samples.contains_key("bcachefs_lite_bucket_lists{list=free}"));
    let active = samples
        .iter()
        .find(|(k, _)| k.starts_with("bcachefs_lite_cache_active"))
        .unwrap();
    assert_eq!(active.1 .1, 1.0);
    // every numeric figure is exported, or deliberately not
    for (k, v) in stats.as_object().unwrap() {
        if v.is_number() {
            let exported = bcachefs_lite::metrics::METRICS
                .iter()
                .any(|x| x.figure == k);
            assert!(
                exported || bcachefs_lite::metrics::NOT_EXPORTED.contains(&k.as_str()),
                "stats figure {k} is neither in metrics::METRICS nor in NOT_EXPORTED"
            );
        }
    }
}

#[test]
fn the_metrics_endpoint_answers_curl_on_loopback() {
    require_fuse!();
    // a free loopback port
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let m = mount(&format!("metrics={port}"));
    fs::read(m.m("f")).unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut body = String::new();
    for _ in 0..100 {
        let out = Command::new("curl")
            .args(["-sfS", "-i", &url])
            .output()
            .unwrap();
        if out.status.success() {
            body = String::from_utf8(out.stdout).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(
        body.contains("Content-Type: text/plain; version=0.0.4"),
        "{body}"
    );
    let text = &body[body.find("\r\n\r\n").unwrap() + 4..];
    let samples = parse(text);
    assert!(samples["bcachefs_lite_missed_bytes_total"].1 >= (2 << 20) as f64);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/nope"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

#[test]
fn metrics_needs_a_cache_and_a_good_address() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mnt) = (dir.path().join("b"), dir.path().join("m"));
    fs::create_dir(&b).unwrap();
    fs::create_dir(&mnt).unwrap();
    for (opts, why) in [
        ("metrics=9477", "needs a cache"),
        ("metrics=localhost:x", "not an address"),
    ] {
        let out = Command::new(BIN)
            .arg("mount")
            .arg(&b)
            .arg(&mnt)
            .args(["-f", "-o", opts])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{opts}: {err}");
        assert!(err.contains(why), "{opts}: {err}");
    }
}

#[test]
fn stats_watch_draws_frames_with_rates_and_buckets() {
    require_fuse!();
    let m = mount("");
    let out = Command::new(BIN)
        .args(["stats", "--watch", "--interval", "0.3", "--count", "2"])
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("\x1b[H\x1b[2J").count(), 2, "two frames");
    let last = text.rsplit("\x1b[H\x1b[2J").next().unwrap();
    for want in [
        "hit ratio",
        "reads/s",
        "throughput",
        "buckets",
        "data",
        "free_inc",
        "[active]",
    ] {
        assert!(last.contains(want), "no {want:?} in\n{last}");
    }
}
