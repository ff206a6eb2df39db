//! Who a call is made as, and how it reaches the product: through the
//! gateway with a bearer token, or straight to the conversation service
//! with the context headers the gateway would have set (the gateway-hop
//! comparison only).

use std::net::SocketAddr;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tp_auth::{Claims, mint_hs256};
use tp_context::{Role, TenantId};

/// One member of one tenant, able to call the API.
#[derive(Clone, Debug)]
pub struct Member {
    pub tenant_id: TenantId,
    pub user_id: String,
    pub role: Role,
    bearer: MetadataValue<Ascii>,
}

impl Member {
    pub fn new(
        secret: &str,
        tenant_id: TenantId,
        user_id: &str,
        role: Role,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            tenant_id,
            user_id: user_id.to_owned(),
            role,
            bearer: bearer(secret, user_id, Some(tenant_id), role)?,
        })
    }

    /// `message` as this member, through the gateway.
    pub fn via_gateway<T>(&self, message: T) -> tonic::Request<T> {
        authorized(&self.bearer, message)
    }

    /// `message` as this member, straight to an internal service: the
    /// context the gateway would have attached.
    pub fn direct<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert(
            tp_context::TENANT_ID_KEY,
            self.tenant_id.to_string().parse()?,
        );
        metadata.insert(tp_context::USER_ID_KEY, self.user_id.parse()?);
        metadata.insert(tp_context::ROLE_KEY, self.role.as_str().parse()?);
        Ok(request)
    }
}

/// An `authorization` value for a token signed with the stack's secret.
pub fn bearer(
    secret: &str,
    sub: &str,
    tenant_id: Option<TenantId>,
    role: Role,
) -> anyhow::Result<MetadataValue<Ascii>> {
    let claims = Claims::expiring_in(sub, tenant_id, role, 6 * 3600);
    let token = mint_hs256(secret.as_bytes(), &claims)?;
    Ok(format!("Bearer {token}").parse()?)
}

/// `message` with an `authorization` value.
pub fn authorized<T>(bearer: &MetadataValue<Ascii>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// `connections` HTTP/2 connections to `addr` (loopback only), for workers
/// to share round-robin as many clients' connections would be.
pub async fn channels(addr: SocketAddr, connections: usize) -> anyhow::Result<Vec<Channel>> {
    if !addr.ip().is_loopback() {
        anyhow::bail!("the load generator targets loopback only, not {addr}");
    }
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}
