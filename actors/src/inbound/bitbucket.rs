//! Bitbucket Cloud's push webhook.

use serde::Deserialize;

use super::{Read, RefMove};

/// Bitbucket Cloud's `repo:push`.
#[derive(Deserialize)]
pub(super) struct BitbucketPush {
    repository: BitbucketRepository,
    push: BitbucketChanges,
}

#[derive(Deserialize)]
struct BitbucketRepository {
    #[serde(default)]
    full_name: Option<String>,
    #[serde(default)]
    links: Option<BitbucketLinks>,
    #[serde(default)]
    mainbranch: Option<BitbucketRef>,
}

#[derive(Deserialize)]
struct BitbucketLinks {
    #[serde(default)]
    html: Option<BitbucketLink>,
}

#[derive(Deserialize)]
struct BitbucketLink {
    href: String,
}

#[derive(Deserialize)]
struct BitbucketChanges {
    changes: Vec<BitbucketChange>,
}

/// `new` is null when the ref was deleted, `old` when it was created.
#[derive(Deserialize)]
struct BitbucketChange {
    #[serde(default)]
    new: Option<BitbucketRef>,
    #[serde(default)]
    old: Option<BitbucketRef>,
}

#[derive(Deserialize)]
struct BitbucketRef {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    name: String,
}

/// Bitbucket Cloud's only host, for a payload that gives `full_name` alone.
const BITBUCKET_WEB: &str = "https://bitbucket.org";

/// Every ref in `changes`; a ref with no new head was deleted.
pub(super) fn read(push: BitbucketPush) -> Read {
    let repository = push.repository;
    let web = repository.links.and_then(|l| l.html).map(|h| h.href);
    // `full_name` (`workspace/slug`) names the repository when no link does.
    let named = repository
        .full_name
        .filter(|_| web.is_none())
        .map(|name| format!("{BITBUCKET_WEB}/{}", name.trim_matches('/')));
    let refs = push
        .push
        .changes
        .into_iter()
        .filter_map(|change| match (change.new, change.old) {
            (Some(new), _) => Some((new, false)),
            (None, Some(old)) => Some((old, true)),
            (None, None) => None,
        })
        .map(|(moved, deleted)| match moved.kind.as_deref() {
            Some("branch") => RefMove::from_ref(&format!("refs/heads/{}", moved.name), deleted),
            Some("tag" | "annotated_tag") => RefMove::Tag,
            kind => RefMove::Other(format!("{} {}", kind.unwrap_or("ref"), moved.name)),
        })
        .collect();
    Read {
        urls: vec![web, named],
        default_branch: repository.mainbranch.map(|b| b.name),
        refs,
    }
}

#[cfg(test)]
mod tests {
    use crate::inbound::tests::moved;
    use crate::inbound::{Provider, Trigger, interpret};

    #[test]
    fn pushes_are_read_and_full_name_names_the_repository() {
        let bitbucket = serde_json::json!({
            "repository": {
                "full_name": "team/repo",
                "links": {"html": {"href": "https://bitbucket.org/team/repo"}}
            },
            "push": {"changes": [
                {"new": {"type": "branch", "name": "main"}, "old": {"type": "branch", "name": "main"}},
                {"new": null, "old": {"type": "branch", "name": "gone"}, "closed": true},
                {"new": {"type": "tag", "name": "v1"}, "old": null}
            ]}
        });
        let push = interpret(
            Provider::Bitbucket,
            "repo:push",
            bitbucket.to_string().as_bytes(),
        )
        .expect("a push");
        assert_eq!(
            moved(&push),
            vec![("main".to_owned(), false), ("gone".to_owned(), true)]
        );
        let Trigger::Push(push) = push else {
            unreachable!()
        };
        assert_eq!(
            push.urls,
            vec!["https://bitbucket.org/team/repo".to_owned()]
        );
        // Without links, `full_name` on bitbucket.org names the repository.
        let named = serde_json::json!({
            "repository": {"full_name": "team/repo"},
            "push": {"changes": [{"new": {"type": "tag", "name": "v2"}}]}
        });
        assert_eq!(
            interpret(
                Provider::Bitbucket,
                "repo:push",
                named.to_string().as_bytes()
            ),
            Ok(Trigger::Ignore("tag push".into()))
        );
    }
}
