//! GitHub's push payload. Gitea copies its shape, so Gitea's pushes are
//! read here too.

use serde::Deserialize;

use super::{Read, RefMove, zero_sha};

#[derive(Deserialize)]
pub(super) struct GitHubPush {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    repository: GitHubRepository,
}

/// GitHub's and Gitea's `repository` object (Gitea copies GitHub's shape).
#[derive(Deserialize)]
pub(super) struct GitHubRepository {
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    git_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

impl GitHubRepository {
    pub(super) fn urls(self) -> (Vec<Option<String>>, Option<String>) {
        let urls = vec![self.clone_url, self.ssh_url, self.html_url, self.git_url];
        (urls, self.default_branch)
    }
}

/// A push (GitHub or Gitea): one ref, deleted when the host says so or when
/// its new head is all zeros.
pub(super) fn read_push(push: GitHubPush) -> Read {
    let deleted = push.deleted || zero_sha(push.after.as_deref());
    let (urls, default_branch) = push.repository.urls();
    Read {
        urls,
        default_branch,
        refs: vec![RefMove::from_ref(&push.reference, deleted)],
    }
}

#[cfg(test)]
mod tests {
    use crate::inbound::tests::moved;
    use crate::inbound::{BranchMove, Provider, Push, Trigger, interpret};

    #[test]
    fn pushes_tags_and_deletions_are_told_apart() {
        let github = |reference: &str, after: &str, deleted: bool| {
            serde_json::json!({
                "ref": reference, "after": after, "deleted": deleted,
                "repository": {"clone_url": "https://github.com/o/r.git", "default_branch": "main"}
            })
            .to_string()
        };
        let push = interpret(
            Provider::GitHub,
            "push",
            github("refs/heads/main", "ab12", false).as_bytes(),
        )
        .expect("a push");
        assert_eq!(
            push,
            Trigger::Push(Push {
                urls: vec!["https://github.com/o/r.git".into()],
                branches: vec![BranchMove {
                    branch: "main".into(),
                    deleted: false
                }],
                default_branch: Some("main".into()),
            })
        );
        let deleted = interpret(
            Provider::GitHub,
            "push",
            github("refs/heads/gone", &"0".repeat(40), true).as_bytes(),
        )
        .expect("a deletion");
        assert_eq!(moved(&deleted), vec![("gone".to_owned(), true)]);
        assert_eq!(
            interpret(
                Provider::GitHub,
                "push",
                github("refs/tags/v1", "ab12", false).as_bytes()
            ),
            Ok(Trigger::Ignore("tag push".into()))
        );
        assert!(interpret(Provider::Gitea, "push", b"[1,2]").is_err());
        assert!(
            interpret(
                Provider::Gitea,
                "push",
                br#"{"ref":"refs/heads/x","repository":{}}"#
            )
            .is_err()
        );
    }
}
