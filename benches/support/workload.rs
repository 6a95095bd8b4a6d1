//! The reference workload: a repository shaped like a project's, and
//! commits that change a few of its files, deterministic from a seed.
//!
//! The first commit holds `files` files: about 90 % small text (200 B to
//! 8 KiB), 8 % medium text (8 to 64 KiB), 2 % binary (10 KiB to 2 MiB,
//! log-uniform, random bytes after a NUL), and one 3 MiB binary
//! `assets/big-3mib.bin`. Text files are slices of one 1 MiB corpus (so
//! they delta-compress as real text does, and a clone costs real CPU),
//! about 12 % of whose lines hold non-ASCII UTF-8. Folders nest 1 to 5
//! deep, about 1.5·√N of them; about 0.5 % of names hold a space and 0.5 %
//! a non-ASCII letter.
//!
//! A change of K files renames one (content unchanged) and splits the
//! other K − 1 about 35 % creates, 20 % deletes and 45 % updates (K = 10:
//! 3, 2 and 4). An update appends text to a text file or flips bytes of a
//! binary one.
//!
//! As [`super::history`] does, one `git fast-import` stream writes the
//! first commit and the planned changes into a source repository; the
//! served repository gets the first commit by a push, then each change by
//! a push of its own. Below git's automatic-gc threshold the served
//! repository holds loose objects, above it one pack, as a repository
//! that grew by commits and pushes would.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::history::{Rng, push_commit};
use super::{BRANCH, GeneratedRepo, fast_import, git_ok, init_bare, inline};

/// Loose objects above which `git gc --auto` packs them (`gc.auto`).
const GC_AUTO: usize = 6_700;

/// One planned change: how many files it touches, and its seed.
#[derive(Debug, Clone, Copy)]
pub struct Mutation {
    pub changes: usize,
    pub seed: u64,
}

/// A file-level change as an app sees it: a rename is a delete of the old
/// path and a create of the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    Delete,
    Create,
    Update,
}

impl Event {
    /// The webhook's endpoint.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Delete => "delete",
            Event::Create => "create",
            Event::Update => "update",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FileChange {
    pub event: Event,
    pub path: String,
    /// SHA-256 (hex) of the new content; of the deleted content for a
    /// delete.
    pub sha256: String,
}

/// One commit of the workload and what it changes, deletes first, then
/// creates, then updates, each by path.
#[derive(Debug, Clone)]
pub struct Change {
    pub old: String,
    pub new: String,
    pub files: Vec<FileChange>,
}

impl Change {
    /// `tree` (path → SHA-256) moved on by this change.
    pub fn apply(&self, tree: &mut std::collections::HashMap<String, String>) {
        for file in &self.files {
            match file.event {
                Event::Delete => tree.remove(&file.path),
                Event::Create | Event::Update => {
                    tree.insert(file.path.clone(), file.sha256.clone())
                }
            };
        }
    }
}

/// What the first commit holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    pub files: usize,
    pub bytes: u64,
    pub text: usize,
    pub binary: usize,
}

/// A generated reference workload.
pub struct Workload {
    /// `r{files}s{seed}`: served as `{name}.git`.
    pub name: String,
    /// The bare repository Herald watches.
    pub served: PathBuf,
    /// Holds every commit, the planned changes included: where pushes
    /// come from.
    source: GeneratedRepo,
    /// The first commit.
    pub first: String,
    /// The planned changes, in push order.
    changes: Vec<Change>,
    /// How many of them are pushed.
    pushed: usize,
    pub tally: Tally,
}

