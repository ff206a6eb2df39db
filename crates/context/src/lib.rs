//! Who is asking: the tenant, the user and their role, and how that travels
//! between services.
//!
//! The gateway is the only service that turns a bearer token into a
//! [`RequestContext`]; it then writes the context into gRPC metadata with
//! [`RequestContext::write_to`]. The internal services read it back with
//! [`RequireContextLayer`], which rejects any call that arrives without it.
//!
//! This crate does no I/O.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

mod layer;

pub use layer::{RequireContext, RequireContextLayer, is_unauthenticated_path};

/// Metadata key carrying the tenant id between services.
pub const TENANT_ID_KEY: &str = "x-tp-tenant-id";
/// Metadata key carrying the user id (the token's `sub`) between services.
pub const USER_ID_KEY: &str = "x-tp-user-id";
/// Metadata key carrying the caller's role between services.
pub const ROLE_KEY: &str = "x-tp-role";

/// A tenant: one subscribing organisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TenantId(Uuid);

impl TenantId {
    /// A fresh, random tenant id.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for TenantId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl FromStr for TenantId {
    type Err = ContextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| ContextError::InvalidTenantId)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a caller may do. Operators run the product; admins manage their
/// tenant's members; members converse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Member,
    Admin,
    Operator,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Operator => "operator",
        }
    }
}

impl FromStr for Role {
    type Err = ContextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            other => Err(ContextError::UnknownRole(other.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated tenant, user and role of one request, after the gateway
/// has checked the token and the membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    pub tenant_id: TenantId,
    pub user_id: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("missing `{0}` metadata: internal calls must come through the gateway")]
    Missing(&'static str),
    #[error("`{0}` metadata is not valid ASCII")]
    NotAscii(&'static str),
    #[error("tenant id is not a UUID")]
    InvalidTenantId,
    #[error("unknown role `{0}` (expected member, admin or operator)")]
    UnknownRole(String),
    #[error("user id must be 1..=255 visible ASCII characters")]
    InvalidUserId,
}

impl RequestContext {
    /// Writes the context into outgoing metadata, replacing any earlier value.
    pub fn write_to(
        &self,
        metadata: &mut tonic::metadata::MetadataMap,
    ) -> Result<(), ContextError> {
        let tenant = self.tenant_id.to_string();
        metadata.insert(
            TENANT_ID_KEY,
            tenant
                .parse()
                .map_err(|_| ContextError::NotAscii(TENANT_ID_KEY))?,
        );
        metadata.insert(
            USER_ID_KEY,
            self.user_id
                .parse()
                .map_err(|_| ContextError::NotAscii(USER_ID_KEY))?,
        );
        metadata.insert(
            ROLE_KEY,
            self.role
                .as_str()
                .parse()
                .map_err(|_| ContextError::NotAscii(ROLE_KEY))?,
        );
        Ok(())
    }

    /// Reads the context from the headers of an incoming internal call.
    ///
    /// Kept out of line: it runs once per internal call a service serves,
    /// and `tp-loadgen callgrind-report` counts `conversation`'s requests by
    /// its calls (with the release profile's LTO, the generated servers'
    /// `call` is inlined and leaves no count).
    #[inline(never)]
    pub fn read_from(headers: &http::HeaderMap) -> Result<Self, ContextError> {
        fn get<'a>(
            headers: &'a http::HeaderMap,
            key: &'static str,
        ) -> Result<&'a str, ContextError> {
            headers
                .get(key)
                .ok_or(ContextError::Missing(key))?
                .to_str()
                .map_err(|_| ContextError::NotAscii(key))
        }
        let tenant_id = get(headers, TENANT_ID_KEY)?.parse()?;
        let user_id = get(headers, USER_ID_KEY)?;
        validate_user_id(user_id)?;
        let role = get(headers, ROLE_KEY)?.parse()?;
        Ok(Self {
            tenant_id,
            user_id: user_id.to_owned(),
            role,
        })
    }
}

/// The context [`RequireContextLayer`] put in a request's extensions; an
/// `INTERNAL` error if the layer is missing (a wiring bug, not a client's).
pub fn from_request<T>(request: &tonic::Request<T>) -> Result<RequestContext, tonic::Status> {
    request
        .extensions()
        .get::<RequestContext>()
        .cloned()
        .ok_or_else(|| {
            tonic::Status::internal("request context missing: RequireContextLayer is not installed")
        })
}

/// User ids are the token's `sub`: opaque, but bounded and printable so they
/// fit in metadata, logs and indexes.
pub fn validate_user_id(user_id: &str) -> Result<(), ContextError> {
    let ok = !user_id.is_empty()
        && user_id.len() <= 255
        && user_id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ContextError::InvalidUserId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RequestContext {
        RequestContext {
            tenant_id: TenantId::new_random(),
            user_id: "alice@example.com".into(),
            role: Role::Admin,
        }
    }

    #[test]
    fn context_round_trips_through_metadata() {
        let ctx = sample();
        let mut metadata = tonic::metadata::MetadataMap::new();
        ctx.write_to(&mut metadata).unwrap();
        let headers = metadata.into_headers();
        assert_eq!(RequestContext::read_from(&headers).unwrap(), ctx);
    }

    #[test]
    fn missing_tenant_is_rejected() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        sample().write_to(&mut metadata).unwrap();
        let mut headers = metadata.into_headers();
        headers.remove(TENANT_ID_KEY);
        assert_eq!(
            RequestContext::read_from(&headers),
            Err(ContextError::Missing(TENANT_ID_KEY))
        );
    }

    #[test]
    fn malformed_values_are_rejected() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TENANT_ID_KEY, "not-a-uuid".parse().unwrap());
        headers.insert(USER_ID_KEY, "bob".parse().unwrap());
        headers.insert(ROLE_KEY, "member".parse().unwrap());
        assert_eq!(
            RequestContext::read_from(&headers),
            Err(ContextError::InvalidTenantId)
        );
        headers.insert(TENANT_ID_KEY, Uuid::new_v4().to_string().parse().unwrap());
        headers.insert(ROLE_KEY, "root".parse().unwrap());
        assert_eq!(
            RequestContext::read_from(&headers),
            Err(ContextError::UnknownRole("root".into()))
        );
    }

    #[test]
    fn user_ids_are_bounded_and_printable() {
        assert!(validate_user_id("u-1").is_ok());
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id("has space").is_err());
        assert!(validate_user_id(&"x".repeat(256)).is_err());
    }
}
