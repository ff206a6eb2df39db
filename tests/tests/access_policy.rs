//! The access policy through the real gateway: every public RPC, called as a
//! member, an admin and an operator, is refused with PERMISSION_DENIED
//! exactly when `tp_gateway::policy::POLICY` says so. Calls carry empty
//! requests (raw bytes, so one loop covers every method): an admitted call
//! then fails validation or succeeds harmlessly, never with
//! PERMISSION_DENIED.

use bytes::{Buf, BufMut};
use prost::Message;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tp_context::Role;
use tp_e2e::TestApp;
use tp_gateway::policy::{Audience, POLICY};

#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}

/// Which public methods stream their response.
fn streaming_methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(tp_e2e::tp_proto::PUBLIC_DESCRIPTOR_SET)
        .expect("a valid descriptor set");
    let mut streaming = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                if method.server_streaming() {
                    streaming.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    streaming
}

/// Calls `path` with an empty request as `token`; the resulting code.
async fn call(app: &TestApp, path: &str, token: &str, streaming: bool) -> anyhow::Result<Code> {
    let mut grpc = tonic::client::Grpc::new(app.channel().await?);
    grpc.ready().await?;
    let mut request = tonic::Request::new(Vec::new());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let path = http::uri::PathAndQuery::try_from(path.to_owned())?;
    let code = if streaming {
        match grpc.server_streaming(request, path, RawCodec).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break Code::Ok,
                        Err(status) => break status.code(),
                    }
                }
            }
            Err(status) => status.code(),
        }
    } else {
        match grpc.unary(request, path, RawCodec).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    };
    Ok(code)
}

#[tokio::test]
async fn every_public_rpc_admits_exactly_the_roles_its_rule_names() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, member) = app.tenant_with_member("Acme", "mia").await?;
    let admin = app.token("mia-admin", Some(tenant), Role::Admin);
    let operator = app.token("ops", None, Role::Operator);
    let streaming = streaming_methods();

    let mut checked = 0;
    for rule in POLICY {
        let is_streaming = streaming.iter().any(|m| m == rule.method);
        for (role, token) in [
            (Role::Member, &member),
            (Role::Admin, &admin),
            (Role::Operator, &operator),
        ] {
            let admitted = match rule.audience {
                Audience::Operator => role == Role::Operator,
                Audience::Member => role != Role::Operator,
                Audience::Admin => role == Role::Admin,
            };
            let code = call(&app, rule.method, token, is_streaming).await?;
            if admitted {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{} as {role}: admitted by the table, but got {code:?}",
                    rule.method
                );
            } else {
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{} as {role}: refused by the table",
                    rule.method
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, POLICY.len() * 3);

    // No RPC without observability: every public method just called shows
    // in the gateway's RPC metrics (the SLO side is checked against the
    // descriptors in crates/proto).
    let metrics = tp_e2e::http_get(app.gateway_http_addr, "/metrics").await?;
    assert_eq!(metrics.status, 200);
    for rule in POLICY {
        let series = format!("rpc_method=\"{}\"", rule.method.trim_start_matches('/'));
        assert!(
            metrics.body.lines().any(|line| {
                line.starts_with("rpc_server_call_duration_seconds_count{")
                    && line.contains(&series)
            }),
            "{} emitted no rpc.server.call.duration",
            rule.method
        );
    }
    Ok(())
}
