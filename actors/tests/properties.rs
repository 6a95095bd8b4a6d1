//! Property tests of the engine's pure parts against what Herald receives
//! from outside and sends out: inbound hook payloads and signatures, remote
//! URLs, a subscription's include / exclude globs and the repository's
//! ignore files (against `git check-ignore` under the same rules), and the
//! webhook renderer and chunker against a receiver's reassembly. A bounded number of cases runs with `cargo test`; for a long
//! run, raise it:
//!
//! ```sh
//! PROPTEST_CASES=200000 cargo test --release -p actors --test properties
//! ```

use base64::Engine as _;
use entity::{EventKind, EventStatus, event};
use proptest::prelude::*;
use secrecy::SecretString;

use actors::changes::{Visibility, ignore_rules};
use actors::inbound::{Provider, RemoteKey, interpret, json_payload, sign, verify};
use actors::payload::{Chunking, RepositoryRef, render};

/// Cases per property: `PROPTEST_CASES`, or a CI-sized default.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const PROVIDERS: [Provider; 4] = [
    Provider::GitHub,
    Provider::GitLab,
    Provider::Gitea,
    Provider::Bitbucket,
];

fn provider() -> impl Strategy<Value = Provider> {
    (0..PROVIDERS.len()).prop_map(|i| PROVIDERS[i])
}

