//! Reading ahead, in order: the walk deals its entries in batches to
//! `readers` reader threads in turn (batch `i` to reader `i % readers`),
//! each reads its batches in the order dealt, and the caller's thread
//! takes the results back in the same turn — so they come back exactly in
//! walk order, with no reordering. Batches, not entries, go through the
//! channels: a hand-over may wake a thread, which costs as much as a few
//! of the system calls read ahead.
//!
//! Memory is bounded however large the tree: a reader sends what it read
//! in chunks of at most about [`CHUNK_BYTES`] of file contents (a file
//! left open to be streamed counts as a full read-ahead), and at most
//! [`CHUNKS_AHEAD`] chunks wait per reader: a few MiB in all.
//!
//! The threads are scoped: none outlives the call. When the writer stops
//! (an error), it drops its ends, every send fails, and the threads end.

use std::io;
use std::mem;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use super::read::{self, Body, Data, Entry, READ_AHEAD_MAX};
use super::walk::{self, Dir, Job, Stop};
use crate::layer::{LayerError, Result, io_err};

/// Entries per batch.
const BATCH: usize = 32;
/// Batches waiting per reader, to be read.
const BATCHES_AHEAD: usize = 1;
/// File contents per chunk a reader sends back (about: it may pass it by
/// one file).
const CHUNK_BYTES: usize = 512 * 1024;
/// Chunks waiting per reader, read, for the writer.
const CHUNKS_AHEAD: usize = 2;

/// The walk thread's stack: the walk takes a frame (`Walker::dir` and
/// `Walker::sub`) per level of directories, 5.5 KB in a debug build
/// (measured; less when optimized), so about 5.6 MB at
/// [`MAX_TREE_DEPTH`](kiln_proto::depth::MAX_TREE_DEPTH) levels — more
/// than the 2 MiB a thread gets by default. Only touched pages are used.
const WALK_STACK: usize = 16 << 20;
/// A reader's stack: it recurses into nothing.
const READER_STACK: usize = 2 << 20;

/// What goes down a channel: a batch or chunk, the walk's end, or why it
/// ended.
enum Msg<T> {
    Item(T),
    Done,
    Failed(LayerError),
}

/// Entries read, in walk order: all or part of a batch.
struct Chunk {
    entries: Vec<Entry>,
    /// Whether it is its batch's last: the next comes from the next reader.
    ends_batch: bool,
}

/// Walks the tree below `root` and calls `each` on every entry read, in
/// walk order, on this thread; the first error (the walk's, a reader's,
/// `each`'s) ends it.
pub(super) fn run(root: Dir, readers: usize, each: impl FnMut(Entry) -> Result<()>) -> Result<()> {
    let readers = readers.max(1);
    let top = root.path.clone();
    thread::scope(|scope| {
        let mut jobs = Vec::with_capacity(readers);
        let mut chunks = Vec::with_capacity(readers);
        for _ in 0..readers {
            let (job_tx, job_rx) = sync_channel(BATCHES_AHEAD);
            let (chunk_tx, chunk_rx) = sync_channel(CHUNKS_AHEAD);
            spawn(scope, ("kiln-diff-read", READER_STACK), &top, move || {
                reader(&job_rx, &chunk_tx)
            })?;
            jobs.push(job_tx);
            chunks.push(chunk_rx);
        }
        spawn(scope, ("kiln-diff-walk", WALK_STACK), &top, move || {
            walker(root, &jobs)
        })?;
        take(&chunks, each, &top)
    })
}

/// Starts `f` on a thread named `name` with a stack of `stack` bytes.
fn spawn<'scope>(
    scope: &'scope thread::Scope<'scope, '_>,
    (name, stack): (&str, usize),
    top: &Path,
    f: impl FnOnce() + Send + 'scope,
) -> Result<()> {
    thread::Builder::new()
        .name(name.to_owned())
        .stack_size(stack)
        .spawn_scoped(scope, f)
        .map_err(io_err("starting a thread to read", top))?;
    Ok(())
}

/// The walk, dealing its entries in batches, then its end (or error) in
/// the next turn.
fn walker(root: Dir, jobs: &[SyncSender<Msg<Vec<Job>>>]) {
    let mut dealer = Dealer {
        jobs,
        turn: 0,
        batch: Vec::with_capacity(BATCH),
    };
    let end = match walk::walk(root, &mut |job| dealer.push(job)) {
        Ok(()) => Msg::Done,
        Err(Stop::Failed(e)) => Msg::Failed(e),
        Err(Stop::Gone) => return,
    };
    // Nobody to tell if these fail: the writer is gone.
    if dealer.flush().is_ok() {
        let _ = dealer.send(end);
    }
}