impl Workload {
    /// Generates `r{files}s{seed}.git` under `served_dir` (and its source
    /// beside `served_dir`), with `planned` changes to push later.
    pub fn generate(served_dir: &Path, files: usize, seed: u64, planned: &[Mutation]) -> Workload {
        assert!(files >= 2, "at least 2 files");
        let root = served_dir
            .parent()
            .expect("the served directory has a parent");
        let name = format!("r{files}s{seed}");
        let served = served_dir.join(format!("{name}.git"));
        let source_name = format!("{name}-source");
        for old in [served.clone(), root.join(format!("{source_name}.git"))] {
            std::fs::remove_dir_all(old).ok();
        }
        let mut tally = Tally::default();
        let mut changes = Vec::new();
        let source = fast_import(root, &source_name, |stream| {
            let mut model = Model::new(files, seed);
            model.initial(stream);
            tally = model.tally();
            for (k, mutation) in planned.iter().enumerate() {
                changes.push(model.mutate(k + 1, *mutation, stream));
            }
        });
        for (change, commits) in changes.iter_mut().zip(source.commits.windows(2)) {
            change.old.clone_from(&commits[0]);
            change.new.clone_from(&commits[1]);
        }
        init_bare(&served);
        // A push of fewer objects than this is unpacked into loose objects.
        git_ok(
            &served,
            &["config", "receive.unpackLimit", &(GC_AUTO + 1).to_string()],
        );
        let workload = Workload {
            name,
            served,
            first: source.commits[0].clone(),
            source,
            changes,
            pushed: 0,
            tally,
        };
        workload.push_commit(&workload.first);
        let packs = std::fs::read_dir(workload.served.join("objects").join("pack"))
            .map_or(0, |dir| dir.flatten().count());
        if packs > 0 {
            // As `git gc --auto` packs them: deltas searched again, since
            // fast-import's are only against the blob written just before.
            git_ok(&workload.served, &["repack", "-q", "-a", "-d", "-f"]);
        }
        workload
    }

    /// Pushes the next planned change to the served branch; returns it.
    pub fn push(&mut self) -> &Change {
        let k = self.pushed;
        assert!(k < self.changes.len(), "only {k} changes were planned");
        self.push_commit(&self.changes[k].new);
        self.pushed += 1;
        &self.changes[k]
    }

    fn push_commit(&self, commit: &str) {
        push_commit(&self.source.bare, &self.served, commit);
    }

    /// The served branch's commit now.
    pub fn tip(&self) -> &str {
        match self.pushed {
            0 => &self.first,
            k => &self.changes[k - 1].new,
        }
    }
}

// ------------------------------------------------------------------ model

const WORDS: [&str; 42] = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "theta",
    "kappa",
    "lambda",
    "sigma",
    "omega",
    "river",
    "mountain",
    "cloud",
    "signal",
    "vector",
    "buffer",
    "kernel",
    "module",
    "packet",
    "stream",
    "commit",
    "branch",
    "merge",
    "rebase",
    "index",
    "object",
    "blob",
    "tree",
    "tag",
    "remote",
    "origin",
    "hook",
    "event",
    "payload",
    "retry",
    "backoff",
    "queue",
    "worker",
    "scheduler",
    "snapshot",
    "delta",
];
const UNICODE_BITS: [&str; 13] = [
    "café",
    "naïve",
    "façade",
    "Ελληνικά",
    "русский",
    "日本語のテキスト",
    "中文字符",
    "한국어",
    "emoji 🚀✨",
    "ünïcödé",
    "Ærøskøbing",
    "ß ẞ",
    "€ £ ¥",
];
const UNICODE_NAMES: [&str; 4] = ["résumé", "naïve", "данные", "データ"];
const DIR_WORDS: [&str; 20] = [
    "src",
    "lib",
    "docs",
    "assets",
    "config",
    "tests",
    "examples",
    "tools",
    "internal",
    "pkg",
    "cmd",
    "api",
    "core",
    "util",
    "data",
    "fixtures",
    "scripts",
    "web",
    "static",
    "templates",
];
const TEXT_EXTENSIONS: [&str; 10] = [
    ".md", ".txt", ".rs", ".py", ".ts", ".json", ".yaml", ".toml", ".html", ".css",
];
const BINARY_EXTENSIONS: [&str; 5] = [".bin", ".png", ".dat", ".jpg", ".pdf"];

const BIG_PATH: &str = "assets/big-3mib.bin";
const KIB: usize = 1024;

/// A random source for one purpose: `tag` and `parts` mixed into the seed.
fn rng_for(tag: u64, parts: &[u64]) -> Rng {
    let mut rng = Rng(tag);
    for part in parts {
        rng = Rng(rng.next() ^ part);
    }
    rng
}

