use super::*;

fn dump(text: &str) -> String {
    parse(text).unwrap().dump()
}

#[test]
fn continuation_and_comments() {
    assert_eq!(dump("RUN a \\\n# c\n\n  b\n"), "(run \"a   b\")\n");
    let df = parse("FROM x\nRUN a \\\n\n b\n").unwrap();
    assert_eq!(df.warnings.len(), 1);
    assert_eq!(df.instructions[1].location, Location { start: 2, end: 4 });
}

#[test]
fn heredocs() {
    let df = parse("FROM x\nRUN <<EOF bash\necho $a\nEOF\nCOPY <<A <<-'B' /d/\na\nA\n\tb\n\tB\nRUN [\"<<EOF\"]\n").unwrap();
    let run = &df.instructions[1];
    assert_eq!(run.args, ["<<EOF bash"]);
    assert_eq!(run.heredocs[0].content, "echo $a\n");
    assert_eq!(run.location, Location { start: 2, end: 4 });
    let copy = &df.instructions[2];
    assert_eq!(copy.heredocs.len(), 2);
    assert_eq!(copy.heredocs[1].body(), "b\n");
    assert!(!copy.heredocs[1].expand);
    assert!(df.instructions[3].heredocs.is_empty());
}

#[test]
fn onbuild_heredoc() {
    let df = parse("FROM x\nONBUILD RUN <<EOF\nhi\nEOF\n").unwrap();
    assert_eq!(df.instructions[1].heredocs[0].content, "hi\n");
    assert_eq!(df.dump(), "(from \"x\")\n(onbuild (run \"<<EOF\"))\n");
}

#[test]
fn errors_name_the_line() {
    let e = parse("FROM x\n\nRUN <<EOF\nno end\n").unwrap_err();
    assert_eq!(e.line, 3);
    assert_eq!(
        e.to_string(),
        "dockerfile parse error on line 3: unterminated heredoc \"EOF\""
    );
    let e = parse("FROM x\nCMD [\"a\", [\"b\"]]\n").unwrap_err();
    assert_eq!(e.line, 2);
    assert_eq!(parse("").unwrap_err().kind, ParseErrorKind::NoInstructions);
    assert_eq!(
        parse("# c\n\n").unwrap_err().kind,
        ParseErrorKind::NoInstructions
    );
    let long = format!("RUN {}\n", "x".repeat(MAX_LINE_BYTES));
    assert_eq!(parse(&long).unwrap_err().kind, ParseErrorKind::LineTooLong);
    assert_eq!(
        parse("# escape=`\n# escape=`\nFROM x").unwrap_err(),
        ParseError {
            line: 2,
            kind: ParseErrorKind::RepeatedDirective("escape".into())
        }
    );
}

#[test]
fn directives_and_bom() {
    let df = parse(
        "\u{feff}# syntax=docker/dockerfile:1\n# check=skip=all\n# escape=`\nFROM a\nRUN x `\n y",
    )
    .unwrap();
    assert_eq!(df.directives.escape, '`');
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
    assert_eq!(df.directives.check.as_deref(), Some("skip=all"));
    assert_eq!(df.instructions[1].args, ["x  y"]);
}

#[test]
fn lower_case_and_unknown() {
    assert_eq!(dump("from a\nfoo bar\n"), "(from \"a\")\n(foo \"\")\n");
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("FROM x\n{}RUN y\n", "ONBUILD ".repeat(100));
    assert_eq!(parse(&deep).unwrap_err().kind, ParseErrorKind::TooDeep(16));
    assert!(
        parse("FROM x\nONBUILD ONBUILD RUN y\n").is_ok(),
        "the AST keeps one nested ONBUILD"
    );
}

#[test]
fn comments_before_an_instruction() {
    let df = parse("# syntax=docker/dockerfile:1\n# a\n\n# b\nFROM x\n# c\n#\n# d\nRUN a \\\n# not one\n b\nRUN c\n").unwrap();
    assert_eq!(df.instructions[0].comments, ["a", "b"]);
    assert_eq!(df.instructions[1].comments, ["d"]);
    assert!(df.instructions[2].comments.is_empty());
}

#[test]
fn empty_continuation_warning_is_on_the_last_line() {
    let df = parse("FROM x\nRUN a \\\n\n b\n").unwrap();
    assert_eq!(df.warnings[0].line, 4);
    assert!(df.warnings[0].message.starts_with(EMPTY_CONTINUATION));
}
