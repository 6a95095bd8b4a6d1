//! Change detection: what changed in a repository between the last snapshot
//! and a new commit, file by file.
//!
//! - Normally the tree diff between the two commits (work proportional to the
//!   change). When the old commit is gone (a force-push rewrote history), the
//!   new tree is compared with the stored manifest instead.
//! - Only regular files count: symlinks are skipped, and a submodule is
//!   never followed, but a submodule whose commit moved between two commits
//!   is a change of its own ([`submodules`]). A rename is a delete plus a
//!   create.
//! - Every created or updated file is hashed (SHA-256 of its raw bytes) and
//!   classified as text or binary by Docora's rule ([`binary`]: the
//!   `isbinaryfile` npm package, which reads the first 512 bytes).
//!   Its size comes from the object's header first: a file above
//!   [`WHOLE_BLOB_MAX`] is read in bounded pieces ([`crate::git::blob`]), so
//!   a huge file that packs small costs its pieces, never its size.
//! - Entries git itself would refuse to check out ([`is_unsafe_component`]:
//!   `..`, `.git` in any spelling) are skipped with a warning, subtree and
//!   all: no app is told of a path that could climb out of its checkout or
//!   plant a git configuration.
//! - What a change means for one subscription ([`plan`]): the changes it
//!   sees, in the order of their events, for the outbox and replays to
//!   write.
//!
//! Everything here blocks; it runs on the scan pool (but [`plan`], which
//! only computes).

use std::collections::HashMap;

use git2::{FileMode, ObjectType, Oid, Repository, Tree, TreeWalkMode, TreeWalkResult};
use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use sha2::{Digest, Sha256};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

pub mod binary;
mod describe;
mod plan;
pub mod submodules;
mod visibility;
mod walk;

pub use describe::{Arrival, Arrived, ArrivingBlob, Description, describe};
use describe::{Undescribed, describe_blob};
pub use plan::{Manifest, ReplayDiff};
pub(crate) use plan::{Pending, changes_for, tree_changes, tree_files};
use submodules::Level;
pub use submodules::{ModuleSource, SubmoduleChange};
pub use visibility::{Visibility, ignore_rules};
use walk::walk_level;
pub use walk::{is_unsafe_component, walk, walk_files};

/// Ignore files read from the repository root (gitignore syntax).
pub const IGNORE_FILES: [&str; 2] = [".heraldignore", ".docoraignore"];

/// Files up to this size are read whole (one lookup, libgit2's cache);
/// larger ones in pieces.
pub const WHOLE_BLOB_MAX: u64 = 1 << 20;

/// The largest ignore file read; a larger one is skipped (with a warning),
/// as no real rule set comes near it.
const MAX_IGNORE_FILE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The mirror could not be read.
    #[error("reading the repository failed: {0}")]
    Read(String),
    /// A submodule being expanded could not be had from its remote: that
    /// remote's failure (or the address rule's refusal), not the mirror's.
    #[error("submodule `{path}`: {}", .error.message)]
    Submodule {
        path: String,
        error: crate::git::GitError,
    },
}

impl From<git2::Error> for ChangeError {
    fn from(err: git2::Error) -> Self {
        ChangeError::Read(err.message().to_owned())
    }
}

/// How trees are read into changes.
pub struct Reading<'s> {
    /// LFS pointers are described by their objects (`git.lfs`).
    pub lfs: bool,
    /// Submodules expanded: each gitlink read as its commit's tree, brought
    /// from the submodule's remote by this source (see [`submodules`]).
    /// `None`: a gitlink is a [`SubmoduleChange`].
    pub modules: Option<Modules<'s>>,
    /// Blobs described as the fetch brought them ([`describe::Arrived`]):
    /// not read from the mirror again.
    pub arrived: Option<&'s Arrived>,
}

/// What expanding submodules needs: the watched remote (relative
/// submodule URLs are resolved against it) and where commits come from.
pub struct Modules<'s> {
    pub url: String,
    pub source: &'s mut dyn ModuleSource,
}

impl Reading<'_> {
    /// Plain files, gitlinks not followed.
    pub fn files(lfs: bool) -> Reading<'static> {
        Reading {
            lfs,
            modules: None,
            arrived: None,
        }
    }
}

