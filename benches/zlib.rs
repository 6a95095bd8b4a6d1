//! Benchmark of the zlib Herald's git reads run on: zlib-rs (what the
//! `zlib/` crate hands libgit2 in place of `libz-sys`, and what
//! `actors::git::blob` inflates with through flate2) against the system's
//! zlib, the library `libz-sys` would link, on the same streams.
//!
//! `cargo bench --bench zlib [-- OPTIONS]`
//!
//! The corpus is every blob of the reference workload's first commit
//! (`support::workload`: `--files` files, seed `--seed`), each deflated
//! once by the system's zlib at git's default level, as git and libgit2
//! write objects. Timed: inflating every stream, each with a stream of its
//! own (`inflateInit`, one `inflate` into a buffer of the object's size,
//! `inflateEnd`: how libgit2 reads an object), the adler32 check included.
//! The floor is a C program linked with the system's zlib (`cc … -lz`,
//! compiled by the bench; zlib's headers must be installed); Herald's side
//! is flate2 on zlib-rs, in this process. The two alternate, `--rounds`
//! passes over the corpus a turn, for `--turns` turns; figures are medians
//! of the passes, in MB of inflated output a second.
//!
//! Options (defaults in brackets): `--files N` [5000], `--seed N` [1],
//! `--rounds N` [10], `--turns N` [3]. Without `--bench` (as `cargo test
//! --benches` runs it) the sizes shrink to a smoke test. See BENCHMARKS.md.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use flate2::{Decompress, FlushDecompress, Status};
use support::workload::Workload;
use support::*;

struct Options {
    files: usize,
    seed: u64,
    rounds: usize,
    turns: usize,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = if args.full {
        Options {
            files: 5_000,
            seed: 1,
            rounds: 10,
            turns: 3,
        }
    } else {
        Options {
            files: 200,
            seed: 1,
            rounds: 1,
            turns: 1,
        }
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--files" => options.files = args.number(&arg),
            "--seed" => options.seed = args.number(&arg) as u64,
            "--rounds" => options.rounds = args.number(&arg),
            "--turns" => options.turns = args.number(&arg),
            other => panic!("unknown option {other:?} (see benches/zlib.rs)"),
        }
    }
    options
}

/// The floor: the system's zlib. `deflate IN OUT` deflates each object of
/// IN (`[u32 size][bytes]`…) into OUT (`[u32 size][u32 length][stream]`…);
/// `inflate IN ROUNDS` inflates every stream of IN, ROUNDS times, and
/// prints each pass's nanoseconds on a line.
const FLOOR_C: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

static unsigned char *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(n > 0 ? n : 1);
    if (fread(data, 1, n, f) != (size_t)n) { perror("fread"); exit(2); }
    fclose(f);
    *size = n;
    return data;
}

