//! Shows the solver's events: a live view on a terminal (BuildKit's: each
//! step with its timer or CACHED, a running step's last lines under it),
//! plain lines for CI logs (every line of every step, up to a cap), or one
//! JSON object per line for programs.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kiln_frontend::checks::Violation;
use kiln_solver::pipeline::{Level, Notice, Report};
use kiln_solver::solve::Event;

/// Writes a line to stderr. A closed stderr (`kiln build … | head`) must
/// not stop the build, as `eprintln!` would by panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// A step's output printed in plain mode before it is clipped.
const LOG_CAP: usize = 2 << 20;
/// A running step's last lines in the live view.
const TAIL_LINES: usize = 6;
/// How often the live view is redrawn.
const FRAME: Duration = Duration::from_millis(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// The live view on a terminal, plain lines otherwise.
    Auto,
    /// The live view: steps with timers, CACHED markers, running steps' last lines.
    Tty,
    /// Plain lines for logs: `#N [stage 2/5] RUN …`, every output line, `#N DONE 1.2s`.
    Plain,
    /// One JSON object per event, for programs (kiln's own).
    Json,
    /// BuildKit's `SolveStatus` JSON, a line each, as `docker buildx build
    /// --progress rawjson` prints it.
    Rawjson,
    /// Nothing but warnings and errors (buildx's `quiet`; the image ID
    /// only with `-q`).
    Quiet,
    /// As `quiet` (buildx's `none`).
    None,
}

/// Where events go for one build, and the build checks' warnings, shown
/// at the end as `docker buildx build` shows them.
pub(crate) struct Printer {
    shown: Shown,
    warnings: Vec<Violation>,
    /// The pipeline's notices while the live view draws: after it.
    notices: Vec<Notice>,
}

enum Shown {
    Quiet,
    Json,
    RawJson(crate::rawjson::RawJson),
    Plain { log_bytes: HashMap<usize, usize> },
    Tty(Live),
}

impl Printer {
    pub(crate) fn new(mode: Mode, quiet: bool) -> Self {
        let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let shown = match mode {
            _ if quiet => Shown::Quiet,
            Mode::Quiet | Mode::None => Shown::Quiet,
            Mode::Json => Shown::Json,
            Mode::Rawjson => Shown::RawJson(crate::rawjson::RawJson::new()),
            Mode::Tty => Shown::Tty(Live::start()),
            Mode::Auto if on_terminal => Shown::Tty(Live::start()),
            Mode::Auto | Mode::Plain => Shown::Plain {
                log_bytes: HashMap::new(),
            },
        };
        Self {
            shown,
            warnings: Vec::new(),
            notices: Vec::new(),
        }
    }

    /// A build's report: a solver event, or the pipeline's notice.
    pub(crate) fn report(&mut self, report: Report) {
        match report {
            Report::Step(event) => self.event(event),
            Report::Notice(notice) => self.notice(notice),
        }
    }

    /// A notice as a line of its own (a warning even with `-q`); kept
    /// for the end while the live view draws.
    fn notice(&mut self, notice: Notice) {
        match (&mut self.shown, notice.level) {
            (Shown::Tty(_), _) => self.notices.push(notice),
            (Shown::RawJson(raw), _) => say!("{}", raw.notice(&notice)),
            (Shown::Quiet, Level::Info) => {}
            _ => print_notice(&notice),
        }
    }

    pub(crate) fn event(&mut self, event: Event) {
        match (&mut self.shown, event) {
            (Shown::Quiet, _) => {}
            (Shown::Json, event) => {
                if let Ok(line) = serde_json::to_string(&event) {
                    say!("{line}");
                }
            }
            (Shown::RawJson(raw), event) => say!("{}", raw.event(event)),
            (_, Event::Warning { warning }) => self.warnings.push(warning),
            (Shown::Plain { log_bytes }, event) => plain(log_bytes, event),
            (Shown::Tty(live), event) => live.view().apply(event, Instant::now()),
        }
    }

    /// Ends the live view with its last frame (the other modes print as
    /// they go), then lists the warnings.
    pub(crate) fn finish(&mut self) {
        if let Shown::Tty(live) = &mut self.shown {
            live.stop();
        }
        for notice in std::mem::take(&mut self.notices) {
            print_notice(&notice);
        }
        print_warnings(&std::mem::take(&mut self.warnings));
    }
}

