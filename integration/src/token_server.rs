//! A GitLab-like registry token server (HTTPS on its own node host), for distribution's
//! `auth.token`. Like GitLab, each user may pull and push under their own path prefixes
//! (whole segments); a wrong password is 401; an anonymous request that is granted nothing is
//! 403; an authenticated one that is granted nothing gets a token with empty access, which
//! the registry then refuses. It answers GET with Basic credentials or none, and POST forms
//! with `grant_type=refresh_token` (identity tokens) or `grant_type=password`. Every request
//! is recorded for the tests.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hyper::{Method, StatusCode};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use crate::https::{response, HttpRequest, HttpResponse, HttpsServer};
use crate::pki::TokenSigningKey;
use crate::registry::{RegistryAuth, TokenAuth};

/// The path of the token endpoint, as GitLab names it.
pub const REALM_PATH: &str = "/jwt/auth";
/// Seconds a token is valid.
pub const TOKEN_LIFETIME: u64 = 300;

/// A fault the token server answers every request with until it is cleared
/// ([`TokenServer::set_fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFault {
    /// This status, with a JSON error body.
    Status(u16),
    /// No answer at all: the connection stays open and silent.
    Hang,
}

/// A user of the token server.
#[derive(Clone, Debug)]
pub struct TokenUser {
    pub name: String,
    pub password: String,
    /// Accepted as `refresh_token` in a POST `grant_type=refresh_token`.
    pub identity_token: Option<String>,
    /// Repository prefixes (whole segments) this user may pull from and push to.
    pub prefixes: Vec<String>,
}

impl TokenUser {
    pub fn new(name: &str, password: &str, prefixes: &[&str]) -> TokenUser {
        TokenUser {
            name: name.to_string(),
            password: password.to_string(),
            identity_token: None,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        }
    }

    pub fn with_identity_token(mut self, token: &str) -> TokenUser {
        self.identity_token = Some(token.to_string());
        self
    }
}

/// How a token request authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// GET without credentials.
    Anonymous,
    /// GET with HTTP Basic.
    Basic,
    /// POST `grant_type=refresh_token`.
    RefreshToken,
    /// POST `grant_type=password`.
    Password,
    /// Anything else (answered 400).
    Unsupported(String),
}

/// One request the token server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: Method,
    pub grant: Grant,
    /// The user it authenticated as (None when anonymous or rejected).
    pub user: Option<String>,
    /// The user name it claimed, even when rejected.
    pub claimed_user: Option<String>,
    pub service: Option<String>,
    /// Requested scopes, one per entry (`repository:group/app:pull,push`).
    pub scopes: Vec<String>,
    /// Granted scopes, same form.
    pub granted: Vec<String>,
    pub status: u16,
}

/// Builds a [`TokenServer`].
pub struct TokenServerBuilder {
    host: String,
    service: String,
    issuer: String,
    users: Vec<TokenUser>,
    public_prefixes: Vec<String>,
    lifetime: u64,
}

impl TokenServerBuilder {
    /// Seconds its tokens are valid (default [`TOKEN_LIFETIME`]), said in `expires_in` and
    /// signed into `exp`.
    pub fn lifetime(mut self, seconds: u64) -> Self {
        self.lifetime = seconds;
        self
    }

    pub fn user(mut self, user: TokenUser) -> Self {
        self.users.push(user);
        self
    }

    /// Repositories under `prefix` may be pulled by anyone, anonymous included.
    pub fn public(mut self, prefix: &str) -> Self {
        self.public_prefixes.push(prefix.to_string());
        self
    }

    /// The registry's `auth.token.service` and the tokens' audience (default
    /// `container_registry`, as GitLab).
    pub fn service(mut self, service: &str) -> Self {
        self.service = service.to_string();
        self
    }

    pub fn start(self) -> TokenServer {
        let signing = TokenSigningKey::generate(&format!("{} token signing", self.host));
        let state = Arc::new(State {
            key: EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &signing.pkcs8_der,
                &SystemRandom::new(),
            )
            .expect("signing key"),
            x5c: STANDARD.encode(&signing.cert_der),
            service: self.service.clone(),
            issuer: self.issuer.clone(),
            users: self.users,
            public_prefixes: self.public_prefixes,
            lifetime: self.lifetime,
            log: Mutex::new(Vec::new()),
            fault: Mutex::new(None),
        });
        let handler_state = state.clone();
        let server = HttpsServer::start(&self.host, move |request| {
            let state = handler_state.clone();
            async move {
                let fault = *state.fault.lock().unwrap_or_else(|e| e.into_inner());
                match fault {
                    None => state.handle(request),
                    Some(TokenFault::Status(code)) => response(
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        "application/json",
                        error_body("UNAVAILABLE", "injected fault"),
                    ),
                    Some(TokenFault::Hang) => std::future::pending().await,
                }
            }
        });
        TokenServer {
            server,
            state,
            signing_cert_pem: signing.cert_pem,
        }
    }
}