/// What a snapshot knows of a file's content: fixed-size and `Copy`, so
/// that a scan of a million files holds a million of these, not three
/// million strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub blob_id: Oid,
    pub sha256: [u8; 32],
    pub size: i64,
    pub binary: bool,
    /// The blob is an LFS pointer: `sha256` and `size` are its object's
    /// (the real content's), and delivery fetches that object.
    pub lfs: bool,
    /// With `lfs`, the pointer file's own description: what an app that
    /// does not resolve LFS gets (`None` in a manifest row stored before
    /// pointers were kept).
    pub pointer: Option<PointerFile>,
}

/// An LFS pointer file as git holds it: its own SHA-256 and size (at most
/// [`crate::lfs::pointer::MAX_POINTER_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointerFile {
    pub sha256: [u8; 32],
    pub size: u16,
}

impl FileInfo {
    /// The SHA-256 as webhooks and the database spell it (lower-case hex).
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// From the database's spelling; `None` when a column is malformed.
    pub fn from_hex(
        blob_id: &str,
        sha256: &str,
        size: i64,
        binary: bool,
        lfs: bool,
    ) -> Option<Self> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(sha256, &mut digest).ok()?;
        Some(Self {
            blob_id: Oid::from_str(blob_id).ok()?,
            sha256: digest,
            size,
            binary,
            lfs,
            pointer: None,
        })
    }

    /// The file as an app that does not resolve LFS sees it: the pointer
    /// file itself, a plain text file. `None` for an LFS object whose
    /// pointer is not known (see [`FileInfo::pointer`]); a plain file is
    /// itself.
    pub fn unresolved(&self) -> Option<Self> {
        if !self.lfs {
            return Some(*self);
        }
        let pointer = self.pointer?;
        Some(Self {
            blob_id: self.blob_id,
            sha256: pointer.sha256,
            size: i64::from(pointer.size),
            binary: false,
            lfs: false,
            pointer: None,
        })
    }
}

impl PointerFile {
    /// The pointer's own description as the database spells it; `None`
    /// when a column is malformed.
    pub fn from_hex(sha256: &str, size: i64) -> Option<Self> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(sha256, &mut digest).ok()?;
        Some(Self {
            sha256: digest,
            size: u16::try_from(size).ok()?,
        })
    }
}

/// One regular file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub info: FileInfo,
}

/// Where one path lies in a [`TreeDelta`]'s text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

/// What changed in the repository's tree, relative to the stored manifest.
///
/// Its paths lie end to end in one string: a first snapshot of a million
/// files holds their bytes and 8 bytes each, not a heap allocation each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TreeDelta {
    /// Every path of the change, end to end.
    text: String,
    /// New or changed files, hashed, sorted by path (byte order).
    upserts: Vec<(Span, FileInfo)>,
    /// Paths that are gone, sorted (byte order).
    deletes: Vec<Span>,
    /// Submodules whose commit moved, by path (byte order).
    submodules: Vec<SubmoduleChange>,
    /// Whether an ignore file changed: visibility must be recomputed for
    /// every path, not only the changed ones.
    pub ignore_rules_changed: bool,
}

impl TreeDelta {
    /// A change of these files and deleted paths, in any order.
    pub fn new(
        upserts: impl IntoIterator<Item = FileEntry>,
        deletes: impl IntoIterator<Item = String>,
    ) -> Result<Self, ChangeError> {
        let mut delta = Self::default();
        for file in upserts {
            delta.add_upsert(&file.path, file.info)?;
        }
        for path in deletes {
            delta.add_delete(&path)?;
        }
        delta.sort();
        Ok(delta)
    }

    fn span(&mut self, path: &str) -> Result<Span, ChangeError> {
        let too_many = || ChangeError::Read("the change's paths exceed 4 GiB".to_owned());
        let start = u32::try_from(self.text.len()).map_err(|_| too_many())?;
        let len = u32::try_from(path.len()).map_err(|_| too_many())?;
        start.checked_add(len).ok_or_else(too_many)?;
        self.text.push_str(path);
        Ok(Span { start, len })
    }

    fn add_upsert(&mut self, path: &str, info: FileInfo) -> Result<(), ChangeError> {
        let span = self.span(path)?;
        self.upserts.push((span, info));
        Ok(())
    }

    fn add_delete(&mut self, path: &str) -> Result<(), ChangeError> {
        let span = self.span(path)?;
        self.deletes.push(span);
        Ok(())
    }

