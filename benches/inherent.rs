//! The inherent work of a webhook: what any sender of Herald's webhooks
//! must do for one file, whatever its design, measured alone. It is the
//! floor of the reference bench's "Herald's CPU a webhook while
//! delivering" (BENCHMARKS.md), whose goal is at most twice this.
//!
//! `cargo bench --bench inherent [-- OPTIONS]`
//!
//! The files are those of the reference workload's tip
//! (`support::workload`: `--files` generated files, seed `--seed`), read
//! with `git cat-file` (`verify::contents_of`). What is measured, and how:
//! `support::inherent`. For each file, timed one operation at a time over
//! batches of `--batch` files, on this thread: the body, the two
//! signatures and the request on a kept-alive loopback connection; their
//! total is the inherent work of a webhook. A row, not counted in the
//! total, renders the same files as Herald sends them (text escaped as a
//! JSON string, binary files in base64). Besides the workload, a 1 KiB and
//! a 16 KiB text file are sent as many times as the workload has files.
//! Each figure is the median of the rounds' means, after one round of
//! warm-up.
//!
//! Options (defaults in brackets): `--files N` [5000], `--seed N` [1],
//! `--rounds N` [10], `--batch N` [32]. Without `--bench` (as `cargo test
//! --benches` runs it) the sizes shrink to a smoke run. Results are printed
//! as Markdown; see BENCHMARKS.md.

mod support;

use std::time::Instant;

use support::inherent::{COUNTED, Corpus, Loopback, OPERATIONS, Round, file};
use support::verify;
use support::workload::Workload;
use support::*;

struct Options {
    files: usize,
    seed: u64,
    rounds: usize,
    batch: usize,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = Options {
        files: if args.full { 5_000 } else { 200 },
        seed: 1,
        rounds: if args.full { 10 } else { 1 },
        batch: 32,
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--files" => options.files = args.number(&arg),
            "--seed" => options.seed = args.number(&arg) as u64,
            "--rounds" => options.rounds = args.number(&arg),
            "--batch" => options.batch = args.number(&arg).max(1),
            other => panic!("unknown option {other:?} (see benches/inherent.rs)"),
        }
    }
    options
}

fn main() {
    let options = parse_options();
    let dir = tempfile::tempdir().expect("a temp dir");
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).expect("the served directory");
    let started = Instant::now();
    let workload = Workload::generate(&served, options.files, options.seed, &[]);
    let files = verify::contents_of(&workload.served, workload.tip());
    eprintln!(
        "generated {}: {} files ({} binary), {:.1} MB, in {:.1} s",
        workload.name,
        files.len(),
        workload.tally.binary,
        files.iter().map(|(_, c)| c.len()).sum::<usize>() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let corpora = [
        Corpus::of_files(format!("workload ({} files)", files.len()), &files),
        repeated("1 KiB", 1024, files.len()),
        repeated("16 KiB", 16 * 1024, files.len()),
    ];

    let mut loopback = Loopback::start();
    let mut rounds: Vec<Vec<Round>> = corpora.iter().map(|_| Vec::new()).collect();
    for round in 0..=options.rounds {
        for (corpus, kept) in corpora.iter().zip(&mut rounds) {
            let result = loopback.send_round(corpus, options.batch);
            if round > 0 {
                kept.push(result);
            }
        }
        match round {
            0 => eprintln!("warm-up round done"),
            _ => eprintln!(
                "round {round}: total CPU a webhook {}",
                rounds
                    .iter()
                    .zip(&corpora)
                    .map(|(r, c)| format!("{} {:.2} µs", c.name, r[round - 1].cpu_us()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    loopback.finish();

    print_table(&corpora, &rounds, options.rounds);
    println!("load average at the end: {}", load_average());
}

/// A corpus of `count` files of `size` bytes of text, all alike.
fn repeated(name: &str, size: usize, count: usize) -> Corpus {
    const LINE: &str = "alpha beta gamma delta kernel module packet stream commit branch\n";
    let content: Vec<u8> = LINE.bytes().cycle().take(size).collect();
    Corpus {
        name: name.to_owned(),
        files: (0..count)
            .map(|i| file(i, &format!("docs/page-{i}.md"), content.clone()))
            .collect(),
    }
}

/// The table: for each operation and corpus, the median of the rounds'
/// means a webhook, CPU (with the rounds' range) then wall time.
fn print_table(corpora: &[Corpus], rounds: &[Vec<Round>], count: usize) {
    let mut header = format!("| µs a webhook, median of {count} rounds |");
    let mut rule = String::from("|---|");
    let mut sizes = Vec::new();
    for (corpus, kept) in corpora.iter().zip(rounds) {
        let first = &kept[0];
        sizes.push(format!(
            "{}: {} webhooks, {:.1} KiB a body",
            corpus.name,
            first.webhooks,
            first.bytes as f64 / first.webhooks as f64 / 1024.0
        ));
        header.push_str(&format!(" {}, CPU | wall |", corpus.name));
        rule.push_str("---|---|");
    }
    println!("{}\n\n{header}\n{rule}", sizes.join("; "));
    for (op, name) in OPERATIONS.iter().enumerate() {
        if op == COUNTED {
            let cpu = |r: &Round| r.spent[..COUNTED].iter().map(|s| s.cpu_ns).sum();
            let wall = |r: &Round| r.spent[..COUNTED].iter().map(|s| s.wall_ns).sum();
            println!(
                "{}",
                row("**the inherent work of a webhook**", rounds, &cpu, &wall)
            );
        }
        let cpu = |r: &Round| r.spent[op].cpu_ns;
        let wall = |r: &Round| r.spent[op].wall_ns;
        println!("{}", row(name, rounds, &cpu, &wall));
    }
}

/// A row of the table: `cpu` and `wall` (nanoseconds in a round) a
/// webhook, for each corpus.
fn row(
    name: &str,
    rounds: &[Vec<Round>],
    cpu: &dyn Fn(&Round) -> u64,
    wall: &dyn Fn(&Round) -> u64,
) -> String {
    let per_webhook = |kept: &[Round], pick: &dyn Fn(&Round) -> u64| -> Vec<f64> {
        kept.iter()
            .map(|r| pick(r) as f64 / 1e3 / r.webhooks as f64)
            .collect()
    };
    let mut row = format!("| {name} |");
    for kept in rounds {
        let cpu = per_webhook(kept, cpu);
        row.push_str(&format!(
            " {:.2} ({:.2}–{:.2}) | {:.2} |",
            median(&cpu),
            percentile(&cpu, 0.0),
            percentile(&cpu, 100.0),
            median(&per_webhook(kept, wall))
        ));
    }
    row
}
