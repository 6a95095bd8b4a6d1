//! Fetching over the network, and a scan's one connection: ask where the
//! branch is and fetch it when the mirror lacks it, as `git fetch` does,
//! instead of a head check and then a fetch on a second connection. The
//! head is asked with the mirror's own remote, which follows no redirect,
//! as the head check's did.

use git2::{ConfigLevel, Repository};

use super::*;

/// What [`Mirror::update`] could not do: ask where the branch is (a head
/// check's failure: the credential's or the remote's), or fetch it once
/// asked (the remote's, or the mirror's).
#[derive(Debug)]
pub enum UpdateFailure {
    Asking(GitError),
    Fetching(GitError),
}

impl Mirror {
    /// Fetches `want` into ref `into` through `remote`, on its connection
    /// when it is connected; every byte read also handed to `tap`, if any.
    pub(super) fn download(
        &self,
        session: &Session<'_>,
        remote: &mut git2::Remote<'_>,
        want: Want<'_>,
        into: &str,
        depth: Depth,
        tap: Option<&Tap>,
    ) -> Result<(), GitError> {
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(session.callbacks(Some(IndexerWindows::new(self.repo.path()))))
            .proxy_options(session.proxy_options())
            .follow_redirects(RemoteRedirect::None)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false)
            .depth(match depth {
                Depth::Tip => 1,
                // libgit2's GIT_FETCH_DEPTH_UNSHALLOW.
                Depth::History => i32::MAX,
            });
        let refspec = match want {
            Want::Ref(name) => format!("+{name}:{into}"),
            Want::Commit(oid) => format!("+{oid}:{into}"),
        };
        let fetch = || remote.fetch(&[refspec], Some(&mut options), None);
        match tap {
            Some(tap) => socket::tapped(tap, fetch),
            None => fetch(),
        }
        .map_err(|e| session.failed(&e))
    }

    /// Asks the remote where `branch` (or its default branch) points and,
    /// unless the mirror already holds that commit for the branch, fetches
    /// it as [`Self::fetch`] does, on the same connection: one connection a
    /// scan, as `git fetch` makes, where a head check and then a fetch made
    /// two (and a first sync three, with the registration's own check).
    /// The fetch's bytes are also handed to `tap`, if any
    /// ([`super::super::arriving`]).
    pub fn update(
        &self,
        spec: &RemoteSpec,
        branch: Option<&str>,
        tap: Option<&Tap>,
    ) -> Result<RemoteHead, UpdateFailure> {
        if scheme_of(&spec.url) == "file" {
            let head = crate::git::probe(spec, branch).map_err(UpdateFailure::Asking)?;
            if self.local_head(&head.branch) != Some(head.commit) {
                self.fetch(spec, &head.branch)
                    .map_err(UpdateFailure::Fetching)?;
            }
            return Ok(head);
        }
        let session = Session::start(spec).map_err(UpdateFailure::Asking)?;
        // The head is asked with the mirror's own remote, which follows no
        // redirect (`http.followRedirects`, set when the mirror opens), as
        // a head check's does.
        let mut remote = self
            .repo
            .remote_anonymous(&spec.url)
            .map_err(|e| UpdateFailure::Asking(GitError::classify(&e, None)))?;
        let mut connection = session
            .connect(&mut remote, None)
            .map_err(UpdateFailure::Asking)?;
        let head = session
            .head(&connection, branch)
            .map_err(UpdateFailure::Asking)?;
        if self.local_head(&head.branch) == Some(head.commit) {
            return Ok(head);
        }
        let branch_ref = mirror_ref(&head.branch);
        self.download(
            &session,
            connection.remote(),
            Want::Ref(&branch_ref),
            &branch_ref,
            Depth::Tip,
            tap,
        )
        .map_err(UpdateFailure::Fetching)?;
        drop(connection);
        match self.local_head(&head.branch) {
            // The commit advertised is the one fetched, on this connection.
            Some(fetched) if fetched == head.commit => Ok(head),
            _ => Err(UpdateFailure::Fetching(GitError::new(
                GitFailure::NotFound,
                format!("branch `{}` was not found on the remote", head.branch),
            ))),
        }
    }
}

