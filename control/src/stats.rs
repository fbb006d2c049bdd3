//! Control's own counters, rendered as Prometheus exposition text and
//! sent to the data plane each second, which serves them in the same
//! `/metrics` as its own (control has no HTTP endpoint of its own).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What happened to one accepted connection's handshake phase.
pub const OUTCOMES: [&str; 6] = ["ok", "refused", "failed", "timeout", "silent", "eof"];

/// The metrics control reports, with their help text.
const HELP: [(&str, &str, &str); 6] = [
    (
        "revtun_control_handshakes_total",
        "counter",
        "Connections to the control port by how their handshake phase ended (ok, refused, failed, timeout, silent: nothing within the first-byte deadline, eof).",
    ),
    (
        "revtun_control_messages_total",
        "counter",
        "Enrollment and hello messages by kind and outcome (ok, refused).",
    ),
    (
        "revtun_control_refusals_total",
        "counter",
        "Refused enrollments and hellos by reason (never told to the peer).",
    ),
    (
        "revtun_control_closed_at_accept_total",
        "counter",
        "Connections closed at accept: the source prefix's handshake rate, or a pending-handshake cap.",
    ),
    (
        "revtun_control_pending_handshakes",
        "gauge",
        "Handshakes in progress now.",
    ),
    (
        "revtun_control_dataplane_restarts_total",
        "counter",
        "Times control restarted the data plane after it exited.",
    ),
];

/// The counters (control's I/O runs on one thread).
#[derive(Debug, Default)]
pub struct Stats {
    counters: RefCell<BTreeMap<(&'static str, String), u64>>,
}

impl Stats {
    /// Adds one to `name{labels}`.
    pub fn inc(&self, name: &'static str, labels: String) {
        *self
            .counters
            .borrow_mut()
            .entry((name, labels))
            .or_insert(0) += 1;
    }

    /// The exposition text, with the gauges given.
    pub fn render(&self, pending: usize, restarts: u64) -> String {
        let counters = self.counters.borrow();
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match name {
                "revtun_control_pending_handshakes" => {
                    let _ = writeln!(out, "{name} {pending}");
                }
                "revtun_control_dataplane_restarts_total" => {
                    let _ = writeln!(out, "{name} {restarts}");
                }
                _ => {
                    for ((n, labels), v) in counters.iter() {
                        if *n == name {
                            let _ = writeln!(out, "{name}{{{labels}}} {v}");
                        }
                    }
                }
            }
        }
        out
    }
}

/// A label value from text we chose (reason names): lowercase words
/// joined by `_`.
pub fn reason_label(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let s = Stats::default();
        s.inc("revtun_control_handshakes_total", "outcome=\"ok\"".into());
        s.inc("revtun_control_handshakes_total", "outcome=\"ok\"".into());
        s.inc(
            "revtun_control_refusals_total",
            format!("reason=\"{}\"", reason_label("token already spent")),
        );
        let text = s.render(3, 1);
        assert!(
            text.contains("revtun_control_handshakes_total{outcome=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("revtun_control_refusals_total{reason=\"token_already_spent\"} 1\n"));
        assert!(text.contains("revtun_control_pending_handshakes 3\n"));
        assert!(text.contains("revtun_control_dataplane_restarts_total 1\n"));
        assert!(text
            .bytes()
            .all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
    }
}
