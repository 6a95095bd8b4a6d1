//! A replay's git work, on a scan worker (it blocks): resolve the two
//! commits in the repository's mirror, fetching one the mirror no longer
//! holds from the remote with the subscription's own credential, diff their
//! trees with the scan's diff ([`changes::diff_commits`]), describe the old
//! side of what changed, count what the subscription sees of it with the
//! outbox's own rule ([`changes_for`]), and pin the `to` commit under the
//! replay's id so that its content stays in the mirror until its events are
//! delivered. What it returns is written by [`crate::store::replays`].

use std::path::PathBuf;

use git2::{ErrorCode, Oid};

use crate::changes::{self, ChangeError, ReplayDiff, Visibility, changes_for};
use crate::git::{GitError, Mirror, RemoteSpec};

use super::MirrorModules;

/// The most events one replay may write. A bigger diff is refused (the
/// caller replays narrower ranges, or resyncs): a replay is written in one
/// transaction, as a scan is, and this keeps that transaction and the
/// work before it bounded.
pub const MAX_REPLAY_EVENTS: usize = 10_000;

/// What a replay asks of git, gathered by the caller from the database.
#[derive(Clone)]
pub struct ReplayJob {
    pub mirror: PathBuf,
    /// The remote with the subscription's own credential: a commit comes
    /// back only to a subscriber that can read it.
    pub remote: RemoteSpec,
    /// The watched branch, when known (a server that serves commits only
    /// within a branch's history is asked for that history).
    pub branch: Option<String>,
    /// The commits as the caller gave them: 4 to 40 hex digits.
    pub from: String,
    pub to: String,
    /// The replay's id, the name `to` is pinned under.
    pub replay_id: String,
    /// The subscription's globs.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub max_events: usize,
    /// LFS pointers are described by their objects (`git.lfs`), as scans
    /// describe them.
    pub lfs: bool,
    /// Submodules expanded, as the repository's scans expand them.
    pub expand_submodules: bool,
}

/// Why a replay cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayFailure {
    /// The commit is in neither the mirror nor the remote (history was
    /// rewritten and pruned), or, abbreviated, not in the mirror.
    #[error("{0}")]
    UnknownCommit(String),
    #[error("{field}: {commit} names more than one object; give more digits")]
    Ambiguous { field: &'static str, commit: String },
    #[error(
        "the replay would write {events} events, more than the {limit} one replay may write; replay a narrower range of commits"
    )]
    TooLarge { events: usize, limit: usize },
    /// The remote could not be asked, or the mirror could not be read.
    #[error("{}", .0.message)]
    Git(GitError),
}

impl From<GitError> for ReplayFailure {
    fn from(err: GitError) -> Self {
        ReplayFailure::Git(err)
    }
}

fn read_failure(err: impl std::fmt::Display) -> ReplayFailure {
    tracing::warn!(error = %err, "reading the mirror for a replay failed");
    ReplayFailure::Git(GitError::internal("the local mirror could not be read"))
}

/// A diff's failure: a submodule's remote's (as a scan reports it), or the
/// mirror's.
fn change_failure(err: ChangeError) -> ReplayFailure {
    match err {
        err @ ChangeError::Submodule { .. } => ReplayFailure::Git(super::change_failure(err)),
        err @ ChangeError::Read(_) => read_failure(err),
    }
}

/// Computes a replay (see the module's documentation).
pub fn replay_diff(job: &ReplayJob) -> Result<ReplayDiff, ReplayFailure> {
    // One writer per mirror: a scan or a lane's refetch waits meanwhile.
    let mirror = Mirror::open(&job.mirror)?;
    let from = resolve(&mirror, job, "from", &job.from)?;
    let to = resolve(&mirror, job, "to", &job.to)?;
    let repo = mirror.repo();
    let mut modules = MirrorModules {
        mirror: &mirror,
        remote: &job.remote,
    };
    let mut reading = modules.reading(job.lfs, job.expand_submodules);
    let delta = changes::diff_commits(repo, from, to, &mut reading).map_err(change_failure)?;
    let old_visibility = Visibility::new(
        changes::ignore_rules(repo, from).map_err(read_failure)?,
        &job.include,
        &job.exclude,
    );
    let new_visibility = Visibility::new(
        changes::ignore_rules(repo, to).map_err(read_failure)?,
        &job.include,
        &job.exclude,
    );
    let touched = delta.upserts().map(|(path, _)| path).chain(delta.deletes());
    // Changed ignore rules may show or hide files the diff did not touch:
    // those whose visibility differs on the two sides are the change too.
    let flips = |path: &str| old_visibility.sees(path) != new_visibility.sees(path);
    let old = changes::describe_files(
        repo,
        from,
        touched,
        delta
            .ignore_rules_changed
            .then_some(&flips as &dyn Fn(&str) -> bool),
        &mut reading,
    )
    .map_err(read_failure)?;
    let events = changes_for(&old, &delta, &old_visibility, &new_visibility).len();
    if events > job.max_events {
        return Err(ReplayFailure::TooLarge {
            events,
            limit: job.max_events,
        });
    }
    mirror.pin(&job.replay_id, to)?;
    if job.expand_submodules {
        modules.keep_needed();
    }
    Ok(ReplayDiff {
        from: from.to_string(),
        to: to.to_string(),
        old,
        delta,
        old_visibility,
        new_visibility,
        events,
    })
}

