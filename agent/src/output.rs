//! What goes to the host: the items of the queue that the channel's writer
//! thread drains onto the port. Handlers and streams send into it; only the
//! channel writes it out.

/// Outgoing bytes, or a flush marker that is acknowledged once all earlier bytes are written.
pub enum Output {
    /// Bytes to write.
    Bytes(Vec<u8>),
    /// Acknowledged after every earlier write completed.
    Flush(std::sync::mpsc::Sender<()>),
}