fn pick<'a>(rng: &mut Rng, from: &[&'a str]) -> &'a str {
    from[rng.below(from.len())]
}

/// About 1 MiB of lines of words, some with non-ASCII text.
fn corpus(seed: u64) -> String {
    let mut rng = rng_for(0xC0_4B05, &[seed]);
    let mut text = String::with_capacity(1 << 20 | 1 << 10);
    while text.len() < 1 << 20 {
        let mut words: Vec<&str> = (0..rng.between(3, 14))
            .map(|_| pick(&mut rng, &WORDS))
            .collect();
        if rng.unit() < 0.12 {
            let at = rng.below(words.len() + 1);
            words.insert(at, pick(&mut rng, &UNICODE_BITS));
        }
        text.push_str(&words.join(" "));
        text.push('\n');
    }
    text
}

/// A run of the corpus after a header line of its own.
struct Piece {
    header: String,
    start: usize,
    end: usize,
}

enum Content {
    Text(Vec<Piece>),
    /// `magic`, then random bytes from `seed`, with bytes flipped at
    /// `flips`: kept as a recipe, so that the model holds no file's bytes.
    Binary {
        magic: &'static [u8; 4],
        seed: u64,
        size: usize,
        flips: Vec<usize>,
    },
}

#[derive(Clone, Copy)]
enum Kind {
    Small,
    Medium,
    Binary,
}

struct File {
    path: String,
    content: Content,
}

/// The tree as the workload has it so far.
struct Model {
    files_wanted: usize,
    seed: u64,
    corpus: String,
    files: Vec<File>,
}

impl Model {
    fn new(files_wanted: usize, seed: u64) -> Model {
        Model {
            files_wanted,
            seed,
            corpus: corpus(seed),
            files: Vec::new(),
        }
    }

    fn bytes(&self, content: &Content) -> Vec<u8> {
        match content {
            Content::Text(pieces) => {
                let mut bytes = Vec::new();
                for piece in pieces {
                    bytes.extend_from_slice(piece.header.as_bytes());
                    bytes.push(b'\n');
                    bytes.extend_from_slice(&self.corpus.as_bytes()[piece.start..piece.end]);
                }
                bytes
            }
            Content::Binary {
                magic,
                seed,
                size,
                flips,
            } => {
                let mut rng = Rng(*seed);
                let mut bytes = Vec::with_capacity(size + 8);
                bytes.extend_from_slice(*magic);
                while bytes.len() < *size {
                    bytes.extend_from_slice(&rng.next().to_le_bytes());
                }
                bytes.truncate(*size);
                for at in flips {
                    bytes[*at] ^= 0xFF;
                }
                bytes
            }
        }
    }

    /// About `size` bytes of text: `header`, then a slice of the corpus cut
    /// at character boundaries.
    fn piece(&self, rng: &mut Rng, size: usize, header: String) -> Piece {
        let length = size.saturating_sub(header.len() + 1);
        let mut start = rng.below(self.corpus.len() - length);
        let mut end = start + length;
        while !self.corpus.is_char_boundary(start) {
            start += 1;
        }
        while !self.corpus.is_char_boundary(end) {
            end -= 1;
        }
        Piece {
            header,
            start,
            end: end.max(start),
        }
    }

    fn content(&self, rng: &mut Rng, kind: Kind, header: String) -> Content {
        let text = |rng: &mut Rng, (low, high): (usize, usize)| {
            let size = rng.between(low, high);
            Content::Text(vec![self.piece(rng, size, header)])
        };
        match kind {
            Kind::Small => text(rng, (200, 8 * KIB)),
            Kind::Medium => text(rng, (8 * KIB + 1, 64 * KIB)),
            Kind::Binary => {
                let (low, high) = ((10 * KIB) as f64, (2 * KIB * KIB) as f64);
                let size = (low.ln() + rng.unit() * (high.ln() - low.ln())).exp() as usize;
                Content::Binary {
                    magic: b"\0BIN",
                    seed: rng.next(),
                    size,
                    flips: Vec::new(),
                }
            }
        }
    }