    fn path(&self, span: Span) -> &str {
        path_in(&self.text, span)
    }

    /// Both lists in byte order of their paths, as the outbox reads them.
    fn sort(&mut self) {
        let text = &self.text;
        self.upserts
            .sort_unstable_by(|a, b| path_in(text, a.0).cmp(path_in(text, b.0)));
        self.deletes
            .sort_unstable_by(|a, b| path_in(text, *a).cmp(path_in(text, *b)));
        self.submodules.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    }

    /// New or changed files, by path (byte order).
    pub fn upserts(&self) -> impl ExactSizeIterator<Item = (&str, &FileInfo)> + Clone + Send + '_ {
        self.upserts
            .iter()
            .map(|(span, info)| (self.path(*span), info))
    }

    /// Paths that are gone, in byte order.
    pub fn deletes(&self) -> impl ExactSizeIterator<Item = &str> + Clone + Send + '_ {
        self.deletes.iter().map(|span| self.path(*span))
    }

    /// How many paths changed.
    pub fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len() + self.submodules.len()
    }

    /// Submodules whose commit moved, by path (byte order).
    pub fn submodules(&self) -> &[SubmoduleChange] {
        &self.submodules
    }

    /// The new state of `path`, if this change created or updated it.
    pub fn upsert(&self, path: &str) -> Option<&FileInfo> {
        self.upserts
            .binary_search_by(|(span, _)| self.path(*span).cmp(path))
            .ok()
            .map(|i| &self.upserts[i].1)
    }

    /// Whether this change deleted `path`.
    pub fn deleted(&self, path: &str) -> bool {
        self.deletes
            .binary_search_by(|span| self.path(*span).cmp(path))
            .is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty() && self.submodules.is_empty()
    }
}

fn path_in(text: &str, span: Span) -> &str {
    &text[span.start as usize..(span.start + span.len) as usize]
}

fn is_regular(mode: u32) -> bool {
    mode == u32::from(FileMode::Blob) || mode == u32::from(FileMode::BlobExecutable)
}

/// The change from `old` to `new` by tree diff, hashing what was added or
/// modified (LFS pointers by their objects, with `reading.lfs`; submodules
/// expanded, with `reading.modules`). Subtrees whose ids did not change are
/// not opened, so the work follows the change, not the size of the
/// repository.
pub fn diff_commits(
    repo: &Repository,
    old: Oid,
    new: Oid,
    reading: &mut Reading<'_>,
) -> Result<TreeDelta, ChangeError> {
    let old_tree = repo.find_commit(old)?.tree()?;
    let new_tree = repo.find_commit(new)?.tree()?;
    let levels = match &reading.modules {
        Some(modules) => Some((
            Level::top(repo, old, &modules.url)?,
            Level::top(repo, new, &modules.url)?,
        )),
        None => None,
    };
    let mut delta = TreeDelta::default();
    diff_trees(
        repo,
        (Some(&old_tree), levels.as_ref().map(|l| &l.0)),
        (Some(&new_tree), levels.as_ref().map(|l| &l.1)),
        "",
        reading,
        &mut delta,
    )?;
    if levels.is_none() {
        submodules::fill_urls(repo, Some(old), new, &mut delta.submodules)?;
    }
    delta.sort();
    Ok(delta)
}

/// One side of a tree entry: its id, mode and kind.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Side {
    id: Oid,
    mode: u32,
    kind: Option<ObjectType>,
    /// An expanded submodule's commit: `id` is its tree.
    module: Option<Oid>,
}

impl Side {
    fn is_tree(self) -> bool {
        self.kind == Some(ObjectType::Tree)
    }

    fn is_file(self) -> bool {
        self.kind == Some(ObjectType::Blob) && is_regular(self.mode)
    }

    /// A submodule's commit (a gitlink).
    fn is_gitlink(self) -> bool {
        self.kind == Some(ObjectType::Commit)
    }
}

