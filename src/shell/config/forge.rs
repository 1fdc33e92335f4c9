//! `[repos.forge]`: the pull requests of a repository on GitHub, Gitea or Forgejo
//! (`docs/forge.md`).

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// Which forge hosts the repository, and so which API shapes and headers it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitea,
    Forgejo,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitea => "gitea",
            ForgeKind::Forgejo => "forgejo",
        }
    }
}

/// Who lands approved pull requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForgeMode {
    /// mergequeue lands them (pushes the tested commit).
    #[default]
    Queue,
    /// GitHub's merge queue lands them; mergequeue is its required check.
    MergeGroup,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeConfig {
    pub kind: ForgeKind,
    /// GitHub: the REST root (`https://api.github.com`); Gitea and Forgejo: the `/api/v1`
    /// root (`https://codeberg.org/api/v1`).
    pub api_url: Spanned<String>,
    /// `OWNER/NAME` on the forge.
    pub repository: Spanned<String>,
    /// The login commands address (`@mergequeue r+`).
    #[serde(default = "default_bot")]
    pub bot: Spanned<String>,
    /// A Gitea/Forgejo token or a GitHub token (personal or installation).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The secret webhook deliveries are signed with. Without it every delivery is refused.
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
    /// GitHub App authentication instead of `token_file`.
    #[serde(default)]
    pub app_id: Option<Spanned<u64>>,
    #[serde(default)]
    pub app_private_key_file: Option<PathBuf>,
    #[serde(default)]
    pub installation_id: Option<u64>,
    /// Seconds between reconciliations of open pull requests with the queue.
    #[serde(default = "default_resync")]
    pub resync_secs: Spanned<u64>,
    /// The context of the commit statuses mergequeue posts.
    #[serde(default = "default_context")]
    pub status_context: String,
    /// Adding this label (by a user who may approve) queues the pull request; removing it
    /// cancels.
    #[serde(default)]
    pub queue_label: Option<String>,
    #[serde(default = "default_mode")]
    pub mode: Spanned<ForgeMode>,
}

fn default_bot() -> Spanned<String> {
    Spanned::new(0..0, "mergequeue".into())
}

fn default_resync() -> Spanned<u64> {
    Spanned::new(0..0, 300)
}

fn default_mode() -> Spanned<ForgeMode> {
    Spanned::new(0..0, ForgeMode::Queue)
}

fn default_context() -> String {
    "mergequeue".into()
}

type Invalid = (Option<std::ops::Range<usize>>, String);

impl ForgeConfig {
    /// Where a pull request's page is, with its number appended: the web root is the API
    /// root without `/api/v1` (Gitea, Forgejo) or `/api/v3` (GitHub Enterprise), and
    /// `https://github.com` for `https://api.github.com`.
    pub fn pull_page_prefix(&self) -> String {
        let api = self.api_url.get_ref().trim_end_matches('/');
        let (web, pulls) = match self.kind {
            ForgeKind::Github if api == "https://api.github.com" => ("https://github.com", "pull"),
            ForgeKind::Github => (api.strip_suffix("/api/v3").unwrap_or(api), "pull"),
            ForgeKind::Gitea | ForgeKind::Forgejo => {
                (api.strip_suffix("/api/v1").unwrap_or(api), "pulls")
            }
        };
        format!("{web}/{}/{pulls}/", self.repository.get_ref())
    }

