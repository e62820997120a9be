//! The one error type of the vhost-user frontend: a leaf every other file of
//! this module uses, and that uses none of them.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::driver::GpuDriverError;

/// What went wrong talking to a vhost-user GPU backend.
#[derive(Debug)]
pub enum VhostError {
    /// Nothing accepts connections at the socket path (no such file, or a
    /// stale socket nobody listens on).
    NoBackend { path: PathBuf, source: io::Error },
    /// Connecting failed for another reason (permissions, not a socket).
    Connect { path: PathBuf, source: io::Error },
    /// The backend closed the control socket while `op` was in flight.
    BackendClosed { op: &'static str },
    /// The backend did not answer `op` within the control timeout; the
    /// session was shut down so nothing waits on it any more.
    Timeout { op: &'static str, after: Duration },
    /// The backend answered `op` with a failure (a non-zero REPLY_ACK).
    Refused { op: &'static str },
    /// The backend's answer to `op` broke the protocol, or the socket failed.
    Protocol { op: &'static str, detail: String },
    /// An earlier error left the control channel unusable.
    Broken { op: &'static str, cause: String },
    /// The backend lacks something loadgen cannot do without.
    Unsupported(String),
    /// Setting up our side failed (socketpairs, eventfds, mmap, guest RAM).
    Local {
        what: &'static str,
        source: io::Error,
    },
    /// The guest driver model could not be built.
    Driver(GpuDriverError),
}

impl fmt::Display for VhostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoBackend { path, source } => {
                write!(f, "no backend listening at {} ({source})", path.display())
            }
            Self::Connect { path, source } => {
                write!(f, "cannot connect to {}: {source}", path.display())
            }
            Self::BackendClosed { op } => write!(f, "backend closed the connection during {op}"),
            Self::Timeout { op, after } => {
                write!(f, "backend did not answer {op} within {after:?}")
            }
            Self::Refused { op } => write!(f, "backend refused {op}"),
            Self::Protocol { op, detail } => write!(f, "vhost-user error during {op}: {detail}"),
            Self::Broken { op, cause } => {
                write!(
                    f,
                    "cannot send {op}: the connection already failed ({cause})"
                )
            }
            Self::Unsupported(what) => write!(f, "backend unsupported: {what}"),
            Self::Local { what, source } => write!(f, "{what} failed: {source}"),
            Self::Driver(e) => write!(f, "guest driver model: {e}"),
        }
    }
}

impl std::error::Error for VhostError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NoBackend { source, .. }
            | Self::Connect { source, .. }
            | Self::Local { source, .. } => Some(source),
            Self::Driver(e) => Some(e),
            _ => None,
        }
    }
}

impl From<GpuDriverError> for VhostError {
    fn from(e: GpuDriverError) -> Self {
        Self::Driver(e)
    }
}

impl VhostError {
    /// Whether the control channel can still be used after this error.
    pub(crate) fn breaks_session(&self) -> bool {
        matches!(
            self,
            Self::BackendClosed { .. } | Self::Timeout { .. } | Self::Protocol { .. }
        )
    }
}
