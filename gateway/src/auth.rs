//! Who may use the admin API, whatever door it comes through: the bearer
//! token's settings and the one check HTTP and gRPC both call.

use serde::Deserialize;

use crate::error::ApiError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Name of the environment variable that holds the admin bearer token
    /// (the token itself never goes in this file). Mutating endpoints
    /// require `Authorization: Bearer <token>`.
    pub token_env: String,
    /// With no token set, leave mutating endpoints open (for a laptop).
    /// Off, they answer 403 until a token is set.
    pub open_without_token: bool,
    /// Require the token for reads too (index, routing state).
    pub protect_reads: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token_env: "QUIVER_ADMIN_TOKEN".into(),
            open_without_token: false,
            protect_reads: false,
        }
    }
}

#[derive(Clone)]
pub struct AdminSettings {
    /// `None`: no token is set.
    pub token: Option<String>,
    pub token_env: String,
    pub open_without_token: bool,
    pub protect_reads: bool,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("token_env", &self.token_env)
            .field("open_without_token", &self.open_without_token)
            .field("protect_reads", &self.protect_reads)
            .finish()
    }
}

impl AdminConfig {
    /// `env` looks up the variable named by `token_env`.
    pub fn validate(self, env: impl Fn(&str) -> Option<String>) -> AdminSettings {
        AdminSettings {
            token: env(&self.token_env).filter(|t| !t.is_empty()),
            token_env: self.token_env,
            open_without_token: self.open_without_token,
            protect_reads: self.protect_reads,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Checks a request's bearer token (`Authorization: Bearer <token>`, the
/// header over HTTP, the metadata key over gRPC) for an access of kind
/// `access`. `authorization` is the header's whole value.
pub fn authorize(
    admin: &AdminSettings,
    authorization: Option<&[u8]>,
    access: Access,
) -> Result<(), ApiError> {
    if access == Access::Read && !admin.protect_reads {
        return Ok(());
    }
    let Some(token) = &admin.token else {
        return if admin.open_without_token {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the admin API is disabled: set the token in the environment variable {} (or admin.open_without_token = true)",
                admin.token_env
            )))
        };
    };
    let given = authorization
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("missing 'Authorization: Bearer <token>' header".into())
        })?;
    if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("invalid admin token".into()))
    }
}

/// Equal-length comparison whose time does not depend on where the first
/// difference is, so the token cannot be guessed byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn reads_are_open_unless_protected_and_writes_need_the_token() {
        let admin = AdminConfig::default().validate(|_| Some("s3cret".into()));
        assert_eq!(authorize(&admin, None, Access::Read), Ok(()));
        assert!(matches!(
            authorize(&admin, None, Access::Write),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            authorize(&admin, Some(b"Bearer nope"), Access::Write),
            Err(ApiError::Unauthorized(_))
        ));
        assert_eq!(
            authorize(&admin, Some(b"Bearer s3cret"), Access::Write),
            Ok(())
        );
        let closed = AdminConfig::default().validate(|_| None);
        assert!(matches!(
            authorize(&closed, Some(b"Bearer s3cret"), Access::Write),
            Err(ApiError::Forbidden(_))
        ));
    }
}
