//! Any text through the whole frontend: parse, dump, check, convert.
//! Errors are fine; panics, hangs and runaway memory are bugs.
#![no_main]

use kiln_frontend::convert::{self, ConvertOptions, NoImages};
use kiln_frontend::{instructions, parser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(ast) = parser::parse(text) else { return };
    let dump = ast.dump();
    assert_eq!(dump.lines().count(), ast.instructions.len());
    for node in &ast.instructions {
        assert!(node.location.start <= node.location.end);
    }
    let Ok(stages) = instructions::parse(&ast) else { return };
    let _ = convert::convert(&stages, &ConvertOptions::new(&NoImages));
});
