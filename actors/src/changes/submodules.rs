//! Submodules: a gitlink (a tree entry of mode 160000 naming a commit of
//! another repository) that moved between two commits, and the URL the
//! commit's `.gitmodules` gives it.
//!
//! Normally a gitlink is never followed: the other repository's content is
//! not in the mirror, and a moved gitlink is a [`SubmoduleChange`]. A
//! repository watched with its submodules expanded reads each gitlink as
//! the tree of its commit instead ([`Level`]): the commit is brought into
//! the mirror from the submodule's own remote by a [`ModuleSource`] (the
//! scan fetches it under the watched remote's rule), and its files are
//! files of the watched tree under the submodule's path, nested submodules
//! included, at most [`MAX_DEPTH`] deep.

use std::collections::HashMap;

use git2::{Oid, Repository};

use super::ChangeError;
use crate::git::{GitError, GitFailure};

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

/// Brings a submodule's commit into the mirror: the scan fetches it from
/// the submodule's own remote.
pub trait ModuleSource {
    /// Makes the mirror hold `commit` of the repository at `url` (resolved,
    /// never relative), with its tree.
    fn fetch(&mut self, url: &str, commit: Oid) -> Result<(), GitError>;
}

/// How deep submodules nested in submodules are expanded: a deeper one is
/// the scan's failure, never a silent gap.
pub const MAX_DEPTH: usize = 8;

/// One repository of an expanded tree: the watched one, or a submodule
/// entered at one of its commits.
#[derive(Debug, Clone)]
pub(super) struct Level {
    /// Its path in the expanded tree, with a trailing `/` (empty at the top).
    root: String,
    /// Its remote: a relative `.gitmodules` URL is resolved against it.
    /// `None`: a submodule whose commit the mirror held without a URL.
    url: Option<String>,
    /// Its own submodules' URLs by path within it (its commit's
    /// `.gitmodules`).
    urls: HashMap<String, String>,
    depth: usize,
}

impl Level {
    /// The watched repository at `commit`, its remote at `url`.
    pub(super) fn top(repo: &Repository, commit: Oid, url: &str) -> Result<Level, ChangeError> {
        Ok(Level {
            root: String::new(),
            url: Some(url.to_owned()),
            urls: urls_at(repo, commit)?,
            depth: 0,
        })
    }

    /// Whether this is the watched repository itself.
    pub(super) fn is_top(&self) -> bool {
        self.depth == 0
    }

    /// The submodule at `path` (in the expanded tree), at `commit`: its
    /// tree id, the commit brought into the mirror first when it lacks it.
    /// `None`: the mirror lacks it and `.gitmodules` gives it no URL, so it
    /// cannot be had (git itself cannot check it out): it is not followed.
    pub(super) fn tree_of(
        &self,
        repo: &Repository,
        path: &str,
        commit: Oid,
        source: &mut dyn ModuleSource,
    ) -> Result<Option<Oid>, ChangeError> {
        if let Ok(found) = repo.find_commit(commit) {
            return Ok(Some(found.tree_id()));
        }
        let Some(url) = self.url_of(path)? else {
            tracing::warn!(
                path,
                "a submodule with no URL in .gitmodules is not followed"
            );
            return Ok(None);
        };
        source
            .fetch(&url, commit)
            .map_err(|error| ChangeError::Submodule {
                path: path.to_owned(),
                error,
            })?;
        repo.find_commit(commit)
            .map(|found| Some(found.tree_id()))
            .map_err(|_| {
                module_error(
                    path,
                    GitFailure::NotFound,
                    "its commit was not found on its remote",
                )
            })
    }

    /// The level the submodule at `path` opens, at `commit` (which the
    /// mirror holds: [`Self::tree_of`] brought it).
    pub(super) fn enter(
        &self,
        repo: &Repository,
        path: &str,
        commit: Oid,
    ) -> Result<Level, ChangeError> {
        if self.depth + 1 > MAX_DEPTH {
            return Err(module_error(
                path,
                GitFailure::Other,
                "submodules are nested more than 8 deep",
            ));
        }
        Ok(Level {
            root: format!("{path}/"),
            url: self.url_of(path)?,
            urls: urls_at(repo, commit)?,
            depth: self.depth + 1,
        })
    }

