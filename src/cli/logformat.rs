//! The text format of `causeflow serve`'s log lines: tracing-subscriber's default ("full")
//! format without colour, line for line, written more cheaply, and never more than one line
//! per event.
//!
//! Why not the default? At thousands of alerts a second, formatting the two lines an alert
//! logs was about a tenth of the instructions the server ran (callgrind, `scripts/load`'s
//! request mix): every piece went through `core::fmt`, through colour wrappers that write
//! nothing when colour is off, and strings through `Debug` escaping char by char. Here the
//! timestamp's date and time are formatted once a second per thread, numbers and plain strings
//! are copied, and only values that need it are escaped.
//!
//! The one difference from the default: control characters in messages and in `%`/`?` values
//! are escaped (`\n`, `\u{1b}`), so a value can never start a line of its own. (The default
//! escapes only terminal escape characters in messages.)

use std::cell::RefCell;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The line format (`tracing_subscriber::fmt().event_format(Line)`).
pub struct Line;

/// The field format, for events and spans alike (`.fmt_fields(Fields)`).
pub struct Fields;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        timestamp(&mut w)?;
        // A line from the `log` crate arrives as an event of target `log`; its own target and
        // level are in its `log.*` fields, which the default format shows instead.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        w.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                w.write_str(span.metadata().name())?;
                seen = true;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        w.write_char('{')?;
                        w.write_str(fields)?;
                        w.write_char('}')?;
                    }
                }
                w.write_char(':')?;
            }
            if seen {
                w.write_char(' ')?;
            }
        }
        w.write_str(meta.target())?;
        w.write_str(": ")?;
        ctx.format_fields(w.by_ref(), event)?;
        w.write_char('\n')
    }
}

