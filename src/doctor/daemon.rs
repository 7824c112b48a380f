//! The daemon's ttrpc socket: there, a socket, owned by root, not open to everyone unless
//! `allowed_uids` needs that, and answering `Status`.

use std::io;
use std::path::Path;

use crate::clients::{ClientError, DaemonClient};
use crate::config::Listen;

use super::Check;

const START: &str = "start it: systemctl start credgate (or run `credgate serve`)";

/// What the file system says about the socket path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SocketFacts {
    pub is_socket: bool,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
}

pub(super) async fn check(listen: &Listen) -> Vec<Check> {
    let path = &listen.socket;
    let facts = match socket_facts(path) {
        Ok(facts) => Some(facts),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return vec![Check::fail(
                format!("daemon socket {}: cannot inspect it: {e}", path.display()),
                format!(
                    "make {} reachable for this user (run doctor as root)",
                    path.display()
                ),
            )]
        }
    };
    let mut checks = file_checks(path, facts, &listen.allowed_uids);
    if facts.is_some_and(|f| f.is_socket) {
        checks.push(status(path).await);
    }
    checks
}

fn socket_facts(path: &Path) -> io::Result<SocketFacts> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path)?;
    Ok(SocketFacts {
        is_socket: meta.file_type().is_socket(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
    })
}

/// The checks that need only the socket's file facts (`None`: no file there).
pub(super) fn file_checks(
    path: &Path,
    facts: Option<SocketFacts>,
    allowed_uids: &[u32],
) -> Vec<Check> {
    let shown = path.display();
    let Some(facts) = facts else {
        return vec![Check::fail(
            format!("daemon socket {shown} does not exist: credgate is not running"),
            START,
        )];
    };
    if !facts.is_socket {
        return vec![Check::fail(
            format!("daemon socket {shown} is not a socket"),
            format!("remove {shown} and restart credgate: systemctl restart credgate"),
        )];
    }
    let mut checks = Vec::new();
    // 0600 is always safe; 0666 only when serve would choose it (the service's own rule).
    let open_to_others = crate::service::opens_to_others(allowed_uids);
    let mode_ok = facts.mode == 0o600 || facts.mode == crate::service::socket_mode(open_to_others);
    let wanted = if open_to_others {
        "0600 or 0666"
    } else {
        "0600"
    };
    if mode_ok {
        checks.push(Check::ok(format!(
            "daemon socket {shown} is a socket with mode {:04o}",
            facts.mode
        )));
    } else {
        checks.push(Check::fail(
            format!(
                "daemon socket {shown} has mode {:04o}; allowed_uids {allowed_uids:?} calls for {wanted}",
                facts.mode
            ),
            "restart credgate so it recreates the socket: systemctl restart credgate".to_string(),
        ));
    }
    if facts.uid == 0 {
        checks.push(Check::ok(format!("daemon socket {shown} is owned by root")));
    } else {
        checks.push(Check::fail(
            format!("daemon socket {shown} is owned by uid {}, not root", facts.uid),
            "run credgate as root (the shipped unit does) and restart it: systemctl restart credgate",
        ));
    }
    checks
}

async fn status(path: &Path) -> Check {
    let shown = path.display();
    let answer = match DaemonClient::connect(path).await {
        Ok(client) => client.status().await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(status) => {
            let unhealthy: Vec<String> = status
                .sources
                .iter()
                .filter(|s| !s.healthy)
                .map(|s| format!("{} ({})", s.name, s.detail))
                .collect();
            let sources = match status.sources.len() {
                1 => "1 source".to_string(),
                n => format!("{n} sources"),
            };
            let what = format!(
                "daemon at {shown} answers Status: credgate {}, up {} s, {sources}",
                status.version, status.uptime_seconds
            );
            if unhealthy.is_empty() {
                Check::ok(what)
            } else {
                Check::warn(
                    format!("{what}, unhealthy: {}", unhealthy.join("; ")),
                    "fix those sources (`credgate explain REF` shows each source's outcome), then reload: systemctl reload credgate",
                )
            }
        }
        Err(ClientError::Refused { .. }) => Check::fail(
            format!("daemon at {shown} refused this caller (uid not in allowed_uids)"),
            "run doctor as root, or add this uid to listen.allowed_uids",
        ),
        Err(e) => Check::fail(
            format!("daemon at {shown} does not answer Status: {e}"),
            "restart it: systemctl restart credgate (or run `credgate serve`)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    fn verdicts(facts: Option<SocketFacts>, allowed: &[u32]) -> Vec<Verdict> {
        file_checks(Path::new("/run/credgate/credgate.sock"), facts, allowed)
            .iter()
            .map(|c| c.verdict)
            .collect()
    }

    fn socket(mode: u32, uid: u32) -> Option<SocketFacts> {
        Some(SocketFacts {
            is_socket: true,
            mode,
            uid,
        })
    }

    #[test]
    fn a_root_owned_0600_socket_passes() {
        assert_eq!(verdicts(socket(0o600, 0), &[0]), [Verdict::Ok, Verdict::Ok]);
    }

    #[test]
    fn mode_0666_passes_only_when_another_uid_is_allowed() {
        assert_eq!(
            verdicts(socket(0o666, 0), &[0]),
            [Verdict::Fail, Verdict::Ok]
        );
        assert_eq!(
            verdicts(socket(0o666, 0), &[0, 1000]),
            [Verdict::Ok, Verdict::Ok]
        );
        assert_eq!(
            verdicts(socket(0o644, 0), &[0, 1000]),
            [Verdict::Fail, Verdict::Ok]
        );
    }

    #[test]
    fn a_missing_socket_or_a_plain_file_fails_with_the_start_command() {
        let missing = file_checks(Path::new("/x.sock"), None, &[0]);
        assert_eq!(missing.len(), 1);
        assert!(missing[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("systemctl start credgate"));
        let file = Some(SocketFacts {
            is_socket: false,
            mode: 0o600,
            uid: 0,
        });
        assert_eq!(verdicts(file, &[0]), [Verdict::Fail]);
    }

    #[test]
    fn a_socket_owned_by_another_user_fails() {
        assert_eq!(
            verdicts(socket(0o600, 1000), &[0]),
            [Verdict::Ok, Verdict::Fail]
        );
    }

    #[tokio::test]
    async fn a_real_socket_nobody_serves_fails_the_status_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credgate.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(listener);
        let check = status(&path).await;
        assert_eq!(check.verdict, Verdict::Fail, "{check}");
    }
}