    /// The resolved URL of the submodule at `path` (in the expanded tree);
    /// `None` when `.gitmodules` gives it none.
    fn url_of(&self, path: &str) -> Result<Option<String>, ChangeError> {
        let within = path.strip_prefix(self.root.as_str()).unwrap_or(path);
        let Some(url) = self.urls.get(within) else {
            return Ok(None);
        };
        let relative = url.starts_with("./") || url.starts_with("../");
        let resolved = match &self.url {
            None if relative => None,
            parent => resolve_url(parent.as_deref().unwrap_or_default(), url),
        };
        resolved.map(Some).ok_or_else(|| {
            module_error(
                path,
                GitFailure::Refused,
                "its relative URL cannot be resolved against its parent's",
            )
        })
    }
}

fn module_error(path: &str, failure: GitFailure, message: &str) -> ChangeError {
    ChangeError::Submodule {
        path: path.to_owned(),
        error: GitError::new(failure, message),
    }
}

/// A `.gitmodules` URL as git resolves it: one starting with `./` or `../`
/// is relative to the parent repository's remote, taken as a folder (each
/// `../` takes one component off it, never its scheme and host); any
/// other is absolute. `None`: it climbs above the host.
pub fn resolve_url(parent: &str, url: &str) -> Option<String> {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return Some(url.to_owned());
    }
    let mut base = parent.trim_end_matches('/').to_owned();
    // Where the path begins: after `scheme://host`, or at once for a path.
    let floor = match base.find("://") {
        Some(at) => base[at + 3..].find('/').map_or(base.len(), |i| at + 3 + i),
        None => 0,
    };
    let mut rest = url;
    loop {
        if let Some(after) = rest.strip_prefix("./") {
            rest = after;
        } else if let Some(after) = rest.strip_prefix("../") {
            let cut = base.rfind('/').filter(|cut| *cut >= floor)?;
            base.truncate(cut);
            rest = after;
        } else {
            break;
        }
    }
    Some(format!("{base}/{rest}"))
}

/// The submodule commits that `commits` point at, nested ones included,
/// among those the mirror holds: what a mirror that expands submodules
/// must keep for them (see [`crate::git::Mirror::keep_modules`]).
pub fn module_commits(repo: &Repository, commits: &[Oid]) -> std::collections::HashSet<Oid> {
    let mut found = std::collections::HashSet::new();
    let mut next: Vec<(Oid, usize)> = commits.iter().map(|commit| (*commit, 0)).collect();
    while let Some((commit, depth)) = next.pop() {
        let (Ok(urls), Ok(tree)) = (
            urls_at(repo, commit),
            repo.find_commit(commit).and_then(|c| c.tree()),
        ) else {
            continue;
        };
        for path in urls.keys() {
            let Ok(entry) = tree.get_path(std::path::Path::new(path)) else {
                continue;
            };
            if entry.kind() == Some(git2::ObjectType::Commit)
                && repo.find_commit(entry.id()).is_ok()
                && found.insert(entry.id())
                && depth < MAX_DEPTH
            {
                next.push((entry.id(), depth + 1));
            }
        }
    }
    found
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

    #[test]
    fn relative_urls_resolve_against_the_parent_as_git_does() {
        let parent = "https://git.example.com/acme/app.git";
        assert_eq!(
            resolve_url(parent, "../lib.git").as_deref(),
            Some("https://git.example.com/acme/lib.git")
        );
        assert_eq!(
            resolve_url(parent, "./lib.git").as_deref(),
            Some("https://git.example.com/acme/app.git/lib.git")
        );
        assert_eq!(
            resolve_url(&format!("{parent}/"), "../../other/lib.git").as_deref(),
            Some("https://git.example.com/other/lib.git")
        );
        assert_eq!(
            resolve_url("git://127.0.0.1:9418/r.git", "../lib.git").as_deref(),
            Some("git://127.0.0.1:9418/lib.git")
        );
        assert_eq!(
            resolve_url("/srv/git/app.git", "../lib.git").as_deref(),
            Some("/srv/git/lib.git")
        );
        // Absolute URLs stay as written; climbing above the host is refused.
        assert_eq!(
            resolve_url(parent, "https://elsewhere.example/x.git").as_deref(),
            Some("https://elsewhere.example/x.git")
        );
        assert_eq!(resolve_url(parent, "../../../x.git"), None);
        assert_eq!(resolve_url("git://127.0.0.1/r.git", "../../x.git"), None);
    }
}