impl<'w> FormatFields<'w> for Fields {
    fn format_fields<R: RecordFields>(&self, mut w: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = Visitor {
            w: &mut w,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

/// `2026-11-29T04:06:13.008586Z `: the part up to the seconds changes once a second, so each
/// thread keeps it formatted.
fn timestamp(w: &mut Writer<'_>) -> fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, micros) = (now.as_secs(), now.subsec_micros());
    SECOND.with(|s| {
        let mut s = s.borrow_mut();
        if s.0 != secs {
            let at = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default();
            s.1.clear();
            let _ = write!(s.1, "{}", at.format("%Y-%m-%dT%H:%M:%S"));
            s.0 = secs;
        }
        w.write_str(&s.1)
    })?;
    fraction(w, micros)?;
    w.write_char('Z')
}

/// `.` and the microseconds as six digits, zero-padded.
fn fraction(w: &mut impl Write, micros: u32) -> fmt::Result {
    let mut buf = [0; 20];
    let digits = itoa(u64::from(micros.min(999_999)), &mut buf);
    w.write_str(&".000000"[..7 - digits.len()])?;
    w.write_str(digits)
}

struct Visitor<'a, 'w> {
    w: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_, '_> {
    /// Starts a field: the space before it, and its name (none for the message).
    fn start(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::replace(&mut self.first, false) {
            self.w.write_char(' ')?;
        }
        let name = field.name();
        if name != "message" {
            self.w.write_str(name.strip_prefix("r#").unwrap_or(name))?;
            self.w.write_char('=')?;
        }
        Ok(())
    }

    fn record(&mut self, field: &Field, f: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        // A `log` record's metadata, already shown as the line's target.
        if self.result.is_ok() && !field.name().starts_with("log.") {
            self.result = self.start(field).and_then(|_| f(self.w));
        }
    }
}

impl Visit for Visitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let message = field.name() == "message";
        self.record(field, |w| {
            if message {
                Escaped(w).write_str(value)
            } else if value
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
            {
                // What `Debug` writes for a string that needs no escaping, without its
                // char-by-char walk.
                w.write_char('"')?;
                w.write_str(value)?;
                w.write_char('"')
            } else {
                write!(w, "{value:?}")
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, |w| w.write_str(itoa(value, &mut [0; 20])));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, |w| {
            if value < 0 {
                w.write_char('-')?;
            }
            w.write_str(itoa(value.unsigned_abs(), &mut [0; 20]))
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, |w| write!(Escaped(w), "{value:?}"));
    }

    /// As the default: the error, then ` name.sources=[cause, its cause, …]` when it has causes.
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record(field, |w| {
            write!(Escaped(&mut *w), "{value}")?;
            let Some(mut cause) = value.source() else {
                return Ok(());
            };
            write!(w, " {}.sources=[", field.name())?;
            loop {
                write!(Escaped(&mut *w), "{cause}")?;
                match cause.source() {
                    Some(next) => {
                        w.write_str(", ")?;
                        cause = next;
                    }
                    None => break,
                }
            }
            w.write_char(']')
        });
    }
}

/// Decimal digits of `n`, in `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Writes through, escaping control characters (C0, DEL and C1), so that no value can break
/// the line or reach a terminal as a control sequence.
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Most values have none: bytes below a space, DEL, and 0xC2 (which leads U+0080 to
        // U+009F in UTF-8) are the only ways in, and a byte scan is far cheaper than decoding.
        if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            return self.0.write_str(s);
        }
        let control = |c: char| c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c);
        let mut rest = s;
        while let Some(at) = rest.find(control) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Out {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// An error with a chain of causes.
    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<dyn std::error::Error + 'static>>);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref()
        }
    }

    #[derive(Debug)]
    struct Thing {
        #[allow(dead_code)]
        n: u8,
    }

    fn events() {
        let span = tracing::info_span!(
            "request",
            request_id = %"4f1c-aa",
            method = %"POST",
            tenant = tracing::field::Empty,
            provider = Some("datadog")
        );
        span.record("tenant", tracing::field::display("acme"));
        let _outer = span.enter();
        tracing::info!(
            alerts = 3u64,
            created = 2usize,
            delta = -4i64,
            ok = true,
            "webhook accepted"
        );
        let bare = tracing::info_span!("bare");
        let _inner = bare.enter();
        tracing::warn!(error = %"db down", thing = ?Thing { n: 7 }, name = "plain", quoted = "say \"hi\"", "retrying {} of {}", 2, 5);
        drop(_inner);
        drop(_outer);
        tracing::error!(r#type = "x", opt = Option::<&str>::None, "no span");
        let cause = std::io::Error::other("disk gone");
        let err = Chain(
            "write failed",
            Some(Box::new(Chain("flush failed", Some(Box::new(cause))))),
        );
        tracing::warn!(
            error = &err as &(dyn std::error::Error + 'static),
            "with causes"
        );
        // A line from a crate that logs through `log`, as tracing-log hands it over.
        tracing_log::format_trace(
            &log::Record::builder()
                .args(format_args!("fatal alert {}", 42))
                .level(log::Level::Warn)
                .target("rustls::conn")
                .module_path_static(Some("rustls::conn"))
                .file_static(Some("src/conn.rs"))
                .line(Some(7))
                .build(),
        )
        .unwrap();
        tracing::info!(incident = %"inc_1", request_id = Some("r-1"), severity = %"high", agents = 2usize, kind = "dispatch", "triaged");
    }

    /// A subscriber writing lines of this module's format into `out`.
    fn formatted_into(out: &Out) -> impl tracing::Subscriber {
        let o = out.clone();
        tracing_subscriber::fmt()
            .with_writer(move || o.clone())
            .with_ansi(false)
            .event_format(Line)
            .fmt_fields(Fields)
            .finish()
    }

    /// Everything after the timestamp, which differs between the two runs.
    fn without_time(lines: Vec<String>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| l.split_once(' ').unwrap().1.to_owned())
            .collect()
    }

    #[test]
    fn lines_match_the_default_format_without_colour() {
        let (ours, theirs) = (Out::default(), Out::default());
        tracing::subscriber::with_default(formatted_into(&ours), events);
        let sub = {
            let t = theirs.clone();
            tracing_subscriber::fmt()
                .with_writer(move || t.clone())
                .with_ansi(false)
                .finish()
        };
        tracing::subscriber::with_default(sub, events);
        let (a, b) = (ours.lines(), theirs.lines());
        assert_eq!(a.len(), 6);
        assert!(
            a[3].contains("error=write failed error.sources=[flush failed, disk gone]"),
            "{}",
            a[3]
        );
        assert!(
            a[4].contains(" WARN rustls::conn: fatal alert 42"),
            "{}",
            a[4]
        );
        assert_eq!(without_time(a.clone()), without_time(b.clone()));
        // The timestamp has the default's shape: RFC 3339, microseconds, UTC.
        for line in &a {
            let stamp = line.split(' ').next().unwrap();
            assert_eq!(stamp.len(), "2026-11-29T04:06:13.008586Z".len(), "{line}");
            assert!(
                chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
                "{line}"
            );
        }
    }

    #[test]
    fn no_value_can_start_a_line_of_its_own() {
        let out = Out::default();
        tracing::subscriber::with_default(formatted_into(&out), || {
            let evil = "x\n2026-01-01T00:00:00.000000Z ERROR forged\u{1b}[31m\u{85}";
            tracing::info!(shown = %evil, debugged = ?evil, plain = evil, "msg {}", evil);
        });
        let lines = out.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert!(
            l.contains(r"shown=x\n2026-01-01T00:00:00.000000Z ERROR forged\u{1b}[31m\u{85}"),
            "{l}"
        );
        assert!(l.contains(r#"plain="x\n2026"#), "{l}");
        assert!(l.contains(r"msg x\n2026"), "{l}");
    }

    #[test]
    fn microseconds_are_six_digits() {
        for (micros, shown) in [(0, ".000000"), (7, ".000007"), (123_456, ".123456")] {
            let mut s = String::new();
            fraction(&mut s, micros).unwrap();
            assert_eq!(s, shown);
        }
    }

    #[test]
    fn numbers_are_written_in_full() {
        assert_eq!(itoa(0, &mut [0; 20]), "0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), u64::MAX.to_string());
        assert_eq!(itoa(1_000_007, &mut [0; 20]), "1000007");
    }
}
