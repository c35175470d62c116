//! The CRI streaming server: exec, attach and port-forward sessions that
//! kubelet and crictl reach through the URLs returned by the CRI `Exec`,
//! `Attach` and `PortForward` calls.

pub mod spdy;