/// A running token server; dropping it stops it.
pub struct TokenServer {
    server: HttpsServer,
    state: Arc<State>,
    signing_cert_pem: String,
}

impl TokenServer {
    /// A server on `host:443` (a node host such as `auth.test`) with no users yet.
    pub fn builder(host: &str) -> TokenServerBuilder {
        TokenServerBuilder {
            host: host.to_string(),
            service: "container_registry".to_string(),
            issuer: "credgate-test-issuer".to_string(),
            users: Vec::new(),
            public_prefixes: Vec::new(),
            lifetime: TOKEN_LIFETIME,
        }
    }

    /// Answers every request with `fault` from now on (`None`: serves again). Requests left
    /// hanging by [`TokenFault::Hang`] stay so until their client gives up.
    pub fn set_fault(&self, fault: Option<TokenFault>) {
        *self.state.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    pub fn host(&self) -> &str {
        self.server.host()
    }

    /// `https://<host>/jwt/auth`.
    pub fn realm(&self) -> String {
        format!("{}{REALM_PATH}", self.server.url())
    }

    pub fn service(&self) -> &str {
        &self.state.service
    }

    /// The `auth` a [`crate::registry::Registry`] needs to trust this server's tokens.
    pub fn registry_auth(&self) -> RegistryAuth {
        RegistryAuth::Token(TokenAuth {
            realm: self.realm(),
            service: self.state.service.clone(),
            issuer: self.state.issuer.clone(),
            root_cert_pem: self.signing_cert_pem.clone(),
        })
    }

    /// Whether a token was issued to `user` (authenticated with their password) since the last
    /// [`TokenServer::clear_requests`]: only a client holding that credential can have asked.
    pub fn issued_to(&self, user: &str) -> bool {
        self.requests().iter().any(|r| {
            matches!(r.grant, Grant::Basic | Grant::Password)
                && r.user.as_deref() == Some(user)
                && r.status == 200
        })
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn request_count(&self) -> usize {
        self.state
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

struct State {
    key: EcdsaKeyPair,
    x5c: String,
    service: String,
    issuer: String,
    users: Vec<TokenUser>,
    public_prefixes: Vec<String>,
    lifetime: u64,
    log: Mutex<Vec<TokenRequest>>,
    fault: Mutex<Option<TokenFault>>,
}

/// A parsed request before the decision.
struct Asked {
    grant: Grant,
    claimed_user: Option<String>,
    secret: Option<String>,
    service: Option<String>,
    scopes: Vec<String>,
}

impl State {
    fn handle(&self, request: HttpRequest) -> HttpResponse {
        if request.uri.path() != REALM_PATH {
            return response(StatusCode::NOT_FOUND, "text/plain", "not found\n");
        }
        let asked = match request.method {
            Method::GET => parse_get(&request),
            Method::POST => parse_post(&request),
            _ => {
                return response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain",
                    "GET or POST\n",
                )
            }
        };
        let (status, body, user, granted) = self.decide(&asked);
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(TokenRequest {
                method: request.method.clone(),
                grant: asked.grant,
                user,
                claimed_user: asked.claimed_user,
                service: asked.service,
                scopes: asked.scopes,
                granted,
                status: status.as_u16(),
            });
        response(status, "application/json", body)
    }

    fn decide(&self, asked: &Asked) -> (StatusCode, String, Option<String>, Vec<String>) {
        let user = match asked.grant {
            Grant::Unsupported(ref grant) => {
                let body = error_body("UNSUPPORTED", &format!("unsupported grant_type {grant}"));
                return (StatusCode::BAD_REQUEST, body, None, Vec::new());
            }
            Grant::Anonymous => None,
            Grant::Basic | Grant::Password => {
                let found = self.users.iter().find(|u| {
                    Some(&u.name) == asked.claimed_user.as_ref()
                        && Some(&u.password) == asked.secret.as_ref()
                });
                match found {
                    Some(user) => Some(user),
                    None => return unauthorized(),
                }
            }
            Grant::RefreshToken => {
                let found = self
                    .users
                    .iter()
                    .find(|u| u.identity_token.is_some() && u.identity_token == asked.secret);
                match found {
                    Some(user) => Some(user),
                    None => return unauthorized(),
                }
            }
        };
        let granted: Vec<Access> = asked
            .scopes
            .iter()
            .filter_map(|scope| self.grant(user, scope))
            .collect();
        let name = user.map(|u| u.name.clone());
        let granted_scopes = granted.iter().map(Access::scope).collect();
        if user.is_none() && granted.is_empty() {
            let body = error_body("DENIED", "access forbidden");
            return (StatusCode::FORBIDDEN, body, name, granted_scopes);
        }
        let token = self.sign(name.as_deref().unwrap_or(""), &granted);
        let body = json!({
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        });
        (StatusCode::OK, body.to_string(), name, granted_scopes)
    }

    /// What `user` (None: anonymous) gets of one requested scope.
    fn grant(&self, user: Option<&TokenUser>, scope: &str) -> Option<Access> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind != "repository" {
            return None;
        }
        let owns = user.is_some_and(|u| u.prefixes.iter().any(|p| under(name, p)));
        let public = self.public_prefixes.iter().any(|p| under(name, p));
        let actions: Vec<String> = actions
            .split(',')
            .filter(|action| match *action {
                "pull" => owns || public,
                "push" | "delete" | "*" => owns,
                _ => false,
            })
            .map(str::to_string)
            .collect();
        (!actions.is_empty()).then(|| Access {
            name: name.to_string(),
            actions,
        })
    }

    fn sign(&self, subject: &str, access: &[Access]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = json!({
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": random_hex(),
            "access": access.iter().map(|a| json!({
                "type": "repository",
                "name": a.name,
                "actions": a.actions,
            })).collect::<Vec<_>>(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("ES256 signature");
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

struct Access {
    name: String,
    actions: Vec<String>,
}

impl Access {
    fn scope(&self) -> String {
        format!("repository:{}:{}", self.name, self.actions.join(","))
    }
}

/// Whether repository `name` is `prefix` or below it, by whole path segments.
fn under(name: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    name == prefix
        || name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn parse_get(request: &HttpRequest) -> Asked {
    let query = request.uri.query().unwrap_or("");
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let basic = request
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let (grant, claimed_user, secret) = match basic {
        Some((user, password)) => (Grant::Basic, Some(user), Some(password)),
        None => (Grant::Anonymous, None, None),
    };
    Asked {
        grant,
        claimed_user,
        secret,
        service: field(&pairs, "service"),
        scopes: scopes(&pairs),
    }
}

fn parse_post(request: &HttpRequest) -> Asked {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&request.body).into_owned().collect();
    let (grant, claimed_user, secret) = match field(&pairs, "grant_type").as_deref() {
        Some("refresh_token") => (Grant::RefreshToken, None, field(&pairs, "refresh_token")),
        Some("password") => (
            Grant::Password,
            field(&pairs, "username"),
            field(&pairs, "password"),
        ),
        other => (
            Grant::Unsupported(other.unwrap_or("").to_string()),
            None,
            None,
        ),
    };
    Asked {
        grant,
        claimed_user,
        secret,
        service: field(&pairs, "service"),
        scopes: scopes(&pairs),
    }
}

fn field(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// `scope` may repeat (GET) or hold several space-separated scopes (POST).
fn scopes(pairs: &[(String, String)]) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()).map(str::to_string))
        .collect()
}

fn unauthorized() -> (StatusCode, String, Option<String>, Vec<String>) {
    let body = error_body("UNAUTHORIZED", "HTTP Basic: Access denied");
    (StatusCode::UNAUTHORIZED, body, None, Vec::new())
}

fn error_body(code: &str, message: &str) -> String {
    json!({"errors": [{"code": code, "message": message}]}).to_string()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).expect("random");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::under;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(under("group/sub", "group/sub"));
        assert!(under("group/sub/app", "group/sub"));
        assert!(under("group/sub/app", "group/sub/"));
        assert!(!under("group/subway/app", "group/sub"));
        assert!(!under("group", "group/sub"));
    }
}