/// Deals batches of jobs to the readers in turn.
struct Dealer<'a> {
    jobs: &'a [SyncSender<Msg<Vec<Job>>>],
    turn: usize,
    batch: Vec<Job>,
}

impl Dealer<'_> {
    fn push(&mut self, job: Job) -> std::result::Result<(), Stop> {
        self.batch.push(job);
        if self.batch.len() < BATCH {
            return Ok(());
        }
        self.flush()
    }

    fn flush(&mut self) -> std::result::Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.send(Msg::Item(batch))
    }

    fn send(&mut self, msg: Msg<Vec<Job>>) -> std::result::Result<(), Stop> {
        let sent = self.jobs[self.turn % self.jobs.len()].send(msg);
        self.turn += 1;
        sent.map_err(|_| Stop::Gone)
    }
}

/// A reader: reads its batches in the order dealt, until its channel
/// closes, the walk ends, or an entry fails.
fn reader(jobs: &Receiver<Msg<Vec<Job>>>, chunks: &SyncSender<Msg<Chunk>>) {
    for msg in jobs {
        let end = match msg {
            Msg::Item(batch) => match read_batch(batch, chunks) {
                Ok(()) => continue,
                Err(Some(e)) => Msg::Failed(e),
                // The writer is gone.
                Err(None) => return,
            },
            Msg::Done => Msg::Done,
            Msg::Failed(e) => Msg::Failed(e),
        };
        let _ = chunks.send(end);
        return;
    }
}

/// Reads `batch` and sends it in chunks. `Err(Some)`: an entry failed
/// (what was read before it is sent); `Err(None)`: the writer is gone.
fn read_batch(
    batch: Vec<Job>,
    chunks: &SyncSender<Msg<Chunk>>,
) -> std::result::Result<(), Option<LayerError>> {
    let mut entries = Vec::with_capacity(batch.len());
    let mut bytes = 0;
    for job in batch {
        let entry = match read::read(job) {
            Ok(entry) => entry,
            Err(e) => {
                send(chunks, mem::take(&mut entries), false)?;
                return Err(Some(e));
            }
        };
        bytes += weight(&entry);
        entries.push(entry);
        if bytes >= CHUNK_BYTES {
            send(chunks, mem::take(&mut entries), false)?;
            bytes = 0;
        }
    }
    send(chunks, entries, true)
}

fn send(
    chunks: &SyncSender<Msg<Chunk>>,
    entries: Vec<Entry>,
    ends_batch: bool,
) -> std::result::Result<(), Option<LayerError>> {
    if entries.is_empty() && !ends_batch {
        return Ok(());
    }
    let chunk = Chunk {
        entries,
        ends_batch,
    };
    chunks.send(Msg::Item(chunk)).map_err(|_| None)
}

/// What an entry weighs in memory (and descriptors) until it is written.
fn weight(entry: &Entry) -> usize {
    match &entry.body {
        Body::File(Data::Read(bytes)) => bytes.len(),
        Body::File(Data::Open(_)) => READ_AHEAD_MAX as usize,
        _ => 0,
    }
}

/// Takes the chunks back in turn and gives their entries to `each`.
fn take(
    chunks: &[Receiver<Msg<Chunk>>],
    mut each: impl FnMut(Entry) -> Result<()>,
    top: &Path,
) -> Result<()> {
    let mut turn = 0;
    loop {
        match chunks[turn % chunks.len()].recv() {
            Ok(Msg::Item(chunk)) => {
                for entry in chunk.entries {
                    each(entry)?;
                }
                if chunk.ends_batch {
                    turn += 1;
                }
            }
            Ok(Msg::Done) => return Ok(()),
            Ok(Msg::Failed(e)) => return Err(e),
            // A reader ended without a word: it panicked (the scope
            // panics in turn). Never a shorter tar.
            Err(_) => {
                return Err(LayerError::Io {
                    action: "reading ahead in",
                    path: top.to_owned(),
                    source: io::Error::other("a reader thread stopped"),
                });
            }
        }
    }
}
