//! The control API's messages ⇄ kiln's own types: one mapping each way.

use kiln_frontend::checks::Violation;
use kiln_frontend::parser::Location;
use kiln_proto::control::v1 as pb;

use kiln_image::images;
use kiln_solver::pipeline::{Level, Notice};
use kiln_solver::solve::Event;

// The image commands' data on the wire and back: one mapping each way.

/// An image listing's row on the wire.
pub(super) fn summary_message(r: images::ImageSummary) -> pb::ImageSummary {
    pb::ImageSummary {
        repository: r.repository,
        tag: r.tag,
        id: r.id,
        digest: r.digest,
        created: r.created,
        size: r.size,
        platforms: r.platforms,
    }
}

/// An image listing's row from the wire.
pub fn summary_of(r: pb::ImageSummary) -> images::ImageSummary {
    images::ImageSummary {
        repository: r.repository,
        tag: r.tag,
        id: r.id,
        digest: r.digest,
        created: r.created,
        size: r.size,
        platforms: r.platforms,
    }
}

/// Disk usage on the wire.
pub(super) fn usage_message(u: images::Usage) -> pb::DiskUsageResponse {
    pb::DiskUsageResponse {
        images: u.images,
        unused: u.unused,
        snapshots: u.snapshots,
        cache_mounts: u.cache_mounts,
        metadata: u.metadata,
    }
}

/// Disk usage from the wire.
pub fn usage_of(u: pb::DiskUsageResponse) -> images::Usage {
    images::Usage {
        images: u.images,
        unused: u.unused,
        snapshots: u.snapshots,
        cache_mounts: u.cache_mounts,
        metadata: u.metadata,
    }
}

/// The solver's event on the wire.
pub(super) fn event_message(event: Event) -> pb::Event {
    use pb::event::Kind;
    let mut m = pb::Event::default();
    let (kind, vertex) = match event {
        Event::Started {
            vertex,
            description,
        } => {
            m.text = description;
            (Kind::Started, vertex)
        }
        Event::Cached { vertex } => (Kind::Cached, vertex),
        Event::Log { vertex, line } => {
            m.text = line;
            (Kind::Log, vertex)
        }
        Event::Done { vertex, seconds } => {
            m.seconds = seconds;
            (Kind::Done, vertex)
        }
        Event::Bytes {
            vertex,
            current,
            total,
        } => {
            m.current = current;
            m.total = total.unwrap_or(0);
            (Kind::Bytes, vertex)
        }
        Event::Failed { vertex, error } => {
            m.text = error;
            (Kind::Failed, vertex)
        }
        Event::Warning { warning } => {
            m.warning = Some(warning_message(warning));
            (Kind::Warning, 0)
        }
    };
    m.kind = kind as i32;
    m.vertex = u32::try_from(vertex).unwrap_or(u32::MAX);
    m
}

/// The wire event back as the solver's (for the CLI's printer).
pub fn event_from_message(m: &pb::Event) -> Option<Event> {
    use pb::event::Kind;
    let vertex = m.vertex as usize;
    Some(match Kind::try_from(m.kind).ok()? {
        Kind::Started => Event::Started {
            vertex,
            description: m.text.clone(),
        },
        Kind::Cached => Event::Cached { vertex },
        Kind::Log => Event::Log {
            vertex,
            line: m.text.clone(),
        },
        Kind::Done => Event::Done {
            vertex,
            seconds: m.seconds,
        },
        Kind::Bytes => Event::Bytes {
            vertex,
            current: m.current,
            total: (m.total > 0).then_some(m.total),
        },
        Kind::Failed => Event::Failed {
            vertex,
            error: m.text.clone(),
        },
        Kind::Warning => Event::Warning {
            warning: violation_from_message(m.warning.as_ref()?),
        },
        Kind::Unspecified => return None,
    })
}

fn warning_message(v: Violation) -> pb::CheckWarning {
    let line = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::CheckWarning {
        rule: v.rule,
        description: v.description,
        url: v.url,
        message: v.message,
        start_line: line(v.location.start),
        end_line: line(v.location.end),
    }
}

fn violation_from_message(m: &pb::CheckWarning) -> Violation {
    Violation {
        rule: m.rule.clone(),
        description: m.description.clone(),
        url: m.url.clone(),
        message: m.message.clone(),
        location: Location {
            start: m.start_line as usize,
            end: m.end_line as usize,
        },
    }
}

/// The pipeline's notice on the wire.
pub(super) fn notice_message(n: Notice) -> pb::Notice {
    let level = match n.level {
        Level::Info => pb::notice::Level::Info,
        Level::Warning => pb::notice::Level::Warning,
    };
    pb::Notice {
        level: level as i32,
        text: n.text,
    }
}

/// The wire notice back as the pipeline's; an unknown level is a warning
/// (it was meant to be seen).
pub fn notice_from_message(m: pb::Notice) -> Notice {
    let level = match pb::notice::Level::try_from(m.level) {
        Ok(pb::notice::Level::Info) => Level::Info,
        _ => Level::Warning,
    };
    Notice {
        level,
        text: m.text,
    }
}
