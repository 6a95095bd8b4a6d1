//! Where a repository's LFS objects live (Git LFS "Server Discovery"): the
//! `lfs.url` of the repository's `.lfsconfig` (or its
//! `remote.origin.lfsurl`), else the git remote with `.git/info/lfs`
//! appended (`/info/lfs` when it already ends in `.git`).

use url::Url;

/// The LFS endpoint of a remote: `lfs_config` is the text of the commit's
/// `.lfsconfig`, if it has one. `None` when there is none to derive (a
/// local remote without `lfs.url`).
pub fn endpoint(remote: &str, lfs_config: Option<&str>) -> Option<Url> {
    if let Some(configured) = lfs_config.and_then(configured_url) {
        return Url::parse(configured.trim_end_matches('/')).ok();
    }
    let mut url = match remote.split_once("://") {
        Some(("https" | "http", _)) => Url::parse(remote).ok()?,
        // git-lfs reaches a git:// remote's objects over https (the url
        // crate cannot turn one scheme into the other in place).
        Some(("git", rest)) => Url::parse(&format!("https://{rest}")).ok()?,
        _ => return None,
    };
    let path = url.path().trim_end_matches('/').to_owned();
    let path = if path.ends_with(".git") {
        format!("{path}/info/lfs")
    } else {
        format!("{path}.git/info/lfs")
    };
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    Some(url)
}

/// The batch API of an endpoint.
pub fn batch_url(endpoint: &Url) -> Option<Url> {
    Url::parse(&format!(
        "{}/objects/batch",
        endpoint.as_str().trim_end_matches('/')
    ))
    .ok()
}

/// `lfs.url`, else `remote.origin.lfsurl`, of a git-config text (the only
/// keys of `.lfsconfig` that say where objects live).
fn configured_url(text: &str) -> Option<&str> {
    let (mut lfs_url, mut remote_url) = (None, None);
    for entry in crate::gitconfig::entries(text) {
        match (entry.section.as_str(), entry.subsection, entry.key.as_str()) {
            ("lfs", None, "url") => lfs_url = Some(entry.value),
            ("remote", Some("origin"), "lfsurl") => remote_url = Some(entry.value),
            _ => {}
        }
    }
    lfs_url.or(remote_url).filter(|url| !url.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derived(remote: &str) -> Option<String> {
        endpoint(remote, None).map(String::from)
    }

    #[test]
    fn the_endpoint_is_derived_from_the_remote() {
        assert_eq!(
            derived("https://git.example.com/foo/bar").as_deref(),
            Some("https://git.example.com/foo/bar.git/info/lfs")
        );
        assert_eq!(
            derived("https://git.example.com/foo/bar.git/").as_deref(),
            Some("https://git.example.com/foo/bar.git/info/lfs")
        );
        assert_eq!(
            derived("git://git.example.com/foo/bar.git").as_deref(),
            Some("https://git.example.com/foo/bar.git/info/lfs")
        );
        assert_eq!(derived("file:///srv/repo.git"), None);
        let batch = batch_url(&endpoint("http://127.0.0.1:8080/r.git", None).expect("an endpoint"));
        assert_eq!(
            batch.map(String::from).as_deref(),
            Some("http://127.0.0.1:8080/r.git/info/lfs/objects/batch")
        );
    }

    #[test]
    fn lfsconfig_names_the_server() {
        let config = "# objects elsewhere\n[remote \"origin\"]\n\tlfsurl = https://b.example.com/x\n[LFS]\n\turl = \"https://a.example.com/lfs/\" ; a comment\n";
        assert_eq!(
            endpoint("https://git.example.com/r", Some(config)).map(String::from),
            Some("https://a.example.com/lfs".to_owned())
        );
        let config = "[remote \"origin\"]\nlfsurl = https://b.example.com/x # why\n";
        assert_eq!(
            endpoint("file:///srv/r.git", Some(config)).map(String::from),
            Some("https://b.example.com/x".to_owned())
        );
        // Another remote's URL, or an unrelated key, is not ours.
        let config = "[remote \"upstream\"]\nlfsurl = https://c.example.com/\n[lfs]\nconcurrenttransfers = 3\n";
        assert_eq!(
            derived("https://git.example.com/r"),
            endpoint("https://git.example.com/r", Some(config)).map(String::from)
        );
    }
}
