//! Parsing and converting a generated 10,000-instruction Dockerfile.
//!
//! `cargo bench -p kiln-frontend --bench convert` prints the median and the
//! fastest of several runs for each phase (parse, instructions, convert) and
//! for all three together, for two shapes of file: 100 stages of 100
//! instructions (stages the size of real ones), and 20 stages of 500 (every
//! RUN then carries ~40 ENV and ~40 ARG values, the costly case: each exec op
//! holds its whole environment). Results go into docs/benchmarks.md.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use kiln_frontend::convert::{self, ConvertOptions, NoImages};
use kiln_frontend::{instructions, parser};

const INSTRUCTIONS: usize = 10_000;
const RUNS: usize = 25;

/// A Dockerfile of `INSTRUCTIONS` instructions in `stages` stages, each
/// stage copying from the one before, with the instruction mix of real files:
/// RUN (shell and exec form, mounts, continuations, heredocs), COPY, ENV,
/// ARG, LABEL, WORKDIR, EXPOSE, USER.
fn generate(stages: usize) -> String {
    let mut df = String::from("# syntax=docker/dockerfile:1\nARG BASE=busybox\nARG VERSION=1.0\n");
    // FROM, ARG and CMD frame each stage's body.
    let body = INSTRUCTIONS / stages - 3;
    let mut count = 0;
    for stage in 0..stages {
        let _ = writeln!(df, "FROM ${{BASE}}:latest AS s{stage}");
        let _ = writeln!(df, "ARG VERSION");
        count += 2;
        for i in 0..body {
            let _ = match i % 12 {
                0 => writeln!(df, "ENV APP_{i}=value-{i} PATH=/opt/s{stage}/bin:$PATH"),
                1 => writeln!(df, "WORKDIR /src/s{stage}/step{i}"),
                2 => writeln!(df, "COPY --chown=1000:1000 src/file{i}.txt conf/*.conf ./"),
                3 => writeln!(
                    df,
                    "RUN --mount=type=cache,target=/root/.cache/s{stage} \\\n    make -j2 target-{i} \\\n    && echo \"${{VERSION}} built\" > /out/{i}"
                ),
                4 => writeln!(
                    df,
                    "LABEL org.example.step{i}=\"stage {stage}\" version=$VERSION"
                ),
                5 => writeln!(df, "RUN [\"/bin/sh\", \"-c\", \"echo {i}\"]"),
                6 => writeln!(df, "ARG OPT_{i}=${{VERSION:-0}}-x"),
                7 if stage > 0 => writeln!(df, "COPY --from=s{} /out/ /from-prev/", stage - 1),
                8 => writeln!(df, "RUN <<EOF\nset -e\necho step {i}\nEOF"),
                9 => writeln!(df, "EXPOSE {}", 8000 + i),
                10 => writeln!(df, "USER app:{i}"),
                _ => writeln!(df, "RUN echo $APP_0 $OPT_6 && true"),
            };
            count += 1;
        }
        let _ = writeln!(df, "CMD [\"/app\", \"--stage\", \"{stage}\"]");
        count += 1;
    }
    assert_eq!(
        count, INSTRUCTIONS,
        "generator makes exactly {INSTRUCTIONS} instructions"
    );
    df
}

struct Timings {
    parse: Vec<Duration>,
    check: Vec<Duration>,
    convert: Vec<Duration>,
    total: Vec<Duration>,
}

fn summary(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<14} median {:>8.2} ms   min {:>8.2} ms",
        ms(samples[samples.len() / 2]),
        ms(samples[0])
    );
}

fn main() {
    let shapes: Vec<usize> = match std::env::var("KILN_BENCH_STAGES") {
        Ok(s) => s.split(',').filter_map(|n| n.parse().ok()).collect(),
        Err(_) => vec![100, 20],
    };
    for stages in shapes {
        bench(stages);
    }
}

fn bench(stages: usize) {
    let text = generate(stages);
    let options = ConvertOptions::new(&NoImages);
    let mut t = Timings {
        parse: vec![],
        check: vec![],
        convert: vec![],
        total: vec![],
    };
    let mut vertices = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let ast = parser::parse(black_box(&text)).expect("generated Dockerfile parses");
        let parsed = Instant::now();
        let stages = instructions::parse(&ast).expect("generated Dockerfile is valid");
        let checked = Instant::now();
        let graph = convert::convert(&stages, &options).expect("generated Dockerfile converts");
        let done = Instant::now();
        vertices = graph.vertices.len();
        black_box(graph);
        t.parse.push(parsed - start);
        t.check.push(checked - parsed);
        t.convert.push(done - checked);
        t.total.push(done - start);
    }
    println!(
        "\n{INSTRUCTIONS} instructions, {} bytes, {stages} stages -> {vertices} vertices; {RUNS} runs",
        text.len()
    );
    summary("parse", &mut t.parse);
    summary("instructions", &mut t.check);
    summary("convert", &mut t.convert);
    summary("total", &mut t.total);
}