/// One side of a diff below a folder: its tree, and, when submodules are
/// expanded, the repository (level) the folder belongs to.
type DiffSide<'a, 'r> = (Option<&'a Tree<'r>>, Option<&'a Level>);

/// The entries of one side's tree by name; with a level, each gitlink is
/// read as its commit's tree (brought into the mirror when missing).
fn sides(
    repo: &Repository,
    (tree, level): DiffSide<'_, '_>,
    prefix: &str,
    reading: &mut Reading<'_>,
) -> Result<std::collections::BTreeMap<String, Side>, ChangeError> {
    let mut entries = std::collections::BTreeMap::new();
    for entry in tree.into_iter().flat_map(|t| t.iter()) {
        let Ok(name) = entry.name() else {
            tracing::warn!("skipped an entry whose name is not UTF-8");
            continue;
        };
        if is_unsafe_component(name) {
            tracing::warn!(name = ?name, "skipped a tree entry git would refuse");
            continue;
        }
        let mut side = Side {
            id: entry.id(),
            mode: u32::try_from(entry.filemode()).unwrap_or(0),
            kind: entry.kind(),
            module: None,
        };
        if let (true, Some(level), Some(modules)) =
            (side.is_gitlink(), level, reading.modules.as_mut())
        {
            let path = format!("{prefix}{name}");
            if let Some(tree) = level.tree_of(repo, &path, side.id, &mut *modules.source)? {
                side = Side {
                    id: tree,
                    mode: u32::from(FileMode::Tree),
                    kind: Some(ObjectType::Tree),
                    module: Some(side.id),
                };
            }
        }
        entries.insert(name.to_owned(), side);
    }
    Ok(entries)
}

fn diff_trees(
    repo: &Repository,
    old: DiffSide<'_, '_>,
    new: DiffSide<'_, '_>,
    prefix: &str,
    reading: &mut Reading<'_>,
    delta: &mut TreeDelta,
) -> Result<(), ChangeError> {
    let before = sides(repo, old, prefix, reading)?;
    let after = sides(repo, new, prefix, reading)?;
    // LFS pointers are resolved in the watched repository only: a
    // submodule's would need its own LFS server.
    let lfs = reading.lfs && new.1.is_none_or(Level::is_top);
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let (was, is) = (before.get(name).copied(), after.get(name).copied());
        // Same id: the same content (a subtree's id covers all below it).
        // A mode-only change of a file (+x) keeps its content: nothing to tell.
        if let (Some(was), Some(is)) = (was, is)
            && was.id == is.id
            && was.is_tree() == is.is_tree()
            && was.is_file() == is.is_file()
            && was.is_gitlink() == is.is_gitlink()
        {
            continue;
        }
        let path = format!("{prefix}{name}");
        let (old_link, new_link) = (
            was.filter(|s| s.is_gitlink()).map(|s| s.id),
            is.filter(|s| s.is_gitlink()).map(|s| s.id),
        );
        // Expanding, a gitlink left as one could not be followed: its
        // files are not known, and no `submodule` event stands in for them.
        let expanding = old.1.is_some() || new.1.is_some();
        if !expanding && (old_link.is_some() || new_link.is_some()) {
            delta.submodules.push(SubmoduleChange {
                path: path.clone(),
                old: old_link,
                new: new_link,
                url: None,
            });
        }
        let old_subtree = was
            .filter(|s| s.is_tree())
            .map(|s| repo.find_tree(s.id))
            .transpose()?;
        let new_subtree = is
            .filter(|s| s.is_tree())
            .map(|s| repo.find_tree(s.id))
            .transpose()?;
        if old_subtree.is_some() || new_subtree.is_some() {
            // A submodule's folder belongs to the submodule's own level.
            let inner = |side: Option<Side>, level: Option<&Level>| match (side, level) {
                (
                    Some(Side {
                        module: Some(commit),
                        ..
                    }),
                    Some(level),
                ) => level.enter(repo, &path, commit).map(Some),
                _ => Ok(None),
            };
            let (old_inner, new_inner) = (inner(was, old.1)?, inner(is, new.1)?);
            diff_trees(
                repo,
                (old_subtree.as_ref(), old_inner.as_ref().or(old.1)),
                (new_subtree.as_ref(), new_inner.as_ref().or(new.1)),
                &format!("{path}/"),
                reading,
                delta,
            )?;
        }
        let was_file = was.is_some_and(Side::is_file);
        let is_file = is.is_some_and(Side::is_file);
        if was_file || is_file {
            if IGNORE_FILES.contains(&path.as_str()) {
                delta.ignore_rules_changed = true;
            }
            match (was_file, is_file) {
                (_, true) => {
                    let id = is.expect("is_file implies an entry").id;
                    delta.add_upsert(&path, describe_blob(repo, id, lfs)?)?;
                }
                (true, false) => delta.add_delete(&path)?,
                (false, false) => {}
            }
        }
    }
    Ok(())
}

