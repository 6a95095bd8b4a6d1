//! Served repositories and receivers, as the end-to-end tests start from
//! them.

use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::receiver::Receiver;

use super::{TestApp, TestClient, engine_with, onboard, watch};

/// One repository served by `git daemon` (as `r.git` unless named), and a
/// receiver for its webhooks. Hold it for the whole test: dropping it stops
/// the daemon and the receiver.
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
        Self::serve_as(repo, "r.git").await
    }

    /// [`Self::serve`], the repository served as `name` (e.g.
    /// `widgets.git`): for tests where the name shows (in a URL a hook
    /// matches, in what an app may not see).
    pub async fn serve_as(repo: &TestRepo, name: &str) -> Rig {
        let served = Served::new(repo, name);
        let daemon = GitDaemon::serve(served.root());
        let receiver = Receiver::start().await;
        Rig {
            daemon,
            served,
            receiver,
        }
    }

    /// `git://127.0.0.1:PORT/<name>`, the name the repository is served as.
    pub fn url(&self) -> String {
        self.daemon.url(&self.served.name)
    }

    /// App `name` onboarded on `app` with `receiver` as its endpoint (the
    /// rig's own, or another one for a second subscriber), watching the
    /// repository: the app and the repository's id.
    pub async fn subscribe(
        &self,
        app: &TestApp,
        receiver: &Receiver,
        name: &str,
    ) -> (TestClient, String) {
        let client = onboard(app, receiver, name).await;
        let id = watch(app, &client, &self.url()).await;
        (client, id)
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
        let (client, id) = self.subscribe(&app, &self.receiver, name).await;
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
        let repo = TestRepo::new("main");
        repo.write("README.md", "hello\n");
        repo.commit("first");
        Self::serve_repo(repo, names)
    }

    /// [`Self::serve`] for a repository of the test's own: push its new
    /// commits to each of `served`.
    pub fn serve_repo(repo: TestRepo, names: &[&str]) -> Remotes {
        let (first, rest) = names.split_first().expect("at least one repository");
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
