//! `kiln build --check` (`--call=check`): the build checks' findings as
//! `docker buildx build --check` prints them (BuildKit's
//! `lint.LintResults.PrintTo` and `errdefs.Source.Print`), on standard
//! output.

use std::io::Write;

use kiln_frontend::checks::Violation;
use kiln_solver::build::CheckResult;

/// The check found violations: the command fails (exit status 1, as
/// buildx's) with nothing more to say than what it printed.
#[derive(Debug, thiserror::Error)]
#[error("{0} build check warnings")]
pub(crate) struct ViolationsFound(pub(crate) usize);

/// Prints `result` for the Dockerfile `text` named `file`; an error for
/// violations or for the error the build would stop at.
pub(crate) fn print(result: &CheckResult, text: &str, file: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let count = result.violations.len();
    match count {
        0 => {}
        1 => writeln!(out, "Check complete, 1 warning has been found!")?,
        n => writeln!(out, "Check complete, {n} warnings have been found!")?,
    }
    for violation in &result.violations {
        write!(out, "{}", warning_text(violation, text, file))?;
    }
    if let Some(error) = &result.error {
        if count > 0 {
            writeln!(out)?;
        }
        out.flush()?;
        anyhow::bail!("{error}");
    }
    if count == 0 {
        writeln!(out, "Check complete, no warnings found.")?;
        return Ok(());
    }
    out.flush()?;
    Err(ViolationsFound(count).into())
}

/// One warning: its rule and URL, what is wrong, and the lines around it.
fn warning_text(v: &Violation, text: &str, file: &str) -> String {
    let mut s = format!("\nWARNING: {}", v.rule);
    if !v.url.is_empty() {
        s.push_str(&format!(" - {}", v.url));
    }
    s.push_str(&format!("\n{}\n", v.message));
    s.push_str(&source_lines(text, file, v.location.start, v.location.end));
    s
}

/// `errdefs.Source.Print`: the lines `start..=end` marked `>>>`, with up to
/// four lines of context around one line (two around several).
fn source_lines(text: &str, file: &str, start: usize, end: usize) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let end = end.max(start);
    if start < 1 || start > lines.len() {
        return String::new();
    }
    let (mut first, mut last) = (start, end.min(lines.len()));
    let pad = if last == first { 4 } else { 2 };
    let mut p = 0;
    while p < pad {
        if first > 1 {
            first -= 1;
            p += 1;
        }
        if last != lines.len() {
            last += 1;
            p += 1;
        }
        p += 1;
    }
    let mut s = format!("{file}:{start}\n--------------------\n");
    for (i, line) in lines.iter().enumerate().take(last).skip(first - 1) {
        let number = i + 1;
        let marker = if (start..=end).contains(&number) {
            ">>>"
        } else {
            "   "
        };
        s.push_str(&format!(" {number:>3} | {marker} {line}\n"));
    }
    s.push_str("--------------------\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lines_as_buildkit() {
        let text = "FROM scratch as base\nCOPY . .\n";
        assert_eq!(
            source_lines(text, "Dockerfile", 1, 1),
            "Dockerfile:1\n--------------------\n   1 | >>> FROM scratch as base\n   2 |     COPY . .\n   3 |     \n--------------------\n"
        );
    }
}
