//! A repository with deep history, generated here with no network: the
//! shape of a long-lived project (most commits edit a few lines of one to
//! five files; some add, delete or rename files; a few touch dozens; a few
//! binary files change whole), deterministic from a seed.
//!
//! One `git fast-import` stream writes the history and the commits that
//! come after it into a source repository. The served repository gets the
//! history by a push and is repacked into one pack, as a hosting service
//! serves it; [`History::push`] then pushes the next commits one by one,
//! each a real `git push` that brings only that commit's objects.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{BRANCH, GeneratedRepo, fast_import, git_ok, init_bare, inline};

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct HistorySpec {
    /// Commits of history on the served branch, the first included.
    pub commits: usize,
    /// Files at the tip of the history (within a few).
    pub files: usize,
    /// Commits generated after the tip, pushed one by one by the bench.
    pub next: usize,
    pub seed: u64,
}

/// A generated repository with deep history.
pub struct History {
    pub name: String,
    /// The bare repository Herald watches: the branch at the history's tip,
    /// one pack.
    pub served: PathBuf,
    /// Holds every commit, the next ones included: where pushes come from.
    source: GeneratedRepo,
    /// The served branch's commit now.
    pub tip: String,
    /// The commits after the history's tip, in push order.
    pub next: Vec<String>,
    pub tally: Tally,
}

/// What the generated history holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Files and their bytes at the history's tip.
    pub files: usize,
    pub binary_files: usize,
    pub bytes: u64,
    /// File changes over the whole history (a rename counts once).
    pub modified: usize,
    pub added: usize,
    pub deleted: usize,
    pub renamed: usize,
    /// Commits that touched more than ten files.
    pub large_commits: usize,
}

impl History {
    /// Generates the repository `{name}.git` under `served_dir` (and its
    /// source beside `served_dir`).
    pub fn generate(served_dir: &Path, name: &str, spec: HistorySpec) -> History {
        assert!(
            spec.commits >= 1 && spec.files >= 8,
            "at least 1 commit and 8 files"
        );
        let root = served_dir
            .parent()
            .expect("the served directory has a parent");
        let mut tally = Tally::default();
        let source = fast_import(root, &format!("{name}-source"), |stream| {
            let mut model = Model::new(spec);
            for k in 0..spec.commits + spec.next {
                model.commit(k, stream);
                if k + 1 == spec.commits {
                    tally = model.tally_at_tip();
                }
            }
        });
        let served = served_dir.join(format!("{name}.git"));
        init_bare(&served);
        let tip = source.commits[spec.commits - 1].clone();
        let history = History {
            name: name.to_owned(),
            served,
            next: source.commits[spec.commits..].to_vec(),
            source,
            tip: String::new(),
            tally,
        };
        history.push_commit(&tip);
        // Deltas computed again (`-f`): fast-import's are only against the
        // blob written just before, which a served repository's are not.
        git_ok(&history.served, &["repack", "-q", "-a", "-d", "-f"]);
        History { tip, ..history }
    }

    /// Pushes the `k`-th next commit to the served branch; returns it.
    pub fn push(&mut self, k: usize) -> String {
        let commit = self.next[k].clone();
        self.push_commit(&commit);
        self.tip = commit.clone();
        commit
    }

    fn push_commit(&self, commit: &str) {
        push_commit(&self.source.bare, &self.served, commit);
    }

    /// The served repository's pack files and their bytes.
    pub fn packs(&self) -> (usize, u64) {
        let dir = self.served.join("objects").join("pack");
        std::fs::read_dir(dir)
            .expect("the served repository's packs")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            .fold((0, 0), |(n, bytes), e| {
                (n + 1, bytes + e.metadata().map_or(0, |m| m.len()))
            })
    }
}

/// A real `git push` of `commit` from the repository at `source` to the
/// served branch of the one at `served`: only the objects it lacks travel.
pub(super) fn push_commit(source: &Path, served: &Path, commit: &str) {
    git_ok(
        source,
        &[
            "push",
            "--quiet",
            &served.display().to_string(),
            &format!("{commit}:refs/heads/{BRANCH}"),
        ],
    );
}