static uint32_t u32_at(const unsigned char *p) {
    return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32(FILE *f, uint32_t v) {
    unsigned char b[4] = {v, v >> 8, v >> 16, v >> 24};
    fwrite(b, 1, 4, f);
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: floor deflate|inflate IN OUT|ROUNDS\n"); return 2; }
    size_t size;
    unsigned char *in = read_all(argv[2], &size);
    if (strcmp(argv[1], "deflate") == 0) {
        FILE *out = fopen(argv[3], "wb");
        if (!out) { perror(argv[3]); return 2; }
        for (size_t at = 0; at < size;) {
            uint32_t raw = u32_at(in + at);
            at += 4;
            uLongf len = compressBound(raw);
            unsigned char *stream = malloc(len);
            if (compress2(stream, &len, in + at, raw, Z_DEFAULT_COMPRESSION) != Z_OK) return 3;
            put_u32(out, raw);
            put_u32(out, (uint32_t)len);
            fwrite(stream, 1, len, out);
            free(stream);
            at += raw;
        }
        fclose(out);
        return 0;
    }
    int rounds = atoi(argv[3]);
    size_t largest = 1;
    for (size_t at = 0; at < size;) {
        uint32_t raw = u32_at(in + at), len = u32_at(in + at + 4);
        if (raw > largest) largest = raw;
        at += 8 + len;
    }
    unsigned char *buffer = malloc(largest);
    for (int round = 0; round < rounds; round++) {
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (size_t at = 0; at < size;) {
            uint32_t raw = u32_at(in + at), len = u32_at(in + at + 4);
            z_stream z;
            memset(&z, 0, sizeof z);
            if (inflateInit(&z) != Z_OK) return 3;
            z.next_in = in + at + 8;
            z.avail_in = len;
            z.next_out = buffer;
            z.avail_out = raw;
            if (inflate(&z, Z_FINISH) != Z_STREAM_END || z.total_out != raw) return 4;
            inflateEnd(&z);
            at += 8 + len;
        }
        clock_gettime(CLOCK_MONOTONIC, &end);
        printf("%lld\n", (long long)(end.tv_sec - start.tv_sec) * 1000000000LL
                             + (end.tv_nsec - start.tv_nsec));
    }
    return 0;
}
"#;

/// One deflated object: its size and its zlib stream.
struct Stream {
    size: usize,
    deflated: Vec<u8>,
}

fn main() {
    let options = parse_options();
    let dir = tempfile::tempdir().expect("a temp dir");
    let floor = compile_floor(dir.path());
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).expect("the served directory");
    let workload = Workload::generate(&served, options.files, options.seed, &[]);
    let blobs = blobs_of(&workload.served);

    // The corpus, deflated by the system's zlib.
    let raw_path = dir.path().join("blobs.bin");
    let mut raw = Vec::new();
    for blob in &blobs {
        raw.extend_from_slice(
            &u32::try_from(blob.len())
                .expect("a blob under 4 GiB")
                .to_le_bytes(),
        );
        raw.extend_from_slice(blob);
    }
    std::fs::write(&raw_path, &raw).expect("the corpus is written");
    let deflated_path = dir.path().join("deflated.bin");
    run_ok(
        Command::new(&floor)
            .arg("deflate")
            .arg(&raw_path)
            .arg(&deflated_path),
    );
    let streams = streams_of(&std::fs::read(&deflated_path).expect("the deflated corpus"));
    let bytes: usize = blobs.iter().map(Vec::len).sum();
    let deflated: usize = streams.iter().map(|s| s.deflated.len()).sum();
    // zlib-rs reads back what zlib wrote, byte for byte.
    let mut buffer = vec![0; blobs.iter().map(Vec::len).max().unwrap_or(1)];
    for (stream, blob) in streams.iter().zip(&blobs) {
        inflate(stream, &mut buffer);
        assert_eq!(
            &buffer[..stream.size],
            &blob[..],
            "zlib-rs inflates zlib's stream"
        );
    }
    eprintln!(
        "corpus: {} blobs, {:.1} MB, deflated to {:.1} MB; load {}",
        blobs.len(),
        bytes as f64 / 1e6,
        deflated as f64 / 1e6,
        load_average()
    );

    let (mut floor_s, mut herald_s) = (Vec::new(), Vec::new());
    for turn in 1..=options.turns {
        let out = run_ok(
            Command::new(&floor)
                .arg("inflate")
                .arg(&deflated_path)
                .arg(options.rounds.to_string()),
        );
        let passes: Vec<f64> = out
            .lines()
            .map(|ns| ns.trim().parse::<f64>().expect("nanoseconds") / 1e9)
            .collect();
        assert_eq!(passes.len(), options.rounds, "a time for every pass");
        floor_s.extend(&passes);
        let mut ours = Vec::new();
        for _ in 0..options.rounds {
            let started = Instant::now();
            for stream in &streams {
                inflate(stream, &mut buffer);
            }
            ours.push(started.elapsed().as_secs_f64());
        }
        herald_s.extend(&ours);
        eprintln!(
            "turn {turn}: zlib {:.1} MB/s, zlib-rs {:.1} MB/s (medians of {} passes)",
            bytes as f64 / 1e6 / median(&passes),
            bytes as f64 / 1e6 / median(&ours),
            options.rounds
        );
    }
    let rate = |seconds: &[f64]| bytes as f64 / 1e6 / median(seconds);
    let (floor_rate, herald_rate) = (rate(&floor_s), rate(&herald_s));
    println!(
        "| inflating {} blobs ({:.1} MB) | MB/s, median of {} passes | ratio |",
        blobs.len(),
        bytes as f64 / 1e6,
        floor_s.len()
    );
    println!("|---|---|---|");
    println!(
        "| system zlib ({}) — the floor | {floor_rate:.0} | 1.00 |",
        zlib_version(&floor)
    );
    println!(
        "| zlib-rs (flate2, as `zlib/` gives libgit2) | {herald_rate:.0} | **{:.2}** |",
        herald_rate / floor_rate
    );
    println!("load average at the end: {}", load_average());
}