/// Writes `http.followRedirects = false` into a mirror's own configuration,
/// unless it says so already: libgit2 takes the redirect rule of a
/// connection made to ask for heads from its repository's configuration
/// (git2 binds no `git_remote_connect_ext` to give it directly), and a
/// mirror's remotes follow no redirect (its fetches are told so as well).
pub(super) fn follow_no_redirects(repo: &Repository) -> Result<(), git2::Error> {
    let mut local = repo.config()?.open_level(ConfigLevel::Local)?;
    if matches!(local.get_bool("http.followRedirects"), Ok(false)) {
        return Ok(());
    }
    local.set_bool("http.followRedirects", false)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::tests::Daemon;
    use super::*;
    use crate::git::fixtures::{commit, source_repository};
    use crate::git::remote::tests::spec;

    /// A TCP listener that counts the connections made to it and, with a
    /// `target`, forwards each one there.
    fn counting(target: Option<u16>) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("bound").port();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                let Some(target) = target else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                pipe(
                    client.try_clone().expect("a clone"),
                    server.try_clone().expect("a clone"),
                );
                pipe(server, client);
            }
        });
        (port, count)
    }

    #[test]
    fn a_scan_asks_and_fetches_over_one_connection() {
        let (dir, source) = source_repository();
        let first = commit(&source, "a.md", "one\n");
        let daemon = Daemon::serve(dir.path());
        let (port, connections) = counting(Some(daemon.port()));
        let remote = spec(format!("git://127.0.0.1:{port}/source"), true);
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");

        let head = mirror.update(&remote, None, None).expect("updated");
        assert_eq!(
            (head.branch.as_str(), head.commit.to_string()),
            ("main", first.clone())
        );
        assert_eq!(
            mirror.local_head("main").map(|c| c.to_string()),
            Some(first)
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "asked and fetched at once"
        );

        let packs = mirror.stats().packs;
        let again = mirror
            .update(&remote, Some("main"), None)
            .expect("asked again");
        assert_eq!(again, head);
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        assert_eq!(
            mirror.stats().packs,
            packs,
            "nothing fetched for a known head"
        );

        let next = commit(&source, "a.md", "two\n");
        let moved = mirror.update(&remote, Some("main"), None).expect("moved");
        assert_eq!(moved.commit.to_string(), next);
        assert_eq!(mirror.local_head("main"), Some(moved.commit));
        assert_eq!(connections.load(Ordering::SeqCst), 3);

        let missing = mirror.update(&remote, Some("gone"), None);
        assert!(
            matches!(&missing, Err(UpdateFailure::Asking(err)) if err.failure == GitFailure::NotFound),
            "{missing:?}"
        );
    }

    #[test]
    fn a_remote_that_redirects_is_not_followed() {
        // To another host name of the same address and port (libgit2 follows
        // a redirect within the host whatever its rule): refused, by
        // libgit2's rule and by Herald's socket, which admits the
        // registered host alone.
        let (dir, _source) = source_repository();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("bound").port();
        let followed = Arc::new(AtomicUsize::new(0));
        let counted = followed.clone();
        std::thread::spawn(move || {
            for mut socket in listener.incoming().flatten() {
                let mut head = [0u8; 4096];
                let n = socket.read(&mut head).unwrap_or(0);
                let request = String::from_utf8_lossy(&head[..n]).into_owned();
                let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
                if path.starts_with("/elsewhere") {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                let moved = path.replacen("/r.git", "/elsewhere.git", 1);
                let _ = socket.write_all(
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://localhost:{port}{moved}\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
            }
        });
        let remote = spec(format!("http://127.0.0.1:{port}/r.git"), true);
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");

        let refused = mirror.update(&remote, None, None);

        assert!(
            matches!(refused, Err(UpdateFailure::Asking(_))),
            "{refused:?}"
        );
        assert_eq!(
            followed.load(Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
        assert!(mirror.local_head("main").is_none());
    }
}