    /// The first commit (mark 1).
    fn initial(&mut self, out: &mut dyn Write) {
        let mut rng = rng_for(0x1417, &[self.seed, self.files_wanted as u64]);
        let dirs = self.dirs(&mut rng);
        commit_header(
            out,
            0,
            &format!("initial: {} files, seed {}", self.files_wanted, self.seed),
        );
        for i in 0..self.files_wanted - 1 {
            let kind = match rng.unit() {
                u if u < 0.90 => Kind::Small,
                u if u < 0.98 => Kind::Medium,
                _ => Kind::Binary,
            };
            let extension = match kind {
                Kind::Binary => pick(&mut rng, &BINARY_EXTENSIONS),
                _ => pick(&mut rng, &TEXT_EXTENSIONS),
            };
            let dir = &dirs[rng.below(dirs.len())];
            let word = pick(&mut rng, &WORDS);
            let stem = match rng.unit() {
                u if u < 0.005 => format!("{word} copy {i:06}"),
                u if u < 0.010 => format!("{}_{i:06}", pick(&mut rng, &UNICODE_NAMES)),
                _ => format!("{word}_{i:06}"),
            };
            let path = format!("{dir}/{stem}{extension}");
            let content = self.content(&mut rng, kind, format!("# {path} seed={}", self.seed));
            self.add(out, File { path, content });
        }
        let big = Content::Binary {
            magic: b"\0BIG",
            seed: rng.next(),
            size: 3 * KIB * KIB,
            flips: Vec::new(),
        };
        self.add(
            out,
            File {
                path: BIG_PATH.to_owned(),
                content: big,
            },
        );
    }

    /// About 1.5·√N folders, each 1 to 5 deep, sorted.
    fn dirs(&self, rng: &mut Rng) -> Vec<String> {
        let wanted = ((self.files_wanted as f64).sqrt() * 1.5).max(4.0) as usize;
        let mut dirs = BTreeSet::new();
        while dirs.len() < wanted {
            let parts: Vec<String> = (0..rng.between(1, 5))
                .map(|_| {
                    let word = pick(rng, &DIR_WORDS);
                    if rng.percent(50) {
                        format!("{word}{}", rng.below(10))
                    } else {
                        word.to_owned()
                    }
                })
                .collect();
            dirs.insert(parts.join("/"));
        }
        dirs.into_iter().collect()
    }

    fn add(&mut self, out: &mut dyn Write, file: File) {
        inline(out, &file.path, &self.bytes(&file.content));
        self.files.push(file);
    }

    fn tally(&self) -> Tally {
        let mut tally = Tally {
            files: self.files.len(),
            ..Tally::default()
        };
        for file in &self.files {
            match &file.content {
                Content::Text(pieces) => {
                    let bytes: usize = pieces
                        .iter()
                        .map(|p| p.header.len() + 1 + p.end - p.start)
                        .sum();
                    tally.bytes += bytes as u64;
                    tally.text += 1;
                }
                Content::Binary { size, .. } => {
                    tally.bytes += *size as u64;
                    tally.binary += 1;
                }
            }
        }
        tally
    }

