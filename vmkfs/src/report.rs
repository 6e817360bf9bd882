//! The one reporter of the commands: everything `vmkfs`, `vmkfs-backup` and `vmkfs-restore` print
//! goes through a [`Reporter`], which writes to the sinks its caller passes in ([`Sinks`]) and
//! never to the process's standard output or error itself.
//!
//! Rules of the output sink: a reader that goes away (`vmkfs --info X | head -1`: writes fail with
//! `EPIPE`) ends the output quietly: nothing more is written and nothing is said about it, and the
//! operation finishes with its own result (a clone whose progress reader went away still
//! completes). Data written for a reader ([`Reporter::data`]: `--read-at`) is different: a
//! transfer that cannot complete is an error. Any other failure to write the output (a full disk
//! behind `>`) also stops it, and [`Reporter::output_failed`] then turns a successful run into an
//! I/O failure so that a truncated output never looks complete.
//!
//! Copies (clone, import, export) say vmkfstools' lines (`Destination disk format: …`, `Cloning
//! disk '…'...`, `Clone: N% done.`), draw a progress bar on a terminal, or write one JSON event per
//! line with `--json`. `-v N` adds detail on the message sink ([`Reporter::describe`] and its
//! siblings). The VM tools' events ([`crate::vm::Event`]) print as `DISK: what` lines or JSON.

use std::fmt::{Arguments, Display};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::engine::{CopyStats, EngineOptions};
use crate::error::{Error, Result};
use crate::vm::Event;
use crate::vmdk::{OpenOptions, State};

/// One of the two sinks, for the caller's draw-target function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The output sink (standard output).
    Out,
    /// The message sink (standard error).
    Err,
}

/// Where a [`Reporter`] writes: given by the program.
pub struct Sinks {
    /// The output (the command's answer, progress; standard output).
    pub out: Box<dyn Write + Send>,
    /// The messages (errors, `-v` detail, progress while the output carries a disk; standard error).
    pub err: Box<dyn Write + Send>,
    /// True when the output is a terminal (a progress bar is drawn there).
    pub out_is_terminal: bool,
    /// True when the message sink is a terminal.
    pub err_is_terminal: bool,
    /// The draw target of a progress bar on the given sink (called only for a terminal one).
    pub draw_target: fn(Stream) -> indicatif::ProgressDrawTarget,
}

/// How an error line is worded (see [`Reporter::error`]).
#[derive(Debug, Clone, Copy)]
pub enum Wording<'a> {
    /// `TOOL: REASON` (`vmkfs: …`, `vmkfs-backup: …`).
    Tool(&'a str),
    /// vmkfstools' words for a failed clone, import or export: `Failed to clone disk: REASON.`
    Clone,
}

/// The state of the output sink, shared with [`LineSink`] handles.
struct Output {
    sink: Mutex<Box<dyn Write + Send>>,
    /// Set once the output failed: nothing more is written to it.
    closed: AtomicBool,
    /// The first failure writing the output that was not its reader going away.
    failure: Mutex<Option<io::Error>>,
}

impl Output {
    fn write(&self, args: Arguments<'_>) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut out = lock(&self.sink);
        if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
            self.closed.store(true, Ordering::Relaxed);
            if e.kind() != io::ErrorKind::BrokenPipe {
                lock(&self.failure).get_or_insert(e);
            }
        }
    }
}

/// A `'static` handle that prints lines on a reporter's output, with its rules, for callbacks
/// that cannot borrow the reporter.
#[derive(Clone)]
pub struct LineSink(Arc<Output>);

impl LineSink {
    /// Prints a line on the output.
    pub fn line(&self, s: impl Display) {
        self.0.write(format_args!("{s}\n"));
    }
}

/// A `'static` handle that prints lines on a reporter's message sink (standard error), for
/// callbacks on other threads.
#[derive(Clone)]
pub struct MessageSink(Arc<Mutex<Box<dyn Write + Send>>>);

impl MessageSink {
    /// Prints a line on the message sink.
    pub fn line(&self, s: impl Display) {
        message(&self.0, s);
    }
}

/// Writes a line on a message sink; a failure there has nowhere to be reported and is ignored.
fn message(err: &Mutex<Box<dyn Write + Send>>, s: impl Display) {
    let mut err = lock(err);
    let _ = writeln!(err, "{s}").and_then(|_| err.flush());
}

