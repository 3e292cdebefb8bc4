//! Supervised processes' output as a log source: each line a child writes
//! to stdout or stderr becomes a record, tagged with its deployment and
//! process (`unit` is `DEPLOYMENT/PROCESS`), and goes to tetherd like the
//! device's other logs. The spec's priority filter applies; its `units`
//! filter does not, as for files: these lines were asked for by the spec.

use std::sync::Arc;

use tether_proto::telemetry::LogRecord;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::file::{Line, LineBuffer};
use super::filter::Origin;
use super::{Sink, truncate};

/// Which of a child's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::Stdout => "stdout",
            Output::Stderr => "stderr",
        }
    }
}

/// Whose output it is.
#[derive(Debug, Clone)]
pub struct ProcessTag {
    pub deployment: String,
    pub process: String,
}

/// The record for one line.
pub fn record(tag: &ProcessTag, output: Output, line: &Line) -> LogRecord {
    let (message, cut) = truncate(String::from_utf8_lossy(&line.text).into_owned());
    let mut fields = std::collections::BTreeMap::from([
        ("deployment".to_owned(), tag.deployment.clone()),
        ("process".to_owned(), tag.process.clone()),
        ("stream".to_owned(), output.name().to_owned()),
    ]);
    if cut.is_some() || line.len > line.text.len() as u64 {
        fields.insert("truncated".into(), line.len.to_string());
    }
    LogRecord {
        at: chrono::Utc::now(),
        // journald's default for a service's output, stdout and stderr alike.
        priority: 6,
        unit: format!("{}/{}", tag.deployment, tag.process),
        message,
        fields,
    }
}

/// Reads `reader` to its end, each line into `sink`; a last line without
/// a newline is sent too.
pub async fn forward(
    mut reader: impl AsyncRead + Unpin,
    output: Output,
    tag: ProcessTag,
    sink: Arc<Sink>,
) {
    let mut lines = LineBuffer::default();
    let mut buffer = vec![0; 8192];
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        for line in lines.push(&buffer[..read]) {
            sink.offer(record(&tag, output, &line), Origin::Process);
        }
    }
    if let Some(line) = lines.finish() {
        sink.offer(record(&tag, output, &line), Origin::Process);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_tagged_with_its_deployment_process_and_stream() {
        let tag = ProcessTag {
            deployment: "app".into(),
            process: "web".into(),
        };
        let record = record(
            &tag,
            Output::Stderr,
            &Line {
                text: b"listening".to_vec(),
                len: 9,
            },
        );
        assert_eq!(record.unit, "app/web");
        assert_eq!(record.message, "listening");
        assert_eq!(record.fields["stream"], "stderr");
        assert_eq!(record.fields["process"], "web");
        assert!(!record.fields.contains_key("truncated"));
    }
}