/// JSON shaped like hook payloads: objects of the fields hosts send, with
/// values of any type, nested a little.
fn hookish_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z/:.@ _-]{0,24}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("refs/heads/main")),
        Just(serde_json::Value::from(
            "https://example.com/acme/widgets.git"
        )),
    ];
    let keys = prop_oneof![
        Just("ref"),
        Just("before"),
        Just("after"),
        Just("repository"),
        Just("project"),
        Just("changes"),
        Just("push"),
        Just("new"),
        Just("old"),
        Just("ref_type"),
        Just("event_name"),
        Just("clone_url"),
        Just("git_http_url"),
        Just("links"),
        Just("html"),
        Just("href"),
        Just("name"),
        Just("type"),
        Just("full_name"),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys.clone().prop_map(str::to_owned), inner, 0..6)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("push".to_owned()),
        Just("Push Hook".to_owned()),
        Just("System Hook".to_owned()),
        Just("delete".to_owned()),
        Just("repo:push".to_owned()),
        Just("ping".to_owned()),
        "[A-Za-z:_ ]{0,16}",
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Whatever a host (or anyone holding its secret) sends, reading it
    /// answers (a trigger or a reason it is invalid) and never panics.
    #[test]
    fn hook_payloads_are_read_without_panicking(
        provider in provider(),
        event in event_type(),
        body in prop_oneof![
            hookish_json().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..256),
        ],
    ) {
        let _ = interpret(provider, &event, &body);
    }

    /// A signature over the exact bytes verifies; any other bytes, secret
    /// or signature do not.
    #[test]
    fn signatures_verify_only_over_the_exact_bytes_and_secret(
        provider in prop_oneof![Just(Provider::GitHub), Just(Provider::Gitea), Just(Provider::Bitbucket)],
        secret in "[ -~]{1,40}",
        body in prop::collection::vec(any::<u8>(), 1..512),
        flip in any::<prop::sample::Index>(),
        other_secret in "[ -~]{1,40}",
    ) {
        let key = SecretString::from(secret.clone());
        let header = format!("sha256={}", sign(&secret, &body));
        prop_assert!(verify(provider, &key, Some(&header), &body));
        let mut changed = body.clone();
        let at = flip.index(changed.len());
        changed[at] ^= 0x01;
        prop_assert!(!verify(provider, &key, Some(&header), &changed));
        if other_secret != secret {
            let other = SecretString::from(other_secret);
            prop_assert!(!verify(provider, &other, Some(&header), &body));
        }
        prop_assert!(!verify(provider, &key, None, &body));
        prop_assert!(!verify(provider, &key, Some("sha256="), &body));
    }

    /// GitLab's token is compared whole. (Configured secrets are trimmed and
    /// never blank, so the tokens here have no surrounding spaces.)
    #[test]
    fn gitlab_tokens_match_only_themselves(token in "[!-~]([ -~]{0,38}[!-~])?", other in "[ -~]{1,40}") {
        let key = SecretString::from(token.clone());
        let body: &[u8] = b"[]";
        prop_assert!(verify(Provider::GitLab, &key, Some(&token), body));
        if other.trim() != token.trim() {
            prop_assert!(!verify(Provider::GitLab, &key, Some(&other), body));
        }
    }

    /// The form content type carries the JSON in its `payload` field,
    /// URL-encoded: decoding gives back the exact JSON.
    #[test]
    fn form_bodies_give_back_their_json(json in hookish_json()) {
        let text = json.to_string();
        let form = serde_urlencoded::to_string([("payload", text.as_str())]).expect("encodes");
        let decoded = json_payload(true, form.as_bytes()).expect("a payload field");
        prop_assert_eq!(decoded.as_ref(), text.as_bytes());
        let plain = json_payload(false, text.as_bytes()).expect("as is");
        prop_assert_eq!(plain.as_ref(), text.as_bytes());
    }

    /// A repository's https, ssh and scp-like URLs name the same repository,
    /// whatever the case, `.git` or trailing slash; another path never does.
    #[test]
    fn remote_urls_match_across_their_forms(
        host in "[a-z][a-z0-9-]{0,12}\\.(com|org|io)",
        owner in "[A-Za-z0-9][A-Za-z0-9_.-]{0,12}",
        name in "[A-Za-z0-9][A-Za-z0-9_-]{0,12}",
        other in "[A-Za-z0-9][A-Za-z0-9_-]{0,12}",
        junk in "\\PC{0,40}",
    ) {
        let https = RemoteKey::parse(&format!("https://{host}/{owner}/{name}.git")).expect("https");
        let web = RemoteKey::parse(&format!("https://{}/{owner}/{name}/", host.to_uppercase())).expect("web");
        let scp = RemoteKey::parse(&format!("git@{host}:{owner}/{name}.git")).expect("scp");
        let ssh = RemoteKey::parse(&format!("ssh://git@{host}/{owner}/{name}")).expect("ssh");
        for key in [&web, &scp, &ssh] {
            prop_assert!(https.matches(key), "{https:?} vs {key:?}");
            prop_assert!(key.matches(&https));
        }
        if other.to_lowercase() != name.to_lowercase() {
            let elsewhere = RemoteKey::parse(&format!("https://{host}/{owner}/{other}")).expect("other");
            prop_assert!(!https.matches(&elsewhere));
        }
        let _ = RemoteKey::parse(&junk);
    }

    /// A file's webhooks, whole or chunked, give the receiver back exactly
    /// the file: chunks in order, each complete JSON with the whole file's
    /// metadata, one chunk id, distinct and stable webhook ids.
    #[test]
    fn rendered_files_reassemble_to_their_content(
        content in prop::collection::vec(any::<u8>(), 0..6000),
        threshold in 0u64..4000,
        chunk_chars in 1usize..1500,
        binary in any::<bool>(),
    ) {
        let text_content: Vec<u8> = content.iter().map(|b| b'a' + b % 26).collect();
        let content = if binary { content } else { text_content };
        let event = file_event(&content, binary);
        let repository = RepositoryRef {
            repository_id: "repo_1".into(),
            github_url: "https://example.com/acme/widgets".into(),
            owner: "acme".into(),
            name: "widgets".into(),
        };
        let chunking = Chunking { threshold_bytes: threshold, chunk_chars };
        let rendered = render(&event, &repository, Some(&content), chunking).expect("renders");
        prop_assert_eq!(rendered.endpoint, "create");
        let mut ids = std::collections::HashSet::new();
        let mut assembled = String::new();
        let mut chunk_ids = std::collections::HashSet::new();
        for index in 0..rendered.len() {
            let (id, body) = rendered.part(&event.id, index);
            prop_assert_eq!(rendered.part(&event.id, index).0, id.clone(), "stable ids");
            prop_assert!(ids.insert(id));
            let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            let file = &body["file"];
            prop_assert_eq!(&file["path"], "docs/file");
            prop_assert_eq!(&file["size"], &serde_json::Value::from(content.len()));
            prop_assert_eq!(&body["event_id"], event.id.as_str());
            if rendered.is_chunked() {
                prop_assert_eq!(&file["chunk"]["index"], &serde_json::Value::from(index));
                prop_assert_eq!(&file["chunk"]["total"], &serde_json::Value::from(rendered.len()));
                chunk_ids.insert(file["chunk"]["id"].as_str().expect("chunk id").to_owned());
            }
            assembled.push_str(file["content"].as_str().expect("content"));
        }
        let received = if binary {
            base64::engine::general_purpose::STANDARD.decode(&assembled).expect("base64")
        } else {
            prop_assert!(!rendered.is_chunked(), "text goes whole");
            assembled.into_bytes()
        };
        prop_assert_eq!(received, content);
        prop_assert!(chunk_ids.len() <= 1, "one chunk id per file");
    }
}