/// The change from the stored manifest (path → blob id) to `new`: used for
/// the first snapshot (an empty manifest) and after history rewrites.
pub fn diff_against_manifest(
    repo: &Repository,
    manifest: &HashMap<String, String>,
    new: Oid,
    reading: &mut Reading<'_>,
) -> Result<TreeDelta, ChangeError> {
    let tree = repo.find_commit(new)?.tree()?;
    let mut delta = TreeDelta::default();
    // Manifest paths met in the tree (an empty manifest, the first
    // snapshot, needs none of this).
    let mut seen = std::collections::HashSet::with_capacity(manifest.len());
    let lfs = reading.lfs;
    // Files to describe, described a list at a time on several threads.
    let mut pending = Undescribed::new(reading.arrived);
    walk_read(repo, &tree, new, reading, &mut |path, blob, nested| {
        if let Some((known_path, known)) = manifest.get_key_value(&path) {
            seen.insert(known_path.as_str());
            if Oid::from_str(known).is_ok_and(|known| known == blob) {
                return Ok(());
            }
        }
        if IGNORE_FILES.contains(&path.as_str()) {
            delta.ignore_rules_changed = true;
        }
        pending.push(path, blob, lfs && !nested);
        if pending.is_full() {
            pending.describe_into(repo, &mut delta)?;
        }
        Ok(())
    })?;
    pending.describe_into(repo, &mut delta)?;
    for path in manifest.keys() {
        if !seen.contains(path.as_str()) {
            if IGNORE_FILES.contains(&path.as_str()) {
                delta.ignore_rules_changed = true;
            }
            delta.add_delete(path)?;
        }
    }
    delta.sort();
    Ok(delta)
}

/// The regular files of `at`'s tree that are at `paths` or that `also`
/// selects, described as a scan describes them (path → file): the old side
/// of a diff between two commits, which has no stored manifest. `paths`
/// are looked up one by one (the work follows them); `also`, when given,
/// walks the whole tree.
pub fn describe_files<'a>(
    repo: &Repository,
    at: Oid,
    paths: impl IntoIterator<Item = &'a str>,
    also: Option<&dyn Fn(&str) -> bool>,
    reading: &mut Reading<'_>,
) -> Result<std::collections::BTreeMap<String, FileInfo>, ChangeError> {
    let tree = repo.find_commit(at)?.tree()?;
    let lfs = reading.lfs;
    let expand = reading.modules.is_some();
    let mut files = std::collections::BTreeMap::new();
    for path in paths {
        if let Some((blob, nested)) = find_file(repo, &tree, path, expand) {
            files.insert(path.to_owned(), describe_blob(repo, blob, lfs && !nested)?);
        }
    }
    if let Some(also) = also {
        walk_read(repo, &tree, at, reading, &mut |path, blob, nested| {
            if !files.contains_key(&path) && also(&path) {
                let info = describe_blob(repo, blob, lfs && !nested)?;
                files.insert(path, info);
            }
            Ok(())
        })?;
    }
    Ok(files)
}

/// Walks commit `at`'s `tree` as `reading` reads it: its submodules
/// expanded when it expands them.
fn walk_read(
    repo: &Repository,
    tree: &Tree<'_>,
    at: Oid,
    reading: &mut Reading<'_>,
    visit: &mut dyn FnMut(String, Oid, bool) -> Result<(), ChangeError>,
) -> Result<(), ChangeError> {
    match reading.modules.as_mut() {
        Some(modules) => {
            let top = Level::top(repo, at, &modules.url)?;
            walk_level(tree, "", Some((repo, &top, &mut *modules.source)), visit)
        }
        None => walk_level(tree, "", None, visit),
    }
}

