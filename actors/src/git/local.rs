//! Fetching from a repository on this machine (`file://` URLs and absolute
//! paths, admitted by `git.allow_local_repos`).
//!
//! libgit2's own local transport builds a pack of everything the wanted
//! commit reaches, its whole history included, and computes every delta
//! again; it cannot fetch shallow either. Herald reads the local repository
//! directly instead, and copies into the mirror only what change detection
//! needs: the wanted commit and whatever of its tree the mirror lacks (see
//! [`super::pack`]). A tree the mirror already has is skipped whole: the
//! mirror only ever holds complete trees, so its content is there too.

use std::collections::HashSet;
use std::path::Path;

use git2::{OdbLookupFlags, Oid, Repository, RepositoryOpenFlags};

use super::pack::{PackWriter, tree_objects};

/// What to fetch: a ref of the local repository, or a commit by its id.
pub(super) enum Want<'a> {
    Ref(&'a str),
    Commit(Oid),
}

/// Copies the wanted commit and what its tree holds that `mirror` lacks.
/// `Ok(None)`: the local repository has no such ref or commit.
pub(super) fn fetch(
    mirror: &Repository,
    source: &Path,
    want: Want<'_>,
) -> Result<Option<Oid>, git2::Error> {
    let source = Repository::open_ext(
        source,
        RepositoryOpenFlags::NO_SEARCH,
        std::iter::empty::<&str>(),
    )?;
    let commit = match want {
        Want::Ref(name) => match source.find_reference(name) {
            Ok(reference) => reference.peel_to_commit()?,
            Err(err) if err.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(err) => return Err(err),
        },
        Want::Commit(oid) => match source.find_commit(oid) {
            Ok(commit) => commit,
            Err(err) if err.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(err) => return Err(err),
        },
    };
    let into = mirror.odb()?;
    // Lookups below skip the refresh that each miss would cost: the mirror
    // is locked for writing, so what it holds is what it holds now.
    into.refresh()?;
    let from = source.odb()?;
    let mut pack = PackWriter::start(mirror.path())?;
    if !into.exists_ext(commit.id(), OdbLookupFlags::NO_REFRESH) {
        pack.copy(&source, &from, commit.id())?;
    }
    let mut seen = HashSet::new();
    let lacks = |oid| !into.exists_ext(oid, OdbLookupFlags::NO_REFRESH);
    tree_objects(&source, commit.tree_id(), &lacks, &mut seen, &mut |oid| {
        pack.copy(&source, &from, oid)
    })?;
    drop(seen);
    if pack.finish()?.is_some() {
        into.refresh()?;
    }
    Ok(Some(commit.id()))
}