// ------------------------------------------------------------------ model

/// SplitMix64: small, fast, and the same sequence everywhere (the
/// reference workload draws from it too).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n` (`n` > 0).
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// In `low..=high`.
    pub(super) fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    pub(super) fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    /// In `[0, 1)`.
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

enum Body {
    Text(Vec<String>),
    Binary(Vec<u8>),
}

struct File {
    path: String,
    body: Body,
}

impl File {
    fn bytes(&self) -> Vec<u8> {
        match &self.body {
            Body::Text(lines) => {
                let mut text = lines.join("\n");
                text.push('\n');
                text.into_bytes()
            }
            Body::Binary(bytes) => bytes.clone(),
        }
    }

    fn is_text(&self) -> bool {
        matches!(self.body, Body::Text(_))
    }
}

const TOPS: [&str; 8] = [
    "src", "docs", "tests", "lib", "tools", "examples", "config", "assets",
];
const SYLLABLES: [&str; 24] = [
    "ka", "lo", "ri", "men", "tor", "sa", "vel", "un", "pra", "dex", "fi", "no", "ber", "tas",
    "lu", "gen", "ex", "ple", "mor", "qui", "st", "ab", "co", "da",
];
const TOKENS: [&str; 20] = [
    "fn", "let", "return", "{", "}", "=", "(", ")", ";", "//", "self", "impl", "use", "pub", "if",
    "else", "match", "=>", "Some", "None",
];
const TEXT_EXTENSIONS: [&str; 8] = ["rs", "md", "txt", "toml", "json", "py", "c", "yaml"];
const BINARY_EXTENSIONS: [&str; 3] = ["png", "woff2", "bin"];

/// The tree as the history has it so far, and the random source that
/// changes it.
struct Model {
    spec: HistorySpec,
    rng: Rng,
    files: Vec<File>,
    dirs: Vec<String>,
    words: Vec<String>,
    /// Makes every new name unique.
    counter: usize,
    tally: Tally,
}

impl Model {
    fn new(spec: HistorySpec) -> Model {
        let mut rng = Rng(spec.seed ^ 0x4865_7261_6c64);
        let mut words: Vec<String> = (0..400)
            .map(|_| {
                (0..rng.between(1, 3))
                    .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
                    .collect()
            })
            .collect();
        words.sort();
        words.dedup();
        let mut model = Model {
            spec,
            rng,
            files: Vec::new(),
            dirs: Vec::new(),
            words,
            counter: 0,
            tally: Tally::default(),
        };
        for top in TOPS {
            for _ in 0..model.rng.between(2, 5) {
                let dir = format!("{top}/{}", model.word());
                let nested = format!("{dir}/{}", model.word());
                model.dirs.push(dir);
                if model.rng.percent(40) {
                    model.dirs.push(nested);
                }
            }
        }
        model
    }

    fn word(&mut self) -> String {
        self.words[self.rng.below(self.words.len())].clone()
    }

    fn line(&mut self) -> String {
        if self.rng.percent(8) {
            return String::new();
        }
        let mut line = " ".repeat(4 * self.rng.below(4));
        for i in 0..self.rng.between(2, 10) {
            if i > 0 {
                line.push(' ');
            }
            if self.rng.percent(30) {
                line.push_str(TOKENS[self.rng.below(TOKENS.len())]);
            } else {
                let word = self.word();
                line.push_str(&word);
            }
        }
        line
    }

    /// Files at commit `k`, had they grown evenly from a quarter of the
    /// target to the target over the history.
    fn target(&self, k: usize) -> usize {
        let start = self.spec.files / 4;
        let commits = self.spec.commits.max(2) - 1;
        start + (self.spec.files - start) * k.min(commits) / commits
    }

