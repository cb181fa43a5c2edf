//! How every process writes an error into one line: [`error_chain`]. Shared because the text
//! travels between processes (the instance manager puts it into
//! [`InstanceStatus::problem`](crate::instance::InstanceStatus::problem), which the operator
//! copies into the ScaledApp's status), and one format means one way to read it everywhere.

use std::error::Error;

/// `error` and each of its sources, outermost first, joined with `": "`
/// (`failed to start: failed to read /x: permission denied`). `Display` of most errors prints
/// only the outermost message, which hides the cause that tells the reader what to fix.
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("failed to start")]
        Start(#[source] Middle),
    }

    #[derive(Debug, thiserror::Error)]
    enum Middle {
        #[error("failed to read /x")]
        Read(#[source] std::io::Error),
    }

    #[test]
    fn every_source_follows_its_error_outermost_first() {
        let error = Outer::Start(Middle::Read(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "permission denied",
        )));
        assert_eq!(
            error_chain(&error),
            "failed to start: failed to read /x: permission denied"
        );
        assert_eq!(
            error_chain(&std::io::Error::other("alone")),
            "alone",
            "an error without sources is its own message"
        );
    }
}
