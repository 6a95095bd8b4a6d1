//! Served repositories and receivers, as the end-to-end tests start from
//! them.

use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::receiver::Receiver;

use super::{TestApp, TestClient, engine_with, onboard, watch};

/// One repository served by `git daemon` as `r.git`, and a receiver for
/// its webhooks. Hold it for the whole test: dropping it stops the daemon
/// and the receiver.
pub struct Rig {
    // Declared first so the daemon stops before its root is removed.
    pub daemon: GitDaemon,
    pub served: Served,
    pub receiver: Receiver,
}

impl Rig {
    /// `repo` served as `r.git`, and a receiver that answers 200 until
    /// scripted otherwise.
    pub async fn serve(repo: &TestRepo) -> Rig {
        let served = Served::new(repo, "r.git");
        let daemon = GitDaemon::serve(served.root());
        let receiver = Receiver::start().await;
        Rig {
            daemon,
            served,
            receiver,
        }
    }

    /// `git://127.0.0.1:PORT/r.git`.
    pub fn url(&self) -> String {
        self.daemon.url("r.git")
    }

    /// A fast server with `settings` on top, app `name` onboarded with the
    /// receiver as its endpoint, watching the repository: the server, the
    /// app and the repository's id.
    pub async fn watched(
        &self,
        name: &str,
        settings: &[(&str, &str)],
    ) -> (TestApp, TestClient, String) {
        let app = engine_with(settings).await;
        let client = onboard(&app, &self.receiver, name).await;
        let id = watch(&app, &client, &self.url()).await;
        (app, client, id)
    }
}

/// Real repositories on loopback for tests that need "some repository" a
/// registration can prove access to: one commit on `main`, served bare under
/// each of the given names by one `git daemon`. Hold the value for the whole
/// test: dropping it stops the daemon. Needs a [`TestAppBuilder::loopback`]
/// server.
pub struct Remotes {
    // Declared first so the daemon stops before its root is removed.
    pub daemon: GitDaemon,
    pub served: Vec<Served>,
    pub repo: TestRepo,
}

impl Remotes {
    /// Serves the same one-commit repository as each of `names` (e.g.
    /// `acme/widgets.git`: its owner is `acme`, its name `widgets`).
    pub fn serve(names: &[&str]) -> Remotes {
        let (first, rest) = names.split_first().expect("at least one repository");
        let repo = TestRepo::new("main");
        repo.write("README.md", "hello\n");
        repo.commit("first");
        let mut served = vec![Served::new(&repo, first)];
        for name in rest {
            let sibling = served[0].sibling(&repo, name);
            served.push(sibling);
        }
        let daemon = GitDaemon::serve(served[0].root());
        Remotes {
            daemon,
            served,
            repo,
        }
    }

    /// `git://127.0.0.1:PORT/<name>`.
    pub fn url(&self, name: &str) -> String {
        self.daemon.url(name)
    }
}
