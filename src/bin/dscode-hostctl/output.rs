//! What a person reads: the aligned host table, `status`, `info`, usage, log
//! lines and state events as text (every host-controlled string escaped),
//! or the reply as JSON under `--json`.

use std::borrow::Cow;
use std::io::Write;

use anyhow::Context as _;
use dscode_hostd::client::{GroupUsage, HostStatus, StateEvent};
use serde_json::Value;

use crate::escape::{esc, esc_json, esc_or_dash};
use crate::{Failure, complain};

pub(crate) fn print_host(v: &Value, json_out: bool) -> Result<(), Failure> {
    if json_out {
        return outln!("{v}");
    }
    match serde_json::from_value::<HostStatus>(v.clone()) {
        Ok(h) => write!(std::io::stdout().lock(), "{}", table(&[h])).map_err(Failure::from),
        Err(_) => outln!("{}", esc_json(&v.to_string())),
    }
}

pub(crate) fn print_info(v: &Value) -> Result<(), Failure> {
    write!(std::io::stdout().lock(), "{}", info_text(v)).map_err(Failure::from)
}

fn info_text(v: &Value) -> String {
    use std::fmt::Write as _;
    let s = |key: &str| esc(v[key].as_str().unwrap_or("?")).into_owned();
    let by_state = v["hostsByState"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{n} {}", esc(k)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "version   {}", s("version"));
    let _ = writeln!(
        out,
        "protocol  {}",
        esc_json(&v["protocolVersion"].to_string())
    );
    let _ = writeln!(out, "pid       {}", esc_json(&v["pid"].to_string()));
    let _ = writeln!(out, "socket    {}", s("socket"));
    let _ = writeln!(out, "started   {}", s("startedAt"));
    let _ = writeln!(out, "uptime    {}", fmt_ms(v["uptimeMs"].as_u64()));
    let _ = writeln!(
        out,
        "hosts     {}{}",
        esc_json(&v["hosts"].to_string()),
        if by_state.is_empty() {
            String::new()
        } else {
            format!(" ({by_state})")
        }
    );
    if let Some(e) = v["lastReloadError"].as_str() {
        let _ = writeln!(out, "reload    FAILED: {}", esc(e));
    }
    out
}

pub(crate) fn print_status(v: &Value) -> Result<(), Failure> {
    let Ok(h) = serde_json::from_value::<HostStatus>(v.clone()) else {
        return outln!("{}", esc_json(&v.to_string()));
    };
    write!(std::io::stdout().lock(), "{}", status_text(&h)).map_err(Failure::from)
}

fn status_text(h: &HostStatus) -> String {
    use std::fmt::Write as _;
    let mut out = table(std::slice::from_ref(h));
    out.push('\n');
    let _ = writeln!(out, "entry        {}", esc(&h.entry));
    let _ = writeln!(out, "node         {}", esc_or_dash(h.node.as_deref()));
    let _ = writeln!(out, "generation   {}", h.generation);
    let _ = writeln!(
        out,
        "budget       {} of {} restarts left",
        h.restart_budget.attempts_left, h.restart_budget.max_attempts
    );
    if let Some(t) = &h.next_restart_at {
        let _ = writeln!(out, "next restart {}", esc(t));
    }
    if let Some(t) = &h.started_at {
        let _ = writeln!(out, "started      {}", esc(t));
    }
    if let Some(mb) = h.memory_max_mb {
        let _ = writeln!(out, "memory max   {mb} MiB");
    }
    if let Some(p) = h.cpu_max_percent {
        let _ = writeln!(out, "cpu max      {p}%");
    }
    if let Some(e) = &h.last_exit {
        let _ = writeln!(
            out,
            "last exit    {} at {}",
            fmt_exit(e.code, e.signal),
            esc(&e.at)
        );
    }
    out
}

pub(crate) fn print_usage(u: &GroupUsage) -> Result<(), Failure> {
    let mem = u
        .rss_bytes
        .map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "-".into());
    let cpu = u
        .cpu_ms
        .map(|ms| format!("{:.2}s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "-".into());
    outln!("processes    {}", u.processes)?;
    outln!("memory       {mem}")?;
    outln!("cpu          {cpu}")
}

/// How `logs` prints a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogStyle {
    /// The `host.log`/`host.logs` item as JSON.
    Json,
    /// The text as the host wrote it (`--raw`).
    Raw,
    /// The text with control characters escaped (the default).
    Escaped,
}

pub(crate) fn print_log_line(v: &Value, style: LogStyle) -> Result<(), Failure> {
    if style == LogStyle::Json {
        return outln!("{v}");
    }
    if let Some(n) = v["lagged"].as_u64() {
        complain(&format!("fell {n} lines behind; output skipped"));
        return Ok(());
    }
    outln!("{}", log_text(v, style))
}

/// One log line for a person: `[stderr] ` before stderr lines.
fn log_text(v: &Value, style: LogStyle) -> String {
    let text = v["text"].as_str().unwrap_or("");
    let text = match style {
        LogStyle::Raw => Cow::Borrowed(text),
        _ => esc(text),
    };
    if v["stream"] == "stderr" {
        format!("[stderr] {text}")
    } else {
        text.into_owned()
    }
}

pub(crate) fn print_event(e: &StateEvent, json_out: bool) -> Result<(), Failure> {
    if json_out {
        let line = serde_json::to_string(e)
            .context("encoding an event")
            .map_err(Failure::Other)?;
        return outln!("{line}");
    }
    outln!("{}", event_text(e))
}

fn event_text(e: &StateEvent) -> String {
    let state = |s: Option<dscode_hostd::state::HostState>| {
        s.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
    };
    format!(
        "#{:<6} {}  {:<10} {:<24} {} -> {}  ({})",
        e.seq,
        esc(&e.at),
        format!("{:?}", e.kind).to_lowercase(),
        esc_or_dash(e.extension_id.as_deref()),
        state(e.from),
        state(e.to),
        esc(&e.reason)
    )
}

/// `EXTENSION  STATE  PID  UPTIME  RESTARTS  LAST EXIT`, aligned.
pub(crate) fn table(hosts: &[HostStatus]) -> String {
    let header = [
        "EXTENSION",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
    ];
    let rows: Vec<[String; 6]> = hosts
        .iter()
        .map(|h| {
            [
                esc(&h.extension_id).into_owned(),
                h.state.to_string(),
                h.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                fmt_ms(h.uptime_ms),
                h.restart_count.to_string(),
                h.last_exit
                    .as_ref()
                    .map(|e| fmt_exit(e.code, e.signal))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// `3m12s`, `45s`, `2h05m`, `1d03h`; `-` when unknown.
fn fmt_ms(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn fmt_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => signal_name(s),
        _ => "-".into(),
    }
}

fn signal_name(s: i32) -> String {
    let name = match s {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {s}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::escape::is_control;

    #[test]
    fn durations_read_like_uptimes() {
        assert_eq!(fmt_ms(None), "-");
        assert_eq!(fmt_ms(Some(999)), "0s");
        assert_eq!(fmt_ms(Some(45_000)), "45s");
        assert_eq!(fmt_ms(Some(192_000)), "3m12s");
        assert_eq!(fmt_ms(Some(7_500_000)), "2h05m");
        assert_eq!(fmt_ms(Some(97_200_000)), "1d03h");
    }

    #[test]
    fn exits_read_like_code_or_signal() {
        assert_eq!(fmt_exit(Some(3), None), "code 3");
        assert_eq!(fmt_exit(None, Some(9)), "SIGKILL");
        assert_eq!(fmt_exit(None, Some(64)), "signal 64");
    }

    fn hostile_status() -> HostStatus {
        use dscode_hostd::state::HostState;
        HostStatus {
            extension_id: "acme.x".into(),
            state: HostState::Crashed,
            pid: None,
            generation: 2,
            restart_count: 1,
            restart_budget: dscode_hostd::protocol::RestartBudget {
                max_attempts: 3,
                attempts_left: 2,
            },
            next_restart_at: Some("\x1b]0;next\x07".into()),
            started_at: Some("\x1b]0;started\x07".into()),
            uptime_ms: None,
            last_exit: Some(dscode_hostd::protocol::LastExit {
                code: Some(3),
                signal: None,
                at: "\x1b[31mat".into(),
            }),
            entry: "/ext/\x1b]52;c;ZXZpbA==\x07.js".into(),
            node: Some("\u{9b}node".into()),
            ready: false,
            ready_at: None,
            memory_max_mb: None,
            cpu_max_percent: None,
            leftover_pids: Vec::new(),
        }
    }

    fn assert_safe(what: &str, s: &str) {
        assert!(
            !s.chars().any(|c| is_control(c) && c != '\n'),
            "{what}: {s:?}"
        );
    }

    #[test]
    fn status_event_info_and_log_text_are_escaped() {
        let status = status_text(&hostile_status());
        assert_safe("status", &status);
        assert!(
            status.contains(r"/ext/\x1b]52;c;ZXZpbA==\x07.js"),
            "{status}"
        );
        assert!(
            status.contains(r"last exit    code 3 at \x1b[31mat"),
            "{status}"
        );

        let event = StateEvent {
            kind: dscode_hostd::client::EventKind::Transition,
            seq: 7,
            extension_id: Some("acme.\x1bx".into()),
            from: None,
            to: None,
            generation: None,
            pid: None,
            reason: "exited: \x1b]52;c;ZXZpbA==\x07\r\n".into(),
            at: "\x07".into(),
            status: None,
            missed: None,
        };
        let line = event_text(&event);
        assert_safe("event", &line);
        assert!(
            line.ends_with(r"(exited: \x1b]52;c;ZXZpbA==\x07\x0d\x0a)"),
            "{line}"
        );

        let info = info_text(&json!({
            "version": "1\x1b[2J",
            "protocolVersion": 1,
            "pid": 1,
            "socket": "/s\u{9b}",
            "startedAt": "\x07",
            "uptimeMs": 5,
            "hosts": 1,
            "hostsByState": {"\x1b[31m": 1},
            "lastReloadError": "bad key at \x1b]0;t\x07",
        }));
        assert_safe("info", &info);
        assert!(info.contains(r"FAILED: bad key at \x1b]0;t\x07"), "{info}");

        let line = json!({"stream": "stderr", "text": "\x1b[31merr"});
        assert_eq!(log_text(&line, LogStyle::Escaped), r"[stderr] \x1b[31merr");
        assert_eq!(log_text(&line, LogStyle::Raw), "[stderr] \x1b[31merr");
        let table = table(&[HostStatus {
            extension_id: "a\x1bb".into(),
            ..hostile_status()
        }]);
        assert_safe("table", &table);
    }
}