/// The progress of the copy under way.
struct Copy {
    to_err: bool,
    bar: Option<indicatif::ProgressBar>,
    last_pct: u64,
}

/// Prints what the commands say, on the sinks of [`Sinks`]; shared (`&Reporter`) by the
/// callbacks of an operation.
pub struct Reporter {
    out: Arc<Output>,
    err: Arc<Mutex<Box<dyn Write + Send>>>,
    out_is_terminal: bool,
    err_is_terminal: bool,
    draw_target: fn(Stream) -> indicatif::ProgressDrawTarget,
    json: bool,
    verbose: Option<u32>,
    copy: Mutex<Copy>,
    /// The VM tools' last progress line: the disk and the percentage.
    vm_last: Mutex<Option<(String, u64)>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Reporter {
    /// A reporter writing to `sinks`: JSON lines when `json`, `-v` detail at level `verbose`
    /// (`None`: no `-v`).
    pub fn new(sinks: Sinks, json: bool, verbose: Option<u32>) -> Reporter {
        Reporter {
            out: Arc::new(Output {
                sink: Mutex::new(sinks.out),
                closed: AtomicBool::new(false),
                failure: Mutex::new(None),
            }),
            err: Arc::new(Mutex::new(sinks.err)),
            out_is_terminal: sinks.out_is_terminal,
            err_is_terminal: sinks.err_is_terminal,
            draw_target: sinks.draw_target,
            json,
            verbose,
            copy: Mutex::new(Copy { to_err: false, bar: None, last_pct: u64::MAX }),
            vm_last: Mutex::new(None),
        }
    }

    /// True with `--json`.
    pub fn json(&self) -> bool {
        self.json
    }

    /// The `-v` level (0 without it).
    pub fn verbose(&self) -> u32 {
        self.verbose.unwrap_or(0)
    }

    /// True when `-v` was given, whatever its level.
    pub fn verbose_given(&self) -> bool {
        self.verbose.is_some()
    }

    /// True when the output is a terminal.
    pub fn out_is_terminal(&self) -> bool {
        self.out_is_terminal
    }

    /// Prints a line on the output (and flushes it, so progress shows as it happens).
    pub fn line(&self, s: impl Display) {
        self.out.write(format_args!("{s}\n"));
    }

    /// Prints text on the output without a newline (and flushes it).
    pub fn text(&self, s: impl Display) {
        self.out.write(format_args!("{s}"));
    }

    /// Prints a value as pretty JSON on the output.
    pub fn json_pretty(&self, v: &impl serde::Serialize) {
        match serde_json::to_string_pretty(v) {
            Ok(s) => self.line(s),
            Err(e) => self.err_line(format!("vmkfs: cannot format JSON output: {e}")),
        }
    }

    /// Prints a line on the message sink. A failure there has nowhere to be reported and is ignored.
    pub fn err_line(&self, s: impl Display) {
        message(&self.err, s);
    }

    /// A `'static` handle on the message sink, for callbacks on other threads.
    pub fn message_sink(&self) -> MessageSink {
        MessageSink(Arc::clone(&self.err))
    }

    /// A `'static` handle on the output, for callbacks that cannot borrow the reporter.
    pub fn line_sink(&self) -> LineSink {
        LineSink(Arc::clone(&self.out))
    }

    /// True once the output can take nothing more (its reader went away): informational
    /// commands with long output may stop producing it.
    pub fn closed(&self) -> bool {
        self.out.closed.load(Ordering::Relaxed)
    }

    /// Writes bytes the reader asked for (the disk's contents) to the output. A failure, a reader
    /// that went away included, is an error: the transfer did not complete.
    pub fn data(&self, buf: &[u8]) -> Result<()> {
        lock(&self.out.sink).write_all(buf).map_err(|e| self.output_error(e))
    }

    /// Flushes what [`Reporter::data`] wrote.
    pub fn flush_data(&self) -> Result<()> {
        lock(&self.out.sink).flush().map_err(|e| self.output_error(e))
    }

    fn output_error(&self, e: io::Error) -> Error {
        self.out.closed.store(true, Ordering::Relaxed);
        Error::Io { path: "<stdout>".into(), source: e }
    }

    /// At the end of a run that `succeeded`: true when writing the output failed other than by its
    /// reader going away, which makes the run an I/O failure (said here on the message sink).
    pub fn output_failed(&self, succeeded: bool) -> bool {
        match lock(&self.out.failure).take() {
            Some(e) if succeeded => {
                self.err_line(format!("vmkfs: <stdout>: {e}"));
                true
            }
            _ => false,
        }
    }

    /// Prints the error `e` on the message sink in `wording`, or with `--json` as one object
    /// carrying `exit`, the exit code the program gives it.
    pub fn error(&self, e: &Error, wording: Wording<'_>, exit: i32) {
        if self.json {
            self.err_line(serde_json::json!({"event": "error", "message": e.to_string(), "exit": exit}));
            return;
        }
        match wording {
            Wording::Tool(t) => self.err_line(format!("{t}: {e}")),
            Wording::Clone => self.err_line(format!("Failed to clone disk: {}.", e.to_string().trim_end_matches('.'))),
        }
    }

    /// The final report of a VM tool (JSON: `{"event": "done", ...}`), or its `text` lines.
    pub fn done(&self, report: &impl serde::Serialize, text: &[String]) {
        if self.json {
            let mut v = serde_json::to_value(report).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.insert("event".into(), "done".into());
            }
            self.line(v);
        } else {
            for l in text {
                self.line(l);
            }
        }
    }
}