fn file_event(content: &[u8], binary: bool) -> event::Model {
    event::Model {
        id: "evt_01".into(),
        subscription_id: "sub_1".into(),
        app_id: "app_1".into(),
        repository_id: "repo_1".into(),
        snapshot_id: Some("snap_1".into()),
        seq: 1,
        kind: EventKind::Created,
        path: Some("docs/file".into()),
        sha256: Some("0".repeat(64)),
        previous_sha256: None,
        size: Some(i64::try_from(content.len()).expect("small")),
        blob_id: Some("b".into()),
        binary,
        lfs: false,
        renamed_from: None,
        commit_sha: Some("c0ffee".into()),
        payload: None,
        status: EventStatus::Pending,
        attempts: 0,
        next_attempt_at: 0,
        last_error: None,
        created_at: 0,
        delivered_at: None,
        trace_parent: None,
        stream_pos: None,
        replay_id: None,
    }
}

/// Path segments: plain names, dotfiles, non-ASCII, and names holding glob
/// metacharacters (legal in file names, so patterns must escape them).
const SEGMENTS: [&str; 10] = [
    "a", "b", "docs", "x.md", "y.txt", ".hidden", "ünï", "x[1].md", "*star", "a b",
];

/// A repository path of one to four segments.
fn repo_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(SEGMENTS.to_vec()), 1..5)
        .prop_map(|segments| segments.join("/"))
}

/// A line of an ignore file: a pattern over the same names with wildcards,
/// optionally negated, anchored or for directories only; or a comment or a
/// blank line.
fn ignore_line() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec![
        "a", "b", "docs", "x.md", "y.txt", ".hidden", "ünï", "*.md", "*", "**", "?", "y.*", "[ab]",
        "d*s",
    ]);
    let pattern = (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(segment, 1..4),
        any::<bool>(),
    )
        .prop_map(|(negated, anchored, segments, directory)| {
            format!(
                "{}{}{}{}",
                if negated { "!" } else { "" },
                if anchored { "/" } else { "" },
                segments.join("/"),
                if directory { "/" } else { "" },
            )
        });
    prop_oneof![
        8 => pattern,
        1 => Just("# a comment".to_owned()),
        1 => Just(String::new()),
    ]
}

/// The rules of `lines` as Herald reads them (a commit whose `.heraldignore`
/// holds them), and whether git ignores each path under the same rules (as
/// `.gitignore`, asked of `git check-ignore`, with no other excludes).
/// libgit2 is no oracle here: it lets `!` re-include a file below an
/// ignored folder, which git does not.
fn ignored_by_git(lines: &[String], paths: &[String]) -> (Visibility, Vec<bool>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let repo = git2::Repository::init(dir.path()).expect("git init");
    let text = format!("{}\n", lines.join("\n"));
    let blob = repo.blob(text.as_bytes()).expect("blob");
    let mut builder = repo.treebuilder(None).expect("tree builder");
    builder
        .insert(".heraldignore", blob, 0o100_644)
        .expect("tree entry");
    let tree = repo
        .find_tree(builder.write().expect("tree"))
        .expect("the tree");
    let signature = git2::Signature::now("t", "t@example.com").expect("signature");
    let commit = repo
        .commit(None, &signature, &signature, "rules", &tree, &[])
        .expect("commit");
    let rules = ignore_rules(&repo, commit).expect("rules read");
    std::fs::write(dir.path().join(".gitignore"), &text).expect(".gitignore");
    let mut command = std::process::Command::new("git");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GIT_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .args(["check-ignore", "--no-index", "--stdin", "-z"])
        .current_dir(dir.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the git CLI runs");
    let mut input = Vec::new();
    for path in paths {
        input.extend_from_slice(path.as_bytes());
        input.push(0);
    }
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &input)
        .expect("paths written");
    let output = child.wait_with_output().expect("git check-ignore ends");
    // Exit 0: some path is ignored; 1: none is.
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "git check-ignore failed: {}",
        output.status
    );
    let ignored: std::collections::HashSet<&[u8]> = output
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .collect();
    let verdicts = paths
        .iter()
        .map(|path| ignored.contains(path.as_bytes()))
        .collect();
    (Visibility::new(rules, &[], &[]), verdicts)
}

