//! What a subscription sees of a tree: the repository's ignore files
//! (`.heraldignore`, `.docoraignore`, read as git reads `.gitignore`) and
//! the subscription's include and exclude globs.

use super::*;

/// The ignore rules of the commit `at`: `.heraldignore` and `.docoraignore`
/// at the root, in gitignore syntax.
pub fn ignore_rules(repo: &Repository, at: Oid) -> Result<Option<Gitignore>, ChangeError> {
    let tree = repo.find_commit(at)?.tree()?;
    let mut builder = GitignoreBuilder::new("");
    let mut any = false;
    for name in IGNORE_FILES {
        let Some(item) = tree.get_name(name) else {
            continue;
        };
        if !is_regular(u32::try_from(item.filemode()).unwrap_or(0)) {
            continue;
        }
        let (size, _) = repo.odb()?.read_header(item.id())?;
        if size > MAX_IGNORE_FILE {
            tracing::warn!(file = name, size, "ignore file over 1 MiB skipped");
            continue;
        }
        let blob = repo.find_blob(item.id())?;
        for line in String::from_utf8_lossy(blob.content()).lines() {
            // A malformed pattern is skipped, as git skips it.
            if builder.add_line(None, line).is_ok() {
                any = true;
            }
        }
    }
    if !any {
        return Ok(None);
    }
    builder
        .build()
        .map(Some)
        .map_err(|err| ChangeError::Read(format!("ignore rules: {err}")))
}

/// Which paths a subscription sees: not ignored by the repository's ignore
/// files, matching an `include` glob (when any), matching no `exclude` glob.
#[derive(Debug, Default, Clone)]
pub struct Visibility {
    ignore: Option<Gitignore>,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

fn glob_set(patterns: &[String]) -> Option<GlobSet> {
    if patterns.is_empty() {
        return None;
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        // Patterns were validated at registration; a bad one matches nothing.
        if let Ok(glob) = Glob::new(pattern) {
            builder.add(glob);
        }
    }
    builder.build().ok()
}

impl Visibility {
    pub fn new(ignore: Option<Gitignore>, include: &[String], exclude: &[String]) -> Self {
        Self {
            ignore,
            include: glob_set(include),
            exclude: glob_set(exclude),
        }
    }

    pub fn sees(&self, path: &str) -> bool {
        let ignored = self
            .ignore
            .as_ref()
            .is_some_and(|rules| ignored_like_git(rules, path));
        let included = self.include.as_ref().is_none_or(|set| set.is_match(path));
        let excluded = self.exclude.as_ref().is_some_and(|set| set.is_match(path));
        !ignored && included && !excluded
    }
}

/// Git's reading of ignore rules: a file is ignored when the last rule
/// matching it ignores it, or when any folder above it is ignored (nothing
/// inside an ignored folder can be re-included with `!`). The `ignore`
/// crate's `matched_path_or_any_parents` differs twice: it lets a `!` rule
/// re-include a file below an ignored folder, and it tests the root itself
/// as a parent, so `*/` hid every file at the root.
fn ignored_like_git(rules: &Gitignore, path: &str) -> bool {
    let folders = path
        .match_indices('/')
        .map(|(at, _)| &path[..at])
        .filter(|folder| !folder.is_empty());
    for folder in folders {
        if rules.matched(folder, true).is_ignore() {
            return true;
        }
    }
    rules.matched(path, false).is_ignore()
}
