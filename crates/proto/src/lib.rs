//! Generated code for every gRPC package of the product.
//!
//! Public API: [`v1`] (`thoughtpartner.v1`). Internal APIs between services
//! live under [`internal`] so the public contract stays small.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("thoughtpartner.v1");
}

pub mod internal {
    pub mod knowledge {
        pub mod v1 {
            tonic::include_proto!("thoughtpartner.internal.knowledge.v1");
        }
    }
}

/// Encoded descriptors of all packages, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("thoughtpartner_descriptor");

/// A Postgres `timestamptz` as a protobuf `Timestamp`.
pub fn timestamp(time: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.unix_timestamp(),
        // Always below 1e9, so it fits.
        nanos: i32::try_from(time.nanosecond()).unwrap_or(0),
    }
}
