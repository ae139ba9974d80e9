//! Bearer-token access control for the `cgnat.v1.Cgnat` service.
//!
//! With tokens configured, every call must carry `authorization: Bearer <token>`. A read-only token
//! may call everything that only reads (info, stats, ports, pools, listing and watching sessions,
//! destination NAT rules); a read-write token may also change state (deleting and flushing
//! sessions). A call without a valid
//! token is `UNAUTHENTICATED`; a read-only token on a changing call is `PERMISSION_DENIED`. The
//! health service stays open for probes, and reflection (the schema, which is public) too.
//!
//! Tokens travel in clear unless the connection is protected: beyond loopback, turn on TLS
//! ([`crate::TlsConfig`]) or use an SSH tunnel. Comparison is constant-time.

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// What a caller may do; put into each request's extensions by [`TokenCheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// The configured tokens; with neither set, every caller is read-write (the loopback default).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub read_write: Option<String>,
    pub read_only: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.debug_struct("Tokens")
            .field("read_write", &self.read_write.as_ref().map(|_| "<set>"))
            .field("read_only", &self.read_only.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Tokens {
    pub fn is_enabled(&self) -> bool {
        self.read_write.is_some() || self.read_only.is_some()
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The interceptor in front of the service.
#[derive(Clone, Debug)]
pub struct TokenCheck {
    pub tokens: Tokens,
}

impl Interceptor for TokenCheck {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let access = if !self.tokens.is_enabled() {
            Access::ReadWrite
        } else {
            let given = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or("");
            let is = |t: &Option<String>| {
                t.as_deref()
                    .is_some_and(|t| !given.is_empty() && same(t.as_bytes(), given.as_bytes()))
            };
            if is(&self.tokens.read_write) {
                Access::ReadWrite
            } else if is(&self.tokens.read_only) {
                Access::ReadOnly
            } else {
                return Err(Status::unauthenticated(
                    "missing or invalid token: send `authorization: Bearer <token>`",
                ));
            }
        };
        req.extensions_mut().insert(access);
        Ok(req)
    }
}

/// Refuse a changing call `rpc` unless the caller holds a read-write token.
pub(crate) fn require_write<T>(req: &Request<T>, rpc: &str) -> Result<Access, Status> {
    match req.extensions().get::<Access>() {
        Some(Access::ReadWrite) => Ok(Access::ReadWrite),
        _ => Err(Status::permission_denied(format!(
            "{rpc} changes state and needs a read-write token; this one is read-only"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(tokens: Tokens, header: Option<&str>) -> Result<Access, Status> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        let req = TokenCheck { tokens }.call(req)?;
        Ok(*req.extensions().get::<Access>().unwrap())
    }

    fn both() -> Tokens {
        Tokens {
            read_write: Some("rw-0123456789abcdef".into()),
            read_only: Some("ro-0123456789abcdef".into()),
        }
    }

    #[test]
    fn tokens_grant_their_level_and_nothing_else_gets_in() {
        assert_eq!(check(Tokens::default(), None).unwrap(), Access::ReadWrite);
        assert_eq!(
            check(both(), Some("Bearer rw-0123456789abcdef")).unwrap(),
            Access::ReadWrite
        );
        assert_eq!(
            check(both(), Some("Bearer ro-0123456789abcdef")).unwrap(),
            Access::ReadOnly
        );
        for bad in [
            None,
            Some("Bearer "),
            Some("Bearer rw-0123456789abcdeX"),
            Some("rw-0123456789abcdef"),
        ] {
            assert_eq!(
                check(both(), bad).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        // Only a read-only token configured: an empty header is still not it.
        let ro = Tokens {
            read_only: Some("ro-0123456789abcdef".into()),
            ..Tokens::default()
        };
        assert_eq!(
            check(ro, Some("Bearer")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(
            !format!("{:?}", both()).contains("0123"),
            "secrets are never printed"
        );
    }
}