    /// The checks serde cannot make; the span points at the offending value.
    pub fn validate(&self) -> Result<(), Invalid> {
        let url = self.api_url.get_ref();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err((
                Some(self.api_url.span()),
                format!("forge api_url {url:?} must be an http:// or https:// URL"),
            ));
        }
        let repo = self.repository.get_ref();
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err((
                Some(self.repository.span()),
                format!("forge repository {repo:?} must be OWNER/NAME"),
            ));
        }
        let bot = self.bot.get_ref();
        if bot.is_empty() || bot.chars().any(char::is_whitespace) || bot.starts_with('@') {
            return Err((
                Some(self.bot.span()),
                format!("forge bot {bot:?} must be a login, without '@' or spaces"),
            ));
        }
        if *self.resync_secs.get_ref() == 0 {
            return Err((
                Some(self.resync_secs.span()),
                "resync_secs must be at least 1".into(),
            ));
        }
        if let Some(app) = &self.app_id {
            if self.kind != ForgeKind::Github {
                return Err((
                    Some(app.span()),
                    "app_id: GitHub Apps exist on GitHub only".into(),
                ));
            }
            if self.app_private_key_file.is_none() {
                return Err((Some(app.span()), "app_id needs app_private_key_file".into()));
            }
            if self.token_file.is_some() {
                return Err((
                    Some(app.span()),
                    "give token_file or app_id, not both".into(),
                ));
            }
        }
        if *self.mode.get_ref() == ForgeMode::MergeGroup && self.kind != ForgeKind::Github {
            return Err((
                Some(self.mode.span()),
                "mode = \"merge-group\" is GitHub's merge queue: kind must be \"github\"".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::shell::config::Config;

    fn with_forge(forge: &str) -> Result<Config, String> {
        let text = format!(
            "state_dir = \"/tmp/x\"\n[[repos]]\nname = \"pkgs\"\nurl = \"file:///x\"\n\
             [repos.forge]\n{forge}\n"
        );
        Config::parse(&text, "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn pull_request_pages_are_found_from_the_api_root() {
        for (kind, api, want) in [
            (
                "github",
                "https://api.github.com",
                "https://github.com/a/b/pull/",
            ),
            (
                "github",
                "https://ghe.example.org/api/v3/",
                "https://ghe.example.org/a/b/pull/",
            ),
            (
                "gitea",
                "https://git.example.org/api/v1",
                "https://git.example.org/a/b/pulls/",
            ),
            (
                "forgejo",
                "https://codeberg.org/api/v1",
                "https://codeberg.org/a/b/pulls/",
            ),
        ] {
            let text = format!("kind = {kind:?}\napi_url = {api:?}\nrepository = \"a/b\"");
            let c = with_forge(&text).expect("valid");
            let f = c.repos[0].forge.as_ref().expect("forge");
            assert_eq!(f.pull_page_prefix(), want, "{api}");
        }
    }

    #[test]
    fn good_and_bad_forge_tables() {
        let ok =
            "kind = \"gitea\"\napi_url = \"https://codeberg.org/api/v1\"\nrepository = \"a/b\"";
        let c = with_forge(ok).expect("valid");
        let f = c.repos[0].forge.as_ref().expect("forge");
        assert_eq!(
            (f.bot.get_ref().as_str(), *f.resync_secs.get_ref()),
            ("mergequeue", 300)
        );
        for (bad, says) in [
            ("kind = \"gitlab\"\napi_url = \"https://x\"\nrepository = \"a/b\"", "gitlab"),
            ("kind = \"gitea\"\napi_url = \"ftp://x\"\nrepository = \"a/b\"", "api_url"),
            ("kind = \"gitea\"\napi_url = \"https://x\"\nrepository = \"a\"", "OWNER/NAME"),
            ("kind = \"gitea\"\napi_url = \"https://x\"\nrepository = \"a/b/c\"", "OWNER/NAME"),
            ("kind = \"gitea\"\napi_url = \"https://x\"\nrepository = \"a/b\"\nbot = \"@me\"", "login"),
            ("kind = \"gitea\"\napi_url = \"https://x\"\nrepository = \"a/b\"\nresync_secs = 0", "resync_secs"),
            ("kind = \"gitea\"\napi_url = \"https://x\"\nrepository = \"a/b\"\nmode = \"merge-group\"", "merge-group"),
            ("kind = \"gitea\"\napi_url = \"https://x\"\nrepository = \"a/b\"\napp_id = 1", "GitHub"),
            ("kind = \"github\"\napi_url = \"https://x\"\nrepository = \"a/b\"\napp_id = 1", "app_private_key_file"),
            ("kind = \"github\"\napi_url = \"https://x\"\nrepository = \"a/b\"\ntokn_file = \"/x\"", "tokn_file"),
        ] {
            let e = with_forge(bad).expect_err(bad);
            assert!(e.contains(says), "{bad:?}: {e}");
            assert!(e.starts_with("t.toml:"), "{e}");
        }
    }
}
