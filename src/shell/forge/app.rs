//! GitHub App authentication: a JWT signed with the App's private key (RS256, `iss` the
//! App id, at most 10 minutes long) buys an installation token of an hour, which is
//! renewed five minutes before it expires. The installation is configured or looked up
//! with `GET /repos/OWNER/NAME/installation`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::client::ForgeError;

/// A token this close to its expiry is renewed first.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

pub struct AppAuth {
    pub app_id: u64,
    key: EncodingKey,
    installation_id: Option<u64>,
    token: tokio::sync::Mutex<Option<(String, SystemTime)>>,
}

#[derive(Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

/// How the client proves who it is.
pub enum Auth {
    None,
    /// A personal, installation or Gitea/Forgejo token.
    Token(String),
    App(Box<AppAuth>),
}

impl AppAuth {
    /// `pem` is the App's private key as GitHub gives it (PKCS#1 or PKCS#8 PEM).
    pub fn new(app_id: u64, pem: &[u8], installation_id: Option<u64>) -> Result<AppAuth, String> {
        let key = EncodingKey::from_rsa_pem(pem)
            .map_err(|e| format!("the GitHub App private key is not an RSA PEM key: {e}"))?;
        Ok(AppAuth {
            app_id,
            key,
            installation_id,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// A fresh JWT for the App's own endpoints (`/app`, installations).
    pub fn jwt(&self) -> Result<String, ForgeError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| ForgeError::Shape(e.to_string()))?
            .as_secs();
        // Issued a minute in the past, as GitHub advises, against clock drift; 9 minutes
        // long, under GitHub's limit of 10.
        let claims = Claims {
            iat: now - 60,
            exp: now + 9 * 60,
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| ForgeError::Shape(format!("signing the GitHub App JWT: {e}")))
    }

    /// The installation token for `repository` (`OWNER/NAME`), renewed when it is missing
    /// or about to expire. `call(method, path, jwt)` makes a call with the JWT as bearer.
    pub async fn token<F, Fut>(&self, repository: &str, call: F) -> Result<String, ForgeError>
    where
        F: Fn(hyper::Method, String, String) -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, ForgeError>>,
    {
        let mut held = self.token.lock().await;
        if let Some((t, expires)) = &*held {
            if SystemTime::now() + RENEW_BEFORE < *expires {
                return Ok(t.clone());
            }
        }
        let jwt = self.jwt()?;
        let id = match self.installation_id {
            Some(id) => id,
            None => {
                let v = call(
                    hyper::Method::GET,
                    format!("/repos/{repository}/installation"),
                    jwt.clone(),
                )
                .await?;
                v["id"].as_u64().ok_or_else(|| {
                    ForgeError::Shape("GET /repos/…/installation: no id in the answer".into())
                })?
            }
        };
        let path = format!("/app/installations/{id}/access_tokens");
        let v = call(hyper::Method::POST, path, jwt).await?;
        let token = v["token"]
            .as_str()
            .ok_or_else(|| ForgeError::Shape("access_tokens: no token in the answer".into()))?
            .to_string();
        // An unreadable expiry is taken as the documented hour.
        let expires = v["expires_at"]
            .as_str()
            .and_then(|s| humantime::parse_rfc3339(s).ok())
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
        *held = Some((token.clone(), expires));
        Ok(token)
    }
}
