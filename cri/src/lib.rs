//! CRI `runtime.v1` services.
pub mod proto {
    //! Generated CRI types, clients and servers.
    #![allow(missing_docs, clippy::all, unused_qualifications, missing_debug_implementations)]
    tonic::include_proto!("runtime.v1");
}
