//! Prometheus metrics: named counters and gauges with labels, rendered as the text
//! exposition format at `/metrics` (SPEC M5). No I/O here; the API serves the text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

type Key = (&'static str, Vec<(&'static str, String)>);

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, u64>>,
    gauges: Mutex<BTreeMap<Key, i64>>,
    help: Mutex<BTreeMap<&'static str, (&'static str, &'static str)>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn describe(&self, name: &'static str, kind: &'static str, help: &'static str) {
        if let Ok(mut h) = self.help.lock() {
            h.entry(name).or_insert((kind, help));
        }
    }

    /// Adds `by` to the counter `name{labels}`.
    pub fn inc(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        by: u64,
    ) {
        self.describe(name, "counter", help);
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        if let Ok(mut c) = self.counters.lock() {
            *c.entry(key).or_default() += by;
        }
    }

    /// Moves the gauge `name{labels}` by `delta`.
    pub fn add_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        delta: i64,
    ) {
        self.describe(name, "gauge", help);
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        if let Ok(mut g) = self.gauges.lock() {
            *g.entry(key).or_default() += delta;
        }
    }

    /// The current value of a counter (for tests and health views).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        let key: Key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.get(&key).copied())
            .unwrap_or(0)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let help = self.help.lock().map(|h| h.clone()).unwrap_or_default();
        let mut out = String::new();
        let mut section = |name: &str, values: Vec<(String, String)>| {
            if let Some((kind, text)) = help.get(name) {
                let _ = writeln!(out, "# HELP {name} {text}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            for (labels, v) in values {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let mut by_name: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
        if let Ok(c) = self.counters.lock() {
            for ((name, labels), v) in c.iter() {
                by_name
                    .entry(name)
                    .or_default()
                    .push((fmt_labels(labels), v.to_string()));
            }
        }
        if let Ok(g) = self.gauges.lock() {
            for ((name, labels), v) in g.iter() {
                by_name
                    .entry(name)
                    .or_default()
                    .push((fmt_labels(labels), v.to_string()));
            }
        }
        for (name, values) in by_name {
            section(name, values);
        }
        out
    }
}

fn fmt_labels(labels: &[(&'static str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Part of M5: the text format (the served endpoint is tested end to end).
    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.inc("ota_x_total", "X events.", &[("kind", "a\"b")], 2);
        m.inc("ota_x_total", "X events.", &[("kind", "a\"b")], 1);
        m.add_gauge("ota_online", "Online devices.", &[], 5);
        m.add_gauge("ota_online", "Online devices.", &[], -2);
        let text = m.render();
        assert!(
            text.contains("# TYPE ota_x_total counter\nota_x_total{kind=\"a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ota_online gauge\nota_online 3\n"),
            "{text}"
        );
        assert_eq!(m.counter("ota_x_total", &[("kind", "a\"b")]), 3);
    }
}