/// Copies: clone, import, export.
impl Reporter {
    /// Begins the messages of a copy, on the message sink when `to_err` (the output carries the
    /// disk): a progress bar when that sink is a terminal (and not `--json`).
    pub fn copy_begin(&self, to_err: bool) {
        let tty = !self.json && if to_err { self.err_is_terminal } else { self.out_is_terminal };
        let bar = tty.then(|| {
            let target = (self.draw_target)(if to_err { Stream::Err } else { Stream::Out });
            let b = indicatif::ProgressBar::with_draw_target(Some(0), target);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "Clone: {percent:>3}% [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        *lock(&self.copy) = Copy { to_err, bar, last_pct: u64::MAX };
    }

    fn copy_line(&self, to_err: bool, s: &str) {
        if to_err {
            self.err_line(s);
        } else {
            self.line(s);
        }
    }

    /// The first lines of a copy: the destination format and the source.
    pub fn copy_start(&self, src: &Path, dst: &Path, format: &str, description: &str) {
        let to_err = lock(&self.copy).to_err;
        if self.json {
            let v = serde_json::json!({"event": "start", "source": src, "destination": dst, "format": format});
            self.copy_line(to_err, &v.to_string());
        } else {
            self.copy_line(to_err, &format!("Destination disk format: {description}"));
            self.copy_line(to_err, &format!("Cloning disk '{}'...", src.display()));
        }
    }

    /// `done` of `total` bytes copied: a line (or event) each time the percentage changes.
    pub fn copy_progress(&self, done: u64, total: u64) {
        let pct = (done.saturating_mul(100)).checked_div(total).unwrap_or(100).min(100);
        let mut c = lock(&self.copy);
        if let Some(b) = &c.bar {
            b.set_length(total);
            b.set_position(done);
        } else if pct != c.last_pct {
            c.last_pct = pct;
            let to_err = c.to_err;
            drop(c);
            if self.json {
                let v = serde_json::json!({"event": "progress", "done": done, "total": total, "percent": pct});
                self.copy_line(to_err, &v.to_string());
            } else {
                self.copy_line(to_err, &format!("Clone: {pct}% done."));
            }
        }
    }

    /// The end of a copy: the bar cleared, and on success (`done`, the `done` event) `Clone: 100%
    /// done.` after a bar or the event with `--json`. An error is the caller's to print.
    pub fn copy_end(&self, done: Option<&serde_json::Value>) {
        let (to_err, bar) = {
            let mut c = lock(&self.copy);
            (c.to_err, c.bar.take())
        };
        if let Some(b) = bar {
            b.finish_and_clear();
            if done.is_some() {
                self.copy_line(to_err, "Clone: 100% done.");
            }
        }
        if let (Some(v), true) = (done, self.json) {
            self.copy_line(to_err, &v.to_string());
        }
    }
}

/// `-v N`: more detail on the message sink. Level 1: the chain of the disk operated on (every
/// link, its format, CID and parentCID) and, after a copy, what the engine read and wrote and how
/// fast; level 2: also the engine's settings and the bytes of data, zeros and absent ranges per
/// link of the chain; level 3: also every allocation run.
impl Reporter {
    /// Describes the disk at `path` (opened with `open`) at the `-v` level: its chain, and from
    /// level 2 its map.
    pub fn describe(&self, path: &Path, open: &OpenOptions) {
        if self.verbose() == 0 || path == Path::new("-") {
            return;
        }
        for (i, l) in crate::redo::diagnose(path, open).iter().enumerate() {
            self.err_line(format_args!(
                "vmkfs: link {i}: {} [{}] CID {} parentCID {} {}",
                l.path.display(),
                l.format,
                l.cid,
                l.parent_cid,
                l.status
            ));
        }
        if self.verbose() >= 2 {
            self.describe_map(path, open);
        }
    }

    /// Bytes per state and depth of the chain's map (level 2), every run (level 3).
    fn describe_map(&self, path: &Path, open: &OpenOptions) {
        let chain = match crate::redo::Chain::open(path, open) {
            Ok(c) => c,
            Err(e) => return self.err_line(format_args!("vmkfs: {}: map not read: {e}", path.display())),
        };
        let mut per_depth: Vec<[u64; 3]> = vec![[0; 3]; chain.links().len()];
        for r in crate::vmdk::map::walk(&chain) {
            let r = match r {
                Ok(r) => r,
                Err(e) => return self.err_line(format_args!("vmkfs: {}: map walk stopped: {e}", path.display())),
            };
            let i = match r.state {
                State::Data => 0,
                State::Zero => 1,
                State::Absent => 2,
            };
            if let Some(d) = per_depth.get_mut(r.depth as usize) {
                d[i] += r.len;
            }
            if self.verbose() >= 3 {
                self.err_line(format_args!("vmkfs: run {} +{} {:?} depth {}", r.offset, r.len, r.state, r.depth));
            }
        }
        for (depth, [data, zero, absent]) in per_depth.iter().enumerate() {
            self.err_line(format_args!("vmkfs: depth {depth}: {data} bytes of data, {zero} of zeros, {absent} absent"));
        }
    }

    /// The engine settings a copy runs with (level 2).
    pub fn engine(&self, e: &EngineOptions) {
        if self.verbose() >= 2 {
            self.err_line(format_args!(
                "vmkfs: engine: {} reader thread(s), {} KiB chunks, {} chunks in flight, zero blocks of {} bytes, direct I/O {:?}",
                e.threads,
                e.chunk >> 10,
                e.in_flight,
                e.zero_block,
                e.direct
            ));
        }
    }

    /// What a copy did and how long it took (level 1).
    pub fn copied(&self, stats: &CopyStats, took: Duration) {
        if self.verbose() == 0 {
            return;
        }
        let secs = took.as_secs_f64();
        let rate = if secs > 0.0 { stats.read as f64 / secs / (1 << 20) as f64 } else { 0.0 };
        self.err_line(format_args!(
            "vmkfs: read {} bytes, wrote {} bytes ({} bytes of the source's data ranges) in {secs:.3} s ({rate:.1} MiB/s read), {} writes",
            stats.read,
            stats.written,
            stats.total,
            if stats.direct { "direct" } else { "buffered" }
        ));
    }
}

/// The VM tools' events: `DISK: what` lines (progress every 10 %), or JSON lines with `--json`.
impl crate::vm::Reporter for Reporter {
    fn event(&mut self, e: Event) {
        if let Event::Progress { disk, done, total } = &e {
            // A line each time the percentage changes (by 10 in text).
            let pct = (done.saturating_mul(100)).checked_div(*total).unwrap_or(100).min(100);
            let pct = if self.json { pct } else { pct / 10 * 10 };
            let mut last = lock(&self.vm_last);
            if last.as_ref() == Some(&(disk.clone(), pct)) {
                return;
            }
            *last = Some((disk.clone(), pct));
            drop(last);
            if !self.json {
                self.line(format!("{disk}: Clone: {pct}% done."));
                return;
            }
        }
        if self.json {
            self.line(serde_json::to_value(&e).unwrap_or_default());
            return;
        }
        match e {
            Event::Step { disk: Some(d), what } => self.line(format!("{d}: {what}")),
            Event::Step { disk: None, what } => self.line(what),
            Event::Note { disk: Some(d), what } => self.line(format!("{d}: note: {what}")),
            Event::Note { disk: None, what } => self.line(format!("note: {what}")),
            Event::Progress { .. } => {}
        }
    }
}

/// `println!` through [`Reporter::line`]: `outln!(r, "Clone: {pct}% done.")`.
macro_rules! outln {
    ($r:expr, $($arg:tt)*) => {
        $r.line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that keeps what is written, or fails every write with `fail`.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>, Option<io::ErrorKind>);

    impl Write for Kept {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            match self.1 {
                Some(k) => Err(k.into()),
                None => {
                    lock(&self.0).extend_from_slice(b);
                    Ok(b.len())
                }
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Kept {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).clone()).unwrap()
        }
    }

    fn reporter(out: &Kept, err: &Kept, json: bool) -> Reporter {
        let sinks = Sinks {
            out: Box::new(out.clone()),
            err: Box::new(err.clone()),
            out_is_terminal: false,
            err_is_terminal: false,
            draw_target: |_| indicatif::ProgressDrawTarget::hidden(),
        };
        Reporter::new(sinks, json, None)
    }

    #[test]
    fn copy_lines_go_to_the_sink_chosen_and_change_with_the_percentage() {
        let (out, err) = (Kept::default(), Kept::default());
        let r = reporter(&out, &err, false);
        r.copy_begin(true);
        r.copy_start(Path::new("a.vmdk"), Path::new("-"), "raw", "raw bytes");
        for done in [0, 10, 10, 100] {
            r.copy_progress(done, 100);
        }
        r.copy_end(Some(&serde_json::json!({"event": "done"})));
        assert_eq!(out.text(), "");
        let want = "Destination disk format: raw bytes\nCloning disk 'a.vmdk'...\nClone: 0% done.\nClone: 10% done.\nClone: 100% done.\n";
        assert_eq!(err.text(), want);
    }

    #[test]
    fn a_reader_that_goes_away_ends_the_output_quietly() {
        let (out, err) = (Kept(Arc::default(), Some(io::ErrorKind::BrokenPipe)), Kept::default());
        let r = reporter(&out, &err, false);
        r.line("one");
        assert!(r.closed());
        assert!(!r.output_failed(true));
        assert!(r.data(b"x").is_err(), "data for a reader that went away fails the transfer");
        assert_eq!(err.text(), "");
    }

    #[test]
    fn other_output_failures_turn_success_into_a_failure() {
        let (out, err) = (Kept(Arc::default(), Some(io::ErrorKind::Other)), Kept::default());
        let r = reporter(&out, &err, false);
        r.line("one");
        r.line("two");
        assert!(r.output_failed(true));
        assert!(err.text().starts_with("vmkfs: <stdout>: "), "{}", err.text());
        assert!(!r.output_failed(true), "said once");
    }

    #[test]
    fn errors_are_worded_as_asked_or_one_json_object() {
        let (out, err) = (Kept::default(), Kept::default());
        let e = Error::Usage("bad size.".into());
        reporter(&out, &err, false).error(&e, Wording::Clone, 2);
        reporter(&out, &err, false).error(&e, Wording::Tool("vmkfs-backup"), 2);
        reporter(&out, &err, true).error(&e, Wording::Tool("vmkfs"), 2);
        let lines: Vec<String> = err.text().lines().map(String::from).collect();
        assert_eq!(lines[0], "Failed to clone disk: bad size.");
        assert_eq!(lines[1], "vmkfs-backup: bad size.");
        let v: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(v, serde_json::json!({"event": "error", "message": "bad size.", "exit": 2}));
    }

    #[test]
    fn vm_progress_prints_every_ten_percent_in_text() {
        let (out, err) = (Kept::default(), Kept::default());
        let mut r = reporter(&out, &err, false);
        for done in [0, 5, 12, 19, 100] {
            crate::vm::Reporter::event(&mut r, Event::Progress { disk: "d".into(), done, total: 100 });
        }
        assert_eq!(out.text(), "d: Clone: 0% done.\nd: Clone: 10% done.\nd: Clone: 100% done.\n");
    }
}