proptest! {
    #![proptest_config(config())]

    /// `.heraldignore` means what `.gitignore` means to git: a path is
    /// hidden exactly when `git check-ignore` says so under the same lines
    /// (last match wins, `!` re-includes, `/` anchors or marks directories,
    /// and nothing inside an ignored directory comes back).
    #[test]
    fn ignore_files_hide_what_git_ignores(
        lines in prop::collection::vec(ignore_line(), 0..6),
        paths in prop::collection::vec(repo_path(), 1..16),
    ) {
        let (visibility, ignored) = ignored_by_git(&lines, &paths);
        for (path, ignored) in paths.iter().zip(ignored) {
            prop_assert_eq!(visibility.sees(path), !ignored, "{:?} under {:?}", path, lines);
        }
    }

    /// A subscription that includes one file (its path, escaped) sees that
    /// file only; one that includes a folder (`folder/**`) sees exactly what
    /// is under it, and excluding the folder sees exactly the rest; an
    /// exclude wins over an include.
    #[test]
    fn include_and_exclude_select_exactly_their_paths(
        paths in prop::collection::vec(repo_path(), 1..16),
        pick in any::<prop::sample::Index>(),
        depth in any::<prop::sample::Index>(),
    ) {
        let chosen = pick.get(&paths).clone();
        let file = Visibility::new(None, &[globset::escape(&chosen)], &[]);
        let everything_but = Visibility::new(None, &["**".to_owned()], &[globset::escape(&chosen)]);
        for path in &paths {
            prop_assert_eq!(file.sees(path), *path == chosen, "{} vs {}", path, chosen);
            prop_assert_eq!(everything_but.sees(path), *path != chosen, "{} vs {}", path, chosen);
        }
        let segments: Vec<&str> = chosen.split('/').collect();
        if segments.len() > 1 {
            let folder = segments[..=depth.index(segments.len() - 1)].join("/");
            let under = format!("{}/**", globset::escape(&folder));
            let included = Visibility::new(None, std::slice::from_ref(&under), &[]);
            let excluded = Visibility::new(None, &[], std::slice::from_ref(&under));
            for path in &paths {
                let inside = path.starts_with(&format!("{folder}/"));
                prop_assert_eq!(included.sees(path), inside, "{} under {}", path, under);
                prop_assert_eq!(excluded.sees(path), !inside, "{} under {}", path, under);
            }
        }
    }

    /// Many patterns together mean what each means alone: a path is seen
    /// when it is not ignored, matches some include (or there is none) and
    /// matches no exclude.
    #[test]
    fn glob_sets_combine_their_patterns(
        include in prop::collection::vec("[a-z*?/.{},\\[\\]!]{1,12}", 0..4),
        exclude in prop::collection::vec("[a-z*?/.{},\\[\\]!]{1,12}", 0..4),
        paths in prop::collection::vec(repo_path(), 1..16),
    ) {
        let compile = |patterns: &[String]| -> Vec<globset::GlobMatcher> {
            patterns
                .iter()
                .filter_map(|p| globset::Glob::new(p).ok())
                .map(|g| g.compile_matcher())
                .collect()
        };
        // Registration refuses invalid patterns; keep only valid ones here.
        let include: Vec<String> = include.into_iter().filter(|p| globset::Glob::new(p).is_ok()).collect();
        let exclude: Vec<String> = exclude.into_iter().filter(|p| globset::Glob::new(p).is_ok()).collect();
        let visibility = Visibility::new(None, &include, &exclude);
        let (includes, excludes) = (compile(&include), compile(&exclude));
        for path in &paths {
            let expected = (includes.is_empty() || includes.iter().any(|m| m.is_match(path)))
                && !excludes.iter().any(|m| m.is_match(path));
            prop_assert_eq!(visibility.sees(path), expected, "{} with {:?} / {:?}", path, include, exclude);
        }
    }
}
