//! `--mirror DIR`: each change applied to a directory that stays an exact
//! copy of the watched tree, through paths that cannot leave it.

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::Context;

use super::Refused;

/// A relative path that stays inside the mirror and out of git's way: no
/// root, no empty segment, no `.`, `..` or `.git` in any spelling
/// ([`actors::changes::is_unsafe_component`]: the mirror may be a git
/// checkout, and a `.git/config` written there runs code on the next
/// `git status`), no NUL or other control character, and names the file
/// system can hold.
#[derive(Debug)]
pub(super) struct SafePath(PathBuf);

/// Linux's `NAME_MAX` and `PATH_MAX`: longer names are refused up front
/// rather than failing the write.
const MAX_NAME_BYTES: usize = 255;
const MAX_PATH_BYTES: usize = 4096;

impl SafePath {
    pub(super) fn parse(raw: &str) -> Result<Self, Refused> {
        let unsafe_path = |why: &str| Refused::Unprocessable(format!("unsafe path {raw:?}: {why}"));
        if raw.is_empty() {
            return Err(unsafe_path("empty"));
        }
        if raw.starts_with('/') {
            return Err(unsafe_path("absolute"));
        }
        if raw.contains('\0') {
            return Err(unsafe_path("contains NUL"));
        }
        if raw.chars().any(char::is_control) {
            return Err(unsafe_path("contains a control character"));
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(unsafe_path("longer than 4096 bytes"));
        }
        let mut path = PathBuf::new();
        for segment in raw.split('/') {
            match segment {
                "" => return Err(unsafe_path("empty segment")),
                "." | ".." => return Err(unsafe_path("contains . or ..")),
                _ if actors::changes::is_unsafe_component(segment) => {
                    return Err(unsafe_path("contains a .git component"));
                }
                _ if segment.len() > MAX_NAME_BYTES => {
                    return Err(unsafe_path("a name longer than 255 bytes"));
                }
                _ => {}
            }
            // Exactly one normal component: rules out drive prefixes and
            // separators of other platforms.
            let mut components = Path::new(segment).components();
            match (components.next(), components.next()) {
                (Some(Component::Normal(_)), None) => path.push(segment),
                _ => return Err(unsafe_path("not a plain file name")),
            }
        }
        Ok(Self(path))
    }
}

/// An I/O error on the mirror: a name the file system cannot hold is the
/// sender's (a 422, so it does not retry forever); anything else is ours
/// (a 500: a full disk may clear up).
fn io_refused(path: &SafePath, doing: &str, err: &io::Error) -> Refused {
    let message = format!("{doing} {}: {err}", path.0.display());
    if err.kind() == io::ErrorKind::InvalidFilename {
        Refused::Unprocessable(message)
    } else {
        Refused::Internal(message)
    }
}

/// The `--mirror` directory.
#[derive(Debug)]
pub(super) struct Mirror {
    /// Canonical, so no path under it can climb out through `..` games.
    pub(super) root: PathBuf,
}

impl Mirror {
    pub(super) fn open(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let root = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        Ok(Self { root })
    }

    /// The file's place in the mirror, refused when an existing directory on
    /// the way is a symlink (it could lead out of the mirror).
    fn resolve(&self, path: &SafePath) -> Result<PathBuf, Refused> {
        let target = self.root.join(&path.0);
        let mut dir = self.root.clone();
        let parents = path.0.parent().map(Path::components).into_iter().flatten();
        for component in parents {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Refused::Unprocessable(format!(
                        "unsafe path {}: {} is a symlink",
                        path.0.display(),
                        dir.display()
                    )));
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                Err(err) => return Err(io_refused(path, "resolving", &err)),
            }
        }
        Ok(target)
    }

    /// Writes atomically: a temporary file in the same directory, renamed
    /// over the target, so a reader never sees half a file.
    pub(super) fn write(&self, path: &SafePath, bytes: &[u8]) -> Result<(), Refused> {
        let target = self.resolve(path)?;
        let io_error = |err: io::Error| io_refused(path, "writing", &err);
        let parent = target
            .parent()
            .expect("a path joined under the root has a parent");
        fs::create_dir_all(parent).map_err(io_error)?;
        // Not named after the target: a name near 255 bytes would not fit.
        let temporary = parent.join(format!(".herald-{}.tmp", std::process::id()));
        let written = fs::File::create(&temporary)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&temporary, &target));
        if let Err(err) = written {
            let _ = fs::remove_file(&temporary);
            return Err(io_error(err));
        }
        Ok(())
    }

    /// Removes the file and then every directory it leaves empty, up to the
    /// root. `Ok(false)` when it was already gone.
    pub(super) fn remove(&self, path: &SafePath) -> Result<bool, Refused> {
        let target = self.resolve(path)?;
        let removed = match fs::remove_file(&target) {
            Ok(()) => true,
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => return Err(io_refused(path, "removing", &err)),
        };
        let mut dir = target.parent();
        while let Some(current) = dir {
            if current == self.root || !current.starts_with(&self.root) {
                break;
            }
            // Fails (and stops) at the first directory that is not empty.
            if fs::remove_dir(current).is_err() {
                break;
            }
            dir = current.parent();
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        for raw in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "..",
            "a\0b",
            ".git/config",
            "sub/.GIT/hooks/pre-commit",
            ".git./config",
            "GIT~1/config",
            "a\u{7}b",
            "line\nbreak",
            "n".repeat(256).as_str(),
            format!("{}/x", "d/".repeat(2100)).as_str(),
        ] {
            assert!(SafePath::parse(raw).is_err(), "{raw:?} should be refused");
        }
        for raw in [
            "a",
            "docs/a.md",
            ".github/workflows/ci.yml",
            "a..b/c..",
            "…/x",
            ".gitignore",
            "n".repeat(255).as_str(),
        ] {
            assert!(SafePath::parse(raw).is_ok(), "{raw:?} should be accepted");
        }
    }
}
