//! GitLab's project push hooks and the pushes in its system hooks.

use serde::Deserialize;

use super::{BadPayload, NoPush, Read, RefMove, zero_sha};

/// A GitLab push or tag push (project or system hook), or a system hook's
/// `repository_update`, whose refs are in `changes`.
#[derive(Deserialize)]
pub(super) struct GitLabPush {
    #[serde(default)]
    object_kind: Option<String>,
    #[serde(default)]
    event_name: Option<String>,
    #[serde(rename = "ref", default)]
    reference: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    changes: Vec<GitLabChange>,
    /// Absent from system hooks about other things (users, groups…).
    #[serde(default)]
    project: Option<GitLabProject>,
}

#[derive(Deserialize)]
struct GitLabChange {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    after: Option<String>,
}

#[derive(Deserialize)]
struct GitLabProject {
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    git_ssh_url: Option<String>,
    #[serde(default)]
    web_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

/// A push, tag push or `repository_update`; other system hooks ask for
/// nothing.
pub(super) fn read(push: GitLabPush) -> Result<Read, NoPush> {
    let kind = push
        .object_kind
        .or(push.event_name)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let refs = match kind.as_str() {
        "push" | "tag_push" => {
            let reference = push.reference.ok_or_else(|| {
                NoPush::Bad(BadPayload(
                    "not a gitlab push payload: missing field `ref`".to_owned(),
                ))
            })?;
            vec![RefMove::from_ref(
                &reference,
                zero_sha(push.after.as_deref()),
            )]
        }
        // A system hook's push: every ref that moved, in `changes`.
        "repository_update" => push
            .changes
            .iter()
            .map(|c| RefMove::from_ref(&c.reference, zero_sha(c.after.as_deref())))
            .collect(),
        _ => return Err(NoPush::Ignore(format!("`{kind}` is not a push event"))),
    };
    let project = push.project.ok_or_else(|| {
        NoPush::Bad(BadPayload(
            "not a gitlab push payload: missing field `project`".to_owned(),
        ))
    })?;
    Ok(Read {
        urls: vec![project.git_http_url, project.git_ssh_url, project.web_url],
        default_branch: project.default_branch,
        refs,
    })
}

#[cfg(test)]
mod tests {
    use crate::inbound::tests::moved;
    use crate::inbound::{Provider, Trigger, interpret};

    #[test]
    fn tag_pushes_are_ignored_and_deletions_read() {
        let gitlab_tag = serde_json::json!({
            "object_kind": "tag_push", "ref": "refs/tags/v1", "after": "ab12",
            "project": {"git_http_url": "https://gitlab.com/o/r.git"}
        });
        assert_eq!(
            interpret(
                Provider::GitLab,
                "Tag Push Hook",
                gitlab_tag.to_string().as_bytes()
            ),
            Ok(Trigger::Ignore("tag push".into()))
        );
        let gitlab_deleted = serde_json::json!({
            "object_kind": "push", "ref": "refs/heads/main", "after": "0".repeat(40),
            "project": {"git_http_url": "https://gitlab.com/o/r.git", "web_url": "https://gitlab.com/o/r"}
        });
        let gitlab_deleted = interpret(
            Provider::GitLab,
            "Push Hook",
            gitlab_deleted.to_string().as_bytes(),
        )
        .expect("a deletion");
        assert_eq!(moved(&gitlab_deleted), vec![("main".to_owned(), true)]);
    }

    #[test]
    fn a_gitlab_repository_update_moves_every_changed_branch() {
        let update = serde_json::json!({
            "event_name": "repository_update",
            "project": {
                "git_http_url": "http://example.com/jsmith/example.git",
                "path_with_namespace": "jsmith/example",
                "default_branch": "master"
            },
            "changes": [
                {"before": "8205", "after": "4045", "ref": "refs/heads/master"},
                {"before": "1111", "after": "0".repeat(40), "ref": "refs/heads/old"},
                {"before": "0000", "after": "2222", "ref": "refs/tags/v1"}
            ],
            "refs": ["refs/heads/master", "refs/heads/old", "refs/tags/v1"]
        });
        let trigger = interpret(
            Provider::GitLab,
            "System Hook",
            update.to_string().as_bytes(),
        )
        .expect("a push");
        assert_eq!(
            moved(&trigger),
            vec![("master".to_owned(), false), ("old".to_owned(), true)]
        );
        let other = serde_json::json!({"event_name": "user_create", "name": "x"});
        assert_eq!(
            interpret(
                Provider::GitLab,
                "System Hook",
                other.to_string().as_bytes()
            ),
            Ok(Trigger::Ignore("`user_create` is not a push event".into()))
        );
    }
}
