//! CRI `runtime.v1` gRPC services. This crate validates and translates CRI
//! messages into domain calls on `pods` and `images` and maps their
//! errors to gRPC status codes, in one place (`errors`); it holds no logic
//! of its own. It must not know which runtime runs a pod, nor make policy
//! (which pods may run where is `pods`' decision), nor do any I/O besides
//! answering gRPC. One module per verb family: `status`, `sandbox`,
//! `container`, `stream`, `images`.

mod alpha;
mod batch;
mod container;
mod convert;
mod errors;
mod events;
mod images;
mod metered;
mod metrics;
mod runtime;
mod sandbox;
mod service;
mod stats;
mod status;
mod stream;
mod transport;

pub use alpha::{ApiVersion, V1alpha2, V1alpha2Layer};
pub use images::ImageService;
pub use metered::{Metered, MeteredLayer};
pub use service::RuntimeService;
pub use transport::{AuthorityTolerant, FrameError};

/// The request conversions, for the fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::convert::{
        container_config, container_filter, container_resources, sandbox_config, sandbox_filter,
    };
}

pub mod proto {
    //! Generated CRI types, clients and servers (from the vendored `api.proto`).
    #![allow(
        missing_docs,
        clippy::all,
        unused_qualifications,
        missing_debug_implementations
    )]
    tonic::include_proto!("runtime.v1");
}

/// The CRI API version served.
pub const CRI_API_VERSION: &str = "v1";
