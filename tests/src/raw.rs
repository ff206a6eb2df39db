//! Calls to any public method by path with raw protobuf bytes, so one
//! loop can walk every RPC the descriptors list.

use bytes::{Buf, BufMut};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

#[derive(Clone, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

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

/// Every public method's path (`/pkg.Service/Method`), and whether it
/// streams its response.
pub fn public_methods() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(crate::tp_proto::PUBLIC_DESCRIPTOR_SET)
        .expect("a valid descriptor set");
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                methods.push((
                    format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    method.server_streaming(),
                ));
            }
        }
    }
    methods
}

/// Which public methods stream their response.
pub fn streaming_methods() -> Vec<String> {
    public_methods()
        .into_iter()
        .filter(|(_, streaming)| *streaming)
        .map(|(path, _)| path)
        .collect()
}

/// Calls `path` with `body` (an encoded request) as `token`: every
/// response message's bytes, concatenated, or the status it failed with.
pub async fn call_raw(
    channel: Channel,
    path: &str,
    token: &str,
    body: Vec<u8>,
    streaming: bool,
) -> anyhow::Result<Result<Vec<u8>, tonic::Status>> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let path = http::uri::PathAndQuery::try_from(path.to_owned())?;
    if !streaming {
        return Ok(grpc
            .unary(request, path, RawCodec)
            .await
            .map(|response| response.into_inner()));
    }
    let mut stream = match grpc.server_streaming(request, path, RawCodec).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    let mut all = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(message)) => all.extend(message),
            Ok(None) => return Ok(Ok(all)),
            Err(status) => return Ok(Err(status)),
        }
    }
}