    /// Writes commit `k` (marked `k + 1`) to the fast-import stream.
    fn commit(&mut self, k: usize, out: &mut dyn Write) {
        let (what, files_before) = (self.rng.below(100), self.files.len());
        let target = self.target(k);
        let message = if k == 0 {
            "initial import".to_owned()
        } else {
            format!("change {k}")
        };
        writeln!(out, "commit refs/heads/{BRANCH}\nmark :{}", k + 1).expect("fast-import input");
        let when = 1_500_000_000 + 600 * k;
        writeln!(out, "author Dev <dev@example.com> {when} +0000").expect("fast-import input");
        writeln!(out, "committer Dev <dev@example.com> {when} +0000").expect("fast-import input");
        writeln!(out, "data {}\n{message}", message.len()).expect("fast-import input");
        let mut touched = 0;
        if k == 0 {
            while self.files.len() < target.max(4) {
                touched += self.add(out);
            }
        } else {
            // Adding and deleting follow the target: an add above it
            // deletes instead, a delete below it adds.
            let above = files_before > target + 8;
            let below = files_before + 8 < target || files_before < 8;
            touched += match what {
                0..72 => {
                    let n = [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 4, 4, 5]
                        [self.rng.below(20)];
                    (0..n).map(|_| self.edit(out, false)).sum()
                }
                72..82 if above => self.delete_some(out),
                72..82 => {
                    let n = self.rng.between(1, 4);
                    (0..n).map(|_| self.add(out)).sum::<usize>() + self.edit(out, false)
                }
                82..87 if below => self.add(out),
                82..87 => self.delete_some(out),
                87..92 => {
                    let n = self.rng.between(1, 3);
                    (0..n).map(|_| self.rename(out)).sum()
                }
                92..95 => {
                    let n = self.rng.between(10, 60);
                    (0..n).map(|_| self.edit(out, false)).sum()
                }
                95..97 if above => self.delete_some(out),
                95..97 => {
                    let dir = format!(
                        "{}/{}{}",
                        TOPS[self.rng.below(4)],
                        self.word(),
                        self.counter
                    );
                    self.dirs.push(dir.clone());
                    let n = self.rng.between(10, 30);
                    (0..n).map(|_| self.add_in(out, &dir, false)).sum()
                }
                97..99 => self.binary(out),
                _ => self.edit(out, true) + (0..3).map(|_| self.edit(out, false)).sum::<usize>(),
            };
            while self.files.len() + 30 < target {
                touched += self.add(out);
            }
        }
        if touched > 10 && k > 0 {
            self.tally.large_commits += 1;
        }
    }

    /// A random text file's index (there is always one).
    fn text_file(&mut self) -> usize {
        loop {
            let i = self.rng.below(self.files.len());
            if self.files[i].is_text() {
                return i;
            }
        }
    }

    /// Edits a few lines of a random text file, or (`rewrite`) most of them.
    fn edit(&mut self, out: &mut dyn Write, rewrite: bool) -> usize {
        let i = self.text_file();
        self.edit_file(out, i, rewrite);
        1
    }

    fn edit_file(&mut self, out: &mut dyn Write, i: usize, rewrite: bool) {
        let Body::Text(mut lines) =
            std::mem::replace(&mut self.files[i].body, Body::Text(Vec::new()))
        else {
            unreachable!("only text files are edited")
        };
        let hunks = if rewrite {
            for line in lines.iter_mut() {
                if self.rng.percent(70) {
                    *line = self.line();
                }
            }
            0
        } else {
            [1, 1, 1, 2, 2, 3][self.rng.below(6)]
        };
        for _ in 0..hunks {
            let at = self.rng.below(lines.len());
            match self.rng.below(100) {
                0..60 => {
                    let end = (at + self.rng.between(1, 3)).min(lines.len());
                    for line in lines.iter_mut().take(end).skip(at) {
                        *line = self.line();
                    }
                }
                60..85 => {
                    for _ in 0..self.rng.between(1, 5) {
                        let line = self.line();
                        lines.insert(at, line);
                    }
                }
                _ if lines.len() > 4 => {
                    let end = (at + self.rng.between(1, 3)).min(lines.len());
                    lines.drain(at..end);
                }
                _ => {
                    let line = self.line();
                    lines.push(line);
                }
            }
        }
        self.files[i].body = Body::Text(lines);
        inline(out, &self.files[i].path, &self.files[i].bytes());
        self.tally.modified += 1;
    }

