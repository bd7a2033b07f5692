//! Bytes as a stream of messages: what kilnd, its client and a farm worker
//! all send in chunks (archives, a build context, layers).

/// A writer whose bytes go out as a stream of 1 MiB messages; `wrap` makes
/// each message from a chunk and whether it is the last. Both ends use it,
/// from a thread outside the async runtime: kilnd for archives to a client,
/// the CLI for a build context to kilnd.
pub struct ChunkWriter<M> {
    tx: tokio::sync::mpsc::Sender<M>,
    buf: Vec<u8>,
    wrap: fn(Vec<u8>, bool) -> M,
}

impl<M> ChunkWriter<M> {
    const SIZE: usize = 1 << 20;

    pub fn new(tx: tokio::sync::mpsc::Sender<M>, wrap: fn(Vec<u8>, bool) -> M) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(Self::SIZE),
            wrap,
        }
    }

    fn send(&mut self, last: bool) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::SIZE));
        self.tx.blocking_send((self.wrap)(data, last)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the receiving end went away",
            )
        })
    }

    /// Sends what is left, as the last message.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.send(true)
    }
}

impl<M> std::io::Write for ChunkWriter<M> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::SIZE {
            self.send(false)?;
        }
        Ok(data.len())
    }

    /// Chunks go out full, or at [`ChunkWriter::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
