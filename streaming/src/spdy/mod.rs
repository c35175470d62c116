//! SPDY/3.1: the frame codec and a session engine shared by server and client.

pub mod conn;
mod dictionary;
pub mod frame;

pub use conn::{ConnConfig, Connection, Role, Stream, StreamError, StreamReader, StreamWriter};
pub use dictionary::DICTIONARY;
pub use frame::{Frame, Headers};