/// A commit as the caller named it: a full SHA is fetched again when the
/// mirror no longer holds it; an abbreviated one is looked up in the mirror
/// only (the remote cannot be asked for a prefix).
fn resolve(
    mirror: &Mirror,
    job: &ReplayJob,
    field: &'static str,
    given: &str,
) -> Result<Oid, ReplayFailure> {
    let given = given.to_ascii_lowercase();
    if given.len() == 40 {
        let oid = Oid::from_str(&given).map_err(read_failure)?;
        if mirror.has_commit(&given) {
            return Ok(oid);
        }
        return match mirror.refetch_commit(&job.remote, job.branch.as_deref(), &given, None)? {
            true => Ok(oid),
            false => Err(ReplayFailure::UnknownCommit(format!(
                "{field}: the remote no longer has commit {given} (its history was rewritten); nothing was replayed"
            ))),
        };
    }
    match mirror.repo().find_commit_by_prefix(&given) {
        Ok(commit) => Ok(commit.id()),
        Err(err) if err.code() == ErrorCode::Ambiguous => Err(ReplayFailure::Ambiguous {
            field,
            commit: given,
        }),
        Err(_) => Err(ReplayFailure::UnknownCommit(format!(
            "{field}: no commit {given} in Herald's copy of the repository; give the full 40-digit SHA so that it can be fetched"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::{ConnectRule, LowSpeed};

    /// A bare mirror holding a history of commits made by `git` (each a
    /// list of (path, content or `None` to delete)); the commits' SHAs.
    fn mirror_with(dir: &std::path::Path, commits: &[&[(&str, Option<&str>)]]) -> Vec<String> {
        let work = dir.join("work");
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .current_dir(&work)
                .output()
                .expect("git runs");
            assert!(out.status.success(), "{:?}", out);
            String::from_utf8(out.stdout)
                .expect("utf-8")
                .trim()
                .to_owned()
        };
        std::fs::create_dir_all(&work).expect("work dir");
        git(&["init", "-q", "-b", "main"]);
        let mut shas = Vec::new();
        for files in commits {
            for (path, content) in *files {
                let file = work.join(path);
                match content {
                    Some(content) => {
                        std::fs::create_dir_all(file.parent().expect("a parent")).expect("dirs");
                        std::fs::write(&file, content).expect("write");
                    }
                    None => std::fs::remove_file(&file).expect("remove"),
                }
            }
            git(&["add", "-A"]);
            git(&["commit", "-q", "--allow-empty", "-m", "c"]);
            shas.push(git(&["rev-parse", "HEAD"]));
        }
        let mirror = dir.join("mirror.git");
        let out = std::process::Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&work)
            .arg(&mirror)
            .output()
            .expect("git clone runs");
        assert!(out.status.success(), "{:?}", out);
        shas
    }

    fn job(dir: &std::path::Path, from: &str, to: &str) -> ReplayJob {
        ReplayJob {
            mirror: dir.join("mirror.git"),
            remote: RemoteSpec {
                // Nothing is fetched in these tests: every commit is local.
                url: dir.join("nowhere").display().to_string(),
                credentials: None,
                timeout: std::time::Duration::from_secs(5),
                low_speed: LowSpeed::default(),
                rule: ConnectRule {
                    allow_private: true,
                    allow_http: true,
                    allow_local: true,
                    data_dir: dir.join("data"),
                },
            },
            branch: Some("main".into()),
            from: from.into(),
            to: to.into(),
            replay_id: "rpl_01".into(),
            include: Vec::new(),
            exclude: Vec::new(),
            max_events: MAX_REPLAY_EVENTS,
            lfs: true,
            expand_submodules: false,
        }
    }

    fn kinds(diff: &ReplayDiff) -> Vec<(entity::EventKind, String)> {
        changes_for(
            &diff.old,
            &diff.delta,
            &diff.old_visibility,
            &diff.new_visibility,
        )
        .iter()
        .map(|p| (p.kind, p.path.to_owned()))
        .collect()
    }

    #[test]
    fn the_diff_between_two_commits_is_what_a_scan_would_have_written() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let shas = mirror_with(
            dir.path(),
            &[
                &[
                    ("a.md", Some("a1")),
                    ("b.md", Some("b1")),
                    ("c.md", Some("c1")),
                ],
                &[("a.md", Some("a2")), ("b.md", None), ("d.md", Some("d1"))],
                &[("c.md", Some("c2"))],
            ],
        );
        let diff = replay_diff(&job(dir.path(), &shas[0], &shas[2])).expect("replayed");
        use entity::EventKind::{Created, Deleted, Updated};
        assert_eq!(
            kinds(&diff),
            [
                (Deleted, "b.md".into()),
                (Created, "d.md".into()),
                (Updated, "a.md".into()),
                (Updated, "c.md".into()),
            ]
        );
        assert_eq!(diff.events, 4);
        assert_eq!(
            (diff.from.as_str(), diff.to.as_str()),
            (&*shas[0], &*shas[2])
        );
        // The `to` commit is pinned under the replay's id.
        let mirror = git2::Repository::open_bare(dir.path().join("mirror.git")).expect("open");
        let pinned = mirror
            .find_reference(&crate::git::snapshot_ref("rpl_01"))
            .expect("pinned");
        assert_eq!(
            pinned.target().map(|o| o.to_string()),
            Some(shas[2].clone())
        );

        // Abbreviated commits resolve in the mirror.
        let short = replay_diff(&job(dir.path(), &shas[0][..10], &shas[2][..7])).expect("short");
        assert_eq!(short.events, 4);
    }

    #[test]
    fn globs_and_ignore_rules_filter_as_they_do_for_scans() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let shas = mirror_with(
            dir.path(),
            &[
                &[
                    ("docs/a.md", Some("a1")),
                    ("src/x.rs", Some("x1")),
                    ("tmp.log", Some("l")),
                ],
                &[
                    ("docs/a.md", Some("a2")),
                    ("src/x.rs", Some("x2")),
                    (".heraldignore", Some("tmp.log\n")),
                ],
            ],
        );
        let mut only_docs = job(dir.path(), &shas[0], &shas[1]);
        only_docs.include = vec!["docs/**".into()];
        let diff = replay_diff(&only_docs).expect("replayed");
        assert_eq!(
            kinds(&diff),
            [(entity::EventKind::Updated, "docs/a.md".to_owned())]
        );
        // Everything: the ignore file itself is a file, and `tmp.log`,
        // untouched by the diff, is now ignored: deleted for the app.
        let diff = replay_diff(&job(dir.path(), &shas[0], &shas[1])).expect("replayed");
        use entity::EventKind::{Created, Deleted, Updated};
        assert_eq!(
            kinds(&diff),
            [
                (Deleted, "tmp.log".into()),
                (Created, ".heraldignore".into()),
                (Updated, "docs/a.md".into()),
                (Updated, "src/x.rs".into()),
            ]
        );
    }

    #[test]
    fn unknown_commits_and_too_large_replays_are_refused_and_pin_nothing() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let shas = mirror_with(
            dir.path(),
            &[
                &[("a.md", Some("1")), ("b.md", Some("1"))],
                &[("a.md", Some("2")), ("b.md", Some("2"))],
            ],
        );
        let mut small = job(dir.path(), &shas[0], &shas[1]);
        small.max_events = 1;
        assert!(matches!(
            replay_diff(&small),
            Err(ReplayFailure::TooLarge {
                events: 2,
                limit: 1
            })
        ));
        let gone = "1".repeat(40);
        assert!(matches!(
            replay_diff(&job(dir.path(), &gone, &shas[1])),
            Err(ReplayFailure::UnknownCommit(message)) if message.contains(&gone)
        ));
        assert!(matches!(
            replay_diff(&job(dir.path(), &shas[0], "abcdef0")),
            Err(ReplayFailure::UnknownCommit(message)) if message.starts_with("to:")
        ));
        let mirror = git2::Repository::open_bare(dir.path().join("mirror.git")).expect("open");
        assert!(
            mirror
                .find_reference(&crate::git::snapshot_ref("rpl_01"))
                .is_err(),
            "a refused replay pins nothing"
        );
    }
}
