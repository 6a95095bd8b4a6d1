//! Gitea's (and Forgejo's) `delete` event. Its pushes have GitHub's shape
//! and are read in [`super::github`].

use serde::Deserialize;

use super::github::GitHubRepository;
use super::{NoPush, Read, RefMove};

/// Gitea's `delete` event: `ref` is the short name, `ref_type` says of what.
#[derive(Deserialize)]
pub(super) struct GiteaDelete {
    #[serde(rename = "ref")]
    reference: String,
    ref_type: String,
    repository: GitHubRepository,
}

/// A deleted branch moves that branch; a deleted tag asks for nothing.
pub(super) fn read_delete(delete: GiteaDelete) -> Result<Read, NoPush> {
    if !delete.ref_type.eq_ignore_ascii_case("branch") {
        return Err(NoPush::Ignore(format!("{} deleted", delete.ref_type)));
    }
    let (urls, default_branch) = delete.repository.urls();
    // Gitea names the branch without `refs/heads/`.
    let reference = format!("refs/heads/{}", delete.reference);
    Ok(Read {
        urls,
        default_branch,
        refs: vec![RefMove::from_ref(&reference, true)],
    })
}

#[cfg(test)]
mod tests {
    use crate::inbound::tests::moved;
    use crate::inbound::{Provider, Trigger, interpret};

    #[test]
    fn deleted_branches_move_and_deleted_tags_are_ignored() {
        let delete = |ref_type: &str| {
            serde_json::json!({
                "ref": "feature/x", "ref_type": ref_type, "pusher_type": "user",
                "repository": {"clone_url": "https://gitea.example/o/r.git"}
            })
            .to_string()
        };
        let branch = interpret(Provider::Gitea, "delete", delete("branch").as_bytes());
        assert_eq!(
            moved(&branch.expect("a deletion")),
            vec![("feature/x".to_owned(), true)]
        );
        assert_eq!(
            interpret(Provider::Gitea, "delete", delete("tag").as_bytes()),
            Ok(Trigger::Ignore("tag deleted".into()))
        );
    }
}
