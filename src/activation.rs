//! systemd socket activation: which of `credgate serve`'s listeners systemd opened for it
//! (`credgate.socket`, handed over as `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`), so that
//! connections made while credgate restarts or upgrades wait in the socket's queue instead of
//! being refused. Each descriptor must be a listening stream socket at an address the config
//! names (`listen.socket`, `listen.mirror` or `listen.metrics`); anything else is an error
//! naming it. The listeners systemd did not pass are bound by `serve` as before.
//!
//! Turning descriptor numbers into owned descriptors is the binary's job (`main.rs`, the only
//! place allowed `unsafe`): this module says which numbers are ours ([`passed_fds`]) and sorts
//! the owned descriptors into listeners ([`sort`]).

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;
/// Most descriptors credgate takes: it has three listeners, so more is a broken unit.
pub const MAX_FDS: usize = 3;
/// The variables of the protocol, removed from the environment once read so that credential
/// helpers never inherit them.
pub const VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];
/// Longest descriptor name systemd allows (`FileDescriptorName=`); longer ones are cut.
const MAX_NAME: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS={value:?} is not a count of 1 to {MAX_FDS} descriptors (credgate has three listeners: listen.socket, listen.mirror, listen.metrics)")]
    Count { value: String },
    #[error("LISTEN_PID={value:?} is not a process id")]
    Pid { value: String },
    #[error("systemd's descriptor {fd} ({name}): {source}")]
    Descriptor {
        fd: RawFd,
        name: String,
        source: nix::Error,
    },
    #[error("systemd's descriptor {fd} ({name}) is not a listening stream socket (ListenStream= in credgate.socket)")]
    NotListening { fd: RawFd, name: String },
    #[error("systemd's descriptor {fd} ({name}) listens on {address}, which the config does not name ({expected}); make credgate.socket and the config agree")]
    Unexpected {
        fd: RawFd,
        name: String,
        address: String,
        expected: String,
    },
    #[error("systemd passed two descriptors for {key} ({address})")]
    Duplicate { key: &'static str, address: String },
}

/// The descriptors systemd passed this process, by number, with their names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassedFds {
    pub fds: Vec<(RawFd, String)>,
}

/// Reads the protocol's variables from `vars` for the process `pid`: no descriptors when
/// `LISTEN_PID` is unset or names another process (a parent's variables are not ours).
pub fn passed_fds(vars: &[(OsString, OsString)], pid: u32) -> Result<PassedFds, ActivationError> {
    let var = |name: &str| {
        vars.iter()
            .find(|(k, _)| k == OsStr::new(name))
            .map(|(_, v)| v.to_string_lossy().into_owned())
    };
    let Some(listen_pid) = var("LISTEN_PID") else {
        return Ok(PassedFds::default());
    };
    let listen_pid: u32 = listen_pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::Pid { value: listen_pid })?;
    if listen_pid != pid {
        return Ok(PassedFds::default());
    }
    let count_text = var("LISTEN_FDS").unwrap_or_default();
    let count = match count_text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_FDS).contains(&n) => n,
        _ => return Err(ActivationError::Count { value: count_text }),
    };
    let names: Vec<String> = var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(bounded).collect())
        .unwrap_or_default();
    let fds = (0..count)
        .map(|i| {
            // Fewer names than descriptors: the rest are "unknown", as sd_listen_fds_with_names says.
            let name = names.get(i).cloned().unwrap_or_else(|| "unknown".into());
            (FIRST_FD + i as RawFd, name)
        })
        .collect();
    Ok(PassedFds { fds })
}

fn bounded(name: &str) -> String {
    name.chars().take(MAX_NAME).collect()
}

/// `vars` without the protocol's variables.
pub fn without_variables(vars: Vec<(OsString, OsString)>) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(k, _)| !VARIABLES.iter().any(|v| k == OsStr::new(v)))
        .collect()
}