    fn add(&mut self, out: &mut dyn Write) -> usize {
        let dir = self.dirs[self.rng.below(self.dirs.len())].clone();
        let binary = self.rng.percent(2);
        self.add_in(out, &dir, binary)
    }

    fn add_in(&mut self, out: &mut dyn Write, dir: &str, binary: bool) -> usize {
        self.counter += 1;
        let extension = if binary {
            BINARY_EXTENSIONS[self.rng.below(BINARY_EXTENSIONS.len())]
        } else {
            TEXT_EXTENSIONS[self.rng.below(TEXT_EXTENSIONS.len())]
        };
        let path = format!(
            "{dir}/{}_{}{}.{extension}",
            self.word(),
            self.word(),
            self.counter
        );
        let body = if binary {
            Body::Binary(self.binary_bytes())
        } else {
            // Mostly 20 to 400 lines (1 to 16 KB), one in a hundred far
            // longer.
            let lines = if self.rng.percent(1) {
                self.rng.between(1_000, 3_000)
            } else {
                (20.0 * (3.0 * self.rng.unit()).exp()) as usize
            };
            Body::Text((0..lines).map(|_| self.line()).collect())
        };
        let file = File { path, body };
        inline(out, &file.path, &file.bytes());
        self.files.push(file);
        self.tally.added += 1;
        1
    }

    /// 2 KB to 200 KB that do not compress, behind a PNG signature.
    fn binary_bytes(&mut self) -> Vec<u8> {
        let size = (2048.0 * (4.6 * self.rng.unit()).exp()) as usize;
        let mut bytes = b"\x89PNG\r\n\x1a\n\0".to_vec();
        while bytes.len() < size {
            bytes.extend_from_slice(&self.rng.next().to_le_bytes());
        }
        bytes
    }

    /// Replaces a binary file's content, or adds one.
    fn binary(&mut self, out: &mut dyn Write) -> usize {
        let binaries: Vec<usize> = (0..self.files.len())
            .filter(|i| !self.files[*i].is_text())
            .collect();
        if binaries.is_empty() || self.rng.percent(30) {
            return self.add(out);
        }
        let i = binaries[self.rng.below(binaries.len())];
        self.files[i].body = Body::Binary(self.binary_bytes());
        inline(out, &self.files[i].path, &self.files[i].bytes());
        self.tally.modified += 1;
        1
    }

    fn delete_some(&mut self, out: &mut dyn Write) -> usize {
        let n = self
            .rng
            .between(1, 3)
            .min(self.files.len().saturating_sub(4));
        for _ in 0..n {
            let i = self.text_file();
            let file = self.files.swap_remove(i);
            writeln!(out, "D {}", file.path).expect("fast-import input");
            self.tally.deleted += 1;
        }
        n
    }

    /// Moves a file to another directory or renames it in its own, half
    /// of the time with an edit.
    fn rename(&mut self, out: &mut dyn Write) -> usize {
        let i = self.rng.below(self.files.len());
        let old = self.files[i].path.clone();
        let (dir, base) = old.rsplit_once('/').expect("every file is in a directory");
        self.counter += 1;
        let new = if self.rng.percent(50) {
            let other = self.dirs[self.rng.below(self.dirs.len())].clone();
            format!("{other}/{}{}", self.word(), self.counter)
        } else {
            format!("{dir}/{}{}", self.word(), self.counter)
        };
        let extension = base.rsplit_once('.').map_or("txt", |(_, e)| e);
        let new = format!("{new}.{extension}");
        writeln!(out, "R {old} {new}").expect("fast-import input");
        self.files[i].path = new;
        self.tally.renamed += 1;
        if self.files[i].is_text() && self.rng.percent(50) {
            self.edit_file(out, i, false);
        }
        1
    }

    fn tally_at_tip(&self) -> Tally {
        Tally {
            files: self.files.len(),
            binary_files: self.files.iter().filter(|f| !f.is_text()).count(),
            bytes: self
                .files
                .iter()
                .map(|f| match &f.body {
                    Body::Text(lines) => lines.iter().map(|l| l.len() as u64 + 1).sum(),
                    Body::Binary(bytes) => bytes.len() as u64,
                })
                .sum(),
            ..self.tally
        }
    }
}