    /// Commit `n` (mark `n + 1`): one change of `mutation.changes` files.
    fn mutate(&mut self, n: usize, mutation: Mutation, out: &mut dyn Write) -> Change {
        let k = mutation.changes;
        let mut rng = rng_for(0x3A7E, &[mutation.seed, n as u64, k as u64]);
        let renames = usize::from(k >= 2);
        let rest = k - renames;
        let deletes = if rest >= 3 {
            (rest as f64 * 0.2).round_ties_even() as usize
        } else {
            0
        };
        let creates = ((rest as f64 * 0.35).round_ties_even() as usize).min(rest - deletes);
        let updates = rest - deletes - creates;
        let touched = updates + deletes + renames;
        assert!(
            touched <= self.files.len(),
            "{k} changes in {} files",
            self.files.len()
        );
        let mut chosen: Vec<usize> = Vec::with_capacity(touched);
        let mut seen = HashSet::new();
        while chosen.len() < touched {
            let i = rng.below(self.files.len());
            if seen.insert(i) {
                chosen.push(i);
            }
        }
        let dirs: Vec<String> = self
            .files
            .iter()
            .filter_map(|f| Some(f.path.rsplit_once('/')?.0.to_owned()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        commit_header(out, n, &format!("mutate #{n}: {k} changes"));
        let mut files = Vec::new();
        for &i in &chosen[..updates] {
            let piece = matches!(self.files[i].content, Content::Text(_)).then(|| {
                let size = rng.between(50, 2_000);
                self.piece(&mut rng, size, format!("# edit {n}"))
            });
            match (&mut self.files[i].content, piece) {
                (Content::Text(pieces), Some(piece)) => pieces.push(piece),
                (Content::Binary { size, flips, .. }, _) => {
                    for _ in 0..16 {
                        flips.push(rng.between(4, *size - 1));
                    }
                }
                (Content::Text(_), None) => unreachable!("a text file gets a piece"),
            }
            let bytes = self.bytes(&self.files[i].content);
            inline(out, &self.files[i].path, &bytes);
            files.push(FileChange {
                event: Event::Update,
                path: self.files[i].path.clone(),
                sha256: sha256_hex(&bytes),
            });
        }
        for &i in &chosen[updates + deletes..] {
            let old = self.files[i].path.clone();
            let base = old.rsplit_once('/').map_or(old.as_str(), |(_, b)| b);
            let new = format!("{}/renamed_{n}_{base}", dirs[rng.below(dirs.len())]);
            writeln!(out, "R {} {}", quoted(&old), quoted(&new)).expect("fast-import input");
            let sha256 = sha256_hex(&self.bytes(&self.files[i].content));
            files.push(FileChange {
                event: Event::Delete,
                path: old,
                sha256: sha256.clone(),
            });
            files.push(FileChange {
                event: Event::Create,
                path: new.clone(),
                sha256,
            });
            self.files[i].path = new;
        }
        for i in 0..creates {
            let kind = if i == 1 { Kind::Medium } else { Kind::Small };
            let extension = pick(&mut rng, &TEXT_EXTENSIONS);
            let path = format!("{}/new_{n}_{i}{extension}", dirs[rng.below(dirs.len())]);
            let content = self.content(&mut rng, kind, format!("# {path} commit={n}"));
            let bytes = self.bytes(&content);
            inline(out, &path, &bytes);
            files.push(FileChange {
                event: Event::Create,
                path: path.clone(),
                sha256: sha256_hex(&bytes),
            });
            self.files.push(File { path, content });
        }
        let mut deleted: Vec<usize> = chosen[updates..updates + deletes].to_vec();
        deleted.sort_unstable_by(|a, b| b.cmp(a));
        for i in deleted {
            let file = self.files.swap_remove(i);
            writeln!(out, "D {}", quoted(&file.path)).expect("fast-import input");
            files.push(FileChange {
                event: Event::Delete,
                sha256: sha256_hex(&self.bytes(&file.content)),
                path: file.path,
            });
        }
        files.sort_by(|a, b| (a.event, &a.path).cmp(&(b.event, &b.path)));
        Change {
            old: String::new(),
            new: String::new(),
            files,
        }
    }
}

/// Commit `n` of the workload (mark `n + 1`), with a fixed author and
/// date an hour after the one before.
fn commit_header(out: &mut dyn Write, n: usize, message: &str) {
    let when = 1_700_000_000 + 3_600 * n;
    writeln!(out, "commit refs/heads/{BRANCH}\nmark :{}", n + 1).expect("fast-import input");
    for role in ["author", "committer"] {
        writeln!(
            out,
            "{role} Bench Generator <bench@example.invalid> {when} +0000"
        )
        .expect("fast-import input");
    }
    writeln!(out, "data {}\n{message}", message.len()).expect("fast-import input");
}

/// A path as fast-import reads it in `R` and `D` (quoted: the names with a
/// space would otherwise end at it).
fn quoted(path: &str) -> String {
    format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