fn print_notice(notice: &Notice) {
    match notice.level {
        Level::Info => say!("{}", notice.text),
        Level::Warning => say!("warning: {}", notice.text),
    }
}

/// buildx's `printWarnings`: a count, then each warning's short form.
fn print_warnings(warnings: &[Violation]) {
    match warnings.len() {
        0 => return,
        1 => say!("\n 1 warning found:"),
        n => say!("\n {n} warnings found:"),
    }
    for warning in warnings {
        say!(" - {}", warning.short());
    }
}

fn plain(log_bytes: &mut HashMap<usize, usize>, event: Event) {
    match event {
        Event::Started {
            vertex,
            description,
        } => say!("#{vertex} {description}"),
        Event::Cached { vertex } => say!("#{vertex} CACHED"),
        Event::Log { vertex, line } => {
            // Every line of every step, up to a cap per step (said once when
            // reached); a failed step's last lines come with its error
            // whatever the cap.
            let printed = log_bytes.entry(vertex).or_insert(0usize);
            if *printed < LOG_CAP {
                *printed += line.len() + 1;
                say!("#{vertex} {line}");
                if *printed >= LOG_CAP {
                    say!(
                        "#{vertex} [output clipped: {} MiB printed for this step]",
                        LOG_CAP >> 20
                    );
                }
            }
        }
        Event::Done { vertex, seconds } => say!("#{vertex} DONE {seconds:.1}s"),
        Event::Bytes {
            vertex,
            current,
            total,
        } => say!("#{vertex} {}", bytes_text(current, total)),
        Event::Failed { vertex, error } => say!("#{vertex} ERROR: {error}"),
        // Listed at the end (`Printer::finish`).
        Event::Warning { .. } => {}
    }
}

/// The live view: a thread redraws the frame in place while steps run.
pub(crate) struct Live {
    view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
    painter: Option<std::thread::JoinHandle<()>>,
}

