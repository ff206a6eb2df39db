//! Generated code for every gRPC package of the product.
//!
//! Public API: [`v1`] (`thoughtpartner.v1`). Internal APIs between services
//! live under [`internal`] so the public contract stays small.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("thoughtpartner.v1");
}

pub mod internal {
    pub mod conversation {
        pub mod v1 {
            tonic::include_proto!("thoughtpartner.internal.conversation.v1");
        }
    }
    pub mod knowledge {
        pub mod v1 {
            tonic::include_proto!("thoughtpartner.internal.knowledge.v1");
        }
    }
}

/// Encoded descriptors of the public API, for the gateway's reflection.
pub const PUBLIC_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("public_descriptor");

/// Encoded descriptors of the internal APIs, for internal services' reflection.
pub const INTERNAL_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("internal_descriptor");

/// A Postgres `timestamptz` as a protobuf `Timestamp`.
pub fn timestamp(time: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.unix_timestamp(),
        // Always below 1e9, so it fits.
        nanos: i32::try_from(time.nanosecond()).unwrap_or(0),
    }
}

/// One event of a streamed reply. SendMessage, EditMessage and
/// RegenerateReply stream the same events under three response types
/// (each RPC has its own); clients read them alike through [`ReplyEvent`].
#[derive(Clone, Debug, PartialEq)]
pub enum ReplyPart {
    /// The next piece of the reply's text.
    Delta(String),
    /// The last event: the stored exchange.
    Completed(Box<v1::MessageCompleted>),
    /// An event with nothing set (a newer server's event this client does
    /// not know).
    Empty,
}

/// A streamed reply's event, whichever RPC streamed it.
pub trait ReplyEvent {
    fn into_part(self) -> ReplyPart;
}

macro_rules! reply_event {
    ($response:ty, $event:path) => {
        impl ReplyEvent for $response {
            fn into_part(self) -> ReplyPart {
                use $event as Event;
                match self.event {
                    Some(Event::TextDelta(delta)) => ReplyPart::Delta(delta.text),
                    Some(Event::Completed(done)) => ReplyPart::Completed(Box::new(done)),
                    None => ReplyPart::Empty,
                }
            }
        }
    };
}
reply_event!(v1::SendMessageResponse, v1::send_message_response::Event);
reply_event!(v1::EditMessageResponse, v1::edit_message_response::Event);
reply_event!(
    v1::RegenerateReplyResponse,
    v1::regenerate_reply_response::Event
);

#[cfg(test)]
mod tests {
    #[test]
    fn every_reply_stream_reads_alike() {
        use super::{ReplyEvent, ReplyPart, v1};
        let delta = v1::EditMessageResponse {
            event: Some(v1::edit_message_response::Event::TextDelta(v1::TextDelta {
                text: "Why".into(),
            })),
        };
        assert_eq!(delta.into_part(), ReplyPart::Delta("Why".into()));
        let done = v1::RegenerateReplyResponse {
            event: Some(v1::regenerate_reply_response::Event::Completed(
                v1::MessageCompleted::default(),
            )),
        };
        assert_eq!(done.into_part(), ReplyPart::Completed(Box::default()));
        assert_eq!(
            v1::SendMessageResponse::default().into_part(),
            ReplyPart::Empty
        );
    }

    use prost::Message;

    fn packages(encoded: &[u8]) -> Vec<String> {
        prost_types::FileDescriptorSet::decode(encoded)
            .expect("a valid descriptor set")
            .file
            .into_iter()
            .filter_map(|f| f.package)
            .collect()
    }

    /// This package's directory, read when the test runs (cargo sets it for
    /// the test process): a test binary built in another checkout that shares
    /// the target directory is reused as fresh, and the compile-time value
    /// would point it at that checkout's files.
    fn manifest_dir() -> std::path::PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
    }

    /// The OpenSLO specs in slo/*.yaml, as (stem, text).
    fn slo_specs() -> Vec<(String, String)> {
        let dir = manifest_dir().join("../../slo");
        let mut specs: Vec<(String, String)> = std::fs::read_dir(&dir)
            .expect("slo/ exists")
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .map(|path| {
                let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                (
                    stem,
                    std::fs::read_to_string(&path).expect("a readable spec"),
                )
            })
            .collect();
        specs.sort();
        specs
    }

    /// Every public RPC has an availability and a latency SLO in
    /// slo/*.yaml (read from the SLIs' queries, not from names): an RPC
    /// cannot ship without them.
    #[test]
    fn every_public_rpc_has_an_slo() {
        let specs = tp_slo::generate::parse_spec_files(&slo_specs()).expect("the SLO specs parse");
        let promises = tp_slo::Catalog::resolve(&specs)
            .expect("the SLO specs resolve")
            .rpc_promises();
        let set = prost_types::FileDescriptorSet::decode(super::PUBLIC_DESCRIPTOR_SET)
            .expect("a valid descriptor set");
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods += 1;
                    let rpc = format!("{}/{}", service.name(), method.name());
                    for promise in [
                        tp_slo::RpcPromise::Availability,
                        tp_slo::RpcPromise::Latency,
                    ] {
                        assert!(
                            promises.get(&rpc).is_some_and(|p| p.contains(&promise)),
                            "{rpc} has no {promise:?} SLO in slo/*.yaml"
                        );
                    }
                }
            }
        }
        assert!(methods >= 19, "found only {methods} public RPCs");
    }

    #[test]
    fn public_reflection_never_describes_internal_packages() {
        let public = packages(super::PUBLIC_DESCRIPTOR_SET);
        assert!(public.iter().any(|p| p == "thoughtpartner.v1"));
        assert!(public.iter().all(|p| !p.contains("internal")), "{public:?}");
        let internal = packages(super::INTERNAL_DESCRIPTOR_SET);
        // Internal APIs may use protobuf's well-known types (Timestamp),
        // never the public package.
        assert!(
            internal
                .iter()
                .all(|p| p.starts_with("thoughtpartner.internal.") || p == "google.protobuf"),
            "{internal:?}"
        );
        assert!(
            internal
                .iter()
                .any(|p| p == "thoughtpartner.internal.conversation.v1")
        );
    }
}
