//! What a source hands the keychain: a credential whose secret can't leak by accident.

use std::fmt;

use crate::secret::Secret;

/// How a credential is used upstream; the values are containerd's transfer `AuthType`, so a
/// transfer-service auth stream can be answered one-to-one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// Anonymous.
    None = 0,
    /// Username and password, exchanged for a token or sent as Basic.
    Credentials = 1,
    /// An identity (refresh) token, exchanged for an access token with OAuth2.
    Refresh = 2,
    /// A ready `Authorization` header value (`Bearer <registry token>`).
    Header = 3,
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Credentials => "credentials",
            Self::Refresh => "refresh",
            Self::Header => "header",
        })
    }
}

/// The kinds of secret a registry credential can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    Password,
    /// docker's `identitytoken`, an OAuth2 refresh token.
    IdentityToken,
    /// docker's `registrytoken`, a bearer token sent as is.
    RegistryToken,
}

impl SecretKind {
    /// How a secret of this kind is used upstream.
    pub fn auth_type(self) -> AuthType {
        match self {
            Self::Password => AuthType::Credentials,
            Self::IdentityToken => AuthType::Refresh,
            Self::RegistryToken => AuthType::Header,
        }
    }
}

/// A username and a secret for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub secret: Secret,
    pub kind: SecretKind,
}

impl Credential {
    pub fn password(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::new(username, password, SecretKind::Password)
    }

    pub fn identity_token(username: impl Into<String>, token: impl Into<String>) -> Self {
        Self::new(username, token, SecretKind::IdentityToken)
    }

    pub fn registry_token(token: impl Into<String>) -> Self {
        Self::new("", token, SecretKind::RegistryToken)
    }

    pub fn new(username: impl Into<String>, secret: impl Into<String>, kind: SecretKind) -> Self {
        Self {
            username: username.into(),
            secret: Secret::new(secret),
            kind,
        }
    }

    pub fn auth_type(&self) -> AuthType {
        self.kind.auth_type()
    }

    /// The secret as containerd's transfer `AuthResponse.secret` carries it: the password or
    /// refresh token itself, or for `header` the whole `Authorization` value.
    pub fn transfer_secret(&self) -> Secret {
        match self.kind {
            SecretKind::RegistryToken => Secret::new(format!("Bearer {}", self.secret.expose())),
            _ => self.secret.clone(),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Credential::password("deploy", "hunter2-secret");
        let shown = format!("{c:?} {:?}", c.secret);
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("deploy"));
    }

    #[test]
    fn registry_tokens_become_bearer_headers() {
        let c = Credential::registry_token("abc");
        assert_eq!(c.auth_type(), AuthType::Header);
        assert_eq!(c.transfer_secret().expose(), "Bearer abc");
        assert_eq!(
            Credential::identity_token("u", "r").auth_type(),
            AuthType::Refresh
        );
    }
}
