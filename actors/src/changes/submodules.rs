//! Submodules: a gitlink (a tree entry of mode 160000 naming a commit of
//! another repository) that moved between two commits, and the URL the
//! commit's `.gitmodules` gives it. Herald never follows a gitlink: the
//! other repository's content is not in the mirror.

use std::collections::HashMap;

use git2::{Oid, Repository};

use super::ChangeError;

/// The file naming each submodule's path and URL, at the root.
pub const GITMODULES: &str = ".gitmodules";

/// The largest `.gitmodules` read; a larger one gives no URLs.
const MAX_GITMODULES: usize = 1 << 20;

/// A submodule whose commit moved: added (`old` is `None`), removed
/// (`new` is `None`), or pointed at another commit, forwards or backwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmoduleChange {
    pub path: String,
    pub old: Option<Oid>,
    pub new: Option<Oid>,
    /// Its `url` in `.gitmodules` (the new commit's, else the old one's).
    pub url: Option<String>,
}

/// Path → URL of every submodule a `.gitmodules` text declares
/// (`[submodule "name"]` sections with `path` and `url`).
pub fn urls(text: &str) -> HashMap<String, String> {
    let mut sections: HashMap<&str, (Option<&str>, Option<&str>)> = HashMap::new();
    for entry in crate::gitconfig::entries(text) {
        let (Some(name), "submodule") = (entry.subsection, entry.section.as_str()) else {
            continue;
        };
        let section = sections.entry(name).or_default();
        match entry.key.as_str() {
            "path" => section.0 = Some(entry.value),
            "url" => section.1 = Some(entry.value),
            _ => {}
        }
    }
    sections
        .into_values()
        .filter_map(|(path, url)| Some((path?.trim_end_matches('/').to_owned(), url?.to_owned())))
        .collect()
}

/// The `.gitmodules` URLs of commit `at` (none when it has no readable one).
fn urls_at(repo: &Repository, at: Oid) -> Result<HashMap<String, String>, ChangeError> {
    let tree = repo.find_commit(at)?.tree()?;
    let Some(entry) = tree.get_name(GITMODULES) else {
        return Ok(HashMap::new());
    };
    let Ok(blob) = repo.find_blob(entry.id()) else {
        return Ok(HashMap::new());
    };
    if blob.size() > MAX_GITMODULES {
        tracing::warn!(size = blob.size(), ".gitmodules over 1 MiB skipped");
        return Ok(HashMap::new());
    }
    Ok(urls(&String::from_utf8_lossy(blob.content())))
}

/// Gives each change its URL: the new commit's `.gitmodules`, else the old
/// commit's (a removed submodule).
pub(super) fn fill_urls(
    repo: &Repository,
    old: Option<Oid>,
    new: Oid,
    changes: &mut [SubmoduleChange],
) -> Result<(), ChangeError> {
    if changes.is_empty() {
        return Ok(());
    }
    let new_urls = urls_at(repo, new)?;
    let old_urls = match old {
        Some(old) => urls_at(repo, old)?,
        None => HashMap::new(),
    };
    for change in changes {
        change.url = new_urls
            .get(&change.path)
            .or_else(|| old_urls.get(&change.path))
            .cloned();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitmodules_name_each_path_its_url() {
        let text = "[submodule \"ui\"]\n\tpath = libs/ui\n\turl = https://git.example.com/ui.git\n\
                    # a comment\n[submodule \"Data Sets\"]\n\turl = \"../data.git\"\n\tpath = data/\n\
                    [submodule \"broken\"]\n\tpath = nowhere\n[core]\n\turl = not-a-submodule\n";
        let urls = urls(text);
        assert_eq!(urls.len(), 2, "{urls:?}");
        assert_eq!(urls["libs/ui"], "https://git.example.com/ui.git");
        assert_eq!(urls["data"], "../data.git");
    }
}
