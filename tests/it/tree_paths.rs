//! Tree entries git itself refuses (`..`, `.git` in any spelling), crafted
//! with git's plumbing (`hash-object`, `mktree`, `commit-tree`): libgit2 reads
//! such trees, and Herald skips them with a warning rather than telling an
//! app of a path that climbs out of its checkout or plants a git config.

use std::io::Write as _;
use std::process::Stdio;

use crate::gitserver::{GitDaemon, Served, TestRepo, git_command};
use crate::helpers::watch;

/// Runs a git plumbing command in `repo` with `input` on its standard input;
/// its output, trimmed.
fn git_stdin(repo: &TestRepo, args: &[&str], input: &str) -> String {
    let mut child = git_command(repo.path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the git CLI runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .expect("git reads its input");
    let output = child.wait_with_output().expect("git finishes");
    assert!(output.status.success(), "git {args:?} failed");
    String::from_utf8(output.stdout)
        .expect("git prints UTF-8")
        .trim()
        .to_owned()
}

/// A commit on `main` whose tree holds `safe` (a file at the top) beside
/// entries git would refuse, each holding a file: `.git/config`,
/// `.GIT/config`, `git~1/config`, `.git./config`, `../x`, `sub/.git/config`,
/// and a top-level file named `.Git `.
fn craft(repo: &TestRepo, safe: &str, parent: Option<&str>) -> String {
    let blob = |content: &str| git_stdin(repo, &["hash-object", "-w", "--stdin"], content);
    let config = blob("[core]\n\tfsmonitor = \"touch pwned\"\n");
    let plain = blob("plain\n");
    let tree = |entries: &[(&str, &str, &str)]| {
        let listing: String = entries
            .iter()
            .map(|(mode, id, name)| {
                let kind = if *mode == "040000" { "tree" } else { "blob" };
                format!("{mode} {kind} {id}\t{name}\n")
            })
            .collect();
        git_stdin(repo, &["mktree"], &listing)
    };
    let dot_git = tree(&[("100644", &config, "config")]);
    let x = tree(&[("100644", &plain, "x")]);
    let sub = tree(&[("040000", &dot_git, ".git"), ("100644", &plain, "kept.txt")]);
    let top = tree(&[
        ("040000", &dot_git, ".git"),
        ("040000", &dot_git, ".GIT"),
        ("040000", &dot_git, "git~1"),
        ("040000", &dot_git, ".git."),
        ("040000", &x, ".."),
        ("100644", &plain, ".Git "),
        ("100644", &plain, safe),
        ("040000", &sub, "sub"),
    ]);
    let mut args = vec!["commit-tree", top.as_str(), "-m", "crafted"];
    if let Some(parent) = parent {
        args.extend(["-p", parent]);
    }
    let commit = repo.git(&args).trim().to_owned();
    repo.git(&["update-ref", "refs/heads/main", &commit]);
    commit
}

#[tokio::test]
async fn dot_git_and_dot_dot_entries_are_skipped_with_a_warning() {
    // One repository whose first snapshot is crafted (the whole tree is
    // walked), one where the crafted tree comes as a change (tree diff).
    let first = TestRepo::new("main");
    let first_commit = craft(&first, "safe.txt", None);
    let second = TestRepo::new("main");
    second.write("README.md", "hello\n");
    let base = second.commit("first");
    let served_first = Served::new(&first, "first.git");
    let served_second = served_first.sibling(&second, "second.git");
    let daemon = GitDaemon::serve(served_first.root());

    let app = crate::helpers::engine_with(&[]).await;
    let client = app.onboard("acme").await;
    let first_id = watch(&app, &client, &daemon.url("first.git")).await;
    app.wait_for_commit(&client, &first_id, &first_commit).await;
    let second_id = watch(&app, &client, &daemon.url("second.git")).await;
    app.wait_for_commit(&client, &second_id, &base).await;
    let changed = craft(&second, "added.txt", Some(&base));
    served_second.push(&second, "main:refs/heads/main", true);
    app.wait_for_commit(&client, &second_id, &changed).await;

    let events = |events: Vec<crate::helpers::OutboxEvent>| -> Vec<(String, String)> {
        events
            .into_iter()
            .map(|event| (event.kind, event.path.unwrap_or_default()))
            .collect()
    };
    let expected = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(kind, path)| ((*kind).to_owned(), (*path).to_owned()))
            .collect()
    };
    assert_eq!(
        events(app.outbox(&client, &first_id).await),
        expected(&[("created", "safe.txt"), ("created", "sub/kept.txt")]),
        "only the entries git would check out"
    );
    assert_eq!(
        events(app.outbox(&client, &second_id).await),
        expected(&[
            ("created", "README.md"),
            ("deleted", "README.md"),
            ("created", "added.txt"),
            ("created", "sub/kept.txt"),
        ]),
    );
    let logs = app.logs();
    assert!(
        logs.contains("skipped a tree entry git would refuse"),
        "{logs}"
    );
}
