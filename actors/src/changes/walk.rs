//! Walking a tree's regular files in tree order, submodules expanded on
//! request, and the path components no file may carry.

use super::*;

/// Every regular file of `tree` as (path, blob id), in tree order.
pub fn walk(tree: &Tree<'_>) -> Result<Vec<(String, Oid)>, ChangeError> {
    let mut files = Vec::new();
    walk_files(tree, |path, blob| {
        files.push((path, blob));
        Ok(())
    })?;
    Ok(files)
}

/// Calls `visit` with every regular file of `tree` (path, blob id), in tree
/// order, which is the byte order of the paths; stops at its first error.
/// Gitlinks are not followed.
pub fn walk_files(
    tree: &Tree<'_>,
    mut visit: impl FnMut(String, Oid) -> Result<(), ChangeError>,
) -> Result<(), ChangeError> {
    walk_level(tree, "", None, &mut |path, blob, _| visit(path, blob))
}

/// A submodule being expanded: the mirror, the level it belongs to and
/// where missing commits come from.
pub(super) type Expanding<'a> = (&'a Repository, &'a Level, &'a mut dyn ModuleSource);

/// [`walk_files`] below `prefix`; with `modules`, each gitlink is walked as
/// its commit's tree (its files come after the gitlink's place in tree
/// order, so the paths are no longer in byte order) and `visit` learns
/// whether a file lies inside a submodule.
pub(super) fn walk_level(
    tree: &Tree<'_>,
    prefix: &str,
    mut modules: Option<Expanding<'_>>,
    visit: &mut dyn FnMut(String, Oid, bool) -> Result<(), ChangeError>,
) -> Result<(), ChangeError> {
    let nested = modules
        .as_ref()
        .is_some_and(|(_, level, _)| !level.is_top());
    let mut bad_path = false;
    let mut failed = None;
    let walked = tree.walk(TreeWalkMode::PreOrder, |root, item| {
        if let Ok(name) = item.name()
            && is_unsafe_component(name)
        {
            tracing::warn!(path = ?format!("{prefix}{root}{name}"), "skipped a tree entry git would refuse");
            return TreeWalkResult::Skip;
        }
        let regular = item.kind() == Some(ObjectType::Blob)
            && is_regular(u32::try_from(item.filemode()).unwrap_or(0));
        let gitlink = item.kind() == Some(ObjectType::Commit);
        if !(regular || (gitlink && modules.is_some())) {
            return TreeWalkResult::Ok;
        }
        let Ok(name) = item.name() else {
            bad_path = true;
            return TreeWalkResult::Ok;
        };
        let path = format!("{prefix}{root}{name}");
        let done = match modules.as_mut() {
            Some((repo, level, source)) if gitlink => {
                walk_module(repo, level, &mut **source, &path, item.id(), visit)
            }
            _ => visit(path, item.id(), nested),
        };
        match done {
            Ok(()) => TreeWalkResult::Ok,
            Err(err) => {
                failed = Some(err);
                TreeWalkResult::Abort
            }
        }
    });
    if let Some(err) = failed {
        return Err(err);
    }
    walked?;
    if bad_path {
        tracing::warn!("skipped files whose names are not UTF-8");
    }
    Ok(())
}

/// Walks the submodule at `path`, at `commit`, as part of the tree.
pub(super) fn walk_module(
    repo: &Repository,
    level: &Level,
    source: &mut dyn ModuleSource,
    path: &str,
    commit: Oid,
    visit: &mut dyn FnMut(String, Oid, bool) -> Result<(), ChangeError>,
) -> Result<(), ChangeError> {
    let Some(tree) = level.tree_of(repo, path, commit, source)? else {
        return Ok(());
    };
    let tree = repo.find_tree(tree)?;
    let inner = level.enter(repo, path, commit)?;
    walk_level(
        &tree,
        &format!("{path}/"),
        Some((repo, &inner, source)),
        visit,
    )
}

/// Whether one component of a path (a tree entry's name) is one that git
/// refuses to check out: empty, `.`, `..`, a `/` or NUL inside, or `.git` in
/// any spelling a file system may fold into it: any case, trailing dots or
/// spaces and an alternate data stream (NTFS), the short name `git~1`, and
/// format characters such as zero-width joiners (ignored by HFS+). libgit2
/// reads such trees even though `git fsck` would reject them.
pub fn is_unsafe_component(name: &str) -> bool {
    if matches!(name, "" | "." | "..") || name.contains(['/', '\0']) {
        return true;
    }
    let folded: String = name
        .chars()
        .filter(|c| c.general_category() != GeneralCategory::Format)
        .collect();
    let stream_free = folded.split(':').next().unwrap_or_default();
    let trimmed = stream_free.trim_end_matches(['.', ' ']);
    trimmed.eq_ignore_ascii_case(".git") || trimmed.eq_ignore_ascii_case("git~1")
}
