//! Capturing everything the in-process operators log, to check what they write (CASE-20).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// The tracing output of this test process since [`capture_logs`].
#[derive(Clone, Default)]
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        let buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process-wide tracing subscriber with `filter` (EnvFilter syntax), writing
/// into the returned capture. Call it before any operator starts: the operators' own
/// subscriber set-up then finds this one in place and logs here.
pub fn capture_logs(filter: &str) -> anyhow::Result<LogCapture> {
    let capture = LogCapture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .map_err(|e| anyhow::anyhow!("a tracing subscriber was already installed: {e}"))?;
    Ok(capture)
}