/// Inflates `stream` into the front of `buffer` as libgit2 reads an
/// object: a stream state of its own, one call, the whole output.
fn inflate(stream: &Stream, buffer: &mut [u8]) {
    let mut state = Decompress::new(true);
    let status = state
        .decompress(
            &stream.deflated,
            &mut buffer[..stream.size],
            FlushDecompress::Finish,
        )
        .expect("a valid stream");
    assert_eq!(status, Status::StreamEnd, "the stream ends");
    assert_eq!(state.total_out(), stream.size as u64, "the object's size");
}

/// The C floor, compiled against the system's zlib.
fn compile_floor(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("floor.c");
    std::fs::write(&source, FLOOR_C).expect("the floor's source");
    let binary = dir.join("floor");
    run_ok(
        Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&binary)
            .arg(&source)
            .arg("-lz"),
    );
    binary
}

/// The version of the zlib the floor runs on, from its shared library.
fn zlib_version(floor: &Path) -> String {
    let out = run_ok(Command::new("ldd").arg(floor));
    out.lines()
        .find(|line| line.contains("libz.so"))
        .and_then(|line| line.split("=>").nth(1))
        .and_then(|path| path.split_whitespace().next())
        .and_then(|path| std::fs::canonicalize(path).ok())
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "libz".to_owned())
}

/// Every blob in `repo`, read with `git cat-file --batch-all-objects`.
fn blobs_of(repo: &Path) -> Vec<Vec<u8>> {
    let out = git(repo)
        .args(["cat-file", "--batch-all-objects", "--batch"])
        .output()
        .expect("git cat-file runs");
    assert!(
        out.status.success(),
        "git cat-file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut blobs, mut at, data) = (Vec::new(), 0, out.stdout);
    while at < data.len() {
        let end = at
            + data[at..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("a header line");
        let header = std::str::from_utf8(&data[at..end]).expect("an ASCII header");
        let mut fields = header.split(' ');
        let (_, kind, size) = (fields.next(), fields.next(), fields.next());
        let size: usize = size.and_then(|s| s.parse().ok()).expect("an object size");
        let content = &data[end + 1..end + 1 + size];
        if kind == Some("blob") {
            blobs.push(content.to_vec());
        }
        at = end + 1 + size + 1;
    }
    blobs
}

/// The floor's deflated corpus, parsed.
fn streams_of(data: &[u8]) -> Vec<Stream> {
    let u32_at =
        |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("four bytes")) as usize;
    let (mut streams, mut at) = (Vec::new(), 0);
    while at < data.len() {
        let (size, len) = (u32_at(at), u32_at(at + 4));
        streams.push(Stream {
            size,
            deflated: data[at + 8..at + 8 + len].to_vec(),
        });
        at += 8 + len;
    }
    streams
}

/// Runs `command`, which must succeed; its standard output.
fn run_ok(command: &mut Command) -> String {
    let out = command.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