impl Live {
    fn start() -> Self {
        let view = Arc::new(Mutex::new(View::new(Instant::now())));
        let stop = Arc::new(AtomicBool::new(false));
        let painter = {
            let (view, stop) = (Arc::clone(&view), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut drawn = 0;
                while !stop.load(Ordering::Acquire) {
                    drawn = paint(&view, drawn, false);
                    std::thread::sleep(FRAME);
                }
                paint(&view, drawn, true);
            })
        };
        Self {
            view,
            stop,
            painter: Some(painter),
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(painter) = self.painter.take() {
            let _ = painter.join();
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Draws the frame over the `drawn` lines of the last one; returns how many
/// lines this one has.
fn paint(view: &Mutex<View>, drawn: usize, last: bool) -> usize {
    let (width, height) = terminal_size::terminal_size_of(std::io::stderr())
        .map_or((80, 24), |(w, h)| (usize::from(w.0), usize::from(h.0)));
    let lines = view.lock().unwrap_or_else(PoisonError::into_inner).frame(
        Instant::now(),
        width,
        height,
        last,
    );
    let mut out = String::new();
    if drawn > 0 {
        // To the start of the first line drawn last time.
        out.push_str(&format!("\x1b[{drawn}F"));
    }
    for line in &lines {
        out.push_str("\x1b[2K");
        out.push_str(line);
        out.push('\n');
    }
    // What is left of a longer last frame.
    out.push_str("\x1b[J");
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(out.as_bytes());
    let _ = stderr.flush();
    lines.len()
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Running(Instant),
    Cached,
    Done(f64),
    Failed(f64),
}

#[derive(Debug)]
struct Step {
    description: String,
    state: State,
    tail: VecDeque<String>,
    /// A download's progress, shown after the description.
    bytes: Option<String>,
}

/// `12.0 MiB / 1.0 GiB`, or `12.0 MiB` when the total is unknown.
fn bytes_text(current: u64, total: Option<u64>) -> String {
    fn human(n: u64) -> String {
        const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
        let mut value = n as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            format!("{n} B")
        } else {
            format!("{value:.1} {}", UNITS[unit])
        }
    }
    match total {
        Some(t) => format!("{} / {}", human(current), human(t)),
        None => human(current),
    }
}

/// What the live view shows, updated by events and drawn by [`View::frame`].
#[derive(Debug)]
struct View {
    start: Instant,
    finished: Option<Instant>,
    steps: Vec<Step>,
    index: HashMap<usize, usize>,
}

impl View {
    fn new(start: Instant) -> Self {
        Self {
            start,
            finished: None,
            steps: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn apply(&mut self, event: Event, now: Instant) {
        let step =
            |view: &mut Self, vertex: usize| -> Option<usize> { view.index.get(&vertex).copied() };
        match event {
            Event::Started {
                vertex,
                description,
            } => {
                self.index.insert(vertex, self.steps.len());
                self.steps.push(Step {
                    description,
                    state: State::Running(now),
                    tail: VecDeque::new(),
                    bytes: None,
                });
            }
            Event::Cached { vertex } => {
                if let Some(i) = step(self, vertex) {
                    self.steps[i].state = State::Cached;
                }
            }
            Event::Log { vertex, line } => {
                if let Some(i) = step(self, vertex) {
                    let tail = &mut self.steps[i].tail;
                    tail.push_back(line);
                    if tail.len() > TAIL_LINES {
                        tail.pop_front();
                    }
                }
            }
            Event::Done { vertex, seconds } => {
                if let Some(i) = step(self, vertex) {
                    self.steps[i].state = State::Done(seconds);
                }
            }
            Event::Bytes {
                vertex,
                current,
                total,
            } => {
                if let Some(i) = step(self, vertex) {
                    self.steps[i].bytes = Some(bytes_text(current, total));
                }
            }
            Event::Failed { vertex, .. } => {
                if let Some(i) = step(self, vertex) {
                    let seconds = match self.steps[i].state {
                        State::Running(since) => now.duration_since(since).as_secs_f64(),
                        _ => 0.0,
                    };
                    self.steps[i].state = State::Failed(seconds);
                }
            }
            Event::Warning { .. } => {}
        }
    }

    /// The lines of the view at `now`, each at most `width` columns, at
    /// most `height - 1` of them (older finished steps scroll off the top).
    /// The `last` frame shows every step.
    fn frame(&mut self, now: Instant, width: usize, height: usize, last: bool) -> Vec<String> {
        if last {
            self.finished.get_or_insert(now);
        }
        let elapsed = self.finished.unwrap_or(now).duration_since(self.start);
        let finished = self
            .steps
            .iter()
            .filter(|s| !matches!(s.state, State::Running(_)))
            .count();
        let mut lines = vec![format!(
            "[+] Building {:.1}s ({finished}/{}){}",
            elapsed.as_secs_f64(),
            self.steps.len(),
            if last { " FINISHED" } else { "" }
        )];
        for step in &self.steps {
            let (marker, timer) = match step.state {
                State::Running(since) => (
                    "",
                    format!("{:.1}s", now.duration_since(since).as_secs_f64()),
                ),
                State::Cached => ("CACHED ", "0.0s".to_owned()),
                State::Done(s) => ("", format!("{s:.1}s")),
                State::Failed(s) => ("ERROR ", format!("{s:.1}s")),
            };
            let bytes = step
                .bytes
                .as_ref()
                .map_or(String::new(), |b| format!(" {b}"));
            lines.push(fit(
                &format!(" => {marker}{}{bytes}", step.description),
                &timer,
                width,
            ));
            if matches!(step.state, State::Running(_) | State::Failed(_)) {
                for line in &step.tail {
                    lines.push(fit(&format!(" => => # {line}"), "", width));
                }
            }
        }
        let room = height.saturating_sub(1).max(2);
        if !last && lines.len() > room {
            lines.drain(1..=lines.len() - room);
        }
        lines
    }
}

/// `text` and `timer` on one line of `width` columns: the text cut to fit,
/// the timer at the right edge.
fn fit(text: &str, timer: &str, width: usize) -> String {
    let room = width.saturating_sub(timer.chars().count() + 1).max(10);
    let mut shown: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(room)
        .collect();
    if !timer.is_empty() {
        let pad = room.saturating_sub(shown.chars().count());
        shown.push_str(&" ".repeat(pad + 1));
        shown.push_str(timer);
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(vertex: usize, description: &str) -> Event {
        Event::Started {
            vertex,
            description: description.to_owned(),
        }
    }

    #[test]
    fn live_view_shows_timers_cached_steps_and_running_tails() {
        let t0 = Instant::now();
        let mut view = View::new(t0);
        view.apply(started(1, "[stage-0 1/3] WORKDIR /app"), t0);
        view.apply(Event::Cached { vertex: 1 }, t0);
        view.apply(started(2, "[stage-0 2/3] RUN make"), t0);
        for n in 0..10 {
            view.apply(
                Event::Log {
                    vertex: 2,
                    line: format!("compiling {n}"),
                },
                t0,
            );
        }
        let frame = view.frame(t0 + Duration::from_millis(2500), 60, 40, false);
        assert_eq!(frame[0], "[+] Building 2.5s (1/2)");
        assert!(
            frame[1].starts_with(" => CACHED [stage-0 1/3] WORKDIR /app")
                && frame[1].ends_with(" 0.0s")
        );
        assert!(frame[2].starts_with(" => [stage-0 2/3] RUN make") && frame[2].ends_with(" 2.5s"));
        assert_eq!(
            frame.len(),
            3 + TAIL_LINES,
            "the last {TAIL_LINES} lines: {frame:?}"
        );
        assert_eq!(frame[3], " => => # compiling 4");
        assert!(frame.iter().all(|l| l.chars().count() <= 60), "{frame:?}");

        // Done: no tail; the last frame says FINISHED and keeps its time.
        view.apply(
            Event::Done {
                vertex: 2,
                seconds: 3.0,
            },
            t0,
        );
        let frame = view.frame(t0 + Duration::from_secs(3), 60, 40, true);
        assert_eq!(frame[0], "[+] Building 3.0s (2/2) FINISHED");
        assert_eq!(frame.len(), 3);
        let later = view.frame(t0 + Duration::from_secs(9), 60, 40, true);
        assert_eq!(later[0], frame[0]);
    }

    #[test]
    fn a_failed_step_keeps_its_tail_and_small_terminals_scroll() {
        let t0 = Instant::now();
        let mut view = View::new(t0);
        for v in 0..30 {
            view.apply(started(v, &format!("step {v}")), t0);
            view.apply(
                Event::Done {
                    vertex: v,
                    seconds: 0.1,
                },
                t0,
            );
        }
        view.apply(started(30, "RUN exit 3"), t0);
        view.apply(
            Event::Log {
                vertex: 30,
                line: "about to fail".into(),
            },
            t0,
        );
        view.apply(
            Event::Failed {
                vertex: 30,
                error: "exit code 3".into(),
            },
            t0 + Duration::from_secs(1),
        );
        let frame = view.frame(t0 + Duration::from_secs(1), 80, 10, false);
        assert_eq!(frame.len(), 9, "fits a 10-line terminal: {frame:?}");
        assert!(frame[0].starts_with("[+] Building"));
        assert!(frame[7].starts_with(" => ERROR RUN exit 3") && frame[7].ends_with("1.0s"));
        assert_eq!(frame[8], " => => # about to fail");
        assert_eq!(
            view.frame(t0, 80, 10, true).len(),
            1 + 31 + 1,
            "the last frame has every step"
        );
    }

    #[test]
    fn downloads_show_their_bytes() {
        let t0 = Instant::now();
        let mut view = View::new(t0);
        view.apply(
            started(4, "[stage-0 2/2] ADD https://example.com/x.tgz /x"),
            t0,
        );
        view.apply(
            Event::Bytes {
                vertex: 4,
                current: 3 << 20,
                total: Some(1 << 30),
            },
            t0,
        );
        let frame = view.frame(t0, 120, 40, false);
        assert!(frame[1].contains("/x 3.0 MiB / 1.0 GiB"), "{frame:?}");
        assert_eq!(bytes_text(512, None), "512 B");
    }

    #[test]
    fn lines_fit_the_terminal() {
        assert_eq!(fit("abc", "1.0s", 20), format!("abc{}1.0s", " ".repeat(13)));
        let long = fit(&"x".repeat(200), "10.2s", 40);
        assert_eq!(long.chars().count(), 40);
        assert!(long.ends_with(" 10.2s"));
        assert_eq!(
            fit("a\x1b[31mred", "", 80),
            "a[31mred",
            "no escapes from step output"
        );
    }
}