/// Brings into the mirror the commits of the submodules that `path` of
/// commit `at` lies in (nested ones included), as `modules` reads them: a
/// file of an expanded submodule whose content a mirror lacks, such as
/// another instance's, is found again this way.
pub fn bring_path(
    repo: &Repository,
    at: Oid,
    path: &str,
    modules: Modules<'_>,
) -> Result<(), ChangeError> {
    let mut level = Level::top(repo, at, &modules.url)?;
    let mut tree = repo.find_commit(at)?.tree()?;
    let mut root = 0;
    for (end, _) in path.match_indices('/') {
        let Ok(entry) = tree.get_path(std::path::Path::new(&path[root..end])) else {
            return Ok(());
        };
        if entry.kind() != Some(ObjectType::Commit) {
            continue;
        }
        let inner = &path[..end];
        let Some(tree_id) = level.tree_of(repo, inner, entry.id(), &mut *modules.source)? else {
            return Ok(());
        };
        level = level.enter(repo, inner, entry.id())?;
        tree = repo.find_tree(tree_id)?;
        root = end + 1;
    }
    Ok(())
}

/// The regular file at `path` of `tree` (its blob, and whether it lies in
/// a submodule), looked up through the gitlinks the mirror holds when
/// submodules are expanded.
fn find_file(repo: &Repository, tree: &Tree<'_>, path: &str, expand: bool) -> Option<(Oid, bool)> {
    if let Ok(entry) = tree.get_path(std::path::Path::new(path)) {
        let regular = entry.kind() == Some(ObjectType::Blob)
            && is_regular(u32::try_from(entry.filemode()).unwrap_or(0));
        return regular.then_some((entry.id(), false));
    }
    if !expand {
        return None;
    }
    for (at, _) in path.match_indices('/') {
        let entry = tree.get_path(std::path::Path::new(&path[..at])).ok()?;
        match entry.kind() {
            Some(ObjectType::Tree) => {}
            Some(ObjectType::Commit) => {
                let inner = repo.find_commit(entry.id()).ok()?.tree().ok()?;
                return find_file(repo, &inner, &path[at + 1..], true)
                    .map(|(blob, _)| (blob, true));
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// However a file is cut into pieces, its description is the one of
        /// its bytes whole (multi-byte characters and NULs around the cuts
        /// and around the end of the bytes that decide included).
        #[test]
        fn a_description_fed_in_pieces_is_the_description_of_the_whole(
            parts in prop::collection::vec(
                prop_oneof![
                    Just("é€😀".as_bytes().to_vec()),
                    Just(vec![0u8]),
                    Just(vec![0xffu8]),
                    prop::collection::vec(b'a'..=b'z', 0..3000),
                    prop::collection::vec(b'a'..=b'z', 505..520),
                ],
                0..12,
            ),
            cuts in prop::collection::vec(0usize..20_000, 0..8),
        ) {
            let whole: Vec<u8> = parts.concat();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(whole.len())).collect();
            cuts.sort_unstable();
            let mut description = Description::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([whole.len()]) {
                description.feed(&whole[start..cut]);
                start = cut;
            }
            prop_assert_eq!(description.finish(), describe(&whole));
        }
    }

    /// A commit of `files` (path → content) in a new repository under `dir`.
    fn commit_files(dir: &std::path::Path, files: &[(&str, &[u8])]) -> (Repository, Oid) {
        let repo = Repository::init_bare(dir).expect("a repository");
        let commit = {
            let mut builder = repo.treebuilder(None).expect("a tree builder");
            for (path, content) in files {
                let blob = repo.blob(content).expect("a blob");
                builder.insert(path, blob, 0o100644).expect("an entry");
            }
            let tree = repo
                .find_tree(builder.write().expect("a tree"))
                .expect("the tree");
            let who = git2::Signature::now("t", "t@example.com").expect("a signature");
            repo.commit(None, &who, &who, "files", &tree, &[])
                .expect("a commit")
        };
        (repo, commit)
    }

    #[test]
    fn an_lfs_pointer_is_described_by_its_object() {
        let content = b"the real content, kept on the LFS server";
        let oid = hex::encode(Sha256::digest(content));
        let pointer = format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {}\n",
            content.len()
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let (repo, commit) = commit_files(
            dir.path(),
            &[("model.bin", pointer.as_bytes()), ("plain.txt", b"hello\n")],
        );

        let resolved =
            diff_against_manifest(&repo, &HashMap::new(), commit, &mut Reading::files(true))
                .expect("a diff");
        let model = resolved.upsert("model.bin").expect("the pointer's file");
        assert!(model.lfs && model.binary);
        assert_eq!(model.sha256_hex(), oid);
        assert_eq!(model.size, content.len() as i64);
        let text = resolved.upsert("plain.txt").expect("the plain file");
        assert!(!text.lfs && text.pointer.is_none());
        assert_eq!(
            text.unresolved().as_ref(),
            Some(text),
            "a plain file is itself"
        );
        let unresolved = model.unresolved().expect("the pointer is known");

        // Off: the pointer is a file like any other, described as an app
        // that does not resolve LFS sees it.
        let plain =
            diff_against_manifest(&repo, &HashMap::new(), commit, &mut Reading::files(false))
                .expect("a diff");
        let model = plain.upsert("model.bin").expect("the pointer's file");
        assert!(!model.lfs && !model.binary);
        assert_eq!(model.sha256_hex(), describe(pointer.as_bytes()).0);
        assert_eq!(model.size, pointer.len() as i64);
        assert_eq!(&unresolved, model);

        // A manifest row stored before pointers were kept: not known.
        let mut stored = *resolved.upsert("model.bin").expect("the pointer's file");
        stored.pointer = None;
        assert_eq!(stored.unresolved(), None);
    }

    #[test]
    fn components_git_would_refuse_are_unsafe() {
        for name in [
            "",
            ".",
            "..",
            ".git",
            ".GIT",
            ".Git",
            ".git.",
            ".git ",
            ".git. .",
            "git~1",
            "GIT~1",
            ".git::$INDEX_ALLOCATION",
            ".g\u{200c}it",
            "\u{feff}.git",
            "a/b",
            "a\0b",
        ] {
            assert!(is_unsafe_component(name), "{name:?} should be unsafe");
        }
        for name in [
            ".github",
            ".gitignore",
            "git",
            "...",
            ".git~1x",
            "a..b",
            "x.git",
        ] {
            assert!(!is_unsafe_component(name), "{name:?} should be safe");
        }
    }

    #[test]
    fn binary_detection_follows_docoras_rule() {
        assert!(!describe(b"hello\n").2);
        assert!(!describe("héllo wörld".as_bytes()).2);
        assert!(describe(b"a\0b").2);
        assert!(!describe(&[0xff, 0xfe, 0x41]).2, "a UTF-16 byte-order mark");
        let late_nul = [&[b'x'; 600][..], b"\0"].concat();
        assert!(!describe(&late_nul).2, "only the first 512 bytes count");
        let (sha, size, _) = describe(b"");
        assert_eq!(
            sha,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(size, 0);
    }

    #[test]
    fn visibility_combines_ignore_files_and_globs() {
        let mut builder = GitignoreBuilder::new("");
        builder.add_line(None, "*.log").expect("pattern");
        builder.add_line(None, "build/").expect("pattern");
        builder.add_line(None, "!keep.log").expect("pattern");
        let rules = builder.build().expect("rules");
        let all = Visibility::new(Some(rules.clone()), &[], &[]);
        assert!(all.sees("src/main.rs"));
        assert!(!all.sees("debug.log"));
        assert!(all.sees("keep.log"));
        assert!(
            !all.sees("build/out/a.txt"),
            "an ignored directory hides its files"
        );

        let docs = Visibility::new(
            Some(rules),
            &["docs/**".to_owned()],
            &["**/*.tmp".to_owned()],
        );
        assert!(docs.sees("docs/a/b.md"));
        assert!(!docs.sees("src/a.md"));
        assert!(!docs.sees("docs/x.tmp"));
    }

    /// Two cases where git's reading differs from the `ignore` crate's
    /// `matched_path_or_any_parents` (found by the property test against
    /// `git check-ignore` in `tests/properties.rs`).
    #[test]
    fn ignore_rules_are_read_as_git_reads_them() {
        let rules = |lines: &[&str]| {
            let mut builder = GitignoreBuilder::new("");
            for line in lines {
                builder.add_line(None, line).expect("pattern");
            }
            Visibility::new(Some(builder.build().expect("rules")), &[], &[])
        };
        let folders_only = rules(&["*/"]);
        assert!(
            folders_only.sees("README.md"),
            "`*/` names folders, not root files"
        );
        assert!(!folders_only.sees("docs/a.md"));
        let no_way_back = rules(&["build/", "!build/keep.txt"]);
        assert!(
            !no_way_back.sees("build/keep.txt"),
            "nothing inside an ignored folder comes back"
        );
    }
}