/// Where the config says each listener is.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub socket: PathBuf,
    pub mirror: SocketAddr,
    pub metrics: SocketAddr,
}

/// The listeners systemd passed, each at the address the config names; `None` ones `serve`
/// binds itself.
#[derive(Debug, Default)]
pub struct Listeners {
    pub socket: Option<std::os::unix::net::UnixListener>,
    pub mirror: Option<std::net::TcpListener>,
    pub metrics: Option<std::net::TcpListener>,
}

impl Listeners {
    pub fn any(&self) -> bool {
        self.socket.is_some() || self.mirror.is_some() || self.metrics.is_some()
    }
}

/// Sorts owned descriptors (with their numbers' names) into the listeners `wanted` names,
/// marking each close-on-exec so no helper inherits one.
pub fn sort(fds: Vec<(OwnedFd, String)>, wanted: &Wanted) -> Result<Listeners, ActivationError> {
    let mut listeners = Listeners::default();
    for (fd, name) in fds {
        let number = fd.as_raw_fd();
        let failed = |source| ActivationError::Descriptor {
            fd: number,
            name: name.clone(),
            source,
        };
        fcntl(number, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(failed)?;
        let stream = getsockopt(&fd, sockopt::SockType).map_err(failed)? == SockType::Stream;
        if !stream || !getsockopt(&fd, sockopt::AcceptConn).map_err(failed)? {
            return Err(ActivationError::NotListening { fd: number, name });
        }
        let address: SockaddrStorage = getsockname(number).map_err(failed)?;
        let unexpected = |address: String| ActivationError::Unexpected {
            fd: number,
            name: name.clone(),
            address,
            expected: format!(
                "listen.socket = {}, listen.mirror = {}, listen.metrics = {}",
                wanted.socket.display(),
                wanted.mirror,
                wanted.metrics
            ),
        };
        if let Some(unix) = address.as_unix_addr() {
            let Some(path) = unix.path() else {
                return Err(unexpected("an abstract or unnamed unix socket".into()));
            };
            if path != wanted.socket.as_path() {
                return Err(unexpected(path.display().to_string()));
            }
            place(&mut listeners.socket, "listen.socket", path, fd.into())?;
            continue;
        }
        if !matches!(
            address.family(),
            Some(AddressFamily::Inet | AddressFamily::Inet6)
        ) {
            return Err(unexpected(format!(
                "a socket of family {:?}",
                address.family()
            )));
        }
        let listener = std::net::TcpListener::from(fd);
        let ip = listener
            .local_addr()
            .map_err(|e| ActivationError::Descriptor {
                fd: number,
                name: name.clone(),
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
        let slot = if ip == wanted.mirror {
            (&mut listeners.mirror, "listen.mirror")
        } else if ip == wanted.metrics {
            (&mut listeners.metrics, "listen.metrics")
        } else {
            return Err(unexpected(ip.to_string()));
        };
        place(slot.0, slot.1, ip.to_string(), listener)?;
    }
    Ok(listeners)
}

fn place<T>(
    slot: &mut Option<T>,
    key: &'static str,
    address: impl AsRef<Path>,
    listener: T,
) -> Result<(), ActivationError> {
    if slot.is_some() {
        return Err(ActivationError::Duplicate {
            key,
            address: address.as_ref().display().to_string(),
        });
    }
    *slot = Some(listener);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn wanted(dir: &Path) -> Wanted {
        Wanted {
            socket: dir.join("credgate.sock"),
            mirror: "127.0.0.1:0".parse().unwrap(),
            metrics: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[test]
    fn descriptors_are_ours_only_when_listen_pid_is_this_process() {
        let set = vars(&[
            ("LISTEN_PID", "42"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "credgate.socket:endpoint"),
        ]);
        assert_eq!(
            passed_fds(&set, 42).unwrap().fds,
            vec![(3, "credgate.socket".into()), (4, "endpoint".into())]
        );
        assert_eq!(passed_fds(&set, 43).unwrap(), PassedFds::default());
        assert_eq!(passed_fds(&[], 42).unwrap(), PassedFds::default());
        let unnamed = vars(&[("LISTEN_PID", "42"), ("LISTEN_FDS", "1")]);
        assert_eq!(
            passed_fds(&unnamed, 42).unwrap().fds,
            vec![(3, "unknown".into())]
        );
    }

    #[test]
    fn a_count_out_of_bounds_is_an_error_naming_the_variable() {
        for count in ["0", "4", "-1", "many", "99999999999999999999"] {
            let set = vars(&[("LISTEN_PID", "7"), ("LISTEN_FDS", count)]);
            let error = passed_fds(&set, 7).unwrap_err().to_string();
            assert!(error.contains("LISTEN_FDS="), "{error}");
        }
        let bad_pid = vars(&[("LISTEN_PID", "x"), ("LISTEN_FDS", "1")]);
        assert!(passed_fds(&bad_pid, 7)
            .unwrap_err()
            .to_string()
            .contains("LISTEN_PID"));
    }

    #[test]
    fn the_variables_are_dropped_from_what_helpers_inherit() {
        let set = vars(&[
            ("LISTEN_PID", "1"),
            ("HOME", "/root"),
            ("LISTEN_FDNAMES", "a"),
        ]);
        assert_eq!(without_variables(set), vars(&[("HOME", "/root")]));
    }

    #[test]
    fn listeners_are_sorted_by_the_address_the_config_names() {
        let dir = tempfile::tempdir().unwrap();
        let socket =
            std::os::unix::net::UnixListener::bind(dir.path().join("credgate.sock")).unwrap();
        let mirror = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut want = wanted(dir.path());
        want.mirror = mirror.local_addr().unwrap();
        let fds = vec![
            (OwnedFd::from(mirror), "endpoint".to_string()),
            (OwnedFd::from(socket), "credentials".to_string()),
        ];
        let sorted = sort(fds, &want).unwrap();
        assert!(sorted.socket.is_some() && sorted.mirror.is_some() && sorted.metrics.is_none());
        let flags = fcntl(
            sorted.mirror.as_ref().unwrap().as_raw_fd(),
            FcntlArg::F_GETFD,
        )
        .unwrap();
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
    }

    #[test]
    fn a_socket_the_config_does_not_name_is_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = other.local_addr().unwrap().to_string();
        let error = sort(
            vec![(OwnedFd::from(other), "x".into())],
            &wanted(dir.path()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(&address) && error.contains("listen.mirror = 127.0.0.1:0"),
            "{error}"
        );

        let elsewhere =
            std::os::unix::net::UnixListener::bind(dir.path().join("other.sock")).unwrap();
        let error = sort(
            vec![(OwnedFd::from(elsewhere), "y".into())],
            &wanted(dir.path()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("other.sock") && error.contains("(y)"),
            "{error}"
        );
    }

    #[test]
    fn a_socket_that_is_not_listening_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let unbound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let error = sort(
            vec![(OwnedFd::from(unbound), "udp".into())],
            &wanted(dir.path()),
        )
        .unwrap_err();
        assert!(
            matches!(error, ActivationError::NotListening { .. }),
            "{error}"
        );
        let (connected, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let error = sort(
            vec![(OwnedFd::from(connected), "pair".into())],
            &wanted(dir.path()),
        )
        .unwrap_err();
        assert!(
            matches!(error, ActivationError::NotListening { .. }),
            "{error}"
        );
    }

    #[test]
    fn two_descriptors_for_one_listener_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut want = wanted(dir.path());
        want.mirror = first.local_addr().unwrap();
        let second = first.try_clone().unwrap();
        let error = sort(
            vec![
                (OwnedFd::from(first), "a".into()),
                (OwnedFd::from(second), "b".into()),
            ],
            &want,
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                ActivationError::Duplicate {
                    key: "listen.mirror",
                    ..
                }
            ),
            "{error}"
        );
    }
}
