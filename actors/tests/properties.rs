//! Property tests of the engine's pure parts against what Herald receives
//! from outside and sends out: inbound hook payloads and signatures, remote
//! URLs, and the webhook renderer and chunker against a receiver's
//! reassembly. A bounded number of cases runs with `cargo test`; for a long
//! run, raise it:
//!
//! ```sh
//! PROPTEST_CASES=200000 cargo test --release -p actors --test properties
//! ```

use base64::Engine as _;
use entity::{EventKind, EventStatus, event};
use proptest::prelude::*;
use secrecy::SecretString;

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
    }
}
